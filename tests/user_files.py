"""Tiny users' files written into a test's tmp_path: tables, image folders, tensor files, and a
save_pretrained BERT classifier with its tokenizer (random weights, built from a config)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

WORDS = "good bad movie great awful fine plot actor boring fun dull superb film scene".split()


def write_table(path: Path, rows: int = 60, seed: int = 0, label: str = "species", classes=("a", "b", "c")) -> Path:
    """A CSV (or parquet, by suffix) with numeric columns f0, f1, f2 and string labels whose class
    shifts f0, so a model can learn it."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(classes), rows)
    frame = pd.DataFrame({"f0": y * 2.0 + rng.normal(size=rows), "f1": rng.normal(size=rows),
                          "f2": rng.normal(size=rows) + 5.0, label: [classes[i] for i in y]})
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return path


def write_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 6, size: int = 10, seed: int = 0) -> Path:
    """One subfolder of tiny RGB PNGs per class (class i is brighter in channel i)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 120, (size, size, 3)).astype(np.uint8)
            pixels[..., c % 3] += 120
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def image_arrays(rows: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x float32 [rows, 1, 8, 8] and y int64 [rows] in 0..3, with a class-dependent mean."""
    rng = np.random.default_rng(seed)
    y = np.arange(rows) % 4
    x = rng.normal(size=(rows, 1, 8, 8)).astype(np.float32) + y[:, None, None, None]
    return x, y.astype(np.int64)


def write_bert_folder(path: Path, num_labels: int = 3, layers: int = 2, seed: int = 0) -> Path:
    """A save_pretrained BertForSequenceClassification (hidden 16, random weights) and its
    BertTokenizerFast over a small vocabulary file."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(path / "vocab.txt"))
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=32, num_labels=num_labels, max_position_embeddings=32)
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_texts(path: Path, rows: int = 48, seed: int = 0) -> Path:
    """A CSV of short reviews (column ``review``) with string labels neg/neu/pos."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    moods = {"pos": ["good", "great", "superb", "fun"], "neg": ["bad", "awful", "boring", "dull"], "neu": ["fine", "film", "scene"]}
    labels = [("neg", "neu", "pos")[i % 3] for i in range(rows)]
    texts = [" ".join(rng.choice(moods[m], 2).tolist() + rng.choice(["movie", "plot", "actor"], rng.integers(1, 4)).tolist())
             for m in labels]
    pd.DataFrame({"review": texts, "sentiment": labels}).to_csv(path, index=False)
    return path
