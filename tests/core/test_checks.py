"""The argument checks every family's pure functions share."""

import math

import numpy as np
import pytest

from anydistill.core.checks import as_image_size, choice_problems, is_finite_number, is_int, raise_problems


def test_numbers() -> None:
    assert is_int(3) and is_int(np.int64(3)) and not is_int(True) and not is_int(3.0)
    assert is_finite_number(2) and is_finite_number(0.5) and not is_finite_number(math.inf)
    assert not is_finite_number(math.nan) and not is_finite_number(False) and not is_finite_number("1")


def test_image_size() -> None:
    assert as_image_size(8) == (8, 8) and as_image_size((16, 12)) == (16, 12)
    assert as_image_size((0, 4)) is None and as_image_size("8") is None and as_image_size((1, 2, 3)) is None


def test_choice_problems_and_raise() -> None:
    assert choice_problems("heun", ("euler", "heun"), name="solver", owner="f") == []
    [line] = choice_problems("hune", ("euler", "heun"), name="solver", owner="f", what="parameter")
    assert line == "The 'solver' parameter of f must be one of 'euler', 'heun' (did you mean 'heun'?). Got 'hune'."
    raise_problems([])
    with pytest.raises(ValueError, match="^a\nb$"):
        raise_problems(["a", "b"])
