"""Data modules: the shipped sources (one file each) and the generic ones for users' files."""
