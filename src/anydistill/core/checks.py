"""Argument checks shared by the pure functions of every family (losses, schedules, samplers...).

Functions collect problems as lines in the convention's shape and raise them all at once with
`raise_problems`, so a caller fixes everything in one go.
"""

from __future__ import annotations

import difflib
import math
import numbers


def is_int(value: object) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_finite_number(value: object) -> bool:
    """A finite real number (int or float, not a bool, not inf or nan)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def as_image_size(value: object) -> tuple[int, int] | None:
    """``(H, W)`` from an int or a pair of positive ints; None if ``value`` is neither."""
    if is_int(value):
        value = (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(is_int(v) and v >= 1 for v in value):
        return (int(value[0]), int(value[1]))
    return None


def choice_problems(value: object, choices: tuple[str, ...], *, name: str, owner: str, what: str = "argument") -> list[str]:
    """[] if ``value`` is one of ``choices``, else one line naming them and the closest match."""
    if value in choices:
        return []
    close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return [f"The '{name}' {what} of {owner} must be one of {', '.join(repr(c) for c in choices)}{hint}. Got {value!r}."]


def raise_problems(problems: list[str]) -> None:
    """Raise one ``ValueError`` listing every problem, one per line (nothing if there are none)."""
    if problems:
        raise ValueError("\n".join(problems))
