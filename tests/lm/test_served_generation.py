"""A served teacher generates (`ServedTeacher.generate` over ``/v1/completions``) exactly as the
in-process teacher does, greedy, beam and seeded sampling, and seq-kd trains from it as from the
in-process teacher; answers without token ids and unsupported sampling options are refused in one line."""

from __future__ import annotations

import httpx
import pytest
import torch

from anydistill.core.recipe import OptimizerSpec
from anydistill.lm.common import generate
from anydistill.lm.methods.seq_kd import SeqKD
from anydistill.lm.served.client import ServedTeacher, ServerError
from anydistill.lm.served.protocol import ProtocolError, parse_generations
from anydistill.lm.served.server import TeacherService, running
from lm.lm_helpers import fit, state, tiny_data, tiny_lm, tiny_teacher

OPTIMIZER = OptimizerSpec(name="adamw", lr=3e-3, schedule="constant")
SPECIAL = {"eos_token_id": 1, "pad_token_id": 0}


@pytest.fixture(scope="module")
def teacher():
    return tiny_teacher()


@pytest.fixture(scope="module")
def served(teacher):
    with running(TeacherService(teacher, name="tiny")) as address:
        client = ServedTeacher(address)
        client.connect()
        yield client
        client.close()


@pytest.fixture(scope="module")
def prompts():
    data = tiny_data()
    data.setup()
    return data.split("train")[0][:6, :8]


@pytest.mark.parametrize("beams", [1, 3])
def test_greedy_and_beam_search_equal_the_in_process_teacher(teacher, served, prompts, beams) -> None:
    ours = served.generate(prompts, 12, do_sample=False, num_beams=beams, **SPECIAL)
    local = generate(teacher.model, prompts, 12, do_sample=False, num_beams=beams, **SPECIAL)
    assert torch.equal(ours[0], local[0]) and torch.equal(ours[1], local[1])


def test_sampling_is_seeded_by_the_runs_rng(teacher, served, prompts) -> None:
    torch.manual_seed(5)
    first = served.generate(prompts, 12, do_sample=True, temperature=0.9, **SPECIAL)
    torch.manual_seed(5)
    seed = int(torch.randint(0, 2**31 - 1, ()))
    torch.manual_seed(5)
    again = served.generate(prompts, 12, do_sample=True, temperature=0.9, **SPECIAL)
    torch.manual_seed(seed)
    local = generate(teacher.model, prompts, 12, do_sample=True, temperature=0.9, **SPECIAL)
    assert torch.equal(first[0], again[0]) and torch.equal(first[0], local[0]) and torch.equal(first[1], local[1])


@pytest.mark.parametrize("decoding", ["greedy", "beam"])
def test_seq_kd_from_a_served_teacher_trains_as_in_process(teacher, served, decoding, tmp_path) -> None:
    trained = {}
    for name, source in (("served", served), ("local", teacher)):
        method = SeqKD(tiny_lm(0), source, OPTIMIZER, decoding=decoding, num_beams=2, cache_dir=str(tmp_path / name))
        fit(method, tiny_data(), steps=3)
        trained[name] = state(method.student)
    assert all(torch.equal(trained["served"][k], v) for k, v in trained["local"].items())


def test_a_vllm_answer_is_read_and_one_without_token_ids_refused() -> None:
    # vLLM's /v1/completions answer with return_token_ids (0.11): token_ids per choice, index i * n + j.
    answer = {"id": "cmpl-1", "object": "text_completion", "model": "m", "choices": [
        {"index": 0, "text": " a", "logprobs": None, "finish_reason": "length", "stop_reason": None, "token_ids": [5, 6],
         "prompt_token_ids": [2, 3]},
        {"index": 1, "text": " b", "logprobs": None, "finish_reason": "stop", "stop_reason": None, "token_ids": [7, 1],
         "prompt_token_ids": [2, 4]}]}
    assert parse_generations(answer, prompts=2, beams=1, max_tokens=2) == [[5, 6], [7, 1]]
    del answer["choices"][0]["token_ids"]
    with pytest.raises(ProtocolError, match="return_token_ids"):
        parse_generations(answer, prompts=2, beams=1, max_tokens=2)


@pytest.mark.parametrize("extra,fragment", [({"n": 2}, "'n' > 1 is served with 'use_beam_search' only"),
                                            ({"top_p": 0.9}, "remove top_p"), ({"max_tokens": 0}, "'max_tokens' must be a positive integer")])
def test_unsupported_generation_requests_are_refused(served, extra, fragment) -> None:
    body = {"model": "tiny", "prompt": [[2, 3, 4]], "max_tokens": 4, "temperature": 0.5, **extra}
    response = httpx.post(f"{served.url}/v1/completions", json=body)
    assert response.status_code == 400 and fragment in response.json()["error"]["message"]


def test_a_server_that_cannot_generate_stops_the_run_in_one_line(served, prompts) -> None:
    with pytest.raises(ServerError, match=r"teacher server .* refused POST /v1/completions: .*token ids must lie in"):
        served.generate(prompts + 1000, 4, do_sample=False, **SPECIAL)
