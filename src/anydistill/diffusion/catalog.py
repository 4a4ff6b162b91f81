"""The diffusion family's built-ins by name: its methods (``methods/``, one file each) and its
evaluator. Adding a method adds one line here."""

METHODS = {
    "diffusion-teacher": "anydistill.diffusion.methods.train_teacher:DiffusionTeacherTraining",
    "progressive": "anydistill.diffusion.methods.progressive:ProgressiveDistillation",
    "consistency": "anydistill.diffusion.methods.consistency:ConsistencyDistillation",
    "reflow": "anydistill.diffusion.methods.reflow:Reflow",
    "dmd": "anydistill.diffusion.methods.dmd:DMD",
    "dmd2": "anydistill.diffusion.methods.dmd2:DMD2",
    "decoupled-dmd": "anydistill.diffusion.methods.decoupled_dmd:DecoupledDMD",
    "disback": "anydistill.diffusion.methods.disback:DisBack",
    "multi-student": "anydistill.diffusion.methods.multi_student:MultiStudent",
    "phased-dmd": "anydistill.diffusion.methods.phased_dmd:PhasedDMD",
    "flash-dmd": "anydistill.diffusion.methods.flash_dmd:FlashDMD",
}
EVALUATOR = "anydistill.diffusion.evaluate:DiffusionEvaluator"
