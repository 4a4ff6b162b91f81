"""The data modules shipped with anydistill, by the name a recipe's ``data.name`` gives.

Shipped sources first, then the generic modules that read users' own files (see docs/data.md).
"""

DATA = {
    "digits": "anydistill.data.digits:DigitsData",
    "wine": "anydistill.data.sklearn_tables:WineData",
    "breast-cancer": "anydistill.data.sklearn_tables:BreastCancerData",
    "mnist": "anydistill.data.mnist:MNISTData",
    "mnist1d": "anydistill.data.mnist1d:MNIST1DData",
    "cifar100": "anydistill.data.cifar100:CIFAR100Data",
    "motif-graphs": "anydistill.data.motif_graphs:MotifGraphsData",
    "nci-alerts": "anydistill.data.nci_alerts:NCIAlertsData",
    "wehi-pains": "anydistill.data.wehi_pains:WEHIPainsData",
    "toy2d": "anydistill.data.toy2d:Toy2DData",
    "toy2d-conditional": "anydistill.data.toy2d:Toy2DConditionalData",
    "digits-generation": "anydistill.data.digits_generation:DigitsGenerationData",
    "image-folder-generation": "anydistill.data.generation_files:ImageFolderGenerationData",
    "tensors-generation": "anydistill.data.generation_files:TensorGenerationData",
    "points": "anydistill.data.generation_files:PointsData",
    "text-to-image-latents": "anydistill.data.text_to_image:TextToImageLatents",
    "shakespeare": "anydistill.data.shakespeare:ShakespeareData",
    "lm-dataset": "anydistill.data.lm_dataset:LMDataset",
    "shakespeare-paired": "anydistill.data.paired_text:PairedShakespeareData",
    "lm-dataset-paired": "anydistill.data.paired_text:PairedLMDataset",
    "csv": "anydistill.data.tabular:CSVData",
    "parquet": "anydistill.data.tabular:ParquetData",
    "image-folder": "anydistill.data.image_folder:ImageFolderData",
    "tensors": "anydistill.data.tensor_files:TensorFileData",
    "hf-dataset": "anydistill.data.hf_dataset:HFDatasetData",
    "text-classification": "anydistill.data.text_classification:TextClassificationData",
}
