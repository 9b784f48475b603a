"""Training: state, optimizer, step, loop, checkpoints, metrics, evaluation."""
