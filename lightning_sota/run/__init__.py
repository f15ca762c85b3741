"""One training run: its plan, its parts built from the config, the fit, resume, checkpoints and results."""
