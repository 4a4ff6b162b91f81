"""Several teachers as one (lm.teacher_mixture): route, average, weighted and geometric mixtures
equal their formulas on fixed teachers; in-process, cached and served teachers give the same
mixture; lm-kd and gkd train from it; bad mixes are refused in one line each."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from anydistill.core.errors import RecipeError
from anydistill.core.recipe import OptimizerSpec
from anydistill.data.lm_dataset import LMDataset
from anydistill.lm.common import teacher_logits
from anydistill.lm.methods.gkd import GKD
from anydistill.lm.methods.kd import LMKD
from anydistill.lm.served.client import ServedTeacher
from anydistill.lm.served.server import TeacherService, running
from anydistill.lm.teacher_mixture import TeacherMixture, mix_problems
from lm.lm_helpers import fit, state, tiny_data, tiny_lm, tiny_teacher

OPTIMIZER = OptimizerSpec(name="adamw", lr=3e-3, schedule="constant")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> LMDataset:
    """Shakespeare blocks as text rows tagged 'plays' or 'poems' (alternately), char tokenizer."""
    folder = tmp_path_factory.mktemp("domains")
    source = tiny_data(train_limit=48)
    source.setup()
    source.tokenizer.save_pretrained(folder / "tokenizer")
    texts = [source.tokenizer.decode(ids, skip_special_tokens=True) for ids in source.split("train")[0]]
    with (folder / "train.jsonl").open("w") as handle:
        for i, text in enumerate(texts):
            handle.write(json.dumps({"text": text, "domain": ["plays", "poems"][i % 2]}) + "\n")
    module = LMDataset(tokenizer=str(folder / "tokenizer"), train=str(folder / "train.jsonl"), block_size=32, prompt_tokens=8,
                       batch_size=8, domain_column="domain")
    module.setup()
    return module


@pytest.fixture(scope="module")
def teachers():
    return {"plays": tiny_teacher(100), "poems": tiny_teacher(200)}


def batch_of(data: LMDataset) -> dict[str, torch.Tensor]:
    return next(iter(data.train_dataloader()))


def own(teacher, batch) -> torch.Tensor:
    return F.log_softmax(teacher_logits(teacher, batch["input_ids"], batch["attention_mask"], 96).float(), dim=-1)


def prepared(mixture: TeacherMixture, data: LMDataset) -> TeacherMixture:
    mixture.prepare("test", data, tiny_lm(0))
    return mixture


def test_domain_column_tags_rows_and_batches(data) -> None:
    assert data.domains == ["plays", "poems"]
    batch = batch_of(data)
    assert batch["domain"].shape == (8,) and set(batch["domain"].tolist()) <= {0, 1}
    assert {int(d) for d in data.domain_rows["train"]} == {0, 1} and data.domain_rows["test"].numel() == data.split("test")[0].shape[0]


def test_route_gives_each_example_its_own_teacher(data, teachers) -> None:
    mixture = prepared(TeacherMixture(teachers, "route"), data)
    batch = batch_of(data)
    mixed = mixture.log_probs(batch)
    for row, domain in enumerate(batch["domain"].tolist()):
        expected = own(teachers[data.domains[domain]], batch)[row]
        torch.testing.assert_close(mixed[row], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mix,weights,space", [("average", None, "probs"), ("weighted", {"plays": 0.7, "poems": 0.3}, "probs"),
                                               ("weighted", {"plays": 0.25, "poems": 0.75}, "logprobs")])
def test_average_and_weighted_mixtures_are_their_formulas(data, teachers, mix, weights, space) -> None:
    mixture = prepared(TeacherMixture(teachers, mix, weights=weights, space=space), data)
    batch = batch_of(data)
    w = weights or {"plays": 0.5, "poems": 0.5}
    a, b = own(teachers["plays"], batch).double(), own(teachers["poems"], batch).double()
    if space == "probs":
        expected = (w["plays"] * a.exp() + w["poems"] * b.exp()).log()
    else:
        expected = F.log_softmax(w["plays"] * a + w["poems"] * b, dim=-1)
    torch.testing.assert_close(mixture.log_probs(batch).double(), expected, rtol=0, atol=1e-5)
    assert torch.allclose(mixture.log_probs(batch).exp().sum(-1), torch.ones(1), atol=1e-5)


def test_cached_and_served_teachers_give_the_in_process_mixture(data, teachers, tmp_path) -> None:
    """A top-k cache with k = V and a served hidden-state teacher reproduce the in-process route."""
    batch = batch_of(data)
    local = prepared(TeacherMixture(teachers, "route"), data).log_probs(batch)
    cached = prepared(TeacherMixture(teachers, "route", topk={"plays": 96}, cache_dir=str(tmp_path)), data)
    assert cached.members[0].signals is not None
    torch.testing.assert_close(cached.log_probs(batch), local, rtol=1e-3, atol=1e-3)  # fp16 storage of the log-probs
    with running(TeacherService(teachers["poems"], name="poems")) as url:
        served = ServedTeacher(url, signal="hidden", dtype="float32")
        served.connect()
        mixture = prepared(TeacherMixture({"plays": teachers["plays"], "poems": served}, "route"), data)
        torch.testing.assert_close(mixture.log_probs(batch), local, rtol=0, atol=1e-5)
        served_fingerprint = mixture.fingerprints()["poems"]
        mixture.close()
    assert served_fingerprint == teachers["poems"].fingerprint()  # what the run records and --resume compares


def test_lm_kd_with_one_routed_teacher_trains_as_that_teacher(data, teachers) -> None:
    """With every row routed to the same teacher, lm-kd learns exactly what it learns from it alone."""
    routed_to_plays = TeacherMixture({"plays": teachers["plays"], "poems": teachers["plays"]}, "route")
    ours = LMKD(tiny_lm(0), routed_to_plays, OPTIMIZER, alpha=0.5, fused_head=False)
    fit(ours, data, steps=3)
    alone = LMKD(tiny_lm(0), teachers["plays"], OPTIMIZER, alpha=0.5, fused_head=False)
    fit(alone, data, steps=3)
    for name, value in state(alone.student).items():  # log_softmax of the logits vs the logits: fp32 rounding, which Adam
        torch.testing.assert_close(state(ours.student)[name], value, rtol=1e-4, atol=1e-5)  # magnifies on near-zero weights


def test_gkd_scores_the_students_samples_with_each_examples_teacher(data, teachers) -> None:
    method = GKD(tiny_lm(0), TeacherMixture(teachers, "route"), OPTIMIZER, lmbda=1.0)
    before = state(method.student)
    fit(method, data, steps=2)
    assert any(not torch.equal(before[k], v) for k, v in state(method.student).items())


def test_route_without_domain_tags_or_with_an_unknown_tag_is_refused(data, teachers, tmp_path) -> None:
    plain = LMDataset(tokenizer=data.tokenizer_folder, train=data.sources["train"], block_size=32, batch_size=8)
    plain.setup()
    assert "set data.domain_column" in TeacherMixture(teachers, "route").problems(plain, tiny_lm(0))[0]
    only_plays = TeacherMixture({"plays": teachers["plays"], "news": teachers["poems"]}, "route")
    (problem,) = only_plays.problems(data, tiny_lm(0))
    assert "'poems' names no teacher (teachers: plays, news)" in problem
    with pytest.raises(RecipeError, match="names no teacher"):
        only_plays.prepare("lm-kd", data, tiny_lm(0))


def test_teachers_of_different_vocabularies_are_refused(data, teachers) -> None:
    from anydistill.core.teacher import Teacher
    from anydistill.models.causal_lm import llama_lm

    other = Teacher(llama_lm(vocab_size=128, n_layer=1, n_embd=32, n_head=2, n_positions=32))
    problems = TeacherMixture({"plays": teachers["plays"], "poems": other}, "average").problems(data, tiny_lm(0))
    assert any("different vocabularies (gpt2, 96 logits vs llama, 128 logits), and mix: average" in p for p in problems)


@pytest.mark.parametrize("mix,weights,space,fragment", [
    ("weighted", {"a": 0.6, "b": 0.3}, "probs", "sum to 1 (they sum to 0.9)"),
    ("weighted", {"a": 1.0}, "probs", "missing b"),
    ("weighted", {"a": 0.5, "b": 0.25, "c": 0.25}, "probs", "no teacher named c"),
    ("weighted", {"a": 1.5, "b": -0.5}, "probs", "positive number"),
    ("weighted", None, "probs", "needs one weight per teacher"),
    ("average", {"a": 0.5, "b": 0.5}, "probs", "only mix: weighted takes weights"),
    ("route", None, "logprobs", "nothing to mix"),
])
def test_bad_mixes_are_one_line_each(mix, weights, space, fragment) -> None:
    problems = mix_problems(["a", "b"], mix, weights, space)
    assert len(problems) == 1 and fragment in problems[0], problems
    assert mix_problems(["a", "b"], "weighted", {"a": 0.7, "b": 0.3}, "probs") == []


def test_resume_refuses_a_changed_teacher(tmp_path, teachers) -> None:
    from anydistill.core.errors import RunDirError
    from anydistill.core.rundir import RunDir
    from anydistill.runner import check_teachers

    run_dir = RunDir(tmp_path / "run")
    run_dir.path.mkdir(parents=True, exist_ok=True)
    check_teachers(run_dir, TeacherMixture(teachers, "average"), resume=False)
    check_teachers(run_dir, TeacherMixture(teachers, "average"), resume=True)  # the same teachers: accepted
    swapped = TeacherMixture({"plays": teachers["plays"], "poems": tiny_teacher(300)}, "average")
    with pytest.raises(RunDirError, match="teacher poems changed since this run started"):
        check_teachers(run_dir, swapped, resume=True)


def test_a_served_teacher_in_a_mixture_is_asked_one_batch_ahead(data, teachers) -> None:
    """lm-kd pipelines a served member's requests (its routed rows only) and learns what it learns in-process."""
    local = LMKD(tiny_lm(0), TeacherMixture(teachers, "route"), OPTIMIZER, alpha=0.5)
    fit(local, data, steps=4)
    with running(TeacherService(teachers["poems"], name="poems")) as url:
        served = ServedTeacher(url, signal="hidden", dtype="float32")
        served.connect()
        ours = LMKD(tiny_lm(0), TeacherMixture({"plays": teachers["plays"], "poems": served}, "route"), OPTIMIZER, alpha=0.5)
        fit(ours, data, steps=4)
        served.close()
    assert served.prefetch_hits >= 3 and "train_dataloader" not in vars(data)  # asked ahead; the loader given back
    for name, value in state(local.student).items():
        torch.testing.assert_close(state(ours.student)[name], value, rtol=1e-4, atol=1e-5)
