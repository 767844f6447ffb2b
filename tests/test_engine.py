"""The fast engine against transformers itself: same logits, same greedy text, batch-independent sampling."""
import numpy as np
import pytest
import torch

from workbench.engine import LlamaEngine, Request, sample_tokens, supports, uniforms
from workbench.sampling import encode_prompt, stop_token_ids

PROMPTS = ["What is 12+7?", "Write a haiku about the sea.", "Name three colors.", "Hi"]


def _ids(loaded, prompts=PROMPTS):
    return [encode_prompt(loaded.tokenizer, p, True, None) for p in prompts]


def _hf_greedy(loaded, ids, n):
    stops = stop_token_ids(loaded.tokenizer, loaded.model)
    out = loaded.model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                                pad_token_id=loaded.tokenizer.pad_token_id)[0, len(ids):].tolist()
    cut = next((i for i, t in enumerate(out) if t in stops), None)
    return out[:cut] if cut is not None else out


def test_supports_llama_only(tiny):
    assert supports(tiny.model)


@pytest.mark.parametrize("which", ["tiny", "real"])
def test_prefill_logits_match_transformers(which, request):
    loaded = request.getfixturevalue(which)
    engine = LlamaEngine(loaded.model)
    for ids in _ids(loaded):
        with torch.no_grad():
            reference = loaded.model(torch.tensor([ids])).logits[0, -1]
        mine = engine.logits(engine.prefill(torch.tensor([ids]), torch.tensor([len(ids)])))[0]
        assert torch.allclose(mine, reference, atol=2e-4, rtol=1e-4), (mine - reference).abs().max()


@pytest.mark.parametrize("which", ["tiny", "real"])
def test_greedy_text_matches_transformers(which, request):
    loaded = request.getfixturevalue(which)
    engine = LlamaEngine(loaded.model)
    ids = _ids(loaded)
    n = 24 if which == "tiny" else 12  # the real model's HF reference runs at batch 1: keep it short
    stops = stop_token_ids(loaded.tokenizer, loaded.model)
    # 2 slots for 4 requests: exercises refilling a slot mid-run and shrinking the cache at the end
    finished = {f.key: f for f in engine.run([Request(k, i, 1, n) for k, i in enumerate(ids)], stops,
                                             temperature=0, slots=2)}
    assert sorted(finished) == [0, 1, 2, 3]
    for key, prompt_ids in enumerate(ids):
        assert finished[key].token_ids == _hf_greedy(loaded, prompt_ids, n)


def test_sampling_does_not_depend_on_batch_neighbours(tiny):
    engine = LlamaEngine(tiny.model)
    ids = _ids(tiny)
    stops = stop_token_ids(tiny.tokenizer, tiny.model)
    together = {f.key: f.token_ids for f in engine.run(
        [Request(k, i, 100 + k, 20) for k, i in enumerate(ids)], stops, temperature=1.0, top_k=50, top_p=0.9, slots=4)}
    alone = [f.token_ids for f in engine.run([Request(2, ids[2], 102, 20)], stops, temperature=1.0, top_k=50,
                                             top_p=0.9, slots=1)]
    assert alone[0] == together[2]
    other_seed = [f.token_ids for f in engine.run([Request(2, ids[2], 999, 20)], stops, temperature=1.0,
                                                  top_k=50, top_p=0.9, slots=1)]
    assert other_seed[0] != together[2]


def test_int8_close_to_fp32(real):
    fp32, int8 = LlamaEngine(real.model), LlamaEngine(real.model, quantize="int8")
    for ids in _ids(real):
        a = fp32.logits(fp32.prefill(torch.tensor([ids]), torch.tensor([len(ids)])))[0]
        b = int8.logits(int8.prefill(torch.tensor([ids]), torch.tensor([len(ids)])))[0]
        pa, pb = torch.softmax(a, -1), torch.softmax(b, -1)
        total_variation = 0.5 * (pa - pb).abs().sum().item()
        assert total_variation < 0.25, total_variation
        assert a.topk(5).indices[0] in b.topk(5).indices


def test_uniforms_deterministic_and_in_range():
    seeds, steps = np.arange(1000, dtype=np.uint64), np.arange(1000)
    u = uniforms(seeds, steps)
    assert np.array_equal(u, uniforms(seeds, steps))
    assert (u >= 0).all() and (u < 1).all()
    assert 0.45 < u.mean() < 0.55 and len(np.unique(u)) == 1000


def test_sample_tokens_respects_top_k_and_top_p():
    torch.manual_seed(0)
    logits = torch.randn(200, 1000)
    u = uniforms(np.arange(200, dtype=np.uint64), np.zeros(200))
    picked = sample_tokens(logits, u, temperature=1.0, top_k=5, top_p=1.0)
    top5 = logits.topk(5).indices
    assert all(picked[i] in top5[i] for i in range(200))
    # top_p tiny: only the argmax survives
    assert torch.equal(sample_tokens(logits, u, 1.0, 0, 1e-6), logits.argmax(-1))
    assert torch.equal(sample_tokens(logits, u, 0.0, 50, 0.9), logits.argmax(-1))
    # plain sampling follows the softmax: the empirical frequency of token 0 matches its probability
    row = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(20000, 1)
    draws = sample_tokens(row, uniforms(np.arange(20000, dtype=np.uint64), np.zeros(20000)), 1.0, 0, 1.0)
    expected = torch.softmax(row[0], -1)[0].item()
    assert abs((draws == 0).float().mean().item() - expected) < 0.015


def test_shared_prefix_gives_the_same_tokens(tiny):
    engine = LlamaEngine(tiny.model)
    ids = _ids(tiny)
    stops = stop_token_ids(tiny.tokenizer, tiny.model)
    requests = [Request(k, i, 7 + k, 16) for k, i in enumerate(ids)]
    shared = {f.key: f.token_ids for f in engine.run(requests, stops, temperature=0.7, slots=3)}
    unshared = {f.key: f.token_ids for f in engine.run(requests, stops, temperature=0.7, slots=3,
                                                       min_shared_prefix=10**9)}
    assert shared == unshared
    # and the all-position forward agrees with the last-position one
    tokens = torch.tensor([ids[0]])
    lengths = torch.tensor([len(ids[0])])
    every = engine.prefill(tokens, lengths, all_positions=True)
    assert torch.allclose(every[:, -1], engine.prefill(tokens, lengths), atol=1e-5)
    with torch.no_grad():
        reference = tiny.model(tokens).logits[0]
    assert torch.allclose(engine.logits(every)[0], reference, atol=2e-4, rtol=1e-4)
