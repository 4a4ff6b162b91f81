"""The model builders shipped with anydistill, by the name a recipe's ``student.name`` or
``teacher.name`` gives. A builder takes the data's ``input_shape`` and ``num_classes`` and its own
typed keyword arguments, and returns an ``nn.Module``."""

MODELS = {
    "mlp": "anydistill.models.classifiers:mlp",
    "synthetic-set": "anydistill.dataset.synset:synthetic_set",
    "graph-set": "anydistill.dataset.graph.graphset:graph_set",
    "small-cnn": "anydistill.models.classifiers:small_cnn",
    "mixer": "anydistill.models.mixer:mixer",
    "vit": "anydistill.models.vit:vit",
    "cnn1d": "anydistill.models.cnn1d:cnn1d",
    "cifar-resnet": "anydistill.models.cifar:cifar_resnet",
    "wide-resnet": "anydistill.models.cifar:wide_resnet",
    "vgg": "anydistill.models.cifar:vgg",
    "gru": "anydistill.models.gru:gru",
    "ccexam-mnistnet": "anydistill.models.ccexam:ccexam_mnistnet",
    "mlp-denoiser": "anydistill.models.flow_denoisers:mlp_flow_denoiser",
    "analytic-mixture": "anydistill.diffusion.analytic_mixture:analytic_mixture",
    "conv-denoiser": "anydistill.models.flow_denoisers:conv_flow_denoiser",
    "diffusers-unet": "anydistill.models.flow_denoisers:diffusers_unet_denoiser",
    "diffusers-folder": "anydistill.models.diffusers_folder:diffusers_folder",
    "diffusers-pipeline": "anydistill.models.diffusers_pipeline:diffusers_pipeline",
    "routed-denoiser": "anydistill.models.routed_denoiser:routed_denoiser",
    "gpt2-lm": "anydistill.models.causal_lm:gpt2_lm",
    "llama-lm": "anydistill.models.causal_lm:llama_lm",
    "hf-sequence-classifier": "anydistill.models.hf_classifiers:hf_sequence_classifier",
    "hf-image-classifier": "anydistill.models.hf_classifiers:hf_image_classifier",
    "hf-causal-lm": "anydistill.models.hf_causal_lm:hf_causal_lm",
}
