"""A user's own diffusion model and data, through `anydistill`: the teacher (and the student's
initialisation) is a `save_pretrained` UNet2DModel folder with its DDPM scheduler config, the data
an image folder of PNGs, a tensor file or a points file made here; the exported student reloads
with diffusers' own loader. Bad inputs are refused with status 2, one `error:` line, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from anydistill.cli import main

RECIPE = """\
# A user's folder teacher and files (test).
name: user-diffusion
seed: 0
data: {data}
teacher: {{name: diffusers-folder, path: {teacher}}}
student: {{name: diffusers-folder, path: {teacher}}}
trainer: {{max_epochs: 1, max_steps: 2, progress_bar: false}}
optimizer: {{name: adam, lr: 0.0001}}
evaluation: {{num_samples: 8, teacher_steps: 2, student_steps: [1], straightness_steps: 2, classifier_epochs: 1, mmd_points: 8, plots: false}}
methods:
  consistency: {{num_scales: 4, sample_steps: [1]}}
"""


def save_teacher(folder: Path) -> Path:
    """A tiny random class-conditional (2 classes + null) UNet2DModel and its DDPM scheduler."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=4, num_class_embeds=3)
    unet.save_pretrained(str(folder / "unet"))
    DDPMScheduler(num_train_timesteps=100, prediction_type="v_prediction").save_pretrained(str(folder / "scheduler"))
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    from PIL import Image
    from safetensors.numpy import save_file

    root = tmp_path_factory.mktemp("user")
    rng = np.random.default_rng(0)
    for name in ("zero", "one"):
        (root / "images" / name).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(root / "images" / name / f"{i}.png")
    save_file({"x": rng.integers(0, 256, (24, 1, 8, 8), dtype=np.uint8), "y": np.arange(24) % 2}, str(root / "digits.safetensors"))
    np.save(root / "points.npy", rng.normal(size=(64, 2)).astype(np.float32))
    return {"root": root, "teacher": save_teacher(root / "pipeline"), "images": root / "images",
            "tensors": root / "digits.safetensors", "points": root / "points.npy"}


def write(tmp_path: Path, data: str, teacher: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(data=data, teacher=teacher))
    return path


def test_folder_teacher_on_image_folder_trains_and_exports(tmp_path, files, capsys):
    teacher = f"{files['teacher']}, subfolder: unet"
    recipe = write(tmp_path, f"{{name: image-folder-generation, train: {files['images']}, size: 8, mode: grayscale, batch_size: 8}}", teacher)
    code = main(["run", str(recipe), "--runs", str(tmp_path / "runs")])
    assert code == 0, capsys.readouterr().err
    run = next((tmp_path / "runs").glob("*"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"teacher", "consistency"} <= set(metrics)
    # The exported student reloads with diffusers' loader and gives the run's outputs.
    from diffusers import UNet2DModel
    from safetensors.torch import load_file

    from anydistill.models.diffusers_folder import diffusers_folder

    export = run / "checkpoints" / "consistency"
    reloaded = UNet2DModel.from_pretrained(str(export / "diffusers"), local_files_only=True).eval()
    rebuilt = diffusers_folder((1, 8, 8), 2, path=str(files["teacher"]), subfolder="unet").eval()
    rebuilt.load_state_dict(load_file(str(export / "model.safetensors")))
    spec = json.loads((export / "model.json").read_text())
    assert spec["name"] == "diffusers-folder" and spec["sampling"]["sampler"] == "multistep"
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([0, 1])
    original = UNet2DModel.from_pretrained(str(files["teacher"] / "unet"), local_files_only=True).eval()
    with torch.no_grad():
        got = reloaded(x, torch.tensor([50.0, 50.0]), class_labels=y).sample
        assert torch.allclose(rebuilt(x, torch.tensor([50 / 99, 50 / 99]), y), got, atol=1e-5)
        assert not torch.allclose(original(x, torch.tensor([50.0, 50.0]), class_labels=y).sample, got)  # it trained


def test_tensor_and_points_files_validate(tmp_path, files, capsys):
    teacher = f"{files['teacher']}, subfolder: unet"
    recipe = write(tmp_path, f"{{name: tensors-generation, train: {files['tensors']}, batch_size: 8}}", teacher)
    assert main(["validate", str(recipe)]) == 0, capsys.readouterr().err
    points = tmp_path / "points.yaml"
    points.write_text(
        f"name: user-points\nseed: 0\ndata: {{name: points, train: {files['points']}, batch_size: 16}}\n"
        "teacher: {name: mlp-denoiser, hidden: 16, depth: 1}\n"
        "trainer: {max_epochs: 1, max_steps: 2, progress_bar: false}\noptimizer: {name: adam, lr: 0.001}\n"
        "evaluation: {num_samples: 16, teacher_steps: 2, student_steps: [1], mmd_points: 16, plots: false, reference_draws: 1}\n"
        "methods:\n  diffusion-teacher: {}\n")
    code = main(["run", str(points), "--runs", str(tmp_path / "runs")])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads(next((tmp_path / "runs").glob("*/metrics.json")).read_text())
    assert "swd@2" in metrics["teacher"]


@pytest.mark.parametrize(("data", "teacher", "message"), [
    ("{{name: image-folder-generation, train: {root}/nothing-here, size: 8, mode: grayscale}}", "{teacher}, subfolder: unet",
     "no such folder"),
    ("{{name: tensors-generation, train: {tensors}, x_key: images}}", "{teacher}, subfolder: unet", "has no array 'images'"),
    ("{{name: image-folder-generation, train: {images}, size: 8, mode: grayscale}}", "{teacher}",
     "pipeline folder: add `subfolder: unet`"),
    ("{{name: image-folder-generation, train: {images}, size: 8, mode: rgb}}", "{teacher}, subfolder: unet",
     "takes 1-channel 8x8 samples but the data are [3, 8, 8]"),
])
def test_bad_inputs_are_one_line(tmp_path, files, capsys, data, teacher, message):
    values = {k: str(v) for k, v in files.items()}
    recipe = write(tmp_path, data.format(**values), teacher.format(**values))
    code = main(["run", str(recipe), "--runs", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
