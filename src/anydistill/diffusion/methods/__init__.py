"""The diffusion family's methods, one file each; the family's table (`catalog.py`) names them."""
