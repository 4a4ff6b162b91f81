"""Token-level knowledge distillation for causal LMs (``lm-kd``), from the online teacher or from a
top-k cache of its distributions."""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from torch import nn

from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import Fraction, OptimizerSpec, PositiveFloat, PositiveInt
from anydistill.core.space import LogUniform, Uniform
from anydistill.core.teacher import Teacher
from anydistill.lm.common import causal_logits, lm_data_problems, lm_validation_step, prepare, step_loss, targets_and_mask, teacher_logits
from anydistill.lm.fused_head import fused_kd_ce_loss
from anydistill.lm.head import Head, choose_fused, last_hidden, lm_head, teacher_hidden
from anydistill.lm.hidden_cache import HiddenSignals, open_hidden_signals
from anydistill.lm.served.use import hidden_logits, is_served, pipeline, served_rows, served_vocab, unpipeline
from anydistill.lm.teacher_mixture import is_mixture
from anydistill.lm.token_losses import token_ce_loss, token_distill_loss
from anydistill.lm.topk import SparseTeacher
from anydistill.lm.topk_cache import open_signals, signal_problems
from anydistill.lm.vocab import output_width

log = logging.getLogger(__name__)


class LMKD(DistillationMethod):
    r"""Match the teacher's next-token distribution on the data's completion tokens, mixed with the
    cross-entropy of the data:

    .. math::

        L = \alpha \, \frac{1}{N} \sum_{t} c_T\, D\big(p_T^{(t)}, q_{\theta,T}^{(t)}\big)
            + (1 - \alpha)\, \frac{1}{N} \sum_t -\log q_\theta(y_t)

    over the N completion tokens of the optimisation step (global count, `lm.common.step_loss`),
    with D one of the divergences of :mod:`anydistill.lm.token_losses`, T dividing both logits
    and :math:`c_T = T^2` if ``scale_by_t2``.

    The teacher runs online on every batch, or, with ``topk`` set, once over the training split
    into a cache of its top-k log-probabilities (+ tail bucket) on disk (`lm.topk_cache`), which
    later epochs and later runs read instead. A served teacher (``teacher: {server: ...}``,
    `lm.served.ServedTeacher`) sends each batch's top-k, adaptive-k or hidden-state rows over HTTP,
    the next batch's request in flight while the student steps on this one. Several teachers
    (``teachers:`` with ``mix: route | average | weighted``, `lm.teacher_mixture`) give one mixed
    distribution per position, on the unfused path.

    With ``fused_head`` (``auto``, the default: from a vocabulary of 4,096 on) the loss takes the student's last hidden states and LM head
    and forms the logits ``head_chunk_tokens`` tokens at a time (`lm.fused_head`), as it does the
    online teacher's: neither model's ``[B, L, V]`` logits exist, the largest memory item of a
    step at real vocabularies. Same loss and gradients as the unfused path (to fp32 rounding); a
    model whose logits are not ``hidden @ head`` (`lm.head.head_problem`) keeps the unfused path
    and the log says why. One difference with a padded head (more rows than the shared
    vocabulary): the fused cross-entropy normalises over the shared vocabulary, the unfused one
    over every row.

    Args:
        divergence: ``fkl`` | ``rkl`` | ``jsd`` | ``skl`` | ``srkl`` | ``tvd``.
        temperature: T, applied to both distributions in the KD term (the CE term is at T = 1).
        beta: the teacher's weight in the ``jsd`` mixture (0 = fkl, 1 = rkl, TRL's convention).
        skew_alpha: the mixing weight of ``skl`` / ``srkl`` (DistiLLM's 0.1).
        alpha: weight of the KD term; ``1 - alpha`` weights the cross-entropy.
        scale_by_t2: multiply the KD term by T^2 (Hinton).
        topk: cache and train on the teacher's top-k log-probabilities instead of running it online:
            a fixed k, or ``adaptive``: at each position the fewest entries (``k_min``..``k_max``)
            whose reconstruction is within ``KL <= kl_budget`` nats of the teacher (`lm.adaptive_topk`).
        kl_budget: ε of the adaptive cache, checked at every position (the max, not the mean).
        k_min, k_max: the adaptive cache's range of k (``k_max`` None = the vocabulary).
        topk_tail: store the tail bucket (mass outside the top-k, spread uniformly); without it the
            top-k is renormalised.
        cache_dtype: storage of the cached log-probabilities (float16 halves the bytes; its rounding
            changes KL(full || reconstructed) by about 1e-6 nats/token).
        cache_dir: root directory of teacher caches (one sub-directory per teacher/data/setting).
        hidden_cache: cache the teacher's last hidden states (and its head) instead of top-k
            log-probabilities: exact over the whole vocabulary at ``2 * H`` bytes per token, the
            teacher's logits formed chunk by chunk at training time (`lm.hidden_cache`).
        hidden_dtype: storage of the cached hidden states.
        fused_head: compute the loss from hidden states and head weights, chunk by chunk: ``auto``
            from V = 4,096 on (below, full logits are small and faster), ``true`` always, ``false`` never.
        head_chunk_tokens: tokens whose logits exist at once on the fused path (memory ~5 x this x V floats for fkl, rkl, jsd; ~15 x for the others).
    """

    family = "lm"
    paper = "Hinton et al. 2015 (token-level KD); divergences of Agarwal et al. 2024 (GKD) and Ko et al. 2024 (DistiLLM)"
    # Token-level KD: temperatures near 1 (GKD and DistiLLM use 1), alpha the soft/label mix.
    search_space = {"temperature": LogUniform(0.5, 2.0), "alpha": Uniform(0.1, 0.9)}
    served_teacher = True
    several_teachers = True

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        divergence: Literal["fkl", "rkl", "jsd", "skl", "srkl", "tvd"] = "fkl",
        temperature: PositiveFloat = 1.0,
        beta: Fraction = 0.5,
        skew_alpha: Fraction = 0.1,
        alpha: Fraction = 0.5,
        scale_by_t2: bool = False,
        topk: PositiveInt | Literal["adaptive"] | None = None,
        kl_budget: PositiveFloat = 1e-3,
        k_min: PositiveInt = 1,
        k_max: PositiveInt | None = None,
        topk_tail: bool = True,
        cache_dtype: Literal["float16", "float32"] = "float16",
        cache_dir: str = ".anydistill-cache/lm-topk",
        hidden_cache: bool = False,
        hidden_dtype: Literal["float16", "bfloat16"] = "float16",
        fused_head: bool | Literal["auto"] = "auto",
        head_chunk_tokens: PositiveInt = 256,
    ):
        super().__init__(student, teacher, optimizer)
        self.divergence, self.temperature, self.beta, self.skew_alpha = divergence, temperature, beta, skew_alpha
        self.alpha, self.scale_by_t2 = alpha, scale_by_t2
        self.topk, self.topk_tail, self.cache_dtype, self.cache_dir = topk, topk_tail, cache_dtype, cache_dir
        self.kl_budget, self.k_min, self.k_max = kl_budget, k_min, k_max
        self.hidden_cache, self.hidden_dtype = hidden_cache, hidden_dtype
        self.fused_head, self.head_chunk_tokens = fused_head, head_chunk_tokens
        self.signals = None  # the teacher cache (top-k, adaptive or hidden), loaded in setup
        self.fused, self.teacher_head = False, None  # decided in setup

    def setup(self, stage: str) -> None:
        self.vocab = prepare(self)
        if is_mixture(self.teacher):
            self.vocab = self.teacher.prepare("lm-kd", self.trainer.datamodule, self.student)
        if is_served(self.teacher):
            self.vocab = served_vocab("lm-kd", self.teacher, self.trainer.datamodule, self.vocab)
            self.signals = self.teacher
        if self.topk is not None and self.signals is None:
            self.signals = open_signals("lm-kd", self.teacher, self.trainer.datamodule, vocab=self.vocab, root=self.cache_dir,
                                        topk=self.topk, tail=self.topk_tail, dtype=self.cache_dtype, kl_budget=self.kl_budget,
                                        k_min=self.k_min, k_max=self.k_max)
        if self.hidden_cache and self.signals is None:
            self.signals = open_hidden_signals("lm-kd", self.teacher, self.trainer.datamodule, vocab=self.vocab,
                                               root=self.cache_dir, dtype=self.hidden_dtype)
        online = {"teacher": self.teacher.model} if self.signals is None and not is_mixture(self.teacher) else {}
        self.fused, why_not = (False, "several teachers are mixed as full distributions") if is_mixture(self.teacher) else choose_fused(self.fused_head, {"student": self.student, **online}, self.vocab,
                                           type(self.trainer.strategy).__name__ if self.trainer is not None else "")
        if why_not:
            log.info("lm-kd: fused LM-head loss off, full logits instead (%s)", why_not)
        if self.fused and online:
            self.teacher_head = lm_head(self.teacher.model, self.vocab)
        elif isinstance(self.signals, HiddenSignals):
            self.teacher_head = self.signals.head
        elif is_served(self.signals) and self.signals.signal == "hidden":
            self.teacher_head = self.signals.head()

        if (is_served(self.teacher) or is_mixture(self.teacher)) and stage == "fit":
            pipeline(self.teacher, self.trainer.datamodule)

    def teardown(self, stage: str) -> None:
        if (is_served(self.teacher) or is_mixture(self.teacher)) and self.trainer is not None and self.trainer.datamodule is not None:
            unpipeline(self.trainer.datamodule)

    def teacher_signal(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | SparseTeacher:
        """The batch's rows of the top-k cache, or the teacher's hidden states [B, L-1, Ht] (cached
        or online, fused path) or logits [B, L-1, V] (online or from the cached hidden states), or
        several teachers' mixed log-probabilities [B, L-1, V]."""
        if is_mixture(self.teacher):
            return self.teacher.log_probs(batch)
        if is_served(self.signals):
            signal = served_rows(self.signals, batch)
            return signal if not isinstance(signal, torch.Tensor) or self.fused else hidden_logits(signal, self.teacher_head)
        if isinstance(self.signals, HiddenSignals):
            hidden = self.signals.rows(batch["index"], device=batch["input_ids"].device)
            if self.fused:
                return hidden
            return hidden_logits(hidden, self.signals.head)
        if self.signals is not None:
            return self.signals.rows(batch["index"], device=batch["input_ids"].device)
        if self.fused:
            return teacher_hidden(self.teacher.model, batch["input_ids"], batch["attention_mask"])
        return teacher_logits(self.teacher, batch["input_ids"], batch["attention_mask"], self.vocab)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        targets, mask = targets_and_mask(batch["input_ids"], batch["completion_mask"])
        # Teacher first: its forward then allocates while no student graph is alive. The other order
        # (TRL's) makes glibc malloc hand the teacher's large buffers back to the OS and fault them in
        # again on every step: 70 vs 48 ms per step for the benchmark's models at 2 threads.
        signal = self.teacher_signal(batch)
        loss_sum, kd_sum, ce_sum, count = (self.fused_losses if self.fused else self.unfused_losses)(batch, signal, targets, mask)
        if self.alpha < 1:
            self.log_train("train/ce", ce_sum.detach() / max(count, 1), batch["input_ids"].shape[0])
        self.log_train("train/kd", kd_sum.detach() / max(count, 1), batch["input_ids"].shape[0])
        self.log_train("train/loss", loss_sum.detach() / max(count, 1), batch["input_ids"].shape[0], prog_bar=True)
        return step_loss(self, loss_sum, count)

    def unfused_losses(self, batch, signal, targets, mask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
        """``(loss_sum, kd_sum, ce_sum or None, count)`` from the student's full logits [B, L-1, V]."""
        logits = causal_logits(self.student, batch["input_ids"], batch["attention_mask"])
        kd_sum, count = token_distill_loss(
            logits[..., : self.vocab], signal, mask, divergence=self.divergence,
            temperature=self.temperature, beta=self.beta, alpha=self.skew_alpha, scale_by_t2=self.scale_by_t2,
        )
        if self.alpha == 1:
            return kd_sum, kd_sum, None, count
        ce_sum, _ = token_ce_loss(logits, targets, mask)
        return self.alpha * kd_sum + (1 - self.alpha) * ce_sum, kd_sum, ce_sum, count

    def fused_losses(self, batch, signal, targets, mask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """The same from the student's last hidden states and head, chunk by chunk (`lm.fused_head`)."""
        hidden = last_hidden(self.student, batch["input_ids"], batch["attention_mask"])
        head, teacher = lm_head(self.student, self.vocab), self.teacher_head or Head(None, None)
        return fused_kd_ce_loss(
            hidden, head.weight, head.bias, signal, teacher.weight, teacher.bias, targets, mask, kd_weight=self.alpha,
            divergence=self.divergence, temperature=self.temperature, beta=self.beta, alpha=self.skew_alpha,
            scale_by_t2=self.scale_by_t2, chunk_tokens=self.head_chunk_tokens,
        )

    validation_step = lm_validation_step

    def data_problems(self, datamodule: Any, teacher: nn.Module | None) -> list[str]:
        problems = lm_data_problems(self, datamodule, teacher)
        vocab = min(output_width(m) for m in (self.student, teacher) if m is not None)
        if not problems:
            problems += signal_problems("lm-kd", self.topk, vocab, self.kl_budget, self.k_min, self.k_max)
        if self.hidden_cache and self.topk is not None:
            problems.append("lm-kd caches either the teacher's top-k ('topk') or its hidden states ('hidden_cache: true'), not both: remove one.")
        if is_served(self.teacher) and (self.topk is not None or self.hidden_cache):
            problems.append("lm-kd with a served teacher takes the signal it sends (teacher.signal, teacher.topk): remove 'topk' / 'hidden_cache'.")
        if is_mixture(self.teacher) and (self.topk is not None or self.hidden_cache):
            problems.append("lm-kd with several teachers caches each in its own section (teachers.NAME.topk): remove 'topk' / 'hidden_cache'.")
        return problems
