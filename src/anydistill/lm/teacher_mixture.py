r"""Several language-model teachers seen as one (``teachers: {name: {...}, ...}`` with ``mix:``).

Each teacher gives log-probabilities :math:`\log p_i` over the shared vocabulary at every position;
the mixture gives one distribution per position, which the methods distil as they distil one
teacher's:

* ``route``: each example takes its own teacher, named by its domain tag (the data's
  ``domain_column``): :math:`p = p_{d(x)}`. Each teacher runs on its examples only, so a batch
  costs one teacher forward per example, as with one teacher.
* ``average``: :math:`p = \frac{1}{n}\sum_i p_i`, every teacher on every example.
* ``weighted``: :math:`p = \sum_i w_i p_i` with the recipe's weights (positive, summing to 1).

With ``space: logprobs`` the two mixtures are geometric instead, :math:`\log p = \mathrm{log\_softmax}
(\sum_i w_i \log p_i)` (a product of experts: a token needs every teacher's support, where the
arithmetic mixture keeps any teacher's modes).

A teacher is in-process (a `Teacher`), read from its top-k cache (an in-process teacher with
``topk``: the rows of `lm.topk_cache`, densified with the tail spread uniformly; a student's own
samples, which no cache holds, run it online), or served (a `ServedTeacher`). The method's
temperature divides the mixed log-probabilities as it divides one teacher's logits:
:math:`\mathrm{softmax}(\log p / T)`, which for ``route`` is each teacher tempered.

The mixture is formed as ``[B, L-1, V]`` log-probabilities, so the methods take their unfused path
(the fused LM-head loss needs one teacher head).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from anydistill.core.errors import RecipeError
from anydistill.lm.common import teacher_logits
from anydistill.lm.served.use import hidden_logits, is_served, served_problems
from anydistill.lm.teacher_kernels import fuse_teacher_activations
from anydistill.lm.topk import densify_rows
from anydistill.lm.vocab import check_vocab, output_width

MIXES = ("route", "average", "weighted")
SPACES = ("probs", "logprobs")
WEIGHT_TOLERANCE = 1e-6  # weights written with a few decimals (0.7, 0.3) sum to 1 within this


def mix_problems(names: list[str], mix: str, weights: dict[str, float] | None, space: str) -> list[str]:
    """What is wrong with a mix of the teachers ``names``, one line naming the fix each (``mix.*``)."""
    problems = []
    if mix not in MIXES:
        return [f"mix: '{mix}' is not a mix; use route, average or weighted."]
    if space not in SPACES:
        problems.append(f"mix.space: '{space}' is not a space; use probs (arithmetic mixture) or logprobs (geometric).")
    if mix == "route" and space != "probs":
        problems.append("mix.space: route gives each example one teacher, there is nothing to mix; remove mix.space.")
    if mix != "weighted" and weights is not None:
        problems.append(f"mix.weights: only mix: weighted takes weights (mix: {mix} {'routes' if mix == 'route' else 'weighs every teacher 1/n'}); "
                        "remove them or set mix: weighted.")
    if mix == "weighted":
        if not weights:
            return problems + [f"mix.weights: mix: weighted needs one weight per teacher, e.g. {{{', '.join(f'{n}: ...' for n in names)}}}."]
        missing, unknown = [n for n in names if n not in weights], [n for n in weights if n not in names]
        if missing or unknown:
            problems.append(f"mix.weights: give one weight per teacher ({', '.join(names)})"
                            f"{'; missing ' + ', '.join(missing) if missing else ''}{'; no teacher named ' + ', '.join(unknown) if unknown else ''}.")
        bad = [n for n, w in weights.items() if not isinstance(w, int | float) or isinstance(w, bool) or not w > 0 or math.isinf(w)]
        if bad:
            problems.append(f"mix.weights: every weight must be a positive number; {', '.join(f'{n}: {weights[n]!r}' for n in bad)} is not.")
        elif abs(sum(weights.values()) - 1) > WEIGHT_TOLERANCE:
            problems.append(f"mix.weights: the weights must sum to 1 (they sum to {sum(weights.values()):.6g}): "
                            f"divide each by {sum(weights.values()):.6g}.")
    return problems


@dataclass
class Member:
    """One teacher of a mixture: ``teacher`` in-process or served; ``signals`` its opened top-k cache."""

    name: str
    teacher: Any
    topk: int | None = None
    signals: Any = None


class TeacherMixture:
    """Several frozen LM teachers, mixed into one distribution per position (see the module docstring).

    Args:
        teachers: ``{name: Teacher | ServedTeacher}``, in the recipe's order.
        mix: ``route``, ``average`` or ``weighted``.
        weights: ``{name: w}`` of ``weighted`` (positive, summing to 1).
        space: ``probs`` (arithmetic mixture) or ``logprobs`` (geometric).
        topk: ``{name: k}``: in-process teachers read from their top-k cache over the training split.
        cache_dir: root of those caches (`lm.topk_cache`).
    """

    model = None  # no single module: methods branch on `is_mixture`

    def __init__(self, teachers: dict[str, Any], mix: str = "route", *, weights: dict[str, float] | None = None,
                 space: str = "probs", topk: dict[str, int] | None = None, cache_dir: str = ".anydistill-cache/lm-topk"):
        problems = mix_problems(list(teachers), mix, weights, space)
        if not teachers:
            problems.insert(0, "teachers: give at least one teacher.")
        problems += [f"teachers.{n}.topk: only an in-process teacher is cached (a served one sends its own rows)."
                     for n in topk or {} if is_served(teachers.get(n))]
        if problems:
            raise RecipeError(problems)
        topk = topk or {}
        self.members = [Member(name, teacher, topk.get(name)) for name, teacher in teachers.items()]
        self.mix, self.space, self.cache_dir = mix, space, cache_dir
        given = weights or {m.name: 1 / len(self.members) for m in self.members}
        self.weights = torch.tensor([float(given[m.name]) for m in self.members])
        self.name = f"{mix} of {', '.join(teachers)}"
        self.spec = json.dumps({"mix": mix, "space": space, "weights": weights, "topk": topk}, sort_keys=True)
        self.vocab: int | None = None
        self.route: Tensor | None = None  # domain id -> member index (route)

    # -- identity -------------------------------------------------------------------------------

    def fingerprints(self) -> dict[str, str]:
        """Each teacher's fingerprint, by name (the run records them; ``--resume`` compares)."""
        return {m.name: m.teacher.fingerprint() for m in self.members}

    def fingerprint(self) -> str:
        """SHA-256 of the mix settings and every teacher's fingerprint."""
        return hashlib.sha256(f"{self.spec}|{json.dumps(self.fingerprints(), sort_keys=True)}".encode()).hexdigest()

    def to(self, device: Any) -> TeacherMixture:
        for member in self.members:
            member.teacher.to(device)
        return self

    def close(self) -> None:
        """Close the served teachers' connections."""
        for member in self.members:
            if is_served(member.teacher):
                member.teacher.close()

    # -- checks ---------------------------------------------------------------------------------

    def problems(self, datamodule: Any, student: torch.nn.Module) -> list[str]:
        """The teachers against the set-up text data and the student, one line each: every teacher's
        vocabulary against the tokenizer and the student, the teachers pairwise, and for ``route``
        the data's domain tags against the teachers' names."""
        if not hasattr(datamodule, "tokenizer"):
            return ["teachers: several teachers need a text data module with a tokenizer (e.g. data: {name: lm-dataset, ...})."]
        problems, tokenizer = [], datamodule.tokenizer
        local = [m for m in self.members if not is_served(m.teacher)]
        mismatched = set()
        for i, first in enumerate(local):  # the teachers pairwise first: the line that names the mix
            for second in local[i + 1:]:
                if problem := self.pair_problem(first, second):
                    problems.append(problem)
                    mismatched |= {first.name, second.name}
        for member in local:
            if member.name in mismatched:
                continue
            try:
                check_vocab(student, member.teacher.model, tokenizer)
            except ValueError as error:
                problems.append(f"teachers.{member.name}: {error}")
        for member in self.members:
            if is_served(member.teacher):
                card = member.teacher.card
                problems += [f"teachers.{member.name}: {p}" for p in
                             served_problems(member.teacher.url, member.teacher.vocab_size, card.get("max_model_len"), datamodule)]
        problems += [p for m in local if (p := tokenizer_problem(m, tokenizer))]
        if self.mix == "route":
            problems += self.route_problems(datamodule)
        return problems

    def pair_problem(self, first: Member, second: Member) -> str | None:
        """Two teachers whose logits are not one vocabulary (other model families and widths), or None."""
        a, b = first.teacher.model, second.teacher.model
        widths, kinds = (output_width(a), output_width(b)), (getattr(a.config, "model_type", None), getattr(b.config, "model_type", None))
        if widths[0] == widths[1] or kinds[0] == kinds[1]:  # equal, or one family padded differently: the shared ids agree
            return None
        return (f"teachers.{first.name}, teachers.{second.name}: different vocabularies ({kinds[0]}, {widths[0]} logits vs {kinds[1]}, "
                f"{widths[1]} logits), and mix: {self.mix} compares the teachers' distributions token by token: give every teacher the "
                "data's tokenizer (uld and gold distil across tokenizers, one teacher at a time).")

    def route_problems(self, datamodule: Any) -> list[str]:
        """``route`` against the data: it needs domain tags, each naming a teacher."""
        domains = getattr(datamodule, "domains", None)
        if not domains:
            return ["mix: route picks each example's teacher from its domain tag, and the data has none: tag each row "
                    "(a column such as domain: shakespeare) and set data.domain_column to that column."]
        names = [m.name for m in self.members]
        unknown = [d for d in domains if d not in names]
        if unknown:
            return [f"mix: route: the data's domain tag{'s' if len(unknown) > 1 else ''} {', '.join(repr(d) for d in unknown)} "
                    f"name{'' if len(unknown) > 1 else 's'} no teacher (teachers: {', '.join(names)}): add a teacher of that name or retag those rows."]
        return []

    def prepare(self, who: str, datamodule: Any, student: torch.nn.Module) -> int:
        """Check again when fitting starts (the checks `anydistill validate` ran), open the cached
        teachers' top-k rows and fix the routing; returns the shared vocabulary ``V``.

        Raises:
            RecipeError: one line per problem, naming the fix.
        """
        from anydistill.lm.topk_cache import open_signals

        problems = self.problems(datamodule, student)
        if problems:
            raise RecipeError([f"method '{who}': {p}" for p in problems])
        widths = [output_width(student)] + [output_width(m.teacher.model) if not is_served(m.teacher) else m.teacher.vocab_size
                                            for m in self.members]
        self.vocab = min(widths)
        for member in self.members:
            if not is_served(member.teacher):
                fuse_teacher_activations(member.teacher.model)  # as a single in-process teacher runs (same function)
            if member.topk is not None and member.signals is None:
                member.signals = open_signals(f"{who} (teacher {member.name})", member.teacher, datamodule, vocab=self.vocab,
                                              root=self.cache_dir, topk=member.topk)
        if self.mix == "route":
            names = [m.name for m in self.members]
            self.route = torch.tensor([names.index(d) for d in datamodule.domains], dtype=torch.long)
        return self.vocab

    # -- the signal -----------------------------------------------------------------------------

    @property
    def prefetch_enabled(self) -> bool:
        """Whether a served teacher asks one batch ahead (`lm.served.use.pipeline`)."""
        return any(is_served(m.teacher) and m.teacher.prefetch_enabled for m in self.members)

    def prefetch_batch(self, batch: dict[str, Tensor]) -> None:
        """Ask each served teacher for its rows of the data ``batch`` (``route``: its own examples
        only) in the background, while the student steps on the batch before."""
        for i, member in enumerate(self.members):
            if is_served(member.teacher) and member.teacher.prefetch_enabled:
                rows = self.rows_of(i, batch)
                if rows is None or rows.numel():
                    take = (lambda t: t) if rows is None else (lambda t: t[rows.to(t.device)])  # noqa: E731
                    mask = batch.get("attention_mask")
                    member.teacher.prefetch(tuple(take(batch["index"]).tolist()), take(batch["input_ids"]), None if mask is None else take(mask))

    def rows_of(self, i: int, batch: dict[str, Tensor]) -> Tensor | None:
        """The batch rows member ``i`` answers: those routed to it (``route``), or all (None)."""
        if self.mix != "route":
            return None
        return (self.route.to(batch["domain"].device)[batch["domain"]] == i).nonzero().squeeze(1)

    def log_probs(self, batch: dict[str, Tensor], input_ids: Tensor | None = None, attention_mask: Tensor | None = None) -> Tensor:
        """The mixed teacher log-probabilities ``[B, L-1, V]`` (fp32) for the data ``batch``, or for
        other sequences ``input_ids``/``attention_mask`` [B, L] of the same examples (a student's
        samples: routed by the batch's domain tags, never read from a cache)."""
        on_data = input_ids is None
        ids = batch["input_ids"] if on_data else input_ids
        mask = batch.get("attention_mask") if on_data else attention_mask
        if self.mix == "route":
            out = torch.empty(ids.shape[0], ids.shape[1] - 1, self.vocab, device=ids.device)
            for i, member in enumerate(self.members):
                rows = self.rows_of(i, batch).to(ids.device)
                if rows.numel():
                    out[rows] = self.member_log_probs(member, batch, ids, mask, rows, on_data)
            return out
        each = torch.stack([self.member_log_probs(m, batch, ids, mask, None, on_data) for m in self.members])
        weights = self.weights.to(each.device)[:, None, None, None]
        if self.space == "probs":
            return torch.logsumexp(each + weights.log(), dim=0)
        return F.log_softmax((each * weights).sum(0), dim=-1)

    def member_log_probs(self, member: Member, batch: dict[str, Tensor], ids: Tensor, mask: Tensor | None, rows: Tensor | None,
                         on_data: bool) -> Tensor:
        """One teacher's log-probabilities ``[b, L-1, V]`` on rows ``rows`` of the batch (all: None)."""
        take = (lambda t: t) if rows is None else (lambda t: t[rows])  # noqa: E731
        ids, mask = take(ids), None if mask is None else take(mask)
        shape = (ids.shape[0], ids.shape[1] - 1)
        if member.signals is not None and on_data:
            sparse = member.signals.rows(take(batch["index"]), device=ids.device)
            return densify_rows(sparse.logprobs, sparse.indices, sparse.tail_logprob, self.vocab).reshape(*shape, self.vocab)
        if is_served(member.teacher):  # the rows asked for one batch ahead (`prefetch_batch`), or asked now
            signal = member.teacher.rows_for(tuple(take(batch["index"]).tolist()), ids, mask) if on_data else member.teacher.rows(ids, mask)
            if isinstance(signal, Tensor):  # hidden states: through the teacher's head
                return F.log_softmax(hidden_logits(signal.to(ids.device), member.teacher.head())[..., : self.vocab].float(), dim=-1)
            wide = densify_rows(signal.logprobs.to(ids.device), signal.indices.to(ids.device),
                                None if signal.tail_logprob is None else signal.tail_logprob.to(ids.device), member.teacher.vocab_size)
            return F.log_softmax(wide[:, : self.vocab], dim=-1).reshape(*shape, self.vocab)
        return F.log_softmax(teacher_logits(member.teacher, ids, mask, self.vocab).float(), dim=-1).to(ids.device)


def tokenizer_problem(member: Member, tokenizer: Any) -> str | None:
    """A teacher loaded from a folder that holds another tokenizer than the data's, or None."""
    from anydistill.data.lm_dataset import load_tokenizer
    from anydistill.data.tokenizers import tokenizer_fingerprint

    folder = Path(str(getattr(member.teacher.model, "name_or_path", "") or "")) if getattr(member.teacher.model, "name_or_path", "") else None
    if folder is None or not (folder / "tokenizer.json").is_file() or tokenizer_fingerprint(load_tokenizer(str(folder))) == tokenizer_fingerprint(tokenizer):
        return None
    return (f"teachers.{member.name}: its folder {folder} holds another tokenizer than the data's, and several teachers share one "
            "vocabulary: tokenize the data with the teachers' tokenizer (data.tokenizer).")


def is_mixture(teacher: Any) -> bool:
    """Whether ``teacher`` is several teachers (`TeacherMixture`)."""
    return isinstance(teacher, TeacherMixture)

