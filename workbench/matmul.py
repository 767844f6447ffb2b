"""The engine's matmuls: on oneDNN (fp32 on the plain weights, bf16 on weights reordered once into its layout),
the elementwise op after a matmul as its post-op, and int8 (W8A8).

    out = _linear(x, weight)                  # x @ weight.T (oneDNN in fp32 and bf16, int8 for _Int8Weight)
    x = _linear_add(h, o_proj, x)             # x + h @ o_proj.T, the residual add fused into the matmul (fp32)
    act = _swiglu(h, gate_up)                 # silu(h @ gate.T) * (h @ up.T), gate and up stacked (or a _GateUp)

`workbench/engine.py` calls these three and nothing else for its matmuls (benchmarks/matmul_ceiling.py counts
them there). In fp32 and int8 a row's result does not depend on the other rows of its batch (tests); in bf16 it
may, by a rounding step (oneDNN picks its blocking by batch size).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F


class _Int8Weight:
    """A weight quantized to int8 per output channel, for W8A8 matmuls with per-row activation scales.

    Activations are quantized per row (token), so a row's result never depends on the other rows
    in its batch (fbgemm's dynamic quantization uses one scale per batch, which would).
    """

    def __init__(self, weight: torch.Tensor):
        self.scale = weight.abs().amax(dim=1).clamp_min(1e-8) / 127.0            # [out]
        self.qweight_t = torch.round(weight / self.scale[:, None]).to(torch.int8).t().contiguous()  # [in, out]


# fp32 matmuls through oneDNN rather than torch's default BLAS: ATen sends fp32 `F.linear` to MKL, which on this
# AMD EPYC reaches ~200 GFLOP/s on a 2048^2 GEMM where oneDNN (the library torch already uses for bf16) reaches
# ~460, in true fp32 (an input not representable in bf16 comes out exact; errors vs float64 are of the same order
# as MKL's). It takes the plain weight (no repacked copy, so no extra memory) and any leading dims. bf16 `F.linear`
# already runs on oneDNN. `WORKBENCH_FP32_MATMUL=torch` switches back (benchmarks compare the two).
_ONEDNN_FP32 = (os.environ.get("WORKBENCH_FP32_MATMUL", "onednn") == "onednn" and torch.backends.mkldnn.is_available()
                and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


# bf16 weights in oneDNN's own blocked layout, reordered once when the engine is built instead of inside every
# matmul: a copy of the weights (SmolLM2-135M: 270 MB), F.linear's numbers (bit for bit at most batch sizes, a last-bit
# rounding step in ~0.005% of the outputs at some: tests), faster at a decode step's shapes
# (AMX machine, 128 rows, hot: the fused QKV 1,017 -> 1,512 GFLOP/s, gate/up 964 -> 1,150, the LM head 700 -> 1,014),
# as fast on a scoring pass's thousands of rows. fp32 is not reordered: its copy would be 540 MB, against the engine's
# promise to share the model's fp32 weights (models.py). `WORKBENCH_PREPACK=0` turns it off.
PREPACK_ROWS = 128          # the batch size oneDNN lays the weights out for (a decode step's; any batch size runs)
_PREPACK_BF16 = (os.environ.get("WORKBENCH_PREPACK", "1") != "0" and torch.backends.mkldnn.is_available()
                 and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
                 and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def _prepacked(weight: torch.Tensor) -> torch.Tensor:
    """`weight` [out, in] reordered into oneDNN's blocked layout where that applies (bf16), else as given."""
    if _PREPACK_BF16 and weight.dtype == torch.bfloat16 and not weight.is_mkldnn:
        return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), PREPACK_ROWS)
    return weight


class _GateUp:
    """The gate and up weights of a SwiGLU MLP, each reordered for oneDNN (`_prepacked`; a reordered weight cannot
    be sliced, so they are not stacked), for `_swiglu`'s post-ops. `shape` is the stacked weight's."""

    def __init__(self, gate_up: torch.Tensor):
        inter = gate_up.shape[0] // 2
        self.gate, self.up = _prepacked(gate_up[:inter]), _prepacked(gate_up[inter:])
        self.shape = gate_up.shape


def _prepacked_gate_up(gate_up: torch.Tensor):
    """Stacked gate/up weights [2 x inter, hidden] as a `_GateUp` where bf16 weights are reordered, else as given."""
    return _GateUp(gate_up) if _PREPACK_BF16 and gate_up.dtype == torch.bfloat16 else gate_up


def _on_onednn(x: torch.Tensor, weight) -> bool:
    """True where the matmul x @ weight.T runs on oneDNN here: fp32, not int8, not empty."""
    return _ONEDNN_FP32 and x.dtype == torch.float32 and not isinstance(weight, _Int8Weight) and bool(x.numel())


def _linear(x: torch.Tensor, weight) -> torch.Tensor:
    if isinstance(weight, torch.Tensor) and weight.is_mkldnn:  # `_prepacked`: oneDNN's layout, only oneDNN reads it
        if not x.numel():
            return x.new_empty(*x.shape[:-1], weight.shape[0])
        return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")
    if _on_onednn(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")
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


# The elementwise op after a matmul, done by oneDNN as the matmul writes its output (a "post-op") instead of by a
# second pass over it: the residual add after o_proj and down_proj, SiLU on the gate and the product with up.
# Measured on 1,024 prefill rows of SmolLM2's MLP (fp32, 2 cores): 16.5 -> 13.4 ms; same numbers to ~2e-7 relative.


def _linear_add(x: torch.Tensor, weight, residual: torch.Tensor) -> torch.Tensor:
    """residual + x @ weight.T"""
    if _on_onednn(x, weight):
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, None, "add")
    return residual + _linear(x, weight)


def _swiglu(x: torch.Tensor, gate_up) -> torch.Tensor:
    """silu(x @ gate.T) * (x @ up.T), with gate and up stacked in one weight [2 x inter, hidden] (or reordered, a
    `_GateUp`: bf16, where the post-ops took SmolLM2's MLP from 0.97 to 0.85 ms on 128 rows, 18.6 to 15.6 ms on
    4,096, against the stacked matmul and the SwiGLU kernel; silu and the product then act on the unrounded
    products, so the numbers are not torch's bf16 ops' to the bit)."""
    if isinstance(gate_up, _GateUp):
        if not x.numel():
            return x.new_empty(*x.shape[:-1], gate_up.shape[0] // 2)
        gate = torch.ops.mkldnn._linear_pointwise(x, gate_up.gate, None, "swish", [], "")
        return torch.ops.mkldnn._linear_pointwise.binary(x, gate, gate_up.up, None, "mul")
    if _on_onednn(x, gate_up):
        inter = gate_up.shape[0] // 2
        gate = torch.ops.mkldnn._linear_pointwise(x, gate_up[:inter], None, "swish", [], "")
        return torch.ops.mkldnn._linear_pointwise.binary(x, gate, gate_up[inter:], None, "mul")
    gate, up = _linear(x, gate_up).chunk(2, dim=-1)
    return F.silu(gate) * up
