"""MiniLLM: sequence-level reverse-KL distillation by policy gradient, with PPO inner epochs."""

from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import Field
from torch import nn

from anydistill.core.method import DistillationMethod
from anydistill.core.optim import build_optimizer
from anydistill.core.recipe import Fraction, NonNegativeFloat, OptimizerSpec, PositiveFloat, PositiveInt
from anydistill.core.space import Uniform
from anydistill.core.teacher import Teacher
from anydistill.lm.common import causal_logits, generate, lm_data_problems, lm_validation_step, prepare, step_loss, teacher_logits
from anydistill.lm.mixed_sampling import sample_mixed
from anydistill.lm.policy_gradient import (
    importance_weights, ppo_surrogate, returns, single_step_rkl, token_logprobs, token_rewards, whiten,
)
from anydistill.lm.token_losses import token_ce_loss, token_distill_loss
from anydistill.lm.vocab import output_width

# PPO's epsilon: 1 - epsilon must stay a positive lower bound on the ratio.
ClipRange = Annotated[float, Field(gt=0, lt=1)]


class MiniLLM(DistillationMethod):
    r"""MiniLLM (Gu et al., ICLR 2024): minimise the *sequence-level* reverse KL
    :math:`\mathrm{KL}(q_\theta \| p)` of the student :math:`q_\theta` from the teacher :math:`p`
    by policy gradient on the student's own (teacher-mixed) samples, plus a language-modelling loss
    on the training text. Each optimizer update minimises

    .. math::

        L = \underbrace{\tfrac{1}{N}\textstyle\sum_t \max\!\big(-A_t \rho_t w_t,\,
                -A_t \operatorname{clip}(\rho_t w_t, 1\pm\epsilon)\big)}_{\texttt{rkl\_advantage}}
            + \underbrace{\tfrac{1}{N}\textstyle\sum_t \mathrm{KL}\big(q_\theta^{(t)} \| p^{(t)}\big)}_{\texttt{single\_step\_decomposition}}
            + \lambda_\mathrm{lm}\Big[(1-\kappa)\,\mathrm{CE}(x) + \kappa\, \tfrac{1}{M}\textstyle\sum_t \mathrm{KL}\big(p^{(t)} \| q_\theta^{(t)}\big)\Big]

    over the N generated tokens of the step's rollouts ``y ~ p̃ = α p + (1 − α) q_θold`` and the
    M tokens of the training blocks x, where

    - :math:`A_t` = whitened :math:`R_t`, :math:`R_t = \sum_{i \ge t} \gamma^{i-t} r_i /
      \sum_{i \ge t} \gamma^{i-t}` (length-normalised), :math:`r_t = (\log p(y_t) - \log
      q_{\theta_\mathrm{old}}(y_t)) / s`, clipped to ``±reward_clip`` (`lm.policy_gradient`);
    - :math:`\rho_t = q_\theta(y_t) / q_{\theta_\mathrm{old}}(y_t)`, :math:`w_t = q_{\theta_\mathrm{old}}(y_t) / \tilde p(y_t)`;
    - the single-step term is ``token_distill_loss(divergence="rkl")``, i.e. GKD's loss at
      ``beta = 1``: with ``rkl_advantage: false`` and ``lm_coef: 0`` this method is GKD with
      ``lmbda = 1, beta = 1`` on teacher-mixed samples (``teacher_mixed_alpha: 0``: on the student's own).

    At :math:`\theta = \theta_\mathrm{old}` the first term's gradient is
    :math:`-\frac1N\sum_t w_t A_t \nabla\log q_\theta(y_t)`, the paper's policy-gradient estimator without
    its "−1": that term has zero expectation, and whitening removes any constant shift of :math:`R_t` exactly.

    **One training step is one PPO round** (manual optimisation): the batch's prompts (its first
    ``data.prompt_tokens`` tokens) are continued by ``block_size − prompt_tokens`` sampled tokens
    (`lm.mixed_sampling.sample_mixed`; with ``teacher_mixed_alpha = 0`` the student's KV-cached
    `generate`), scored once by the teacher and once by the student that sampled them (no grad);
    then ``ppo_epochs`` passes over the rollouts, each split at random into ``ppo_minibatches``
    minibatches, each minibatch one optimizer update (with the same rows of the data batch as its
    LM text). So ``data.batch_size`` is the number of rollouts per round (per rank) and one step
    makes ``ppo_epochs * ppo_minibatches`` updates: ``trainer.max_steps`` and ``global_step``
    count updates (a round that would run past ``max_steps`` stops there); the learning-rate
    schedule steps once per update. Nothing is carried between
    steps, so checkpoints and resume need no rollout buffer. Under manual optimisation
    Lightning refuses ``trainer.accumulate_grad_batches > 1`` and ``trainer.gradient_clip_val``:
    set ``max_grad_norm`` here instead. The official code keeps a separate, fresh batch of
    pre-training text for every update; here each data row serves once per PPO epoch.

    Args:
        teacher_mixed_alpha: α, the teacher's share of the sampling mixture (paper 0.2; 0: the
            student's own samples, weights 1).
        rkl_advantage: the policy-gradient term on the (long-term) reverse-KL returns (TRL's flag).
        single_step_decomposition: add the exact per-step reverse KL over the vocabulary (TRL's flag;
            the official ``--single-step-reg``).
        gamma: discount of the returns (the paper's equations: 1; official code default 0.95; TRL 0).
        length_normalization: divide the returns by the discounted number of remaining tokens.
        kd_temperature: T of both models in the rewards and the single-step term (TRL's; 1).
        temperature: sampling temperature, also of the PPO ratio and the importance weights (1).
        ppo_epochs: passes over each round's rollouts (4).
        ppo_minibatches: updates per pass; each takes ``batch_size / ppo_minibatches`` rollouts (4:
            the official script's 256 rollouts in minibatches of 64).
        clip_range: PPO's epsilon (0.2).
        reward_scaling: rewards are divided by it before clipping (0.5).
        reward_clip: rewards are clipped to ``[-reward_clip, reward_clip]`` (100; none: no clip).
        whiten_advantages: normalise the returns of each minibatch to mean 0, variance 1 (official code).
        lm_coef: weight of the language-modelling loss on the training text (1; 0 turns it off).
        kd_ratio: κ, the share of forward KL to the teacher in that loss (the official ``--kd-ratio`` 0.5).
        max_grad_norm: clip the gradient norm of every update (official ``--clip-grad`` 1.0; none: off).
    """

    family = "lm"
    paper = "Gu et al. 2024, MiniLLM: Knowledge Distillation of Large Language Models (ICLR, arXiv:2306.08543)"
    # Around the paper's defaults: the teacher-mix share (0.2) and the share
    # of teacher KL in the LM term (kd_ratio 0.5 in the official scripts).
    search_space = {"teacher_mixed_alpha": Uniform(0.0, 0.4), "kd_ratio": Uniform(0.0, 1.0)}
    data = "on-policy"

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        teacher_mixed_alpha: Fraction = 0.2,
        rkl_advantage: bool = True,
        single_step_decomposition: bool = True,
        gamma: Fraction = 1.0,
        length_normalization: bool = True,
        kd_temperature: PositiveFloat = 1.0,
        temperature: PositiveFloat = 1.0,
        ppo_epochs: PositiveInt = 4,
        ppo_minibatches: PositiveInt = 4,
        clip_range: ClipRange = 0.2,
        reward_scaling: PositiveFloat = 0.5,
        reward_clip: PositiveFloat | None = 100.0,
        whiten_advantages: bool = True,
        lm_coef: NonNegativeFloat = 1.0,
        kd_ratio: Fraction = 0.5,
        max_grad_norm: PositiveFloat | None = 1.0,
    ):
        super().__init__(student, teacher, optimizer)
        if not (rkl_advantage or single_step_decomposition or lm_coef > 0):
            raise ValueError("minillm: rkl_advantage and single_step_decomposition are off and lm_coef is 0, so nothing "
                             "would train; turn one of them on.")
        self.automatic_optimization = False  # several updates per step (PPO epochs over one rollout batch)
        self.teacher_mixed_alpha, self.rkl_advantage = teacher_mixed_alpha, rkl_advantage
        self.single_step_decomposition, self.gamma, self.length_normalization = single_step_decomposition, gamma, length_normalization
        self.kd_temperature, self.temperature = kd_temperature, temperature
        self.ppo_epochs, self.ppo_minibatches, self.clip_range = ppo_epochs, ppo_minibatches, clip_range
        self.reward_scaling, self.reward_clip, self.whiten_advantages = reward_scaling, reward_clip, whiten_advantages
        self.lm_coef, self.kd_ratio, self.max_grad_norm = lm_coef, kd_ratio, max_grad_norm

    def setup(self, stage: str) -> None:
        self.vocab = prepare(self)
        data = self.trainer.datamodule
        self.prompt_tokens, self.new_tokens = data.prompt_tokens, data.block_size - data.prompt_tokens
        self.eos_id, self.pad_id = data.tokenizer.eos_token_id, data.tokenizer.pad_token_id

    def configure_optimizers(self) -> dict[str, Any]:
        # The schedule spans every update: ppo_epochs * ppo_minibatches per training step, and
        # max_steps (when set) already counts updates, since global_step does under manual optimisation.
        trainer = self.trainer
        self.total_updates = trainer.estimated_stepping_batches * self.ppo_epochs * self.ppo_minibatches
        if trainer.max_steps != -1:
            self.total_updates = min(self.total_updates, trainer.max_steps)
        return build_optimizer(self.optimizer_spec, self.parameters(), self.total_updates)

    # ------------------------------------------------------------------ rollouts

    def rollouts(self, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids [B, L], completion_mask [B, L])``: the prompts continued by samples of the
        teacher-mixed policy (the student's own with ``teacher_mixed_alpha = 0``)."""
        options = {"temperature": self.temperature, "eos_token_id": self.eos_id, "pad_token_id": self.pad_id}
        if self.teacher_mixed_alpha == 0 and output_width(self.student) == self.vocab:
            return generate(self.student, prompts, self.new_tokens, do_sample=True, **options)
        # A student wider than the shared vocabulary (padding) must not sample ids the teacher lacks:
        # the mixed sampler draws from the first `vocab` logits only (the same tokens as `generate` otherwise).
        return sample_mixed(self.student, self.teacher.model, prompts, self.new_tokens, alpha=self.teacher_mixed_alpha,
                            vocab=self.vocab, **options)

    @torch.no_grad()
    def score(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sample this step's rollouts and compute everything the updates hold fixed: the teacher's
        logits [B, L-1, V], and with ``rkl_advantage`` the old log-probs, importance weights and
        returns [B, L-1] of the sampled tokens; with the LM term, the teacher's logits on the data."""
        ids, completion_mask = self.rollouts(batch["input_ids"][:, : self.prompt_tokens])
        mask, targets = completion_mask[:, 1:], ids[:, 1:]
        ones = torch.ones_like(ids)
        rollout = {"ids": ids, "mask": mask, "teacher_logits": teacher_logits(self.teacher, ids, ones, self.vocab)}
        if self.rkl_advantage:
            was_training = self.student.training
            self.student.eval()  # the policy that sampled: no dropout
            old_logits = causal_logits(self.student, ids, ones)[..., : self.vocab]
            self.student.train(was_training)
            t_logits = rollout["teacher_logits"]
            old = token_logprobs(old_logits, targets, temperature=self.temperature)
            weights = torch.ones_like(old)
            if self.teacher_mixed_alpha > 0:  # weights of the sampling distribution, at its temperature
                weights = importance_weights(old, token_logprobs(t_logits, targets, temperature=self.temperature), self.teacher_mixed_alpha)
            log_p = token_logprobs(t_logits, targets, temperature=self.kd_temperature)
            log_q = old if self.kd_temperature == self.temperature else token_logprobs(old_logits, targets, temperature=self.kd_temperature)
            rewards = token_rewards(log_p, log_q, mask, scaling=self.reward_scaling, clip=self.reward_clip)
            rollout.update(old_logprobs=old, weights=weights,
                           returns=returns(rewards, mask, gamma=self.gamma, length_normalization=self.length_normalization),
                           log_ratio=torch.where(mask, log_p - log_q, torch.zeros_like(log_p)))
        if self.lm_coef > 0 and self.kd_ratio > 0:
            rollout["data_teacher_logits"] = teacher_logits(self.teacher, batch["input_ids"], batch["attention_mask"], self.vocab)
        return rollout

    # ------------------------------------------------------------------ one update

    def update_loss(self, rollout: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                    rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one optimizer update on rollout (and data) rows ``rows`` [b], and its parts
        (per-token means, detached) for logging."""
        ids, mask = rollout["ids"][rows], rollout["mask"][rows]
        logits = causal_logits(self.student, ids, torch.ones_like(ids))[..., : self.vocab]
        count = int(mask.sum())
        rl_sum = logits.new_zeros((), dtype=torch.float32)
        parts = {}
        if self.rkl_advantage:
            logprobs = token_logprobs(logits, ids[:, 1:], temperature=self.temperature)
            advantages = rollout["returns"][rows]
            if self.whiten_advantages:
                advantages = whiten(advantages, mask)
            pg_sum, _ = ppo_surrogate(logprobs, rollout["old_logprobs"][rows], advantages, rollout["weights"][rows], mask,
                                      clip_range=self.clip_range)
            rl_sum = rl_sum + pg_sum
            parts["pg"] = pg_sum.detach() / max(count, 1)
        if self.single_step_decomposition:
            ss_sum, _ = single_step_rkl(logits, rollout["teacher_logits"][rows], mask, temperature=self.kd_temperature)
            rl_sum = rl_sum + ss_sum
            parts["single_step_rkl"] = ss_sum.detach() / max(count, 1)
        loss = step_loss(self, rl_sum, count)
        if self.lm_coef > 0:
            data_ids = batch["input_ids"][rows]
            data_mask = batch["attention_mask"][rows][:, 1:].bool()  # pre-training text: every next token counts
            data_logits = causal_logits(self.student, data_ids, batch["attention_mask"][rows])
            ce_sum, data_count = token_ce_loss(data_logits, data_ids[:, 1:], data_mask)
            pt_sum = (1 - self.kd_ratio) * ce_sum
            if self.kd_ratio > 0:
                # Forward KL: the official soft cross-entropy minus the teacher's entropy (same gradient).
                kd_sum, _ = token_distill_loss(data_logits[..., : self.vocab], rollout["data_teacher_logits"][rows], data_mask,
                                               divergence="fkl")
                pt_sum = pt_sum + self.kd_ratio * kd_sum
            loss = loss + self.lm_coef * step_loss(self, pt_sum, data_count)
            parts["lm"] = pt_sum.detach() / max(data_count, 1)
        parts["loss"] = loss.detach()
        return loss, parts

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        rollout = self.score(batch)
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        size = rollout["ids"].shape[0]
        totals: dict[str, torch.Tensor] = {}
        updates = 0
        for rows in self.minibatches(size, rollout["ids"].device):
            if self.trainer.max_steps != -1 and self.trainer.global_step >= self.trainer.max_steps:
                break  # the round's last updates would run past max_steps: the run ends on the step asked for
            loss, parts = self.update_loss(rollout, batch, rows)
            optimizer.zero_grad()
            self.manual_backward(loss)
            if self.max_grad_norm is not None:
                self.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")
            optimizer.step()
            if scheduler is not None and scheduler.last_epoch < self.total_updates:  # cosine would climb again past its end
                scheduler.step()
            updates += 1
            for name, value in parts.items():
                totals[name] = totals.get(name, 0.0) + value
        for name, value in totals.items():
            self.log_train(f"train/{name}", value / updates, size, prog_bar=name == "loss")
        if self.rkl_advantage:
            # Mean log p/q of the sampled tokens (a sample estimate of -RKL per token when alpha = 0).
            count = max(int(rollout["mask"].sum()), 1)
            self.log_train("train/reward", rollout["log_ratio"].sum() / count, size)

    def minibatches(self, size: int, device: torch.device):
        """Row indices of each update of a round: ``ppo_epochs`` passes, each a fresh random split of
        the ``size`` rollouts into ``ppo_minibatches`` parts (from the seeded global RNG)."""
        for _ in range(self.ppo_epochs):
            order = torch.randperm(size) if self.ppo_minibatches > 1 else torch.arange(size)
            yield from order.to(device).tensor_split(self.ppo_minibatches)

    validation_step = lm_validation_step

    def data_problems(self, datamodule: Any, teacher: nn.Module | None) -> list[str]:
        problems = lm_data_problems(self, datamodule, teacher)
        if problems:
            return problems
        if datamodule.prompt_tokens < 1:
            problems.append("method 'minillm' samples completions from prompts: set data.prompt_tokens >= 1 (e.g. 32).")
        batch_size = getattr(datamodule, "batch_size", None)
        if batch_size is not None and batch_size < self.ppo_minibatches:
            problems.append(f"The 'ppo_minibatches' parameter of minillm must be <= data.batch_size (the rollouts of a round, "
                            f"{batch_size}). Got {self.ppo_minibatches}.")
        return problems
