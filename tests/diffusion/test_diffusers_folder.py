"""`diffusers-folder`: a tiny random `UNet2DModel` saved with its scheduler config is read with the
schedule and prediction the scheduler names, gives the diffusers model's own outputs, steps like
diffusers' DDIM, and unknown schedulers or non-diffusers folders are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from anydistill.diffusion.common import diffusion_teacher, schedule_of
from anydistill.diffusion.ddpm_schedule import DDPMSchedule
from anydistill.models.diffusers_folder import diffusers_folder

SHAPE = (1, 8, 8)


def save_unet(folder: Path, *, classes: int = 0, scheduler: str = "ddpm", pipeline: bool = False, **scheduler_kwargs) -> Path:
    """A tiny random UNet2DModel (and its scheduler's config) saved with save_pretrained."""
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=4, num_class_embeds=classes + 1 if classes else None)
    model_dir = folder / "unet" if pipeline else folder
    unet.save_pretrained(str(model_dir))
    sched = (DDPMScheduler(num_train_timesteps=100, **scheduler_kwargs) if scheduler == "ddpm"
             else FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **scheduler_kwargs))
    sched.save_pretrained(str(folder / "scheduler" if pipeline else folder))
    return folder


@pytest.mark.parametrize(("beta_schedule", "prediction", "kind"), [
    ("linear", "epsilon", "eps"), ("scaled_linear", "v_prediction", "v"), ("squaredcos_cap_v2", "sample", "x0"),
])
def test_ddpm_folder_matches_diffusers(tmp_path, beta_schedule, prediction, kind):
    from diffusers import DDPMScheduler, UNet2DModel

    folder = save_unet(tmp_path / "m", beta_schedule=beta_schedule, prediction_type=prediction)
    model = diffusers_folder(SHAPE, 0, path=str(folder)).eval()
    assert (model.schedule, model.prediction) == ("ddpm", kind)
    schedule = schedule_of(model)
    assert isinstance(schedule, DDPMSchedule)
    # The schedule is diffusers' at every training step: alpha(n / (N - 1))^2 = alphas_cumprod[n].
    reference = DDPMScheduler.from_pretrained(str(folder))
    steps = torch.arange(100)
    t = steps.double() / 99
    assert torch.allclose(schedule.alpha(t) ** 2, reference.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)
    assert torch.allclose(schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2, torch.ones(100, dtype=torch.float64))
    # The network output at t = n / (N - 1) is the diffusers model's at timestep n.
    unet = UNet2DModel.from_pretrained(str(folder), local_files_only=True).eval()
    x = torch.randn(3, *SHAPE)
    n = torch.tensor([0, 41, 99])
    with torch.no_grad():
        assert torch.allclose(model(x, n.float() / 99), unet(x, n).sample, atol=1e-5)


def test_ddim_step_matches_diffusers(tmp_path):
    """Our DDIM sampler on the mapped schedule takes the step diffusers' DDIMScheduler takes."""
    from diffusers import DDIMScheduler

    from anydistill.diffusion.samplers import DDIMSampler

    folder = save_unet(tmp_path / "m", prediction_type="v_prediction")
    teacher = diffusion_teacher(diffusers_folder(SHAPE, 0, path=str(folder)))
    diffusers_ddim = DDIMScheduler.from_pretrained(str(folder), clip_sample=False)  # x0 clipping is a sampling option
    diffusers_ddim.set_timesteps(5)  # timesteps 80, 60, 40, 20, 0
    assert diffusers_ddim.timesteps.tolist() == [80, 60, 40, 20, 0]
    x = torch.randn(2, *SHAPE)
    out = torch.randn(2, *SHAPE)  # a v prediction at step 80
    expected = diffusers_ddim.step(out, 80, x, eta=0.0).prev_sample
    sampler = DDIMSampler(teacher.schedule, t_start=80 / 99)
    sampler.set_timesteps(4)  # uniform in t from 80/99 to 0: steps 80 -> 60 -> 40 -> 20 -> 0
    got = sampler.step(out.double(), torch.tensor(80 / 99, dtype=torch.float64), x.double(), kind="v")
    assert torch.allclose(got.float(), expected, atol=1e-5)


def test_flow_folder_and_pipeline_layout(tmp_path):
    folder = save_unet(tmp_path / "pipe", classes=3, scheduler="flow", pipeline=True)
    model = diffusers_folder(SHAPE, 3, path=str(folder), subfolder="unet").eval()
    assert (model.schedule, model.prediction, model.null_class) == ("rectified-flow", "velocity", 3)
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(str(folder / "unet"), local_files_only=True).eval()
    x, y = torch.randn(2, *SHAPE), torch.tensor([0, 2])
    with torch.no_grad():
        assert torch.allclose(model(x, torch.tensor([0.25, 0.5]), y), unet(x, torch.tensor([250.0, 500.0]), class_labels=y).sample,
                              atol=1e-5)
        null = unet(x, torch.tensor([250.0, 250.0]), class_labels=torch.tensor([3, 3])).sample
        assert torch.allclose(model(x, torch.tensor(0.25), None), null, atol=1e-5)
    # The model folder given directly finds the pipeline's scheduler/ beside it.
    assert diffusers_folder(SHAPE, 3, path=str(folder / "unet")).schedule == "rectified-flow"


def test_refusals(tmp_path):
    folder = save_unet(tmp_path / "m")
    config = json.loads((folder / "scheduler_config.json").read_text())

    def refused(match: str, **kwargs) -> None:
        with pytest.raises(ValueError, match=match) as info:
            diffusers_folder(SHAPE, 0, **kwargs)
        assert "\n" not in str(info.value)

    (folder / "scheduler_config.json").write_text(json.dumps({**config, "_class_name": "KarrasVeScheduler"}))
    refused("scheduler 'KarrasVeScheduler', which has no mapping", path=str(folder))
    (folder / "scheduler_config.json").write_text(json.dumps({**config, "beta_schedule": "sigmoid"}))
    refused("beta_schedule 'sigmoid'", path=str(folder))
    (folder / "scheduler_config.json").write_text(json.dumps({**config, "rescale_betas_zero_snr": True}))
    refused("rescale_betas_zero_snr", path=str(folder))
    (folder / "scheduler_config.json").unlink()
    refused("no scheduler_config.json", path=str(folder))
    refused("no such folder", path=str(tmp_path / "absent"))
    empty = tmp_path / "empty"
    empty.mkdir()
    refused("has no config.json", path=str(empty))
    hf = tmp_path / "bert"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    refused("transformers config", path=str(hf))
    conditional = save_unet(tmp_path / "c", classes=3)
    refused("has 4 class embeddings but the data have 0 classes", path=str(conditional))
    with pytest.raises(ValueError, match=r"takes 1-channel 8x8 samples but the data are \[3, 8, 8\]"):
        diffusers_folder((3, 8, 8), 3, path=str(conditional))
