"""Search spaces: typed ranges a method declares beside its parameters (``search_space``) and
`anydistill tune` samples from.

A method writes, next to its ``__init__``::

    search_space = {"temperature": LogUniform(1.0, 10.0), "alpha": Uniform(0.1, 0.9)}

The keys are its own constructor parameters; ``optimizer.<field>`` keys (``OPTIMIZER_SPACE``) are
shared by every method. The classes know nothing of Optuna: ``suggest`` takes any object with
Optuna's ``suggest_float`` / ``suggest_int`` / ``suggest_categorical`` methods, so this module sits
in ``core`` (families may import it) while the study that drives them sits on top.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol


class Suggester(Protocol):
    """What a space needs from a trial (an ``optuna.Trial`` has these)."""

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...
    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int: ...
    def suggest_categorical(self, name: str, choices: list[Any]) -> Any: ...


@dataclass(frozen=True)
class Uniform:
    """A float drawn uniformly from [low, high]."""

    low: float
    high: float
    log: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"a {type(self).__name__} range needs low < high, got {self.low} and {self.high}.")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-uniform range needs low > 0, got {self.low}.")

    def suggest(self, trial: Suggester, name: str) -> float:
        return trial.suggest_float(name, float(self.low), float(self.high), log=self.log)

    def bounds(self) -> list[Any]:
        """The values whose validity bounds every value of the range (checked against the signature)."""
        return [float(self.low), float(self.high)]

    def describe(self) -> str:
        return f"{self.low:g}:{self.high:g}" + (":log" if self.log else "")


@dataclass(frozen=True)
class LogUniform(Uniform):
    """A float whose logarithm is uniform on [log low, log high] (scales: learning rates, temperatures)."""

    log: ClassVar[bool] = True


@dataclass(frozen=True)
class IntRange:
    """An integer in [low, high], both included (log-uniform with ``log=True``)."""

    low: int
    high: int
    log: bool = False

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"an IntRange needs low < high, got {self.low} and {self.high}.")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scaled IntRange needs low > 0, got {self.low}.")

    def suggest(self, trial: Suggester, name: str) -> int:
        return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)

    def bounds(self) -> list[Any]:
        return [int(self.low), int(self.high)]

    def describe(self) -> str:
        return f"{self.low}:{self.high}" + (":log" if self.log else "")


@dataclass(frozen=True)
class Choice:
    """One of a few values (an optimizer name, a schedule)."""

    options: tuple[Any, ...]

    def __post_init__(self) -> None:
        if len(self.options) < 2:
            raise ValueError(f"a Choice needs at least two options, got {list(self.options)}.")

    def suggest(self, trial: Suggester, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.options))

    def bounds(self) -> list[Any]:
        return list(self.options)

    def describe(self) -> str:
        return ",".join(str(o) for o in self.options)


Space = Uniform | IntRange | Choice

# Shared by every method: the ranges used for Adam-trained small nets (1e-4..1e-1 covers SGD too).
OPTIMIZER_SPACE: dict[str, Space] = {
    "optimizer.lr": LogUniform(1e-4, 1e-1),
    "optimizer.weight_decay": LogUniform(1e-6, 1e-2),
}


def parse_space(text: str, integer: bool = False) -> Space:
    """A range from the command line: ``LOW:HIGH`` or ``LOW:HIGH:log`` (an `IntRange` when
    ``integer``), or ``a,b,c`` for a `Choice`.

    Raises:
        ValueError: one line saying what was expected.
    """
    if ":" not in text and "," in text:
        import yaml

        return Choice(tuple(yaml.safe_load(part) for part in text.split(",")))
    parts = text.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise ValueError(f"expected LOW:HIGH or LOW:HIGH:log (or a,b,c for a choice), got '{text}'.")
    log = len(parts) == 3
    try:
        if integer:
            return IntRange(int(parts[0]), int(parts[1]), log=log)
        low, high = float(parts[0]), float(parts[1])
    except ValueError:
        kind = "integers" if integer else "numbers"
        raise ValueError(f"LOW and HIGH must be {kind}, got '{text}'.") from None
    return LogUniform(low, high) if log else Uniform(low, high)
