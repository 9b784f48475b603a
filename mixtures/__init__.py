"""Task and mixture registrations; importing a module here registers what it defines."""
