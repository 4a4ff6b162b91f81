"""The classifier family's built-ins by name: its methods (``methods/``, one file each) and its
evaluator. Adding a method adds one line here."""

METHODS = {
    "teacher": "anydistill.classifier.methods.supervised:TrainTeacher",
    "scratch": "anydistill.classifier.methods.supervised:Scratch",
    "kd": "anydistill.classifier.methods.kd:KD",
    "fitnets": "anydistill.classifier.methods.fitnets:FitNets",
    "attention-transfer": "anydistill.classifier.methods.attention_transfer:AttentionTransfer",
    "dkd": "anydistill.classifier.methods.dkd:DKD",
}
EVALUATOR = "anydistill.classifier.evaluate:ClassifierEvaluator"
