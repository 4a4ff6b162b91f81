"""`diffusers-pipeline` and `text-to-image-latents`: a tiny random SD-style pipeline saved with
save_pretrained is read as a prompt-id-conditioned denoiser over VAE latents (the null label is the
empty prompt, the VAE and text encoder stay out of the state dict), bad folders are refused in one
line, every gpu recipe validates without its files, and two dmd2 steps of the gpu recipe run on CPU."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from anydistill.catalog import load_recipe, shipped_recipes
from anydistill.cli import main
from anydistill.data.text_to_image import TextToImageLatents
from anydistill.models.diffusers_pipeline import diffusers_pipeline

PROMPTS = ["a red cat", "a blue dog", "a green bird"]
SIZE = 16  # pixels: the tiny VAE halves them, 4 x 8 x 8 latents
SHAPE = (4, 8, 8)


def tiny_tokenizer(folder: Path):
    """A CLIPTokenizer over single letters (no merges), written by hand: nothing is downloaded."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter], vocab[letter + "</w>"] = len(vocab), len(vocab) + 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=12), len(vocab)


def save_pipeline(folder: Path, *, sdxl: bool = False) -> Path:
    """A tiny random StableDiffusionPipeline (or SDXL pipeline) saved with save_pretrained."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    tokenizer, vocab = tiny_tokenizer(folder.parent / f"{folder.name}-vocab")
    text = {"vocab_size": vocab, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "max_position_embeddings": 12, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    extra = {"addition_embed_type": "text_time", "addition_time_embed_dim": 4, "projection_class_embeddings_input_dim": 8 + 6 * 4} if sdxl else {}
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=16 if sdxl else 8, attention_head_dim=2, norm_num_groups=4, **extra)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4, sample_size=SIZE, layers_per_block=1)
    scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              steps_offset=1, clip_sample=False)
    if sdxl:
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(hidden_size=8, **text)), tokenizer=tokenizer,
                                         text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=8, projection_dim=8, **text)),
                                         tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    else:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(hidden_size=8, **text)), tokenizer=tokenizer,
                                       unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.save_pretrained(str(folder))
    return folder


def write_images(folder: Path, rows: int = 12) -> Path:
    """Tiny RGB PNGs (a colour per prompt) and their metadata.jsonl, the imagefolder convention."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(rows):
        pixels = rng.integers(0, 100, (SIZE + 4, SIZE, 3)).astype(np.uint8)  # not square: centre-cropped
        pixels[..., i % 3] += 150
        Image.fromarray(pixels).save(folder / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": PROMPTS[i % 3]}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("t2i")
    return {"pipeline": save_pipeline(root / "pipeline"), "images": write_images(root / "images"), "root": root}


def encoded(pipeline: Path, texts: list[str]) -> torch.Tensor:
    """The pipeline's own text encoding of ``texts`` (SD1.5: the last hidden state)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(pipeline / "tokenizer"))
    encoder = CLIPTextModel.from_pretrained(str(pipeline / "text_encoder")).eval()
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder(ids)[0]


def test_prompt_ids_condition_the_unet_and_null_is_the_empty_prompt(files):
    from diffusers import UNet2DConditionModel

    model = diffusers_pipeline(SHAPE, 3, path=str(files["pipeline"]), prompts=str(files["images"])).eval()
    assert (model.schedule, model.prediction, model.null_class) == ("ddpm", "eps", 3)
    assert model.net.prompts == sorted(PROMPTS)  # label i is the i-th sorted prompt, as the data labels rows
    table = model.net.prompt_table
    expected = encoded(files["pipeline"], [*sorted(PROMPTS), ""])
    assert torch.allclose(table.hidden, expected, atol=1e-6)
    unet = UNet2DConditionModel.from_pretrained(str(files["pipeline"] / "unet")).eval()
    x, t = torch.randn(2, *SHAPE), torch.tensor([0.25, 0.75])
    with torch.no_grad():
        out = model(x, t, torch.tensor([1, 3]))
        assert torch.allclose(out, unet(x, t * 99, encoder_hidden_states=expected[[1, 3]]).sample, atol=1e-5)
        # cond=None (the unconditional branch of guidance) is the empty prompt, label 3.
        assert torch.allclose(model(x, t, None), model(x, t, torch.tensor([3, 3])), atol=1e-6)


def test_vae_and_text_encoder_stay_out_of_training(files):
    model = diffusers_pipeline(SHAPE, 3, path=str(files["pipeline"]), prompts=[str(files["images"])])
    keys = model.state_dict().keys()
    assert keys and all(k.startswith("net.unet.") for k in keys)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in model.net.unet.parameters())
    copied = copy.deepcopy(model)  # a fake score or an expert: its own UNet, the same table and VAE
    assert copied.net.prompt_table is model.net.prompt_table and copied.net.vae is model.net.vae
    assert copied.net.unet is not model.net.unet
    from anydistill.models.routed_denoiser import routed

    assert routed(model, 2).schedule_options == model.schedule_options  # multi-student's and phased-dmd's copies read the same betas
    images = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    latents = model.net.encode(images)
    assert latents.shape == (2, *SHAPE) and model.net.decode(latents).shape == images.shape


def test_data_serves_latents_and_prompt_ids(files):
    data = TextToImageLatents(train=str(files["images"]), pipeline=str(files["pipeline"]), size=SIZE, val_fraction=0.2,
                              test_fraction=0.2, encode_device="cpu")
    data.setup()
    assert (data.input_shape, data.num_classes, data.prompts) == (SHAPE, 3, sorted(PROMPTS))
    assert not data.splits  # setup reads metadata only: validation encodes nothing
    x, y = data.split("train")
    sizes = [len(data.split(name)[1]) for name in ("train", "val", "test")]
    assert x.shape == (sizes[0], *SHAPE) and sum(sizes) == 12 and min(sizes) >= 2
    assert y.dtype == torch.long and set(y.tolist()) <= {0, 1, 2}
    from anydistill.data.text_to_image import read_image
    from anydistill.models.pipeline_parts import frozen_vae

    rows = [json.loads(line) for line in (files["images"] / "metadata.jsonl").read_text().splitlines()]
    every = torch.cat([data.split(name)[0] for name in ("train", "val", "test")])
    first = frozen_vae(str(files["pipeline"]), "test").encode(read_image(files["images"] / rows[0]["file_name"], SIZE)[None])
    assert torch.isclose(every, first, atol=1e-5).flatten(1).all(1).any()  # row 0's latents are among the splits'
    prompts = files["root"] / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    free = TextToImageLatents(train=str(prompts), pipeline=str(files["pipeline"]), size=SIZE, val=str(prompts), test=str(prompts))
    assert free.split("train")[0].shape == (3, *SHAPE) and not free.split("train")[0].any()  # prompts only: zero latents


def test_sdxl_table_has_pooled_embeddings_and_zero_null(tmp_path):
    folder = save_pipeline(tmp_path / "xl", sdxl=True)
    model = diffusers_pipeline(SHAPE, 3, path=str(folder), prompts=str(write_images(tmp_path / "images"))).eval()
    table = model.net.prompt_table
    assert table.hidden.shape == (4, 12, 16) and table.text_embeds.shape == (4, 8)
    assert table.time_ids[0].tolist() == [SIZE, SIZE, 0, 0, SIZE, SIZE]
    assert not table.hidden[3].any() and not table.text_embeds[3].any()  # force_zeros_for_empty_prompt
    with torch.no_grad():
        assert model(torch.randn(2, *SHAPE), torch.tensor([0.5, 0.5]), torch.tensor([0, 3])).shape == (2, *SHAPE)


def test_bad_folders_are_refused_in_one_line(files, tmp_path):
    from anydistill.core.errors import DataNotFoundError

    def refused(match: str, error: type = ValueError, **kwargs) -> None:
        options = {"path": str(files["pipeline"]), "prompts": str(files["images"]), **kwargs}
        with pytest.raises(error, match=match) as info:
            diffusers_pipeline(SHAPE, 3, **options)
        assert "\n" not in str(info.value)

    refused("no pipeline folder .* on this machine", DataNotFoundError, path=str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    refused("has no readable model_index.json", path=str(tmp_path / "empty"))
    refused("hold 1 distinct prompts but the data has 3", prompts=str(write_prompts(tmp_path / "one.txt", ["a cat"])))
    with pytest.raises(ValueError, match=r"set data.size to 16"):
        diffusers_pipeline((4, 16, 16), 3, path=str(files["pipeline"]), prompts=str(files["images"]))
    broken = tmp_path / "transformer"
    broken.mkdir()
    (broken / "model_index.json").write_text(json.dumps({"transformer": ["diffusers", "PixArtTransformer2DModel"]}))
    refused("has a transformer; only UNet pipelines", path=str(broken))


def write_prompts(path: Path, prompts: list[str]) -> Path:
    path.write_text("\n".join(prompts) + "\n")
    return path


@pytest.mark.parametrize("name", sorted(n for n in shipped_recipes() if n.startswith("gpu/")))
def test_gpu_recipes_validate_without_their_files(name):
    recipe = load_recipe(name)
    assert recipe.unchecked and "on this machine" in recipe.unchecked[0]


def tiny_run_args(files, method: str, steps: int, extra: list[str]) -> list[str]:
    """``--set`` arguments pointing a gpu recipe at the tiny pipeline, on the CPU, for ``steps`` optimizer steps."""
    images, pipeline = str(files["images"]), str(files["pipeline"])
    overrides = [f"data.train={images}", f"data.pipeline={pipeline}", f"data.size={SIZE}", "data.batch_size=4",
                 "data.encode_device=cpu", "data.val_fraction=0.25", "data.test_fraction=0.25", f"teacher.path={pipeline}",
                 f"teacher.prompts={images}", f"student.path={pipeline}", f"student.prompts={images}", "trainer.accelerator=cpu",
                 "trainer.precision=32-true", f"trainer.max_steps={steps}", "trainer.progress_bar=false", "evaluation.num_samples=10",
                 "evaluation.teacher_steps=2", "evaluation.straightness_steps=2", "evaluation.classifier_epochs=1",
                 "evaluation.mmd_points=10", f"methods.{method}.update_ratio=1", *extra]
    return [arg for override in overrides for arg in ("--set", override)]


@pytest.mark.parametrize(("method", "steps", "extra"), [
    ("decoupled-dmd", 2, []),
    ("disback", 6, ["methods.disback.path_checkpoints=2", "methods.disback.path_interval=1", "methods.disback.switch_every=1"]),
    ("multi-student", 2, ["methods.multi-student.head_hidden=8"]),
    ("phased-dmd", 4, ["methods.phased-dmd.phase_iterations=1"]),  # both phases
    ("flash-dmd", 2, ["methods.flash-dmd.head_hidden=8"]),
])
def test_the_other_gpu_recipes_train_on_the_tiny_pipeline(files, tmp_path, capsys, method, steps, extra):
    assert main(["run", f"gpu/{method}", "--runs", str(tmp_path / "runs"), *tiny_run_args(files, method, steps, extra)]) == 0, \
        capsys.readouterr().err
    run = next((tmp_path / "runs").glob("*"))
    assert method in json.loads((run / "metrics.json").read_text())


def test_two_dmd2_steps_of_the_gpu_recipe_on_cpu(files, tmp_path, capsys):
    pipeline = str(files["pipeline"])
    args = tiny_run_args(files, "dmd2", 2, ["methods.dmd2.head_hidden=8"])
    assert main(["validate", "gpu/dmd2", *args]) == 0  # with the files present: models built and checked
    assert main(["run", "gpu/dmd2", "--runs", str(tmp_path / "runs"), *args]) == 0, capsys.readouterr().err
    run = next((tmp_path / "runs").glob("*"))
    assert {"teacher", "dmd2"} <= set(json.loads((run / "metrics.json").read_text()))
    export = next(run.glob("checkpoints/dmd2*"))
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    weights = load_file(str(export / "model.safetensors"))
    assert all(k.startswith("net.unet.") for k in weights)  # no VAE, no text encoder, no prompt table
    unet = UNet2DConditionModel.from_pretrained(str(export / "diffusers"))  # drops back into the pipeline as unet/
    assert torch.equal(unet.state_dict()["conv_in.weight"], weights["net.unet.conv_in.weight"])
    teacher = UNet2DConditionModel.from_pretrained(pipeline + "/unet").state_dict()
    assert any(not torch.equal(teacher[k], v) for k, v in unet.state_dict().items())  # the generator took its step
