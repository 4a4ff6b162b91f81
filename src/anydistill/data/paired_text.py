"""Text data for cross-tokenizer distillation (``uld``, ``gold``): every row in the student's tokens
and in the teacher's, with the byte spans that line the two up.

The student's rows are those of the base data module (Shakespeare blocks, a user's files) and are
unchanged, so the evaluator and the validation loss see what they always see. Each row's prompt
and completion are turned back into text (the bytes of the student's tokens, `token_bytes`) and
tokenised again by the teacher's tokenizer, prompt and completion apart, so that the completion
starts at a token boundary on both sides. The student's ``<eos>`` reads as the teacher's, so the
teacher sees its own end-of-sequence token. A completion is carried only as far as the other
tokenizer reads it exactly (`TokenizerPair.readable`: up to bytes that are not UTF-8 or a character
it has no id for), so the two sides' byte spans always describe the same text. As in TRL's GOLD,
conversational rows are rendered once, with the student's chat template, and the teacher
tokenises that text.

A training batch holds the base keys (``input_ids``, ``attention_mask``, ``completion_mask``,
``index``) and:

* ``completion_region`` [B, L] bool: the student's completion tokens, from the first one the loss
  counts to the row's end (tokens inside it that the loss does not count, such as a user turn
  between two assistant turns, are in the region but not in ``completion_mask``);
* ``student_spans`` [B, L, 2] int64: each region token's byte span ``[start, end)`` in the
  completion text (zeros elsewhere);
* ``teacher_input_ids``, ``teacher_attention_mask`` [B, W] and ``teacher_completion_mask`` [B, W]:
  the teacher's row, ``[left padding | prompt | completion | right padding]``, its prompt filling
  positions ``0 .. P_t - 1`` (``teacher_prompt_tokens``) and its completion starting at ``P_t``;
* ``teacher_spans`` [B, W, 2]: byte spans of the teacher's completion tokens in the same text.

The set-up module also holds ``teacher_tokenizer``, ``teacher_prompt_tokens`` (``P_t`` per split)
and ``pair``, a `TokenizerPair` the methods use to turn sampled completions into the other
tokenizer's ids the same way (on-policy: the student's samples for the teacher).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader

from anydistill.core.recipe import NonNegativeInt, PositiveInt
from anydistill.data.lm_dataset import (
    DataSource,
    HeldOutFraction,
    LMDataset,
    TokenizerFolder,
    load_tokenizer,
)
from anydistill.data.shakespeare import ShakespeareData, tokenized_corpus
from anydistill.data.tensor_data import EpochShuffleSampler
from anydistill.data.text_rows import already_batched
from anydistill.data.token_bytes import (
    spans_from_ids,
    spans_from_offsets,
    text_bytes,
    token_bytes,
)

PAIRED_KEYS = ("completion_region", "student_spans", "teacher_input_ids", "teacher_attention_mask", "teacher_completion_mask",
               "teacher_spans")


def special_prefix(tokenizer) -> list[int]:
    """The ids ``tokenizer`` puts before a text's own with ``add_special_tokens=True`` (a ``<bos>``), never after."""
    with_special = tokenizer("x", add_special_tokens=True)["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    if not plain:  # "x" is not in the vocabulary: whatever was added, less a trailing <eos>
        return with_special[:-1] if with_special and with_special[-1] == tokenizer.eos_token_id else with_special
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return with_special[:start]
    return []


@dataclass
class TokenizerPair:
    """The student's and the teacher's tokenizers and the bytes of their ids, built once.

    ``student_bytes`` are the student's ids as the teacher reads them (its ``<eos>`` is the
    teacher's ``<eos>`` text) and ``teacher_bytes`` the teacher's ids as the student reads them;
    ``*_own`` are each tokenizer's own reading, against which its offsets are checked.
    """

    student: Any
    teacher: Any
    student_bytes: list[bytes] = field(init=False)
    teacher_bytes: list[bytes] = field(init=False)
    student_own: list[bytes] = field(init=False)
    teacher_own: list[bytes] = field(init=False)

    def __post_init__(self) -> None:
        for role, tokenizer in (("student", self.student), ("teacher", self.teacher)):
            if not getattr(tokenizer, "is_fast", False):
                raise ValueError(f"The {role}'s tokenizer is a slow tokenizer, which gives no character offsets to align the two "
                                 "tokenisations: load it with AutoTokenizer.from_pretrained(..., use_fast=True) (it needs a tokenizer.json).")
        self.student_bytes = token_bytes(self.student, eos_text=self.teacher.eos_token)
        self.teacher_bytes = token_bytes(self.teacher, eos_text=self.student.eos_token)
        self.student_own, self.teacher_own = token_bytes(self.student), token_bytes(self.teacher)
        self.teacher_prefix = special_prefix(self.teacher)
        self.unreadable: dict[str, dict[str, bool]] = {"student": {}, "teacher": {}}
        self.specials = {"student": self.special_split(self.student), "teacher": self.special_split(self.teacher)}

    def text(self, ids: list[int], side: Literal["student", "teacher"]) -> str:
        """The text of ``ids`` of one side, read by the other (undecodable bytes become U+FFFD)."""
        table = self.student_bytes if side == "student" else self.teacher_bytes
        return text_bytes(ids, table).decode("utf-8", "replace")

    def cannot_read(self, character: str, reader: Literal["student", "teacher"]) -> bool:
        """Whether ``reader``'s tokenizer encodes ``character`` (not whitespace, which some tokenizers
        drop by design with correct offsets) to no id at all: a tokenizer without an unknown token,
        such as `char_tokenizer`, drops it silently and misplaces the offsets of every later token."""
        known = self.unreadable[reader]
        if character not in known:
            tokenizer = self.student if reader == "student" else self.teacher
            known[character] = not character.isspace() and not tokenizer(character, add_special_tokens=False)["input_ids"]
        return known[character]

    @staticmethod
    def special_split(tokenizer) -> re.Pattern:
        """A pattern whose ``split`` puts ``tokenizer``'s special tokens (``<eos>``, ``<pad>``, ...) at the odd pieces."""
        specials = sorted({t.content for t in tokenizer.added_tokens_decoder.values() if t.content}, key=len, reverse=True)
        return re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else re.compile("(?!)")

    def readable(self, ids: list[int], side: Literal["student", "teacher"]) -> str:
        """The text of ``ids`` of one side as far as the other side can read it exactly: up to the end
        of the last token before the first byte that is not valid UTF-8 (a byte-level sample may stop
        or wander inside a character) or the first character the other tokenizer cannot encode
        (`cannot_read`; the other side's special tokens, such as ``<eos>``, always read). The text is
        the prefix of the ids' bytes, so their spans (`spans_from_ids`) and the other side's spans of
        it are in the same bytes; the tokens past it have no counterpart, and the methods compare only
        the text both sides cover."""
        table = self.student_bytes if side == "student" else self.teacher_bytes
        reader = "teacher" if side == "student" else "student"
        data = text_bytes(ids, table)
        try:
            text, bad = data.decode("utf-8"), len(data)
        except UnicodeDecodeError as error:
            bad = error.start
            text = data[:bad].decode("utf-8")
        offset = 0  # bytes of text before the current piece
        for k, piece in enumerate(self.specials[reader].split(text)):
            if k % 2 == 0:  # text between the other side's special tokens (odd pieces), which always read
                unreadable = [ch for ch in set(piece) if self.cannot_read(ch, reader)]
                if unreadable:
                    first = min(piece.index(ch) for ch in unreadable)
                    bad = min(bad, offset + len(piece[:first].encode()))
                    break
            offset += len(piece.encode())
        if bad == len(data):
            return text
        end, cut = 0, 0  # the last token boundary at or before the first bad byte that ends a whole character
        for index in ids:
            end += len(table[index]) if index < len(table) else 0
            if end > bad:
                break
            try:
                data[:end].decode("utf-8")
                cut = end
            except UnicodeDecodeError:
                pass
        return data[:cut].decode("utf-8")

    def carry(self, rows: list[list[int]], side: Literal["student", "teacher"]
              ) -> tuple[list[list[tuple[int, int]]], list[list[int]], list[list[tuple[int, int]]]]:
        """Completions ``rows`` of ``side`` (ids) carried to the other tokenizer.

        The other tokenizer reads the `readable` text of each row: a row is carried up to its first
        byte that is not UTF-8 or its first character the other tokenizer cannot encode.

        Returns:
            ``(spans, other_ids, other_spans)``: the byte spans of the given ids in their text, the
            other tokenizer's ids of that text and their byte spans (`spans_from_offsets`).
        """
        table = self.student_bytes if side == "student" else self.teacher_bytes
        other, other_own = (self.teacher, self.teacher_own) if side == "student" else (self.student, self.student_own)
        texts = [self.readable(ids, side) for ids in rows]
        encoded = other(texts, add_special_tokens=False, return_offsets_mapping=True)
        other_spans = [spans_from_offsets(text, offsets, ids, other_own)
                       for text, offsets, ids in zip(texts, encoded["offset_mapping"], encoded["input_ids"])]
        return [spans_from_ids(ids, table) for ids in rows], list(encoded["input_ids"]), other_spans

    def teacher_prompts(self, texts: list[str]) -> list[list[int]]:
        """The teacher's ids of prompt texts, with the special tokens it puts in front (a ``<bos>``)."""
        return [self.teacher_prefix + ids for ids in self.teacher(texts, add_special_tokens=False)["input_ids"]]

    def decoding_problem(self, rows: list[list[int]]) -> str | None:
        """Why the student's tokens do not read one by one (checked on ``rows``), or None."""
        for ids in rows:
            mine = text_bytes(ids, self.student_own).decode("utf-8", "replace")
            theirs = self.student.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if mine != theirs:
                return (f"the student's tokenizer does not decode token by token ({theirs[:40]!r} is read as {mine[:40]!r}), so its "
                        "completions cannot be located in the teacher's tokens: use a byte-level BPE or character-level student tokenizer")
        return None


def layout(prompts: list[list[int]], completions: list[list[int]], spans: list[list[tuple[int, int]]], *, pad_id: int,
           prompt_width: int, width: int) -> dict[str, torch.Tensor]:
    """Rows ``[left padding | prompt | completion | right padding]`` of ``width`` tokens.

    A prompt keeps its last ``prompt_width`` tokens and ends at position ``prompt_width``; a
    completion is cut at ``width``.

    Returns:
        ``input_ids`` [N, W] int64, ``attention_mask`` [N, W] int64, ``completion_mask`` [N, W] bool,
        ``spans`` [N, W, 2] int64 (the completion tokens' byte spans, zeros elsewhere).
    """
    n = len(prompts)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    completion = torch.zeros((n, width), dtype=torch.bool)
    span = torch.zeros((n, width, 2), dtype=torch.long)
    for r, (prompt, tokens, token_spans) in enumerate(zip(prompts, completions, spans)):
        prompt = prompt[len(prompt) - prompt_width :] if len(prompt) > prompt_width else prompt
        tokens = tokens[: width - prompt_width]
        left, end = prompt_width - len(prompt), prompt_width + len(tokens)
        ids[r, left:prompt_width] = torch.tensor(prompt, dtype=torch.long)
        ids[r, prompt_width:end] = torch.tensor(tokens, dtype=torch.long)
        attention[r, left:end] = 1
        completion[r, prompt_width:end] = True
        if tokens:
            span[r, prompt_width:end] = torch.tensor(token_spans[: len(tokens)], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": attention, "completion_mask": completion, "spans": span}


class PairedText:
    """Adds the teacher's tokenisation to a text data module (a mixin placed before it).

    The subclass provides ``_teacher_tokenizer()`` and sets ``teacher_block_size`` (None: as long
    as the longest row needs) and ``teacher_name`` (for fingerprints); ``setup`` then pairs every
    split after the base module has built it.
    """

    teacher_block_size: int | None
    teacher_name: str

    def _teacher_tokenizer(self):
        raise NotImplementedError

    @property
    def transform(self) -> str:
        return f"{super().transform}/teacher-{self.teacher_name}/teacher-block{self.teacher_block_size or 'auto'}"

    def setup(self, stage: str | None = None) -> None:
        if getattr(self, "paired", None):
            return
        super().setup(stage)
        self.pair = TokenizerPair(self.tokenizer, self._teacher_tokenizer())
        self.teacher_tokenizer = self.pair.teacher
        problem = self.pair.decoding_problem(self.splits["train"][0][:8].tolist())
        if problem:
            raise ValueError(f"Cross-tokenizer data: {problem}.")
        self.paired = {name: self._pair_split(name) for name in self.splits}
        self.teacher_prompt_tokens = {name: rows["teacher_prompt_tokens"] for name, rows in self.paired.items()}

    def _pair_split(self, name: str) -> dict[str, Any]:
        ids, mask = self.splits[name]
        attention = getattr(self, "attention", {}).get(name, torch.ones_like(ids))
        n, length = ids.shape
        skip = {self.tokenizer.pad_token_id}
        if self.tokenizer.bos_token_id is not None and self.tokenizer.bos_token_id != self.tokenizer.eos_token_id:
            skip.add(self.tokenizer.bos_token_id)  # the teacher puts its own in front
        prompts, regions, region = [], [], torch.zeros((n, length), dtype=torch.bool)
        for r, (row, counts, attends) in enumerate(zip(ids.tolist(), mask.tolist(), attention.tolist())):
            start = counts.index(True) if True in counts else length
            end = max(length - attends[::-1].index(1) if 1 in attends else length, start)
            prompts.append(self.pair.text([t for t, a in zip(row[:start], attends[:start]) if a and t not in skip], "student"))
            regions.append(row[start:end])
            region[r, start:end] = True
        spans, teacher_ids, teacher_spans = self.pair.carry(regions, "student")
        teacher_prompts = self.pair.teacher_prompts(prompts)
        cap = self.teacher_block_size // 2 if self.teacher_block_size else None
        prompt_width = max((len(p) for p in teacher_prompts), default=0)
        prompt_width = min(prompt_width, cap) if cap is not None else prompt_width
        width = self.teacher_block_size or max(prompt_width + len(c) for c in teacher_ids)
        rows = layout(teacher_prompts, teacher_ids, teacher_spans, pad_id=self.pair.teacher.pad_token_id,
                      prompt_width=prompt_width, width=max(width, prompt_width + 1))
        student_spans = torch.zeros((n, length, 2), dtype=torch.long)
        for r in range(n):
            if spans[r]:
                student_spans[r, region[r]] = torch.tensor(spans[r], dtype=torch.long)
        return {"completion_region": region, "student_spans": student_spans, "teacher_input_ids": rows["input_ids"],
                "teacher_attention_mask": rows["attention_mask"], "teacher_completion_mask": rows["completion_mask"],
                "teacher_spans": rows["spans"], "teacher_prompt_tokens": prompt_width}

    def teacher_split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(teacher_input_ids [N, W], teacher_completion_mask [N, W])`` of split ``name``: the same
        rows in the teacher's tokens (for the teacher's own held-out NLL)."""
        self.setup()
        return self.paired[name]["teacher_input_ids"], self.paired[name]["teacher_completion_mask"]

    def train_dataloader(self) -> DataLoader:
        ids, mask = self.split("train")
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        sampler = EpochShuffleSampler(ids.shape[0], self.seed, self.shuffle, rank, world_size)
        attention = getattr(self, "attention", {}).get("train", torch.ones_like(ids))
        rows = PairedRows({"input_ids": ids, "attention_mask": attention, "completion_mask": mask,
                           **{k: self.paired["train"][k] for k in PAIRED_KEYS}})
        # Complete batches only: the methods normalise by the step's token count (lm/common.py).
        return DataLoader(rows, batch_size=self.batch_size, sampler=sampler, drop_last=len(sampler) >= self.batch_size,
                          collate_fn=already_batched)


class PairedRows(torch.utils.data.Dataset):
    """Rows of equal-length tensors served a batch at a time, plus ``index`` [B]."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return {**{k: v[index] for k, v in self.tensors.items()}, "index": index}



@functools.lru_cache(maxsize=4)
def _shakespeare_tokenizer(kind: str, bpe_vocab_size: int):
    return tokenized_corpus(kind, bpe_vocab_size)[0]


class PairedShakespeareData(PairedText, ShakespeareData):
    """Shakespeare blocks in the student's tokenizer (``tokenizer``) and in the teacher's
    (``teacher_tokenizer``), for ``uld`` and ``gold`` (see the module docstring for the batch).

    Args:
        teacher_tokenizer: the teacher's tokenizer, ``char`` or ``bpe`` (built as the student's are).
        teacher_bpe_vocab_size: ids of the teacher's BPE (ignored for ``char``).
        teacher_block_size: the teacher's row length in its tokens; None: the longest row of each
            split. A set length keeps at most half of it for the prompt (its last tokens) and cuts
            completions at the end; the methods then count only the text both sides cover.
        Others: as `ShakespeareData`.
    """

    def __init__(
        self,
        tokenizer: Literal["char", "bpe"] = "bpe",
        bpe_vocab_size: PositiveInt = 4096,
        teacher_tokenizer: Literal["char", "bpe"] = "char",
        teacher_bpe_vocab_size: PositiveInt = 4096,
        teacher_block_size: PositiveInt | None = None,
        block_size: PositiveInt = 128,
        prompt_tokens: NonNegativeInt = 0,
        batch_size: PositiveInt = 32,
        eval_batch_size: PositiveInt = 64,
        train_limit: PositiveInt | None = None,
        eval_limit: PositiveInt | None = 256,
        shuffle: bool = True,
        seed: int = 0,
    ):
        super().__init__(tokenizer=tokenizer, bpe_vocab_size=bpe_vocab_size, block_size=block_size, prompt_tokens=prompt_tokens,
                         batch_size=batch_size, eval_batch_size=eval_batch_size, train_limit=train_limit, eval_limit=eval_limit,
                         shuffle=shuffle, seed=seed)
        self.teacher_kind, self.teacher_bpe_vocab_size, self.teacher_block_size = teacher_tokenizer, teacher_bpe_vocab_size, teacher_block_size
        self.teacher_name = f"bpe{teacher_bpe_vocab_size}" if teacher_tokenizer == "bpe" else "char"

    def _teacher_tokenizer(self):
        return _shakespeare_tokenizer(self.teacher_kind, self.teacher_bpe_vocab_size)


class PairedLMDataset(PairedText, LMDataset):
    """A user's text files (`LMDataset`, TRL's formats) in the student's tokenizer (``tokenizer``)
    and the teacher's (``teacher_tokenizer``), for ``uld`` and ``gold``.

    Args:
        teacher_tokenizer: folder of the teacher's (fast) tokenizer, normally the teacher model's folder.
        teacher_block_size: as in `PairedShakespeareData`.
        Others: as `LMDataset` (``tokenizer`` is the student's folder here).
    """

    def __init__(
        self,
        tokenizer: TokenizerFolder,
        teacher_tokenizer: TokenizerFolder,
        train: DataSource,
        val: DataSource | None = None,
        test: DataSource | None = None,
        format: Literal["auto", "text", "prompt-completion", "messages"] = "auto",
        val_fraction: HeldOutFraction = 0.1,
        test_fraction: HeldOutFraction = 0.1,
        split_seed: int = 0,
        block_size: PositiveInt = 256,
        prompt_tokens: NonNegativeInt = 0,
        teacher_block_size: PositiveInt | None = None,
        batch_size: PositiveInt = 8,
        eval_batch_size: PositiveInt = 32,
        train_limit: PositiveInt | None = None,
        eval_limit: PositiveInt | None = None,
        shuffle: bool = True,
        seed: int = 0,
    ):
        super().__init__(tokenizer, train, val=val, test=test, format=format, val_fraction=val_fraction, test_fraction=test_fraction,
                         split_seed=split_seed, block_size=block_size, prompt_tokens=prompt_tokens, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, train_limit=train_limit, eval_limit=eval_limit, shuffle=shuffle, seed=seed)
        self.teacher_folder, self.teacher_block_size, self.teacher_name = teacher_tokenizer, teacher_block_size, teacher_tokenizer

    def _teacher_tokenizer(self):
        return load_tokenizer(self.teacher_folder)
