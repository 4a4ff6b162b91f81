"""A text-to-image diffusers pipeline from a local folder (Stable Diffusion 1.x / 2.x, SDXL) as a
`Denoiser` over its VAE latents, conditioned on prompt ids.

``diffusers-pipeline {path, prompts}`` reads the folder ``pipeline.save_pretrained`` wrote, with
``from_pretrained(local_files_only=True)``: nothing is downloaded.

* **Denoiser**: the pipeline's ``unet/`` (``UNet2DConditionModel``), read with the noise schedule,
  prediction kind and time input its ``scheduler/`` config names (the mapping of
  `anydistill.models.diffusers_folder`). Transformer pipelines (PixArt, SD3, Flux) are refused:
  DMD2's discriminator head reads a UNet's mid block (`anydistill.diffusion.discriminator`).
* **Text**: every method passes integer labels and the null label for classifier-free guidance, so
  text enters as prompt ids. ``prompts`` names the same files as the data
  (``text-to-image-latents``): their distinct prompts, sorted, are the prompt table (label i is
  prompt i; label P, the null label, the empty prompt). The tokenizers and text encoders run once,
  here, without gradients (`anydistill.models.prompt_table`) and are dropped; the network looks its
  conditioning up by label. The table is no parameter or buffer: nothing trains it, no state dict
  or export holds it (the builder recomputes it), the network's copies share it.
* **Latents**: the network works on the VAE's scaled latents ``[C, size/f, size/f]``; the VAE is held
  frozen outside the module tree (`anydistill.models.pipeline_parts.FrozenVAE`): ``model.net.decode
  (latents)`` gives images in [-1, 1] and ``model.net.encode(images)`` latents.
* **Export**: the UNet sits at ``net.unet``, so the diffusion evaluator also writes it with
  ``save_pretrained`` into the export's ``diffusers/``, a folder that replaces the pipeline's ``unet/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from anydistill.data.text_to_image import prompt_list
from anydistill.models.diffusers_folder import read_json, schedule_from_scheduler, scheduler_file
from anydistill.models.flow_denoisers import Denoiser
from anydistill.models.pipeline_parts import FrozenVAE, frozen_vae, load_part, part_class, pipeline_parts, work_device
from anydistill.models.prompt_table import PromptTable, prompt_table

WHERE = "diffusers-pipeline"


class PipelineNet(nn.Module):
    """``forward(x_t [B, C, h, w], t_in [B], cond [B] | None) -> [B, C, h, w]``: the UNet at timestep
    ``t_in * time_scale`` with the text conditioning of prompt ids ``cond`` (``None``: the empty
    prompt for every row). Only the UNet's weights are parameters (under ``unet.``)."""

    def __init__(self, unet: nn.Module, table: PromptTable, vae: FrozenVAE, time_scale: float, input_shape: tuple[int, ...]):
        super().__init__()
        self.unet, self.time_scale, self.input_shape = unet, time_scale, tuple(input_shape)
        # Plain attributes (not modules): outside parameters(), state_dict() and .to(); shared by copies.
        self.prompt_table, self.vae = table, vae

    @property
    def null_class(self) -> int:
        """The null label of classifier-free guidance: the empty prompt's id, P."""
        return self.prompt_table.null

    @property
    def prompts(self) -> list[str]:
        """The prompt table: label i is ``prompts[i]``."""
        return self.prompt_table.prompts

    def forward(self, x_t: Tensor, t_in: Tensor, cond: Tensor | None = None) -> Tensor:
        batch = x_t.shape[0]
        if t_in.ndim == 0:
            t_in = t_in.expand(batch)
        if cond is None:
            cond = torch.full((batch,), self.null_class, dtype=torch.long)
        kwargs = self.prompt_table.unet_kwargs(cond, x_t.device, self.unet.dtype)
        return self.unet(x_t, t_in * self.time_scale, **kwargs).sample

    def decode(self, latents: Tensor) -> Tensor:
        """Images ``[B, 3, H, W]`` in [-1, 1] of latents ``[B, C, h, w]`` (the frozen VAE)."""
        return self.vae.decode(latents)

    def encode(self, images: Tensor) -> Tensor:
        """Scaled latents ``[B, C, h, w]`` of images ``[B, 3, H, W]`` in [-1, 1] (the frozen VAE)."""
        return self.vae.encode(images)


def check_unet(unet: nn.Module, input_shape: tuple[int, ...], factor: int, folder: Path) -> bool:
    """Refuse a UNet that does not fit the latents or whose conditioning is not text (one line each);
    returns whether it is an SDXL UNet (``addition_embed_type: text_time``)."""
    config = unet.config
    channels, size = config.get("in_channels"), config.get("sample_size")
    size = size[-1] if isinstance(size, list | tuple) else size
    if len(input_shape) != 3 or channels != input_shape[0] or config.get("out_channels", channels) != input_shape[0] or size != input_shape[-1]:
        raise ValueError(f"{WHERE}: the UNet in '{folder}' takes {channels}-channel {size}x{size} latents ({size * factor}px images) "
                         f"but the data are {list(input_shape)}; set data.size to {size * factor} (or give that pipeline's data).")
    extra = config.get("addition_embed_type")
    if extra not in (None, "text_time") or config.get("class_embed_type") is not None or config.get("encoder_hid_dim_type") is not None:
        raise ValueError(f"{WHERE}: the UNet in '{folder}' takes conditioning besides text (addition_embed_type {extra!r}, "
                         f"class_embed_type {config.get('class_embed_type')!r}); only SD 1.x / 2.x and SDXL text-to-image UNets are read here.")
    return extra == "text_time"


def diffusers_pipeline(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    path: str,
    prompts: str | list[str],
    encode_device: Literal["auto", "cpu", "cuda"] = "auto",
) -> Denoiser:
    """A `Denoiser` around the UNet of the pipeline saved in ``path``, conditioned on prompt ids
    (module docstring).

    Args:
        input_shape, num_classes: the data's (injected): latents ``[C, h, w]`` that fit the UNet, and
            the number of prompts P, which must be the length of the prompt table.
        path: the local pipeline folder (``model_index.json``, ``unet/``, ``scheduler/``, ``vae/``,
            ``tokenizer/``, ``text_encoder/`` and, for SDXL, ``tokenizer_2/``, ``text_encoder_2/``).
        prompts: the data's sources (its ``train``, and ``val`` / ``test`` when it has them): the
            prompt table is their distinct prompts, sorted, as the data labels its rows.
        encode_device: where the text encoders run once: ``auto`` (a GPU when there is one), ``cpu``, ``cuda``.

    Raises:
        DataNotFoundError: the pipeline folder is not on this machine (validation skips the models).
        ValueError: one line naming the fix (not a pipeline, a missing or unsupported component,
            an unknown scheduler, latents or a prompt count that do not fit).
    """
    root, parts = pipeline_parts(path, WHERE)
    if "unet" not in parts:
        has = "a transformer" if "transformer" in parts else "no unet"
        raise ValueError(f"{WHERE}: the pipeline in '{root}' has {has}; only UNet pipelines (SD 1.x / 2.x, SDXL) are read here: "
                         "the DMD family's discriminator head reads a UNet's mid block.")
    if part_class(root, parts, "unet", WHERE).__name__ != "UNet2DConditionModel":
        raise ValueError(f"{WHERE}: the pipeline in '{root}' has a {parts['unet'][1]}, not a UNet2DConditionModel; for a "
                         "class-conditional or unconditional UNet2DModel use diffusers-folder.")
    file = scheduler_file(root / "unet", root, "unet", WHERE)
    schedule, options, prediction, time_scale = schedule_from_scheduler(read_json(file, WHERE), file, WHERE)
    table_prompts = prompt_list([prompts] if isinstance(prompts, str) else list(prompts), f"{WHERE} prompts")
    if len(table_prompts) != num_classes:
        raise ValueError(f"{WHERE}: prompts {prompts} hold {len(table_prompts)} distinct prompts but the data has {num_classes}; "
                         "give the model the data's sources (its train, val and test).")
    unet = load_part(root, parts, "unet", WHERE)
    vae = frozen_vae(path, WHERE)
    factor = 2 ** (len(vae.vae.config.block_out_channels) - 1)
    sdxl = check_unet(unet, input_shape, factor, root)
    table = prompt_table(str(root.resolve()), tuple(table_prompts), sdxl, input_shape[-1] * factor, str(work_device(encode_device)))
    width, expected = table.hidden.shape[-1], unet.config.get("cross_attention_dim")
    if width != (expected[0] if isinstance(expected, list | tuple) else expected):
        raise ValueError(f"{WHERE}: the text encoders of '{root}' give {width}-wide embeddings but the UNet attends to "
                         f"{expected}; re-save the pipeline with its own text encoders.")
    denoiser = Denoiser(PipelineNet(unet, table, vae, time_scale, input_shape), schedule, prediction, "none")
    denoiser.schedule_options = options  # the schedule's parameters: read by diffusion.common.schedule_of
    return denoiser
