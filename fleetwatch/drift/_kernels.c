/* The drift statistics' C routines: the count tests of fleetwatch/drift/stats.py, one pass over the rows of a
 * (rows, bins) matrix each. stats.py documents what they compute and holds the numpy versions, used when this
 * extension is not built or for inputs these routines leave to it; tests/test_drift_stats.py runs both paths
 * against scipy.
 *
 *   goodness_of_fit  the bin merge, Pearson's chi2, G = 2 sum O ln(O / E), df and the chi-square p-value
 *   psi              population stability index with PSI_EPS smoothing
 *   accuracy         label-free accuracy from a confidence histogram and its standard error
 *   betabinom_sf     beta-binomial upper tail by betabinom_sf's rule (rows it cannot do come back NaN)
 *
 * Floats: every row sum is numpy's pairwise sum taken in numpy's order, and the logs are the C library's, as
 * in scipy's xlogy, so G, chi2, the accuracy estimate and its se are the numpy path's to the bit; PSI is
 * within an ulp of a term (numpy's own SIMD log differs from the C library's for about 1e-4 of arguments).
 * The p-values differ from scipy's by its own rounding: chi2_sf is a closed form for integer df, and the
 * beta-binomial tail is summed one term at a time rather than in blocks.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

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

/* numpy's pairwise sum of n contiguous doubles (numpy/_core/src/umath/loops_utils.h.src), the order in
 * which numpy's sum(axis=-1) adds a row. */
static double pairwise_sum(const double *a, Py_ssize_t n) {
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
    Py_ssize_t half = n / 2;
    half -= half % 8;
    return pairwise_sum(a, half) + pairwise_sum(a + half, n - half);
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
    double log_fac = a * log(h) - h - lgamma(a);
    if (log_fac < -MAXLOG) return 0.0;
    double sum = 0.0, term = 1.0;
    for (Py_ssize_t j = m - 1; j >= 0; j--) {
        sum += term;
        term *= ((double)j + shift) / h;
    }
    if (k & 1) sum += term * erfc_scaled(h);
    return exp(log_fac) / h * sum;
}

/* One row of goodness_of_fit: merge, statistics, df; the p-value of chi2 (pearson) or G after dividing by phi.
 * merged_o, merged_e, g_terms and chi2_terms have room for `bins`. chi2 NULL: Pearson's statistic is not wanted. */
static void fit_row(const double *counts, Py_ssize_t bins, const double *probs, double phi, double min_expected,
                    int pearson, double *merged_o, double *merged_e, double *g_terms, double *chi2_terms, double *chi2,
                    double *g, int64_t *df, double *p) {
    double n = pairwise_sum(counts, bins), run_o = 0.0, run_e = 0.0;
    Py_ssize_t groups = 0, open = 0; /* closed merged bins; the first bin of the open one */
    for (Py_ssize_t b = 0; b < bins; b++) {
        run_e += n * probs[b];
        run_o += counts[b];
        if (run_e >= min_expected) {
            merged_o[groups] = run_o;
            merged_e[groups++] = run_e;
            run_o = run_e = 0.0;
            open = b + 1;
        }
    }
    if (groups == 0) { /* one merged bin: all of them */
        merged_o[0] = run_o;
        merged_e[0] = run_e;
    } else { /* bins left over join the last closed one, added one by one as numpy's bincount adds them */
        for (Py_ssize_t b = open; b < bins; b++) {
            merged_e[groups - 1] += n * probs[b];
            merged_o[groups - 1] += counts[b];
        }
    }
    Py_ssize_t used = groups > 0 ? groups : 1;
    for (Py_ssize_t k = 0; k < bins; k++) {
        double o = k < used ? merged_o[k] : 0.0, e = k < used ? merged_e[k] : 0.0;
        g_terms[k] = o > 0 ? o * log(o / (e > 0 ? e : 1.0)) : o * 0.0; /* xlogy(O, O / E), 0 ln 0 = 0 */
        if (chi2 != NULL) chi2_terms[k] = e > 0 ? (o - e) * (o - e) / e : 0.0;
    }
    double g_row = 2 * pairwise_sum(g_terms, bins), chi2_row = chi2 != NULL ? pairwise_sum(chi2_terms, bins) : 0.0;
    Py_ssize_t dof = groups > 1 ? groups - 1 : 0;
    *g = g_row;
    *df = (int64_t)dof;
    if (chi2 != NULL) *chi2 = chi2_row;
    *p = dof > 0 ? chi2_sf(dof, (pearson ? chi2_row : g_row) / phi) : 1.0;
}

static void release(Py_buffer *views, int count) {
    for (int i = 0; i < count; i++) PyBuffer_Release(&views[i]);
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
    Py_ssize_t phi_step = v[2].len == 8 ? 0 : 1;
    double *chi2 = v[3].buf, *g = v[4].buf, *p = v[6].buf;
    int64_t *df = v[5].buf;
    Py_BEGIN_ALLOW_THREADS
    double scratch[4][MAX_BINS];
    for (Py_ssize_t r = 0; r < rows; r++)
        fit_row(counts + r * bins, bins, probs, phi[r * phi_step], min_expected, pearson, scratch[0], scratch[1],
                scratch[2], scratch[3], want_chi2 ? chi2 + r : NULL, g + r, df + r, p + r);
    Py_END_ALLOW_THREADS
    return finish(v, 7, NULL);
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
    double *terms = PyMem_Malloc((size_t)bins * sizeof *terms);
    if (terms == NULL) {
        release(v, 3);
        return PyErr_NoMemory();
    }
    double scale = 1 + (double)bins * eps;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < rows; r++) {
        const double *row = counts + r * bins;
        double n = pairwise_sum(row, bins);
        if (!(n > 0)) {
            out[r] = NAN;
            continue;
        }
        for (Py_ssize_t b = 0; b < bins; b++) {
            double a = (row[b] / n + eps) / scale;
            terms[b] = (a - expected[b]) * log(a / expected[b]);
        }
        out[r] = pairwise_sum(terms, bins);
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(terms);
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
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < rows; r++) out[r] = betabinom_row(a[r], n[r], alpha, beta, log0, top);
    Py_END_ALLOW_THREADS
    return finish(v, 4, NULL);
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
