r"""The standard evaluation protocol of dataset distillation, as pure functions.

A synthetic set (or a coreset baseline) is scored by training fresh networks on it alone and
testing them on the real test set: `train_and_test` trains and tests one network, `evaluate_set`
repeats it over seeds and reports mean and standard deviation, `gap_closed` relates a score to the
random-subset and full-data scores measured with the same evaluator.

What `train_and_test` does (the official ``evaluate_synset`` + ``epoch``)
-----------------------------------------------------------------------
This follows ``utils.py::evaluate_synset`` of VICO-UoE/DatasetCondensation, which MTT, FTD and
DATM copy unchanged apart from the learning rate:

* SGD with ``lr``, ``momentum`` 0.9 and ``weight_decay`` 5e-4 on all parameters; cross-entropy on
  hard labels, soft-label cross-entropy on soft ones (below).
* ``epochs + 1`` passes over the set: the official loop is ``for ep in range(Epoch + 1)``, so
  ``epoch_eval_train = 1000`` trains 1001 epochs. Each pass reshuffles the set and cuts it into
  minibatches of ``batch_size`` (the last one smaller; 256 holds a whole IPC <= 25 CIFAR-10 set).
* Learning-rate decay: after the pass with index ``epochs // 2 + 1`` (0-based) the learning rate is
  multiplied by ``lr_decay`` (0.1) and the optimizer is built anew, so the momentum buffers are
  reset, exactly as the official code does. With ``epochs = 1000``: passes 0..501 at ``lr``,
  502..1000 at ``lr / 10``. `EvalProtocol.lr_schedule` lists the rate of every pass.
* With a DSA strategy, every minibatch is augmented with an independent draw per image (the
  official ``DiffAugment(img, strategy, seed=-1)``; `SiameseAugment.__call__`), with the default
  ``ParamDiffAug`` magnitudes. No other augmentation is applied. Digit datasets (MNIST, SVHN,
  sklearn digits) are commonly evaluated without ``flip`` (``'color_crop_cutout_scale_rotate'``),
  since a flipped digit is another glyph.
* Test: the network in ``eval()`` mode, without gradients or augmentation, on the whole test set;
  the score is top-1 accuracy as a fraction in ``[0, 1]``.

Soft labels (DATM's learned labels, SRe2L-style relabelling of a fixed set) use the soft-label
cross-entropy ``-(1/B) sum_b sum_c y_bc log softmax(z_b)_c``; one-hot rows give the same loss as
hard labels.

Published settings
------------------
======================  ============  =========  ===========================  ==================
method (code)           epochs (E)    lr         augmentation when training   models per set
======================  ============  =========  ===========================  ==================
DC (``main.py``)        300; 1000     0.01       none; MNIST: DC's own        20 x 5 sets = 100
                        with aug                 ``crop_scale_rotate``
DSA (``main.py``)       1000          0.01       DSA                          20 x 5 sets = 100
DM (``main_DM.py``)     1000          0.01       DSA                          5 x 5 sets (README)
MTT / FTD / DATM        1000          learned    DSA (+ ZCA on CIFAR, the     5 (``num_eval``)
                                      alpha      test set ZCA'd as well)
======================  ============  =========  ===========================  ==================

All of them: SGD momentum 0.9, weight decay 5e-4, batch 256, lr x 0.1 after pass ``E // 2 + 1``,
ConvNet-3 (`anydistill.dataset.convnet.convnet`), the full real test set; mean and (population)
standard deviation over the models. DC's non-differentiable MNIST augmentation and ZCA whitening
are not part of this module: whiten both sets before calling, and use ``dsa_strategy=None`` with
``epochs=300`` for DC's no-augmentation setting. The defaults of `EvalProtocol` are the DSA/DM
setting with ``num_models = 5``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import SGD

from anydistill.core.checks import is_finite_number, is_int
from anydistill.dataset.augment import SiameseAugment
from anydistill.dataset.dc_augment import dc_augment

__all__ = ["EvalProtocol", "train_and_test", "evaluate_set", "gap_closed"]

# The official test loader's batch size; in eval mode the accuracy does not depend on it.
_TEST_BATCH = 256


@dataclass(frozen=True)
class EvalProtocol:
    """How a (synthetic) training set is scored; the defaults are the DSA/DM evaluation.

    Attributes:
        epochs: the official ``epoch_eval_train`` ``E``; training makes ``E + 1`` passes (see the
            module docstring). 1000 with augmentation, 300 for DC without.
        lr: initial SGD learning rate (``lr_net``, 0.01; the learned ``alpha`` for MTT/FTD/DATM).
        momentum: SGD momentum (0.9).
        weight_decay: SGD weight decay (5e-4).
        batch_size: minibatch size (``batch_train``, 256).
        lr_decay: factor applied to the learning rate after pass ``E // 2 + 1`` (0.1).
        dsa_strategy: the DSA strategy applied per image while training, or ``None`` (also ``''``
            or ``'none'``) for no augmentation.
        num_models: ``K``, the number of fresh models `evaluate_set` trains when not given seeds.
        dc_augment: DC's MNIST augmentation (`anydistill.dataset.dc_augment`) per training
            minibatch instead of DSA (the DC protocol for MNIST: ``epochs=1000``, ``dsa_strategy=None``).
    """

    epochs: int = 1000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    lr_decay: float = 0.1
    dsa_strategy: str | None = "color_crop_cutout_flip_scale_rotate"
    num_models: int = 5
    dc_augment: bool = False

    def __post_init__(self):
        problems = []
        for name in ("epochs", "batch_size", "num_models"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                problems.append(f"The '{name}' parameter of EvalProtocol must be an int >= 1. Got {value!r}.")
        for name, low, low_inclusive in (
            ("lr", 0.0, False), ("momentum", 0.0, True), ("weight_decay", 0.0, True), ("lr_decay", 0.0, False)
        ):
            value = getattr(self, name)
            if not is_finite_number(value) or value < low or (value == low and not low_inclusive):
                bound = f">= {low:g}" if low_inclusive else f"> {low:g}"
                problems.append(f"The '{name}' parameter of EvalProtocol must be a finite float {bound}. Got {value!r}.")
        if self.dsa_strategy is not None:
            try:
                SiameseAugment(self.dsa_strategy)
            except ValueError as error:
                problems.append(f"The 'dsa_strategy' parameter of EvalProtocol is invalid: {error}")
        if not isinstance(self.dc_augment, bool):
            problems.append(f"The 'dc_augment' parameter of EvalProtocol must be a bool. Got {self.dc_augment!r}.")
        elif self.dc_augment and str(self.dsa_strategy).strip().lower() not in ("", "none"):
            problems.append("EvalProtocol got both dc_augment=True and a DSA strategy; choose one (dsa_strategy=None for DC's).")
        if problems:
            raise ValueError("\n".join(problems))

    @property
    def decay_epoch(self) -> int:
        """The 0-based pass after which the learning rate is multiplied by ``lr_decay``: ``E // 2 + 1``."""
        return self.epochs // 2 + 1

    def lr_schedule(self) -> list[float]:
        """The learning rate of each of the ``epochs + 1`` passes, in order."""
        decayed = self.lr * self.lr_decay
        return [self.lr if epoch <= self.decay_epoch else decayed for epoch in range(self.epochs + 1)]

    def augmenter(self) -> SiameseAugment | None:
        """The DSA augmenter of ``dsa_strategy`` with the official magnitudes, or ``None``."""
        if self.dsa_strategy is None or self.dsa_strategy.strip().lower() in ("", "none"):
            return None
        return SiameseAugment(self.dsa_strategy)


def train_and_test(
    model: nn.Module,
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    protocol: EvalProtocol,
    generator: torch.Generator | None = None,
) -> float:
    """Train ``model`` on ``(train_x, train_y)`` under ``protocol`` and return its test accuracy.

    Pass a freshly initialised model: it is trained in place (moved to ``train_x.device``) and left
    in ``eval()`` mode. The training set is detached first, so a synthetic set that requires grad
    is not modified and receives no gradient.

    Args:
        model: maps ``[B, ...]`` inputs to ``[B, C]`` logits.
        train_x: ``[N, ...]`` training inputs (``[N, C, H, W]`` images when DSA is on).
        train_y: ``[N]`` integer class labels, or ``[N, C]`` float soft labels (class
            probabilities, trained with soft-label cross-entropy).
        test_x: ``[M, ...]`` test inputs (moved batch-wise to ``train_x.device``).
        test_y: ``[M]`` integer class labels.
        protocol: the settings (`EvalProtocol`).
        generator: the source of the per-pass shuffles and the DSA draws (``None``: torch's global
            RNG). It may live on another device than the data.

    Returns:
        Top-1 test accuracy, a fraction in ``[0, 1]``.

    Raises:
        ValueError: listing every invalid argument.
    """
    _check(model, train_x, train_y, test_x, test_y, protocol, generator)
    device = train_x.device
    model.to(device)
    soft = train_y.is_floating_point()
    train_x, train_y = train_x.detach(), (train_y.detach() if soft else train_y.detach().long())
    augment = protocol.augmenter()
    shuffle_device = generator.device if generator is not None else torch.device("cpu")

    def new_optimizer(lr: float) -> SGD:
        return SGD(model.parameters(), lr=lr, momentum=protocol.momentum, weight_decay=protocol.weight_decay)

    lr = protocol.lr
    optimizer = new_optimizer(lr)
    n = len(train_x)
    for epoch in range(protocol.epochs + 1):  # E + 1 passes, as the official range(Epoch + 1)
        model.train()
        order = torch.randperm(n, generator=generator, device=shuffle_device).to(device)
        for start in range(0, n, protocol.batch_size):
            batch = order[start : start + protocol.batch_size]
            x, y = train_x[batch], train_y[batch]
            if augment is not None:
                x = augment(x, generator)  # an independent draw per image (official seed == -1)
            elif protocol.dc_augment:
                x = dc_augment(x, generator)
            logits = model(x)
            loss = _soft_cross_entropy(logits, y) if soft else F.cross_entropy(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if epoch == protocol.decay_epoch:
            # The official code builds a new SGD here, so the momentum buffers restart from zero.
            lr *= protocol.lr_decay
            optimizer = new_optimizer(lr)
    return _accuracy(model, test_x, test_y, device)


def evaluate_set(
    model_fn: Callable[[], nn.Module],
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    protocol: EvalProtocol,
    seeds: int | Sequence[int] | None = None,
) -> tuple[float, float, list[float]]:
    """Score a training set with ``K`` fresh models: ``(mean, std, accuracies)``.

    For each seed ``s``: ``model_fn()`` is called under ``torch.manual_seed(s)`` (inside
    ``torch.random.fork_rng``, so torch's global RNG state is unchanged afterwards) and the model
    is trained and tested by `train_and_test` with ``torch.Generator().manual_seed(s)`` for its
    shuffles and augmentation draws. The same seeds therefore give the same accuracies.

    Args:
        model_fn: builds a freshly initialised model, e.g.
            ``lambda: convnet(1, 10, 28)``.
        train_x, train_y, test_x, test_y, protocol: as in `train_and_test`.
        seeds: ``None`` for ``0 .. K-1`` with ``K = protocol.num_models``; an int ``s`` for
            ``s .. s+K-1``; or an explicit sequence of ints (``K = len(seeds)``).

    Returns:
        The mean and the population standard deviation (``ddof = 0``, as the official
        ``np.std``) of the ``K`` accuracies, and the accuracies in seed order, all fractions.

    Raises:
        ValueError: invalid ``model_fn`` or ``seeds``, or anything `train_and_test` rejects.
    """
    if not callable(model_fn):
        raise ValueError(
            f"The 'model_fn' argument of evaluate_set must be a callable returning a fresh model. Got {model_fn!r}."
        )
    if isinstance(protocol, EvalProtocol):
        count = protocol.num_models
    else:
        raise ValueError(f"The 'protocol' argument of evaluate_set must be an EvalProtocol. Got {type(protocol).__name__}.")
    if seeds is None:
        seeds = list(range(count))
    elif is_int(seeds):
        seeds = list(range(seeds, seeds + count))
    elif isinstance(seeds, Sequence) and not isinstance(seeds, str) and len(seeds) > 0 and all(is_int(s) for s in seeds):
        seeds = list(seeds)
    else:
        raise ValueError(
            f"The 'seeds' argument of evaluate_set must be None, an int, or a non-empty sequence of ints. Got {seeds!r}."
        )
    accuracies = []
    for seed in seeds:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = model_fn()
        generator = torch.Generator().manual_seed(seed)
        accuracies.append(train_and_test(model, train_x, train_y, test_x, test_y, protocol, generator))
    mean = sum(accuracies) / len(accuracies)
    std = math.sqrt(sum((a - mean) ** 2 for a in accuracies) / len(accuracies))
    return mean, std, accuracies


def gap_closed(syn: float, random: float, full: float) -> float:
    """The fraction of the random-to-full-data gap a set closes: ``(syn - random) / (full - random)``.

    0 means no better than a random real subset of the same size, 1 as good as the whole training
    set; it can be negative or exceed 1. All three scores must come from the same evaluator.

    Raises:
        ValueError: a non-finite score, or ``full == random`` (the gap is undefined).
    """
    scores = (("syn", syn), ("random", random), ("full", full))
    bad = [f"'{name}' ({value!r})" for name, value in scores if not is_finite_number(value)]
    if bad:
        raise ValueError(f"gap_closed needs finite numbers; got {', '.join(bad)}.")
    if full == random:
        raise ValueError(
            f"gap_closed is undefined when the full-data and random-subset scores are equal (both {full!r}); "
            "report the raw scores instead."
        )
    return (syn - random) / (full - random)


def _soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """``-(1/B) sum_b sum_c target_bc log softmax(logits_b)_c`` for ``[B, C]`` logits and targets."""
    if logits.shape != target.shape:
        raise ValueError(
            f"Soft labels of shape {tuple(target.shape[1:])} per example do not match the model's "
            f"{tuple(logits.shape[1:])} logits; give one probability per class."
        )
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


@torch.no_grad()
def _accuracy(model: nn.Module, test_x: Tensor, test_y: Tensor, device: torch.device) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(test_x), _TEST_BATCH):
        x = test_x[start : start + _TEST_BATCH].to(device)
        y = test_y[start : start + _TEST_BATCH].to(device)
        correct += int((model(x).argmax(dim=1) == y).sum())
    return correct / len(test_x)


def _check(model, train_x, train_y, test_x, test_y, protocol, generator) -> None:
    """Validate `train_and_test`'s arguments, reporting every problem at once."""
    problems = []
    if not isinstance(model, nn.Module):
        problems.append(f"The 'model' argument of train_and_test must be an nn.Module. Got {type(model).__name__}.")
    if not isinstance(protocol, EvalProtocol):
        problems.append(f"The 'protocol' argument of train_and_test must be an EvalProtocol. Got {type(protocol).__name__}.")
    if generator is not None and not isinstance(generator, torch.Generator):
        problems.append(f"The 'generator' argument of train_and_test must be a torch.Generator or None. Got {generator!r}.")
    for name, x in (("train_x", train_x), ("test_x", test_x)):
        if not isinstance(x, Tensor) or x.dim() < 2 or len(x) == 0 or not x.is_floating_point():
            got = _describe(x)
            problems.append(f"The '{name}' argument of train_and_test must be a non-empty float tensor [N, ...]. Got {got}.")
    if isinstance(train_y, Tensor) and train_y.is_floating_point():
        if train_y.dim() != 2:
            problems.append(
                f"Soft 'train_y' must be a float tensor [N, C] of class probabilities. Got shape {tuple(train_y.shape)}."
            )
    elif not _is_int_labels(train_y):
        got = _describe(train_y)
        problems.append(
            f"The 'train_y' argument of train_and_test must be [N] integer labels or [N, C] float soft labels. Got {got}."
        )
    if not _is_int_labels(test_y):
        got = _describe(test_y)
        problems.append(f"The 'test_y' argument of train_and_test must be [M] integer labels. Got {got}.")
    for x_name, x, y_name, y in (("train_x", train_x, "train_y", train_y), ("test_x", test_x, "test_y", test_y)):
        if isinstance(x, Tensor) and isinstance(y, Tensor) and x.dim() >= 1 and y.dim() >= 1 and len(x) != len(y):
            problems.append(f"train_and_test got {len(x)} rows in '{x_name}' but {len(y)} in '{y_name}'.")
    if isinstance(protocol, EvalProtocol) and protocol.augmenter() is not None and isinstance(train_x, Tensor) \
            and train_x.dim() != 4:
        problems.append(
            f"DSA ('{protocol.dsa_strategy}') needs images [N, C, H, W] in 'train_x'. Got shape {tuple(train_x.shape)}; "
            "use dsa_strategy=None for other inputs."
        )
    if problems:
        raise ValueError("\n".join(problems))


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"shape {tuple(value.shape)}, dtype {value.dtype}"
    return type(value).__name__


def _is_int_labels(y: object) -> bool:
    return isinstance(y, Tensor) and y.dim() == 1 and not y.is_floating_point() and not y.is_complex() \
        and y.dtype != torch.bool


