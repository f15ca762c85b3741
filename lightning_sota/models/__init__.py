"""The networks: fastai's xresnet family on timm, its layers, and starting weights."""
