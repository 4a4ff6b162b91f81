"""The classifier family's built-ins by name: its methods (``methods/``, one file each) and its
evaluator. Adding a method adds one line here."""

METHODS = {
    "teacher": "anydistill.classifier.methods.supervised:TrainTeacher",
    "scratch": "anydistill.classifier.methods.supervised:Scratch",
    "kd": "anydistill.classifier.methods.kd:KD",
    "fitnets": "anydistill.classifier.methods.fitnets:FitNets",
    "attention-transfer": "anydistill.classifier.methods.attention_transfer:AttentionTransfer",
    "dkd": "anydistill.classifier.methods.dkd:DKD",
    "vid": "anydistill.classifier.methods.vid:VID",
    "nst": "anydistill.classifier.methods.nst:NST",
    "cc": "anydistill.classifier.methods.cc:CC",
    "fsp": "anydistill.classifier.methods.fsp:FSP",
    "crd": "anydistill.classifier.methods.crd:CRD",
    "rkd": "anydistill.classifier.methods.rkd:RKD",
    "pkt": "anydistill.classifier.methods.pkt:PKT",
    "sp": "anydistill.classifier.methods.sp:SP",
    "dist": "anydistill.classifier.methods.dist:DIST",
    "logit-std": "anydistill.classifier.methods.logit_std:LogitStdKD",
    "ickd": "anydistill.classifier.methods.ickd:ICKD",
    "srd": "anydistill.classifier.methods.srd:SRD",
    "reviewkd": "anydistill.classifier.methods.reviewkd:ReviewKD",
    "ab": "anydistill.classifier.methods.ab:AB",
    "kdsvd": "anydistill.classifier.methods.kdsvd:KDSVD",
    "ofd": "anydistill.classifier.methods.ofd:OFD",
    "ft": "anydistill.classifier.methods.ft:FT",
}
EVALUATOR = "anydistill.classifier.evaluate:ClassifierEvaluator"
