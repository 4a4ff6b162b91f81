"""The language-model family's built-ins by name: its methods (``methods/``, one file each) and
its evaluator. Adding a method adds one line here."""

METHODS = {
    "lm-teacher": "anydistill.lm.methods.sft:LMTeacher",
    "lm-sft": "anydistill.lm.methods.sft:LMSFT",
    "lm-kd": "anydistill.lm.methods.kd:LMKD",
    "gkd": "anydistill.lm.methods.gkd:GKD",
    "seq-kd": "anydistill.lm.methods.seq_kd:SeqKD",
    "uld": "anydistill.lm.methods.uld:ULD",
    "gold": "anydistill.lm.methods.gold:GOLD",
    "minillm": "anydistill.lm.methods.minillm:MiniLLM",
}
EVALUATOR = "anydistill.lm.evaluate:LMEvaluator"
