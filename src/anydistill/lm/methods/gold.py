"""GOLD (``gold``): on-policy distillation across tokenizers, aligning token groups by the text they cover."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import nn

from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import (
    Fraction,
    NonNegativeFloat,
    OptimizerSpec,
    PositiveFloat,
)
from anydistill.core.space import Uniform
from anydistill.core.teacher import Teacher
from anydistill.lm.common import lm_validation_step, step_loss
from anydistill.lm.cross_tokenizer import (
    alignment_groups,
    hybrid_distance,
    merge_groups,
    shared_prefix,
    sorted_l1,
    vocab_overlap,
)
from anydistill.lm.paired import (
    Side,
    logits_of,
    paired_data_problems,
    positions,
    prepare_paired,
    sample,
    side_from_completions,
    student_side,
    teacher_logits_of,
    teacher_side,
    text_widths,
)
from anydistill.lm.token_losses import token_ce_loss

NucleusP = Annotated[float, Field(gt=0, le=1)]


class GOLD(DistillationMethod):
    r"""GOLD (TRL's ``GOLDTrainer``): GKD's on-policy mixing for a teacher with another tokenizer.

    **Data.** With probability :math:`\lambda` per batch the completions are the student's samples
    from the prompts (``temperature``, ``top_p``, ``top_k = 0``); otherwise, with ``seq_kd``, the
    teacher's samples; otherwise the data's. Samples are decoded and tokenised again by the other
    tokenizer (`TokenizerPair.carry`): the teacher never reads student ids.

    **Alignment.** Both completions carry byte spans in one text. They are cut to the last byte
    boundary both share and walked into G groups covering the same text (`alignment_groups`); each
    group's distributions are merged by the observed rule (`merge_groups`):
    :math:`\tilde q_g = q_{i_0}\prod_{m\ge1} q_{i_m}(y_{i_m})`, likewise :math:`\tilde p_g`.

    **Loss** over the step's groups and the student's completion tokens:

    .. math::

        L = w_{CE}\,\frac{1}{N_s}\sum_t -\log q_\theta(y_t) + w_D\,\frac{1}{G}\sum_g d(\tilde q_g, \tilde p_g)

    with ``hybrid`` :math:`d` = `hybrid_distance` (JSD(beta) on the ids both vocabularies share,
    sorted L1 on the others, weights given or :math:`w_m = M/V_t`), else ULD's `sorted_l1`.
    With one tokenizer on both sides and logits exactly its ids, every group is one token, every id
    is shared (:math:`w_m = 1`) and the loss is GKD's JSD(beta) (less the final ``<eos>`` with
    ``skip_eos``).

    Args:
        lmbda: probability that a batch's completions are the student's samples.
        beta: the teacher's weight in the JSD mixture (0 = forward KL, 1 = reverse KL).
        temperature: sampling temperature (not applied to the loss).
        top_p: nucleus sampling threshold (TRL's GOLD default 0.95).
        seq_kd: train on the teacher's samples instead of the data's (when not on-policy).
        hybrid: JSD on the shared vocabulary plus ULD on the rest (True) or ULD alone.
        matched_weight, unmatched_weight: the hybrid's weights, both or neither (adaptive).
        crossentropy_weight: :math:`w_{CE}` (TRL's default 0).
        distillation_weight: :math:`w_D`.
        skip_eos: leave out the group of each completion's final ``<eos>``.
        vocab_match: how ids are paired across vocabularies: ``bytes`` (the text they stand for) or
            ``string`` (equal token strings, TRL's rule; a byte-level ``Ġa`` never meets ``" a"``).
    """

    family = "lm"
    paper = "TRL GOLD (General Online Logit Distillation, Hugging Face 2025): GKD (Agarwal et al. 2024) with ULD (Boizard et al. 2024) across tokenizers"
    search_space = {"lmbda": Uniform(0.0, 1.0), "beta": Uniform(0.1, 0.9)}
    data = "on-policy"

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        lmbda: Fraction = 0.5,
        beta: Fraction = 0.5,
        temperature: PositiveFloat = 0.9,
        top_p: NucleusP = 0.95,
        seq_kd: bool = False,
        hybrid: bool = True,
        matched_weight: NonNegativeFloat | None = None,
        unmatched_weight: NonNegativeFloat | None = None,
        crossentropy_weight: NonNegativeFloat = 0.0,
        distillation_weight: NonNegativeFloat = 1.0,
        skip_eos: bool = True,
        vocab_match: Literal["bytes", "string"] = "bytes",
    ):
        super().__init__(student, teacher, optimizer)
        self.lmbda, self.beta, self.temperature, self.top_p, self.seq_kd = lmbda, beta, temperature, top_p, seq_kd
        self.hybrid, self.matched_weight, self.unmatched_weight = hybrid, matched_weight, unmatched_weight
        self.crossentropy_weight, self.distillation_weight = crossentropy_weight, distillation_weight
        self.skip_eos, self.vocab_match = skip_eos, vocab_match

    def setup(self, stage: str) -> None:
        data = prepare_paired(self)
        self.pair = data.pair
        self.widths = text_widths(self.student, self.teacher.model, data)
        self.overlap = self.shared_vocabulary(data, self.teacher.model) if self.hybrid else None
        self.prompt_tokens, self.block_size = data.prompt_tokens, data.block_size
        self.teacher_prompt_tokens = data.teacher_prompt_tokens["train"]
        self.teacher_new_tokens = data.paired["train"]["teacher_input_ids"].shape[1] - self.teacher_prompt_tokens
        self.teacher_positions = positions(self.teacher.model) or 1 << 30
        self.ids = {side: (tok.eos_token_id, tok.pad_token_id) for side, tok in (("student", data.tokenizer), ("teacher", data.teacher_tokenizer))}

    def shared_vocabulary(self, data: Any, teacher: nn.Module):
        student_width, teacher_width = text_widths(self.student, teacher, data)
        return vocab_overlap(data.tokenizer, data.teacher_tokenizer, student_width=student_width, teacher_width=teacher_width,
                             match=self.vocab_match)

    # -- completions ------------------------------------------------------------------------------

    def sides(self, batch: dict[str, torch.Tensor]) -> tuple[Side, Side, str]:
        """The student's and the teacher's rows of this step and where the completions come from
        (``data``, ``student`` or ``teacher``); one draw from the seeded global RNG per batch."""
        on_policy = bool(torch.rand(()) < self.lmbda) if self.lmbda > 0 else False
        if not on_policy and not self.seq_kd:
            return student_side(batch), teacher_side(batch), "data"
        s_eos, s_pad = self.ids["student"]
        t_eos, t_pad = self.ids["teacher"]
        P, Pt = self.prompt_tokens, self.teacher_prompt_tokens
        s_prompt, s_attention = batch["input_ids"][:, :P], batch["attention_mask"][:, :P]
        t_prompt, t_attention = batch["teacher_input_ids"][:, :Pt], batch["teacher_attention_mask"][:, :Pt]
        if on_policy:
            s_rows = sample(self.student, s_prompt, s_attention, self.block_size - P, temperature=self.temperature,
                            top_p=self.top_p, eos_token_id=s_eos, pad_token_id=s_pad, text_width=self.widths[0])
            s_spans, t_rows, t_spans = self.pair.carry(s_rows, "student")
            source = "student"
        else:
            model = self.teacher.model
            t_rows = sample(model, t_prompt.to(model.device), t_attention.to(model.device), self.teacher_new_tokens,
                            temperature=self.temperature, top_p=self.top_p, eos_token_id=t_eos, pad_token_id=t_pad,
                            text_width=self.widths[1])
            t_spans, s_rows, s_spans = self.pair.carry(t_rows, "teacher")
            source = "teacher"
        width = min(Pt + max((len(r) for r in t_rows), default=0), self.teacher_positions)
        student = side_from_completions(s_prompt, s_attention, s_rows, s_spans, width=self.block_size, pad_id=s_pad)
        teacher = side_from_completions(t_prompt, t_attention, t_rows, t_spans, width=max(width, Pt + 1), pad_id=t_pad)
        return student, teacher, source

    # -- loss -------------------------------------------------------------------------------------

    def groups(self, student: Side, teacher: Side) -> tuple[list[list[int]], list[list[int]]]:
        """The step's aligned groups as rows of the flattened logits ``[B * (W - 1), V]`` of each side.

        A group is kept when both of its sides are non-empty, every token in it is predicted by a
        logits row (not at position 0) and counted by the loss, and (``skip_eos``) it holds no
        completion's final ``<eos>``.
        """
        s_width, t_width = student.ids.shape[1] - 1, teacher.ids.shape[1] - 1
        s_ids, t_ids = student.ids.tolist(), teacher.ids.tolist()
        s_counts = student.counts.tolist()
        s_spans, t_spans = student.spans.tolist(), teacher.spans.tolist()
        s_groups, t_groups = [], []
        for b, (s_region, t_region) in enumerate(zip(student.region.tolist(), teacher.region.tolist())):
            s_pos = [i for i, inside in enumerate(s_region) if inside]
            t_pos = [j for j, inside in enumerate(t_region) if inside]
            s_sp, t_sp = [s_spans[b][i] for i in s_pos], [t_spans[b][j] for j in t_pos]
            k_s, k_t = shared_prefix(s_sp, t_sp)
            final = set()
            if self.skip_eos:
                final = {("s", s_pos[-1])} if s_pos and s_ids[b][s_pos[-1]] == self.ids["student"][0] else set()
                final |= {("t", t_pos[-1])} if t_pos and t_ids[b][t_pos[-1]] == self.ids["teacher"][0] else set()
            for g_s, g_t in zip(*alignment_groups(s_sp[:k_s], t_sp[:k_t])):
                ps, pt = [s_pos[i] for i in g_s], [t_pos[j] for j in g_t]
                if not ps or not pt or ps[0] == 0 or pt[0] == 0 or not all(s_counts[b][i] for i in ps):
                    continue
                if final and (any(("s", i) in final for i in ps) or any(("t", j) in final for j in pt)):
                    continue
                s_groups.append([b * s_width + i - 1 for i in ps])
                t_groups.append([b * t_width + j - 1 for j in pt])
        return s_groups, t_groups

    @staticmethod
    def merged(logits: torch.Tensor, ids: torch.Tensor, groups: list[list[int]]) -> torch.Tensor:
        """``[G, V]``: each group's merged distribution (`merge_groups`) from the logits rows [B, W-1, V]
        of tokens ``ids[:, 1:]``; only the rows the groups use are soft-maxed (in fp32)."""
        rows = sorted({r for group in groups for r in group})
        local = {r: k for k, r in enumerate(rows)}
        index = torch.tensor(rows, dtype=torch.long, device=logits.device)
        probs = logits.reshape(-1, logits.shape[-1])[index].float().softmax(-1)
        tokens = ids[:, 1:].reshape(-1).to(logits.device)[index]
        return merge_groups(probs, [[local[r] for r in group] for group in groups], tokens)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        student, teacher, source = self.sides(batch)
        target = teacher_logits_of(self.teacher.model, teacher.ids, teacher.attention)  # the teacher first (see LMKD.training_step)
        logits = logits_of(self.student, student.ids, student.attention)
        s_groups, t_groups = self.groups(student, teacher)
        size = student.ids.shape[0]
        loss = shown = 0.0
        if self.crossentropy_weight > 0:
            ce_sum, ce_count = token_ce_loss(logits, student.ids[:, 1:], student.counts[:, 1:])
            loss = step_loss(self, self.crossentropy_weight * ce_sum, ce_count)
            shown = self.crossentropy_weight * ce_sum.detach() / max(ce_count, 1)
            self.log_train("train/ce", ce_sum.detach() / max(ce_count, 1), size)
        if s_groups:
            q = self.merged(logits[..., : self.widths[0]], student.ids, s_groups)
            p = self.merged(target[..., : self.widths[1]], teacher.ids, t_groups).to(q.device)
            del logits, target  # the graph keeps only q's rows: [B, W, V] logits need not outlive the merge (peak memory)
            if self.overlap is not None:
                d, jsd, rest = hybrid_distance(q, p, self.overlap, beta=self.beta, matched_weight=self.matched_weight,
                                               unmatched_weight=self.unmatched_weight)
                self.log_train("train/jsd", jsd.detach().mean(), size)
                self.log_train("train/uld_unshared", rest.detach().mean(), size)
            else:
                d = sorted_l1(q, p)
            d_sum = d.sum()
        else:  # nothing aligned in this batch: a zero that keeps every parameter in the graph (DDP)
            d_sum = logits.sum() * 0.0
        count = len(s_groups)
        loss = loss + step_loss(self, self.distillation_weight * d_sum, count)
        shown = shown + self.distillation_weight * d_sum.detach() / max(count, 1)
        self.log_train("train/distill", d_sum.detach() / max(count, 1), size)
        self.log_train("train/loss", shown, size, prog_bar=True)
        self.log_train("train/on_policy", torch.tensor(float(source == "student")), size)
        # Groups per counted student token: 1 when the tokenisations agree, less as more tokens merge.
        self.log_train("train/groups_per_token", torch.tensor(count / max(int(student.counts[:, 1:].sum()), 1)), size)
        return loss

    validation_step = lm_validation_step

    def data_problems(self, datamodule: Any, teacher: nn.Module | None) -> list[str]:
        problems = paired_data_problems("gold", self.student, datamodule, teacher)
        if problems:
            return problems
        if (self.lmbda > 0 or self.seq_kd) and datamodule.prompt_tokens < 1:
            problems.append("method 'gold' samples completions from prompts (lmbda > 0 or seq_kd): set data.prompt_tokens >= 1 (e.g. 32).")
        if self.hybrid and teacher is not None and self.shared_vocabulary(datamodule, teacher).size == 0:
            problems.append("method 'gold' with hybrid: true needs tokens that both vocabularies share, and these share none: "
                            "set hybrid: false (sorted ULD over every token) or use method 'uld'.")
        return problems

    def recipe_problems(self, *, teacher_shapes, student_shapes, max_epochs: int) -> list[str]:
        if (self.matched_weight is None) != (self.unmatched_weight is None):
            return [("The 'matched_weight' and 'unmatched_weight' parameters of gold must be given together (or neither, for weights "
                     f"adapted to the vocabulary overlap). Got {self.matched_weight} and {self.unmatched_weight}.")]
        return []
