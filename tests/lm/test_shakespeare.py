"""The Shakespeare data module and the offline tokenizers."""

from __future__ import annotations

import torch

from anydistill.data.tokenizers import EOS_ID, PAD_ID, bpe_tokenizer, char_tokenizer, encode
from anydistill.data.shakespeare import ShakespeareData, texts_by_split


def test_splits_are_whole_plays_disjoint_and_fixed() -> None:
    splits = texts_by_split()
    names = {split: {name for name, _ in texts} for split, texts in splits.items()}
    assert [len(names[s]) for s in ("train", "val", "test")] == [34, 4, 4]
    assert not (names["train"] & names["val"]) and not (names["train"] & names["test"]) and not (names["val"] & names["test"])
    a, b = ShakespeareData(block_size=64, eval_limit=16, train_limit=64), ShakespeareData(block_size=64, eval_limit=16, train_limit=64)
    for split in ("train", "val", "test"):
        assert torch.equal(a.split(split)[0], b.split(split)[0])
    assert a.fingerprint() == b.fingerprint() != ShakespeareData(block_size=32, train_limit=64).fingerprint()


def test_blocks_masks_and_batches() -> None:
    data = ShakespeareData(block_size=32, prompt_tokens=8, batch_size=4, train_limit=10, eval_limit=4)
    ids, mask = data.split("train")
    assert ids.shape == (10, 32) and ids.dtype == torch.long and mask.shape == (10, 32)
    assert not mask[:, :8].any() and mask[:, 8:].all()
    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "completion_mask", "index"} and batch["input_ids"].shape == (4, 32)
    assert len(data.train_dataloader()) == 2  # the incomplete last batch is dropped
    text = data.tokenizer.decode(ids[0])
    assert len(text) == 32  # one character per id


def test_char_table_encoding_equals_the_fast_tokenizer() -> None:
    text = "ROMEO.\nBut soft! what light through yonder window breaks?"
    tokenizer = char_tokenizer(text + "xyz")
    assert tokenizer.pad_token_id == PAD_ID and tokenizer.eos_token_id == EOS_ID
    ours = encode(tokenizer, [text])[0].tolist()
    assert ours == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ours) == text


def test_bpe_is_trained_offline_and_round_trips() -> None:
    texts = [text for _, text in texts_by_split()["train"][:2]]
    tokenizer = bpe_tokenizer(texts, 300)
    assert len(tokenizer) == 300 and tokenizer.pad_token_id == PAD_ID and tokenizer.eos_token_id == EOS_ID
    sample = "Now is the winter of our discontent"
    ids = encode(tokenizer, [sample])[0]
    assert len(ids) < len(sample) and tokenizer.decode(ids) == sample
