"""The analytic mixture teacher: its posterior mean equals a Monte Carlo posterior mean on every
schedule, conditional and unconditional, guidance combines the two, and a recipe takes it as a
teacher (bad data refused in one line)."""

from __future__ import annotations

import pytest
import torch

from anydistill.catalog import load_recipe
from anydistill.core.errors import RecipeError
from anydistill.data.toy2d_distributions import LABELLED, eight_gaussians, twenty_five_gaussians
from anydistill.diffusion.analytic_mixture import analytic_mixture
from anydistill.diffusion.common import diffusion_teacher, schedule_of

SCHEDULES = ["rectified-flow", "vp-cosine", "edm", "trigflow"]


def monte_carlo_mean(x0: torch.Tensor, x_t: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """E[x0 | x_t] by self-normalised importance weights: prior samples x0 [N, 2] weighted by N(x_t; alpha x0, sigma^2 I)."""
    log_w = -((x_t[:, None, :] - alpha * x0[None]) ** 2).sum(-1) / (2 * sigma**2)  # [M, N]
    return (log_w.softmax(-1)[..., None] * x0[None]).sum(1)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("distribution,sampler", [("eight_gaussians", eight_gaussians), ("twenty_five_gaussians", twenty_five_gaussians)])
def test_posterior_mean_matches_monte_carlo(schedule, distribution, sampler) -> None:
    model = analytic_mixture((2,), 0, distribution=distribution, schedule=schedule)
    noise = schedule_of(model)
    generator = torch.Generator().manual_seed(0)
    x0 = sampler(100_000, generator).double()
    for t in (0.2, 0.5, 0.8):
        time = torch.tensor(t * noise.t_max + (1 - t) * noise.t_min, dtype=torch.float64)
        alpha, sigma = float(noise.alpha(time)), float(noise.sigma(time))
        x_t = alpha * sampler(64, generator).double() + sigma * torch.randn(64, 2, generator=generator, dtype=torch.float64)
        exact = model(x_t, time.expand(64), None)
        torch.testing.assert_close(exact, monte_carlo_mean(x0, x_t, alpha, sigma), rtol=0, atol=0.02 * max(1.0, 1 / max(alpha, 0.1)))


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_wide_components_match_monte_carlo(schedule) -> None:
    """Components as wide as their spacing, so the within-component shrinkage term matters as much as the responsibilities."""
    from anydistill.diffusion.analytic_mixture import AnalyticMixtureNet

    means = torch.tensor([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.5]])
    noise = schedule_of(analytic_mixture((2,), 0, schedule=schedule))
    net = AnalyticMixtureNet(means, 0.7, noise, classes=None)
    generator = torch.Generator().manual_seed(2)
    draw = lambda n: (means[torch.randint(3, (n,), generator=generator)] + 0.7 * torch.randn(n, 2, generator=generator)).double()  # noqa: E731
    x0 = draw(100_000)
    for t in (0.3, 0.7):
        time = torch.tensor(t * noise.t_max + (1 - t) * noise.t_min, dtype=torch.float64)
        alpha, sigma = float(noise.alpha(time)), float(noise.sigma(time))
        x_t = alpha * draw(32) + sigma * torch.randn(32, 2, generator=generator, dtype=torch.float64)
        torch.testing.assert_close(net(x_t, time.expand(32)), monte_carlo_mean(x0, x_t, alpha, sigma), rtol=0, atol=0.03)


@pytest.mark.parametrize("distribution", ["class_conditional_mixture", "class_submode_mixture"])
def test_labels_give_their_class_and_guidance_combines_the_branches(distribution: str) -> None:
    model = analytic_mixture((2,), 8, distribution=distribution, schedule="rectified-flow")
    generator = torch.Generator().manual_seed(1)
    x0, y = LABELLED[distribution](100_000, generator)
    x0 = x0.double()
    x_t = 0.4 * x0[:32] + 0.6 * torch.randn(32, 2, generator=generator, dtype=torch.float64)
    time = torch.full((32,), 0.6, dtype=torch.float64)
    conditional, whole = model(x_t, time, y[:32]), model(x_t, time, torch.full((32,), 8))
    for c in range(8):
        rows = y[:32] == c
        if rows.any():
            torch.testing.assert_close(conditional[rows], monte_carlo_mean(x0[y == c], x_t[rows], 0.4, 0.6), rtol=0, atol=0.02)
    torch.testing.assert_close(whole, monte_carlo_mean(x0, x_t, 0.4, 0.6), rtol=0, atol=0.02)
    teacher = diffusion_teacher(model)
    guided = teacher.predict(x_t, time, y[:32], kind="x0", cfg=3.0)
    torch.testing.assert_close(guided, whole + 3.0 * (conditional - whole), rtol=1e-9, atol=1e-9)


def test_a_recipe_runs_with_it_as_teacher_and_refuses_other_data(tmp_path) -> None:
    from anydistill.core.rundir import RunDir
    from anydistill.runner import run_recipe

    base = {"name": "analytic", "data": {"name": "toy2d", "distribution": "eight_gaussians", "num_train": 512, "batch_size": 128},
            "teacher": {"name": "analytic-mixture", "distribution": "eight_gaussians"},
            "student": {"name": "mlp-denoiser", "hidden": 32, "depth": 1},
            "trainer": {"max_epochs": 1, "progress_bar": False}, "evaluation": {"num_samples": 256, "student_steps": [1]},
            "methods": {"reflow": {"init_from_teacher": False, "num_pairs": 256, "pair_steps": 8}}}
    metrics = run_recipe(load_recipe(base), RunDir.create(tmp_path, "run"))
    assert metrics["teacher"]["params"] == 0 and metrics["reflow"]["role"] == "student"
    with pytest.raises(RecipeError, match="distribution 'eight_gaussians' has no classes but the data has 8: use distribution: class_conditional_mixture"):
        load_recipe({**base, "data": {"name": "toy2d-conditional"}})


def test_reference_teacher_adds_distances_to_the_teachers_samples() -> None:
    """The teacher's own row at teacher_steps is the reference (distance 0); fewer steps are farther."""
    from anydistill.core.teacher import Teacher
    from anydistill.data.toy2d import Toy2DData
    from anydistill.diffusion.evaluate import DiffusionEvaluator

    data = Toy2DData(num_train=256, num_val=64, num_test=512)
    data.setup()
    evaluator = DiffusionEvaluator(data, num_samples=512, teacher_steps=32, student_steps=[2], reference="teacher", plots=False)
    teacher = Teacher(analytic_mixture((2,), 0))
    row = evaluator.evaluate(teacher.model, teacher, "pretrained")
    assert row["swd_to_teacher@32"] == pytest.approx(0.0, abs=1e-9) and row["swd_to_teacher@2"] > 0.1
    assert row["swd@32"] > 0 and evaluator.card()["reference"] == "teacher"


def test_curves_score_the_student_while_it_trains(tmp_path) -> None:
    """evaluation.curve_every: a point at step 0 and every N optimizer steps, in curve.json, and a plot."""
    import json

    from anydistill.core.rundir import RunDir
    from anydistill.runner import run_recipe

    recipe = {"name": "curves", "data": {"name": "toy2d", "num_train": 512, "batch_size": 64},
              "teacher": {"name": "analytic-mixture"}, "student": {"name": "mlp-denoiser", "hidden": 32, "depth": 1},
              "trainer": {"max_epochs": 1, "progress_bar": False},
              "evaluation": {"num_samples": 128, "student_steps": [1], "curve_every": 4, "curve_samples": 128, "plots": False},
              "methods": {"reflow": {"init_from_teacher": False, "num_pairs": 512, "pair_steps": 4}}}
    run_recipe(load_recipe(recipe), RunDir.create(tmp_path, "run"))
    logs = tmp_path / "run" / "logs" / "reflow"
    points = json.loads((logs / "curve.json").read_text())
    student = [p for p in points if p["model"] == "student"]
    assert [p["step"] for p in student] == [0, 4, 8] and all(p["metric"] == "swd" and p["value"] > 0 for p in points)
    assert [p["iteration"] for p in student] == [0, 4, 8]
    (teacher,) = [p for p in points if p["model"] == "teacher"]  # the level to reach, on the same draw
    assert teacher["nfe"] == 64 and 0 < teacher["value"] < student[0]["value"]
    assert (logs / "curve.png").is_file()
