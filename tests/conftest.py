"""Shared test set-up: quiet Lightning, two threads (the CI machine has two cores)."""

import logging
import warnings

import torch

torch.set_num_threads(2)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", module="lightning")
