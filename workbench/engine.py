"""A small decoder for Llama-architecture models (SmolLM2 among them): the forward passes behind generation
(`prefill`, `decode`, `logits`) and the scoring passes (`workbench/scoring.py`); the continuous-batching
scheduler that drives it lives in `workbench/batching.py`.

Why not `model.generate`: on this 2-core CPU, HF's batched generate spends most of each step on
per-step Python and cache bookkeeping (its dynamic KV cache grows by concatenation), keeps stepping
rows that already finished, and samples over the full vocabulary with a sort. This engine
  * holds a preallocated KV cache, one request per row, each at its own position, K and V of a layer in
    one tensor (written once per layer and step);
  * runs the model's weights with fused QKV and gate/up matmuls on oneDNN, SwiGLU done as the matmuls' post-ops:
    in bf16 on weights reordered once into its layout (`matmul._prepacked`), in fp32 on the model's own, with the
    residual adds as post-ops too; and computes logits only for the positions it samples from;
  * attends, in a decode step, with a small compiled kernel (`workbench/kernels.py`) that reads each row's
    K/V only up to its own position; RMSNorm and rotary (with the cache write) are compiled too
    (SDPA and torch's ops where no C compiler is found);
  * prefills prompts for generation packed end to end, without padding, through the decode pass itself
    (`prefill_packed`: each token attends to its row's cache up to its own position), and runs the scoring
    passes packed too (`forward_packed`); prompts over PACKED_MAX_TOKENS take the padded `prefill` with SDPA;
  * draws one uniform per row per step from a counter-based RNG keyed by the sample's own seed
    (`workbench/sampler.py`), so in fp32 a sample's text does not depend on which other requests shared its batch (in bf16 the
    kernels round differently with the batch's shape, and texts drift apart: README, Speed).
Its forward pass matches transformers' to float precision (tests compare logits and greedy text).
Other architectures use HF `generate` (see `workbench/sampling.py`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from . import kernels
from .matmul import (_GateUp, _Int8Weight, _linear, _linear_add, _prepacked,  # noqa: F401 (int8_gate)
                     _prepacked_gate_up, _swiglu)


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
PACKED_MAX_TOKENS = 1024    # sequences up to this many tokens (after a shared prefix) run packed: equal-length
                            # prompts, packed vs padded + SDPA, 2 cores: 64 tokens 0.87x the time, 128-1,024
                            # 0.91-0.99x; a packed query reads its row's cache alone (SDPA blocks queries), so not longer


def supports(model) -> bool:
    cfg = model.config
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    return (getattr(cfg, "model_type", "") in SUPPORTED and not getattr(cfg, "attention_bias", False)
            and not getattr(cfg, "mlp_bias", False) and rope.get("rope_type", "default") == "default"
            and getattr(cfg, "hidden_act", "silu") == "silu")


class LlamaEngine:
    """Continuous-batching decoder over a loaded `LlamaForCausalLM` (weights copied, model untouched)."""

    def __init__(self, model, dtype: torch.dtype | None = None, quantize: str | None = None,
                 attention: str | None = None):
        if not supports(model):
            raise ValueError(f"LlamaEngine does not support {model.config.model_type!r} models")
        cfg = model.config
        self.dtype = dtype or next(model.parameters()).dtype
        # decode attention: the compiled kernel (`workbench.kernels`) where it builds, else torch's SDPA
        if attention not in (None, "kernel", "sdpa"):
            raise ValueError(f"attention must be None, 'kernel' or 'sdpa', not {attention!r}")
        if attention is None:
            attention = "kernel" if self.dtype in kernels.DTYPES and kernels.available() else "sdpa"
        elif attention == "kernel" and self.dtype not in kernels.DTYPES:
            raise ValueError(f"the decode-attention kernel reads fp32 and bf16 caches, not {self.dtype}: "
                             "use attention='sdpa' (or None)")
        elif attention == "kernel" and not kernels.available():
            raise RuntimeError(f"the decode-attention kernel is unavailable: {kernels.unavailable_reason()}")
        self.attention = attention
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
        # matmul weights: int8, or in the engine's dtype (bf16 reordered for oneDNN, `matmul._prepacked`)
        w = (lambda t: _Int8Weight(t.detach().float())) if quantize else (lambda t: _prepacked(d(t)))
        # fused matmuls need the q/k/v (and gate/up) weights side by side; where the engine computes in the
        # model's own dtype, the model's parameters are re-pointed into the fused tensor instead of copied,
        # so in fp32 the engine costs no second copy of the weights (~400 MB for SmolLM2-135M); in bf16 it keeps
        # oneDNN's reordered copy (~270 MB), which made a decode step's matmuls 15-50% faster
        share = quantize is None and next(model.parameters()).dtype == self.dtype

        def fused(*linears, pack=_prepacked):
            weight = torch.cat([linear.weight.detach() for linear in linears])
            if not share:
                return pack(d(weight)) if not quantize else w(weight)
            start = 0
            for linear in linears:
                rows = linear.weight.shape[0]
                linear.weight.data = weight[start:start + rows]
                start += rows
            return pack(weight)
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
                fused(m.gate_proj, m.up_proj, pack=_prepacked_gate_up),
                w(m.down_proj.weight),
            ))
        self._rope_cache = (0, None, None)

    @property
    def compiled(self) -> bool:
        """Whether the compiled kernels run attention, RMSNorm and rotary (with the decode step's cache write);
        else SDPA and torch's ops."""
        return self.attention == "kernel"

    # --------------------------------------------------------------------------- building blocks
    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.compiled:
            return kernels.rms_norm(x, weight, self.eps)
        # as transformers' LlamaRMSNorm: statistics in fp32, scale in the model dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * h.to(x.dtype)

    def _rope_tables(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [>= n, D] in the engine's dtype, as transformers builds them (grown by doubling)."""
        cached, cos, sin = self._rope_cache
        if n > cached:
            size = max(n, 2 * cached, 256)
            freqs = torch.outer(torch.arange(size, dtype=torch.float32), self.inv_freq)
            emb = torch.cat([freqs, freqs], dim=-1)
            cos, sin = emb.cos().to(self.dtype), emb.sin().to(self.dtype)
            self._rope_cache = (size, cos, sin)
        return cos, sin

    def _rope(self, positions: torch.Tensor) -> tuple:
        """What `_qkv` needs to rotate rows at `positions` (any shape): for the compiled kernel the flat positions
        and the tables, for torch's ops cos and sin gathered at the positions."""
        cos, sin = self._rope_tables(int(positions.max()) + 1)
        if self.compiled:
            return positions.reshape(-1).contiguous(), cos, sin
        return cos[positions], sin[positions]

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def _mlp(self, x, norm_w, gate_up_w, down_w):
        h = self._norm(x, norm_w)
        if self.compiled and x.dtype == torch.bfloat16 and not isinstance(gate_up_w, _GateUp):
            # bf16 gate/up not reordered for oneDNN (int8, WORKBENCH_PREPACK=0): the SwiGLU kernel; else its post-ops
            act = kernels.swiglu(_linear(h, gate_up_w))
        else:
            act = _swiglu(h, gate_up_w)
        return _linear_add(act, down_w, x)

    def logits(self, hidden: torch.Tensor, float32: bool = True) -> torch.Tensor:
        """The LM head's logits of `hidden`, in fp32 (`float32=False`: in the engine's dtype, no fp32 copy)."""
        logits = _linear(self._norm(hidden, self.final_norm), self.lm_head)
        return logits.float() if float32 else logits

    # --------------------------------------------------------------------------- forward passes
    # The KV cache of a layer is one tensor [rows, 2 x KV heads, length, head_dim]: keys in the first KV heads,
    # values in the rest. The fused QKV matmul already lays K and V side by side, so a step writes both with
    # one indexed copy per layer.
    def new_cache(self, rows: int, length: int) -> list[torch.Tensor]:
        """An empty per-layer KV cache of `rows` x `length` positions."""
        return [torch.zeros(rows, 2 * self.n_kv, length, self.head_dim, dtype=self.dtype) for _ in self.layers]

    def _qkv(self, x: torch.Tensor, norm_w, qkv_w, rope: tuple, head_axis: int, cache=None) -> torch.Tensor:
        """Fused QKV of x with rotary (`rope`, from `_rope`) applied to Q and K in place: [..., H + 2 KV, ..., D]
        with heads on `head_axis` (1 for [B, heads, T, D], -2 for [S, heads, D]). With `cache` (compiled path only: a
        decode step's layer and its tokens' cache rows, None for rows 0..S-1) each token's K and V are written to
        its cache row at its position."""
        H, KV, D = self.n_heads, self.n_kv, self.head_dim
        qkv = _linear(self._norm(x, norm_w), qkv_w)
        qkv = qkv.view(*x.shape[:-1], H + 2 * KV, D)
        if self.compiled:
            layer, rows = cache if cache is not None else (None, None)
            kernels.rotary(qkv.view(-1, H + 2 * KV, D), *rope, rotate=H + KV, cache=layer, rows=rows)
        if head_axis == 1:
            qkv = qkv.transpose(1, 2)
        if not self.compiled:
            qk = qkv.narrow(head_axis, 0, H + KV)
            qk.copy_(self._rotate(qk, *rope))
        return qkv

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, lengths: torch.Tensor, cache: list | None = None, slots=None,
                prefix: list | None = None, all_positions: bool = False) -> torch.Tensor:
        """Run right-padded prompts [B, T] (real lengths `lengths`); return the last real hidden state [B, hidden]
        (or every position's [B, T, hidden] with `all_positions`).

        With `prefix` (per-layer K/V of shape [1, 2 KV, P, D], a prompt start shared by all rows, e.g. the
        system prompt), the rows continue it from position P. With a cache, K/V land in rows `slots`.
        """
        B, T = tokens.shape
        H, KV = self.n_heads, self.n_kv
        start = prefix[0].shape[2] if prefix else 0
        rope = self._rope(torch.arange(start, start + T).expand(B, T))
        if not self.compiled:
            rope = tuple(t.unsqueeze(1) for t in rope)                                # [B, 1, T, D]
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
            qkv = self._qkv(x, n1, qkv_w, rope, head_axis=1)                          # [B, H + 2 KV, T, D]
            q, kv = qkv[:, :H], qkv[:, H:]
            if cache is not None:
                cache[i][slots, :, start:start + T] = kv
            if start:
                kv = torch.cat([prefix[i].expand(B, -1, -1, -1), kv], dim=2)
            attn = F.scaled_dot_product_attention(q, kv[:, :KV], kv[:, KV:], attn_mask=mask, is_causal=mask is None,
                                                  enable_gqa=True)
            x = _linear_add(attn.transpose(1, 2).reshape(B, T, H * self.head_dim), o_w, x)
            x = self._mlp(x, n2, gu_w, down_w)
        return x if all_positions else x[torch.arange(B), lengths - 1]

    def packs(self, longest: int) -> bool:
        """Whether sequences of up to `longest` tokens (after a shared prefix) run packed (`prefill_packed`,
        `forward_packed`): with the compiled kernels, up to PACKED_MAX_TOKENS."""
        return self.compiled and longest <= PACKED_MAX_TOKENS

    def _packed(self, sequences: list[list[int]], start: int, first_row: int) -> tuple:
        """Sequences end to end: tokens, positions (start, start + 1, ... per sequence), cache rows (first_row + i
        for sequence i) [N], and lengths [B]."""
        if not self.compiled:
            raise ValueError("a packed pass needs the compiled attention kernel (use prefill)")
        lengths = torch.tensor([len(seq) for seq in sequences], dtype=torch.long)
        if not len(sequences) or int(lengths.min()) < 1:
            raise ValueError("a packed pass needs at least one token per sequence")
        tokens = torch.tensor([token for seq in sequences for token in seq])
        rows = torch.repeat_interleave(torch.arange(first_row, first_row + len(sequences)), lengths)
        positions = torch.cat([torch.arange(start, start + int(n)) for n in lengths])
        return tokens, positions, rows, lengths

    @torch.inference_mode()
    def prefill_packed(self, sequences: list[list[int]], cache: list, first_row: int, start: int = 0,
                       chunk: int = 1024) -> torch.Tensor:
        """Prefill for generation with the compiled attention kernel: sequence i's tokens go to cache row
        first_row + i at positions start, start + 1, ... (positions < start, e.g. a shared prefix, already in the
        cache); returns each sequence's last hidden state [B, hidden].

        The prompts are packed end to end, without padding, and run through `decode` in chunks of `chunk`
        tokens (a chunk may end inside a prompt: the next one reads that prompt's K/V from the cache). Against
        right-padded batches with SDPA: no padded rows (128 instruction prompts: 4,402 real tokens, 5,208 padded)
        and no per-layer mask and prefix copy."""
        tokens, positions, rows, lengths = self._packed(sequences, start, first_row)
        last = lengths.cumsum(0) - 1                                                    # each sequence's last token
        out = torch.empty(len(sequences), self.embed.shape[1], dtype=self.dtype)
        for c in range(0, tokens.shape[0], chunk):
            hidden = self.decode(tokens[c:c + chunk], positions[c:c + chunk], cache, rows=rows[c:c + chunk])
            ends = (last >= c) & (last < c + chunk)
            out[ends] = hidden[last[ends] - c]
        return out

    @torch.inference_mode()
    def forward_packed(self, sequences: list[list[int]], start: int = 0, prefix: list | None = None) -> torch.Tensor:
        """Hidden states [total tokens, hidden] of every token of `sequences`, end to end (each sequence continuing
        `prefix`, the per-layer K/V of `start` shared positions, if given): the scoring passes' forward with the
        compiled attention kernel, without padding. Every token goes through a layer before the next layer, so
        one layer's K/V serves as the whole cache (`_OneLayerCache`)."""
        tokens, positions, rows, lengths = self._packed(sequences, start, 0)
        scratch = torch.empty(len(sequences), 2 * self.n_kv, start + int(lengths.max()), self.head_dim,
                              dtype=self.dtype)
        return self.decode(tokens, positions, _OneLayerCache(scratch, prefix), rows=rows)

    def common_prefix(self, sequences: list[list[int]], minimum: int = 8) -> tuple[int, list | None]:
        """(P, per-layer K/V) of the start all `sequences` share, or (0, None) when shorter than `minimum`."""
        P = _common_prefix_length(sequences) if len(sequences) > 1 else 0
        return (P, self.shared_prefix(sequences[0][:P])) if P >= minimum else (0, None)

    def shared_prefix(self, prompt_ids: list[int]) -> list[torch.Tensor]:
        """Per-layer K/V [1, 2 KV, P, D] of a prompt start that every request shares, computed once."""
        cache = self.new_cache(1, len(prompt_ids))
        self.prefill(torch.tensor([prompt_ids]), torch.tensor([len(prompt_ids)]), cache, slice(0, 1))
        return cache

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, cache: list, span: int | None = None,
               rows: torch.Tensor | None = None) -> torch.Tensor:
        """One step for rows 0..S-1 of the cache: token [S] at position [S]; attends to cache[:S, :, :span].

        With `rows` [S] (the compiled attention kernel only), token s belongs to cache row rows[s] instead, and
        several tokens may share a row: `prefill_packed` runs prompts through this same pass, each token seeing
        its row's cache up to its own position (K/V of a layer are written before any token reads them)."""
        S = tokens.shape[0]
        if rows is not None and not self.compiled:
            raise ValueError("decode(rows=...) needs the compiled attention kernel; SDPA attends row s to cache row s")
        H, KV, D = self.n_heads, self.n_kv, self.head_dim
        group = H // KV
        rope = self._rope(positions)
        if not self.compiled:  # SDPA: an additive float mask, built once per step (it converts a boolean one per layer)
            rope = tuple(t.unsqueeze(1) for t in rope)                                # [S, 1, D]
            visible = (torch.arange(span).unsqueeze(0) <= positions.unsqueeze(1)).view(S, 1, 1, span)
            mask = torch.zeros(S, 1, 1, span, dtype=self.dtype).masked_fill_(~visible, float("-inf"))
            every_row = torch.arange(S)
        x = self.embed[tokens]                                                         # [S, hidden]
        for i, (n1, qkv_w, o_w, n2, gu_w, down_w) in enumerate(self.layers):
            layer = cache[i]
            if self.compiled:  # the rotary kernel writes K and V to the cache; each token attends to its own row's
                # cache up to its own position
                qkv = self._qkv(x, n1, qkv_w, rope, head_axis=-2, cache=(layer, rows))  # [S, H + 2 KV, D]
                attn = kernels.decode_attention(qkv[:, :H], layer, positions, group, rows)
            else:  # one query per row: the query heads that share a KV head folded into SDPA's "length" axis,
                # so grouped-query attention needs no copy of K/V
                qkv = self._qkv(x, n1, qkv_w, rope, head_axis=-2)
                layer[every_row, :, positions] = qkv[:, H:]
                attn = F.scaled_dot_product_attention(
                    qkv[:, :H].reshape(S, KV, group, D), layer[:S, :KV, :span], layer[:S, KV:, :span],
                    attn_mask=mask).reshape(S, H * D)
            x = _linear_add(attn, o_w, x)
            x = self._mlp(x, n2, gu_w, down_w)
        return x

    def run(self, requests: Sequence[Request], stop_ids: Sequence[int], temperature: float = 1.0,
            top_k: int = 0, top_p: float = 1.0, slots: int = 64, min_shared_prefix: int = 8,
            min_p: float = 0.0) -> Iterator[Finished]:
        """Generate every request with continuous batching (`workbench.batching`); yield each as it finishes
        (not in request order)."""
        from .batching import run_requests

        return run_requests(self, requests, stop_ids, temperature, top_k, top_p, min_p, slots, min_shared_prefix)


class _OneLayerCache:
    """`decode`'s per-layer cache for a pass that runs every token through a layer before the next
    (`forward_packed`): one tensor serves every layer, and layer i's shared-prefix K/V are copied into it first."""

    def __init__(self, scratch: torch.Tensor, prefix: list | None):
        self.scratch, self.prefix = scratch, prefix

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.prefix is not None:
            self.scratch[:, :, :self.prefix[i].shape[2]] = self.prefix[i]
        return self.scratch


# ------------------------------------------------------------------------------- scoring helpers
# Graders need logits, not text: the judge reads the next-token distribution after a rubric prompt,
# the perplexity grader the log-probability of each completion token. The judge's prompts share their
# start (system turn + rubric), which is run once. Callers reach these through `LoadedModel`
# (`workbench/models.py`), which falls back to transformers where this engine does not apply.


# the scoring passes (judge prompts, perplexity, self-certainty) live in workbench/scoring.py
from .scoring import SCORE_CHUNK, _length_batches, _score, next_token_logits, token_logprobs, token_statistics  # noqa: E402,F401
