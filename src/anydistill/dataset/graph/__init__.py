"""Graph distillation (Mirage): computation trees, FP-growth, distilled graph sets and their GNN evaluator."""
