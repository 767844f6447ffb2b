"""The compiled decode-attention kernel (workbench/kernels.py) against torch's SDPA and a plain reference."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from workbench import kernels
from workbench.engine import LlamaEngine, Request, right_padded
from workbench.sampling import encode_prompt, stop_token_ids


def _case(S, KV, G, D, L, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    cache = torch.randn(S + 3, 2 * KV, L, D, generator=g).to(dtype)         # more cache rows than active ones
    qkv = torch.randn(S, KV * G + 2 * KV, D, generator=g).to(dtype)         # q is a strided view, as in decode
    positions = torch.randint(0, L, (S,), generator=g)
    positions[0] = L - 1
    return cache, qkv[:, :KV * G], positions


def _reference(q, cache, positions, G):
    """Per row and head, softmax(q k^T / sqrt(D)) v over positions 0..pos, in float64."""
    S, H, D = q.shape
    KV = cache.shape[1] // 2
    out = torch.empty(S, H, D, dtype=torch.float64)
    for s in range(S):
        n = int(positions[s]) + 1
        for h in range(H):
            k, v = cache[s, h // G, :n].double(), cache[s, KV + h // G, :n].double()
            p = torch.softmax(k @ q[s, h].double() / D ** 0.5, dim=0)
            out[s, h] = p @ v
    return out.reshape(S, H * D)


def test_the_kernel_builds_here():
    """The tests need a C compiler (cc/gcc: the CI machine has gcc); without one the engine would use SDPA."""
    assert kernels.available(), f"the decode-attention kernel did not build: {kernels.unavailable_reason()}"


@pytest.mark.parametrize("KV,G,D", [(3, 3, 64), (2, 1, 64), (2, 4, 64), (2, 2, 16), (1, 5, 24)])
def test_kernel_matches_the_reference_for_each_head_layout(KV, G, D):
    """The specialised paths (head_dim 64 with 1, 3 or 4 queries per KV head) and the generic one."""
    cache, q, positions = _case(9, KV, G, D, L=40)
    out = kernels.decode_attention(q, cache, positions, G)
    assert out.shape == (9, KV * G * D) and out.dtype == torch.float32
    assert torch.allclose(out.double(), _reference(q, cache, positions, G), atol=2e-6)


def test_kernel_matches_sdpa_as_the_engine_calls_it():
    S, KV, G, D, L = 64, 3, 3, 64, 120
    cache, q, positions = _case(S, KV, G, D, L)
    span = int(positions.max()) + 1
    visible = (torch.arange(span).unsqueeze(0) <= positions.unsqueeze(1)).view(S, 1, 1, span)
    mask = torch.zeros(S, 1, 1, span).masked_fill_(~visible, float("-inf"))
    sdpa = F.scaled_dot_product_attention(q.reshape(S, KV, G, D), cache[:S, :KV, :span], cache[:S, KV:, :span],
                                          attn_mask=mask).reshape(S, -1)
    assert torch.allclose(kernels.decode_attention(q, cache, positions, G), sdpa, atol=5e-6)


def test_kernel_refuses_positions_outside_the_cache():
    cache, q, positions = _case(4, 3, 3, 64, 30)
    positions[2] = 30                                                      # the cache holds positions 0..29
    with pytest.raises(AssertionError):
        kernels.decode_attention(q, cache, positions, 3)
    with pytest.raises(AssertionError):
        kernels.decode_attention(q, cache, positions.int().clamp(max=29), 3)   # int32 positions


def test_kernel_rows_do_not_depend_on_their_batch():
    """A row's output is bit-identical whether it runs with 1, 5 or 64 other rows (and on 1 or 2 threads)."""
    cache, q, positions = _case(64, 3, 3, 64, 80)
    full = kernels.decode_attention(q, cache, positions, 3)
    for n in (1, 5, 33):
        assert torch.equal(kernels.decode_attention(q[:n], cache, positions[:n], 3), full[:n])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(kernels.decode_attention(q, cache, positions, 3), full)
    finally:
        torch.set_num_threads(threads)


def test_kernel_reads_a_bf16_cache():
    cache, q, positions = _case(16, 3, 3, 64, 50, dtype=torch.bfloat16)
    out = kernels.decode_attention(q, cache, positions, 3)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.double(), _reference(q.float(), cache.float(), positions, 3), atol=2e-2)


def test_loading_the_kernel_adds_no_openmp_runtime_and_keeps_subnormal_floats(tmp_path):
    """In a fresh process: the kernel runs on the OpenMP runtime torch loaded (loading it maps no new one), and
    loading it leaves the process's float state alone (a library linked with -ffast-math would switch on
    flush-to-zero: subnormal floats would become 0 in numpy and torch)."""
    code = ("import numpy as np, torch\n"
            "from workbench import kernels\n"
            "before = kernels._openmp_runtimes()\n"
            "assert kernels.available(), kernels.unavailable_reason()\n"
            "assert kernels._openmp_runtimes() == before, (before, kernels._openmp_runtimes())\n"
            "tiny = np.float32(1e-40)\n"
            "assert tiny * np.float32(1.0) > 0 and float(torch.tensor(1e-40) * 1.0) > 0\n"
            "print('ok', len(before))\n")
    env = {**os.environ, "WORKBENCH_DATA": str(tmp_path)}  # a fresh build, not a cached library
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-2000:]
    assert list(tmp_path.glob("kernels/workbench_kernels-*.so"))


def test_engine_gives_the_same_tokens_with_the_kernel_and_with_sdpa(tiny):
    """Greedy and sampled text of the tiny model (fp32) are the same on either attention path; the default
    engine takes the kernel."""
    assert LlamaEngine(tiny.model).attention == "kernel"
    ids = [tiny.tokenizer.encode(p) for p in ("What is 12+7?", "Name three colors.", "Hi", "Write a long poem.")]
    stops = stop_token_ids(tiny.tokenizer, tiny.model)
    runs = {}
    for attention in ("kernel", "sdpa"):
        engine = LlamaEngine(tiny.model, attention=attention)
        for temperature in (0, 1.0):
            requests = [Request(k, i, 7 + k, 30) for k, i in enumerate(ids)]
            runs[attention, temperature] = {f.key: f.token_ids for f in engine.run(requests, stops, temperature,
                                                                                   top_k=50, slots=3)}
    for temperature in (0, 1.0):
        assert runs["kernel", temperature] == runs["sdpa", temperature]
        assert sum(map(len, runs["kernel", temperature].values())) > 20


def test_sdpa_is_chosen_when_asked_and_unknown_choices_are_refused(tiny):
    with pytest.raises(ValueError, match="attention must be"):
        LlamaEngine(tiny.model, attention="flash")
    with pytest.raises(ValueError, match="fp32 and bf16"):
        LlamaEngine(tiny.model, dtype=torch.float16, attention="kernel")
    assert LlamaEngine(tiny.model, dtype=torch.float16).attention == "sdpa"
    code = ("from workbench import kernels; from workbench.engine import LlamaEngine; import sys;"
            "print(kernels.available(), kernels.unavailable_reason())")
    env = {**os.environ, "WORKBENCH_ATTENTION": "sdpa"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False WORKBENCH_ATTENTION=sdpa"


def test_a_failed_build_falls_back_with_its_reason(tmp_path):
    """No working compiler: `available()` is False and says why, so the engine falls back to SDPA."""
    code = ("from workbench import kernels; print(kernels.available()); print(kernels.unavailable_reason())")
    env = {**os.environ, "CC": str(tmp_path / "no-such-cc"), "WORKBENCH_DATA": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    available, reason = done.stdout.strip().splitlines()
    assert available == "False" and "no-such-cc" in reason


def test_token_logprobs_kernel_matches_log_softmax():
    """log p of the targets and the mean log p over the vocabulary, against torch's log_softmax."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(37, 5000, generator=g) * 4
    logits[5, 17] = 80.0                                         # a dominant logit: the max shift matters
    targets = torch.randint(0, 5000, (37,), generator=g)
    targets[5] = 17
    chosen, mean = torch.empty(37), torch.empty(37)
    kernels.token_logprobs(logits, targets, chosen, mean)
    reference = torch.log_softmax(logits.double(), -1)
    assert torch.allclose(chosen.double(), reference.gather(-1, targets[:, None])[:, 0], atol=2e-5)
    assert abs(float(chosen[5])) < 1e-6
    assert torch.allclose(mean.double(), reference.mean(-1), atol=2e-5)
    alone = torch.empty(1)
    kernels.token_logprobs(logits[9:10].contiguous(), targets[9:10], alone)   # without `mean`; rows independent
    assert torch.equal(alone, chosen[9:10])
    with pytest.raises(AssertionError):
        kernels.token_logprobs(logits, torch.full((37,), 5000), chosen)           # a target outside the vocabulary


def test_attention_kernel_with_row_indices_matches_the_reference():
    """A packed prefill's queries: several per cache row, each at its own position (rows given per query)."""
    g = torch.Generator().manual_seed(5)
    KV, G, D, L = 3, 3, 64, 40
    cache = torch.randn(6, 2 * KV, L, D, generator=g)
    rows = torch.tensor([4, 4, 4, 1, 1, 5, 0])
    positions = torch.tensor([10, 11, 12, 0, 1, 39, 7])
    q = torch.randn(7, KV * G, D, generator=g)
    out = kernels.decode_attention(q, cache, positions, G, rows)
    assert torch.allclose(out.double(), _reference(q, cache[rows], positions, G), atol=2e-6)
    with pytest.raises(AssertionError, match="outside the cache"):
        kernels.decode_attention(q, cache, positions, G, torch.tensor([4, 4, 4, 1, 1, 6, 0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("KV,G,D", [(3, 3, 64), (2, 1, 64), (2, 4, 64), (1, 5, 128), (2, 2, 16)])
def test_packed_prefill_tiles_match_the_reference_and_the_per_query_kernel(KV, G, D, dtype):
    """A packed prefill's rows run as tiles of query x head rows (12 a tile, the last one partial) against each
    row's keys and values: runs of 1 to 60 queries, a row whose queries skip positions, a row used by two runs;
    odd head sizes (16) go through the per-query kernel. The same numbers as the reference (fp32: to float
    rounding; bf16: to one step of the output's rounding) and as the per-query kernel the tiles replaced."""
    g = torch.Generator().manual_seed(7)
    L = 100
    cache = (torch.randn(6, 2 * KV, L, D, generator=g) * 2).to(dtype)
    runs = [(4, list(range(30, 35))), (1, list(range(37))), (5, [60]), (0, [2, 5, 9, 40]), (4, list(range(40, 100)))]
    rows = torch.tensor([row for row, positions in runs for _ in positions])
    positions = torch.tensor([p for _, ps in runs for p in ps])
    q = (torch.randn(len(rows), KV * G + 2 * KV, D, generator=g) * 2).to(dtype)[:, :KV * G]   # strided, as in decode
    out = kernels.decode_attention(q, cache, positions, G, rows)
    reference = _reference(q.float(), cache[rows].float(), positions, G)
    per_query = torch.cat([kernels.decode_attention(q[i:i + 1], cache[rows[i]:rows[i] + 1], positions[i:i + 1], G)
                           for i in range(len(rows))])                   # one query per row: the decode kernel
    if dtype == torch.float32:  # 64-term dot products summed in another order than the per-query kernel's
        assert torch.allclose(out.double(), reference, rtol=1e-5, atol=2e-5)
        assert torch.allclose(out, per_query, rtol=1e-5, atol=2e-5)
    else:  # one bf16 step of the output at most, and nearly always the per-query kernel's value
        assert ((out.double() - reference).abs() <= reference.abs() * 2 ** -7 + 2e-5).all()
        assert (out != per_query).float().mean() < 0.005


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_kernel_matches_transformers_norm(dtype):
    """LlamaRMSNorm in fp32 (to float rounding) and in bf16 (bit for bit: the kernel rounds where torch's ops do), on
    strided rows; a row's result does not depend on the other rows."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    g = torch.Generator().manual_seed(1)
    norm = LlamaRMSNorm(96, eps=1e-5).to(dtype)
    norm.weight.data = torch.randn(96, generator=g).to(dtype)
    x = (torch.randn(37, 2, 96, generator=g)[:, 1] * 30).to(dtype)         # rows with a stride of 192 values
    out = kernels.rms_norm(x, norm.weight.data, 1e-5)
    with torch.no_grad():
        expected = norm(x)
    assert out.dtype == dtype
    assert torch.equal(out, expected) if dtype == torch.bfloat16 else torch.allclose(out, expected, rtol=2e-6, atol=2e-6)
    assert torch.equal(kernels.rms_norm(x[5:6], norm.weight.data, 1e-5), out[5:6])
    assert kernels.rms_norm(x.reshape(1, 37, 96), norm.weight.data, 1e-5).shape == (1, 37, 96)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_kernel_matches_transformers_and_writes_k_and_v_to_the_cache(dtype):
    """Q and K heads rotated as transformers' apply_rotary_pos_emb (bf16: bit for bit); V untouched; with a cache,
    each row's K and V land in its cache row (given per row) at its position, and nothing else in the cache changes."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    g = torch.Generator().manual_seed(2)
    H, KV, D, R, P = 4, 2, 16, 9, 50
    inv_freq = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
    emb = torch.cat([torch.outer(torch.arange(P).float(), inv_freq)] * 2, dim=-1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    x = torch.randn(R, H + 2 * KV, D, generator=g).to(dtype)
    positions = torch.randint(0, 30, (R,), generator=g)
    q_ref, k_ref = apply_rotary_pos_emb(x[:, :H], x[:, H:H + KV], cos[positions], sin[positions], unsqueeze_dim=1)
    rotated = x.clone()
    kernels.rotary(rotated, positions, cos, sin, rotate=H + KV)
    close = torch.equal if dtype == torch.bfloat16 else lambda a, b: torch.allclose(a, b, atol=1e-6)
    assert close(rotated[:, :H], q_ref) and close(rotated[:, H:H + KV], k_ref)
    assert torch.equal(rotated[:, H + KV:], x[:, H + KV:])
    cache = torch.zeros(12, 2 * KV, 30, D, dtype=dtype)
    rows = torch.randperm(12, generator=g)[:R]
    stored = x.clone()
    kernels.rotary(stored, positions, cos, sin, rotate=H + KV, cache=cache, rows=rows)
    assert torch.equal(stored, rotated)
    expected = torch.zeros_like(cache)
    expected[rows, :, positions] = rotated[:, H:]
    assert torch.equal(cache, expected)
    with pytest.raises(AssertionError):
        kernels.rotary(x.clone(), positions.clamp(min=29) + 1, cos, sin, rotate=H + KV, cache=cache)  # past L


def test_packed_prefill_matches_the_padded_prefill(tiny):
    """Prompts packed end to end (chunks that cut prompts in two) give the padded SDPA prefill's last hidden states
    and cache contents, after a shared prefix; engines without the kernel refuse to pack."""
    engine = LlamaEngine(tiny.model)
    prompts = ("What is 12+7?", "Name three colors.", "Hi", "Write a long poem about the sea and the sky.")
    ids = [encode_prompt(tiny.tokenizer, p, True, None) for p in prompts]
    P, prefix = engine.common_prefix(ids)
    assert P > 8
    width = max(map(len, ids))
    padded, packed = engine.new_cache(5, width), engine.new_cache(5, width)
    for cache in (padded, packed):
        for layer, shared in zip(cache, prefix):
            layer[1:, :, :P] = shared
    tokens, lengths = right_padded(ids, P)
    expected = engine.prefill(tokens, lengths, padded, slice(1, 5), prefix=prefix)
    hidden = engine.prefill_packed([i[P:] for i in ids], packed, first_row=1, start=P, chunk=7)
    assert torch.allclose(hidden, expected, rtol=1e-5, atol=1e-5)
    for a, b in zip(padded, packed):
        for row, seq in enumerate(ids, start=1):
            assert torch.allclose(a[row, :, :len(seq)], b[row, :, :len(seq)], rtol=1e-5, atol=1e-5)
        assert not b[0].any()                                                  # row 0 was not touched
    sdpa = LlamaEngine(tiny.model, attention="sdpa")
    with pytest.raises(ValueError, match="compiled attention kernel"):
        sdpa.prefill_packed([ids[0]], sdpa.new_cache(1, width), 0)
    with pytest.raises(ValueError, match="compiled attention kernel"):
        sdpa.decode(torch.tensor([1]), torch.tensor([0]), sdpa.new_cache(1, 4), 1, rows=torch.tensor([0]))


def test_generation_gives_the_same_tokens_with_packed_and_padded_prefill(tiny, monkeypatch):
    """The scheduler packs short prompts (and pads long ones): the texts do not depend on which it did."""
    from workbench import engine as engine_module

    ids = [tiny.tokenizer.encode(p) for p in ("What is 12+7?", "Name three colors.", "Hi", "Write a long poem.")]
    stops = stop_token_ids(tiny.tokenizer, tiny.model)
    engine = LlamaEngine(tiny.model)
    runs, prefills = {}, []
    monkeypatch.setattr(engine, "prefill", lambda *a, **k: prefills.append("padded") or LlamaEngine.prefill(
        engine, *a, **k))
    monkeypatch.setattr(engine, "prefill_packed", lambda *a, **k: prefills.append("packed") or
                        LlamaEngine.prefill_packed(engine, *a, **k))
    for packed, limit in ((True, engine_module.PACKED_MAX_TOKENS), (False, -1)):
        monkeypatch.setattr(engine_module, "PACKED_MAX_TOKENS", limit)
        for temperature in (0, 1.0):
            prefills.clear()
            requests = [Request(k, i, 7 + k, 30) for k, i in enumerate(ids)]
            runs[packed, temperature] = {f.key: f.token_ids for f in engine.run(requests, stops, temperature,
                                                                                top_k=50, slots=3)}
            assert set(prefills) == {"packed" if packed else "padded"}
    for temperature in (0, 1.0):
        assert runs[True, temperature] == runs[False, temperature]


def test_scoring_passes_give_the_same_numbers_packed_and_padded(tiny, monkeypatch):
    """next_token_logits (after a shared chat prefix) and token_statistics, packed (`forward_packed`) and padded."""
    from workbench import engine as engine_module
    from workbench import scoring
    from workbench.scoring import next_token_logits, token_statistics

    engine = LlamaEngine(tiny.model)
    ids = [encode_prompt(tiny.tokenizer, p, True, None) for p in ("What is 12+7?", "Name three colors.", "Hi",
                                                                    "Write a long poem about the sea and the sky.")]
    calls = []
    monkeypatch.setattr(engine, "forward_packed", lambda *a: calls.append(1) or LlamaEngine.forward_packed(engine, *a))
    monkeypatch.setattr(scoring, "PACKED_BATCH_TOKENS", 1)  # packed batches by tokens: here one sequence each
    packed = next_token_logits(engine, ids, batch_size=3), token_statistics(engine, ids, [5, 9, 3, 12], batch_size=3)
    assert len(calls) == 8
    monkeypatch.setattr(engine_module, "PACKED_MAX_TOKENS", -1)
    padded = next_token_logits(engine, ids, batch_size=3), token_statistics(engine, ids, [5, 9, 3, 12], batch_size=3)
    assert len(calls) == 8
    assert torch.allclose(packed[0], padded[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(packed[1], padded[1]):
        assert len(a["logprob"]) == len(b["logprob"]) > 0
        for key in ("logprob", "mean_logprob"):
            assert torch.allclose(torch.from_numpy(a[key]), torch.from_numpy(b[key]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("V,k", [(49152, 50), (1000, 10), (77, 50), (50, 50), (130, 1), (3840, 60), (3843, 60)])
def test_topk_kernel_matches_torch_topk(V, k):
    """Values and indices as torch.topk's, largest first, for vocabularies in whole and partial blocks of 64."""
    logits = torch.randn(9, V, generator=torch.Generator().manual_seed(V)) * 3
    values, index = kernels.topk(logits, k)
    expected = torch.topk(logits, k)
    assert torch.equal(values, expected.values) and torch.equal(index, expected.indices)


def test_topk_kernel_keeps_the_lower_index_among_equal_values():
    logits = torch.randn(3, 1000, generator=torch.Generator().manual_seed(0))
    logits[:, 5:40] = 7.0                                                    # 35 tied maxima, across two blocks
    values, index = kernels.topk(logits, 10)
    assert index.tolist() == [list(range(5, 15))] * 3 and bool((values == 7.0).all())


def test_token_logprobs_kernel_reads_bf16_logits():
    """bf16 logits (the bf16 LM head's own output) give what their fp32 copy gives, to fp32 rounding."""
    g = torch.Generator().manual_seed(4)
    logits = (torch.randn(21, 5000, generator=g) * 4).bfloat16()
    targets = torch.randint(0, 5000, (21,), generator=g)
    chosen, mean, chosen32, mean32 = (torch.empty(21) for _ in range(4))
    kernels.token_logprobs(logits, targets, chosen, mean)
    kernels.token_logprobs(logits.float(), targets, chosen32, mean32)
    assert torch.allclose(chosen, chosen32, atol=1e-5) and torch.allclose(mean, mean32, atol=1e-5)
    reference = torch.log_softmax(logits.double(), -1)
    assert torch.allclose(chosen.double(), reference.gather(-1, targets[:, None])[:, 0], atol=2e-5)


def test_swiglu_kernel_matches_torch_in_bf16():
    """silu(gate) * up of bf16 rows, rounded where torch rounds: identical to torch's two ops but where the two exp
    implementations' last fp32 bit tips silu's rounding (then one bf16 step apart, two after the product); rows
    independent of their batch."""
    g = torch.Generator().manual_seed(5)
    gate_up = (torch.randn(2, 67, 2 * 1536, generator=g) * 3).bfloat16()
    gate_up[0, 0, :8] = torch.tensor([0.0, -0.0, 30.0, -30.0, 90.0, -90.0, 1e-3, -1e-3]).bfloat16()
    out = kernels.swiglu(gate_up)
    assert out.shape == (2, 67, 1536) and out.dtype == torch.bfloat16
    reference = F.silu(gate_up[..., :1536]) * gate_up[..., 1536:]
    assert float((out == reference).float().mean()) > 0.995
    step = torch.maximum(out.float().abs(), reference.float().abs()) * 2.0 ** -7          # one bf16 step (8 bits)
    assert bool(((out.float() - reference.float()).abs() <= 2 * step + 1e-30).all())
    assert torch.equal(kernels.swiglu(gate_up[1, 5:6]), out[1, 5:6])
    with pytest.raises(AssertionError):
        kernels.swiglu(gate_up.float())                                              # fp32: oneDNN's post-op, not this


def test_bf16_scoring_matches_transformers_bf16_log_probs(real_model_dir):
    """The bf16 scoring pass (SwiGLU kernel, log-probs read from the bf16 logits) against transformers' bf16 forward
    and log_softmax: as near the fp32 model's log-probs as transformers' own bf16 is."""
    from workbench.models import load_model
    from workbench.scoring import token_logprobs

    fp32, bf16 = load_model("smollm2-135m", dtype="fp32"), load_model("smollm2-135m", dtype="bf16")
    engine = LlamaEngine(bf16.model)
    text = ["The capital of France is Paris, and the capital of Italy is Rome.", "Two plus two is four."]
    ids = [bf16.tokenizer(t)["input_ids"] for t in text]
    ours = token_logprobs(engine, ids, [1, 1])
    for seq, got in zip(ids, ours):
        x = torch.tensor([seq])
        with torch.inference_mode():
            exact = torch.log_softmax(fp32.model(x).logits[0, :-1].double(), -1)
            theirs = torch.log_softmax(bf16.model(x).logits[0, :-1].float().double(), -1)
        target = torch.tensor(seq[1:])[:, None]
        exact, theirs = exact.gather(-1, target)[:, 0], theirs.gather(-1, target)[:, 0]
        got = torch.as_tensor(got, dtype=torch.float64)
        assert got.shape == exact.shape
        assert float((got - exact).abs().mean()) <= 2 * float((theirs - exact).abs().mean()) + 0.01


def test_bf16_engine_stays_as_close_to_fp32_as_transformers_bf16(real_model_dir):
    """In bf16 the engine (compiled norms and rotary, bit for bit transformers'; attention accumulated in fp32 from
    the bf16 cache) is not transformers' bf16 to the bit, but as near the fp32 model: its last-token logits, packed
    prefill and decode steps, against the fp32 forward over 33 prompts. On average over the prompts as close as
    transformers' bf16 (x 1.25); at a prompt's worst logit within twice transformers' own worst + 0.05, for all but
    one prompt in ten: that worst logit is chaotic in bf16 (a one-ulp change in 0.03% of one kernel's outputs moved a
    prompt's from 0.33 to 0.75; over these prompts and three batch shapes, old and new attention kernels alike
    exceeded it for 0 or 1 of 33); and its top token the fp32 model's (or, where the fp32 model's best two are
    within bf16's error, one of them)."""
    from workbench import get_task
    from workbench.models import load_model

    fp32, bf16 = load_model("smollm2-135m", dtype="fp32"), load_model("smollm2-135m", dtype="bf16")
    engine = LlamaEngine(bf16.model)
    assert engine.compiled and engine.dtype == torch.bfloat16
    prompts = ["What is 12+7?", "Name three colors.", "Write a long poem about the sea."]
    prompts += list(get_task("instructions", n=30)["prompt"])
    ids = [encode_prompt(bf16.tokenizer, p, True, None) for p in prompts]
    cache = engine.new_cache(len(ids), max(map(len, ids)))
    ours_mean, their_mean, beyond = [], [], []
    with torch.inference_mode():
        heads = engine.prefill_packed([i[:-1] for i in ids], cache, 0)                # all but the last token
        assert heads.shape == (len(ids), bf16.model.config.hidden_size)
        ours = engine.logits(engine.decode(torch.tensor([i[-1] for i in ids]),
                                           torch.tensor([len(i) - 1 for i in ids]), cache, max(map(len, ids))))
        for row, seq in enumerate(ids):
            reference = fp32.model(torch.tensor([seq])).logits[0, -1]
            theirs = bf16.model(torch.tensor([seq])).logits[0, -1].float()
            ours_error, their_error = (ours[row] - reference).abs(), (theirs - reference).abs()
            if float(ours_error.max()) > 2 * float(their_error.max()) + 0.05:
                beyond.append((prompts[row], float(ours_error.max()), float(their_error.max())))
            ours_mean.append(float(ours_error.mean()))
            their_mean.append(float(their_error.mean()))
            # the same top token where the fp32 model has a clear one; where its two best are nearer than bf16's
            # error (the poem prompt: 26.28 vs 26.19, transformers' bf16 off by up to 0.47) either may come out top
            best, second = reference.topk(2).values.tolist()
            if best - second > 2 * float(their_error.max()):
                assert int(ours[row].argmax()) == int(reference.argmax())
            else:
                assert float(reference[int(ours[row].argmax())]) >= best - 2 * float(their_error.max())
    assert sum(ours_mean) <= 1.25 * sum(their_mean), (ours_mean, their_mean)
    assert len(beyond) <= len(ids) // 10, beyond
