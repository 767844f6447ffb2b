"""The matmul-only ceiling of a workload: how fast it could run if everything but its matmuls took no time.

    with MatmulLog() as log:
        generate(prompts, model=lm, ...)           # the engine runs as usual; every matmul's shape is counted
    seconds = replay_seconds(log.shapes, lm.model.dtype)

`MatmulLog` wraps the engine's three matmul entry points (`workbench.engine._linear`, `_linear_add`,
`_swiglu`) and counts each call's (rows, in, out) shape; `replay_seconds` then runs each distinct shape alone, on
random data, through the same dispatch (oneDNN; bf16 weights reordered as the engine's, gate and up as one matmul),
best of 3 after a warm-up, and sums count x time. The result is a floor on the workload's time at the shapes its scheduler chose (a shrinking batch's
small decode steps included) and so a ceiling on its share of the machine's matmul peak: attention, sampling,
norms, rotary and Python are all counted as free, and each matmul runs with its operands as warm as a tight loop
leaves them. bench.py reports it beside each measured share (README: Speed).

The log also counts the bytes of KV cache the attention kernel (`workbench.kernels.decode_attention`) reads: each
cache row up to the furthest position a query of the call reads in it, once per call (the queries of a packed prefill
share their row's reads). Attention cannot stream them faster than the machine reads memory, so bench.py adds those
bytes at the measured read rate to the matmul floor for a second, tighter ceiling.
"""
from __future__ import annotations

from collections import Counter


class MatmulLog:
    """Count the (rows, in_features, out_features) of every matmul the engine runs inside the `with` block."""

    def __init__(self):
        self.shapes: Counter = Counter()
        self.kv_bytes = 0   # KV cache read by the attention kernel (each row once per call, up to its furthest query)

    def __enter__(self):
        import torch

        from workbench import engine, kernels

        self._engine, self._saved = engine, {name: getattr(engine, name) for name in ("_linear", "_linear_add", "_swiglu")}
        self._kernels, self._attention = kernels, kernels.decode_attention

        def attention(q, layer, positions, groups, rows=None):
            # positions read per cache row: up to its furthest query (a decode step: each row's own position)
            read = positions + 1 if rows is None else torch.zeros(layer.shape[0], dtype=torch.long).scatter_reduce(
                0, rows, positions + 1, "amax")
            per_position = layer.shape[1] * layer.shape[3] * layer.element_size()  # K and V of every KV head
            self.kv_bytes += int(read.sum()) * per_position
            return self._attention(q, layer, positions, groups, rows)

        kernels.decode_attention = attention

        # the patched names are the engine's: the fallbacks inside workbench/matmul.py call matmul's own _linear,
        # so a fused call is counted once
        def recorded(original):
            def call(x, weight, *rest):
                out_features = getattr(weight, "shape", None) or weight.qweight_t.shape[::-1]
                self.shapes[(x.numel() // x.shape[-1], x.shape[-1], out_features[0])] += 1
                return original(x, weight, *rest)
            return call

        for name, original in self._saved.items():
            setattr(engine, name, recorded(original))
        return self

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            setattr(self._engine, name, original)
        self._kernels.decode_attention = self._attention
        return False

    @property
    def flops(self) -> int:
        return sum(2 * m * k * n * count for (m, k, n), count in self.shapes.items())


def replay_seconds(shapes: Counter, dtype, repeats: int = 3) -> float:
    """Sum over distinct shapes of count x (best of `repeats` timed runs of that matmul alone, after one warm-up)."""
    import torch

    from common import best_seconds
    from workbench.matmul import _linear, _prepacked

    total = 0.0
    weights: dict = {}
    for (m, k, n), count in sorted(shapes.items()):
        if (n, k) not in weights:
            weights[(n, k)] = _prepacked(torch.randn(n, k, dtype=dtype) * k ** -0.5)  # laid out as the engine's
        x, weight = torch.randn(m, k, dtype=dtype), weights[(n, k)]
        total += count * best_seconds(lambda: _linear(x, weight), repeats)
    return total
