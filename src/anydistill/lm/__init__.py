"""Language-model distillation: token-level losses over [B, L, V] logits, sparse top-k teachers."""
