"""The dataset-distillation family's built-ins by name: its methods (``methods/``, one file each)
and its evaluator. Adding a method adds one line here."""

METHODS = {
    "dc": "anydistill.dataset.methods.dc:DC",
    "dsa": "anydistill.dataset.methods.dc:DSA",
    "dm": "anydistill.dataset.methods.dm:DM",
    "mtt": "anydistill.dataset.methods.mtt:MTT",
    "mirage": "anydistill.dataset.methods.mirage:Mirage",
}
EVALUATOR = "anydistill.dataset.evaluate:SynsetEvaluator"
