"""What happens to a batch on the device before the model: augmentation, normalization, MixUp/CutMix, TTA."""
