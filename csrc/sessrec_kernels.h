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
/* The session-kNN (VMIS-kNN) kernel, csrc/sessrec_sknn.c. */
#define SR_ERR_INDEX_RANGE -4
/* which index array SR_ERR_INDEX_RANGE names (sr_sknn_scratch.error[0]) */
#define SR_SKNN_ITEM_INDPTR 0
#define SR_SKNN_ITEM_SESSIONS 1
#define SR_SKNN_SESSION_INDPTR 2
#define SR_SKNN_SESSION_ITEMS 3

/* The session index: fixed for a loaded bundle (see sessrec_sknn.c). */
typedef struct {
    int64_t n_items;
    int64_t n_sessions;
    const int64_t *item_indptr;     /* [n_items + 1] */
    const int32_t *item_sessions;   /* [n_item_sessions], newest session first per item */
    int64_t n_item_sessions;
    const int64_t *session_indptr;  /* [n_sessions + 1] */
    const int32_t *session_items;   /* [n_session_items] */
    int64_t n_session_items;
    const float *item_weight;       /* [n_items] */
    const int32_t *categories;      /* [n_items] or NULL (then no category filter) */
    const float *position_weight;   /* [2 * position_half + 1], or NULL with half 0 */
    int32_t position_half;          /* 0: no neighbor-position weighting */
} sr_sknn_index;

/* One call's inputs. */
typedef struct {
    const int32_t *session;         /* rows, oldest first */
    int32_t n_session;
    int32_t sample;
    int32_t neighbors;
    int32_t k;
    int32_t exclude_session;
    float session_bonus;
    const int32_t *excluded;
    int32_t n_excluded;
    const int32_t *allowed;
    int32_t n_allowed;              /* < 0: no allow-list */
    const int32_t *allowed_cats;
    int32_t n_allowed_cats;         /* < 0: no category filter */
} sr_sknn_query;

/* A thread's scratch for one index: stamps, scores and the candidate-session slots. */
typedef struct {
    int64_t n_items;                /* the index sizes the arrays were made for */
    int64_t n_sessions;
    int32_t capacity;               /* candidate-session slots */
    uint32_t epoch;                 /* a stamp never used before with the mark arrays */
    uint32_t *item_seen;            /* [n_items] */
    uint32_t *item_touched;         /* [n_items] */
    uint32_t *item_excluded;        /* [n_items] */
    uint32_t *item_allowed;         /* [n_items] */
    float *item_score;              /* [n_items] */
    int32_t *item_list;             /* [n_items] */
    int32_t *item_pos;              /* [n_items] */
    uint32_t *session_mark;         /* [n_sessions] */
    int32_t *session_slot;          /* [n_sessions] */
    int32_t *heap;                  /* [capacity] */
    int32_t *slot_session;          /* [capacity] */
    float *slot_sim;                /* [capacity] */
    int32_t *slot_pos;              /* [capacity] */
    int32_t *order;                 /* [capacity] */
    int64_t *error;                 /* [2]: array (SR_SKNN_*) and position of a bad entry */
} sr_sknn_scratch;

int32_t sr_sknn_top_k(const sr_sknn_index *index, const sr_sknn_query *query,
                      const sr_sknn_scratch *scratch, int32_t *out_rows, float *out_scores,
                      int32_t *out_n_candidates);
/* CFFI-END */

#endif
