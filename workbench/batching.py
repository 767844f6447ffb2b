"""Continuous batching for `LlamaEngine`: the scheduler that keeps the cache rows busy.

    for finished in run_requests(engine, requests, stop_ids, temperature=0.8, top_k=50, top_p=0.95):
        ...

What it does, and why (each point measured in benchmarks/profile_engine.py and benchmarks/bench.py):
  * Requests are admitted shortest prompt first. With the compiled attention kernel a refill's prompts are
    prefilled together, packed end to end in chunks of PREFILL_TOKENS (`LlamaEngine.prefill_packed`): 128
    instruction prompts ran 4,402 real tokens instead of 5,208 padded ones, in 2.7-3.0 s instead of 3.5 s (fp32,
    2 cores). Otherwise (SDPA, or prompts over `engine.PACKED_MAX_TOKENS`) a refill's prefill runs in batches
    of similar length (`scoring._length_batches`): in arrival order a batch of 16 instruction prompts was padded
    to 1.7x its real tokens and its prefill ran at 430 tok/s; sorted, 1.1x and 715 tok/s.
  * The active requests always sit in cache rows 0..n-1. When some finish, the last active rows move into
    their places (a copy of the moved rows' filled positions only), so a decode step works on a contiguous view
    of the cache, never computes a finished row, and no cache is rebuilt to shrink it.
  * Free rows are refilled once at least 1/16 of the slots are free: a prefill of one or two rows runs far
    below the matmul peak, and waiting a few steps costs those rows only.
  * Each row draws its uniforms from a counter-based RNG keyed by its own seed and step (`sampler.uniforms`),
    so in fp32 a sample's tokens do not depend on which requests shared its batch, nor on the admission
    order (bf16 kernels round differently with the batch's shape: there they can).
The number of slots comes from the caller; `default_slots` picks it from the model's KV size and free memory.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from .engine import Finished, Request, right_padded
from .sampler import sample_tokens, uniforms

MAX_SLOTS = 128             # 256 instruction prompts x 128 tokens, fp32, 2 cores: 64 rows 228 tok/s (peak RSS 2.0 GB),
                            # 128 rows 306 (2.7 GB), 256 rows 325 (4.0 GB): the last doubling buys 6% for 1.3 GB
MEMORY_SHARE = 0.25         # share of the available memory the KV cache may take when the caller sets no budget
REFILL_SHARE = 1 / 16       # refill once this share of the slots is free
PREFILL_ROWS = 32           # rows per padded prefill batch (~1,000 prompt tokens: the matmuls run near the peak)
PREFILL_TOKENS = 1024       # tokens per chunk of a packed prefill (the same matmul sizes, no padding)


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def default_slots(kv_bytes_per_slot: int, requests: int, max_cache_bytes: int | None = None) -> int:
    """Cache rows for `requests` requests whose KV cache takes `kv_bytes_per_slot` bytes each: as many as the
    budget holds (`max_cache_bytes`, or `MEMORY_SHARE` of the available memory), at most `MAX_SLOTS` and never
    more than there are requests."""
    budget = max_cache_bytes
    if budget is None:
        available = available_memory_bytes()
        budget = int(MEMORY_SHARE * available) if available else 1 << 30
    fits = budget // max(kv_bytes_per_slot, 1)
    return int(max(1, min(MAX_SLOTS, fits, requests)))


def _packed(engine, batch: list[Request], P: int) -> bool:
    """Whether `batch` is prefilled packed (`LlamaEngine.prefill_packed`) rather than padded."""
    return engine.packs(max(len(r.prompt_ids) for r in batch) - P)


class _Rows:
    """The scheduler's state: a KV cache of `slots` rows whose first n rows hold the active requests; a sampled
    token in `stop_ids` ends its row."""

    def __init__(self, engine, slots: int, length: int, stop_ids: Sequence[int] = ()):
        self.engine = engine
        self.stop_set = {int(t) for t in stop_ids}
        self.cache = engine.new_cache(slots, length)
        self.requests: list[Request] = []          # row i runs requests[i]
        self.generated: list[list[int]] = []       # tokens sampled so far, per row
        self.seeds = np.zeros(slots, dtype=np.uint64)
        self.positions = torch.zeros(slots, dtype=torch.long)    # where the row's next K/V goes
        self.next_tokens = torch.zeros(slots, dtype=torch.long)  # the token the next step feeds

    @property
    def active(self) -> int:
        return len(self.requests)

    @property
    def free(self) -> int:
        return self.seeds.shape[0] - len(self.requests)

    def admit(self, batch: list[Request], P: int, prefix, sample) -> list[int]:
        """Prefill `batch` into the rows after the active ones; returns the rows whose first token ends them."""
        first_row = self.active
        rows = slice(first_row, first_row + len(batch))
        if prefix is not None:
            for layer, shared in zip(self.cache, prefix):
                layer[rows, :, :P] = shared
        if _packed(self.engine, batch, P):
            hidden = self.engine.prefill_packed([r.prompt_ids[P:] for r in batch], self.cache, first_row, P,
                                                PREFILL_TOKENS)
            lengths = torch.tensor([len(r.prompt_ids) - P for r in batch])
        else:
            tokens, lengths = right_padded([r.prompt_ids for r in batch], P)
            hidden = self.engine.prefill(tokens, lengths, self.cache, rows, prefix=prefix)
        self.requests.extend(batch)
        self.generated.extend([] for _ in batch)
        self.seeds[rows] = [r.seed for r in batch]
        self.positions[rows] = lengths + P
        first = sample(hidden, self.seeds[rows], np.zeros(len(batch)))
        self.next_tokens[rows] = first
        return [row for row, token in zip(range(first_row, first_row + len(batch)), first.tolist())
                if self.record(row, token)]

    def step(self, sample) -> list[int]:
        """One decode step for the active rows; returns the rows that finished."""
        n = self.active
        positions = self.positions[:n]
        hidden = self.engine.decode(self.next_tokens[:n], positions, self.cache, int(positions.max()) + 1)
        steps = np.fromiter((len(g) for g in self.generated), dtype=np.int64, count=n)
        tokens = sample(hidden, self.seeds[:n], steps)
        self.positions[:n] += 1
        self.next_tokens[:n] = tokens
        return [row for row, token in enumerate(tokens.tolist()) if self.record(row, token)]

    def record(self, row: int, token: int) -> bool:
        """Append a sampled token to `row`; True when the row's request is done (stop token or budget)."""
        if token in self.stop_set:
            self.generated[row].append(None)  # marks "stop" for `finish`
            return True
        self.generated[row].append(token)
        return len(self.generated[row]) >= self.requests[row].max_new_tokens

    def finish(self, rows: list[int]) -> list[Finished]:
        """Retire `rows`: their results, and the last active rows moved into their places."""
        out = []
        for row in rows:
            tokens = self.generated[row]
            stopped = bool(tokens) and tokens[-1] is None
            out.append(Finished(self.requests[row].key, tokens[:-1] if stopped else tokens,
                                "stop" if stopped else "length"))
        done = set(rows)
        remaining = self.active - len(done)
        holes = [row for row in sorted(done) if row < remaining]
        movers = [row for row in range(remaining, self.active) if row not in done]
        if holes:
            src, dst = torch.tensor(movers), torch.tensor(holes)
            width = int(self.positions[src].max())  # positions 0..width-1 hold K/V
            for layer in self.cache:
                layer[dst, :, :width] = layer[src, :, :width]
            self.positions[dst] = self.positions[src]
            self.next_tokens[dst] = self.next_tokens[src]
            self.seeds[holes] = self.seeds[movers]
            for h, m in zip(holes, movers):
                self.requests[h], self.generated[h] = self.requests[m], self.generated[m]
        del self.requests[remaining:], self.generated[remaining:]
        return out


def run_requests(engine, requests: Sequence[Request], stop_ids: Sequence[int], temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, slots: int = 64,
                 min_shared_prefix: int = 8) -> Iterator[Finished]:
    """Generate every request on `engine` with `slots` cache rows; yield each as it finishes (not in order)."""
    from .scoring import _length_batches

    if not requests:
        return
    # shortest prompt first (stable): consecutive admissions have similar lengths, so prefills pad little
    queue = sorted(requests, key=lambda r: len(r.prompt_ids), reverse=True)  # pop() takes from the end
    length = max(len(r.prompt_ids) + r.max_new_tokens for r in requests)
    slots = max(1, min(slots, len(requests)))
    state = _Rows(engine, slots, length, stop_ids)

    def sample(hidden, seeds, steps):
        return sample_tokens(engine.logits(hidden), uniforms(seeds, steps), temperature, top_k, top_p, min_p)

    # the prompt start all requests share (the chat template's system turn, typically) is run once;
    # each admitted request copies its K/V and runs only the rest of its prompt
    P, prefix = engine.common_prefix([r.prompt_ids for r in requests], min_shared_prefix)

    def refill() -> Iterator[Finished]:
        while queue and state.free:
            taken = [queue.pop() for _ in range(min(state.free, len(queue)))]
            if _packed(engine, taken, P):  # all in one packed prefill, in chunks of PREFILL_TOKENS
                yield from state.finish(state.admit(taken, P, prefix, sample))
                continue
            for index in _length_batches([len(r.prompt_ids) - P for r in taken], PREFILL_ROWS):
                yield from state.finish(state.admit([taken[i] for i in index], P, prefix, sample))

    yield from refill()
    while state.active:
        yield from state.finish(state.step(sample))
        if queue and (state.free >= max(1, int(REFILL_SHARE * slots)) or not state.active):
            yield from refill()
