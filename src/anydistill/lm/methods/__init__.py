"""The lm family's methods, one file each; the family's table (`catalog.py`) names them."""
