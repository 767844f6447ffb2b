"""The engine's compiled C kernels: attention over the KV cache, RMSNorm, rotary, bf16 SwiGLU, top-k, and the
scoring passes' log-probabilities.

    out = decode_attention(q, cache_layer, positions, groups, rows)  # a decode step's (or packed prefill's) attention
    h = rms_norm(x, weight, eps)                                     # transformers' LlamaRMSNorm, fp32 or bf16
    rotary(qkv, positions, cos, sin, rotate, cache, rows)            # rotary on Q and K in place; K, V into the cache
    act = swiglu(gate_up)                                            # silu(gate) * up in bf16 (fp32: a post-op)
    values, index = topk(logits, k)                                  # the sampler's top-k, as torch.topk
    token_logprobs(logits, targets, chosen, mean)                    # log p of targets (and the vocabulary mean)

Why: in a decode step each row attends with one query (three, with SmolLM2's grouped-query heads) to its own
cache, so attention is a stream over the KV cache, not a GEMM. torch's SDPA ran it at ~12 GB/s here (its flash
kernel is built for blocks of queries) and reads every row up to the longest row's position: on 128 rows x 112
positions, 1.5-2.0 ms a layer, 25% of a decode step. This kernel reads each row's K and V once, only up to that
row's own position, asking for the next data before it needs it: 0.65 ms a layer on 128 rows x 90 positions (2
cores, cold cache, fp32). Given a cache row per query, the same call serves a packed prefill (several queries per
row, each up to its own position), where a row's queries run as tiles against its keys and values converted once,
the multiply-adds of a tile sharing each load as a GEMM's micro-kernel does (a self-judge batch, 4,072 queries:
bf16 9.3 -> 5.7 ms, fp32 12.9 -> 6.2 ms). RMSNorm and rotary are elementwise passes that torch runs as five or six
ops each (a pass and a temporary per op); in C they are one pass, and rotary also writes the step's K and V into
the cache (the indexed copy it replaces cost as much as the rotation): together ~10 ms of a ~115 ms decode step
at 128 rows. The log-probability kernel does logsumexp, the target's logit and the vocabulary mean in two passes
over a row of logits, ~3.5x torch's ops.

They are C, compiled on first use with the machine's C compiler (`cc -O3 -march=native -ffast-math -fopenmp`,
well under a second) into `<data dir>/kernels/`, and loaded with ctypes: no torch headers, no build step at
install. Rows run on torch's own OpenMP threads: the library's libgomp.so.1 resolves to the one torch loaded
(with Python threads instead, torch's spinning OpenMP worker held the second core and the kernel gained nothing
end to end). Where no compiler is found, or `WORKBENCH_ATTENTION=sdpa` is set, `available()` is False and the
engine uses SDPA and torch's ops, with the same numbers to float rounding (tests compare both and transformers). A row's result
depends only on its own inputs, so generation stays batch-invariant in fp32.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

SOURCE = (Path(__file__).parent / "kernels.c").read_text()  # C, compiled on first use (`_build`)
# -ffast-math lets the compiler vectorize the reductions and expf (glibc's libmvec); it is given to the compile
# step only: linking with it would add gcc's crtfastmath.o, whose constructor sets flush-to-zero and
# denormals-are-zero for the whole process on load (hypothesis caught that: numpy lost its subnormal floats)
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC"]
LINK_FLAGS = ["-shared", "-fopenmp"]
MAX_HEAD_DIM = 256  # kbuf in the kernel
DTYPES = (torch.float32, torch.bfloat16)  # the cache types decode_attention reads
PROFILER_NAME = "workbench::decode_attention"  # its scope in torch.profiler traces (benchmarks/profile_engine.py)
MAX_GROUP_X_DIM = 4096  # the generic path's accumulators on the stack: groups x head_dim floats

_lock = threading.Lock()
_state: dict = {}   # the loaded library and its thread pool, once per process


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _build(folder: Path) -> Path:
    """Compile SOURCE once per source, flags and machine into `folder` (atomic rename: concurrent builds are safe)."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler (cc or gcc) on PATH")
    key = hashlib.sha256("\0".join([SOURCE, *FLAGS, *LINK_FLAGS, compiler, platform.machine(),
                                     platform.node()]).encode())
    target = folder / f"workbench_kernels-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        source = Path(tmp) / "workbench_kernels.c"
        source.write_text(SOURCE)
        built = Path(tmp) / target.name
        obj = Path(tmp) / "workbench_kernels.o"
        for command in ([compiler, *FLAGS, "-c", str(source), "-o", str(obj)],
                        [compiler, *LINK_FLAGS, str(obj), "-o", str(built), "-lm"]):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"{compiler} failed: {done.stderr.strip()[-400:]}")
        os.replace(built, target)
    return target


def _load():
    with _lock:
        if "lib" not in _state:
            _state["lib"], _state["error"] = None, None
            if os.environ.get("WORKBENCH_ATTENTION", "kernel") != "kernel":
                _state["error"] = "WORKBENCH_ATTENTION=" + os.environ["WORKBENCH_ATTENTION"]
            else:
                try:
                    from .models import data_dir

                    path = _build(data_dir() / "kernels")
                    before = _openmp_runtimes()
                    lib = ctypes.CDLL(str(path))
                    added = _openmp_runtimes() - before
                    for fn in (lib.decode_attention_f32, lib.decode_attention_bf16, lib.prefill_attention_f32,
                               lib.prefill_attention_bf16):
                        fn.restype = None
                        fn.argtypes = [ctypes.c_void_p, ctypes.c_int64] + [ctypes.c_void_p] * 4 + [
                            ctypes.c_int64] * 5 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
                    for fn in (lib.rms_norm_f32, lib.rms_norm_bf16):
                        fn.restype = None
                        fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                       ctypes.c_int64, ctypes.c_int64, ctypes.c_float, ctypes.c_int]
                    for fn in (lib.rotary_f32, lib.rotary_bf16):
                        fn.restype = None
                        fn.argtypes = ([ctypes.c_void_p] + [ctypes.c_int64] * 4 + [ctypes.c_void_p] * 5
                                       + [ctypes.c_int64] * 2 + [ctypes.c_int])
                    lib.prefill_attention_scratch.restype = ctypes.c_int64
                    lib.prefill_attention_scratch.argtypes = [ctypes.c_int64] * 3
                    lib.topk_f32.restype = None
                    lib.topk_f32.argtypes = [ctypes.c_void_p] + [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 3 + [
                        ctypes.c_int]
                    for fn in (lib.token_logprobs_f32, lib.token_logprobs_bf16):
                        fn.restype = None
                        fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                       ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
                    lib.swiglu_bf16.restype = None
                    lib.swiglu_bf16.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                                ctypes.c_int]
                    # the library's libgomp.so.1 must resolve to the one torch loaded (its threads are the ones
                    # torch uses); a runtime of its own would fight torch's threads for the cores. (Other
                    # libraries may carry their own, renamed runtimes: scikit-learn does. Those are not ours.)
                    if added:
                        raise RuntimeError(f"the kernel loaded an OpenMP runtime of its own: {sorted(added)}")
                    _state["lib"] = lib
                except (OSError, RuntimeError) as error:  # no compiler, a failed build: SDPA instead
                    _state["error"] = str(error)
        return _state["lib"]


def _scope(name: str):
    """A profiler scope named after the kernel (a ctypes call is no torch op: without one, a torch.profiler trace
    would not see it), only while a profiler runs: entering one costs ~4.5 us, 0.3 ms of a decode step's ~100 calls."""
    return torch.profiler.record_function(name) if torch.autograd._profiler_enabled() else contextlib.nullcontext()


def available() -> bool:
    """True when the kernel is compiled and loaded (False: no compiler, or WORKBENCH_ATTENTION=sdpa)."""
    return _load() is not None


def unavailable_reason() -> str | None:
    _load()
    return _state["error"]


def _openmp_runtimes() -> set[str]:
    """The OpenMP runtimes mapped into this process (Linux; empty elsewhere)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return set()
    return {line.split()[-1] for line in maps.splitlines() if "libgomp" in line or "libiomp" in line}


def decode_attention(q: torch.Tensor, layer: torch.Tensor, positions: torch.Tensor, groups: int,
                     rows: torch.Tensor | None = None) -> torch.Tensor:
    """Attention output [S, heads * D] (in the cache's dtype) of queries q [S, heads, D] (rows may be strided;
    heads and D contiguous) against `layer` [rows, 2 KV, L, D], query s seeing positions 0..positions[s] of cache
    row rows[s] (row s where `rows` is None: a decode step). Queries run on torch's threads."""
    lib = _load()
    S, heads, D = q.shape
    KV, L = layer.shape[1] // 2, layer.shape[2]
    if q.dtype != layer.dtype:  # the kernel reads queries in the cache's dtype (bf16: into fp32 as it goes)
        q = q.to(layer.dtype)
    if q.stride(2) != 1 or q.stride(1) != D:
        q = q.contiguous()
    # the kernel trusts its inputs (a position past the cache would read out of bounds): check them here
    assert layer.is_contiguous() and D <= MAX_HEAD_DIM and groups * D <= MAX_GROUP_X_DIM and heads == KV * groups
    assert positions.dtype == torch.int64 and positions.is_contiguous() and positions.shape == (S,)
    assert S == 0 or 0 <= int(positions.min()) and int(positions.max()) < L
    _check_rows(rows, S, layer.shape[0])
    assert layer.dtype in DTYPES, f"the kernel reads fp32 and bf16 caches, not {layer.dtype}"
    if rows is None:  # a decode step: one query per row
        fn = lib.decode_attention_f32 if layer.dtype == torch.float32 else lib.decode_attention_bf16
    else:  # a packed prefill: each row's queries in tiles (the kernel falls back to the decode path for odd D)
        fn = lib.prefill_attention_f32 if layer.dtype == torch.float32 else lib.prefill_attention_bf16
    threads = _threads(S)
    out = torch.empty(S, heads, D, dtype=layer.dtype)
    # per thread: the decode kernel's scores, or a packed prefill's fp32 keys, values and tile (the C side says how many)
    per_thread = groups * L if rows is None else lib.prefill_attention_scratch(L, D, groups)
    scratch = torch.empty(threads, per_thread, dtype=torch.float32)
    with _scope(PROFILER_NAME):
        fn(q.data_ptr(), q.stride(0), layer.data_ptr(), positions.data_ptr(), None if rows is None else rows.data_ptr(),
           out.data_ptr(), S, KV, groups, L, D, D ** -0.5, scratch.data_ptr(), threads)
    return out.view(S, heads * D)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, chosen: torch.Tensor,
                   mean: torch.Tensor | None = None) -> None:
    """Into `chosen` [R]: log p of each row's target under `logits` [R, V] (logit - logsumexp); into `mean`
    [R], if given: the mean log p over the vocabulary. fp32 or bf16 logits (bf16 read as fp32 as it goes, without
    an fp32 copy of the logits: the same results as on `logits.float()` to fp32 rounding), fp32 results. One pass
    to the row's max and sum, one for the exponentials: torch's logsumexp + gather + mean took ~3x as long on
    SmolLM2's 49k vocabulary (scoring.py)."""
    lib = _load()
    R, V = logits.shape
    assert logits.dtype in DTYPES and logits.is_contiguous() and chosen.is_contiguous()
    assert chosen.dtype == torch.float32 and chosen.shape == (R,) and (mean is None or mean.is_contiguous())
    targets = targets.to(torch.int64).contiguous()
    assert targets.shape == (R,) and bool(((targets >= 0) & (targets < V)).all())
    fn = lib.token_logprobs_f32 if logits.dtype == torch.float32 else lib.token_logprobs_bf16
    with _scope("workbench::token_logprobs"):
        fn(logits.data_ptr(), R, V, targets.data_ptr(), chosen.data_ptr(),
           None if mean is None else mean.data_ptr(), max(1, torch.get_num_threads()))


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of bf16 `gate_up` [..., 2I] (a row's gate, then its up: the fused matmul's output), in one
    pass per row, rounded where torch's `F.silu(gate) * up` rounds; a new [..., I] tensor. For bf16 weights left in
    torch's layout (WORKBENCH_PREPACK=0); fp32 and reordered bf16 weights need no kernel: oneDNN applies it as the
    matmul's post-op (`matmul._swiglu`)."""
    lib = _load()
    assert gate_up.dtype == torch.bfloat16 and gate_up.shape[-1] % 2 == 0
    rows = gate_up.reshape(-1, gate_up.shape[-1]).contiguous()
    R, I = rows.shape[0], rows.shape[1] // 2
    out = torch.empty(R, I, dtype=torch.bfloat16)
    with _scope("workbench::swiglu"):
        lib.swiglu_bf16(rows.data_ptr(), out.data_ptr(), R, I, _threads(R))
    return out.view(*gate_up.shape[:-1], I)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm of `x` [..., N] (fp32 or bf16; rows may be strided, the last dim contiguous) with
    `weight` [N] of the same dtype, in one pass per row; a new contiguous tensor. Rows run on torch's threads."""
    lib = _load()
    N = x.shape[-1]
    assert x.dtype in DTYPES and weight.dtype == x.dtype and weight.shape == (N,) and weight.is_contiguous()
    rows = x.reshape(-1, N) if x.dim() != 2 else x  # a view where it can be; the kernel takes any row stride
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(rows.shape, dtype=x.dtype)
    R = rows.shape[0]
    fn = lib.rms_norm_f32 if x.dtype == torch.float32 else lib.rms_norm_bf16
    with _scope("workbench::rms_norm"):
        fn(rows.data_ptr(), rows.stride(0), weight.data_ptr(), out.data_ptr(), R, N, eps, _threads(R))
    return out.view(x.shape)


def rotary(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotate: int,
           cache: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> None:
    """Rotary position embedding, in place, on the first `rotate` heads of `x` [R, heads, D] (fp32 or bf16,
    contiguous), row r at `positions[r]`, with tables `cos`/`sin` [P, D] of x's dtype (the D/2 frequencies twice,
    as transformers builds them). With `cache` [rows, store, L, D]: the `store` heads from head `rotate - store / 2`
    on (a decode step's K, rotated, and V) are then written to cache row rows[r] (row r where `rows` is None) at
    position positions[r]."""
    lib = _load()
    R, heads, D = x.shape
    assert x.dtype in DTYPES and x.is_contiguous() and D % 2 == 0 and 0 <= rotate <= heads
    assert cos.dtype == sin.dtype == x.dtype and cos.is_contiguous() and sin.is_contiguous()
    assert cos.shape == sin.shape and cos.shape[1] == D
    assert positions.dtype == torch.int64 and positions.is_contiguous() and positions.shape == (R,)
    assert R == 0 or (0 <= int(positions.min()) and int(positions.max()) < cos.shape[0])
    store, L, pointer = 0, 0, None
    if cache is not None:
        store, L = cache.shape[1], cache.shape[2]
        assert cache.dtype == x.dtype and cache.is_contiguous() and cache.shape[3] == D
        assert store % 2 == 0 and store // 2 <= rotate and rotate + store // 2 <= heads
        assert R == 0 or int(positions.max()) < L
        _check_rows(rows, R, cache.shape[0])
        pointer = cache.data_ptr()
    fn = lib.rotary_f32 if x.dtype == torch.float32 else lib.rotary_bf16
    with _scope("workbench::rotary"):
        fn(x.data_ptr(), R, heads * D, rotate, D, positions.data_ptr(), cos.data_ptr(), sin.data_ptr(), pointer,
           None if rows is None or cache is None else rows.data_ptr(), store, L, _threads(R))


def _threads(rows: int) -> int:
    """The OpenMP threads a kernel's rows run on: torch's own count, no more than there are rows."""
    return max(1, min(torch.get_num_threads(), rows))


def _check_rows(rows: torch.Tensor | None, n: int, cache_rows: int) -> None:
    """The kernels trust their cache row indices (one past the cache would read or write out of bounds)."""
    if rows is None:
        assert n <= cache_rows, f"{n} rows for a cache of {cache_rows}"
    else:
        assert rows.dtype == torch.int64 and rows.is_contiguous() and rows.shape == (n,)
        assert n == 0 or (0 <= int(rows.min()) and int(rows.max()) < cache_rows), "a row index outside the cache"


def topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest logits of each row of fp32 `logits` [R, V] and their indices, largest first, as torch.topk
    (equal values: the lower index first)."""
    lib = _load()
    R, V = logits.shape
    assert logits.dtype == torch.float32 and logits.is_contiguous() and 0 < k <= V
    values, index = torch.empty(R, k, dtype=torch.float32), torch.empty(R, k, dtype=torch.int64)
    block_max = torch.empty(R, (V + 63) // 64, dtype=torch.float32)
    with _scope("workbench::topk"):
        lib.topk_f32(logits.data_ptr(), R, V, k, values.data_ptr(), index.data_ptr(), block_max.data_ptr(),
                     _threads(R))
    return values, index
