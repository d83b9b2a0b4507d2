/* sessrec C kernels: the candidate kernel (merge neighbor rows, filter, score, top-k in
 * one pass) and the id lookup of integer catalogs.
 *
 * The declaration below (between the markers) is also what csrc/build_kernels.py hands
 * to cffi, so it must stay plain C declarations without preprocessor lines.
 */
#ifndef SESSREC_KERNELS_H
#define SESSREC_KERNELS_H
#include <stdint.h>

/* CFFI-BEGIN */
#define SR_ERR_NEIGHBOR_RANGE -1
#define SR_ERR_ROW_RANGE -2
#define SR_ERR_ARGUMENT -3

/* The catalog a kernel scores against: fixed for a loaded bundle. */
typedef struct {
    const void *matrix;          /* [n_items, dim] float32, or IEEE half if is_half */
    int32_t is_half;
    int64_t n_items;
    int32_t dim;
    const float *bias;           /* [n_items] or NULL */
    const int32_t *neighbors;    /* [n_items, row_width], -1 = no neighbor */
    int32_t row_width;
    const int32_t *categories;   /* [n_items] or NULL (then no category filter) */
} sr_catalog;

/* One call's inputs (see sessrec_kernels.c for each field's meaning). */
typedef struct {
    const int32_t *seeds;
    int32_t n_seeds;
    int32_t exclude_seeds;
    int32_t n_use;
    const int32_t *allowed_cats;
    int32_t n_allowed_cats;      /* < 0: no category filter */
    const int32_t *excluded;
    int32_t n_excluded;
    const int32_t *allowed;
    int32_t n_allowed;           /* < 0: no allow-list */
    const float *query;          /* [dim] */
    int32_t k;
    const int32_t *candidates;   /* further candidate rows, merged after the neighbor rows */
    int32_t n_candidates;        /* (e.g. the items of the predicted categories); 0 = none */
} sr_query;

/* A thread's visited stamps ([n_items] each) and a stamp never used before with them. */
typedef struct {
    uint32_t *seen;
    uint32_t *allow_mark;
    uint32_t epoch;
} sr_scratch;

int32_t sr_top_k(const sr_catalog *catalog, const sr_query *query, const sr_scratch *scratch,
                 int32_t *out_rows, float *out_scores, int32_t *out_n_candidates);

/* The instruction set sr_top_k uses: request -1 = keep (the best this CPU has, chosen on
 * first use), 0 = the portable instance, 1 = the best again. Returns 0 (portable) or 1
 * (AVX2 + F16C). Both give identical results; tests run both. */
int32_t sr_kernel_isa(int32_t request);

int32_t sr_find_int64(
    const int64_t *sorted_ids, const int32_t *order, int64_t n,
    const int64_t *ids, int32_t n_ids, int32_t *out_rows);
/* CFFI-END */

#endif
