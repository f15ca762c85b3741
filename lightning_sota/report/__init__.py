"""What a run shows: interpretation, show_batch, lr_find, and the ablation table across runs."""
