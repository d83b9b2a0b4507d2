/* The bounded top-k heap and the row range check shared by both kernels
 * (sessrec_kernels.c: candidate scoring; sessrec_sknn.c: session-kNN), so that their
 * results are ordered and tied by one rule. Internal: not part of the cffi interface. */
#ifndef SESSREC_HEAP_H
#define SESSREC_HEAP_H

#include <stdint.h>

/* a is worse than b: lower score, or equal score and larger row (the result ranking) */
static inline int sr_item_worse(float sa, int32_t ra, float sb, int32_t rb) {
    return sa < sb || (sa == sb && ra > rb);
}

/* The k best (score, row) pairs seen so far, as a min-heap on sr_item_worse: the root is
 * the worst pair kept. rows/scores hold k slots; size counts the pairs kept. */
typedef struct {
    int32_t *rows;
    float *scores;
    int32_t k, size;
} sr_item_heap;

static inline void sr_item_sift_down(int32_t *rows, float *scores, int32_t n, int32_t i) {
    for (;;) {
        int32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && sr_item_worse(scores[l], rows[l], scores[m], rows[m])) m = l;
        if (r < n && sr_item_worse(scores[r], rows[r], scores[m], rows[m])) m = r;
        if (m == i) return;
        float ts = scores[i]; scores[i] = scores[m]; scores[m] = ts;
        int32_t tr = rows[i]; rows[i] = rows[m]; rows[m] = tr;
        i = m;
    }
}

static inline void sr_item_sift_up(int32_t *rows, float *scores, int32_t i) {
    while (i > 0) {
        int32_t p = (i - 1) / 2;
        if (!sr_item_worse(scores[i], rows[i], scores[p], rows[p])) return;
        float ts = scores[i]; scores[i] = scores[p]; scores[p] = ts;
        int32_t tr = rows[i]; rows[i] = rows[p]; rows[p] = tr;
        i = p;
    }
}

/* Keep (score, row) if it is among the k best so far (always inlined: the hot loop). */
static inline __attribute__((always_inline)) void sr_heap_offer(sr_item_heap *h, float score,
                                                                int32_t row) {
    if (h->size < h->k) {
        h->rows[h->size] = row; h->scores[h->size] = score;
        sr_item_sift_up(h->rows, h->scores, h->size);
        h->size++;
    } else if (sr_item_worse(h->scores[0], h->rows[0], score, row)) {
        h->rows[0] = row; h->scores[0] = score;
        sr_item_sift_down(h->rows, h->scores, h->size, 0);
    }
}

/* Heap sort in place: move the worst to the end, leaving the pairs best first. */
static inline void sr_heap_sort(sr_item_heap *h) {
    for (int32_t n = h->size - 1; n > 0; n--) {
        float ts = h->scores[0]; h->scores[0] = h->scores[n]; h->scores[n] = ts;
        int32_t tr = h->rows[0]; h->rows[0] = h->rows[n]; h->rows[n] = tr;
        sr_item_sift_down(h->rows, h->scores, n, 0);
    }
}

/* 1 if every rows[i] is in [0, n_items); else 0 with the first bad row in *bad */
static inline int sr_rows_in_range(const int32_t *rows, int32_t n, int64_t n_items,
                                   int32_t *bad) {
    for (int32_t i = 0; i < n; i++) {
        if (rows[i] < 0 || rows[i] >= n_items) { *bad = rows[i]; return 0; }
    }
    return 1;
}

#endif
