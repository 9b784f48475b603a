"""Studies: grids of ordinary `flan-jax train` runs, their results table, plots and fits."""
