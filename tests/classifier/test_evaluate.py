"""The classifier evaluator: calibration error by hand, and the metrics of `evaluate_classifier`."""

import math

import pytest
import torch
from torch import nn

from anydistill.classifier.evaluate import evaluate_classifier, expected_calibration_error, predict_logits


def _example():
    probs = torch.tensor(
        [
            [0.90, 0.10],  # confidence 0.90, predicts 0, label 0: correct
            [0.70, 0.30],  # confidence 0.70, predicts 0, label 1: wrong
            [0.30, 0.70],  # confidence 0.70, predicts 1, label 1: correct
            [0.55, 0.45],  # confidence 0.55, predicts 0, label 0: correct
        ]
    )
    labels = torch.tensor([0, 1, 1, 0])
    return probs, labels


@pytest.mark.parametrize("n_bins", [5, 15, 10])
def test_ece_by_hand(n_bins):
    # By hand. Whichever of 5, 10 or 15 equal-width bins, the confidences 0.90 / 0.70, 0.70 / 0.55
    # fall into three separate bins (5 bins: (0.8,1], (0.6,0.8], (0.4,0.6]):
    #   bin of 0.90: 1 of 4 samples, accuracy 1,   confidence 0.90 -> 1/4 * |1   - 0.90| = 0.025
    #   bin of 0.70: 2 of 4 samples, accuracy 1/2, confidence 0.70 -> 2/4 * |0.5 - 0.70| = 0.100
    #   bin of 0.55: 1 of 4 samples, accuracy 1,   confidence 0.55 -> 1/4 * |1   - 0.55| = 0.1125
    #   ECE = 0.025 + 0.100 + 0.1125 = 0.2375
    probs, labels = _example()
    assert expected_calibration_error(probs, labels, n_bins=n_bins) == pytest.approx(0.2375, abs=1e-6)


def test_ece_merges_samples_sharing_a_bin():
    # With 2 bins, (0,0.5] is empty and (0.5,1] holds all four samples:
    #   accuracy 3/4, mean confidence (0.9 + 0.7 + 0.7 + 0.55) / 4 = 0.7125 -> |0.75 - 0.7125| = 0.0375
    probs, labels = _example()
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.0375, abs=1e-6)


def test_ece_of_a_perfect_confident_model_is_zero_and_confidence_one_is_binned():
    labels = torch.tensor([2, 0, 1])
    probs = torch.nn.functional.one_hot(labels, 3).float()
    assert expected_calibration_error(probs, labels) == 0.0
    # Confidence exactly 1 but always wrong: ECE 1 (the top bin includes 1.0).
    assert expected_calibration_error(probs, torch.tensor([0, 1, 2])) == pytest.approx(1.0)


class _Oracle(nn.Module):
    """A 'model' reading the label off its input: x is 10 * one_hot(y), logits = W x with W = I."""

    def __init__(self, classes):
        super().__init__()
        self.linear = nn.Linear(classes, classes)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(classes))
            self.linear.bias.zero_()

    def forward(self, x):
        return self.linear(x)


def test_evaluate_classifier_perfect_model():
    classes, n = 4, 300
    y = torch.arange(n) % classes
    x = 10.0 * torch.nn.functional.one_hot(y, classes).float()
    model = _Oracle(classes).train()
    metrics = evaluate_classifier(model, x, y, teacher_predictions=y.clone())
    assert set(metrics) == {"accuracy", "ece", "params", "latency_ms", "teacher_agreement", "threads"}
    assert metrics["accuracy"] == 1.0
    assert metrics["teacher_agreement"] == 1.0
    assert metrics["params"] == classes * classes + classes
    assert isinstance(metrics["params"], int)
    assert metrics["latency_ms"] > 0 and math.isfinite(metrics["latency_ms"])
    # Every sample has confidence p = e^10 / (e^10 + 3) and is correct: ECE = 1 - p.
    p = math.exp(10) / (math.exp(10) + classes - 1)
    assert metrics["ece"] == pytest.approx(1 - p, abs=1e-6)


def test_evaluate_classifier_partial_accuracy_and_agreement():
    classes = 4
    y = torch.arange(8) % classes
    x = 10.0 * torch.nn.functional.one_hot(y, classes).float()
    labels = y.clone()
    labels[:2] = (labels[:2] + 1) % classes  # the model is wrong on 2 of 8
    teacher = y.clone()
    teacher[:4] = (teacher[:4] + 1) % classes  # the teacher disagrees on 4 of 8
    metrics = evaluate_classifier(_Oracle(classes), x, labels, teacher_predictions=teacher)
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["teacher_agreement"] == pytest.approx(0.5)
    no_teacher = evaluate_classifier(_Oracle(classes), x, labels)
    assert "teacher_agreement" not in no_teacher


def test_predict_logits_batches_and_restores_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Dropout(0.5), nn.Linear(5, 2)).train()
    x = torch.randn(10, 3)
    logits = predict_logits(model, x, batch_size=3)
    assert model.training  # mode restored
    model.eval()
    torch.testing.assert_close(logits, model(x).detach())
    assert not logits.requires_grad
