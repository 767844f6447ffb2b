"""A small continuous-batching decoder for Llama-architecture models (SmolLM2 among them).

Why not `model.generate`: on this 2-core CPU, HF's batched generate spends most of each step on
per-step Python and cache bookkeeping (its dynamic KV cache grows by concatenation), keeps stepping
rows that already finished, and samples over the full vocabulary with a sort. This engine
  * holds a preallocated KV cache of `slots` rows, one request per slot, each at its own position;
  * refills a slot as soon as its request stops (continuous batching), so no step is spent on
    finished rows, and shrinks the cache once the queue is empty;
  * runs the model's own weights with fused QKV and gate/up matmuls in bf16 (or fp32), and
    computes logits only for the positions it samples from;
  * draws one uniform per row per step from a counter-based RNG keyed by the sample's own seed,
    so a sample's text does not depend on which other requests shared its batch.
Its forward pass matches transformers' to float precision (tests compare logits and greedy text).
Other architectures use HF `generate` (see `workbench/sampling.py`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def uniforms(seeds: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """splitmix64(seed, step) -> uniform floats in [0, 1); independent of batch composition."""
    with np.errstate(over="ignore"):
        z = seeds.astype(np.uint64) + (steps.astype(np.uint64) + np.uint64(1)) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def filtered_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                   min_p: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Unnormalized sampling probabilities [B, N] after temperature, top-k, top-p and min-p, in the order
    transformers applies its warpers; filtered-out tokens get 0. `index` [B, N] gives each column's token
    (sorted, most likely first), or is None when the columns are the whole vocabulary in order.

    min-p keeps the tokens whose probability is >= min_p times the most likely token's (as transformers'
    MinPLogitsWarper); renormalizing after top-k/top-p does not change that ratio. temperature must be > 0.
    """
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        values, index = torch.topk(logits, top_k, dim=-1)  # sorted, largest first
    elif top_p < 1.0:
        values, index = torch.sort(logits, dim=-1, descending=True)
    else:
        values, index = logits, None
    probs = torch.softmax(values, dim=-1)
    if top_p < 1.0:
        before = torch.cumsum(probs, dim=-1) - probs
        probs = probs * (before < top_p)  # the smallest prefix whose mass reaches top_p
    if min_p > 0:
        probs = probs * (probs >= min_p * probs.amax(dim=-1, keepdim=True))  # the top token always stays
    return probs, index


def sample_tokens(logits: torch.Tensor, u: np.ndarray, temperature: float, top_k: int, top_p: float,
                  min_p: float = 0.0) -> torch.Tensor:
    """Sample one token per row from float logits with temperature, top-k, top-p (nucleus) and min-p.

    Uses inverse-CDF sampling with the given uniforms `u` (one per row). temperature 0 is greedy.
    """
    if temperature <= 0:
        return logits.argmax(-1)
    probs, index = filtered_probs(logits, temperature, top_k, top_p, min_p)
    cdf = torch.cumsum(probs, dim=-1)
    target = torch.from_numpy(u).to(cdf.dtype).unsqueeze(-1) * cdf[:, -1:]
    choice = torch.searchsorted(cdf, target).clamp_(max=cdf.shape[-1] - 1)
    return choice.squeeze(-1) if index is None else index.gather(-1, choice).squeeze(-1)


def _common_prefix_length(sequences: list[list[int]]) -> int:
    """Length of the longest common start, leaving every sequence at least one token of its own."""
    shortest = min(len(seq) for seq in sequences)
    first = sequences[0]
    length = 0
    while length < shortest - 1 and all(seq[length] == first[length] for seq in sequences):
        length += 1
    return length


def right_padded(sequences: list[list[int]], start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens [B, T] of each sequence from `start` on, right-padded with 0, and their lengths [B]."""
    lengths = torch.tensor([len(seq) - start for seq in sequences])
    tokens = torch.zeros(len(sequences), int(lengths.max()), dtype=torch.long)
    for row, seq in enumerate(sequences):
        tokens[row, : len(seq) - start] = torch.tensor(seq[start:])
    return tokens, lengths


def left_padded(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens [B, T] left-padded with `pad_id` and the attention mask, for transformers' forward/generate."""
    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
    return ids, mask


class _Int8Weight:
    """A weight quantized to int8 per output channel, for W8A8 matmuls with per-row activation scales.

    Activations are quantized per row (token), so a row's result never depends on the other rows
    in its batch (fbgemm's dynamic quantization uses one scale per batch, which would).
    """

    def __init__(self, weight: torch.Tensor):
        self.scale = weight.abs().amax(dim=1).clamp_min(1e-8) / 127.0            # [out]
        self.qweight_t = torch.round(weight / self.scale[:, None]).to(torch.int8).t().contiguous()  # [in, out]


def _linear(x: torch.Tensor, weight) -> torch.Tensor:
    if not isinstance(weight, _Int8Weight):
        return F.linear(x, weight)
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).float()
    row_scale = x2.abs().amax(dim=1, keepdim=True).clamp_min(1e-8) / 127.0
    xq = torch.round(x2 / row_scale).to(torch.int8)
    if xq.shape[0] <= 16:  # torch._int_mm wants more than 16 rows: pad
        xq = torch.cat([xq, xq.new_zeros(17 - xq.shape[0], xq.shape[1])])
    out = torch._int_mm(xq, weight.qweight_t)[: x2.shape[0]].float() * row_scale * weight.scale
    return out.to(x.dtype).reshape(*shape[:-1], out.shape[-1])


@dataclass
class Request:
    """One completion to produce."""

    key: int                  # caller's index for this request
    prompt_ids: list[int]     # already templated and truncated
    seed: int                 # per-sample seed for the counter-based RNG
    max_new_tokens: int


@dataclass
class Finished:
    key: int
    token_ids: list[int]      # generated tokens, without the stop token
    finish_reason: str        # "stop" (end-of-turn token) or "length"


SUPPORTED = ("llama",)


def supports(model) -> bool:
    cfg = model.config
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    return (getattr(cfg, "model_type", "") in SUPPORTED and not getattr(cfg, "attention_bias", False)
            and not getattr(cfg, "mlp_bias", False) and rope.get("rope_type", "default") == "default"
            and getattr(cfg, "hidden_act", "silu") == "silu")


class LlamaEngine:
    """Continuous-batching decoder over a loaded `LlamaForCausalLM` (weights copied, model untouched)."""

    def __init__(self, model, dtype: torch.dtype | None = None, quantize: str | None = None):
        if not supports(model):
            raise ValueError(f"LlamaEngine does not support {model.config.model_type!r} models")
        cfg = model.config
        self.dtype = dtype or next(model.parameters()).dtype
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        self.context_length = cfg.max_position_embeddings
        rope = getattr(cfg, "rope_parameters", None) or {}
        theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim))
        if quantize not in (None, "int8"):
            raise ValueError(f"quantize must be None or 'int8', not {quantize!r}")
        self.quantize = quantize
        d = lambda t: t.detach().to(self.dtype).contiguous()
        w = (lambda t: _Int8Weight(t.detach().float())) if quantize else d
        # fused matmuls need the q/k/v (and gate/up) weights side by side; where the engine computes in the
        # model's own dtype, the model's parameters are re-pointed into the fused tensor instead of copied,
        # so the engine costs no second copy of the weights (~400 MB in fp32 for SmolLM2-135M)
        share = quantize is None and next(model.parameters()).dtype == self.dtype

        def fused(*linears):
            weight = torch.cat([linear.weight.detach() for linear in linears])
            if not share:
                return w(weight)
            start = 0
            for linear in linears:
                rows = linear.weight.shape[0]
                linear.weight.data = weight[start:start + rows]
                start += rows
            return weight
        base = model.model
        self.embed = d(base.embed_tokens.weight)
        self.lm_head = w(model.lm_head.weight)
        self.final_norm = d(base.norm.weight)
        self.layers = []
        for layer in base.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append((
                d(layer.input_layernorm.weight),
                fused(a.q_proj, a.k_proj, a.v_proj),
                w(a.o_proj.weight),
                d(layer.post_attention_layernorm.weight),
                fused(m.gate_proj, m.up_proj),
                w(m.down_proj.weight),
            ))
        self._rope_cache = (0, None, None)

    # --------------------------------------------------------------------------- building blocks
    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # as transformers' LlamaRMSNorm: statistics in fp32, scale in the model dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * h.to(x.dtype)

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = int(positions.max()) + 1
        cached, cos, sin = self._rope_cache
        if n > cached:
            size = max(n, 2 * cached, 256)
            freqs = torch.outer(torch.arange(size, dtype=torch.float32), self.inv_freq)
            emb = torch.cat([freqs, freqs], dim=-1)
            cos, sin = emb.cos().to(self.dtype), emb.sin().to(self.dtype)
            self._rope_cache = (size, cos, sin)
        return cos[positions], sin[positions]

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def _mlp(self, x, norm_w, gate_up_w, down_w):
        gate, up = _linear(self._norm(x, norm_w), gate_up_w).chunk(2, dim=-1)
        return x + _linear(F.silu(gate) * up, down_w)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return _linear(self._norm(hidden, self.final_norm), self.lm_head).float()

    # --------------------------------------------------------------------------- forward passes
    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, lengths: torch.Tensor, cache_k=None, cache_v=None, slots=None,
                prefix: tuple[list, list] | None = None, all_positions: bool = False) -> torch.Tensor:
        """Run right-padded prompts [B, T] (real lengths `lengths`); return the last real hidden state [B, hidden]
        (or every position's [B, T, hidden] with `all_positions`).

        With `prefix` (per-layer K and V of shape [1, KV, P, D], a prompt start shared by all rows, e.g. the
        system prompt), the rows continue it from position P. With a cache, K/V land in rows `slots`.
        """
        B, T = tokens.shape
        H, KV, D = self.n_heads, self.n_kv, self.head_dim
        start = prefix[0][0].shape[2] if prefix else 0
        positions = torch.arange(start, start + T).expand(B, T)
        cos, sin = self._rope(positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        if not start and bool((lengths == T).all()):
            mask = None  # no padding and no prefix: SDPA's own causal mask (same numbers, skips masked blocks)
        else:
            valid = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)               # [B, T] real keys
            mask = torch.ones(T, T, dtype=torch.bool).tril().unsqueeze(0) & valid.unsqueeze(1)
            if start:
                mask = torch.cat([torch.ones(B, T, start, dtype=torch.bool), mask], dim=2)
            mask = mask.unsqueeze(1)                                                  # [B, 1, T, start + T]
        x = self.embed[tokens]
        for i, (n1, qkv_w, o_w, n2, gu_w, down_w) in enumerate(self.layers):
            qkv = _linear(self._norm(x, n1), qkv_w).view(B, T, H + 2 * KV, D).transpose(1, 2)
            q, k, v = qkv.split([H, KV, KV], dim=1)
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            if cache_k is not None:
                cache_k[i][slots, :, start:start + T] = k
                cache_v[i][slots, :, start:start + T] = v
            if start:
                k = torch.cat([prefix[0][i].expand(B, -1, -1, -1), k], dim=2)
                v = torch.cat([prefix[1][i].expand(B, -1, -1, -1), v], dim=2)
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                                  enable_gqa=True)
            x = x + _linear(attn.transpose(1, 2).reshape(B, T, H * D), o_w)
            x = self._mlp(x, n2, gu_w, down_w)
        return x if all_positions else x[torch.arange(B), lengths - 1]

    def common_prefix(self, sequences: list[list[int]], minimum: int = 8) -> tuple[int, tuple[list, list] | None]:
        """(P, per-layer K/V) of the start all `sequences` share, or (0, None) when shorter than `minimum`."""
        P = _common_prefix_length(sequences) if len(sequences) > 1 else 0
        return (P, self.shared_prefix(sequences[0][:P])) if P >= minimum else (0, None)

    def shared_prefix(self, prompt_ids: list[int]) -> tuple[list, list]:
        """Per-layer K/V of a prompt start that every request shares, computed once."""
        shape = (1, self.n_kv, len(prompt_ids), self.head_dim)
        keys = [torch.zeros(shape, dtype=self.dtype) for _ in self.layers]
        values = [torch.zeros(shape, dtype=self.dtype) for _ in self.layers]
        self.prefill(torch.tensor([prompt_ids]), torch.tensor([len(prompt_ids)]), keys, values, torch.tensor([0]))
        return keys, values

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, cache_k, cache_v, span: int) -> torch.Tensor:
        """One step for every slot: token [S] at position [S]; attends to cache[:, :, :span]."""
        S = tokens.shape[0]
        H, KV, D = self.n_heads, self.n_kv, self.head_dim
        group = H // KV
        cos, sin = self._rope(positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)                                  # [S, 1, D]
        mask = (torch.arange(span).unsqueeze(0) <= positions.unsqueeze(1)).view(S, 1, 1, span)
        rows = torch.arange(S)
        x = self.embed[tokens]                                                         # [S, hidden]
        for i, (n1, qkv_w, o_w, n2, gu_w, down_w) in enumerate(self.layers):
            qkv = _linear(self._norm(x, n1), qkv_w).view(S, H + 2 * KV, D)
            q, k, v = qkv.split([H, KV, KV], dim=1)
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            cache_k[i][rows, :, positions] = k
            cache_v[i][rows, :, positions] = v
            # one query per row: fold the query heads that share a KV head into the "length" axis,
            # so grouped-query attention needs no copy of K/V
            attn = F.scaled_dot_product_attention(
                q.reshape(S, KV, group, D), cache_k[i][:, :, :span], cache_v[i][:, :, :span], attn_mask=mask)
            x = x + _linear(attn.reshape(S, H * D), o_w)
            x = self._mlp(x, n2, gu_w, down_w)
        return x

    # --------------------------------------------------------------------------- the scheduler
    def run(self, requests: Sequence[Request], stop_ids: Sequence[int], temperature: float = 1.0,
            top_k: int = 0, top_p: float = 1.0, slots: int = 64, prefill_chunk: int = 16,
            min_shared_prefix: int = 8, min_p: float = 0.0) -> Iterator[Finished]:
        """Generate every request; yield each as it finishes (not in request order)."""
        # Longer than ~80 lines on purpose: the scheduler's state (KV caches, slots, seeds, positions) is
        # shared by `record` and `admit` and rebound when finished rows are dropped; split across functions
        # it would travel as a dozen arguments. The engine issue (a profiled, compiled decode step) reshapes it.
        if not requests:
            return
        queue = list(reversed(requests))  # pop() from the end takes requests in the given order
        max_len = max(len(r.prompt_ids) + r.max_new_tokens for r in requests)
        S = max(1, min(slots, len(requests)))
        shape = (S, self.n_kv, max_len, self.head_dim)
        cache_k = [torch.zeros(shape, dtype=self.dtype) for _ in self.layers]
        cache_v = [torch.zeros(shape, dtype=self.dtype) for _ in self.layers]
        active: list[Request | None] = [None] * S
        generated: list[list[int]] = [[] for _ in range(S)]
        seeds = np.zeros(S, dtype=np.uint64)
        positions = torch.zeros(S, dtype=torch.long)   # where the next token's K/V goes
        next_tokens = torch.zeros(S, dtype=torch.long)

        def record(s: int, token: int) -> Finished | None:
            """Append a sampled token to slot s; retire the slot when it stops or hits its budget."""
            r = active[s]
            if token in stop_set:
                active[s] = None
                return Finished(r.key, generated[s], "stop")
            generated[s].append(token)
            if len(generated[s]) >= r.max_new_tokens:
                active[s] = None
                return Finished(r.key, generated[s], "length")
            return None

        # the prompt start all requests share (the chat template's system turn, typically) is run once;
        # each admitted request copies its K/V and runs only the rest of its prompt
        P, prefix = self.common_prefix([r.prompt_ids for r in requests], min_shared_prefix)

        def admit() -> list[Finished]:
            done = []
            free = [s for s in range(len(active)) if active[s] is None]
            while free and queue:
                batch = [(free.pop(0), queue.pop()) for _ in range(min(prefill_chunk, len(free), len(queue)))]
                slot_index = torch.tensor([s for s, _ in batch])
                tokens, lengths = right_padded([r.prompt_ids for _, r in batch], P)
                if prefix:
                    for i in range(len(self.layers)):
                        cache_k[i][slot_index, :, :P] = prefix[0][i]
                        cache_v[i][slot_index, :, :P] = prefix[1][i]
                hidden = self.prefill(tokens, lengths, cache_k, cache_v, slot_index, prefix=prefix)
                for s, r in batch:
                    active[s] = r
                    generated[s] = []
                    seeds[s] = np.uint64(r.seed)
                positions[slot_index] = lengths + P
                u = uniforms(seeds[slot_index.numpy()], np.zeros(len(batch)))
                first = sample_tokens(self.logits(hidden), u, temperature, top_k, top_p, min_p)
                next_tokens[slot_index] = first
                for (s, _), token in zip(batch, first.tolist()):
                    if (f := record(s, token)) is not None:
                        done.append(f)
                        free.append(s)
            return done

        stop_set = set(int(t) for t in stop_ids)
        yield from admit()
        while any(a is not None for a in active):
            span = int(positions.max()) + 1
            hidden = self.decode(next_tokens, positions, cache_k, cache_v, span)
            steps = np.array([len(g) for g in generated])
            u = uniforms(seeds, steps)
            next_tokens = sample_tokens(self.logits(hidden), u, temperature, top_k, top_p, min_p)
            positions = positions + 1
            for s, token in enumerate(next_tokens.tolist()):
                if active[s] is not None and (f := record(s, token)) is not None:
                    yield f
            n_free = sum(a is None for a in active)
            if n_free and queue and (n_free >= max(1, len(active) // 16) or n_free == len(active)):
                yield from admit()
            elif n_free and not queue and n_free * 2 >= len(active):
                # nothing left to admit: drop finished rows from the cache so steps stay small
                keep = [s for s, a in enumerate(active) if a is not None]
                if not keep:
                    break
                index = torch.tensor(keep)
                cache_k = [c.index_select(0, index) for c in cache_k]
                cache_v = [c.index_select(0, index) for c in cache_v]
                active = [active[s] for s in keep]
                generated = [generated[s] for s in keep]
                seeds, positions, next_tokens = seeds[keep], positions[index], next_tokens[index]
            # free (finished, not yet refilled) slots step harmlessly on slot position 0
            for s, a in enumerate(active):
                if a is None:
                    positions[s] = 0


# ------------------------------------------------------------------------------- scoring helpers
# Graders need logits, not text: the judge reads the next-token distribution after a rubric prompt,
# the perplexity grader the log-probability of each completion token. The judge's prompts share their
# start (system turn + rubric), which is run once. Callers reach these through `LoadedModel`
# (`workbench/models.py`), which falls back to transformers where this engine does not apply.


# the scoring passes (judge prompts, perplexity, self-certainty) live in workbench/scoring.py
from .scoring import SCORE_CHUNK, _length_batches, _score, next_token_logits, token_logprobs, token_statistics  # noqa: E402,F401
