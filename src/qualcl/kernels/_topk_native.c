/*
 * Exact per-row top-k of a float32 score block, ordered by value (descending, NaN first) then column
 * (ascending). Built on first use by qualcl.kernels._native (see docs/performance.md); OpenMP threads
 * come from the runtime torch has already loaded.
 *
 * Each row is read through the maxima of SLABS-strided column groups (group g holds the columns
 * g, g + G, ..., g + 15 G of a row of width >= 16 G):
 *   1. one vectorised max pass gives the G group maxima (NaN-sticky: a row with a NaN takes step 4);
 *   2. a bucket histogram of the maxima gives a value t no larger than their k-th largest, so at
 *      least k entries of the row are >= t and no entry below t can be in the top-k;
 *   3. the members >= t of the groups whose maximum reaches t (about k of them) are gathered without
 *      branches and ranked by comparing every pair of 64-bit keys (value, then reversed column): each
 *      candidate's rank is its output slot. Rows with more than CAP(k) candidates (ties, padding)
 *      take step 4;
 *   4. otherwise, and for rows too narrow for the groups to pay (G < 4k): a size-k heap over the row.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SLABS 16
#define BUCKETS 256
#define CAP(k) (4 * (k) + 2 * SLABS)

/* a ranks after b: lower value, or the same value (NaN equal to NaN) and a higher column */
static inline int worse(float av, int64_t ac, float bv, int64_t bc) {
    int an = av != av, bn = bv != bv;
    if (an != bn) return bn;
    if (!an && av != bv) return av < bv;
    return ac > bc;
}

static void sift(float *v, int64_t *c, int64_t k, int64_t i) {
    float x = v[i];
    int64_t xc = c[i];
    for (;;) {
        int64_t l = 2 * i + 1, r = l + 1, w = l;
        if (l >= k) break;
        if (r < k && worse(v[r], c[r], v[l], c[l])) w = r;
        if (!worse(v[w], c[w], x, xc)) break;
        v[i] = v[w];
        c[i] = c[w];
        i = w;
    }
    v[i] = x;
    c[i] = xc;
}

/* step 4: a heap whose root is the worst of the k kept entries, then a heap sort into rank order */
static void heap_row(const float *row, int64_t width, int64_t k, float *v, int64_t *c) {
    for (int64_t j = 0; j < k; ++j) {
        v[j] = row[j];
        c[j] = j;
    }
    for (int64_t i = k / 2 - 1; i >= 0; --i) sift(v, c, k, i);
    for (int64_t j = k; j < width; ++j) {
        float x = row[j];
        if (!(x <= v[0]) && worse(v[0], c[0], x, j)) {
            v[0] = x;
            c[0] = j;
            sift(v, c, k, 0);
        }
    }
    for (int64_t e = k - 1; e > 0; --e) {
        float tv = v[0];
        int64_t tc = c[0];
        v[0] = v[e];
        c[0] = c[e];
        v[e] = tv;
        c[e] = tc;
        sift(v, c, e, 0);
    }
}

/* step 2: t <= the k-th largest of the G maxima (no NaN), from a histogram over their finite range */
static float bound(const float *mx, int64_t G, int64_t k, int32_t *hist, int32_t *bucket) {
    float lo = 0.0f, hi = 0.0f;
    int64_t finite = 0;
    for (int64_t g = 0; g < G; ++g) {
        float x = mx[g];
        int ok = x > -__builtin_inff() && x < __builtin_inff();
        lo = ok && (finite == 0 || x < lo) ? x : lo;
        hi = ok && (finite == 0 || x > hi) ? x : hi;
        finite += ok;
    }
    if (finite < k || !(hi > lo) || !(hi - lo < 1e30f)) return -__builtin_inff(); /* every entry (step 4) */
    float scale = (float)(BUCKETS - 1) / (hi - lo);
    memset(hist, 0, BUCKETS * sizeof(int32_t));
    for (int64_t g = 0; g < G; ++g) {
        float d = (mx[g] - lo) * scale; /* -inf for a group of dropped entries, +inf above the range */
        int32_t b = d < 0.0f ? 0 : (d > (float)(BUCKETS - 1) ? BUCKETS - 1 : (int32_t)d);
        bucket[g] = b;
        hist[b]++;
    }
    int32_t b = BUCKETS - 1, seen = hist[b];
    while (seen < k) seen += hist[--b];
    float t = __builtin_inff();
    for (int64_t g = 0; g < G; ++g) t = bucket[g] >= b && mx[g] < t ? mx[g] : t;
    return t;
}

/* monotone 64-bit key: the value's order (-0 as +0), then the lower column */
static inline uint64_t key(float x, int64_t col) {
    union {
        float f;
        uint32_t u;
    } b;
    b.f = x + 0.0f;
    uint32_t m = (b.u >> 31) ? ~b.u : (b.u | 0x80000000u);
    return ((uint64_t)m << 32) | (uint32_t)(0xFFFFFFFFu - (uint32_t)col);
}

typedef struct {
    float *mx, *cv;
    int32_t *bucket, *list, *hist;
    int64_t *cc;
    uint64_t *keys;
} Work;

/* steps 1-3; returns 0 when the row must take step 4 */
static int group_row(const float *row, int64_t width, int64_t k, int64_t G, Work *w, float *v, int64_t *c) {
    float *mx = w->mx;
    for (int64_t g = 0; g < G; ++g) mx[g] = row[g];
    for (int64_t s = 1; s < SLABS; ++s) {
        const float *p = row + s * G;
        for (int64_t g = 0; g < G; ++g) {
            float x = p[g], m = mx[g];
            mx[g] = (x > m || x != x) ? x : m;
        }
    }
    int nan = 0;
    for (int64_t g = 0; g < G; ++g) nan |= mx[g] != mx[g];
    for (int64_t j = SLABS * G; j < width; ++j) nan |= row[j] != row[j];
    if (nan) return 0;
    float t = bound(mx, G, k, w->hist, w->bucket);
    if (t == -__builtin_inff()) return 0;
    int64_t groups = 0, n = 0;
    for (int64_t g = 0; g < G; ++g) {
        w->list[groups] = (int32_t)g;
        groups += mx[g] >= t;
    }
    for (int64_t i = 0; i < groups; ++i) {
        int64_t g = w->list[i];
        for (int64_t s = 0; s < SLABS; ++s) {
            float x = row[s * G + g];
            w->cv[n] = x;
            w->cc[n] = s * G + g;
            n += x >= t;
        }
    }
    for (int64_t j = SLABS * G; j < width; ++j) {
        float x = row[j];
        w->cv[n] = x;
        w->cc[n] = j;
        n += x >= t;
    }
    if (n > CAP(k)) return 0;
    for (int64_t i = 0; i < n; ++i) w->keys[i] = key(w->cv[i], w->cc[i]);
    for (int64_t i = 0; i < n; ++i) {
        uint64_t x = w->keys[i];
        int64_t r = 0;
        for (int64_t j = 0; j < n; ++j) r += w->keys[j] > x;
        if (r < k) {
            v[r] = w->cv[i];
            c[r] = w->cc[i];
        }
    }
    return 1;
}

/*
 * scores: rows x width, row stride ld (floats); k <= width < 2^31. Writes values (rows x k) and
 * columns (rows x k), each row in rank order; uses `threads` OpenMP threads. A thread whose work
 * buffer cannot be allocated takes step 4 for its rows.
 */
void qualcl_topk_rows(const float *scores, int64_t rows, int64_t width, int64_t ld, int64_t k, float *values,
                     int64_t *columns, int threads) {
    int64_t G = width / SLABS;
    int grouped = G >= 4 * k;
#pragma omp parallel num_threads(threads)
    {
        Work w = {0};
        char *mem = NULL;
        if (grouped) {
            size_t n = (size_t)width + 1;
            mem = malloc(G * (sizeof(float) + 2 * sizeof(int32_t)) + BUCKETS * sizeof(int32_t) +
                         n * (sizeof(float) + sizeof(int64_t) + sizeof(uint64_t)));
            if (mem != NULL) { /* 8-byte arrays first, so that every array is aligned */
                w.cc = (int64_t *)mem;
                w.keys = (uint64_t *)(w.cc + n);
                w.cv = (float *)(w.keys + n);
                w.mx = w.cv + n;
                w.bucket = (int32_t *)(w.mx + G);
                w.list = w.bucket + G;
                w.hist = w.list + G;
            }
        }
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            const float *row = scores + r * ld;
            float *v = values + r * k;
            int64_t *c = columns + r * k;
            if (mem != NULL && group_row(row, width, k, G, &w, v, c)) continue;
            heap_row(row, width, k, v, c);
        }
        free(mem);
    }
}
