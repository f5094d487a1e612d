/* Matrix products of few rows (decoding) that read each weight once, at the speed memory streams it.
 *
 * y[r, j] = sum_i x[r, i] * w[j, i] for r < rows, with w row-major [n, k] as the model stores it: each output
 * row j reads w's row j from start to end, so a thread's share of w (a run of whole rows) is one sequential
 * stream, which a CPU's prefetchers keep at memory speed. Why not the library products (oneDNN, fbgemm):
 * measured on one row, they read weights at 17-23 GB/s where this machine streams 31-34 (docs/serving.md,
 * "Decode kernels"). Sums are in float32; each result is rounded once to the output's type.
 *
 * Weights: bfloat16, or int8 with one float scale per output row (y = scale[j] * sum x * w; the activations then
 * quantized to int8 per block of 32, as llama.cpp's q8_0 multiplies). Activations and results: bfloat16 or
 * float32 (`xf32`). Every function returns 0, or -1 where it cannot compute the shapes
 * (then the caller uses the library product). Threads: OpenMP, the process's runtime (torch's), with the
 * calling thread's thread count, so the caller's budget of threads holds here too.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

#define MAX_ROWS 16  /* serving.kernels.MAX_ROWS uses at most 8: the library's products win beyond */

static inline uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                         /* round to nearest even */
    return (uint16_t)(u >> 16);
}

static inline float from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline void store(void* y, int yf32, int64_t index, float value) {
    if (yf32) ((float*)y)[index] = value;
    else ((uint16_t*)y)[index] = to_bf16(value);
}

#if defined(__AVX2__)
static inline float vsum8(__m256 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

/* The instruction set this file was compiled for (the caller logs it). */
const char* ftaas_products_isa(void) {
#if defined(__AVX512BF16__)
    return "avx512_bf16";
#elif defined(__AVX512F__)
    return "avx512f";
#elif defined(__AVX2__) && defined(__FMA__)
    return "avx2";
#else
    return "scalar";
#endif
}

#if defined(__AVX512F__)
#define LANES 16
typedef __m512 vec;
static inline vec vzero(void) { return _mm512_setzero_ps(); }
static inline vec vfma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
static inline vec vadd(vec a, vec b) { return _mm512_add_ps(a, b); }
static inline float vsum(vec a) { return _mm512_reduce_add_ps(a); }
static inline vec load_bf16(const uint16_t* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
static inline vec load_f32(const float* p) { return _mm512_loadu_ps(p); }
#elif defined(__AVX2__) && defined(__FMA__)
#define LANES 8
typedef __m256 vec;
static inline vec vzero(void) { return _mm256_setzero_ps(); }
static inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
static inline vec vadd(vec a, vec b) { return _mm256_add_ps(a, b); }
static inline float vsum(vec a) { return vsum8(a); }
static inline vec load_bf16(const uint16_t* p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
static inline vec load_f32(const float* p) { return _mm256_loadu_ps(p); }
#endif

/* Block of 4 activation rows (the registers of their sums): rows r0..r0+nr-1 of x, as float32 in xs. */
#define ROW_BLOCK 4

#if defined(__AVX512BF16__)
/* bf16 weights and bf16 activations: the CPU's bf16 dot product (32 products per instruction). */
static inline __attribute__((always_inline)) void rows_bf16_native(const uint16_t* x, int nr, const uint16_t* wj, int64_t k, float* out) {
    __m512 acc[ROW_BLOCK][2];
    for (int r = 0; r < ROW_BLOCK; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= k; i += 64) {
        __m512bh w0 = (__m512bh)_mm512_loadu_si512((const void*)(wj + i));
        __m512bh w1 = (__m512bh)_mm512_loadu_si512((const void*)(wj + i + 32));
        for (int r = 0; r < nr; r++) {
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], (__m512bh)_mm512_loadu_si512((const void*)(x + r * k + i)), w0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], (__m512bh)_mm512_loadu_si512((const void*)(x + r * k + i + 32)), w1);
        }
    }
    for (; i < k; i += 32) {
        __m512bh w0 = (__m512bh)_mm512_loadu_si512((const void*)(wj + i));
        for (int r = 0; r < nr; r++)
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], (__m512bh)_mm512_loadu_si512((const void*)(x + r * k + i)), w0);
    }
    for (int r = 0; r < nr; r++) out[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]));
}
#endif

#if defined(LANES)
/* bf16 weights widened to float32 as they are read, activations already float32 (xs, [nr, k]). */
static inline __attribute__((always_inline)) void rows_bf16_converted(const float* xs, int nr, const uint16_t* wj,
                                                                      int64_t k, float* out) {
    vec acc[ROW_BLOCK][2];
    for (int r = 0; r < ROW_BLOCK; r++) acc[r][0] = acc[r][1] = vzero();
    int64_t i = 0;
    for (; i + 2 * LANES <= k; i += 2 * LANES) {
        vec w0 = load_bf16(wj + i), w1 = load_bf16(wj + i + LANES);
        for (int r = 0; r < nr; r++) {
            acc[r][0] = vfma(load_f32(xs + r * k + i), w0, acc[r][0]);
            acc[r][1] = vfma(load_f32(xs + r * k + i + LANES), w1, acc[r][1]);
        }
    }
    for (; i < k; i += LANES) {
        vec w0 = load_bf16(wj + i);
        for (int r = 0; r < nr; r++) acc[r][0] = vfma(load_f32(xs + r * k + i), w0, acc[r][0]);
    }
    for (int r = 0; r < nr; r++) out[r] = vsum(vadd(acc[r][0], acc[r][1]));
}
#endif

/* Each row function called with a constant row count: the compiler keeps every sum in a register. */
#define BY_ROWS(call, nr) do { switch (nr) { case 1: call(1); break; case 2: call(2); break; \
                                           case 3: call(3); break; default: call(4); } } while (0)

#if defined(LANES)
static void to_f32(const void* x, int xf32, int64_t count, float* out) {
    if (xf32) memcpy(out, x, count * sizeof(float));
    else for (int64_t i = 0; i < count; i++) out[i] = from_bf16(((const uint16_t*)x)[i]);
}

/* The products that widen bf16 weights to float32 as they read them (a CPU without a bf16 dot product, or float32
 * activations). The activations are widened once per thread. */
static int widened_products(const void* x, int64_t rows, int xf32, const uint16_t* w, int64_t n, int64_t k,
                            void* y) {
    int failed = 0;
    #pragma omp parallel reduction(|:failed)
    {
        float* xs = malloc(rows * k * sizeof(float));
        if (xs) to_f32(x, xf32, rows * k, xs);
        else failed = 1;
        #pragma omp for schedule(static)
        for (int64_t j = 0; j < n; j++) {
            float out[ROW_BLOCK];
            if (!xs) continue;
            for (int64_t r0 = 0; r0 < rows; r0 += ROW_BLOCK) {
                int nr = rows - r0 < ROW_BLOCK ? (int)(rows - r0) : ROW_BLOCK;
#define WIDENED_BF16(c) rows_bf16_converted(xs + r0 * k, c, w + j * k, k, out)
                BY_ROWS(WIDENED_BF16, nr);
                for (int r = 0; r < nr; r++) store(y, xf32, (r0 + r) * n + j, out[r]);
            }
        }
        free(xs);
    }
    return failed ? -1 : 0;
}
#endif

/* y [rows, n] = x [rows, k] @ w.T, w bf16 [n, k]; x and y bf16, or float32 where xf32. k % 32 == 0. */
int ftaas_products_bf16(const void* x, int64_t rows, int xf32, const uint16_t* w, int64_t n, int64_t k, void* y) {
#if !defined(LANES)
    (void)x; (void)rows; (void)xf32; (void)w; (void)n; (void)k; (void)y;
    return -1;
#else
    if (k % 32 || rows < 1 || rows > MAX_ROWS) return -1;
#if defined(__AVX512BF16__)
    if (!xf32) {
        #pragma omp parallel for schedule(static)
        for (int64_t j = 0; j < n; j++) {
            float out[ROW_BLOCK];
            for (int64_t r0 = 0; r0 < rows; r0 += ROW_BLOCK) {
                int nr = rows - r0 < ROW_BLOCK ? (int)(rows - r0) : ROW_BLOCK;
#define NATIVE(c) rows_bf16_native((const uint16_t*)x + r0 * k, c, w + j * k, k, out)
                BY_ROWS(NATIVE, nr);
                for (int r = 0; r < nr; r++) store(y, 0, (r0 + r) * n + j, out[r]);
            }
        }
        return 0;
    }
#endif
    return widened_products(x, rows, xf32, w, n, k, y);
#endif
}

#if defined(__AVX2__) && defined(__FMA__)
/* int8 weights times int8 activations, as llama.cpp's q8_0 multiplies: the activations quantized per block of
 * 32 (scale max|x| / 127, values rounded to nearest), each block's products summed exactly in int32, then
 * scaled in float32. A CPU without a bf16 or int8 dot product into float32 (AVX2) spends two thirds of a
 * widened product's instructions converting weights; this reads 32 weights per instruction instead of 8. */

/* The activations' blocks, and each block's scale repeated 8 times (one per int32 lane its sums fill). */
static void quantize_blocks(const void* x, int xf32, int64_t count, int8_t* q, float* lane_scales) {
    for (int64_t b = 0; b < count / 32; b++) {
        float values[32], top = 0.0f;
        for (int i = 0; i < 32; i++) {
            values[i] = xf32 ? ((const float*)x)[b * 32 + i] : from_bf16(((const uint16_t*)x)[b * 32 + i]);
            top = fmaxf(top, fabsf(values[i]));
        }
        float inverse = top > 0.0f ? 127.0f / top : 0.0f;
        for (int i = 0; i < 32; i++) q[b * 32 + i] = (int8_t)lrintf(values[i] * inverse);
        for (int i = 0; i < 8; i++) lane_scales[b * 8 + i] = top / 127.0f;
    }
}

/* Eight int32 sums of 4 products each of a block of 32: w (int8, never -128) times x (int8). The unsigned-by-
 * signed instructions take |w| and x with w's sign. */
static inline __m256i block_sums(__m256i w, __m256i x) {
    __m256i magnitude = _mm256_sign_epi8(w, w), signed_x = _mm256_sign_epi8(x, w);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), magnitude, signed_x);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), magnitude, signed_x);
#else
    /* pairs of |w| x <= 2 * 127 * 127: no int16 saturation */
    return _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, signed_x), _mm256_set1_epi16(1));
#endif
}

static inline __attribute__((always_inline)) void rows_q8(const int8_t* xq, const float* lanes, int nr,
                                                          const int8_t* wj, int64_t k, float* out) {
    int64_t i = 0;
    float partial[ROW_BLOCK] = {0};
#if defined(__AVX512F__) && defined(__AVX512BW__)
    __m512 wide[ROW_BLOCK];
    for (int r = 0; r < ROW_BLOCK; r++) wide[r] = _mm512_setzero_ps();
    for (; i + 64 <= k; i += 64) {
        __m512i w = _mm512_loadu_si512((const void*)(wj + i));
        __m512i magnitude = _mm512_abs_epi8(w);
        __mmask64 negative = _mm512_movepi8_mask(w);
        for (int r = 0; r < nr; r++) {
            __m512i x = _mm512_loadu_si512((const void*)(xq + r * k + i));
            __m512i signed_x = _mm512_mask_sub_epi8(x, negative, _mm512_setzero_si512(), x);
#if defined(__AVX512VNNI__)
            __m512i sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), magnitude, signed_x);
#else
            __m512i sums = _mm512_madd_epi16(_mm512_maddubs_epi16(magnitude, signed_x), _mm512_set1_epi16(1));
#endif
            wide[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), _mm512_loadu_ps(lanes + (r * k + i) / 4), wide[r]);
        }
    }
    for (int r = 0; r < nr; r++) partial[r] = _mm512_reduce_add_ps(wide[r]);
#endif
    __m256 acc[ROW_BLOCK];
    for (int r = 0; r < ROW_BLOCK; r++) acc[r] = _mm256_setzero_ps();
    for (; i < k; i += 32) {
        __m256i w = _mm256_loadu_si256((const __m256i*)(wj + i));
        for (int r = 0; r < nr; r++) {
            __m256i sums = block_sums(w, _mm256_loadu_si256((const __m256i*)(xq + r * k + i)));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_loadu_ps(lanes + (r * k + i) / 4), acc[r]);
        }
    }
    for (int r = 0; r < nr; r++) out[r] = partial[r] + vsum8(acc[r]);
}
#endif

/* y [rows, n] = (q8(x) [rows, k] @ w.T) * scales, w int8 [n, k], scales float32 [n]; x and y bf16, or float32
 * where xf32; the activations x quantized per block of 32 first (`quantize_blocks`). k % 32 == 0. -1 where this
 * CPU has no AVX2. */
int ftaas_products_int8(const void* x, int64_t rows, int xf32, const int8_t* w, const float* scales, int64_t n,
                        int64_t k, void* y) {
#if !(defined(__AVX2__) && defined(__FMA__))
    (void)x; (void)rows; (void)xf32; (void)w; (void)scales; (void)n; (void)k; (void)y;
    return -1;
#else
    if (k % 32 || rows < 1 || rows > MAX_ROWS) return -1;
    int8_t* xq = malloc(rows * k);
    float* lanes = malloc(rows * k / 4 * sizeof(float));
    if (!xq || !lanes) { free(xq); free(lanes); return -1; }
    quantize_blocks(x, xf32, rows * k, xq, lanes);
    #pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < n; j++) {
        float out[ROW_BLOCK];
        for (int64_t r0 = 0; r0 < rows; r0 += ROW_BLOCK) {
            int nr = rows - r0 < ROW_BLOCK ? (int)(rows - r0) : ROW_BLOCK;
#define QUANTIZED(c) rows_q8(xq + r0 * k, lanes + r0 * k / 4, c, w + j * k, k, out)
            BY_ROWS(QUANTIZED, nr);
            for (int r = 0; r < nr; r++) store(y, xf32, (r0 + r) * n + j, out[r] * scales[j]);
        }
    }
    free(xq);
    free(lanes);
    return 0;
#endif
}

/* ---------------------------------------------------------------------------------------------------------
 * The rest of a decode step's per-layer work that torch spends a dozen operator calls on for one row.
 */

/* Llama's RMSNorm of bf16 rows: out = bf16(weight * bf16(x * 1 / sqrt(mean(x^2) + eps))), the mean in float32.
 * x, out [rows, h]; weight [h]. */
int ftaas_rms_norm_bf16(const uint16_t* x, int64_t rows, int64_t h, const uint16_t* weight, float eps,
                        uint16_t* out) {
    for (int64_t r = 0; r < rows; r++) {
        const uint16_t* row = x + r * h;
        float sum = 0.0f;
        for (int64_t i = 0; i < h; i++) {
            float value = from_bf16(row[i]);
            sum += value * value;
        }
        float inverse = 1.0f / sqrtf(sum / (float)h + eps);
        for (int64_t i = 0; i < h; i++)
            out[r * h + i] = to_bf16(from_bf16(weight[i]) * from_bf16(to_bf16(from_bf16(row[i]) * inverse)));
    }
    return 0;
}

static inline float dot_bf16_f32(const float* q, const uint16_t* k, int64_t d) {
#if defined(LANES)
    if (d % LANES == 0) {
        vec acc = vzero();
        for (int64_t i = 0; i < d; i += LANES) acc = vfma(load_f32(q + i), load_bf16(k + i), acc);
        return vsum(acc);
    }
#endif
    float sum = 0.0f;
    for (int64_t i = 0; i < d; i++) sum += q[i] * from_bf16(k[i]);
    return sum;
}

/* One decode row's attention over its own cached keys and values, bf16: for each query head h (heads a
 * multiple of kv_heads; head h reads KV head h / (heads / kv_heads)), softmax(scale * q_h . k_p) over positions
 * p in [first, length) weighting v_p, summed in float32. q, out [heads, d]; key p of KV head g at
 * keys + g * head_stride + p * position_stride (values likewise). */
int ftaas_decode_attention_bf16(const uint16_t* q, int64_t heads, int64_t kv_heads, int64_t d, const uint16_t* keys,
                                const uint16_t* values, int64_t head_stride, int64_t position_stride, int64_t first,
                                int64_t length, float scale, uint16_t* out) {
    if (kv_heads < 1 || heads % kv_heads || d > 1024 || length <= first) return -1;
    int64_t group = heads / kv_heads, count = length - first;
    int failed = 0;
    #pragma omp parallel for schedule(static) reduction(|:failed) if (count * heads * d > (1 << 20))
    for (int64_t h = 0; h < heads; h++) {
        float qf[1024], acc[1024];
        float* scores = malloc(count * sizeof(float));
        if (!scores) { failed = 1; continue; }
        const uint16_t* k = keys + (h / group) * head_stride + first * position_stride;
        const uint16_t* v = values + (h / group) * head_stride + first * position_stride;
        for (int64_t i = 0; i < d; i++) { qf[i] = from_bf16(q[h * d + i]); acc[i] = 0.0f; }
        float top = -INFINITY;
        for (int64_t p = 0; p < count; p++) {
            scores[p] = dot_bf16_f32(qf, k + p * position_stride, d) * scale;
            if (scores[p] > top) top = scores[p];
        }
        float total = 0.0f;
        for (int64_t p = 0; p < count; p++) {
            float weight = expf(scores[p] - top);
            total += weight;
            const uint16_t* vp = v + p * position_stride;
            for (int64_t i = 0; i < d; i++) acc[i] += weight * from_bf16(vp[i]);
        }
        for (int64_t i = 0; i < d; i++) out[h * d + i] = to_bf16(acc[i] / total);
        free(scores);
    }
    return failed ? -1 : 0;
}

/* One decode row's attention after RoPE, as the engine computes a decode step of a Llama layer: the row's
 * query and key heads (qkv [heads + 2 * kv_heads, d]: queries, keys, values) rotated by the position's cos and
 * signed sin ([d] each; bitwise serving.model._rope's bf16 operations: x * cos + roll(x, d / 2) * signed_sin,
 * each product and the sum rounded to bf16), its key and value written to the cache at `position`, then
 * attention over positions [first, position] (`ftaas_decode_attention_bf16`). out [heads, d]. */
int ftaas_decode_rope_attention_bf16(const uint16_t* qkv, int64_t heads, int64_t kv_heads, int64_t d,
                                     const uint16_t* cos, const uint16_t* signed_sin, uint16_t* keys,
                                     uint16_t* values, int64_t head_stride, int64_t position_stride,
                                     int64_t position, int64_t first, float scale, uint16_t* out) {
    if (kv_heads < 1 || heads % kv_heads || d > 1024 || d % 2 || position < first) return -1;
    uint16_t* rotated = malloc((heads + kv_heads) * d * sizeof(uint16_t));
    if (!rotated) return -1;
    int64_t half = d / 2;
    for (int64_t h = 0; h < heads + kv_heads; h++) {
        const uint16_t* x = qkv + h * d;
        for (int64_t i = 0; i < d; i++) {
            float straight = from_bf16(to_bf16(from_bf16(x[i]) * from_bf16(cos[i])));
            float turned = from_bf16(to_bf16(from_bf16(x[(i + half) % d]) * from_bf16(signed_sin[i])));
            rotated[h * d + i] = to_bf16(straight + turned);
        }
    }
    for (int64_t g = 0; g < kv_heads; g++) {
        memcpy(keys + g * head_stride + position * position_stride, rotated + (heads + g) * d, d * sizeof(uint16_t));
        memcpy(values + g * head_stride + position * position_stride, qkv + (heads + kv_heads + g) * d,
               d * sizeof(uint16_t));
    }
    int failed = ftaas_decode_attention_bf16(rotated, heads, kv_heads, d, keys, values, head_stride,
                                             position_stride, first, position + 1, scale, out);
    free(rotated);
    return failed;
}

/* The gated MLP's activation of bf16 rows: out [rows, n] = bf16(bf16(silu(gate)) * up), gate_up [rows, 2n] (gate
 * then up), silu computed in float32 and rounded as torch's bf16 F.silu is. */
int ftaas_silu_mul_bf16(const uint16_t* gate_up, int64_t rows, int64_t n, uint16_t* out) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < n; i++) {
            float gate = from_bf16(gate_up[r * 2 * n + i]);
            float activated = from_bf16(to_bf16(gate / (1.0f + expf(-gate))));
            out[r * n + i] = to_bf16(activated * from_bf16(gate_up[r * 2 * n + n + i]));
        }
    return 0;
}
