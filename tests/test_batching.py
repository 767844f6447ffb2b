"""The continuous-batching scheduler (`workbench.batching`): rows compacted and refilled without changing any
sample, slots chosen from memory, and the int8 quality gate."""
import pytest
import torch

from workbench.batching import MAX_SLOTS, _Rows, default_slots
from workbench.engine import LlamaEngine, Request
from workbench.errors import InputDataError
from workbench.sampling import encode_prompt, stop_token_ids

# prompts of different lengths: admission sorts them, so the run order differs from the request order
PROMPTS = ["Hi", "Write a long poem about the sea, the wind, the harbour and the boats at night.",
           "What is 12+7?", "Name three colors.", "Explain gravity to a child in two sentences.", "Why?"]


def _requests(loaded, budgets):
    ids = [encode_prompt(loaded.tokenizer, p, True, None) for p in PROMPTS]
    return [Request(k, i, 1000 + k, budget) for k, (i, budget) in enumerate(zip(ids, budgets))]


@pytest.mark.parametrize("slots", [2, 3, 6])
def test_compaction_and_refills_change_no_sample(tiny, slots):
    """Rows finish at different steps (budgets 3..29), the last rows move into their places and free rows refill
    from a length-sorted queue: every request's tokens equal its tokens when run alone."""
    engine = LlamaEngine(tiny.model)
    stops = stop_token_ids(tiny.tokenizer, tiny.model)
    requests = _requests(tiny, [29, 3, 17, 8, 23, 11])
    sampling = dict(temperature=1.0, top_k=0, top_p=1.0)
    together = {f.key: (f.token_ids, f.finish_reason) for f in engine.run(requests, stops, slots=slots, **sampling)}
    assert sorted(together) == list(range(len(requests)))
    for request in requests:
        alone = next(iter(engine.run([request], stops, slots=1, **sampling)))
        assert together[request.key] == (alone.token_ids, alone.finish_reason)
        assert len(alone.token_ids) <= request.max_new_tokens


def test_finish_moves_the_last_rows_into_the_holes(tiny):
    engine = LlamaEngine(tiny.model)
    rows = _Rows(engine, 4, 64)
    requests = _requests(tiny, [50] * 4)[:4]
    rows.admit(requests, 0, None, lambda hidden, seeds, steps: torch.zeros(len(seeds), dtype=torch.long))
    before = [layer.clone() for layer in rows.cache]
    positions = rows.positions.clone()
    done = rows.finish([0, 2])                       # rows 1 and 3 stay; 3 moves into 0
    assert [f.key for f in done] == [0, 2] and rows.active == 2
    assert [r.key for r in rows.requests] == [3, 1]
    width = int(positions[3])
    for old, new in zip(before, rows.cache):
        assert torch.equal(new[0, :, :width], old[3, :, :width]) and torch.equal(new[1], old[1])
    assert rows.positions[0] == positions[3] and rows.positions[1] == positions[1]


def test_default_slots_from_budget_cap_and_requests():
    assert default_slots(1000, requests=10_000, max_cache_bytes=64_000) == 64
    assert default_slots(1000, requests=10, max_cache_bytes=64_000) == 10
    assert default_slots(1000, requests=10_000, max_cache_bytes=10**12) == MAX_SLOTS
    assert default_slots(10**9, requests=5, max_cache_bytes=1) == 1     # always at least one row
    assert 1 <= default_slots(10**6, requests=10_000) <= MAX_SLOTS      # from the available memory


def test_int8_gate_refuses_with_the_measured_loss(tiny):
    from workbench.int8_gate import check_int8, int8_quality

    quality = int8_quality(tiny, passages=4, max_tokens=32)
    assert quality["passages"] == 4 and quality["tokens"] > 0 and quality["nll"] > 0
    assert int8_quality(tiny, passages=4, max_tokens=32) == quality  # measured once per model
    with pytest.raises(InputDataError, match="quality gate"):
        check_int8(tiny, max_increase=-1.0)


def test_int8_gate_passes_the_real_model_and_generate_refuses_below_its_loss(real):
    """SmolLM2-135M under int8 loses ~2% held-out likelihood: inside the default +3%, outside a 0.1% limit."""
    import workbench

    from workbench.int8_gate import MAX_NLL_INCREASE, check_int8

    quality = check_int8(real)
    assert 0 < quality["relative_increase"] <= MAX_NLL_INCREASE, quality
    with pytest.raises(InputDataError, match="quality gate"):
        workbench.generate(["Hi"], model=real, quantize="int8", max_new_tokens=4, int8_max_nll_increase=0.001)
    samples = workbench.generate(["Hi"], model=real, quantize="int8", max_new_tokens=4)
    assert samples["quantize"].tolist() == ["int8"]
