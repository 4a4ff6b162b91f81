"""Cross-tokenizer distillation (``uld``, ``gold``): alignment groups and the observed merge against
TRL's GOLD (imported, not copied), ULD and the hybrid loss on plain tensors, GOLD with one
tokenizer against GKD's JSD, the paired data's teacher rows against the student's text, and tiny fits."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch
from lm.lm_helpers import fit, state

from anydistill.core.errors import RecipeError
from anydistill.core.teacher import Teacher
from anydistill.data.paired_text import (
    PairedLMDataset,
    PairedShakespeareData,
    TokenizerPair,
)
from anydistill.data.shakespeare import ShakespeareData
from anydistill.data.token_bytes import spans_from_ids, text_bytes, token_bytes
from anydistill.data.tokenizers import bpe_tokenizer, char_tokenizer
from anydistill.lm.cross_tokenizer import (
    alignment_groups,
    hybrid_distance,
    jsd_of_probs,
    merge_groups,
    shared_prefix,
    sorted_l1,
    vocab_overlap,
)
from anydistill.lm.methods.gkd import GKD
from anydistill.lm.methods.gold import GOLD
from anydistill.lm.methods.uld import ULD
from anydistill.lm.token_losses import token_distill_loss
from anydistill.models.causal_lm import gpt2_lm

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

TEXT = ("ROMEO. But soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"
        "JULIET. O Romeo, Romeo, wherefore art thou Romeo? Café déjà vu, naïve fiancée.\n") * 3
SENTENCES = ["It is the east, and Juliet is the sun.", "O Romeo, wherefore art thou? Café déjà vu.", "naïve  fiancée\n\nbreaks"]


@pytest.fixture(scope="module")
def tokenizers():
    """A byte-level BPE student and a character teacher over TEXT (built in well under a second)."""
    return bpe_tokenizer([TEXT], 300), char_tokenizer(TEXT)


def trl_uld():
    return pytest.importorskip("trl.experimental.gold.gold_trainer").ULDLoss


# -- alignment and merge against TRL ------------------------------------------------------------


def test_alignment_groups_match_trl(tokenizers) -> None:
    ULDLoss = trl_uld()
    pair = TokenizerPair(*tokenizers)
    for sentence in SENTENCES:
        ids = pair.student(sentence, add_special_tokens=False)["input_ids"]
        s_spans, _, t_spans = pair.carry([ids], "student")
        ours = alignment_groups(s_spans[0], t_spans[0])
        assert ours == ULDLoss._align_by_byte_offsets(s_spans[0], t_spans[0])
        # Every group covers the same bytes on both sides.
        for g_s, g_t in zip(*ours):
            assert (s_spans[0][g_s[0]][0], s_spans[0][g_s[-1]][1]) == (t_spans[0][g_t[0]][0], t_spans[0][g_t[-1]][1])
    # Cut-short sides and leftovers, on hand-made spans.
    cases = [([(0, 2), (2, 5), (5, 6)], [(0, 1), (1, 2), (2, 3), (3, 4)]), ([(0, 3)], [(0, 1), (1, 2), (2, 3), (3, 7)]), ([], [(0, 1)])]
    for s_spans, t_spans in cases:
        assert alignment_groups(s_spans, t_spans) == ULDLoss._align_by_byte_offsets(s_spans, t_spans)


def test_a_split_character_is_one_group(tokenizers) -> None:
    student, teacher = bpe_tokenizer([TEXT], 258), tokenizers[1]  # 256 bytes + 2 specials: no merges
    pair = TokenizerPair(student, teacher)
    ids = student("é", add_special_tokens=False)["input_ids"]
    assert len(ids) == 2  # byte-level: two tokens of one byte each, one character span
    s_spans, t_ids, t_spans = pair.carry([ids], "student")
    assert s_spans[0] == [(0, 1), (1, 2)] and t_spans[0] == [(0, 2)] and len(t_ids[0]) == 1
    assert alignment_groups(s_spans[0], t_spans[0]) == ([[0, 1]], [[0]])


def test_shared_prefix_stops_at_the_last_common_boundary() -> None:
    assert shared_prefix([(0, 2), (2, 5), (5, 9)], [(0, 1), (1, 2), (2, 4), (4, 6)]) == (1, 2)
    assert shared_prefix([(0, 3)], [(0, 3), (3, 4)]) == (1, 1)


def test_merge_matches_trl() -> None:
    ULDLoss = trl_uld()
    trl = object.__new__(ULDLoss)  # only the merge is used: no config or tokenizers needed
    trl.token_merge_strategy = "observed"
    generator = torch.Generator().manual_seed(0)
    probs = torch.randn(9, 13, generator=generator).softmax(-1)
    ids = torch.randint(0, 13, (9,), generator=generator).tolist()
    groups = [[0], [1, 2, 3], [4], [5, 6], [], [7, 8]]
    expected = trl._merge_probabilities_with_alignment_groups(probs, groups, ids)
    torch.testing.assert_close(merge_groups(probs, groups, ids), expected, rtol=0, atol=1e-6)
    probs[2, ids[2]] = 0.0  # a zero factor is floored at 1e-8 on both sides
    torch.testing.assert_close(merge_groups(probs, groups, ids), trl._merge_probabilities_with_alignment_groups(probs, groups, ids),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("weights", [(None, None), (0.7, 0.3)])
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_hybrid_matches_trl(tokenizers, beta, weights) -> None:
    ULDLoss = trl_uld()
    student_tok, teacher_tok = tokenizers
    config = SimpleNamespace(uld_crossentropy_weight=0.0, uld_distillation_weight=1.0, uld_student_temperature=1.0,
                             uld_teacher_temperature=1.0, uld_skip_student_eos=True, uld_skip_teacher_eos=True, use_extended_uld=True,
                             uld_token_merge_strategy="observed", uld_use_hybrid_loss=True, uld_hybrid_matched_weight=weights[0],
                             uld_hybrid_unmatched_weight=weights[1], beta=beta)
    trl = ULDLoss(config, student_tokenizer=student_tok, teacher_tokenizer=teacher_tok)
    generator = torch.Generator().manual_seed(1)
    v_s, v_t = len(student_tok), len(teacher_tok)
    q = torch.randn(6, v_s, generator=generator).softmax(-1)
    p = torch.randn(6, v_t, generator=generator).softmax(-1)
    expected = trl._compute_hybrid_uld_loss(q, p)
    overlap = vocab_overlap(student_tok, teacher_tok, student_width=v_s, teacher_width=v_t, match="string")
    d, _, _ = hybrid_distance(q, p, overlap, beta=beta, matched_weight=weights[0], unmatched_weight=weights[1])
    torch.testing.assert_close(d.sum() / q.shape[0], expected, rtol=0, atol=1e-6)


def test_vocab_overlap_by_bytes_meets_byte_level_and_character_tokens(tokenizers) -> None:
    student, teacher = tokenizers
    by_string = vocab_overlap(student, teacher, student_width=len(student), teacher_width=len(teacher), match="string")
    by_bytes = vocab_overlap(student, teacher, student_width=len(student), teacher_width=len(teacher), match="bytes")
    space_s, space_t = student.convert_tokens_to_ids("Ġ"), teacher.convert_tokens_to_ids(" ")
    pairs = dict(zip(by_bytes.teacher_ids.tolist(), by_bytes.student_ids.tolist()))
    assert pairs[space_t] == space_s and space_t not in by_string.teacher_ids.tolist()
    # TRL's string rule pairs the character é with the byte-level piece "é", which stands for the lone byte 0xE9.
    e_t, lone_byte = teacher.convert_tokens_to_ids("é"), student.convert_tokens_to_ids("é")
    assert dict(zip(by_string.teacher_ids.tolist(), by_string.student_ids.tolist()))[e_t] == lone_byte
    assert pairs.get(e_t) != lone_byte
    assert len(set(pairs.values())) == len(pairs)  # one to one


# -- losses on tensors --------------------------------------------------------------------------


def test_uld_of_equal_distributions_is_zero() -> None:
    generator = torch.Generator().manual_seed(2)
    p = torch.randn(4, 5, generator=generator).softmax(-1)
    wider = torch.cat([p[:, torch.randperm(5, generator=generator)], torch.zeros(4, 3)], dim=1)  # permuted and zero-padded
    assert torch.equal(sorted_l1(p, p), torch.zeros(4))
    assert torch.equal(sorted_l1(wider, p), torch.zeros(4)) and torch.equal(sorted_l1(p, wider), torch.zeros(4))
    assert (sorted_l1(p, p.roll(1, dims=0)) > 0).all()


@pytest.mark.parametrize("widths", [(4096, 258), (258, 4096), (50, 50)])
def test_uld_matches_sorting_both_sides_padded(widths) -> None:
    """The top-k form equals ULD's definition (both sides sorted, the narrower zero-padded), value and
    gradient through the softmax, in fp64."""
    generator = torch.Generator().manual_seed(4)
    logits = (3 * torch.randn(16, widths[0], generator=generator, dtype=torch.float64)).requires_grad_()
    teacher = (3 * torch.randn(16, widths[1], generator=generator, dtype=torch.float64)).softmax(-1)
    width = max(widths)
    padded = lambda x: torch.nn.functional.pad(x.sort(-1, descending=True).values, (0, width - x.shape[-1]))  # noqa: E731
    reference = (padded(logits.softmax(-1)) - padded(teacher)).abs().sum(-1)
    (expected,) = torch.autograd.grad(reference.sum(), logits)
    ours = sorted_l1(logits.softmax(-1), teacher)
    (grad,) = torch.autograd.grad(ours.sum(), logits)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_jsd_of_probabilities_is_gkd_jsd(beta) -> None:
    generator = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 6, 11, generator=generator), torch.randn(2, 6, 11, generator=generator)
    expected, _ = token_distill_loss(s, t, torch.ones(2, 6, dtype=torch.bool), divergence="jsd", beta=beta)
    torch.testing.assert_close(jsd_of_probs(s.softmax(-1), t.softmax(-1), beta).sum(), expected, rtol=0, atol=1e-6)


# -- paired data --------------------------------------------------------------------------------


@pytest.fixture
def paired_files(tmp_path, tokenizers):
    student, teacher = tokenizers
    student.save_pretrained(tmp_path / "student")
    teacher.save_pretrained(tmp_path / "teacher")
    rows = [{"prompt": f"ROMEO. {s[:9]}", "completion": s} for s in SENTENCES * 6]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def paired_lm_data(folder, **overrides) -> PairedLMDataset:
    settings = {"tokenizer": str(folder / "student"), "teacher_tokenizer": str(folder / "teacher"), "train": str(folder / "rows.jsonl"),
                "block_size": 40, "prompt_tokens": 6, "batch_size": 4, "eval_batch_size": 4, "val_fraction": 0.2, "test_fraction": 0.2}
    settings.update(overrides)
    return PairedLMDataset(**settings)


def test_teacher_rows_read_as_the_student_rows(paired_files) -> None:
    data = paired_lm_data(paired_files)
    data.setup()
    rows = data.paired["train"]
    ids, _ = data.split("train")
    for r in range(ids.shape[0]):
        student_text = data.tokenizer.decode(ids[r][rows["completion_region"][r]])
        teacher_text = data.teacher_tokenizer.decode(rows["teacher_input_ids"][r][rows["teacher_completion_mask"][r]])
        assert student_text == teacher_text and student_text.endswith("<eos>")
        prompt = ids[r][: data.prompt_tokens][data.attention["train"][r][: data.prompt_tokens].bool()]
        teacher_prompt = rows["teacher_input_ids"][r][: data.teacher_prompt_tokens["train"]]
        assert data.tokenizer.decode(prompt) == data.teacher_tokenizer.decode(teacher_prompt[teacher_prompt != 0])
        # The completions end at the same byte in both tokenisations.
        assert rows["student_spans"][r][rows["completion_region"][r]][-1, 1] == rows["teacher_spans"][r][rows["teacher_completion_mask"][r]][-1, 1]
    batch = next(iter(data.train_dataloader()))
    assert batch["teacher_input_ids"].shape[0] == 4 and batch["student_spans"].shape == (4, 40, 2)


def test_sampled_ids_are_carried_to_the_teacher_as_text(tokenizers) -> None:
    pair = TokenizerPair(*tokenizers)
    generator = torch.Generator().manual_seed(4)
    # Slices of a real encoding: every character is one the character teacher knows.
    encoded = pair.student(TEXT, add_special_tokens=False)["input_ids"]
    rows = [encoded[start : start + 12] for start in torch.randint(0, len(encoded) - 12, (8,), generator=generator).tolist()]
    s_spans, t_ids, t_spans = pair.carry(rows, "student")
    for row, spans, teacher_ids, teacher_spans in zip(rows, s_spans, t_ids, t_spans):
        text = pair.student.decode(row)
        if "\ufffd" not in text:  # a row that ends inside a UTF-8 character reads as U+FFFD
            assert pair.teacher.decode(teacher_ids) == text
        assert spans == spans_from_ids(row, token_bytes(pair.student)) and teacher_spans[-1][1] == len(text.encode())


def groups_cover_the_same_text(pair: TokenizerPair, ids: list[int], spans, other_ids: list[int], other_spans) -> None:
    k_s, k_t = shared_prefix(spans, other_spans)
    groups = alignment_groups(spans[:k_s], other_spans[:k_t])
    for g_s, g_t in zip(*groups):
        assert b"".join(pair.student_own[ids[i]] for i in g_s) == b"".join(pair.teacher_own[other_ids[j]] for j in g_t)
    return groups


def test_a_character_the_teacher_cannot_encode_ends_the_carried_text(tokenizers) -> None:
    """The character teacher has no unknown token: its tokenizer drops '~' (absent from TEXT) and
    misplaces the offsets of every later token. The row is carried up to the token before it, and
    every aligned group covers the same bytes on both sides."""
    pair = TokenizerPair(*tokenizers)
    assert pair.cannot_read("~", "teacher") and not pair.cannot_read("R", "teacher") and not pair.cannot_read(" ", "teacher")
    ids = pair.student("It is the east, ~ and Juliet is the sun.", add_special_tokens=False)["input_ids"]
    s_spans, t_ids, t_spans = pair.carry([ids], "student")
    assert pair.teacher.decode(t_ids[0]) == "It is the east, "
    groups = groups_cover_the_same_text(pair, ids, s_spans[0], t_ids[0], t_spans[0])
    assert sum(len(g) for g in groups[1]) == len(t_ids[0])  # every teacher token is aligned
    # The student's <eos> reads as the teacher's <eos> (a special token), which is never cut.
    eos = pair.student.eos_token_id
    _, t_ids, t_spans = pair.carry([ids[:3] + [eos]], "student")
    assert t_ids[0][-1] == pair.teacher.eos_token_id and t_spans[0][-1][1] == len(pair.text(ids[:3] + [eos], "student").encode())


def test_bytes_that_are_not_utf8_end_the_carried_text(tokenizers) -> None:
    """A byte-level sample may hold half a character: the row is carried up to the last whole
    character before it (its bytes, so the spans of both sides stay in one byte stream)."""
    student, teacher = bpe_tokenizer([TEXT], 258), tokenizers[1]  # bytes only: 'é' is two ids
    pair = TokenizerPair(student, teacher)
    words = student("Café vu", add_special_tokens=False)["input_ids"]
    e_acute = student("é", add_special_tokens=False)["input_ids"]
    assert len(e_acute) == 2
    lone = words[:3] + e_acute[:1] + words[5:]  # "Caf" + a lead byte with no continuation + " vu"
    ends = words[:3] + e_acute[:1]  # cut inside the character at the end
    s_spans, t_ids, t_spans = pair.carry([lone, ends, words], "student")
    assert [pair.teacher.decode(t) for t in t_ids] == ["Caf", "Caf", "Café vu"]
    for ids, spans, other_ids, other_spans in zip((lone, ends, words), s_spans, t_ids, t_spans):
        groups_cover_the_same_text(pair, ids, spans, other_ids, other_spans)


def test_a_slow_tokenizer_is_refused_naming_use_fast(tokenizers) -> None:
    slow = SimpleNamespace(is_fast=False)  # what a Python (slow) tokenizer reports; it has no offset mapping
    with pytest.raises(ValueError, match="use_fast=True") as error:
        TokenizerPair(tokenizers[0], slow)
    assert "\n" not in str(error.value)


# -- methods ------------------------------------------------------------------------------------


def lm(vocab: int, seed: int, layers: int = 1, positions: int = 64):
    torch.manual_seed(seed)
    return gpt2_lm(vocab_size=vocab, n_layer=layers, n_embd=32, n_head=2, n_positions=positions)


def test_gold_with_one_tokenizer_is_gkd() -> None:
    """Same rows, one char tokenizer on both sides: every group is one token, every id is shared
    (w_m = 1), so GOLD's first loss is GKD's JSD(beta)."""
    settings = {"tokenizer": "char", "block_size": 32, "prompt_tokens": 8, "batch_size": 8, "train_limit": 16, "eval_limit": 8}
    paired = PairedShakespeareData(teacher_tokenizer="char", **settings)
    paired.setup()
    vocab = len(paired.tokenizer)  # logits exactly the tokenizer's ids, so every column is shared
    student, teacher = paired.split("train")[0], paired.paired["train"]["teacher_input_ids"]
    assert torch.equal(student, teacher)  # the teacher reads the very same ids
    completion = student[0, 8:].tolist()
    s_spans, t_ids, t_spans = paired.pair.carry([completion], "student")
    assert t_ids[0] == completion and alignment_groups(s_spans[0], t_spans[0]) == ([[i] for i in range(24)],) * 2
    metrics = {}
    for name, method, data in (("gkd", GKD, ShakespeareData(**settings)), ("gold", GOLD, paired)):
        options = {"skip_eos": False} if name == "gold" else {}
        m = method(lm(vocab, 0), Teacher(lm(vocab, 1, layers=2)), lmbda=0.0, beta=0.3, **options)
        metrics[name] = {k: float(v) for k, v in fit(m, data, steps=1).callback_metrics.items()}
    assert metrics["gold"]["train/groups_per_token_step"] == 1.0 and metrics["gkd"]["train/loss_step"] > 1e-3
    assert metrics["gold"]["train/loss_step"] == pytest.approx(metrics["gkd"]["train/loss_step"], abs=1e-6)


@pytest.mark.parametrize(("method", "options"), [(ULD, {}), (GOLD, {"lmbda": 0.5}), (GOLD, {"lmbda": 0.0, "seq_kd": True}),
                                                 (GOLD, {"lmbda": 1.0, "hybrid": False, "crossentropy_weight": 0.5})])
def test_a_tiny_fit_trains_the_student_only(paired_files, tokenizers, method, options) -> None:
    data = paired_lm_data(paired_files)
    student, teacher = lm(len(tokenizers[0]), 0), Teacher(lm(len(tokenizers[1]) + 10, 1, positions=128))
    before_s, before_t = state(student), state(teacher.model)
    torch.manual_seed(0)
    fit(method(student, teacher, **options), data, steps=3)
    assert any(not torch.equal(before_s[k], v) for k, v in student.state_dict().items())
    assert all(torch.equal(before_t[k], v) for k, v in teacher.model.state_dict().items())


def test_gold_seq_kd_without_distillation_is_ce_on_the_teachers_carried_samples(paired_files, tokenizers, monkeypatch) -> None:
    """``lmbda 0, seq_kd, distillation_weight 0, crossentropy_weight 1`` (the cross-tokenizer seq-kd
    row of benchmarks/lm_cross_tokenizer.py): the step's gradient is exactly that of the student's
    CE on the teacher's samples carried to its tokens, and those read as the teacher's text."""
    import copy

    import lightning as L

    from anydistill.lm.paired import logits_of
    from anydistill.lm.token_losses import token_ce_loss

    data = paired_lm_data(paired_files)
    student, teacher = lm(len(tokenizers[0]), 0), Teacher(lm(len(tokenizers[1]) + 10, 1, positions=128))
    initial, seen, grads = copy.deepcopy(student), {}, {}
    original = GOLD.sides

    def sides(self, batch):
        found = original(self, batch)
        seen.update(zip(("student", "teacher", "source"), found))
        return found

    class Gradients(L.Callback):
        def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
            grads.update({name: p.grad.clone() for name, p in module.student.named_parameters()})

    monkeypatch.setattr(GOLD, "sides", sides)
    torch.manual_seed(0)
    method = GOLD(student, teacher, lmbda=0.0, seq_kd=True, distillation_weight=0.0, crossentropy_weight=1.0, temperature=1.0, top_p=1.0)
    fit(method, data, steps=1, callbacks=[Gradients()])
    side, other = seen["student"], seen["teacher"]
    assert seen["source"] == "teacher"
    for b in range(side.ids.shape[0]):  # the student's completion is the teacher's sample, as text (cut to the student's block)
        theirs = text_bytes(other.ids[b][other.region[b]].tolist(), data.pair.teacher_own)  # ids past the tokenizer read as nothing
        mine = text_bytes(side.ids[b][side.region[b]].tolist(), data.pair.student_own)
        assert theirs.startswith(mine) and len(mine) > 0
    ce_sum, count = token_ce_loss(logits_of(initial, side.ids, side.attention), side.ids[:, 1:], side.counts[:, 1:])
    (ce_sum / count).backward()
    for name, parameter in initial.named_parameters():
        torch.testing.assert_close(grads[name], parameter.grad, rtol=1e-5, atol=1e-7)


def test_bad_inputs_are_one_line_each(paired_files, tokenizers) -> None:
    data = paired_lm_data(paired_files)
    data.setup()
    teacher = lm(len(tokenizers[1]), 1, positions=16)  # too few positions for the teacher's rows
    problems = GOLD(lm(len(tokenizers[0]), 0), None).data_problems(data, teacher)
    assert len(problems) == 1 and "teacher has 16 positions" in problems[0] and "teacher_block_size" in problems[0]
    plain = ShakespeareData(block_size=32, train_limit=8, eval_limit=4)
    plain.setup()
    [problem] = ULD(lm(96, 0), None).data_problems(plain, lm(96, 1))
    assert "shakespeare-paired" in problem
    problems = GOLD(lm(len(tokenizers[0]), 0), None, matched_weight=0.5).recipe_problems(teacher_shapes={}, student_shapes={}, max_epochs=1)
    assert len(problems) == 1 and "given together" in problems[0]


def test_hybrid_gold_without_a_shared_vocabulary_names_uld(paired_files, monkeypatch) -> None:
    data = paired_lm_data(paired_files)
    data.setup()
    method = GOLD(lm(len(data.tokenizer), 0), None, vocab_match="string")
    empty = SimpleNamespace(size=0)
    monkeypatch.setattr(GOLD, "shared_vocabulary", lambda self, data, teacher: empty)
    [problem] = method.data_problems(data, lm(len(data.teacher_tokenizer), 1, positions=128))
    assert "share none" in problem and "'uld'" in problem and "hybrid: false" in problem
    with pytest.raises(RecipeError):
        fit(method.__class__(lm(len(data.tokenizer), 0), Teacher(lm(len(data.teacher_tokenizer), 1, positions=128))), data, steps=1)


# -- recipes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["uld", "gold"])
def test_recipe_validates_and_one_step_trains_the_student(name) -> None:
    import lightning as L

    from anydistill.catalog import build_models, load_recipe

    recipe = load_recipe(f"shakespeare/{name}", ["data.train_limit=8", "data.batch_size=4", "data.eval_limit=4"])
    component = recipe.methods[name]
    L.seed_everything(0, verbose=False)
    student, teacher_model = build_models(recipe.data, recipe.student, recipe.teacher)
    method = component.target(student=student, teacher=Teacher(teacher_model), optimizer=recipe.optimizer, **component.kwargs)
    before = state(student)
    fit(method, recipe.data.target(**recipe.data.kwargs), steps=1)
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_check_vocab_names_the_cross_tokenizer_methods(tokenizers) -> None:
    from anydistill.lm.vocab import check_vocab

    student_tok = tokenizers[0]
    with pytest.raises(ValueError, match="'uld' or 'gold'"):  # a character teacher on the student's BPE ids
        check_vocab(lm(len(student_tok), 0), lm(len(tokenizers[1]), 1), student_tok)


def test_a_paired_run_scores_the_teacher_on_its_own_tokens(tmp_path) -> None:
    """Through the runner: the teacher's row is scored on the teacher's tokens, the student's on its
    own, no id-by-id KL is attempted, and nll_per_char puts both on the characters of the same text."""
    from anydistill.catalog import load_recipe
    from anydistill.core.rundir import RunDir
    from anydistill.runner import run_recipe

    recipe = load_recipe("shakespeare/uld", ["data.train_limit=8", "data.batch_size=4", "data.eval_limit=4", "trainer.max_epochs=1",
                                             "evaluation.generate_tokens=4"])
    metrics = run_recipe(recipe, RunDir.create(tmp_path / "runs", "paired"))
    teacher, student = metrics["teacher"], metrics["uld"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    exported = tmp_path / "runs" / "paired" / "checkpoints" / "uld"
    model, tokenizer = AutoModelForCausalLM.from_pretrained(exported), AutoTokenizer.from_pretrained(exported)
    assert model.config.vocab_size == 4096 and len(tokenizer) > 96  # the student's own BPE, not the char teacher's
    assert "kl_teacher" not in student
    for row in (teacher, student):
        assert row["nll_per_char"] > 0 and row["nll"] > 0
    # A BPE token covers several characters: its NLL per token exceeds its NLL per character; a
    # character teacher's two figures are equal but for the <eos> tokens (no characters).
    assert student["nll"] > student["nll_per_char"]
    assert teacher["nll_per_char"] == pytest.approx(teacher["nll"], rel=0.1)


def test_logits_past_the_tokenizer_are_never_sampled_nor_distilled(tokenizers) -> None:
    """A char model with 96 logits for fewer ids: the padded rows stand for no text, so sampling
    never draws them and the cross-tokenizer losses leave them out (`paired.text_widths`)."""
    from types import SimpleNamespace

    from anydistill.lm.paired import sample, text_widths

    student_tok, teacher_tok = tokenizers
    model = lm(96, 0)
    with torch.no_grad():  # make the padded rows the most likely by far
        model.get_output_embeddings().weight[len(teacher_tok):] = 5.0 * model.transformer.wte.weight[: 96 - len(teacher_tok)].sign()
    prompts = torch.full((4, 3), 5, dtype=torch.long)
    rows = sample(model, prompts, torch.ones_like(prompts), 12, temperature=1.0, top_p=1.0, eos_token_id=1, pad_token_id=0,
                  text_width=len(teacher_tok))
    assert all(i < len(teacher_tok) for row in rows for i in row)
    data = SimpleNamespace(tokenizer=student_tok, teacher_tokenizer=teacher_tok)
    assert text_widths(lm(len(student_tok), 1), model, data) == (len(student_tok), len(teacher_tok))
