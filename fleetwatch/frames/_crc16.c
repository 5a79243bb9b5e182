/* CRC-16/CCITT-FALSE over the rows of a packed (rows x row_len) byte matrix, in bulk.
 *
 * poly 0x1021, init 0xFFFF, no reflection, xorout 0; check("123456789") == 0x29B1.
 * Slicing-by-8: table[k][b] is the CRC contribution of byte b followed by k zero bytes, so eight input
 * bytes fold into the register with eight independent look-ups instead of a chain of eight; two rows
 * advance in lockstep so the look-ups of independent rows overlap in the CPU.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static uint16_t tables[8][256];
#define table tables[0]

static void build_table(void) {
    for (int i = 0; i < 256; i++) {
        uint16_t c = (uint16_t)(i << 8);
        for (int b = 0; b < 8; b++) c = (c & 0x8000) ? (uint16_t)((c << 1) ^ 0x1021) : (uint16_t)(c << 1);
        tables[0][i] = c;
    }
    for (int k = 1; k < 8; k++)
        for (int i = 0; i < 256; i++)
            tables[k][i] = (uint16_t)((tables[k - 1][i] << 8) ^ tables[0][tables[k - 1][i] >> 8]);
}

#define STEP(crc, byte) (crc) = (uint16_t)(((crc) << 8) ^ table[(((crc) >> 8) ^ (byte)) & 0xFF])

/* Eight bytes of p into crc at once. */
#define STEP8(crc, p)                                                                                      \
    (crc) = (uint16_t)(tables[7][((crc) >> 8) ^ (p)[0]] ^ tables[6][((crc) & 0xFF) ^ (p)[1]] ^ tables[5][(p)[2]] \
                       ^ tables[4][(p)[3]] ^ tables[3][(p)[4]] ^ tables[2][(p)[5]] ^ tables[1][(p)[6]]     \
                       ^ tables[0][(p)[7]])

/* CRC of n bytes of two rows at once. */
static void crc_pair(const uint8_t *a, const uint8_t *b, Py_ssize_t n, uint16_t *ca, uint16_t *cb) {
    uint16_t x = 0xFFFF, y = 0xFFFF;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        STEP8(x, a + i);
        STEP8(y, b + i);
    }
    for (; i < n; i++) {
        STEP(x, a[i]);
        STEP(y, b[i]);
    }
    *ca = x;
    *cb = y;
}

static uint16_t crc_one(const uint8_t *a, Py_ssize_t n) {
    uint16_t x = 0xFFFF;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) STEP8(x, a + i);
    for (; i < n; i++) STEP(x, a[i]);
    return x;
}

static PyObject *crc16_rows(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t row_len, data_len;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*nn", &view, &row_len, &data_len)) return NULL;
    if (row_len <= 0 || data_len < 0 || data_len > row_len || view.len % row_len != 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "need 0 <= data_len <= row_len and len(buf) % row_len == 0");
        return NULL;
    }
    Py_ssize_t rows = view.len / row_len;
    PyObject *out = PyBytes_FromStringAndSize(NULL, rows * 2);
    if (out == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const uint8_t *buf = (const uint8_t *)view.buf;
    uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(out);
    Py_ssize_t r = 0;
    Py_BEGIN_ALLOW_THREADS
    for (; r + 2 <= rows; r += 2) {
        uint16_t c0, c1;
        crc_pair(buf + r * row_len, buf + (r + 1) * row_len, data_len, &c0, &c1);
        dst[r * 2] = (uint8_t)(c0 & 0xFF);
        dst[r * 2 + 1] = (uint8_t)(c0 >> 8);
        dst[r * 2 + 2] = (uint8_t)(c1 & 0xFF);
        dst[r * 2 + 3] = (uint8_t)(c1 >> 8);
    }
    for (; r < rows; r++) {
        uint16_t c = crc_one(buf + r * row_len, data_len);
        dst[r * 2] = (uint8_t)(c & 0xFF);
        dst[r * 2 + 1] = (uint8_t)(c >> 8);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return out;
}

/* 1 where the CRC of the first data_len bytes of a row equals the little-endian u16 stored right after
 * them, 0 elsewhere: one byte a row. */
static PyObject *crc16_check_rows(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t row_len;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*n", &view, &row_len)) return NULL;
    if (row_len < 2 || view.len % row_len != 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "need row_len >= 2 and len(buf) % row_len == 0");
        return NULL;
    }
    Py_ssize_t rows = view.len / row_len, data_len = row_len - 2;
    PyObject *out = PyBytes_FromStringAndSize(NULL, rows);
    if (out == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const uint8_t *buf = (const uint8_t *)view.buf;
    uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(out);
    Py_ssize_t r = 0;
    Py_BEGIN_ALLOW_THREADS
    for (; r + 2 <= rows; r += 2) {
        const uint8_t *p0 = buf + r * row_len, *p1 = p0 + row_len;
        uint16_t c0, c1;
        crc_pair(p0, p1, data_len, &c0, &c1);
        dst[r] = (uint8_t)(c0 == (uint16_t)(p0[data_len] | (p0[data_len + 1] << 8)));
        dst[r + 1] = (uint8_t)(c1 == (uint16_t)(p1[data_len] | (p1[data_len + 1] << 8)));
    }
    for (; r < rows; r++) {
        const uint8_t *p = buf + r * row_len;
        dst[r] = (uint8_t)(crc_one(p, data_len) == (uint16_t)(p[data_len] | (p[data_len + 1] << 8)));
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return out;
}

static PyMethodDef methods[] = {
    {"crc16_rows", crc16_rows, METH_VARARGS,
     "crc16_rows(buf, row_len, data_len) -> bytes: little-endian CRC-16/CCITT-FALSE of the first\n"
     "data_len bytes of each row_len-byte row of buf."},
    {"crc16_check_rows", crc16_check_rows, METH_VARARGS,
     "crc16_check_rows(buf, row_len) -> bytes: 1 for each row_len-byte row of buf whose last two bytes\n"
     "(little-endian) are the CRC-16/CCITT-FALSE of the bytes before them, 0 otherwise."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_crc16", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__crc16(void) {
    build_table();
    return PyModule_Create(&module);
}
