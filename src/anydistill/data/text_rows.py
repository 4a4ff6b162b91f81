"""Tokenised text rows served a batch at a time (`lm-dataset` and the data modules built on it)."""

from __future__ import annotations

import torch


class TextRows(torch.utils.data.Dataset):
    """Rows served a batch at a time: ``{"input_ids", "attention_mask", "completion_mask", "index"}``,
    plus ``"domain"`` when the rows have domain ids."""

    def __init__(self, input_ids: torch.Tensor, completion_mask: torch.Tensor, attention_mask: torch.Tensor,
                 domain: torch.Tensor | None = None):
        self.input_ids, self.completion_mask, self.attention_mask, self.domain = input_ids, completion_mask, attention_mask, domain

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        batch = {"input_ids": self.input_ids[index], "attention_mask": self.attention_mask[index],
                 "completion_mask": self.completion_mask[index], "index": index}
        if self.domain is not None:
            batch["domain"] = self.domain[index]
        return batch


def already_batched(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return batch
