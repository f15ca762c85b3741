"""The LightningModule and what trains it: optimizers, schedules, callbacks, weight averaging, loggers."""
