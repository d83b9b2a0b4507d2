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

int32_t sr_top_k(
    const void *matrix, int32_t is_half, int64_t n_items, int32_t dim,
    const float *bias,
    const int32_t *neighbors, int32_t row_width, int32_t n_use,
    const int32_t *seeds, int32_t n_seeds, int32_t exclude_seeds,
    const int32_t *categories, const int32_t *allowed_cats, int32_t n_allowed_cats,
    const int32_t *excluded, int32_t n_excluded,
    const int32_t *allowed, int32_t n_allowed,
    const float *query,
    uint32_t *seen, uint32_t *allow_mark, uint32_t epoch,
    int32_t k, int32_t *out_rows, float *out_scores, int32_t *out_n_candidates);

/* The instruction set sr_top_k uses: request -1 = keep (the best this CPU has, chosen on
 * first use), 0 = the portable instance, 1 = the best again. Returns 0 (portable) or 1
 * (AVX2 + F16C). Both give identical results; tests run both. */
int32_t sr_kernel_isa(int32_t request);

int32_t sr_find_int64(
    const int64_t *sorted_ids, const int32_t *order, int64_t n,
    const int64_t *ids, int32_t n_ids, int32_t *out_rows);
/* CFFI-END */

#endif
