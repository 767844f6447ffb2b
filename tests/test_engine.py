"""The fast engine against transformers itself: same logits, same greedy text, batch-independent sampling."""
import numpy as np
import pytest
import torch

from workbench.engine import LlamaEngine, Request, supports
from workbench.sampler import sample_tokens, uniforms
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


@pytest.mark.parametrize("temperature, top_k, top_p, min_p", [
    (1.0, 0, 1.0, 0.1), (0.7, 0, 1.0, 0.3), (1.3, 50, 1.0, 0.05), (1.0, 0, 0.9, 0.2), (0.8, 40, 0.95, 0.5),
    (1.0, 0, 1.0, 0.0), (1.0, 20, 0.8, 0.0)])
def test_filters_keep_the_same_tokens_as_transformers_warpers(temperature, top_k, top_p, min_p):
    """Temperature, top-k, top-p, min-p in transformers' order (generation/utils.py): the same kept set per row."""
    from transformers.generation.logits_process import (LogitsProcessorList, MinPLogitsWarper,
                                                        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    from workbench.sampler import filtered_probs

    torch.manual_seed(1)
    logits = torch.randn(64, 1000) * 3  # peaked enough that min-p keeps between one and a few hundred tokens
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)] + ([TopKLogitsWarper(top_k)] if top_k else [])
                                  + ([TopPLogitsWarper(top_p)] if top_p < 1 else [])
                                  + ([MinPLogitsWarper(min_p)] if min_p else []))
    expected = torch.isfinite(warpers(None, logits.clone()))
    probs, index = filtered_probs(logits, temperature, top_k, top_p, min_p)
    kept = probs > 0
    if index is not None:
        kept = torch.zeros_like(expected).scatter(-1, index, kept)
    assert torch.equal(kept, expected)
    if min_p:
        assert 1 < kept.sum(-1).float().mean() < logits.shape[-1] / 2  # the filter did something
    # sampling draws only kept tokens; min_p 0 leaves sample_tokens' draws as they were
    u = uniforms(np.arange(64, dtype=np.uint64), np.zeros(64))
    picked = sample_tokens(logits, u, temperature, top_k, top_p, min_p)
    assert kept.gather(-1, picked.unsqueeze(-1)).all()
    if not min_p:
        assert torch.equal(picked, sample_tokens(logits, u, temperature, top_k, top_p))


def test_sample_tokens_min_p_near_one_is_greedy_and_batched():
    torch.manual_seed(2)
    logits = torch.randn(300, 500) * 2
    u = uniforms(np.arange(300, dtype=np.uint64), np.zeros(300))
    top2 = logits.topk(2).values
    clear = top2[:, 0] - top2[:, 1] > 1e-3  # rows whose top token is not (nearly) tied: min-p leaves only it
    assert clear.sum() > 290
    assert torch.equal(sample_tokens(logits, u, 1.0, 0, 1.0, min_p=0.9999)[clear], logits.argmax(-1)[clear])
    # one call over the batch equals row by row (no per-row state)
    together = sample_tokens(logits, u, 1.0, 0, 1.0, min_p=0.2)
    alone = torch.cat([sample_tokens(logits[i:i + 1], u[i:i + 1], 1.0, 0, 1.0, min_p=0.2) for i in range(0, 300, 37)])
    assert torch.equal(together[::37], alone)


def test_engine_run_min_p_samples_only_tokens_above_the_threshold(tiny):
    """Every token the engine draws with min_p has probability >= min_p x the top token's (teacher-forced check);
    without min_p some do not."""
    engine = LlamaEngine(tiny.model)
    ids = _ids(tiny)
    stops = stop_token_ids(tiny.tokenizer, tiny.model)
    requests = [Request(k, i, 40 + k, 16) for k, i in enumerate(ids)]

    def worst_ratios(min_p):
        ratios = []
        for f in engine.run(requests, stops, temperature=1.0, top_k=0, top_p=1.0, slots=3, min_p=min_p):
            seq = ids[f.key] + f.token_ids
            hidden = engine.prefill(torch.tensor([seq]), torch.tensor([len(seq)]), all_positions=True)
            probs = torch.softmax(engine.logits(hidden[0, len(ids[f.key]) - 1:len(seq) - 1]), -1)
            chosen = probs.gather(-1, torch.tensor(f.token_ids).unsqueeze(-1)).squeeze(-1)
            ratios.append((chosen / probs.amax(-1)).min().item() if f.token_ids else 1.0)
        return min(ratios)

    assert worst_ratios(0.3) >= 0.3 * (1 - 1e-3)
    assert worst_ratios(0.0) < 0.3


# the scoring passes as they were before they were batched (issue 16): one row at a time, a full log-softmax
@torch.inference_mode()
def _reference_scores(engine, sequences, score_from, batch_size):
    from workbench.engine import right_padded

    out = []
    for start in range(0, len(sequences), batch_size):
        batch, starts = sequences[start:start + batch_size], score_from[start:start + batch_size]
        tokens, lengths = right_padded(batch)
        hidden = engine.prefill(tokens, lengths, all_positions=True)
        for row, (seq, first) in enumerate(zip(batch, starts)):
            first = max(first, 1)
            if first >= len(seq):
                out.append({"logprob": np.zeros(0), "mean_logprob": np.zeros(0)})
                continue
            logp = torch.log_softmax(engine.logits(hidden[row, first - 1:len(seq) - 1]), dim=-1)
            chosen = logp.gather(-1, torch.tensor(seq[first:]).unsqueeze(-1)).squeeze(-1)
            out.append({"logprob": chosen.numpy(), "mean_logprob": logp.mean(-1).numpy()})
    return out


@pytest.mark.parametrize("batch_size", [1, 3, 8, 64])
def test_batched_scoring_matches_the_row_by_row_reference(tiny, batch_size, monkeypatch):
    """token_logprobs / token_statistics (sorted batches, one LM-head pass per chunk of scored positions,
    logit - logsumexp) give the per-row log-softmax's numbers, in the given order, with the same dtypes;
    empty where nothing is scored (score_from at or past the end, or a one-token sequence). The packed passes
    batch by tokens (PACKED_BATCH_TOKENS, here a few batches' worth), the padded ones by `batch_size`."""
    from workbench import scoring
    from workbench.engine import token_logprobs, token_statistics

    monkeypatch.setattr(scoring, "SCORE_CHUNK", 7)  # several LM-head chunks per batch, split mid-sequence
    monkeypatch.setattr(scoring, "PACKED_BATCH_TOKENS", 5 * batch_size)  # 340 tokens in all: 2 batches or more
    engine = LlamaEngine(tiny.model)
    rng = np.random.default_rng(16)
    vocab = tiny.model.config.vocab_size
    lengths = [1, 2, 5, 40, 3, 17, 17, 17, 60, 9, 2, 33, 17, 1, 25, 8, 50, 12, 4, 17]
    sequences = [rng.integers(0, vocab, n).tolist() for n in lengths]
    score_from = [0, 1, 5, 1, 2, 0, 16, 17, 30, 1, 2, 20, 3, 0, 25, 4, 1, 11, 60, 9]
    reference = _reference_scores(engine, sequences, score_from, batch_size)
    seen = []
    logprobs = token_logprobs(engine, sequences, score_from, batch_size, on_batch=seen.append)
    stats = token_statistics(engine, sequences, score_from, batch_size)
    assert sum(seen) == len(sequences) and len(seen) == len(scoring._packed_batches(lengths)) > 1
    assert [len(lp) for lp in logprobs] == [max(n - max(f, 1), 0) for n, f in zip(lengths, score_from)]
    worst = 0.0
    for ref, lp, st in zip(reference, logprobs, stats):
        for got in (lp, st["logprob"]):
            assert got.dtype == ref["logprob"].dtype and got.shape == ref["logprob"].shape
        assert st["mean_logprob"].dtype == ref["mean_logprob"].dtype
        assert st["mean_logprob"].shape == ref["mean_logprob"].shape
        if lp.size:
            worst = max(worst, np.abs(lp - ref["logprob"]).max(), np.abs(st["logprob"] - ref["logprob"]).max(),
                        np.abs(st["mean_logprob"] - ref["mean_logprob"]).max())
    assert worst < 1e-5, worst


def test_unpadded_prefill_uses_the_causal_path_with_the_same_numbers(tiny):
    """A batch without padding runs SDPA's own causal mask; its hidden states equal the masked path's (the same
    rows padded by a longer neighbour)."""
    engine = LlamaEngine(tiny.model)
    rng = np.random.default_rng(3)
    rows = torch.tensor(rng.integers(0, tiny.model.config.vocab_size, (3, 12)))
    causal = engine.prefill(rows, torch.tensor([12, 12, 12]), all_positions=True)
    padded = torch.cat([torch.cat([rows, torch.zeros(3, 5, dtype=torch.long)], 1),
                        torch.tensor(rng.integers(0, 100, (1, 17)))])
    masked = engine.prefill(padded, torch.tensor([12, 12, 12, 17]), all_positions=True)[:3, :12]
    assert torch.allclose(causal, masked, atol=1e-5, rtol=0), (causal - masked).abs().max()


def test_packed_batches_bound_tokens():
    """Packed scoring batches: every sequence once, sorted by length, at most max_tokens tokens a batch unless one
    sequence alone is longer, and a batch ends only where the next sequence would not fit."""
    from workbench.scoring import _packed_batches

    rng = np.random.default_rng(5)
    for max_tokens in (1, 50, 300, 10_000):
        lengths = rng.integers(1, 120, 200).tolist()
        batches = _packed_batches(lengths, max_tokens)
        flat = [i for batch in batches for i in batch]
        assert sorted(flat) == list(range(len(lengths))) and [lengths[i] for i in flat] == sorted(lengths)
        for batch, following in zip(batches, batches[1:] + [None]):
            tokens = sum(lengths[i] for i in batch)
            assert tokens <= max_tokens or len(batch) == 1
            if following is not None:
                assert tokens + lengths[following[0]] > max_tokens
    assert _packed_batches([], 100) == []


def test_length_batches_bound_rows_and_padding():
    """Every sequence once, sorted by length; at most batch_size a batch; padding within max(25% real, 64)."""
    from workbench.engine import _length_batches

    rng = np.random.default_rng(5)
    lengths = rng.integers(1, 200, 300).tolist() + [1000, 3, 3, 3]
    for batch_size in (1, 4, 32, 500):
        batches = _length_batches(lengths, batch_size)
        flat = [i for batch in batches for i in batch]
        assert flat == sorted(range(len(lengths)), key=lambda i: lengths[i])
        for batch in batches:
            real = sum(lengths[i] for i in batch)
            assert len(batch) <= batch_size
            assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) - real <= max(0.25 * real, 64)
    assert _length_batches([5] * 10, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # equal lengths: full batches
    assert _length_batches([], 8) == []


def test_fp32_matmul_is_true_fp32_and_batch_invariant():
    """The engine's fp32 matmul (oneDNN where torch has it): exact where bf16 inputs would not be, close to
    F.linear elsewhere, and a row's result does not depend on the other rows of its batch (2 rows or more)."""
    import torch.nn.functional as F

    from workbench.matmul import _ONEDNN_FP32, _linear

    assert _ONEDNN_FP32 == torch.backends.mkldnn.is_available()  # on unless WORKBENCH_FP32_MATMUL=torch
    x = torch.full((8, 576), 1 + 2 ** -12)           # not representable in bf16: rounds to 1 there
    assert torch.equal(_linear(x, torch.ones(64, 576)), torch.full((8, 64), 576 * (1 + 2 ** -12)))
    g = torch.Generator().manual_seed(0)
    weight, rows = torch.randn(320, 576, generator=g), torch.randn(100, 576, generator=g)
    full = _linear(rows, weight)
    assert torch.allclose(full, F.linear(rows, weight), rtol=1e-4, atol=1e-3)
    for n in (2, 7, 33, 64):
        assert torch.equal(_linear(rows[:n], weight), full[:n])


def test_bf16_weights_reordered_for_onednn_give_f_linear_numbers(tiny):
    """bf16 matmul weights reordered once into oneDNN's layout (`_prepacked`): F.linear's numbers (identical
    but for a rare last-bit rounding step at some batch sizes), empty batches, the residual add; the bf16 engine
    holds them so, the fp32 engine the model's own weights."""
    import torch.nn.functional as F

    from workbench import matmul
    from workbench.matmul import _linear, _linear_add, _prepacked, _prepacked_gate_up, _swiglu

    assert matmul._PREPACK_BF16 == torch.backends.mkldnn.is_available()  # on unless WORKBENCH_PREPACK=0
    g = torch.Generator().manual_seed(2)
    weight = (torch.randn(320, 576, generator=g) * 0.05).to(torch.bfloat16)
    packed, fp32_weight = _prepacked(weight), weight.float()
    assert packed.is_mkldnn and packed.shape == weight.shape and _prepacked(fp32_weight) is fp32_weight
    for n in (1, 5, 17, 128, 300, 1030):
        x = torch.randn(n, 576, generator=g).to(torch.bfloat16)
        got, want = _linear(x, packed), F.linear(x, weight)
        assert got.dtype == torch.bfloat16 and got.shape == want.shape
        assert (got == want).float().mean() > 0.999
        assert torch.allclose(got.float(), want.float(), rtol=2 ** -7, atol=1e-6)
        residual = torch.randn(n, 320, generator=g).to(torch.bfloat16)
        assert torch.equal(_linear_add(x, packed, residual), residual + got)
    assert _linear(torch.zeros(0, 576, dtype=torch.bfloat16), packed).shape == (0, 320)
    assert _linear(torch.zeros(2, 3, 576, dtype=torch.bfloat16), packed).shape == (2, 3, 320)
    # the MLP's gate and up, reordered as a pair: SwiGLU as oneDNN's post-ops on the unrounded products
    gate_up = (torch.randn(2 * 96, 576, generator=g) * 0.05).to(torch.bfloat16)
    pair = _prepacked_gate_up(gate_up)
    assert pair.gate.is_mkldnn and pair.up.is_mkldnn and pair.shape == gate_up.shape
    x = torch.randn(40, 576, generator=g).to(torch.bfloat16)
    gate, up = F.linear(x.float(), gate_up.float()).chunk(2, dim=-1)
    act = _swiglu(x, pair)
    assert act.dtype == torch.bfloat16 and act.shape == (40, 96)
    assert torch.allclose(act.float(), F.silu(gate) * up, rtol=2 ** -7, atol=1e-3)
    assert _swiglu(x[:0], pair).shape == (0, 96)
    bf16 = LlamaEngine(tiny.model, dtype=torch.bfloat16)
    assert all(w.is_mkldnn for layer in bf16.layers for w in (layer[1], layer[2], layer[4].gate, layer[4].up, layer[5]))
    assert bf16.lm_head.is_mkldnn and not bf16.embed.is_mkldnn
    fp32 = LlamaEngine(tiny.model)
    assert not any(w.is_mkldnn for layer in fp32.layers for w in layer) and not fp32.lm_head.is_mkldnn
    assert fp32.layers[0][1].data_ptr() == tiny.model.model.layers[0].self_attn.q_proj.weight.data_ptr()


def test_fused_post_ops_match_the_plain_formulas_and_stay_batch_invariant():
    """The residual add and the SwiGLU done as oneDNN post-ops (`_linear_add`, `_swiglu`) give what the plain
    ops give, and a row's result still does not depend on its batch neighbours."""
    import torch.nn.functional as F

    from workbench.matmul import _linear_add, _swiglu

    g = torch.Generator().manual_seed(1)
    x, residual = torch.randn(40, 576, generator=g), torch.randn(40, 576, generator=g)
    gate_up, down = torch.randn(2 * 96, 576, generator=g) * 0.05, torch.randn(576, 96, generator=g) * 0.1
    act = _swiglu(x, gate_up)
    gate, up = F.linear(x, gate_up).chunk(2, dim=-1)
    assert torch.allclose(act, F.silu(gate) * up, rtol=1e-4, atol=1e-5)
    out = _linear_add(act, down, residual)
    assert torch.allclose(out, residual + F.linear(act, down), rtol=1e-4, atol=1e-4)
    for n in (2, 9, 33):
        assert torch.equal(_swiglu(x[:n], gate_up), act[:n])
        assert torch.equal(_linear_add(act[:n], down, residual[:n]), out[:n])
    three_d = _linear_add(act.view(4, 10, 96), down, residual.view(4, 10, 576))  # prefill's [B, T, hidden]
    assert torch.equal(three_d.view(40, 576), out)
