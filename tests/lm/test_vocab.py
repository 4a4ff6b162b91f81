"""The vocabulary check made when an LM method starts (`lm.vocab.check_vocab`)."""

from __future__ import annotations

import pytest

from anydistill.models.causal_lm import gpt2_lm, llama_lm
from anydistill.data.tokenizers import char_tokenizer

TOKENIZER = char_tokenizer("abcdefghij \n")  # 2 specials + 12 characters = 14 ids


def gpt2(vocab: int, **kwargs):
    return gpt2_lm(vocab_size=vocab, n_layer=1, n_embd=16, n_head=2, n_positions=16, **kwargs)


def test_identical_vocabularies_pass() -> None:
    from anydistill.lm.vocab import check_vocab

    assert check_vocab(gpt2(32), gpt2(32), TOKENIZER) == 32
    # Different families with the same width and tokenizer are fine too: the ids mean the same.
    assert check_vocab(gpt2(32), llama_lm(vocab_size=32, n_layer=1, n_embd=16, n_head=2, n_positions=16), TOKENIZER) == 32


def test_same_family_padding_is_sliced_to_the_shared_prefix_with_a_warning() -> None:
    from anydistill.lm.vocab import check_vocab

    with pytest.warns(UserWarning, match="shared first 24 logits"):
        assert check_vocab(gpt2(24), gpt2(32), TOKENIZER) == 24
    with pytest.warns(UserWarning, match="differ only by padding"):
        assert check_vocab(gpt2(40), gpt2(24), TOKENIZER) == 24


def test_other_family_with_another_width_is_refused_naming_the_options() -> None:
    from anydistill.lm.vocab import check_vocab

    llama = llama_lm(vocab_size=40, n_layer=1, n_embd=16, n_head=2, n_positions=16)
    with pytest.raises(ValueError, match="give both the same vocab_size and tokenizer.*cross-tokenizer") as error:
        check_vocab(gpt2(32), llama, TOKENIZER)
    assert "\n" not in str(error.value)


def test_model_narrower_than_the_tokenizer_is_refused() -> None:
    from anydistill.lm.vocab import check_vocab

    with pytest.raises(ValueError, match=r"set teacher.vocab_size >= 14"):
        check_vocab(gpt2(32), gpt2(8), TOKENIZER)
    with pytest.raises(ValueError, match=r"set student.vocab_size >= 14"):
        check_vocab(gpt2(8), None, TOKENIZER)


def test_special_ids_of_another_tokenizer_are_refused() -> None:
    from anydistill.lm.vocab import check_vocab

    model = gpt2(32)
    model.config.eos_token_id = 5
    with pytest.raises(ValueError, match="config.eos_token_id is 5 but the tokenizer's is 1"):
        check_vocab(gpt2(32), model, TOKENIZER)


def test_a_recipe_with_a_too_small_vocabulary_fails_when_the_method_starts(tmp_path) -> None:
    from anydistill.core.errors import RecipeError
    from anydistill.lm.methods.sft import LMSFT
    from lm.lm_helpers import fit, tiny_data, tiny_lm

    method = LMSFT(tiny_lm(0, vocab=40))
    with pytest.raises(RecipeError, match=r"student.vocab_size >= 86"):
        fit(method, tiny_data(), steps=1)


def test_validate_reports_vocabulary_and_length_problems_once_before_training() -> None:
    """`anydistill validate` sets up the text data and checks every LM method's models against it;
    a problem shared by several methods is one line naming them all."""
    from anydistill.catalog import load_recipe
    from anydistill.core.errors import RecipeError

    with pytest.raises(RecipeError) as error:
        load_recipe("shakespeare/tiny", ["student.n_positions=16"])
    lines = [line for line in error.value.problems if "positions" in line]
    assert len(lines) == 1 and "methods.lm-sft, lm-kd" in lines[0] and "student.n_positions >= 64" in lines[0]
    with pytest.raises(RecipeError, match=r"'topk' parameter of lm-kd must be <= the vocabulary \(96\)"):
        load_recipe("shakespeare/tiny", ["methods.lm-kd-top32.topk=200"])
