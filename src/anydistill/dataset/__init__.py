"""Dataset distillation: synthetic-set models, differentiable siamese augmentation and methods."""
