"""`lm-dataset`: TRL's three formats from a user's files, the loss masks, the splits, the errors,
and the on-policy methods (gkd, seq-kd) and cached lm-kd running on it."""

from __future__ import annotations


import pytest
import torch

from anydistill.core.recipe import validate_kwargs
from anydistill.data.lm_dataset import LMDataset
from lm.local_folder import conversations, save_tiny_llama, write_jsonl


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("llama") / "teacher")


def data(folder, train, **kwargs) -> LMDataset:
    module = LMDataset(tokenizer=str(folder), train=str(train), **{"block_size": 32, "batch_size": 2, **kwargs})
    module.setup()
    return module


def decode(module: LMDataset, ids: torch.Tensor) -> str:
    return module.tokenizer.decode(ids, skip_special_tokens=False)


def test_messages_loss_is_on_assistant_turns_only(folder, tmp_path) -> None:
    rows = [{"messages": [{"role": "user", "content": "name a colour ."}, {"role": "assistant", "content": "red is a colour ."},
                          {"role": "user", "content": "and so is ?"}, {"role": "assistant", "content": "blue ."}]}] * 10
    module = data(folder, write_jsonl(tmp_path / "chat.jsonl", rows))
    assert module.resolved_format == "messages"
    ids, mask = module.split("train")
    assert decode(module, ids[0][mask[0]]) == "red is a colour . <|end|> blue . <|end|>"
    assert decode(module, ids[0][: int(module.attention["train"][0].sum())]).startswith("<|user|> name a colour .")
    assert (ids[0][module.attention["train"][0] == 0] == module.tokenizer.pad_token_id).all()
    batch = next(iter(module.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "completion_mask", "index"} and batch["input_ids"].shape == (2, 32)


def test_prompt_tokens_put_the_last_completion_right_after_position_P(folder, tmp_path) -> None:
    module = data(folder, write_jsonl(tmp_path / "chat.jsonl", conversations(12)), prompt_tokens=12)
    ids, mask = module.split("train")
    attention = module.attention["train"]
    for row in range(ids.shape[0]):
        completion = decode(module, ids[row, 12:][attention[row, 12:] == 1])
        assert completion.endswith("<|end|>") and "<|assistant|>" not in completion  # the reply starts at P
        assert decode(module, ids[row, :12][attention[row, :12] == 1]).endswith("<|assistant|>")
        assert not mask[row][attention[row] == 0].any()


def test_prompt_completion_masks_the_prompt_and_appends_eos(folder, tmp_path) -> None:
    rows = [{"prompt": "what is two plus two ?", "completion": "it is four ."}] * 10
    module = data(folder, write_jsonl(tmp_path / "pc.jsonl", rows))
    ids, mask = module.split("train")
    assert module.resolved_format == "prompt-completion"
    assert decode(module, ids[0][mask[0]]) == "it is four . <eos>"
    conversational = [{"prompt": [{"role": "user", "content": "hello ,"}], "completion": [{"role": "assistant", "content": "thank you ."}]}] * 10
    module = data(folder, write_jsonl(tmp_path / "cpc.jsonl", conversational))
    ids, mask = module.split("train")
    assert decode(module, ids[0][mask[0]]) == "thank you . <|end|>"


def test_txt_files_are_documents_packed_into_blocks(folder, tmp_path) -> None:
    (tmp_path / "docs").mkdir()
    for i, text in enumerate(["the cat sat on the mat .", "the sun is hot and the moon is cold ."] * 5):
        (tmp_path / "docs" / f"{i}.txt").write_text(text + "\nthe end")  # one document per file, newlines kept
    module = data(folder, tmp_path / "docs", block_size=8, train_limit=None)
    assert module.resolved_format == "text"
    ids = torch.cat([module.split(s)[0] for s in ("train", "val", "test")]).flatten()
    assert (ids == module.tokenizer.eos_token_id).sum() == 10  # each document ends with <eos>
    train_ids, mask = module.split("train")
    assert not mask[:, 0].any()  # the first token of a block is never predicted
    assert (mask | (train_ids == module.tokenizer.pad_token_id))[:, 1:].all()


def test_parquet_and_saved_dataset_dict(folder, tmp_path) -> None:
    import datasets

    rows = [{"text": "the cat sat on the mat ."}] * 12
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "t.parquet"))
    assert data(folder, tmp_path / "t.parquet", block_size=8).resolved_format == "text"
    saved = datasets.DatasetDict({"train": datasets.Dataset.from_list(conversations(8)),
                                  "validation": datasets.Dataset.from_list(conversations(3)),
                                  "test": datasets.Dataset.from_list(conversations(2))})
    saved.save_to_disk(str(tmp_path / "saved"))
    module = data(folder, tmp_path / "saved")
    assert [module.split(s)[0].shape[0] for s in ("train", "val", "test")] == [8, 3, 2]


def test_held_out_fractions_are_seeded_disjoint_and_recorded(folder, tmp_path) -> None:
    rows = [{"prompt": f"the cat {'sat ' * (i % 7)}", "completion": "on the mat ."} for i in range(40)]
    train = write_jsonl(tmp_path / "rows.jsonl", rows)
    a, b = data(folder, train, val_fraction=0.2, test_fraction=0.1), data(folder, train, val_fraction=0.2, test_fraction=0.1)
    assert [a.split(s)[0].shape[0] for s in ("train", "val", "test")] == [28, 8, 4]
    for split in ("train", "val", "test"):
        assert torch.equal(a.split(split)[0], b.split(split)[0])
    other = data(folder, train, val_fraction=0.2, test_fraction=0.1, split_seed=1)
    assert not torch.equal(a.split("test")[0], other.split("test")[0])
    assert a.fingerprint() == b.fingerprint() != other.fingerprint()
    given = data(folder, train, val=str(write_jsonl(tmp_path / "val.jsonl", rows[:3])))
    assert given.split("val")[0].shape[0] == 3 and given.split("train")[0].shape[0] == 36  # only test is carved
    params = validate_kwargs(LMDataset, {"tokenizer": str(folder), "train": str(train)}, owner="data module 'lm-dataset'", where="data")[0]
    assert params["val_fraction"] == 0.1 and params["test_fraction"] == 0.1 and params["split_seed"] == 0


def check(folder, **kwargs) -> list[str]:
    return validate_kwargs(LMDataset, {"tokenizer": str(folder), **kwargs}, owner="data module 'lm-dataset'", where="data")[1]


def test_errors_name_the_fix(folder, tmp_path) -> None:
    good = str(write_jsonl(tmp_path / "good.jsonl", conversations(8)))
    [fraction] = check(folder, train=good, test_fraction=0.0)
    assert "test_fraction" in fraction and "greater than 0" in fraction
    [missing] = check(folder, train=str(tmp_path / "nowhere.jsonl"))
    assert "data.train" in missing and "does not exist" in missing
    (tmp_path / "rows.csv").write_text("text\nhello\n")
    [suffix] = check(folder, train=str(tmp_path / "rows.csv"))
    assert "is a .csv file" in suffix
    [tokenizer] = check(tmp_path / "nothing", train=good)
    assert "data.tokenizer" in tokenizer and "save_pretrained" in tokenizer
    with pytest.raises(ValueError, match=r"columns found: question, answer"):
        data(folder, write_jsonl(tmp_path / "qa.jsonl", [{"question": "a", "answer": "b"}] * 4))
    with pytest.raises(ValueError, match=r"no 'prompt' or 'completion' column.*columns found: messages"):
        data(folder, good, format="prompt-completion")
    with pytest.raises(ValueError, match=r"Row 2 \(counting from 0\) of the train data .* has no assistant turn \(roles: user, user\)"):
        data(folder, write_jsonl(tmp_path / "q.jsonl", conversations(2) + [{"messages": [{"role": "user", "content": "a"}] * 2}]))
    plain = save_tiny_llama(tmp_path / "plain", chat_template=False)
    with pytest.raises(ValueError, match=r"has no chat template"):
        data(plain, good)
    with pytest.raises(ValueError, match=r"too few to hold out"):
        data(folder, write_jsonl(tmp_path / "two.jsonl", conversations(2)))


def test_gkd_seq_kd_and_cached_lm_kd_run_on_it(folder, tmp_path) -> None:
    import lightning as L

    from anydistill.core.teacher import Teacher
    from anydistill.lm.methods.gkd import GKD
    from anydistill.lm.methods.seq_kd import SeqKD
    from anydistill.models.hf_causal_lm import hf_causal_lm
    from lm.lm_helpers import fit, state

    module = data(folder, write_jsonl(tmp_path / "chat.jsonl", conversations(16)), prompt_tokens=12, batch_size=4)
    teacher = Teacher(hf_causal_lm(path=str(folder)), name="tiny-llama")
    from anydistill.lm.methods.kd import LMKD

    cached_kd = {"topk": 4, "cache_dir": str(tmp_path / "topk")}  # the top-k cache keys on the module's fingerprint
    for method_class, options in ((GKD, {"lmbda": 1.0}), (SeqKD, {}), (LMKD, cached_kd)):
        L.seed_everything(0)
        student = hf_causal_lm(path=str(folder), keep_layers=[0, 2])
        before = state(student)
        method = method_class(student, teacher, **options)
        assert method.data_problems(module, teacher.model) == []
        fit(method, module, steps=2)
        assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items()), method_class.__name__
    assert any((tmp_path / "topk").rglob("*.safetensors")) or any((tmp_path / "topk").rglob("manifest*"))


def test_domain_column_keeps_each_domain_in_its_own_blocks(folder, tmp_path) -> None:
    rows = [{"text": "the cat sat on the mat .", "domain": "cats"}, {"text": "a dog ran in the park .", "domain": "dogs"}] * 12
    module = data(folder, write_jsonl(tmp_path / "tagged.jsonl", rows), block_size=8, domain_column="domain")
    assert module.domains == ["cats", "dogs"]
    for split in ("train", "val", "test"):
        ids, _ = module.split(split)
        for block, domain in zip(ids, module.domain_rows[split]):
            words = set(decode(module, block).split())
            assert not words & ({"dog", "park"} if domain == 0 else {"cat", "mat"})  # a block never spans two domains
    batch = next(iter(module.train_dataloader()))
    assert batch["domain"].shape == (2,)
    with pytest.raises(ValueError, match="has no 'genre' column, which data.domain_column names"):
        data(folder, write_jsonl(tmp_path / "tagged2.jsonl", rows), domain_column="genre")
