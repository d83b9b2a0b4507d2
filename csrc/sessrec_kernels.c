/* The fused candidate kernel of sessrec (see docs/kernels.md).
 *
 * One call: walk the neighbor rows of the session items (the "seeds"), dedupe with a
 * visited-stamp array, drop excluded / not-allowed / wrong-category rows, score each
 * surviving row against the query and keep the best k in a bounded heap. Candidates are
 * collected in batches (in merge order) before they are scored, so the scattered row loads
 * can be issued ahead of the arithmetic.
 *
 * Determinism contract shared with the Numba twin and the numpy reference
 * (sessrec_sdk/kernels/): a dot product is accumulated in float32 over SR_LANES lanes,
 * element i going to lane i % SR_LANES, lanes folded pairwise (lane j + lane j+half), then
 * the bias is added. Ranking: higher score first, ties broken by the smaller row.
 *
 * The entry point sr_top_k takes the catalog, the query and the scratch as structs
 * (sessrec_kernels.h); inside, the fields are passed on as these arguments:
 *   matrix, is_half, n_items, dim  item matrix, row-major, float32 or IEEE half (uint16)
 *   bias                           [n_items] float32 or NULL
 *   neighbors, row_width, n_use    [n_items, row_width] int32, -1 = no neighbor; the first
 *                                  n_use (<= row_width) entries of each row are used
 *   seeds, n_seeds, exclude_seeds  session rows (valid); exclude_seeds=1 drops them from
 *                                  the result, 0 makes them candidates themselves
 *   categories, allowed_cats, n_allowed_cats
 *                                  category filter; n_allowed_cats < 0 disables it
 *   cands, n_cands                 further candidate rows in [0, n_items), merged after
 *                                  the neighbor rows (items of predicted categories)
 *   excluded, n_excluded           rows never returned
 *   allowed, n_allowed             allow-list of rows; n_allowed < 0 disables it
 *   query                          [dim] float32
 *   seen, allow_mark, epoch        per-thread scratch [n_items] and a per-call stamp that
 *                                  the caller has never used with these arrays
 *   k, out_rows, out_scores        results, best first; returns how many (<= k)
 *   out_n_candidates               rows scored
 * Returns SR_ERR_NEIGHBOR_RANGE (out_rows[0] = the offending item row) if a neighbor id is
 * outside [-1, n_items); SR_ERR_ROW_RANGE (out_rows[0] = the row) if a seed, excluded or
 * allowed row is outside [0, n_items); SR_ERR_ARGUMENT if dim < 1 or n_use is outside
 * [0, row_width]. Every index is checked before it is used, so no input makes the kernel
 * read or write outside its arrays (given arrays of the sizes stated above).
 */
#include <string.h>

#include "sessrec_heap.h"
#include "sessrec_kernels.h"

#define SR_LANES 16
#define SR_BATCH 512      /* candidates collected before they are scored (stack array) */
#define SR_IDS_AHEAD 8    /* neighbor ids whose seen/category entries are prefetched */
#define SR_ROWS_AHEAD 4   /* candidate rows loading while one is scored */
/* helpers are inlined into each instance of the kernel body, so they get its instruction set */
#define SR_INLINE static inline __attribute__((always_inline))

static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    float out;
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24, exact in float32 */
        out = (float)mant * 5.9604644775390625e-8f;
        return sign ? -out : out;
    }
    if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    }
    memcpy(&out, &bits, sizeof out);
    return out;
}

static inline float fold_lanes(float *acc) {
    for (int half = SR_LANES / 2; half >= 1; half /= 2) {
        for (int j = 0; j < half; j++) acc[j] = acc[j] + acc[j + half];
    }
    return acc[0];
}

/* GCC/clang vector extensions: 16 lanes as two 8-float vectors, element i in lane i % 16,
 * exactly the scalar definition above; the compiler maps them to SSE or AVX registers. */
typedef float v8f __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
typedef uint32_t v8u __attribute__((vector_size(32)));
typedef uint16_t v8h __attribute__((vector_size(16)));

SR_INLINE v8f load_f32(const float *p) {
    v8f v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* exact IEEE half -> float of 8 values: shift the magnitude into float32 position and scale
 * by 2^112 (exact, subnormals included); inf/nan patterns are rebuilt separately */
SR_INLINE v8f load_f16(const uint16_t *p) {
    v8h hv;
    memcpy(&hv, p, sizeof hv);
    v8u h = __builtin_convertvector(hv, v8u);
    v8u magnitude = (h & 0x7fffu) << 13;
    v8f scaled;
    memcpy(&scaled, &magnitude, sizeof scaled);
    scaled = scaled * 0x1p112f;
    v8u bits;
    memcpy(&bits, &scaled, sizeof bits);
    v8u special = (v8u)((h & 0x7c00u) == 0x7c00u);
    bits = (bits & ~special) | ((0x7f800000u | ((h & 0x3ffu) << 13)) & special);
    bits |= (h & 0x8000u) << 16;
    v8f out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

#if defined(__x86_64__) && defined(__GNUC__)
#define SR_X86_DISPATCH 1
#include <immintrin.h>
/* the same 8 conversions in one F16C instruction (exact too). Not force-inlined: it is
 * only inlined into the AVX2+F16C instance of the kernel, and the other instance never
 * reaches it (its call sites sit behind a constant-false hw_f16). */
__attribute__((target("avx2,f16c"))) static inline v8f load_f16_hw(const uint16_t *p) {
    return (v8f)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
#else
#define SR_X86_DISPATCH 0
static inline v8f load_f16_hw(const uint16_t *p) { return load_f16(p); }
#endif

/* the pairwise lane fold of the contract, in registers: lanes j + j+8, then j + j+4 (high
 * half onto low half), then j + j+2, then lane 0 + lane 1 */
SR_INLINE float fold_vectors(v8f a0, v8f a1) {
    v8f s = a0 + a1;
    v4f lo = {s[0], s[1], s[2], s[3]}, hi = {s[4], s[5], s[6], s[7]};
    lo += hi;
    return (lo[0] + lo[2]) + (lo[1] + lo[3]);
}

/* query . row. is_half and hw_f16 are constants at every call site (score_batch is
 * instantiated per element type and per instruction set), so each instance has a
 * branch-free loop. */
SR_INLINE v8f load_row8(const float *xf, const uint16_t *xh, const int32_t is_half,
                        const int32_t hw_f16) {
    if (!is_half) return load_f32(xf);
    return hw_f16 ? load_f16_hw(xh) : load_f16(xh);
}

SR_INLINE float dot(const void *row, const int32_t is_half, const int32_t hw_f16,
                    const float *q, int32_t dim) {
    const float *xf = (const float *)row;
    const uint16_t *xh = (const uint16_t *)row;
    v8f a0 = {0}, a1 = {0};
    int32_t i = 0;
    for (; i + SR_LANES <= dim; i += SR_LANES) {
        a0 += load_row8(xf + i, xh + i, is_half, hw_f16) * load_f32(q + i);
        a1 += load_row8(xf + i + 8, xh + i + 8, is_half, hw_f16) * load_f32(q + i + 8);
    }
    if (i == dim) return fold_vectors(a0, a1);
    float acc[SR_LANES];
    memcpy(acc, &a0, sizeof a0);
    memcpy(acc + 8, &a1, sizeof a1);
    for (int j = 0; i < dim; i++, j++) acc[j] += (is_half ? half_to_float(xh[i]) : xf[i]) * q[i];
    return fold_lanes(acc);
}

SR_INLINE void prefetch_row(const char *row, int64_t row_bytes) {
    for (int64_t off = 0; off < row_bytes; off += 64) __builtin_prefetch(row + off);
}

/* Score a batch of distinct candidate rows, keeping SR_ROWS_AHEAD whole rows in flight:
 * the rows are scattered over a large mapping, so the loads overlap instead of queueing. */
SR_INLINE void score_batch(const int32_t *cand, int32_t n, const char *matrix,
                           int64_t row_bytes, int32_t is_half, int32_t hw_f16, int32_t dim,
                           const float *bias, const float *query, sr_item_heap *h) {
    for (int32_t i = 0; i < n && i < SR_ROWS_AHEAD; i++)
        prefetch_row(matrix + (int64_t)cand[i] * row_bytes, row_bytes);
    for (int32_t i = 0; i < n; i++) {
        if (i + SR_ROWS_AHEAD < n)
            prefetch_row(matrix + (int64_t)cand[i + SR_ROWS_AHEAD] * row_bytes, row_bytes);
        int32_t c = cand[i];
        float score = dot(matrix + (int64_t)c * row_bytes, is_half, hw_f16, query, dim);
        if (bias) score += bias[c];
        sr_heap_offer(h, score, c);
    }
}

/* one branch per batch instead of one per element: each arm inlines a constant is_half */
SR_INLINE void score_batch_typed(const int32_t *cand, int32_t n, const char *matrix,
                                 int64_t row_bytes, int32_t is_half, const int32_t hw_f16,
                                 int32_t dim, const float *bias, const float *query,
                                 sr_item_heap *h) {
    if (is_half) score_batch(cand, n, matrix, row_bytes, 1, hw_f16, dim, bias, query, h);
    else score_batch(cand, n, matrix, row_bytes, 0, hw_f16, dim, bias, query, h);
}

#define SR_TOP_K_PARAMS \
    const void *matrix, int32_t is_half, int64_t n_items, int32_t dim, \
    const float *bias, \
    const int32_t *neighbors, int32_t row_width, int32_t n_use, \
    const int32_t *seeds, int32_t n_seeds, int32_t exclude_seeds, \
    const int32_t *categories, const int32_t *allowed_cats, int32_t n_allowed_cats, \
    const int32_t *cands, int32_t n_cands, \
    const int32_t *excluded, int32_t n_excluded, \
    const int32_t *allowed, int32_t n_allowed, \
    const float *query, \
    uint32_t *seen, uint32_t *allow_mark, uint32_t epoch, \
    int32_t k, int32_t *out_rows, float *out_scores, int32_t *out_n_candidates
#define SR_TOP_K_ARGS \
    matrix, is_half, n_items, dim, bias, neighbors, row_width, n_use, seeds, n_seeds, \
    exclude_seeds, categories, allowed_cats, n_allowed_cats, cands, n_cands, excluded, \
    n_excluded, allowed, \
    n_allowed, query, seen, allow_mark, epoch, k, out_rows, out_scores, out_n_candidates

/* The kernel body, instantiated below once per instruction set (hw_f16 constant). */
SR_INLINE int32_t top_k_body(SR_TOP_K_PARAMS, const int32_t hw_f16) {
    const int64_t row_bytes = (int64_t)dim * (is_half ? 2 : 4);
    const char *mat = (const char *)matrix;
    sr_item_heap h = {out_rows, out_scores, k, 0};
    int32_t batch[SR_BATCH], n_batch = 0, n_scored = 0;
    *out_n_candidates = 0;
    if (dim < 1 || row_width < 0 || n_use < 0 || n_use > row_width) return SR_ERR_ARGUMENT;
    if (k <= 0) return 0;
    /* rows come from the caller (the id lookup): checked here, before any is written */
    if (!sr_rows_in_range(seeds, n_seeds, n_items, out_rows)
        || !sr_rows_in_range(cands, n_cands, n_items, out_rows)
        || !sr_rows_in_range(excluded, n_excluded, n_items, out_rows)
        || !sr_rows_in_range(allowed, n_allowed, n_items, out_rows)) return SR_ERR_ROW_RANGE;

    for (int32_t i = 0; i < n_excluded; i++) seen[excluded[i]] = epoch;
    if (exclude_seeds) {
        for (int32_t i = 0; i < n_seeds; i++) seen[seeds[i]] = epoch;
    }
    for (int32_t i = 0; i < n_allowed; i++) allow_mark[allowed[i]] = epoch;

    /* Two passes per batch: (1) merge the neighbor ids, dedupe and filter them (small
     * random reads of seen/allow_mark/categories, prefetched SR_IDS_AHEAD ids ahead),
     * (2) score the survivors. t = -1 visits the seed itself when it may be returned.
     * List s = n_seeds, if any, is the caller's further candidates. */
    const int32_t n_lists = n_seeds + (n_cands > 0);
    for (int32_t s = 0; s < n_lists; s++) {
        const int32_t from_seed = s < n_seeds;
        const int32_t *row = from_seed ? neighbors + (int64_t)seeds[s] * row_width : cands;
        const int32_t len = from_seed ? n_use : n_cands;
        for (int32_t t = exclude_seeds || !from_seed ? 0 : -1; t < len; t++) {
            if (t + SR_IDS_AHEAD < len) {
                int32_t p = row[t + SR_IDS_AHEAD];
                if (p >= 0 && p < n_items) {
                    __builtin_prefetch(&seen[p]);
                    if (n_allowed_cats >= 0) __builtin_prefetch(&categories[p]);
                }
            }
            int32_t c = t < 0 ? seeds[s] : row[t];
            if (c < -1 || c >= n_items) {  /* only a neighbor id can be: cands are checked */
                out_rows[0] = from_seed ? seeds[s] : c;
                return SR_ERR_NEIGHBOR_RANGE;
            }
            if (c == -1 || seen[c] == epoch) continue;
            seen[c] = epoch;
            if (n_allowed >= 0 && allow_mark[c] != epoch) continue;
            if (n_allowed_cats >= 0) {
                int32_t cat = categories[c], ok = 0;
                for (int32_t j = 0; j < n_allowed_cats; j++) {
                    if (allowed_cats[j] == cat) { ok = 1; break; }
                }
                if (!ok) continue;
            }
            /* start the row's first line now: by the time the batch is scored its load
             * is under way, overlapping the rest of this pass (-20% kernel time, cold) */
            __builtin_prefetch(mat + (int64_t)c * row_bytes);
            batch[n_batch++] = c;
            if (n_batch == SR_BATCH) {
                score_batch_typed(batch, n_batch, mat, row_bytes, is_half, hw_f16, dim, bias,
                                  query, &h);
                n_scored += n_batch;
                n_batch = 0;
            }
        }
    }
    score_batch_typed(batch, n_batch, mat, row_bytes, is_half, hw_f16, dim, bias, query, &h);
    n_scored += n_batch;

    sr_heap_sort(&h);
    *out_n_candidates = n_scored;
    return h.size;
}

/* Portable instance: SSE2 on x86-64, whatever the compiler targets elsewhere. */
static int32_t top_k_base(SR_TOP_K_PARAMS) { return top_k_body(SR_TOP_K_ARGS, 0); }

#if SR_X86_DISPATCH
/* AVX2 + F16C instance: 8-float vectors in one register, float16 rows converted by
 * vcvtph2ps (a float16 row costs about as much to score as a float32 row otherwise). */
__attribute__((target("avx2,f16c")))
static int32_t top_k_avx2(SR_TOP_K_PARAMS) { return top_k_body(SR_TOP_K_ARGS, 1); }
#endif

/* Which instance sr_top_k runs: -1 not chosen yet, 0 portable, 1 AVX2 + F16C. */
static int32_t sr_isa = -1;

int32_t sr_kernel_isa(int32_t request) {
    int32_t best = 0;
#if SR_X86_DISPATCH
    __builtin_cpu_init();
    best = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
#endif
    if (request == 0) sr_isa = 0;
    else if (request > 0 || sr_isa < 0) sr_isa = best;  /* benign race: same value */
    return sr_isa;
}

int32_t sr_top_k(const sr_catalog *catalog, const sr_query *query, const sr_scratch *scratch,
                 int32_t *out_rows, float *out_scores, int32_t *out_n_candidates) {
    const sr_catalog *c = catalog;
    const sr_query *q = query;
    if (c->categories == NULL && q->n_allowed_cats >= 0) return SR_ERR_ARGUMENT;
    if (sr_isa < 0) sr_kernel_isa(-1);
#define SR_STRUCT_ARGS \
    c->matrix, c->is_half, c->n_items, c->dim, c->bias, c->neighbors, c->row_width, \
    q->n_use, q->seeds, q->n_seeds, q->exclude_seeds, c->categories, q->allowed_cats, \
    q->n_allowed_cats, q->candidates, q->n_candidates, q->excluded, q->n_excluded, \
    q->allowed, q->n_allowed, q->query, \
    scratch->seen, scratch->allow_mark, scratch->epoch, q->k, out_rows, out_scores, \
    out_n_candidates
#if SR_X86_DISPATCH
    if (sr_isa == 1) return top_k_avx2(SR_STRUCT_ARGS);
#endif
    return top_k_base(SR_STRUCT_ARGS);
#undef SR_STRUCT_ARGS
}

/* Rows of a session's integer ids: one lower-bound binary search per id in sorted_ids
 * [n] (rows in that order: order[n]), all ids stepping in lockstep so that their cache
 * misses overlap instead of queueing (numpy's searchsorted finishes one id before the
 * next). Writes the rows of the ids found, in input order, to out_rows; returns how many
 * (the others are unknown). */
#define SR_FIND_CHUNK 64
int32_t sr_find_int64(
    const int64_t *sorted_ids, const int32_t *order, int64_t n,
    const int64_t *ids, int32_t n_ids, int32_t *out_rows) {
    int32_t n_found = 0;
    if (n <= 0) return 0;
    for (int32_t start = 0; start < n_ids; start += SR_FIND_CHUNK) {
        int32_t m = n_ids - start < SR_FIND_CHUNK ? n_ids - start : SR_FIND_CHUNK;
        const int64_t *want = ids + start;
        int64_t base[SR_FIND_CHUNK];
        for (int32_t i = 0; i < m; i++) base[i] = 0;
        /* invariant: the lower bound of want[i] is in [base[i], base[i] + len] */
        for (int64_t len = n; len > 1;) {
            int64_t half = len / 2;
            for (int32_t i = 0; i < m; i++)  /* independent loads: they overlap */
                base[i] = sorted_ids[base[i] + half - 1] < want[i] ? base[i] + half : base[i];
            len -= half;
        }
        for (int32_t i = 0; i < m; i++) {
            int64_t pos = base[i] + (sorted_ids[base[i]] < want[i]);
            if (pos < n && sorted_ids[pos] == want[i]) out_rows[n_found++] = order[pos];
        }
    }
    return n_found;
}
