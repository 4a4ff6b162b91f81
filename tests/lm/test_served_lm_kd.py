"""lm-kd trains from a served teacher as from the in-process one (lm.served.use), the next batch's
request in flight while the student steps."""

from __future__ import annotations

import pytest
import torch

from anydistill.core.recipe import OptimizerSpec
from anydistill.lm.methods.gkd import GKD
from anydistill.lm.methods.kd import LMKD
from anydistill.lm.served.client import ServedTeacher
from anydistill.lm.served.server import TeacherService, running
from lm.lm_helpers import fit, state, tiny_data, tiny_lm, tiny_teacher

OPTIMIZER = OptimizerSpec(name="adamw", lr=3e-3, schedule="constant")


@pytest.fixture(scope="module")
def teacher():
    return tiny_teacher()


@pytest.fixture(scope="module")
def url(teacher):
    with running(TeacherService(teacher, name="tiny")) as address:
        yield address


def trained(teacher, steps: int = 4, **params) -> dict[str, torch.Tensor]:
    method = LMKD(tiny_lm(0), teacher, OPTIMIZER, divergence="fkl", alpha=0.5, **params)
    fit(method, tiny_data(), steps=steps)
    return state(method.student)


def test_served_hidden_states_train_exactly_as_the_in_process_teacher(teacher, url) -> None:
    served = ServedTeacher(url, signal="hidden", dtype="float32")
    served.connect()
    ours = trained(served, fused_head=True)
    local = trained(teacher, fused_head=True)
    assert all(torch.equal(ours[k], local[k]) for k in local)
    assert served.prefetch_hits >= 3  # every step after the first found its rows already asked for


@pytest.mark.parametrize("api", ["binary", "openai"])
def test_served_top_k_trains_as_the_top_k_cache(teacher, url, api, tmp_path) -> None:
    served = ServedTeacher(url, api=api, topk=8, dtype="float32", vocab_size=96)
    served.connect()
    ours = trained(served)
    cached = trained(teacher, topk=8, cache_dtype="float32", cache_dir=str(tmp_path))
    for name, value in cached.items():
        torch.testing.assert_close(ours[name], value, rtol=1e-4, atol=1e-5)  # Adam magnifies the tail's rounding on near-zero weights


@pytest.mark.parametrize("lmbda", [0.0, 0.5])
def test_gkd_from_served_hidden_states_trains_exactly_as_in_process(teacher, url, lmbda) -> None:
    """Off-policy batches come prefetched (lmbda 0), the student's samples are scored by the server when drawn."""
    served = ServedTeacher(url, signal="hidden", dtype="float32")
    served.connect()
    weights = []
    for source in (served, teacher):
        method = GKD(tiny_lm(0), source, OPTIMIZER, lmbda=lmbda, fused_head=True)
        fit(method, tiny_data(), steps=4)
        weights.append(state(method.student))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])
    assert (served.prefetch_hits >= 3) == (lmbda == 0)


def test_each_request_is_in_flight_while_the_previous_step_runs(teacher, url) -> None:
    import lightning as L

    served = ServedTeacher(url, signal="hidden", dtype="float32")
    served.connect()
    events: list[str] = []
    prefetch = served.prefetch
    served.prefetch = lambda key, *args: (events.append("ask"), prefetch(key, *args))

    class StepEnds(L.Callback):
        def on_train_batch_end(self, *args) -> None:
            events.append("end")

    fit(LMKD(tiny_lm(0), served, OPTIMIZER, fused_head=True), tiny_data(), steps=4, callbacks=[StepEnds()])
    # Batch n + 1 is asked for before step n ends: ask 0, ask 1, end 0, ask 2, end 1, ...
    assert events[:5] == ["ask", "ask", "end", "ask", "end"], events
    assert served.prefetch_hits == events.count("end")


def test_served_fp16_hidden_states_train_on_the_fused_and_unfused_paths(url) -> None:
    """The default fp16 rows arrive in the head's dtype (fp32 here), as the hidden cache's do."""
    for fused in (True, False):
        served = ServedTeacher(url, signal="hidden")
        served.connect()
        assert all(torch.isfinite(v).all() for v in trained(served, fused_head=fused).values())
