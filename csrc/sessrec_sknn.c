/* The session-kNN kernel of sessrec: VMIS-kNN (Serenade, Kersbergen et al., SIGMOD 2022).
 *
 * One call of sr_sknn_top_k, for a session s of n events (oldest first):
 *   1. the distinct session items, most recent first: p = 0 is the last event, a repeat is
 *      taken once at its most recent p; u = number of distinct items; decay weight
 *      pi = (float)(n - p) / (float)u;
 *   2. candidate sessions R (at most `sample`): for each distinct item in that order, walk
 *      its list of training sessions (newest first): a session already in R gains pi; a new
 *      one enters with sim = pi, pos = p while R has room, or replaces the oldest session of
 *      R (smallest id, kept at the root of a min-heap of ids) if it is newer than it, which
 *      is then forgotten; otherwise the rest of the list is older: stop walking it;
 *   3. neighbors N: the `neighbors` sessions of R with the highest sim (ties: larger id),
 *      in that rank order;
 *   4. item scores: for each neighbor j, w = max(0, 1 - 0.1 * pos_j) * sim_j, and for each
 *      item r of j (stored order, place t) score[r] += (w * pw[h + clamp(t - a, -h, h)])
 *      * item_weight[r], where a is the place in j of the session item at p = pos_j (the
 *      list's length if j lacks it) and pw the position table of half-width h (h = 0: no
 *      table, the factor is left out); the touched items are the candidates;
 *   5. filters: excluded, allow-list, categories; a session item is dropped when
 *      exclude_session, else gets + session_bonus;
 *   6. the best k by score, ties by the smaller row, best first.
 * Every step is float32, in this order, with no fused multiply-add (-ffp-contract=off): the
 * Numba twin and the numpy reference (sessrec_sdk/kernels/sknn*.py) give identical bits.
 *
 * Safety: session, excluded and allowed rows are checked before anything is written
 * (SR_ERR_ROW_RANGE, out_rows[0] = the row). The index is checked lazily, only where it is
 * read: an indptr pair that is decreasing or outside its data array, a session id outside
 * [0, n_sessions) or an item outside [0, n_items) returns SR_ERR_INDEX_RANGE with
 * scratch->error = {array (SR_SKNN_*), position}. sample, neighbors or k < 1, a category
 * filter without categories, a scratch made for other index sizes or with too few slots:
 * SR_ERR_ARGUMENT. So no input makes the kernel read or write outside its arrays (given
 * arrays of the sizes stated in sessrec_kernels.h). No allocation: all memory is the
 * caller's scratch.
 */
#include <stddef.h>

#include "sessrec_heap.h"
#include "sessrec_kernels.h"

/* a is worse than b as a neighbor: lower sim, or equal sim and smaller (older) session */
static inline int session_worse(float sa, int32_t ja, float sb, int32_t jb) {
    return sa < sb || (sa == sb && ja < jb);
}

/* --- R: a min-heap of session ids (the root is the oldest session of R) --- */

static inline void id_sift_down(int32_t *heap, int32_t n, int32_t i) {
    for (;;) {
        int32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && heap[l] < heap[m]) m = l;
        if (r < n && heap[r] < heap[m]) m = r;
        if (m == i) return;
        int32_t t = heap[i]; heap[i] = heap[m]; heap[m] = t;
        i = m;
    }
}

static inline void id_sift_up(int32_t *heap, int32_t i) {
    while (i > 0) {
        int32_t p = (i - 1) / 2;
        if (heap[p] <= heap[i]) return;
        int32_t t = heap[i]; heap[i] = heap[p]; heap[p] = t;
        i = p;
    }
}

/* --- neighbor selection: a min-heap of slots on session_worse (root = worst kept) --- */

static inline int slot_worse(const float *sim, const int32_t *sess, int32_t a, int32_t b) {
    return session_worse(sim[a], sess[a], sim[b], sess[b]);
}

static inline void slot_sift_down(int32_t *h, const float *sim, const int32_t *sess, int32_t n,
                                  int32_t i) {
    for (;;) {
        int32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && slot_worse(sim, sess, h[l], h[m])) m = l;
        if (r < n && slot_worse(sim, sess, h[r], h[m])) m = r;
        if (m == i) return;
        int32_t t = h[i]; h[i] = h[m]; h[m] = t;
        i = m;
    }
}

static inline void slot_sift_up(int32_t *h, const float *sim, const int32_t *sess, int32_t i) {
    while (i > 0) {
        int32_t p = (i - 1) / 2;
        if (!slot_worse(sim, sess, h[i], h[p])) return;
        int32_t t = h[i]; h[i] = h[p]; h[p] = t;
        i = p;
    }
}

/* Slot s of R now holds session j, met first at session position p with similarity term
 * pi (a new slot, or the slot of the session it evicts). */
static inline void slot_fill(const sr_sknn_scratch *sc, int32_t s, int32_t j, float pi,
                             int32_t p, uint32_t epoch) {
    sc->session_mark[j] = epoch;
    sc->session_slot[j] = s;
    sc->slot_session[s] = j;
    sc->slot_sim[s] = pi;
    sc->slot_pos[s] = p;
}

/* The bounds [*lo, *hi) of list `i` of an indptr over `n_data` entries; 0 if they are not
 * 0 <= lo <= hi <= n_data, with the position of the bad entry in *bad_pos (i if lo is out
 * of [0, n_data], else i + 1). */
static inline int list_bounds(const int64_t *indptr, int64_t i, int64_t n_data, int64_t *lo,
                              int64_t *hi, int64_t *bad_pos) {
    int64_t a = indptr[i], b = indptr[i + 1];
    if (a < 0 || a > n_data) { *bad_pos = i; return 0; }
    if (b < a || b > n_data) { *bad_pos = i + 1; return 0; }
    *lo = a;
    *hi = b;
    return 1;
}

static int32_t index_error(const sr_sknn_scratch *sc, int32_t array, int64_t pos) {
    sc->error[0] = array;
    sc->error[1] = pos;
    return SR_ERR_INDEX_RANGE;
}

int32_t sr_sknn_top_k(const sr_sknn_index *index, const sr_sknn_query *query,
                      const sr_sknn_scratch *scratch, int32_t *out_rows, float *out_scores,
                      int32_t *out_n_candidates) {
    const sr_sknn_index *ix = index;
    const sr_sknn_query *q = query;
    const sr_sknn_scratch *sc = scratch;
    const int64_t n_items = ix->n_items, n_sessions = ix->n_sessions;
    const uint32_t epoch = sc->epoch;
    *out_n_candidates = 0;

    if (q->sample < 1 || q->neighbors < 1 || q->k < 1 || q->n_session < 0
        || q->n_excluded < 0) return SR_ERR_ARGUMENT;
    if (ix->categories == NULL && q->n_allowed_cats >= 0) return SR_ERR_ARGUMENT;
    if (ix->position_half < 0 || (ix->position_half > 0 && ix->position_weight == NULL))
        return SR_ERR_ARGUMENT;
    if (sc->n_items != n_items || sc->n_sessions != n_sessions || epoch == 0)
        return SR_ERR_ARGUMENT;
    /* R never holds more than n_sessions distinct sessions: min(sample, n_sessions) slots
     * give the same answer as `sample` slots */
    const int32_t cap = (int64_t)q->sample < n_sessions ? q->sample : (int32_t)n_sessions;
    if (cap > sc->capacity) return SR_ERR_ARGUMENT;
    if (!sr_rows_in_range(q->session, q->n_session, n_items, out_rows)
        || !sr_rows_in_range(q->excluded, q->n_excluded, n_items, out_rows)
        || !sr_rows_in_range(q->allowed, q->n_allowed, n_items, out_rows))
        return SR_ERR_ROW_RANGE;
    const int32_t n = q->n_session;
    if (n == 0) return 0;

    uint32_t *item_seen = sc->item_seen, *item_touched = sc->item_touched;
    float *item_score = sc->item_score;
    int32_t *item_list = sc->item_list, *item_pos = sc->item_pos;

    /* 1. distinct session items, most recent first */
    int32_t u = 0;
    for (int32_t p = 0; p < n; p++) {
        int32_t r = q->session[n - 1 - p];
        if (item_seen[r] == epoch) continue;
        item_seen[r] = epoch;
        item_list[u] = r;
        item_pos[u] = p;
        u++;
    }

    /* 2. candidate sessions */
    uint32_t *session_mark = sc->session_mark;
    int32_t *session_slot = sc->session_slot, *heap = sc->heap;
    const int32_t *slot_session = sc->slot_session, *slot_pos = sc->slot_pos;
    float *slot_sim = sc->slot_sim;
    int32_t n_r = 0;
    for (int32_t i = 0; i < u; i++) {
        const int32_t r = item_list[i], p = item_pos[i];
        const float pi = (float)(n - p) / (float)u;
        int64_t lo, hi, bad;
        if (!list_bounds(ix->item_indptr, r, ix->n_item_sessions, &lo, &hi, &bad))
            return index_error(sc, SR_SKNN_ITEM_INDPTR, bad);
        for (int64_t t = lo; t < hi; t++) {
            const int32_t j = ix->item_sessions[t];
            if (j < 0 || j >= n_sessions) return index_error(sc, SR_SKNN_ITEM_SESSIONS, t);
            if (session_mark[j] == epoch) {
                int32_t s = session_slot[j];
                slot_sim[s] = slot_sim[s] + pi;
            } else if (n_r < cap) {
                slot_fill(sc, n_r, j, pi, p, epoch);
                heap[n_r] = j;
                id_sift_up(heap, n_r);
                n_r++;
            } else if (j > heap[0]) {
                const int32_t old = heap[0];
                session_mark[old] = 0;  /* forgotten: 0 is never a call's stamp */
                slot_fill(sc, session_slot[old], j, pi, p, epoch);
                heap[0] = j;
                id_sift_down(heap, n_r, 0);
            } else {
                break;
            }
        }
    }

    /* 3. neighbors: the best min(neighbors, |R|) slots, then sorted best first */
    int32_t *order = sc->order;
    const int32_t n_nb = q->neighbors < n_r ? q->neighbors : n_r;
    int32_t size = 0;
    for (int32_t s = 0; s < n_r; s++) {
        if (size < n_nb) {
            order[size] = s;
            slot_sift_up(order, slot_sim, slot_session, size);
            size++;
        } else if (slot_worse(slot_sim, slot_session, order[0], s)) {
            order[0] = s;
            slot_sift_down(order, slot_sim, slot_session, size, 0);
        }
    }
    for (int32_t m = size - 1; m > 0; m--) {
        int32_t t = order[0]; order[0] = order[m]; order[m] = t;
        slot_sift_down(order, slot_sim, slot_session, m, 0);
    }

    /* 4. item scores (item_list now collects the candidates) */
    int32_t n_cand = 0;
    const int64_t half = ix->position_half;
    for (int32_t i = 0; i < n_nb; i++) {
        const int32_t s = order[i], j = slot_session[s];
        float lam = 1.0f - 0.1f * (float)slot_pos[s];
        if (lam < 0.0f) lam = 0.0f;
        const float w = lam * slot_sim[s];
        int64_t lo, hi, bad;
        if (!list_bounds(ix->session_indptr, j, ix->n_session_items, &lo, &hi, &bad))
            return index_error(sc, SR_SKNN_SESSION_INDPTR, bad);
        int64_t anchor = hi;  /* the place of the shared item (the list's end if absent) */
        if (half > 0) {
            const int32_t shared = q->session[n - 1 - slot_pos[s]];
            for (int64_t t = lo; t < hi; t++) {
                if (ix->session_items[t] == shared) { anchor = t; break; }
            }
        }
        for (int64_t t = lo; t < hi; t++) {
            const int32_t r = ix->session_items[t];
            if (r < 0 || r >= n_items) return index_error(sc, SR_SKNN_SESSION_ITEMS, t);
            if (item_touched[r] != epoch) {
                item_touched[r] = epoch;
                item_score[r] = 0.0f;
                item_list[n_cand++] = r;
            }
            float wt = w;
            if (half > 0) {
                int64_t d = t - anchor;
                if (d > half) d = half;
                if (d < -half) d = -half;
                wt = w * ix->position_weight[d + half];
            }
            const float c = wt * ix->item_weight[r];
            item_score[r] = item_score[r] + c;
        }
    }
    *out_n_candidates = n_cand;

    /* 5. filters and bonus, 6. the best k */
    uint32_t *item_excluded = sc->item_excluded, *item_allowed = sc->item_allowed;
    for (int32_t i = 0; i < q->n_excluded; i++) item_excluded[q->excluded[i]] = epoch;
    for (int32_t i = 0; i < q->n_allowed; i++) item_allowed[q->allowed[i]] = epoch;
    const int32_t k = q->k;
    sr_item_heap h = {out_rows, out_scores, k, 0};
    for (int32_t i = 0; i < n_cand; i++) {
        const int32_t r = item_list[i];
        if (item_excluded[r] == epoch) continue;
        if (q->n_allowed >= 0 && item_allowed[r] != epoch) continue;
        if (q->n_allowed_cats >= 0) {
            int32_t cat = ix->categories[r], ok = 0;
            for (int32_t c = 0; c < q->n_allowed_cats; c++) {
                if (q->allowed_cats[c] == cat) { ok = 1; break; }
            }
            if (!ok) continue;
        }
        float score = item_score[r];
        if (item_seen[r] == epoch) {
            if (q->exclude_session) continue;
            score = score + q->session_bonus;
        }
        sr_heap_offer(&h, score, r);
    }
    sr_heap_sort(&h);
    return h.size;
}
