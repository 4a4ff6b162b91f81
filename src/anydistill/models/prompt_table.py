"""The text conditioning of a fixed prompt list, computed once with a pipeline's tokenizers and text
encoders (which are then dropped): how text reaches a ``diffusers-pipeline`` denoiser as integer
prompt ids, so that every method passes labels as it does for class-conditional models.

As the pipelines encode a prompt:

* Stable Diffusion 1.x / 2.x (one CLIP text encoder): ``encoder_hidden_states`` is the encoder's
  last hidden state ``[L, D]`` (``L = 77``); the empty prompt is encoded like any other.
* SDXL (a UNet with ``addition_embed_type: text_time``; ``text_encoder`` and ``text_encoder_2``): the
  penultimate hidden states of both encoders side by side ``[L, D1 + D2]``, the last encoder's
  pooled projection ``text_embeds`` ``[D2]``, and ``time_ids`` ``(H, W, 0, 0, H, W)`` (the image
  size, no crop). With the pipeline's ``force_zeros_for_empty_prompt`` (SDXL's default) the empty
  prompt's row is zeros, as the pipeline's unconditional branch.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from torch import Tensor

from anydistill.models.pipeline_parts import SharedOnCopy, load_part


class PromptTable(SharedOnCopy):
    """The conditioning of prompts ``0 .. P-1`` and of the empty prompt, row ``P`` (the null label).

    Held on the CPU by the networks as a plain attribute, never a buffer: it is not trained, not in
    any state dict (the builder recomputes it), not broadcast by DDP, and the copies a method makes
    of a network (fake score, experts) share it, so a large prompt list costs its memory once.

    Args:
        prompts: the P prompts.
        hidden: ``[P + 1, L, D]`` the UNet's ``encoder_hidden_states``.
        text_embeds, time_ids: ``[P + 1, D']`` and ``[P + 1, 6]`` (SDXL's added conditioning), or None.
    """

    def __init__(self, prompts: list[str], hidden: Tensor, text_embeds: Tensor | None = None, time_ids: Tensor | None = None):
        self.prompts, self.hidden, self.text_embeds, self.time_ids = list(prompts), hidden, text_embeds, time_ids

    @property
    def null(self) -> int:
        """The null label: the empty prompt's row."""
        return len(self.prompts)

    def unet_kwargs(self, cond: Tensor, device: torch.device, dtype: torch.dtype) -> dict:
        """The UNet's keyword arguments for prompt ids ``cond`` [B] (rows gathered here, then moved)."""
        index = cond.detach().to("cpu", torch.long)
        kwargs = {"encoder_hidden_states": self.hidden[index].to(device, dtype)}
        if self.text_embeds is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": self.text_embeds[index].to(device, dtype),
                                           "time_ids": self.time_ids[index].to(device, dtype)}
        return kwargs


def _encode(tokenizer, encoder, prompts: list[str], device: torch.device, sdxl: bool) -> tuple[Tensor, Tensor | None]:
    """``(hidden [N, L, D], pooled [N, D'] or None)`` of ``prompts`` through one tokenizer and encoder,
    in chunks (a long prompt list need not fit the device at once)."""
    hidden, pooled = [], []
    masked = bool(getattr(encoder.config, "use_attention_mask", False))
    for start in range(0, len(prompts), 64):
        tokens = tokenizer(prompts[start : start + 64], padding="max_length", max_length=tokenizer.model_max_length,
                           truncation=True, return_tensors="pt")
        mask = tokens.attention_mask.to(device) if masked else None
        out = encoder(tokens.input_ids.to(device), attention_mask=mask, output_hidden_states=sdxl)
        hidden.append((out.hidden_states[-2] if sdxl else out[0]).float().cpu())
        if out[0].ndim == 2:  # a projection model's first output is its pooled embedding (SDXL's text_encoder_2)
            pooled.append(out[0].float().cpu())
    return torch.cat(hidden), (torch.cat(pooled) if pooled else None)


@functools.lru_cache(maxsize=2)
def prompt_table(root: str, prompts: tuple[str, ...], sdxl: bool, image_size: int, device: str) -> PromptTable:
    """The `PromptTable` of ``prompts`` under the pipeline in ``root``, computed once per process
    (the teacher and the student of a run, and validation, share it).

    Args:
        root: the pipeline folder (checked by the caller).
        prompts: the prompt list (label i is prompt i).
        sdxl: encode as SDXL does (two encoders, pooled text embeddings and time ids).
        image_size: the images' side in pixels (SDXL's time ids).
        device: where the text encoders run.
    """
    from anydistill.models.pipeline_parts import pipeline_parts

    where = "diffusers-pipeline"
    folder, parts = pipeline_parts(root, where)
    names = [("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")] if sdxl else [("tokenizer", "text_encoder")]
    texts = [*prompts, ""]
    hidden, pooled = [], None
    with torch.no_grad():
        for tokenizer_name, encoder_name in names:
            if sdxl and encoder_name not in parts:  # the SDXL refiner has only text_encoder_2
                continue
            tokenizer = load_part(folder, parts, tokenizer_name, where)
            encoder = load_part(folder, parts, encoder_name, where).to(device).eval()
            states, projected = _encode(tokenizer, encoder, texts, torch.device(device), sdxl)
            hidden.append(states)
            pooled = projected if projected is not None else pooled
            del encoder  # the text encoders are not kept: the table is all the networks need
    table = torch.cat(hidden, dim=-1)
    if not sdxl:
        return PromptTable(list(prompts), table)
    if pooled is None:
        raise ValueError(f"{where}: the SDXL pipeline in '{root}' has no text encoder with a pooled projection "
                         "(CLIPTextModelWithProjection as text_encoder_2); re-save the complete pipeline.")
    if json.loads((Path(root) / "model_index.json").read_text()).get("force_zeros_for_empty_prompt", True):
        table[-1], pooled[-1] = 0, 0  # the pipeline's unconditional branch is zeros, not the encoded ""
    time_ids = torch.tensor([image_size, image_size, 0, 0, image_size, image_size], dtype=torch.float32).expand(len(texts), 6)
    return PromptTable(list(prompts), table, pooled, time_ids.clone())
