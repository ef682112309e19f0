"""The run directory: config, metrics, checkpoints and summary of one training run."""
