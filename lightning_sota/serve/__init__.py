"""A trained run put to use: predict, evaluate and export."""
