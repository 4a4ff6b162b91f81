"""Users' own text for causal language models (``lm-dataset``), in TRL's dataset formats.

Three formats, told apart by their columns (or named with ``format``):

* language modelling, a ``text`` column: documents are tokenised, each followed by ``<eos>``,
  joined and cut into blocks of ``block_size`` tokens (the last one padded); the loss is on every
  token, as with the Shakespeare data.
* prompt-completion, ``prompt`` and ``completion`` columns: one example per row, the loss on the
  completion tokens (and the ``<eos>`` appended to them) only. Conversational prompts and
  completions (lists of messages) are rendered as a conversation.
* conversational, a ``messages`` column (lists of ``{role, content}``): rendered with the chat
  template of the tokenizer folder; the loss is on the assistant turns' tokens only.

Files are ``.txt`` (one document per file: a book, an article; put one example per line in a
``.jsonl`` instead), ``.jsonl`` / ``.json``, ``.parquet``, a folder of such files, a glob pattern,
or a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``; all are read with
Hugging Face ``datasets``. The tokenizer comes from a local folder (normally the teacher's).
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import lightning as L
import torch
from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError
from torch.utils.data import DataLoader

from anydistill.core.cache import tensor_fingerprint
from anydistill.core.recipe import NonNegativeInt, PositiveInt
from anydistill.data.tensor_data import EpochShuffleSampler
from anydistill.data.text_rows import TextRows, already_batched

SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SAVED_DATASET_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")
FORMAT_COLUMNS = {"messages": ("messages",), "prompt-completion": ("prompt", "completion"), "text": ("text",)}


def _is_saved_dataset(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).is_file() for name in SAVED_DATASET_FILES)


def data_files(source: str) -> list[Path]:
    """The files a source names: the file itself, a folder's readable files, or a glob's matches (sorted)."""
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in SUFFIXES)
    return sorted(Path(p) for p in glob.glob(source) if Path(p).is_file() and Path(p).suffix in SUFFIXES)


def source_problem(source: str) -> str | None:
    """Why ``source`` cannot be read, in one line naming the fix, or None."""
    if _is_saved_dataset(Path(source)):
        return None
    if Path(source).is_file() and Path(source).suffix not in SUFFIXES:
        return f"must be a .txt, .jsonl, .json or .parquet file (or a folder written by save_to_disk); '{source}' is a {Path(source).suffix or 'suffix-less'} file"
    files = data_files(source)
    if not files:
        what = "does not exist" if not Path(source).exists() and not glob.glob(source) else "holds no .txt, .jsonl, .json or .parquet file"
        return (f"must be a .txt, .jsonl or .parquet file, a folder or glob of them, or a folder written by save_to_disk; "
                f"'{source}' {what}")
    kinds = {SUFFIXES[f.suffix] for f in files}
    if len(kinds) > 1:
        return f"must name files of one kind; '{source}' mixes {', '.join(sorted({f.suffix for f in files}))}"
    return None


def _check_source(source: str) -> str:
    problem = source_problem(source)
    if problem:
        raise PydanticCustomError("data_source", problem)
    return source


def _check_tokenizer_folder(folder: str) -> str:
    path = Path(folder)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        what = "does not exist" if not path.exists() else "has no tokenizer.json or tokenizer_config.json"
        raise PydanticCustomError(
            "tokenizer_folder",
            f"must be a folder holding a tokenizer written by save_pretrained (normally the teacher's folder); '{folder}' {what}",
        )
    return folder


DataSource = Annotated[str, AfterValidator(_check_source)]
TokenizerFolder = Annotated[str, AfterValidator(_check_tokenizer_folder)]
HeldOutFraction = Annotated[float, Field(gt=0, lt=1)]


def read_source(source: str):
    """A ``datasets.Dataset`` (or ``DatasetDict`` for a saved dict) of the rows ``source`` names."""
    import datasets

    # A "Generating train split" bar per read would interleave with the CLI's one-line errors.
    datasets.disable_progress_bars()
    if _is_saved_dataset(Path(source)):
        return datasets.load_from_disk(source)
    files = data_files(source)
    kind = SUFFIXES[files[0].suffix]
    options = {"sample_by": "document"} if kind == "text" else {}  # a .txt file is one document
    return datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train", **options)


def load_tokenizer(folder: str):
    """The fast tokenizer of ``folder``; ``<eos>`` doubles as padding when the tokenizer has no pad token.

    Raises:
        ValueError: no fast tokenizer (``tokenizer.json``) or no ``<eos>`` token.
    """
    from transformers import AutoTokenizer

    return checked_tokenizer(AutoTokenizer.from_pretrained(folder, local_files_only=True), f"in {folder}")


def checked_tokenizer(tokenizer, where: str):
    """``tokenizer`` if it is fast and has ``<eos>``, with ``<eos>`` as padding when it has no pad
    token; ``where`` ("in FOLDER") says in messages which tokenizer is at fault.

    Raises:
        ValueError: no fast tokenizer (``tokenizer.json``) or no ``<eos>`` token.
    """
    if not tokenizer.is_fast:
        raise ValueError(f"The tokenizer {where} is not a fast tokenizer: save it with a tokenizer.json "
                         "(AutoTokenizer.from_pretrained(..., use_fast=True).save_pretrained(folder)).")
    if tokenizer.eos_token_id is None:
        raise ValueError(f"The tokenizer {where} has no eos token: set one (tokenizer.eos_token = ...) and save it again.")
    if tokenizer.pad_token_id is None:  # common for causal LMs; padded positions are masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def assistant_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]] | None:
    """The rendered conversation and the character spans ``[start, end)`` of its assistant turns.

    A turn's span is what rendering the conversation through that turn adds to rendering it up to
    the turn with the generation prompt: the reply and its end-of-turn marker, not the role header.
    Returns None when the template does not render conversations prefix by prefix.
    """
    render = lambda turns, prompt: tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=prompt)  # noqa: E731
    full = render(messages, False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, through = render(messages[:i], True), render(messages[: i + 1], False)
        if not (through.startswith(before) and full.startswith(through)):
            return None
        spans.append((len(before), len(through)))
    return full, spans


def _message_problem(messages: Any) -> str | None:
    if not isinstance(messages, list) or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                                 and isinstance(m.get("content"), str) for m in messages):
        return "is not a list of {role, content} messages with string values"
    if not any(m["role"] == "assistant" for m in messages):
        return f"has no assistant turn (roles: {', '.join(m['role'] for m in messages) or 'none'}); the loss is on assistant tokens"
    return None


class LMDataset(L.LightningDataModule):
    """Causal-LM data from a user's files, laid out as the LM methods and evaluator expect.

    Every split is a tensor of rows ``input_ids`` [N, L] (int64, right-padded with the pad id) and
    ``completion_mask`` [N, L] (bool: the tokens the loss counts). A batch holds ``input_ids``,
    ``attention_mask`` (0 on padding), ``completion_mask`` and ``index`` [B].

    Rows longer than L are cut: at the end with ``prompt_tokens = 0``. With ``prompt_tokens = P >= 1``
    (needed by ``gkd`` and ``seq-kd``, which generate from ``input_ids[:, :P]``) an example's prompt
    (everything before its completion, or before the last assistant turn) is kept as its last P
    tokens, left-padded to exactly P, and the completion fills positions P..L-1; for text blocks the
    first P tokens of each block are the prompt. Left padding is masked in ``attention_mask``, but
    ``gkd``, ``seq-kd`` and the evaluator run the models without it: keep prompts about P tokens long.

    Args:
        tokenizer: folder of the tokenizer (and chat template), normally the teacher's folder.
        train: the training rows (a file, a folder or glob of files, or a save_to_disk folder).
        val, test: files of those splits; when absent, ``val_fraction`` / ``test_fraction`` of the
            training rows (text: of its blocks) are held out instead, drawn with ``split_seed``.
            A saved ``DatasetDict`` provides its ``validation``/``val`` and ``test`` splits itself.
        format: ``auto`` (from the columns: ``messages``, else ``prompt`` + ``completion``, else
            ``text``), or one of ``text``, ``prompt-completion``, ``messages``.
        val_fraction, test_fraction: held-out fractions, in (0, 1).
        split_seed: seed of the held-out draw (fixed across training seeds: the test rows stay the same).
        block_size: L, tokens per row.
        prompt_tokens: P (see above); 0 puts every row's first token at position 0.
        batch_size, eval_batch_size: training batch (per process; the last incomplete one is dropped)
            and evaluation batch.
        train_limit, eval_limit: keep N training rows / N rows of val and of test, evenly spaced.
        shuffle, seed: reshuffle training rows every epoch, as a function of seed and epoch.
        domain_column: a column tagging each row with its domain (``shakespeare``, ``news``): batches
            then carry ``domain`` [B] (ids into ``domains``, the sorted tags of every split), which
            routes each example to its teacher (``mix: route``), and the evaluator reports each
            domain apart. Text documents of different domains never share a block.
    """

    input_shape: ClassVar[tuple[int, ...]] = ()  # injected into model builders, which ignore it
    num_classes: ClassVar[int] = 0

    def __init__(
        self,
        tokenizer: TokenizerFolder,
        train: DataSource,
        val: DataSource | None = None,
        test: DataSource | None = None,
        format: Literal["auto", "text", "prompt-completion", "messages"] = "auto",
        val_fraction: HeldOutFraction = 0.1,
        test_fraction: HeldOutFraction = 0.1,
        split_seed: int = 0,
        block_size: PositiveInt = 256,
        prompt_tokens: NonNegativeInt = 0,
        batch_size: PositiveInt = 8,
        eval_batch_size: PositiveInt = 32,
        train_limit: PositiveInt | None = None,
        eval_limit: PositiveInt | None = None,
        shuffle: bool = True,
        seed: int = 0,
        domain_column: str | None = None,
    ):
        super().__init__()
        self.tokenizer_folder, self.sources = tokenizer, {"train": train, "val": val, "test": test}
        self.format, self.val_fraction, self.test_fraction, self.split_seed = format, val_fraction, test_fraction, split_seed
        self.block_size, self.prompt_tokens = block_size, prompt_tokens
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.train_limit, self.eval_limit, self.shuffle, self.seed = train_limit, eval_limit, shuffle, seed
        self.domain_column = domain_column
        self.domains: list[str] = []  # the sorted domain tags (with domain_column)
        self.domain_rows: dict[str, torch.Tensor] = {}  # split -> [N] ids into domains
        self.tokenizer = None
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.attention: dict[str, torch.Tensor] = {}
        self.resolved_format: str | None = None

    @classmethod
    def missing_package(cls) -> str | None:
        """Why the data cannot be loaded here, or None."""
        import importlib.util

        for package in ("datasets", "transformers", "tokenizers"):
            if importlib.util.find_spec(package) is None:
                return f"lm-dataset needs the package '{package}', which is not installed. Install it with: pip install 'anydistill[lm]' {package}"
        return None

    @property
    def inputs_vary_per_epoch(self) -> bool:
        return False

    @property
    def transform(self) -> str:
        """How rows became token tensors (part of every fingerprint)."""
        return f"lm-dataset/{self.resolved_format or self.format}/block{self.block_size}/prompt{self.prompt_tokens}"

    # -- reading --------------------------------------------------------------------------------

    def _resolve_format(self, name: str, columns: list[str]) -> str:
        if self.format != "auto":
            missing = [c for c in FORMAT_COLUMNS[self.format] if c not in columns]
            if missing:
                raise ValueError(f"The {name} data ({self.sources[name]}) has no {' or '.join(repr(c) for c in missing)} column, which "
                                 f"format '{self.format}' reads (columns found: {', '.join(columns) or 'none'}): rename the column or set data.format.")
            return self.format
        for fmt, needed in FORMAT_COLUMNS.items():
            if all(c in columns for c in needed):
                return fmt
        raise ValueError(f"The {name} data ({self.sources[name]}) has no 'messages', 'prompt' + 'completion' or 'text' column "
                         f"(columns found: {', '.join(columns) or 'none'}): rename the columns to one of TRL's formats.")

    def _tokenizer(self):
        """The tokenizer the rows are tokenised with (`load_tokenizer` of the folder; a subclass may
        hold one in memory)."""
        return load_tokenizer(self.tokenizer_folder)

    def _rows(self) -> dict[str, Any]:
        """``{split: datasets.Dataset}`` of the splits given as files (a saved DatasetDict gives its
        own); the one step that reads, so a subclass serving rows held in memory overrides it."""
        import datasets

        rows: dict[str, Any] = {}
        for name, source in self.sources.items():
            if source is None:
                continue
            read = read_source(source)
            if isinstance(read, datasets.DatasetDict):
                keys = {"train": ("train",), "val": ("validation", "val"), "test": ("test",)}
                for split, options in keys.items():
                    found = next((read[k] for k in options if k in read), None)
                    if found is not None and (split == name or (name == "train" and self.sources[split] is None)):
                        rows[split] = found
                if name not in rows:
                    raise ValueError(f"The saved DatasetDict {source} has no '{name}' split (splits: {', '.join(read)}).")
            else:
                rows[name] = read
        return rows

    # -- tokenising -----------------------------------------------------------------------------

    def _domain_tags(self, name: str, table) -> list[str] | None:
        """Each row's domain tag (``domain_column``), or None without one."""
        if self.domain_column is None:
            return None
        if self.domain_column not in table.column_names:
            raise ValueError(f"The {name} data ({self.sources[name] or self.sources['train']}) has no '{self.domain_column}' column, which "
                             f"data.domain_column names (columns found: {', '.join(table.column_names)}): tag every row or fix data.domain_column.")
        tags = [str(tag) for tag in table[self.domain_column]]
        if any(not tag or tag == "None" for tag in tags):
            raise ValueError(f"The {name} data ({self.sources[name] or self.sources['train']}) has rows without a '{self.domain_column}' tag: "
                             "tag every row.")
        return tags

    def _examples(self, name: str, table) -> tuple[list[tuple[list[int], list[bool], int]], list[str | None]]:
        """``(ids, loss mask, prompt length)`` per example and each example's domain tag (None
        without ``domain_column``); text gives one joined stream per domain."""
        tok, fmt = self.tokenizer, self.resolved_format
        tags = self._domain_tags(name, table)
        if fmt == "text":
            streams: dict[str | None, list[int]] = {}
            documents = tok(list(table["text"]), add_special_tokens=True)["input_ids"]  # one batched (parallel) call
            for document, tag in zip(documents, tags or [None] * len(documents)):
                streams.setdefault(tag, []).extend(document + [tok.eos_token_id])
            order = sorted(streams, key=str)
            return [(streams[tag], [True] * len(streams[tag]), 0) for tag in order], order
        examples = self._row_examples(name, table)
        return examples, tags or [None] * len(examples)

    def _row_examples(self, name: str, table) -> list[tuple[list[int], list[bool], int]]:
        """``(ids, loss mask, prompt length)`` of each row of prompt-completion or conversational data."""
        tok, fmt = self.tokenizer, self.resolved_format
        if fmt == "prompt-completion" and len(table) and isinstance(table[0]["prompt"], list):
            # TRL's conversational prompt-completion: the conversation is prompt + completion
            conversations = [list(p) + list(c) for p, c in zip(table["prompt"], table["completion"])]
            return self._conversation_examples(name, conversations)
        if fmt == "prompt-completion":
            # Prompt and completion are tokenised apart, so the boundary is exact whatever the merges.
            prompts = tok(list(table["prompt"]), add_special_tokens=True)["input_ids"]
            completions = tok(list(table["completion"]), add_special_tokens=False)["input_ids"]
            examples = []
            for p, c in zip(prompts, completions):
                c = c + [tok.eos_token_id]
                examples.append((p + c, [False] * len(p) + [True] * len(c), len(p)))
            return examples
        return self._conversation_examples(name, list(table["messages"]))

    def _conversation_examples(self, name: str, conversations: list) -> list[tuple[list[int], list[bool], int]]:
        tok = self.tokenizer
        if not tok.chat_template:
            raise ValueError(f"The tokenizer in {self.tokenizer_folder} has no chat template, which conversational data needs: "
                             "set tokenizer.chat_template and save_pretrained it there, or use prompt/completion columns.")
        bad = [(i, p) for i, p in ((i, _message_problem(m)) for i, m in enumerate(conversations)) if p]
        if bad:
            i, problem = bad[0]
            more = f" ({len(bad) - 1} more rows too)" if len(bad) > 1 else ""
            raise ValueError(f"Row {i} (counting from 0) of the {name} data ({self.sources[name] or self.sources['train']}) {problem}{more}: "
                             "fix or drop it.")
        examples = []
        for i, messages in enumerate(conversations):
            rendered = assistant_spans(tok, [{"role": m["role"], "content": m["content"]} for m in messages])
            if rendered is None:
                raise ValueError(f"The chat template of {self.tokenizer_folder} does not render row {i} of the {name} data prefix by "
                                 "prefix, so the assistant tokens cannot be located: use a template whose rendering of a conversation "
                                 "starts with the rendering of its first turns.")
            text, spans = rendered
            encoded = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            mask = [any(a <= start < b for a, b in spans) for start, _ in encoded["offset_mapping"]]
            split = next((t for t, (start, _) in enumerate(encoded["offset_mapping"]) if start >= spans[-1][0]), len(mask))
            examples.append((encoded["input_ids"], mask, split))
        return examples

    def _layout(self, examples: list[tuple[list[int], list[bool], int]], tags: list[str | None]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str | None]]:
        """Rows ``(input_ids [N, L], completion_mask [N, L], attention_mask [N, L])`` of tokenised
        examples (see the class docstring; attention is 0 on padding), and each row's domain tag."""
        L_, P, pad = self.block_size, self.prompt_tokens, self.tokenizer.pad_token_id
        rows: list[tuple[int, list[int], list[bool]]] = []  # (left padding, ids, loss mask)
        row_tags: list[str | None] = []
        if self.resolved_format == "text":
            for (ids, _, _), tag in zip(examples, tags):  # one stream per domain
                for start in range(0, len(ids), L_):
                    block = ids[start : start + L_]
                    rows.append((0, block, [t >= max(P, 1) for t in range(len(block))]))  # the prompt is context
                    row_tags.append(tag)
        else:
            row_tags = list(tags)
            for ids, mask, split in examples:
                if P == 0:
                    rows.append((0, ids[:L_], mask[:L_]))
                else:  # the prompt ends at position P, where generation starts
                    keep = min(split, P)
                    rows.append((P - keep, ids[split - keep : split + L_ - P], mask[split - keep : split + L_ - P]))
        input_ids = torch.full((len(rows), L_), pad, dtype=torch.long)
        completion = torch.zeros((len(rows), L_), dtype=torch.bool)
        attention = torch.zeros((len(rows), L_), dtype=torch.long)
        for r, (left, ids, mask) in enumerate(rows):
            input_ids[r, left : left + len(ids)] = torch.tensor(ids, dtype=torch.long)
            completion[r, left : left + len(mask)] = torch.tensor(mask, dtype=torch.bool)
            attention[r, left : left + len(ids)] = 1
        return input_ids, completion, attention, row_tags

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if self.prompt_tokens >= self.block_size:
            raise ValueError(f"The 'prompt_tokens' parameter of lm-dataset must be < block_size={self.block_size}. Got {self.prompt_tokens}.")
        self.tokenizer = self._tokenizer()
        tables = self._rows()
        formats = {name: self._resolve_format(name, list(table.column_names)) for name, table in tables.items()}
        if len(set(formats.values())) > 1:
            raise ValueError(f"The splits are in different formats ({', '.join(f'{k}: {v}' for k, v in formats.items())}): give every split the same columns.")
        self.resolved_format = formats["train"]
        laid_out = {name: self._layout(*self._examples(name, table)) for name, table in tables.items()}
        if self.domain_column is not None:
            self.domains = sorted({tag for *_, tags in laid_out.values() for tag in tags})
        ids_of = {tag: i for i, tag in enumerate(self.domains)}
        # (input_ids, completion_mask, attention_mask, domain ids [N]: -1 without domain_column)
        splits = {name: (ids, mask, attention, torch.tensor([ids_of.get(tag, -1) for tag in tags], dtype=torch.long))
                  for name, (ids, mask, attention, tags) in laid_out.items()}
        missing = [name for name in ("val", "test") if name not in splits]
        if missing:
            rows = splits["train"]
            fractions = {"val": self.val_fraction, "test": self.test_fraction}
            counts = {name: max(1, round(rows[0].shape[0] * fractions[name])) for name in missing}
            unit = "blocks" if self.resolved_format == "text" else "rows"
            if rows[0].shape[0] - sum(counts.values()) < 1:
                raise ValueError(f"The train data gives {rows[0].shape[0]} {unit} of {self.block_size} tokens: too few to hold out "
                                 f"{' and '.join(f'{n}_fraction' for n in missing)}; give {' and '.join(missing)} files or more data.")
            order = torch.randperm(rows[0].shape[0], generator=torch.Generator().manual_seed(self.split_seed))
            start = 0
            for name in missing:
                chosen = order[start : start + counts[name]].sort().values
                splits[name] = tuple(t[chosen] for t in rows)
                start += counts[name]
            rest = order[start:].sort().values
            splits["train"] = tuple(t[rest] for t in rows)
        for name, (ids, mask, attention, domain) in splits.items():
            if not mask[:, 1:].any():
                raise ValueError(f"The {name} split has no token the loss counts within block_size={self.block_size}"
                                 f"{f' after prompt_tokens={self.prompt_tokens}' if self.prompt_tokens else ''}: raise block_size.")
            limit = self.train_limit if name == "train" else self.eval_limit
            if limit is not None and limit < ids.shape[0]:
                keep = torch.linspace(0, ids.shape[0] - 1, limit).round().long().unique()
                ids, mask, attention, domain = ids[keep], mask[keep], attention[keep], domain[keep]
            self.splits[name] = (ids.clone(), mask.clone())
            self.attention[name] = attention.clone()
            if self.domain_column is not None:
                self.domain_rows[name] = domain.clone()

    # -- what the methods and the evaluator use -------------------------------------------------

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids [N, L] int64, completion_mask [N, L] bool)`` of split ``name`` ("train", "val", "test")."""
        self.setup()
        return self.splits[name]

    def fingerprint(self, name: str = "train") -> str:
        """Fingerprint of a split's token rows, tokenizer and layout (for the top-k cache of lm-kd)."""
        from anydistill.data.tokenizers import tokenizer_fingerprint

        ids, mask = self.split(name)
        return tensor_fingerprint(torch.cat([ids, mask.long()]), self.__class__.__name__, self.transform,
                                  tokenizer_fingerprint(self.tokenizer))

    def attach_signals(self, signals: dict[str, torch.Tensor]) -> None:
        """The engine's classifier signal cache does not apply: ``lm-kd`` keeps its own top-k cache."""

    def train_dataloader(self) -> DataLoader:
        ids, mask = self.split("train")
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        sampler = EpochShuffleSampler(ids.shape[0], self.seed, self.shuffle, rank, world_size)
        return DataLoader(TextRows(ids, mask, self.attention["train"], self.domain_rows.get("train")), batch_size=self.batch_size, sampler=sampler,
                          drop_last=len(sampler) >= self.batch_size, collate_fn=already_batched)

    def _eval_loader(self, name: str) -> DataLoader:
        ids, mask = self.split(name)
        return DataLoader(TextRows(ids, mask, self.attention[name], self.domain_rows.get(name)), batch_size=self.eval_batch_size,
                          collate_fn=already_batched)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
