"""The Flan data layer on seqio: templates, formats, task specs, mixtures, sources, vocab.

Importing it registers nothing; `mixtures.*` modules register what they define.
"""
