"""The engine's compiled C kernels: attention over the KV cache, RMSNorm, rotary, and the scoring passes'
log-probabilities.

    out = decode_attention(q, cache_layer, positions, groups, rows)  # a decode step's (or packed prefill's) attention
    h = rms_norm(x, weight, eps)                                     # transformers' LlamaRMSNorm, fp32
    rotary(qkv, positions, cos, sin, rotate, cache, rows)            # rotary on Q and K in place; K, V into the cache
    token_logprobs(logits, targets, chosen, mean)                    # log p of targets (and the vocabulary mean)

Why: in a decode step each row attends with one query (three, with SmolLM2's grouped-query heads) to its own
cache, so attention is a stream over the KV cache, not a GEMM. torch's SDPA ran it at ~12 GB/s here (its flash
kernel is built for blocks of queries) and reads every row up to the longest row's position: on 128 rows x 112
positions, 1.5-2.0 ms a layer, 25% of a decode step. This kernel reads each row's K and V once, only up to that
row's own position, asking for the next data before it needs it: 0.65 ms a layer on 128 rows x 90 positions (2
cores, cold cache, fp32). Given a cache row per query, the same kernel serves a packed prefill (several queries
per row, each up to its own position). RMSNorm and rotary are elementwise passes that torch runs as five or six
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

SOURCE = r"""
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>

static inline float bf16_to_float(uint16_t b) {
    union { uint32_t u; float f; } x; x.u = ((uint32_t)b) << 16; return x.f;
}
#define AS_FLOAT(x) (x)

/* One row and one KV head: G queries q [G, D] against keys K [n, D] and values V [n, D] (rows of the cache,
   in the cache's type T), output [G, D] in fp32. `scratch` holds G * L floats. GG and DD are either the
   runtime G and D or constants: with constants the compiler unrolls the head dimension and keeps the output
   accumulators in registers. The cache is read from memory, not from the CPU's caches, so the kernel asks for the
   next data early: the values while it reads the keys, the next head's keys (`nextK`, NULL for none) while it reads
   the values (on 128 rows x 90 positions, 30 layers, cold: 29 -> 20 ms a step; 47 GB/s would be 11). */
#define DEFINE_HEAD(NAME, T, LOAD, GG, DD)                                                                   \
static inline void NAME(const float* restrict qh, const T* restrict K, const T* restrict V, int64_t n,       \
                        int64_t L, int64_t G_, int64_t D_, float scale, float* restrict scratch,             \
                        float* restrict oh, const T* restrict nextK)                                         \
{                                                                                                            \
    const int64_t G = GG, D = DD;                                                                            \
    (void)G_; (void)D_;                                                                                      \
    float kbuf[256];                                                                                         \
    for (int64_t t = 0; t < n; ++t) {                                                                        \
        for (int64_t c = 0; c < D * (int64_t)sizeof(T); c += 64) __builtin_prefetch((const char*)(V + t * D) + c); \
        for (int64_t d = 0; d < D; ++d) kbuf[d] = LOAD(K[t * D + d]);                                        \
        for (int64_t g = 0; g < G; ++g) {                                                                    \
            float acc = 0.f;                                                                                 \
            for (int64_t d = 0; d < D; ++d) acc += qh[g * D + d] * kbuf[d];                                  \
            scratch[g * L + t] = acc * scale;                                                                \
        }                                                                                                    \
    }                                                                                                        \
    for (int64_t g = 0; g < G; ++g) {                                                                        \
        float* sc = scratch + g * L;                                                                         \
        float m = -FLT_MAX, sum = 0.f;                                                                       \
        for (int64_t t = 0; t < n; ++t) m = sc[t] > m ? sc[t] : m;                                           \
        for (int64_t t = 0; t < n; ++t) { sc[t] = expf(sc[t] - m); sum += sc[t]; }                           \
        const float inv = 1.f / sum;                                                                         \
        for (int64_t t = 0; t < n; ++t) sc[t] *= inv;                                                        \
    }                                                                                                        \
    float acc[GG * DD];                                                                                      \
    for (int64_t i = 0; i < G * D; ++i) acc[i] = 0.f;                                                        \
    for (int64_t t = 0; t < n; ++t) {                                                                        \
        if (nextK)                                                                                           \
            for (int64_t c = 0; c < D * (int64_t)sizeof(T); c += 64)                                         \
                __builtin_prefetch((const char*)(nextK + t * D) + c);                                        \
        for (int64_t d = 0; d < D; ++d) kbuf[d] = LOAD(V[t * D + d]);                                        \
        for (int64_t g = 0; g < G; ++g) {                                                                    \
            const float p = scratch[g * L + t];                                                              \
            for (int64_t d = 0; d < D; ++d) acc[g * D + d] += p * kbuf[d];                                   \
        }                                                                                                    \
    }                                                                                                        \
    for (int64_t i = 0; i < G * D; ++i) oh[i] = acc[i];                                                      \
}

/* Grouped-query attention of S queries, on `threads` OpenMP threads (torch's own pool: the library is linked
   against the libgomp torch already loaded). The cache of a layer is [rows, 2*KV, L, D] (keys in heads 0..KV-1,
   values in KV..2KV-1); q is [S, KV*G, D] with a row stride of q_row_stride floats; out is [S, KV*G, D], fp32.
   Query s attends to positions 0..pos[s] of cache row rows[s] (of row s where rows is NULL: a decode step; a
   packed prefill has several queries per row). scratch_all holds threads*G*L floats. */
#define DEFINE_STEP(NAME, T, LOAD)                                                                           \
DEFINE_HEAD(NAME##_any, T, LOAD, G_, D_)                                                                     \
DEFINE_HEAD(NAME##_g1, T, LOAD, 1, 64)                                                                       \
DEFINE_HEAD(NAME##_g3, T, LOAD, 3, 64)                                                                       \
DEFINE_HEAD(NAME##_g4, T, LOAD, 4, 64)                                                                       \
void NAME(const float* restrict q, int64_t q_row_stride, const T* restrict cache, const int64_t* restrict pos, \
          const int64_t* restrict rows, float* restrict out, int64_t S, int64_t KV, int64_t G, int64_t L,   \
          int64_t D, float scale, float* restrict scratch_all, int threads)                                 \
{                                                                                                            \
    _Pragma("omp parallel for num_threads(threads) schedule(dynamic, 2)")                                    \
    for (int64_t s = 0; s < S; ++s) {                                                                        \
        float* restrict scratch = scratch_all + (int64_t)omp_get_thread_num() * G * L;                       \
        const int64_t r = rows ? rows[s] : s;                                                                \
        const int64_t next_r = s + 1 < S ? (rows ? rows[s + 1] : s + 1) : -1;                                \
        for (int64_t h = 0; h < KV; ++h) {                                                                   \
            const T* K = cache + ((r * 2 * KV + h) * L) * D;                                                 \
            const T* V = cache + ((r * 2 * KV + KV + h) * L) * D;                                            \
            const float* qh = q + s * q_row_stride + h * G * D;                                              \
            float* oh = out + (s * KV + h) * G * D;                                                          \
            const int64_t n = pos[s] + 1;                                                                    \
            const T* nextK = h + 1 < KV ? K + L * D : next_r >= 0 ? cache + next_r * 2 * KV * L * D : 0;     \
            if (D == 64 && G == 3) NAME##_g3(qh, K, V, n, L, G, D, scale, scratch, oh, nextK);               \
            else if (D == 64 && G == 1) NAME##_g1(qh, K, V, n, L, G, D, scale, scratch, oh, nextK);          \
            else if (D == 64 && G == 4) NAME##_g4(qh, K, V, n, L, G, D, scale, scratch, oh, nextK);          \
            else NAME##_any(qh, K, V, n, L, G, D, scale, scratch, oh, nextK);                                \
        }                                                                                                    \
    }                                                                                                        \
}

DEFINE_STEP(decode_attention_f32, float, AS_FLOAT)
DEFINE_STEP(decode_attention_bf16, uint16_t, bf16_to_float)

/* Elementwise passes in the model's dtype T (float or bf16 as uint16_t), computed in fp32 and rounded to T where
   transformers' ops round (ROUND: to T and back; STORE: to T), so bf16 gets transformers' bf16 numbers. */
static inline uint16_t float_to_bf16(float f) {  /* round to nearest even, as torch's casts (no NaNs here) */
    union { float f; uint32_t u; } x; x.f = f; x.u += 0x7FFF + ((x.u >> 16) & 1); return (uint16_t)(x.u >> 16);
}
#define BF16_ROUND(f) bf16_to_float(float_to_bf16(f))

/* RMSNorm, as transformers' LlamaRMSNorm: out[r] = w * T(x[r] / sqrt(mean(x[r]^2) + eps)), statistics in fp32; x
   [R, N] with a row stride of x_stride, out [R, N] contiguous. torch runs it as six ops over the rows (each a pass
   and a temporary): on a decode step's 128 x 576 rows ~22 us hot, 50 us in a step, against ~4 here. */
#define DEFINE_NORM(NAME, T, LOAD, ROUND, STORE)                                                             \
void NAME(const T* restrict x, int64_t x_stride, const T* restrict w, T* restrict out, int64_t R, int64_t N, \
          float eps, int threads)                                                                            \
{                                                                                                            \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                        \
    for (int64_t r = 0; r < R; ++r) {                                                                        \
        const T* restrict xr = x + r * x_stride;                                                             \
        float squares = 0.f;                                                                                 \
        for (int64_t i = 0; i < N; ++i) squares += LOAD(xr[i]) * LOAD(xr[i]);                               \
        const float inv = 1.f / sqrtf(squares / (float)N + eps);                                             \
        for (int64_t i = 0; i < N; ++i) out[r * N + i] = STORE(LOAD(w[i]) * ROUND(LOAD(xr[i]) * inv));      \
    }                                                                                                        \
}

/* Rotary position embedding in place on the first `rotate` heads (of D values) of each row of x [R, row_stride],
   row r at position pos[r], from tables cos/sin [P, D] laid out as transformers' (the D/2 frequencies twice):
   first half a cos - b sin, second half b cos + a sin (a, b: the halves; each product rounded to T, as torch's
   ops). Where `cache` is not NULL, the row's next `store` heads (a decode step's K, rotated, and V) are then
   copied to cache row rows[r] (r where rows is NULL) at position pos[r]: the cache is [rows, store, L, D]. One
   pass instead of torch's five (cat, neg, two products, a sum) and the cache's indexed copy: on a decode step's
   128 rows, 12 us + 15 us hot (95 + 113 us in a step) against ~10 here. */
#define DEFINE_ROTARY(NAME, T, LOAD, ROUND, STORE)                                                           \
void NAME(T* restrict x, int64_t R, int64_t row_stride, int64_t rotate, int64_t D,                           \
          const int64_t* restrict pos, const T* restrict cos_table, const T* restrict sin_table,             \
          T* restrict cache, const int64_t* restrict rows, int64_t store, int64_t L, int threads)            \
{                                                                                                            \
    const int64_t half = D / 2;                                                                              \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                        \
    for (int64_t r = 0; r < R; ++r) {                                                                        \
        const T* restrict c = cos_table + pos[r] * D;                                                        \
        const T* restrict sn = sin_table + pos[r] * D;                                                       \
        T* restrict row = x + r * row_stride;                                                                \
        for (int64_t h = 0; h < rotate; ++h) {                                                               \
            T* restrict head = row + h * D;                                                                  \
            for (int64_t i = 0; i < half; ++i) {                                                             \
                const float a = LOAD(head[i]), b = LOAD(head[i + half]);                                     \
                head[i] = STORE(ROUND(a * LOAD(c[i])) - ROUND(b * LOAD(sn[i])));                             \
                head[i + half] = STORE(ROUND(b * LOAD(c[i + half])) + ROUND(a * LOAD(sn[i + half])));       \
            }                                                                                                \
        }                                                                                                    \
        if (cache)                                                                                           \
            for (int64_t h = 0; h < store; ++h) {                                                            \
                const T* restrict src = row + (rotate - store / 2 + h) * D;                                  \
                T* restrict dst = cache + (((rows ? rows[r] : r) * store + h) * L + pos[r]) * D;             \
                for (int64_t i = 0; i < D; ++i) dst[i] = src[i];                                             \
            }                                                                                                \
    }                                                                                                        \
}

DEFINE_NORM(rms_norm_f32, float, AS_FLOAT, AS_FLOAT, AS_FLOAT)
DEFINE_NORM(rms_norm_bf16, uint16_t, bf16_to_float, BF16_ROUND, float_to_bf16)
DEFINE_ROTARY(rotary_f32, float, AS_FLOAT, AS_FLOAT, AS_FLOAT)
DEFINE_ROTARY(rotary_bf16, uint16_t, bf16_to_float, BF16_ROUND, float_to_bf16)

/* The k largest of each row of fp32 logits [R, V] (k <= V), largest first (equal values: lower index first), into
   values [R, k] and index [R, k]. Two passes: the maximum of each block of 64 logits (vectorised), then only the
   blocks whose maximum reaches the k-th largest block maximum, which bounds the k-th largest logit from below (the
   k blocks with the largest maxima hold k logits at least that large), go through a min-heap of the best k. On
   128 rows of SmolLM2's 49,152 logits: 0.4 ms; torch.topk took 4.1 ms, the sampler's largest cost. */
static inline int topk_less(float va, int64_t ia, float vb, int64_t ib) { return va < vb || (va == vb && ia > ib); }
static void topk_down(float* v, int64_t* ix, int64_t n, int64_t i) {
    for (;;) {
        int64_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && topk_less(v[l], ix[l], v[m], ix[m])) m = l;
        if (r < n && topk_less(v[r], ix[r], v[m], ix[m])) m = r;
        if (m == i) return;
        float tv = v[i]; v[i] = v[m]; v[m] = tv;
        int64_t ti = ix[i]; ix[i] = ix[m]; ix[m] = ti;
        i = m;
    }
}
static void topk_up(float* v, int64_t* ix, int64_t i) {
    while (i > 0) {
        int64_t p = (i - 1) / 2;
        if (!topk_less(v[i], ix[i], v[p], ix[p])) return;
        float tv = v[i]; v[i] = v[p]; v[p] = tv;
        int64_t ti = ix[i]; ix[i] = ix[p]; ix[p] = ti;
        i = p;
    }
}
/* offer (value, i) to the heap of n < k (grow) or k (replace the smallest) entries; returns the new size */
static inline int64_t topk_offer(float* v, int64_t* ix, int64_t n, int64_t k, float value, int64_t i) {
    if (n < k) { v[n] = value; ix[n] = i; topk_up(v, ix, n); return n + 1; }
    if (value > v[0]) { v[0] = value; ix[0] = i; topk_down(v, ix, k, 0); }
    return n;
}
void topk_f32(const float* restrict logits, int64_t R, int64_t V, int64_t k, float* restrict values,
              int64_t* restrict index, float* restrict block_max_all, int threads)
{
    const int64_t blocks = (V + 63) / 64;
    _Pragma("omp parallel for num_threads(threads) schedule(static)")
    for (int64_t r = 0; r < R; ++r) {
        const float* restrict x = logits + r * V;
        float* v = values + r * k;
        int64_t* ix = index + r * k;
        float* restrict block_max = block_max_all + r * blocks;
        for (int64_t b = 0; b < V / 64; ++b) {  /* whole blocks: a fixed trip count, vectorised */
            const float* restrict xb = x + b * 64;
            float m = xb[0];
            for (int i = 1; i < 64; ++i) m = xb[i] > m ? xb[i] : m;
            block_max[b] = m;
        }
        if (V % 64) {
            float m = x[V / 64 * 64];
            for (int64_t i = V / 64 * 64 + 1; i < V; ++i) m = x[i] > m ? x[i] : m;
            block_max[blocks - 1] = m;
        }
        float threshold = -FLT_MAX;
        if (blocks > k) {  /* the k-th largest block maximum, with the output as a scratch heap */
            int64_t n = 0;
            for (int64_t b = 0; b < blocks; ++b) n = topk_offer(v, ix, n, k, block_max[b], b);
            threshold = v[0];
        }
        int64_t n = 0;
        for (int64_t b = 0; b < blocks; ++b) {
            if (block_max[b] < threshold) continue;
            const int64_t end = b * 64 + 64 < V ? b * 64 + 64 : V;
            for (int64_t i = b * 64; i < end; ++i)
                if (x[i] >= threshold) n = topk_offer(v, ix, n, k, x[i], i);
        }
        for (int64_t m = k - 1; m > 0; --m) {  /* heap sort: the smallest goes last */
            float tv = v[0]; v[0] = v[m]; v[m] = tv;
            int64_t ti = ix[0]; ix[0] = ix[m]; ix[m] = ti;
            topk_down(v, ix, m, 0);
        }
    }
}

/* Log-probabilities from fp32 logits [R, V], one row per thread at a time: chosen[r] = logits[r, targets[r]] -
   logsumexp(logits[r]) and, where mean is not NULL, mean[r] = mean(logits[r]) - logsumexp(logits[r]). Two passes
   over a row (max and sum, then the sum of exponentials), the second from cache. */
void token_logprobs_f32(const float* restrict logits, int64_t R, int64_t V, const int64_t* restrict targets,
                        float* restrict chosen, float* restrict mean, int threads)
{
    _Pragma("omp parallel for num_threads(threads) schedule(static)")
    for (int64_t r = 0; r < R; ++r) {
        const float* restrict x = logits + r * V;
        float m = -FLT_MAX;
        double total = 0.0;
        for (int64_t v = 0; v < V; ++v) { m = x[v] > m ? x[v] : m; total += x[v]; }
        float sum = 0.f;
        for (int64_t v = 0; v < V; ++v) sum += expf(x[v] - m);
        const float lse = m + logf(sum);
        chosen[r] = x[targets[r]] - lse;
        if (mean) mean[r] = (float)(total / (double)V) - lse;
    }
}
"""
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
                    for fn in (lib.decode_attention_f32, lib.decode_attention_bf16):
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
                    lib.topk_f32.restype = None
                    lib.topk_f32.argtypes = [ctypes.c_void_p] + [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 3 + [
                        ctypes.c_int]
                    lib.token_logprobs_f32.restype = None
                    lib.token_logprobs_f32.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                                       ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
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
    if q.dtype != torch.float32:
        q = q.float()
    if q.stride(2) != 1 or q.stride(1) != D:
        q = q.contiguous()
    # the kernel trusts its inputs (a position past the cache would read out of bounds): check them here
    assert layer.is_contiguous() and D <= MAX_HEAD_DIM and groups * D <= MAX_GROUP_X_DIM and heads == KV * groups
    assert positions.dtype == torch.int64 and positions.is_contiguous() and positions.shape == (S,)
    assert S == 0 or 0 <= int(positions.min()) and int(positions.max()) < L
    _check_rows(rows, S, layer.shape[0])
    assert layer.dtype in DTYPES, f"the kernel reads fp32 and bf16 caches, not {layer.dtype}"
    fn = lib.decode_attention_f32 if layer.dtype == torch.float32 else lib.decode_attention_bf16
    threads = max(1, min(torch.get_num_threads(), S))
    out = torch.empty(S, heads, D, dtype=torch.float32)
    scratch = torch.empty(threads, groups * L, dtype=torch.float32)
    with _scope(PROFILER_NAME):
        fn(q.data_ptr(), q.stride(0), layer.data_ptr(), positions.data_ptr(), None if rows is None else rows.data_ptr(),
           out.data_ptr(), S, KV, groups, L, D, D ** -0.5, scratch.data_ptr(), threads)
    out = out.view(S, heads * D)
    return out if layer.dtype == torch.float32 else out.to(layer.dtype)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, chosen: torch.Tensor,
                   mean: torch.Tensor | None = None) -> None:
    """Into `chosen` [R]: log p of each row's target under fp32 `logits` [R, V] (logit - logsumexp); into `mean`
    [R], if given: the mean log p over the vocabulary. One pass to the row's max and sum, one for the exponentials:
    torch's logsumexp + gather + mean took ~3x as long on SmolLM2's 49k vocabulary (scoring.py)."""
    lib = _load()
    R, V = logits.shape
    assert logits.dtype == torch.float32 and logits.is_contiguous() and chosen.is_contiguous()
    assert chosen.dtype == torch.float32 and chosen.shape == (R,) and (mean is None or mean.is_contiguous())
    targets = targets.to(torch.int64).contiguous()
    assert targets.shape == (R,) and bool(((targets >= 0) & (targets < V)).all())
    with _scope("workbench::token_logprobs"):
        lib.token_logprobs_f32(logits.data_ptr(), R, V, targets.data_ptr(), chosen.data_ptr(),
                               None if mean is None else mean.data_ptr(), max(1, torch.get_num_threads()))


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
        fn(rows.data_ptr(), rows.stride(0), weight.data_ptr(), out.data_ptr(), R, N, eps,
           max(1, min(torch.get_num_threads(), R)))
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
           None if rows is None or cache is None else rows.data_ptr(), store, L, max(1, min(torch.get_num_threads(), R)))


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
                     max(1, min(torch.get_num_threads(), R)))
    return values, index
