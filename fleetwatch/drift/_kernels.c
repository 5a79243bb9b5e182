/* The drift statistics' C routines: the count tests of fleetwatch/drift/stats.py, one pass over the rows of a
 * (rows, bins) matrix each. stats.py documents what they compute and holds the numpy versions, used when this
 * extension is not built or for inputs these routines leave to it; tests/test_drift_stats.py runs both paths
 * against scipy and against each other.
 *
 *   goodness_of_fit  the bin merge, Pearson's chi2, G = 2 sum O ln(O / E), df and the chi-square p-value
 *   psi              population stability index with PSI_EPS smoothing
 *   accuracy         label-free accuracy from a confidence histogram and its standard error
 *   betabinom_sf     beta-binomial upper tail by betabinom_sf's rule (rows it cannot do come back NaN)
 *   cusum            one window of sequential.cusum_step on the streams of a sums table, updated in place
 *
 * A call over many rows runs as two halves on two threads when the process may use two CPUs (over_rows).
 * Floats: every row sum is numpy's pairwise sum taken in numpy's order, and no product is fused into a sum,
 * so Pearson's chi2, df and the accuracy estimate and its se are the numpy path's to the bit. G and PSI take
 * their logs from log_block, a vectorised log within an ulp of the C library's log (which numpy's G takes,
 * through scipy's xlogy; numpy's PSI takes numpy's own SIMD log). The p-values differ from scipy's by its own
 * rounding: chi2_sf is a closed form for integer df, and the beta-binomial tail is summed one term at a time
 * rather than in blocks.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE /* sched_getaffinity */
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* No product fused into a sum (GCC and clang do that by default where the CPU has FMA): the floats round as
 * numpy's, and the same in every copy of a vectorised loop. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

/* The elementwise loops vectorise far better with AVX2 or AVX-512: with GCC on x86-64 Linux they are built for
 * each and the loader picks the copy the CPU can run (as in frames/_native.c); elsewhere, one plain build. */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__) && defined(__linux__)
#define VECTOR_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define VECTOR_CLONES
#endif

/* The most bins goodness_of_fit takes (df <= 1000): chi2_sf's far-tail form needs df / 2 < h / 1.4. */
#define MAX_BINS 1001
/* cephes' largest log of a double: scipy's igamc returns 0 where its leading factor's log is below -MAXLOG. */
#define MAXLOG 7.09782712893383996843e2
/* Up to this h = x / 2, chi2_sf sums the terms from e^-h, which is still a normal double. */
#define DIRECT_H_MAX 700.0
/* betabinom_sf's constants (stats.py: _LOG_START_MIN, _CANCELLATION_RTOL, _TAIL_RTOL). */
#define LOG_START_MIN (-600.0)
#define CANCELLATION_RTOL 1e-10
#define TAIL_RTOL 1e-13
#define TWO_OVER_SQRT_PI 1.12837916709551257390
/* ln 2 in two parts, the first with trailing zero bits, so that k * LN2_HI is exact for a double's exponent k. */
#define LN2_HI 6.93147180369123816490e-01 /* 0x3fe62e42fee00000 */
#define LN2_LO 1.90821492927058770002e-10 /* 0x3dea39ef35793c76 */
/* Values a block of rows holds in each work array (about 32 KB): the rows are taken a block at a time. */
#define BLOCK_VALUES 4096
/* A call over at least this many rows is split in two halves, the first on a second thread, when the process may
 * run on more than one CPU: rows are independent, so the results are the same. Below it, a thread costs more than
 * it saves. */
#define SPLIT_MIN_ROWS 16384
#define PARTS 2

typedef void (*part_fn)(void *args, int part, Py_ssize_t start, Py_ssize_t stop);

typedef struct {
    part_fn fn;
    void *args;
    Py_ssize_t stop;
} first_part;

#if defined(__unix__)
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

/* The CPUs this process may run on now (a process pinned to one core gets no second thread). */
static long usable_cpus(void) {
#if defined(__linux__) && defined(CPU_COUNT)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
#endif
    return sysconf(_SC_NPROCESSORS_ONLN);
}

static void *run_first_part(void *p) {
    first_part *first = p;
    first->fn(first->args, 0, 0, first->stop);
    return NULL;
}

/* fn(args, part, start, stop) over rows [0, rows): parts 0 and 1 on two threads, or part 0 over all rows. */
static void over_rows(part_fn fn, void *args, Py_ssize_t rows) {
    first_part first = {fn, args, rows / 2};
    pthread_t thread;
    if (rows >= SPLIT_MIN_ROWS && usable_cpus() > 1 && pthread_create(&thread, NULL, run_first_part, &first) == 0) {
        fn(args, 1, rows / 2, rows);
        pthread_join(thread, NULL);
    } else {
        fn(args, 0, 0, rows);
    }
}
#else
static void over_rows(part_fn fn, void *args, Py_ssize_t rows) { fn(args, 0, 0, rows); }
#endif

/* numpy's pairwise sum of n contiguous doubles (numpy/_core/src/umath/loops_utils.h.src), the order in
 * which numpy's sum(axis=-1) adds a row. Rows of up to 128 are summed inline, longer ones by halves. */
static double pairwise_halves(const double *a, Py_ssize_t n);

static inline double pairwise_sum(const double *a, Py_ssize_t n) {
    if (n < 8) {
        double res = 0.;
        for (Py_ssize_t i = 0; i < n; i++) res += a[i];
        return res;
    }
    if (n <= 128) {
        double r[8];
        for (int j = 0; j < 8; j++) r[j] = a[j];
        Py_ssize_t i;
        for (i = 8; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; j++) r[j] += a[i + j];
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res += a[i];
        return res;
    }
    return pairwise_halves(a, n);
}

static double pairwise_halves(const double *a, Py_ssize_t n) {
    Py_ssize_t half = n / 2;
    half -= half % 8;
    return pairwise_sum(a, half) + pairwise_sum(a + half, n - half);
}

static inline double from_bits(uint64_t bits) {
    double x;
    memcpy(&x, &bits, sizeof x);
    return x;
}

static inline uint64_t to_bits(double x) {
    uint64_t bits;
    memcpy(&bits, &x, sizeof bits);
    return bits;
}

/* y = ln x for n doubles, by a loop the compiler vectorises (the C library's log is a call a value, most of the
 * count tests' time). Positive normal x = 2^k (1 + f) with sqrt(2)/2 <= 1 + f < sqrt(2), taken apart with integer
 * operations; with s = f / (2 + f), ln(1 + f) = 2 atanh(s) = f - (f^2/2 - s (f^2/2 + R)), R = sum over j = 1..10
 * of 2 s^2j / (2j + 1) (|s| < 0.172: the terms left out are below 1e-18 of the result), and the parts are added as
 * in fdlibm's e_log.c to stay within an ulp. Other x (0, subnormal, infinite, NaN, negative) get the C library's
 * log afterwards. */
VECTOR_CLONES static void log_block(const double *x, double *y, Py_ssize_t n) {
    int others = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        others |= !((x[i] >= DBL_MIN) & (x[i] <= DBL_MAX));
        uint64_t bits = to_bits(x[i]) + (0x3ff0000000000000ULL - 0x3fe6a09e667f3bcdULL);
        double k = from_bits(0x4330000000000000ULL | (bits >> 52)) - (4503599627370496.0 + 1023.0);
        double f = from_bits((bits & 0x000fffffffffffffULL) + 0x3fe6a09e667f3bcdULL) - 1.0;
        double half_square = 0.5 * f * f, s = f / (2.0 + f), z = s * s;
        double r = z * (2.0 / 3 + z * (2.0 / 5 + z * (2.0 / 7 + z * (2.0 / 9 + z * (2.0 / 11 + z * (2.0 / 13 +
                   z * (2.0 / 15 + z * (2.0 / 17 + z * (2.0 / 19 + z * (2.0 / 21))))))))));
        y[i] = k * LN2_HI - ((half_square - (s * (half_square + r) + k * LN2_LO)) - f);
    }
    if (others)
        for (Py_ssize_t i = 0; i < n; i++)
            if (!(x[i] >= DBL_MIN && x[i] <= DBL_MAX)) y[i] = log(x[i]);
}

/* sqrt(pi h) e^h erfc(sqrt h) = 1 - 1/(2h) + 3/(4h^2) - ..., for h > DIRECT_H_MAX (six terms reach 1e-17). */
static double erfc_scaled(double h) {
    double sum = 1.0, term = 1.0;
    for (int i = 1; fabs(term) > 1e-17; i++) {
        term *= -(2 * i - 1) / (2 * h);
        sum += term;
    }
    return sum;
}

/* ln Gamma(a) for a > 0. lgamma sets the global signgam, a race when two threads call it; lgamma_r does not. */
static inline double log_gamma(double a) {
#if defined(__unix__)
    int sign;
    return lgamma_r(a, &sign);
#else
    return lgamma(a);
#endif
}

/* P(chi2_k >= x) for an integer 1 <= k <= MAX_BINS - 1, with h = x / 2 and k = 2m (+ 1):
 *   even k: e^-h sum_{j<m} h^j / j!
 *   odd k:  erfc(sqrt h) + e^-h sum_{j<m} h^(j+1/2) / Gamma(j + 3/2)
 * All terms are positive: no cancellation. Up to DIRECT_H_MAX they are summed from the first, e^-h. Beyond,
 * e^-h would underflow while the sum need not: the terms grow with j there (j < m <= 500 < h), the last is
 * fac / h with fac = h^a e^-h / Gamma(a) (a = k / 2) taken from logs, as scipy's igamc takes it, and the sum
 * is fac / h times the earlier terms' ratios to the last (for odd k, erfc(sqrt h) by its asymptotic series).
 * Where log fac < -MAXLOG the result is 0, as scipy's. Outside the domain as scipy: NaN for x < 0 or NaN. */
static double chi2_sf(Py_ssize_t k, double x) {
    if (!(x >= 0)) return NAN;
    if (x == 0) return 1.0;
    if (isinf(x)) return 0.0;
    double h = 0.5 * x, shift = (k & 1) ? 0.5 : 0.0;
    Py_ssize_t m = k / 2;
    if (h <= DIRECT_H_MAX) {
        double term = (k & 1) ? exp(-h) * sqrt(h) * TWO_OVER_SQRT_PI : exp(-h);
        double sum = (k & 1) ? erfc(sqrt(h)) : 0.0;
        for (Py_ssize_t j = 0; j < m; j++) {
            sum += term;
            term *= h / ((double)j + 1.0 + shift);
        }
        return sum;
    }
    double a = 0.5 * (double)k;
    double log_fac = a * log(h) - h - log_gamma(a);
    if (log_fac < -MAXLOG) return 0.0;
    double sum = 0.0, term = 1.0;
    for (Py_ssize_t j = m - 1; j >= 0; j--) {
        sum += term;
        term *= ((double)j + shift) / h;
    }
    if (k & 1) sum += term * erfc_scaled(h);
    return exp(log_fac) / h * sum;
}

/* The merged bins of one row by goodness_of_fit's rule, into o and e (`bins` each: observed and expected counts of
 * the merged bins, 0 past the last); returns df. Sums in the order numpy's bincount adds. */
static int64_t merge_row(const double *counts, Py_ssize_t bins, const double *probs, double min_expected, double *o,
                         double *e) {
    double n = pairwise_sum(counts, bins), run_o = 0.0, run_e = 0.0;
    Py_ssize_t groups = 0, open = 0; /* closed merged bins; the first bin of the open one */
    for (Py_ssize_t b = 0; b < bins; b++) {
        run_e += n * probs[b];
        run_o += counts[b];
        if (run_e >= min_expected) {
            o[groups] = run_o;
            e[groups++] = run_e;
            run_o = run_e = 0.0;
            open = b + 1;
        }
    }
    if (groups == 0) { /* one merged bin: all of them */
        o[0] = run_o;
        e[0] = run_e;
    } else { /* bins left over join the last closed one, one by one */
        for (Py_ssize_t b = open; b < bins; b++) {
            e[groups - 1] += n * probs[b];
            o[groups - 1] += counts[b];
        }
    }
    for (Py_ssize_t k = groups > 0 ? groups : 1; k < bins; k++) o[k] = e[k] = 0.0;
    return groups > 1 ? (int64_t)(groups - 1) : 0;
}

/* Per merged bin: ratio = O / E for xlogy(O, O / E) (1 where O <= 0: 0 ln 0 = 0, and NaN stays NaN), and Pearson's
 * (O - E)^2 / E (0 where E <= 0) into pearson when it is not NULL. */
VECTOR_CLONES static void bin_terms(const double *o, const double *e, double *ratio, double *pearson, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) ratio[i] = o[i] > 0 ? o[i] / (e[i] > 0 ? e[i] : 1.0) : 1.0;
    if (pearson != NULL)
        for (Py_ssize_t i = 0; i < n; i++) pearson[i] = e[i] > 0 ? (o[i] - e[i]) * (o[i] - e[i]) / e[i] : 0.0;
}

VECTOR_CLONES static void multiply(const double *a, const double *b, double *out, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) out[i] = a[i] * b[i];
}

/* goodness_of_fit over all rows, a block at a time: merge each row, then the bins' terms, logs and products of the
 * whole block, then each row's sums and p-value. chi2 NULL: Pearson's statistic is not wanted (pearson is 0). work
 * holds 5 * block_rows * bins doubles. */
static void fit_rows(const double *counts, Py_ssize_t rows, Py_ssize_t bins, const double *probs, const double *phi,
                     Py_ssize_t phi_step, double min_expected, int pearson, double *chi2, double *g, int64_t *df,
                     double *p, double *work, Py_ssize_t block_rows) {
    Py_ssize_t size = block_rows * bins;
    double *o = work, *e = o + size, *ratio = e + size, *logs = ratio + size, *pearson_terms = logs + size;
    for (Py_ssize_t first = 0; first < rows; first += block_rows) {
        Py_ssize_t m = rows - first < block_rows ? rows - first : block_rows, values = m * bins;
        for (Py_ssize_t j = 0; j < m; j++)
            df[first + j] = merge_row(counts + (first + j) * bins, bins, probs, min_expected, o + j * bins, e + j * bins);
        bin_terms(o, e, ratio, chi2 != NULL ? pearson_terms : NULL, values);
        log_block(ratio, logs, values);
        multiply(o, logs, logs, values);
        for (Py_ssize_t j = 0; j < m; j++) {
            Py_ssize_t r = first + j;
            g[r] = 2 * pairwise_sum(logs + j * bins, bins);
            double statistic = g[r];
            if (chi2 != NULL) {
                chi2[r] = pairwise_sum(pearson_terms + j * bins, bins);
                if (pearson) statistic = chi2[r];
            }
            p[r] = df[r] > 0 ? chi2_sf((Py_ssize_t)df[r], statistic / phi[r * phi_step]) : 1.0;
        }
    }
}

typedef struct {
    const double *counts;
    Py_ssize_t bins;
    const double *probs, *phi;
    Py_ssize_t phi_step;
    double min_expected;
    int pearson;
    double *chi2, *g;
    int64_t *df;
    double *p, *work;
    Py_ssize_t block_rows;
} fit_call;

static void fit_part(void *args, int part, Py_ssize_t start, Py_ssize_t stop) {
    fit_call *c = args;
    fit_rows(c->counts + start * c->bins, stop - start, c->bins, c->probs, c->phi + start * c->phi_step, c->phi_step,
             c->min_expected, c->pearson, c->chi2 != NULL ? c->chi2 + start : NULL, c->g + start, c->df + start,
             c->p + start, c->work + part * 5 * c->block_rows * c->bins, c->block_rows);
}

static void release(Py_buffer *views, int count) {
    for (int i = 0; i < count; i++) PyBuffer_Release(&views[i]);
}

/* Rows of `bins` values a block takes, and a work array of `arrays` such blocks for each of the PARTS parts of a
 * call; NULL with MemoryError set and the call's views released. */
static double *block_work(Py_ssize_t bins, int arrays, Py_ssize_t *block_rows, Py_buffer *views, int count) {
    *block_rows = bins < BLOCK_VALUES ? BLOCK_VALUES / bins : 1;
    double *work = PyMem_Malloc((size_t)PARTS * (size_t)arrays * (size_t)(*block_rows * bins) * sizeof *work);
    if (work == NULL) {
        release(views, count);
        PyErr_NoMemory();
    }
    return work;
}

/* A ValueError for a malformed call (NULL), or Py_None. */
static PyObject *finish(Py_buffer *views, int count, const char *problem) {
    release(views, count);
    if (problem != NULL) {
        PyErr_SetString(PyExc_ValueError, problem);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *goodness_of_fit(PyObject *self, PyObject *args) {
    Py_buffer v[7]; /* counts, probs, phi, chi2, g, df, p */
    Py_ssize_t bins;
    double min_expected;
    int pearson;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*ny*y*dpw*w*w*w*", &v[0], &bins, &v[1], &v[2], &min_expected, &pearson, &v[3],
                          &v[4], &v[5], &v[6]))
        return NULL;
    Py_ssize_t rows = bins > 0 ? v[0].len / (8 * bins) : 0;
    if (bins < 1 || bins > MAX_BINS || v[0].len != rows * bins * 8 || v[1].len != bins * 8)
        return finish(v, 7, "need 1 <= bins <= MAX_BINS, float64 counts (rows, bins) and probs (bins,)");
    int want_chi2 = v[3].len != 0 || pearson;
    if ((v[2].len != 8 && v[2].len != rows * 8) || (want_chi2 && v[3].len != rows * 8) || v[4].len != rows * 8 ||
        v[5].len != rows * 8 || v[6].len != rows * 8)
        return finish(v, 7, "need one float64 phi or one per row, float64 g and p and int64 df per row, and float64 "
                            "chi2 per row (or none, for the p-value of G)");
    if (!(min_expected > 0)) return finish(v, 7, "min_expected must be positive");
    const double *counts = v[0].buf, *probs = v[1].buf, *phi = v[2].buf;
    double *chi2 = v[3].buf, *g = v[4].buf, *p = v[6].buf;
    int64_t *df = v[5].buf;
    Py_ssize_t block_rows;
    double *work = block_work(bins, 5, &block_rows, v, 7);
    if (work == NULL) return NULL;
    fit_call call = {counts, bins, probs, phi, v[2].len == 8 ? 0 : 1, min_expected, pearson, want_chi2 ? chi2 : NULL,
                     g, df, p, work, block_rows};
    Py_BEGIN_ALLOW_THREADS
    over_rows(fit_part, &call, rows);
    Py_END_ALLOW_THREADS
    PyMem_Free(work);
    return finish(v, 7, NULL);
}

/* Per value of a block of rows: a = (count / n + eps) / scale, the smoothed proportion, as a - e and a / e against
 * the smoothed baseline e of its bin (n per value: its row's). */
VECTOR_CLONES static void psi_terms(const double *counts, const double *n, const double *expected, double eps,
                                    double scale, double *diff, double *ratio, Py_ssize_t rows, Py_ssize_t bins) {
    for (Py_ssize_t j = 0; j < rows; j++)
        for (Py_ssize_t b = 0; b < bins; b++) {
            Py_ssize_t i = j * bins + b;
            double a = (counts[i] / n[i] + eps) / scale;
            diff[i] = a - expected[b];
            ratio[i] = a / expected[b];
        }
}

/* psi over all rows, a block at a time: the block's terms (a - e) ln(a / e), then each row's sum; NaN where n <= 0.
 * work holds 4 * block_rows * bins doubles. */
static void psi_rows(const double *counts, Py_ssize_t rows, Py_ssize_t bins, const double *expected, double eps,
                     double *out, double *work, Py_ssize_t block_rows) {
    Py_ssize_t size = block_rows * bins;
    double *n = work, *diff = n + size, *ratio = diff + size, *logs = ratio + size, scale = 1 + (double)bins * eps;
    for (Py_ssize_t first = 0; first < rows; first += block_rows) {
        Py_ssize_t m = rows - first < block_rows ? rows - first : block_rows, values = m * bins;
        const double *block = counts + first * bins;
        for (Py_ssize_t j = 0; j < m; j++) {
            double total = pairwise_sum(block + j * bins, bins);
            for (Py_ssize_t b = 0; b < bins; b++) n[j * bins + b] = total;
        }
        psi_terms(block, n, expected, eps, scale, diff, ratio, m, bins);
        log_block(ratio, logs, values);
        multiply(diff, logs, logs, values);
        for (Py_ssize_t j = 0; j < m; j++) out[first + j] = n[j * bins] > 0 ? pairwise_sum(logs + j * bins, bins) : NAN;
    }
}

typedef struct {
    const double *counts;
    Py_ssize_t bins;
    const double *expected;
    double eps, *out, *work;
    Py_ssize_t block_rows;
} psi_call;

static void psi_part(void *args, int part, Py_ssize_t start, Py_ssize_t stop) {
    psi_call *c = args;
    psi_rows(c->counts + start * c->bins, stop - start, c->bins, c->expected, c->eps, c->out + start,
             c->work + part * 4 * c->block_rows * c->bins, c->block_rows);
}

static PyObject *psi(PyObject *self, PyObject *args) {
    Py_buffer v[3]; /* counts, expected (smoothed baseline proportions), out */
    Py_ssize_t bins;
    double eps;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*ny*dw*", &v[0], &bins, &v[1], &eps, &v[2])) return NULL;
    Py_ssize_t rows = bins > 0 ? v[0].len / (8 * bins) : 0;
    if (bins < 1 || v[0].len != rows * bins * 8 || v[1].len != bins * 8 || v[2].len != rows * 8)
        return finish(v, 3, "need float64 counts (rows, bins), expected (bins,) and out (rows,)");
    const double *counts = v[0].buf, *expected = v[1].buf;
    double *out = v[2].buf;
    Py_ssize_t block_rows;
    double *work = block_work(bins, 4, &block_rows, v, 3);
    if (work == NULL) return NULL;
    psi_call call = {counts, bins, expected, eps, out, work, block_rows};
    Py_BEGIN_ALLOW_THREADS
    over_rows(psi_part, &call, rows);
    Py_END_ALLOW_THREADS
    PyMem_Free(work);
    return finish(v, 3, NULL);
}

static PyObject *accuracy(PyObject *self, PyObject *args) {
    Py_buffer v[4]; /* hist, accuracy per bin, accuracy, se */
    Py_ssize_t bins;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*ny*w*w*", &v[0], &bins, &v[1], &v[2], &v[3])) return NULL;
    Py_ssize_t rows = bins > 0 ? v[0].len / (8 * bins) : 0;
    if (bins < 1 || v[0].len != rows * bins * 8 || v[1].len != bins * 8 || v[2].len != rows * 8 ||
        v[3].len != rows * 8)
        return finish(v, 4, "need float64 hist (rows, bins), accuracy per bin (bins,), and two outs (rows,)");
    const double *hist = v[0].buf, *acc = v[1].buf;
    double *estimate = v[2].buf, *se = v[3].buf;
    double *terms = PyMem_Malloc((size_t)bins * sizeof *terms);
    if (terms == NULL) {
        release(v, 4);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < rows; r++) {
        const double *row = hist + r * bins;
        double n = pairwise_sum(row, bins);
        for (Py_ssize_t b = 0; b < bins; b++) terms[b] = row[b] * acc[b];
        double right = pairwise_sum(terms, bins);
        for (Py_ssize_t b = 0; b < bins; b++) terms[b] *= 1 - acc[b];
        double spread = sqrt(pairwise_sum(terms, bins));
        estimate[r] = n > 0 ? right / n : NAN;
        se[r] = n > 0 ? spread / n : NAN;
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(terms);
    return finish(v, 4, NULL);
}

/* pmf(x + 1) / pmf(x) of BetaBinomial(n, alpha, beta), as stats.py's _walk writes it. */
static inline double pmf_ratio(double x, double n, double alpha, double beta) {
    return (n - x) * (x + alpha) / ((x + 1) * (n - x - 1 + beta));
}

/* P(X >= a) by betabinom_sf's rule (stats.py), or NaN for a row left to the numpy path: n not a whole number (NaN
 * there too), a not one (stats.py rounds it up first), n beyond the log pmf(0) table, log pmf(0) < LOG_START_MIN
 * (the walk down needs log-beta functions), or a small tail with beta < 1 (scipy's). pmf(a), where the upper tail
 * starts, is the walk's next term. */
static double betabinom_row(double a, double n, double alpha, double beta, const double *log0, Py_ssize_t top) {
    if (!(n == floor(n))) return NAN;
    if (!(a > 0 && a <= n)) return a <= 0 ? 1.0 : 0.0;
    if (a != floor(a) || n > (double)top) return NAN;
    double start = log0[(Py_ssize_t)n];
    if (!(start >= LOG_START_MIN)) return NAN;
    double term = exp(start), total = term;
    for (double x = 0; x < a - 1; x++) {
        term *= pmf_ratio(x, n, alpha, beta);
        total += term;
    }
    double out = 1.0 - total;
    if (out * CANCELLATION_RTOL < 1e-14 * (1 + fabs(start)) + 1e-15 * a) {
        if (beta < 1) return NAN;
        term *= pmf_ratio(a - 1, n, alpha, beta);
        total = term;
        for (double x = a; x < n;) {
            term *= pmf_ratio(x, n, alpha, beta);
            total += term;
            x++;
            double rest = n - x, bound = fmax(1.0, (x + alpha) / (x + 1)) * rest / (rest - 1 + beta);
            if (bound < 1 && term * bound <= TAIL_RTOL * total * (1 - bound)) break;
        }
        out = total;
    }
    return out < 0 ? 0.0 : out > 1 ? 1.0 : out;
}

typedef struct {
    const double *a, *n;
    double alpha, beta;
    const double *log0;
    Py_ssize_t top;
    double *out;
} betabinom_call;

static void betabinom_part(void *args, int part, Py_ssize_t start, Py_ssize_t stop) {
    betabinom_call *c = args;
    (void)part;
    for (Py_ssize_t r = start; r < stop; r++) c->out[r] = betabinom_row(c->a[r], c->n[r], c->alpha, c->beta, c->log0, c->top);
}

static PyObject *betabinom_sf(PyObject *self, PyObject *args) {
    Py_buffer v[4]; /* a, n, log pmf(0) by n, out */
    double alpha, beta;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*ddy*w*", &v[0], &v[1], &alpha, &beta, &v[2], &v[3])) return NULL;
    Py_ssize_t rows = v[0].len / 8, top = v[2].len / 8 - 1;
    if (v[0].len % 8 || v[1].len != v[0].len || v[3].len != v[0].len || v[2].len % 8 || top < 0)
        return finish(v, 4, "need float64 a, n and out of one length, and a float64 log pmf(0) table");
    if (!(alpha > 0 && beta > 0)) return finish(v, 4, "need alpha > 0 and beta > 0");
    const double *a = v[0].buf, *n = v[1].buf, *log0 = v[2].buf;
    double *out = v[3].buf;
    betabinom_call call = {a, n, alpha, beta, log0, top, out};
    Py_BEGIN_ALLOW_THREADS
    over_rows(betabinom_part, &call, rows);
    Py_END_ALLOW_THREADS
    return finish(v, 4, NULL);
}

/* One CUSUM step of sequential.cusum_step for the streams at rows index of table (upper, lower and run, as
 * (3, streams) float64), updated in place, with what the engine reads of the step per row: the new run, the
 * alarm, the statistic and the run's mean. The same operations in the same order as the numpy code, so the
 * same floats. */
static void cusum_rows(double *table, Py_ssize_t streams, const int64_t *index, const double *z, Py_ssize_t rows,
                       double k, double h, int64_t *run, uint8_t *alarm, double *statistic, double *run_mean) {
    double *up = table, *down = table + streams, *runs = table + 2 * streams;
    for (Py_ssize_t r = 0; r < rows; r++) {
        Py_ssize_t i = (Py_ssize_t)index[r];
        double u = up[i], l = down[i];
        int64_t n = (int64_t)runs[i];
        if (!isnan(z[r])) {
            u = u + z[r] - k;
            u = u > 0.0 ? u : 0.0;
            l = l - z[r] - k;
            l = l > 0.0 ? l : 0.0;
            n = (u > 0.0 || l > 0.0) ? n + 1 : 0;
        }
        double s = u > l ? u : l;
        double sign = n > 0 ? (u >= l ? 1.0 : -1.0) : 0.0;
        statistic[r] = s;
        run_mean[r] = (s / (double)(n > 1 ? n : 1) + k) * sign;
        alarm[r] = s > h;
        if (s > h) u = l = 0.0, n = 0;
        up[i] = u;
        down[i] = l;
        runs[i] = (double)n;
        run[r] = n;
    }
}

typedef struct {
    double *table;
    Py_ssize_t streams;
    const int64_t *index;
    const double *z;
    double k, h;
    int64_t *run;
    uint8_t *alarm;
    double *statistic, *run_mean;
} cusum_call;

/* Rows [start, stop): the streams of distinct rows are distinct (one stream per key), so parts do not meet. */
static void cusum_part(void *args, int part, Py_ssize_t start, Py_ssize_t stop) {
    cusum_call *c = args;
    (void)part;
    cusum_rows(c->table, c->streams, c->index + start, c->z + start, stop - start, c->k, c->h, c->run + start,
               c->alarm + start, c->statistic + start, c->run_mean + start);
}

static PyObject *cusum(PyObject *self, PyObject *args) {
    Py_buffer v[7]; /* table, index, z, run, alarm, statistic, run_mean */
    double k, h;
    (void)self;
    if (!PyArg_ParseTuple(args, "w*y*y*ddw*w*w*w*", &v[0], &v[1], &v[2], &k, &h, &v[3], &v[4], &v[5], &v[6]))
        return NULL;
    Py_ssize_t rows = v[2].len / 8, streams = v[0].len / 24;
    if (v[0].len % 24 || v[2].len % 8 || v[1].len != rows * 8 || v[3].len != rows * 8 || v[4].len != rows ||
        v[5].len != rows * 8 || v[6].len != rows * 8)
        return finish(v, 7, "need a float64 (3, streams) table, int64 index and float64 z of one length, and "
                            "outputs of that length (int64 run, bool alarm, float64 statistic and run_mean)");
    const int64_t *index = v[1].buf;
    for (Py_ssize_t r = 0; r < rows; r++)
        if (index[r] < 0 || index[r] >= streams) return finish(v, 7, "index out of the table's streams");
    cusum_call call = {v[0].buf, streams, index, v[2].buf, k, h, v[3].buf, v[4].buf, v[5].buf, v[6].buf};
    Py_BEGIN_ALLOW_THREADS
    over_rows(cusum_part, &call, rows);
    Py_END_ALLOW_THREADS
    return finish(v, 7, NULL);
}

static PyMethodDef methods[] = {
    {"goodness_of_fit", goodness_of_fit, METH_VARARGS,
     "goodness_of_fit(counts, bins, probs, phi, min_expected, pearson, chi2, g, df, p) -> None: per row of the\n"
     "float64 (rows, bins) counts against the normalised probs, writes Pearson's chi2, G, df (int64) and the\n"
     "p-value of chi2 (pearson) or G divided by phi (one float64, or one per row). An empty chi2 skips it\n"
     "(for the p-value of G)."},
    {"psi", psi, METH_VARARGS,
     "psi(counts, bins, expected, eps, out) -> None: the PSI of each row of counts against the smoothed\n"
     "baseline proportions expected, into out (NaN for rows with no counts)."},
    {"accuracy", accuracy, METH_VARARGS,
     "accuracy(hist, bins, accuracy_per_bin, estimate, se) -> None: label-free accuracy and its standard\n"
     "error per row of hist (NaN for rows with no counts)."},
    {"betabinom_sf", betabinom_sf, METH_VARARGS,
     "betabinom_sf(a, n, alpha, beta, log0, out) -> None: P(X >= a) for X ~ BetaBinomial(n, alpha, beta) per\n"
     "row, log0[n] being log pmf(0); NaN for the rows left to the numpy path."},
    {"cusum", cusum, METH_VARARGS,
     "cusum(table, index, z, k, h, run, alarm, statistic, run_mean) -> None: one window of z for the streams\n"
     "at rows index of the (3, streams) sums table, updated in place (sequential.cusum_step), and per row the\n"
     "new run, the alarm, the statistic and the run's mean."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernels(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "MAX_BINS", MAX_BINS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
