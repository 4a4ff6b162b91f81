"""LoRA on a denoiser (diffusion/lora.py): an adapted model starts as its base, only the adapters
train, switching them off gives the base's predictions, and they save and load apart from the base."""

from __future__ import annotations

import pytest
import torch

from anydistill.diffusion.lora import add_lora, adapter_state, load_adapter, lora_targets, save_adapter, set_adapters_enabled
from anydistill.models.flow_denoisers import conv_flow_denoiser, mlp_flow_denoiser


def base(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "mlp":
        return mlp_flow_denoiser((2,), 0, hidden=16, depth=2), torch.randn(4, 2)
    return conv_flow_denoiser((1, 8, 8), 0, width=8), torch.randn(4, 1, 8, 8)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_adapters_start_at_the_base_train_alone_and_switch_off(kind, tmp_path) -> None:
    model, x = base(kind)
    t = torch.full((4,), 0.5)
    before = model(x, t, None).detach()
    add_lora(model, rank=4)
    assert any(isinstance(m, torch.nn.Conv2d) for m in model.net.modules()) == (kind == "conv")
    torch.testing.assert_close(model(x, t, None), before)  # B = 0 at the start
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        optimizer.zero_grad()
        (model(x, t, None) - 1).pow(2).mean().backward()
        optimizer.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)
    adapted = model(x, t, None).detach()
    assert not torch.allclose(adapted, before)
    set_adapters_enabled(model, False)
    torch.testing.assert_close(model(x, t, None), before)  # the base's prediction
    set_adapters_enabled(model, True)
    save_adapter(model, tmp_path)
    assert set(adapter_state(model)) and all("lora_" in k for k in adapter_state(model))
    reloaded, _ = base(kind)
    load_adapter(reloaded, tmp_path)
    torch.testing.assert_close(reloaded(x, t, None), adapted)
    assert (tmp_path / "adapter.safetensors").stat().st_size < sum(p.numel() * 4 for p in reloaded.parameters())


def test_bad_adapters_are_one_line(tmp_path) -> None:
    model, _ = base("mlp")
    assert lora_targets(model.net)
    with pytest.raises(ValueError, match="unknown layers nope"):
        add_lora(model, rank=2, targets=["nope"])
    with pytest.raises(ValueError, match="holds no LoRA adapter"):
        load_adapter(model, tmp_path)


def test_dmd2_trains_a_lora_generator_and_exports_it_merged_and_apart(tmp_path) -> None:
    """lora_rank: only adapters train; the export rebuilds from model.json without peft, equal to the adapted model."""
    import json

    from anydistill.catalog import load_recipe
    from anydistill.core.rundir import RunDir
    from anydistill.runner import run_recipe

    recipe = {"name": "lora", "data": {"name": "toy2d", "num_train": 256, "batch_size": 64},
              "teacher": {"name": "mlp-denoiser", "hidden": 16, "depth": 2}, "student": {"name": "mlp-denoiser", "hidden": 16, "depth": 2},
              "trainer": {"max_epochs": 1, "progress_bar": False}, "evaluation": {"num_samples": 64, "student_steps": [1], "plots": False},
              "methods": {"dmd2": {"lora_rank": 2, "update_ratio": 1}}}
    trained = {}
    run_recipe(load_recipe(recipe), RunDir.create(tmp_path, "run"), trained=trained)
    student = trained["dmd2"]
    assert all("lora_" in n for n, p in student.named_parameters() if p.requires_grad)
    export = tmp_path / "run" / "checkpoints" / "dmd2"
    assert (export / "lora" / "adapter.safetensors").is_file()
    from safetensors.torch import load_file

    spec = json.loads((export / "model.json").read_text())
    rebuilt = mlp_flow_denoiser((2,), 0, hidden=spec["hidden"], depth=spec["depth"])
    rebuilt.load_state_dict(load_file(str(export / "model.safetensors")))
    x, t = torch.randn(8, 2), torch.full((8,), 0.7)
    torch.testing.assert_close(rebuilt(x, t, None), student(x, t, None), rtol=1e-5, atol=1e-6)
