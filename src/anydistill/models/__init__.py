"""Model builders, named after what they return, and loaders of local checkpoints."""
