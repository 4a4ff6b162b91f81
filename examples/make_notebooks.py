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
