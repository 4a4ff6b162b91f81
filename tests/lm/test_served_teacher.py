"""A served teacher on loopback gives the in-process teacher's signals, over both APIs, and a server
that is safe to leave running (lm.served)."""

from __future__ import annotations

import httpx
import pytest
import torch
from lm.lm_helpers import tiny_teacher

from anydistill.lm.common import teacher_logits
from anydistill.lm.head import lm_head, teacher_hidden
from anydistill.lm.served.client import ServedTeacher, ServerError
from anydistill.lm.served.protocol import COMPLETIONS_PATH, FINGERPRINT_HEADER, SIGNALS_PATH, parse_prompt_logprobs
from anydistill.lm.served.server import TeacherService, running
from anydistill.lm.topk import densify, sparsify

VOCAB = 96


@pytest.fixture(scope="module")
def teacher():
    return tiny_teacher()


@pytest.fixture(scope="module")
def url(teacher):
    with running(TeacherService(teacher, name="tiny", max_tokens=4096)) as address:
        yield address


def batch(seed: int = 0, rows: int = 3, width: int = 12):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (rows, width), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, -4:] = 0  # right padding
    return ids, mask


def kl(p_logits: torch.Tensor, q_logprobs: torch.Tensor) -> torch.Tensor:
    p = p_logits.log_softmax(-1)
    return (p.exp() * (p - q_logprobs)).sum(-1)


@pytest.mark.parametrize("api", ["binary", "openai"])
def test_served_topk_equals_the_in_process_teacher(teacher, url, api) -> None:
    ids, mask = batch()
    client = ServedTeacher(url, api=api, topk=8, dtype="float32", vocab_size=VOCAB)
    client.connect()
    assert client.fingerprint() == teacher.fingerprint()  # our server says it on both APIs
    served = client.rows(ids, mask)
    local = sparsify(teacher_logits(teacher, ids, mask, VOCAB).reshape(-1, VOCAB), 8, True)
    rows = mask[:, 1:].reshape(-1).bool()  # rows whose next token is attended: what a loss can read
    torch.testing.assert_close(served.logprobs[rows], local.logprobs[rows], rtol=0, atol=1e-6)
    assert torch.equal(served.indices[rows], local.indices[rows])
    # The tail: exact on ours; from the top-k's mass over the OpenAI API (vLLM sends no tail).
    full = teacher_logits(teacher, ids, mask, VOCAB).reshape(-1, VOCAB)[rows]
    torch.testing.assert_close(kl(full, densify(served, VOCAB)[rows]), kl(full, densify(local, VOCAB)[rows]), rtol=0, atol=1e-6)
    client.close()


def test_served_adaptive_and_hidden_equal_the_in_process_teacher(teacher, url) -> None:
    ids, mask = batch(1)
    adaptive = ServedTeacher(url, signal="adaptive", kl_budget=1e-3)
    adaptive.connect()
    sparse = adaptive.rows(ids, mask)
    full = teacher_logits(teacher, ids, mask, VOCAB).reshape(-1, VOCAB)
    assert float(kl(full, densify(sparse, VOCAB)).max()) <= 1e-3 + 1e-6
    hidden = ServedTeacher(url, signal="hidden", dtype="float32")
    hidden.connect()
    torch.testing.assert_close(hidden.rows(ids, mask), teacher_hidden(teacher.model, ids, mask), rtol=0, atol=1e-6)
    head = lm_head(teacher.model, VOCAB)
    assert torch.equal(hidden.head().weight, head.weight)


def test_bad_requests_get_one_line_4xx_and_the_server_keeps_serving(url) -> None:
    with httpx.Client(base_url=url) as http:
        malformed = http.post(SIGNALS_PATH, content=b"{not json")
        oversized = http.post(SIGNALS_PATH, json={"signal": "topk", "input_ids": [[3] * 64] * 100, "attention_mask": [[1] * 64] * 100})
        unknown = http.post(SIGNALS_PATH, json={"model": "other", "signal": "topk", "input_ids": [[3, 4]], "attention_mask": [[1, 1]]})
        good = http.post(SIGNALS_PATH, json={"signal": "topk", "k": 4, "input_ids": [[3, 4, 5]], "attention_mask": [[1, 1, 1]]})
    assert (malformed.status_code, oversized.status_code, unknown.status_code) == (400, 413, 404)
    for answer in (malformed, oversized, unknown):
        message = answer.json()["error"]["message"]
        assert "\n" not in message and message
    assert "smaller batches" in oversized.json()["error"]["message"]
    assert good.status_code == 200 and good.headers[FINGERPRINT_HEADER]


def test_a_bearer_token_is_required_when_set(teacher, tmp_path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    (tmp_path / "wrong").write_text("guess")
    with running(TeacherService(teacher, name="tiny"), token="s3cret") as address:
        for client in (ServedTeacher(address), ServedTeacher(address, token_file=str(tmp_path / "wrong"))):
            with pytest.raises(ServerError, match="refused GET /v1/models: HTTP 401: missing or wrong bearer token"):
                client.connect()
        assert ServedTeacher(address, token_file=str(tmp_path / "token")).connect()["id"] == "tiny"


def test_another_checkpoint_and_an_unreachable_server_stop_with_one_line(url) -> None:
    client = ServedTeacher(url)
    client.connect()
    client.served_fingerprint = "0" * 64  # as if the run had started against another checkpoint
    with pytest.raises(ServerError, match="now serves another checkpoint"):
        client.rows(*batch())
    with pytest.raises(ServerError, match=r"http://127.0.0.1:9 did not answer GET /v1/models after 2 tries .*start it"):
        ServedTeacher("http://127.0.0.1:9", retries=1, backoff=0.01).connect()


# vLLM 0.33's answer to {"prompt": [151644, 872, 198, 9707], "max_tokens": 1, "prompt_logprobs": 2}, written from
# its API reference and source (vllm/entrypoints/openai/completion/protocol.py): entry 0 null; the actual token
# first, with its own rank, when it is not in the top-k (k + 1 keys); -inf sent as -9999.0. Ids are illustrative.
VLLM_CHOICE = {
    "index": 0, "text": ",", "logprobs": None, "finish_reason": "length", "stop_reason": None, "token_ids": None,
    "prompt_logprobs": [
        None,
        {"872": {"logprob": -0.05, "rank": 1, "decoded_token": "user"}, "1474": {"logprob": -3.2, "rank": 2, "decoded_token": "system"}},
        {"198": {"logprob": -4.1, "rank": 5, "decoded_token": "\n"}, "220": {"logprob": -0.4, "rank": 1, "decoded_token": " "},
         "271": {"logprob": -1.6, "rank": 2, "decoded_token": "\n\n"}},
        {"9707": {"logprob": -1.2, "rank": 2, "decoded_token": "Hello"}, "21927": {"logprob": -0.6, "rank": 1, "decoded_token": "Hi"}},
    ],
    "prompt_token_ids": None,
}
VLLM_TOP_LEVEL = {"id", "object", "created", "model", "choices", "usage"}


def test_vllm_prompt_logprobs_parse_to_the_top_k_in_rank_order() -> None:
    values, ids = parse_prompt_logprobs(VLLM_CHOICE, 2, 4)
    assert ids.tolist() == [[872, 1474], [220, 271], [21927, 9707]]  # the extra actual token (198, rank 5) is dropped
    torch.testing.assert_close(values, torch.tensor([[-0.05, -3.2], [-0.4, -1.6], [-0.6, -1.2]]))


def test_our_completions_answer_has_vllms_shape(teacher, url) -> None:
    prompts = [[5, 17, 40, 3], [9, 9]]
    answer = httpx.post(url + COMPLETIONS_PATH, json={"model": "tiny", "prompt": prompts, "max_tokens": 1, "prompt_logprobs": 2}).json()
    assert VLLM_TOP_LEVEL <= set(answer) and answer["object"] == "text_completion"
    assert [c["index"] for c in answer["choices"]] == [0, 1]
    for choice, prompt in zip(answer["choices"], prompts):
        assert {k for k in VLLM_CHOICE if VLLM_CHOICE[k] is not None} <= set(choice)
        entries = choice["prompt_logprobs"]
        assert entries[0] is None and len(entries) == len(prompt)
        for j, entry in enumerate(entries[1:], start=1):
            assert str(prompt[j]) in entry and len(entry) in (2, 3)  # the actual token always, k + 1 keys when outside the top-k
            assert all(set(v) == {"logprob", "rank", "decoded_token"} for v in entry.values())
            ranks = sorted(v["rank"] for t, v in entry.items() if t != str(prompt[j]) or v["rank"] <= 2)
            assert ranks[:2] == [1, 2]
    assert answer["usage"]["prompt_tokens"] == 6
