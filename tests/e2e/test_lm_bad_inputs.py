"""Issue 25's bad LM inputs from the command line: one `error:` line naming the fix, exit 2, nothing written."""

from __future__ import annotations

import pytest

from e2e.helpers import anydistill

MODEL = "{name: gpt2-lm, vocab_size: %d, n_layer: 1, n_embd: 32, n_head: 2, n_positions: 32}"


def recipe(method: str, *, data: str = "{name: shakespeare, block_size: 32, prompt_tokens: 8, train_limit: 16, eval_limit: 4}",
           teacher_vocab: int = 96, student_vocab: int = 96) -> str:
    return (f"name: bad-lm\ndata: {data}\nteacher: {MODEL % teacher_vocab}\nstudent: {MODEL % student_vocab}\n"
            f"methods:\n  {method}\n")


CASES = {
    "lm-kd across tokenizers": (
        recipe("lm-kd: {}", data="{name: shakespeare, tokenizer: bpe, bpe_vocab_size: 300, block_size: 32, train_limit: 16}",
               student_vocab=300), ["'uld' or 'gold'"]),
    "eps <= 0": (recipe("lm-kd: {topk: adaptive, kl_budget: 0}"), ["kl_budget"]),
    "k_min > k_max": (recipe("lm-kd: {topk: adaptive, k_min: 9, k_max: 4}"), ["'k_min'", "k_max=4"]),
    "both caches": (recipe("lm-kd: {topk: 8, hidden_cache: true}"), ["not both"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_lm_input_is_one_line_and_writes_nothing(case: str, tmp_path) -> None:
    text, expected = CASES[case]
    (tmp_path / "bad.yaml").write_text(text)
    result = anydistill("run", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr[-2000:]
    for fragment in expected:
        assert fragment in lines[0], lines[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / ".anydistill-cache").exists()
