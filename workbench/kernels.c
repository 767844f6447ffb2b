/* The engine's compiled kernels (workbench/kernels.py compiles this file on first use with the machine's C compiler
   and loads it with ctypes; see that module's docstring for why each exists and what it measured). */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

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
   values in KV..2KV-1); q is [S, KV*G, D] with a row stride of q_row_stride elements; out is [S, KV*G, D]; both
   in the cache's type T (a bf16 query is read into fp32 once per head, the fp32 output rounded once to bf16, as
   torch's casts before and after an fp32 kernel would: the same numbers without those two passes; on a self-judge
   batch's own inputs, 4,072 queries, AMX machine, one sitting: 14.3 -> 10.0-10.4 ms, fp32 unchanged).
   Query s attends to positions 0..pos[s] of cache row rows[s] (of row s where rows is NULL: a decode step; a
   packed prefill has several queries per row). scratch_all holds threads*G*L floats; G * D <= 4096. */
#define DEFINE_STEP(NAME, T, LOAD, STORE)                                                                    \
DEFINE_HEAD(NAME##_any, T, LOAD, G_, D_)                                                                     \
DEFINE_HEAD(NAME##_g1, T, LOAD, 1, 64)                                                                       \
DEFINE_HEAD(NAME##_g3, T, LOAD, 3, 64)                                                                       \
DEFINE_HEAD(NAME##_g4, T, LOAD, 4, 64)                                                                       \
void NAME(const T* restrict q, int64_t q_row_stride, const T* restrict cache, const int64_t* restrict pos,   \
          const int64_t* restrict rows, T* restrict out, int64_t S, int64_t KV, int64_t G, int64_t L,       \
          int64_t D, float scale, float* restrict scratch_all, int threads)                                 \
{                                                                                                            \
    _Pragma("omp parallel for num_threads(threads) schedule(dynamic, 2)")                                    \
    for (int64_t s = 0; s < S; ++s) {                                                                        \
        float* restrict scratch = scratch_all + (int64_t)omp_get_thread_num() * G * L;                       \
        float qh[4096], oh[4096];                                                                            \
        const int64_t r = rows ? rows[s] : s;                                                                \
        const int64_t next_r = s + 1 < S ? (rows ? rows[s + 1] : s + 1) : -1;                                \
        for (int64_t h = 0; h < KV; ++h) {                                                                   \
            const T* K = cache + ((r * 2 * KV + h) * L) * D;                                                 \
            const T* V = cache + ((r * 2 * KV + KV + h) * L) * D;                                            \
            const T* restrict qs = q + s * q_row_stride + h * G * D;                                         \
            T* restrict os = out + (s * KV + h) * G * D;                                                     \
            for (int64_t i = 0; i < G * D; ++i) qh[i] = LOAD(qs[i]);                                         \
            const int64_t n = pos[s] + 1;                                                                    \
            const T* nextK = h + 1 < KV ? K + L * D : next_r >= 0 ? cache + next_r * 2 * KV * L * D : 0;     \
            if (D == 64 && G == 3) NAME##_g3(qh, K, V, n, L, G, D, scale, scratch, oh, nextK);               \
            else if (D == 64 && G == 1) NAME##_g1(qh, K, V, n, L, G, D, scale, scratch, oh, nextK);          \
            else if (D == 64 && G == 4) NAME##_g4(qh, K, V, n, L, G, D, scale, scratch, oh, nextK);          \
            else NAME##_any(qh, K, V, n, L, G, D, scale, scratch, oh, nextK);                                \
            for (int64_t i = 0; i < G * D; ++i) os[i] = STORE(oh[i]);                                        \
        }                                                                                                    \
    }                                                                                                        \
}

/* float_to_bf16 is defined below, with the elementwise passes */
static inline uint16_t float_to_bf16(float f);
DEFINE_STEP(decode_attention_f32, float, AS_FLOAT, AS_FLOAT)
DEFINE_STEP(decode_attention_bf16, uint16_t, bf16_to_float, float_to_bf16)

/* Packed prefill attention: the same inputs and results as the decode kernel above, but the queries of a cache row
   (a packed sequence, consecutive in q) run as tiles of TILE_ROWS query-head rows against that row's keys and
   values, which are converted to fp32 once per row and KV head (keys transposed into blocks of VW). The decode
   kernel reads a key or value row per query and reduces each dot product across the vector lanes; here every key
   block loaded feeds TILE_ROWS multiply-adds, with the accumulators in registers, as a GEMM's micro-kernel does.
   Units of work (a row's run of queries x a KV head) go to `threads` OpenMP threads. Where D is not a multiple of
   4 x VW the decode kernel runs instead. */
#if defined(__AVX512F__)
#define VW 16
#define PV_ROWS 6
#elif defined(__AVX__)
#define VW 8
#define PV_ROWS 3
#else
#define VW 4
#define PV_ROWS 3
#endif
#define TILE_ROWS 12
typedef float vfloat __attribute__((vector_size(VW * 4)));
static inline vfloat vload(const float* p) { vfloat v; __builtin_memcpy(&v, p, sizeof v); return v; }
static inline void vstore(float* p, vfloat v) { __builtin_memcpy(p, &v, sizeof v); }

/* Floats of scratch a thread needs for prefill_attention_*: the decode kernel's G * L where it runs instead,
   else the row's keys and values in fp32 (2 D Lp), a tile's scores (TILE_ROWS Lp) and queries (TILE_ROWS D);
   a multiple of 16 floats, so every thread's share starts 64-byte aligned. The caller allocates threads x this. */
int64_t prefill_attention_scratch(int64_t L, int64_t D, int64_t G)
{
    const int64_t Lp = (L + VW - 1) / VW * VW;
    const int64_t tiles = D % (4 * VW) ? 0 : 2 * D * Lp + TILE_ROWS * (Lp + D);
    const int64_t floats = tiles > G * L ? tiles : G * L;
    return (floats + 15) / 16 * 16;
}

#define DEFINE_PREFILL(NAME, STEP, T, LOAD, STORE)                                                           \
void NAME(const T* restrict q, int64_t q_row_stride, const T* restrict cache, const int64_t* restrict pos,   \
          const int64_t* restrict rows, T* restrict out, int64_t S, int64_t KV, int64_t G, int64_t L,       \
          int64_t D, float scale, float* restrict scratch_all, int threads)                                 \
{                                                                                                            \
    int64_t* starts = D % (4 * VW) || !rows ? NULL : malloc((S + 1) * sizeof(int64_t));                      \
    if (!starts) {                                                                                           \
        STEP(q, q_row_stride, cache, pos, rows, out, S, KV, G, L, D, scale, scratch_all, threads);          \
        return;                                                                                              \
    }                                                                                                        \
    int64_t runs = 0;                                                                                        \
    for (int64_t s = 0; s < S; ++s)                                                                          \
        if (s == 0 || rows[s] != rows[s - 1]) starts[runs++] = s;                                            \
    starts[runs] = S;                                                                                        \
    const int64_t Lp = (L + VW - 1) / VW * VW, per_thread = prefill_attention_scratch(L, D, G);              \
    _Pragma("omp parallel num_threads(threads)")                                                             \
    {                                                                                                        \
        float* restrict Kt = scratch_all + (int64_t)omp_get_thread_num() * per_thread;                       \
        float* restrict Vf = Kt + D * Lp;                                                                    \
        float* restrict Sc = Vf + D * Lp;                 /* [TILE_ROWS, Lp] scores, then probabilities */   \
        float* restrict Qt = Sc + TILE_ROWS * Lp;          /* [TILE_ROWS, D] the tile's queries, scaled */   \
        _Pragma("omp for schedule(dynamic, 1)")                                                              \
        for (int64_t unit = 0; unit < runs * KV; ++unit) {                                                   \
            const int64_t run = unit / KV, h = unit % KV, s0 = starts[run], T_ = starts[run + 1] - s0;       \
            const int64_t r = rows[s0];                                                                      \
            int64_t n_all = 0;                                                                               \
            for (int64_t s = s0; s < s0 + T_; ++s) n_all = pos[s] + 1 > n_all ? pos[s] + 1 : n_all;          \
            const T* K = cache + ((r * 2 * KV + h) * L) * D;                                                 \
            const T* V = cache + ((r * 2 * KV + KV + h) * L) * D;                                            \
            const int64_t blocks = (n_all + VW - 1) / VW;                                                    \
            for (int64_t b = 0; b < blocks; ++b)            /* keys as [block, D, VW], zero past n_all */    \
                for (int64_t j = 0; j < VW; ++j) {                                                           \
                    const int64_t t = b * VW + j;                                                            \
                    for (int64_t d = 0; d < D; ++d)                                                          \
                        Kt[(b * D + d) * VW + j] = t < n_all ? LOAD(K[t * D + d]) : 0.f;                     \
                }                                                                                            \
            for (int64_t i = 0; i < n_all * D; ++i) Vf[i] = LOAD(V[i]);                                      \
            const int64_t R = T_ * G;                        /* rows of this unit: query token x head */     \
            for (int64_t j0 = 0; j0 < R; j0 += TILE_ROWS) {                                                  \
                int64_t n[TILE_ROWS], tile_n = 0;                                                            \
                for (int64_t i = 0; i < TILE_ROWS; ++i) {    /* past the unit's end: its last row again */   \
                    const int64_t j = j0 + i < R ? j0 + i : R - 1, s = s0 + j / G, g = j % G;                \
                    const T* qs = q + s * q_row_stride + (h * G + g) * D;                                    \
                    for (int64_t d = 0; d < D; ++d) Qt[i * D + d] = LOAD(qs[d]) * scale;                     \
                    n[i] = pos[s] + 1;                                                                       \
                    tile_n = n[i] > tile_n ? n[i] : tile_n;                                                  \
                }                                                                                            \
                for (int64_t b = 0; b < (tile_n + VW - 1) / VW; ++b) {                                       \
                    vfloat acc[TILE_ROWS];                                                                   \
                    _Pragma("GCC unroll 12")                                                                 \
                    for (int i = 0; i < TILE_ROWS; ++i) acc[i] = (vfloat){0};                                \
                    const float* kb = Kt + b * D * VW;                                                       \
                    for (int64_t d = 0; d < D; ++d) {                                                        \
                        const vfloat k = vload(kb + d * VW);                                                 \
                        _Pragma("GCC unroll 12")                                                             \
                        for (int i = 0; i < TILE_ROWS; ++i) acc[i] += Qt[i * D + d] * k;                     \
                    }                                                                                        \
                    _Pragma("GCC unroll 12")                                                                 \
                    for (int i = 0; i < TILE_ROWS; ++i) vstore(Sc + i * Lp + b * VW, acc[i]);                \
                }                                                                                            \
                float inv[TILE_ROWS];    /* softmax over each row's own positions; 1 / sum at the end */     \
                for (int64_t i = 0; i < TILE_ROWS; ++i) {                                                    \
                    float* sc = Sc + i * Lp, m = -FLT_MAX, sum = 0.f;                                        \
                    for (int64_t t = 0; t < n[i]; ++t) m = sc[t] > m ? sc[t] : m;                            \
                    for (int64_t t = 0; t < n[i]; ++t) { sc[t] = expf(sc[t] - m); sum += sc[t]; }            \
                    inv[i] = 1.f / sum;                                                                      \
                    for (int64_t t = n[i]; t < tile_n; ++t) sc[t] = 0.f;                                     \
                }                                                                                            \
                for (int64_t i0 = 0; i0 < TILE_ROWS; i0 += PV_ROWS) {                                        \
                    int64_t rows_n = 0;                                                                      \
                    for (int64_t i = i0; i < i0 + PV_ROWS; ++i) rows_n = n[i] > rows_n ? n[i] : rows_n;      \
                    for (int64_t c = 0; c < D; c += 4 * VW) {                                                \
                        vfloat acc[PV_ROWS][4];                                                              \
                        _Pragma("GCC unroll 6")                                                              \
                        for (int i = 0; i < PV_ROWS; ++i)                                                    \
                            for (int k = 0; k < 4; ++k) acc[i][k] = (vfloat){0};                             \
                        for (int64_t t = 0; t < rows_n; ++t) {                                               \
                            const float* v = Vf + t * D + c;                                                 \
                            const vfloat v0 = vload(v), v1 = vload(v + VW), v2 = vload(v + 2 * VW),          \
                                         v3 = vload(v + 3 * VW);                                             \
                            _Pragma("GCC unroll 6")                                                          \
                            for (int i = 0; i < PV_ROWS; ++i) {                                              \
                                const float p = Sc[(i0 + i) * Lp + t];                                       \
                                acc[i][0] += p * v0; acc[i][1] += p * v1;                                    \
                                acc[i][2] += p * v2; acc[i][3] += p * v3;                                    \
                            }                                                                                \
                        }                                                                                    \
                        for (int64_t i = 0; i < PV_ROWS; ++i) {                                              \
                            const int64_t j = j0 + i0 + i;                                                   \
                            if (j >= R) break;                                                               \
                            const int64_t s = s0 + j / G, g = j % G;                                         \
                            T* os = out + ((s * KV + h) * G + g) * D + c;                                    \
                            float o[4 * VW];                                                                 \
                            for (int k = 0; k < 4; ++k) vstore(o + k * VW, acc[i][k] * inv[i0 + i]);         \
                            for (int64_t d = 0; d < 4 * VW; ++d) os[d] = STORE(o[d]);                        \
                        }                                                                                    \
                    }                                                                                        \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
    }                                                                                                        \
    free(starts);                                                                                            \
}
DEFINE_PREFILL(prefill_attention_f32, decode_attention_f32, float, AS_FLOAT, AS_FLOAT)
DEFINE_PREFILL(prefill_attention_bf16, decode_attention_bf16, uint16_t, bf16_to_float, float_to_bf16)

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

/* SwiGLU of bf16 rows: out[r, i] = silu(gate) * up, where x [R, 2I] holds a row's gate (first I) and up (last I), as
   the fused gate/up matmul writes them; out [R, I]. Rounded where torch's ops round (silu to bf16, then the product),
   so it gives torch's numbers up to its exp's last fp32 bit. torch runs it as two ops, each converting bf16 to fp32
   and back with a temporary between: on the self-judge's packed 64 x 192 batches (AMX machine) silu and mul took
   ~20% of the pass, more than the attention. Only for bf16 weights left in torch's layout (WORKBENCH_PREPACK=0): fp32
   and reordered bf16 weights need none of this (oneDNN does it as the matmul's post-op, faster still). */
void swiglu_bf16(const uint16_t* restrict x, uint16_t* restrict out, int64_t R, int64_t I, int threads)
{
    _Pragma("omp parallel for num_threads(threads) schedule(static)")
    for (int64_t r = 0; r < R; ++r) {
        const uint16_t* restrict gate = x + r * 2 * I;
        const uint16_t* restrict up = gate + I;
        uint16_t* restrict o = out + r * I;
        for (int64_t i = 0; i < I; ++i) {
            const float g = bf16_to_float(gate[i]);
            /* where exp(-g) overflows torch's silu is -0; -ffast-math's division by 1 + inf would give NaN */
            const float silu = -g > 88.72283f ? 0.f * g : BF16_ROUND(g / (1.f + expf(-g)));
            o[i] = float_to_bf16(silu * bf16_to_float(up[i]));
        }
    }
}

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

/* Log-probabilities from logits [R, V] (fp32, or bf16 read as fp32: the LM head's own output, no fp32 copy), one
   row per thread at a time: chosen[r] = logits[r, targets[r]] - logsumexp(logits[r]) and, where mean is not NULL,
   mean[r] = mean(logits[r]) - logsumexp(logits[r]). Two passes over a row (max and sum, then the sum of
   exponentials), the second from cache. */
#define DEFINE_LOGPROBS(NAME, T, LOAD)                                                                       \
void NAME(const T* restrict logits, int64_t R, int64_t V, const int64_t* restrict targets,                   \
          float* restrict chosen, float* restrict mean, int threads)                                         \
{                                                                                                            \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                        \
    for (int64_t r = 0; r < R; ++r) {                                                                        \
        const T* restrict x = logits + r * V;                                                                \
        float m = -FLT_MAX;                                                                                  \
        double total = 0.0;                                                                                  \
        for (int64_t v = 0; v < V; ++v) { const float xv = LOAD(x[v]); m = xv > m ? xv : m; total += xv; }  \
        float sum = 0.f;                                                                                     \
        for (int64_t v = 0; v < V; ++v) sum += expf(LOAD(x[v]) - m);                                         \
        const float lse = m + logf(sum);                                                                     \
        chosen[r] = LOAD(x[targets[r]]) - lse;                                                               \
        if (mean) mean[r] = (float)(total / (double)V) - lse;                                                \
    }                                                                                                        \
}

DEFINE_LOGPROBS(token_logprobs_f32, float, AS_FLOAT)
DEFINE_LOGPROBS(token_logprobs_bf16, uint16_t, bf16_to_float)
