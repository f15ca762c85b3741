"""The dataset: download and verification, presized caches, the DataModule and its batches."""
