"""What a method needs to train from a `ServedTeacher`: recognising one, its shared vocabulary, each
batch's rows on the batch's device, and the next batch's request sent while the student steps."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from anydistill.core.errors import RecipeError
from anydistill.lm.topk import SparseTeacher


def is_served(teacher: Any) -> bool:
    """Whether ``teacher`` is a `ServedTeacher` (no module in this process)."""
    from anydistill.lm.served.client import ServedTeacher

    return isinstance(teacher, ServedTeacher)


def served_problems(server: str, vocab_size: int | None, max_model_len: int | None, datamodule: Any) -> list[str]:
    """A served teacher against the set-up text data, one line each: it must score every id of the
    tokenizer (``vocab_size`` logits) and hold a whole block (``max_model_len`` positions)."""
    problems = []
    if not hasattr(datamodule, "tokenizer"):
        return ["a served teacher needs a text data module with a tokenizer (e.g. data: {name: shakespeare})."]
    if vocab_size is not None and vocab_size < len(datamodule.tokenizer):
        problems.append(f"the teacher server {server} has {vocab_size} logits, fewer than the tokenizer's {len(datamodule.tokenizer)} ids: "
                        "serve a teacher of the student's tokenizer (or fix teacher.vocab_size).")
    if max_model_len is not None and max_model_len < datamodule.block_size:
        problems.append(f"the teacher server {server} holds {max_model_len} positions but data.block_size is {datamodule.block_size}: "
                        f"set data.block_size <= {max_model_len}.")
    return problems


def served_vocab(who: str, teacher: Any, datamodule: Any, student_vocab: int) -> int:
    """The vocabulary shared with a served teacher (the student's, already checked against the
    tokenizer, cut to the server's), after `served_problems` (again: the server may have changed)."""
    problems = served_problems(teacher.url, teacher.vocab_size, teacher.card.get("max_model_len"), datamodule)
    if problems:
        raise RecipeError([f"method '{who}': {p}" for p in problems])
    return min(student_vocab, teacher.vocab_size)


def _key(batch: dict[str, Tensor]) -> tuple[int, ...]:
    return tuple(batch["index"].tolist())


def served_rows(teacher: Any, batch: dict[str, Tensor], input_ids: Tensor | None = None,
                attention_mask: Tensor | None = None) -> SparseTeacher | Tensor:
    """The teacher's rows for the data ``batch`` (the prefetched answer when `pipeline` asked for it),
    or for other sequences ``input_ids``/``attention_mask`` (a student's samples: asked now), on the
    batch's device: a `SparseTeacher` of ``B * (L - 1)`` rows or hidden states ``[B, L - 1, H]``."""
    if input_ids is None:
        rows = teacher.rows_for(_key(batch), batch["input_ids"], batch.get("attention_mask"))
    else:
        rows = teacher.rows(input_ids, attention_mask)
    device = batch["input_ids"].device
    if isinstance(rows, Tensor):
        return rows.to(device)
    return SparseTeacher(rows.logprobs.to(device), rows.indices.to(device),
                         None if rows.tail_logprob is None else rows.tail_logprob.to(device))


def hidden_logits(hidden: Tensor, head: Any) -> Tensor:
    """``[..., V]`` logits of a teacher's hidden states ``[..., H]`` (cached or served, in the head's
    dtype) through its head (no graph), on the hidden states' device."""
    bias = None if head.bias is None else head.bias.to(hidden.device)
    with torch.no_grad():
        return torch.nn.functional.linear(hidden, head.weight.to(hidden.device), bias)


def pipeline(teacher: Any, datamodule: Any) -> None:
    """Have each training batch's rows asked for one batch ahead, while the student steps on the
    batch before it.

    Lightning does not read ahead from a loader that has a length, so ``datamodule.train_dataloader()``
    is wrapped (from now on; call it in the method's ``setup``, before Lightning asks for the loader,
    and `unpipeline` in ``teardown``) into a `LookaheadLoader`, which makes batch n + 1 and sends its
    request before it hands over batch n.
    """
    if "train_dataloader" in vars(datamodule) or not teacher.prefetch_enabled:  # already wrapped (setup again), or asked not to
        return
    make_loader = datamodule.train_dataloader
    datamodule.train_dataloader = lambda: LookaheadLoader(make_loader(), teacher)


class LookaheadLoader:
    """Iterates ``loader`` one batch ahead: each batch's request to the served ``teacher`` is sent as
    soon as the batch is made, before the previous batch is handed over. Everything else (length,
    sampler, dataset: what Lightning reads) is the wrapped loader's."""

    def __init__(self, loader: Any, teacher: Any):
        self.loader, self.teacher = loader, teacher

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def __iter__(self) -> Any:
        batches = iter(self.loader)
        ahead = self._ask(next(batches, None))
        while ahead is not None:
            current, ahead = ahead, self._ask(next(batches, None))
            yield current

    def _ask(self, batch: Any) -> Any:
        if batch is not None and hasattr(self.teacher, "prefetch_batch"):  # several teachers: each served one its rows
            self.teacher.prefetch_batch(batch)
        elif batch is not None:
            self.teacher.prefetch(_key(batch), batch["input_ids"], batch.get("attention_mask"))
        return batch


def unpipeline(datamodule: Any) -> None:
    """Undo `pipeline`: the data module is shared by the run's other methods."""
    vars(datamodule).pop("train_dataloader", None)
