"""FitNets' regressor r for each kind of guided layer: conv maps, flat features, token features."""

from __future__ import annotations

import pytest
import torch

from anydistill.classifier.methods.fitnets import build_regressor


@pytest.mark.parametrize(("student", "teacher"), [
    ((2, 4, 9, 9), (2, 8, 7, 7)),   # the paper's conv regressor: kernel 3x3 without padding
    ((2, 16), (2, 32)),             # flat features
    ((2, 7, 16), (2, 7, 32)),       # a transformer block's hidden states, per token
])
def test_regressor_maps_the_guided_output_onto_the_hint_shape(student, teacher) -> None:
    r = build_regressor(torch.Size(student), torch.Size(teacher))
    assert r(torch.randn(student)).shape == torch.Size(teacher)


def test_token_features_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match=r"cannot regress a \(5, 16\) output onto a \(7, 32\) hint"):
        build_regressor(torch.Size((2, 5, 16)), torch.Size((2, 7, 32)))
