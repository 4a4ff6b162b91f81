"""Studies over recipes: hyperparameter search (`tune`), one job per file."""
