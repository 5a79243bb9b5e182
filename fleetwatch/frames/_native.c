/* The frame decoder's C routines: CRC-16 of many rows, the reason code of every frame in one pass, and
 * joining a list of messages into one buffer. fleetwatch/frames/rules.py and crc.py hold the numpy
 * versions used when this extension is not built; tests/test_frames_decoder.py checks that both agree.
 *
 * CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, xorout 0; check("123456789") == 0x29B1.
 * Slicing-by-8: table[k][b] is the CRC contribution of byte b followed by k zero bytes, so eight input
 * bytes fold into the register with eight independent look-ups instead of a chain of eight; two rows
 * advance in lockstep so the look-ups of independent rows overlap in the CPU.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

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

/* ---- Reason codes: one pass over a (rows x row_len) matrix of frames ----
 *
 * Per row, in WIRE-FORMAT.md's order of precedence: MALFORMED when the header is not magic 0xFB,
 * version 1 and body_len == row_len - 22 (the caller then walks the messages one by one); BAD_CRC;
 * UNKNOWN_SCHEMA; BODY_LEN_MISMATCH; FIRST_RULE + k for the first rule k of the schema the frame breaks;
 * OK. The rules come compiled from the schemas by rules.py as a program of int64 words:
 *
 *   words[0..255]  for schema id s, the index of its entry, or -1 when no schema has that id
 *   entry          body_len, rule count, then RULE_WORDS words per rule: op, lhs term, rhs term
 *   term           kind, wire type, offset in the frame, count (values summed), value
 *
 * A term is a constant (value), a field (the sum of `count` values of `type` from `offset`), or the
 * receive time of the frame's message plus value. Terms compare as exact numbers: two integers as int64,
 * otherwise as doubles (f32 values are exact in a double; rules.py keeps integers within 2**53).
 *
 * Rows are taken BLOCK at a time: the CRC and header of each row first, then each rule for every row of
 * the block whose schema it belongs to, so the interpreter dispatches once per rule and block rather
 * than once per value.
 */
enum { CODE_OK = 0, CODE_BAD_CRC = 1, CODE_UNKNOWN_SCHEMA = 2, CODE_BODY_LEN_MISMATCH = 3, CODE_FIRST_RULE = 4 };
#define CODE_MALFORMED 255
#define MAX_RULES (CODE_MALFORMED - CODE_FIRST_RULE)
enum { OP_EQ, OP_NE, OP_LE, OP_LT, OP_GE, OP_GT, OP_COUNT };
enum { TERM_CONST, TERM_FIELD, TERM_RECEIVED, TERM_KINDS };
enum { T_U8, T_U16, T_U32, T_I8, T_I16, T_I32, T_F32, T_COUNT };
#define TERM_WORDS 5
#define RULE_WORDS (1 + 2 * TERM_WORDS)
#define SCHEMA_IDS 256
#define MIN_FRAME_LEN 22
#define MAGIC 0xFB
#define ENVELOPE_VERSION 1
#define BLOCK 64

/* The rule loops vectorise far better with AVX2: with GCC on x86-64 Linux, build them twice and let the
 * loader pick the AVX2 copy on a CPU that has it (about 15% of the pass); elsewhere, one plain build. */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__) && defined(__linux__)
#define VECTOR_CLONES __attribute__((target_clones("default", "arch=x86-64-v3")))
#else
#define VECTOR_CLONES
#endif

static const int64_t type_size[T_COUNT] = {1, 2, 4, 1, 2, 4, 4};

static inline uint32_t le16(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
static inline uint32_t le32(const uint8_t *p) { return le16(p) | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static inline int64_t rd_u8(const uint8_t *p) { return p[0]; }
static inline int64_t rd_u16(const uint8_t *p) { return le16(p); }
static inline int64_t rd_u32(const uint8_t *p) { return le32(p); }
static inline int64_t rd_i8(const uint8_t *p) { return (int64_t)p[0] - (p[0] & 0x80 ? 0x100 : 0); }
static inline int64_t rd_i16(const uint8_t *p) { return (int64_t)le16(p) - (p[1] & 0x80 ? 0x10000 : 0); }
static inline int64_t rd_i32(const uint8_t *p) { return (int64_t)le32(p) - (p[3] & 0x80 ? INT64_C(0x100000000) : 0); }

/* A term's value for each of the n rows of a block: into iv, or into fv for an f32 field (returns 1). */
#define SUM_ROWS(READ, SIZE)                                                                               \
    if (count == 1) {                                                                                      \
        for (int i = 0; i < n; i++) iv[i] = READ(base + i * row_len);                                      \
        return 0;                                                                                          \
    }                                                                                                      \
    for (int i = 0; i < n; i++) {                                                                          \
        const uint8_t *p = base + i * row_len;                                                             \
        int64_t sum = 0;                                                                                   \
        for (int64_t k = 0; k < count; k++, p += (SIZE)) sum += READ(p);                                   \
        iv[i] = sum;                                                                                       \
    }                                                                                                      \
    return 0;

static int term_values(const int64_t *term, const uint8_t *rows, Py_ssize_t row_len, int n, const int64_t *received,
                       int64_t *iv, double *fv) {
    if (term[0] == TERM_CONST) {
        for (int i = 0; i < n; i++) iv[i] = term[4];
        return 0;
    }
    if (term[0] == TERM_RECEIVED) {
        for (int i = 0; i < n; i++) iv[i] = (int64_t)((uint64_t)received[i] + (uint64_t)term[4]); /* wraps as numpy */
        return 0;
    }
    const uint8_t *base = rows + term[2]; /* a field term: program_is_sound checked its bytes lie in the row */
    int64_t count = term[3];
    switch (term[1]) {
    case T_U8: SUM_ROWS(rd_u8, 1)
    case T_U16: SUM_ROWS(rd_u16, 2)
    case T_U32: SUM_ROWS(rd_u32, 4)
    case T_I8: SUM_ROWS(rd_i8, 1)
    case T_I16: SUM_ROWS(rd_i16, 2)
    case T_I32: SUM_ROWS(rd_i32, 4)
    default:
        for (int i = 0; i < n; i++) {
            uint32_t bits = le32(base + i * row_len);
            float f;
            memcpy(&f, &bits, sizeof f);
            fv[i] = f;
        }
        return 1;
    }
}

/* keep[i] = whether row i of the block keeps `x op y`. */
#define COMPARE_ROWS(x, y)                                                                                 \
    switch (op) {                                                                                          \
    case OP_EQ: COMPARE_OP(x, ==, y) break;                                                                \
    case OP_NE: COMPARE_OP(x, !=, y) break;                                                                \
    case OP_LE: COMPARE_OP(x, <=, y) break;                                                                \
    case OP_LT: COMPARE_OP(x, <, y) break;                                                                 \
    case OP_GE: COMPARE_OP(x, >=, y) break;                                                                \
    default: COMPARE_OP(x, >, y) break;                                                                    \
    }
#define COMPARE_OP(x, cmp, y) \
    for (int i = 0; i < n; i++) keep[i] = (uint8_t)((x)[i] cmp (y)[i]);

/* The rows still pending (they keep every rule so far) that break this rule get its code and are no longer
 * pending. The comparisons fill keep[] first, so that the byte-wise update vectorises. */
VECTOR_CLONES static void apply_rule(const int64_t *rule, uint8_t code, const uint8_t *rows, Py_ssize_t row_len,
                                     int n, const int64_t *received, uint8_t *pending, uint8_t *codes) {
    int64_t li[BLOCK], ri[BLOCK], op = rule[0];
    double lf[BLOCK], rf[BLOCK];
    uint8_t keep[BLOCK];
    int lhs_float = term_values(rule + 1, rows, row_len, n, received, li, lf);
    int rhs_float = term_values(rule + 1 + TERM_WORDS, rows, row_len, n, received, ri, rf);
    if (!lhs_float && !rhs_float) {
        COMPARE_ROWS(li, ri)
    } else {
        for (int i = 0; i < n; i++) {
            if (!lhs_float) lf[i] = (double)li[i];
            if (!rhs_float) rf[i] = (double)ri[i];
        }
        COMPARE_ROWS(lf, rf)
    }
    for (int i = 0; i < n; i++) {
        uint8_t broken = (uint8_t)(pending[i] & (keep[i] ^ 1));
        codes[i] = (uint8_t)(codes[i] | ((uint8_t)-broken & code));
        pending[i] = (uint8_t)(pending[i] & keep[i]);
    }
}

/* The codes of the n <= BLOCK rows from `rows`; received[i] is row i's receive time. */
VECTOR_CLONES static void block_codes(const uint8_t *rows, Py_ssize_t row_len, int n, const int64_t *program,
                                      const int64_t *received, uint8_t *codes) {
    Py_ssize_t data_len = row_len - 2;
    int64_t entry[BLOCK];
    uint8_t pending[BLOCK];
    for (int i = 0; i < n; i += 2) {
        const uint8_t *p0 = rows + i * row_len, *p1 = p0 + row_len;
        uint16_t crc[2] = {0, 0};
        if (i + 1 < n)
            crc_pair(p0, p1, data_len, &crc[0], &crc[1]);
        else
            crc[0] = crc_one(p0, data_len);
        for (int j = 0; j < 2 && i + j < n; j++) {
            const uint8_t *p = j ? p1 : p0;
            int64_t at = program[p[2]];
            uint8_t code = CODE_OK;
            if (p[0] != MAGIC || p[1] != ENVELOPE_VERSION || p[3] != row_len - MIN_FRAME_LEN)
                code = CODE_MALFORMED;
            else if (crc[j] != (uint16_t)le16(p + data_len))
                code = CODE_BAD_CRC;
            else if (at < 0)
                code = CODE_UNKNOWN_SCHEMA;
            else if (program[at] != row_len - MIN_FRAME_LEN)
                code = CODE_BODY_LEN_MISMATCH;
            codes[i + j] = code;
            entry[i + j] = code == CODE_OK ? at : -1;
        }
    }
    /* The rules of each schema present in the block (nearly always one), for the rows of that schema. */
    for (int first = 0; first < n; first++) {
        int64_t at = entry[first];
        if (at < 0) continue;
        for (int i = 0; i < n; i++) pending[i] = entry[i] == at;
        const int64_t *rule = program + at + 2;
        for (int64_t k = 0; k < program[at + 1]; k++, rule += RULE_WORDS)
            apply_rule(rule, (uint8_t)(CODE_FIRST_RULE + k), rows, row_len, n, received, pending, codes);
        for (int i = first; i < n; i++)
            if (entry[i] == at) entry[i] = -1;
    }
}

/* 1 when every entry and term of the program lies where reading it is safe, 0 otherwise. */
static int program_is_sound(const int64_t *w, Py_ssize_t nwords) {
    if (nwords < SCHEMA_IDS) return 0;
    for (int s = 0; s < SCHEMA_IDS; s++) {
        int64_t at = w[s];
        if (at == -1) continue;
        if (at < SCHEMA_IDS || at > nwords - 2) return 0;
        int64_t body_len = w[at], rules = w[at + 1];
        if (body_len < 0 || body_len > 255 || rules < 0 || rules > MAX_RULES) return 0;
        if (rules > (nwords - at - 2) / RULE_WORDS) return 0;
        for (int64_t k = 0; k < rules; k++) {
            const int64_t *rule = w + at + 2 + k * RULE_WORDS;
            if (rule[0] < 0 || rule[0] >= OP_COUNT) return 0;
            for (int side = 0; side < 2; side++) {
                const int64_t *t = rule + 1 + side * TERM_WORDS;
                if (t[0] < 0 || t[0] >= TERM_KINDS) return 0;
                if (t[0] != TERM_FIELD) continue;
                if (t[1] < 0 || t[1] >= T_COUNT || t[3] < 1 || (t[1] == T_F32 && t[3] != 1)) return 0;
                int64_t end = MIN_FRAME_LEN - 2 + body_len; /* the CRC is not a field */
                if (t[2] < 0 || t[2] > end || t[3] > end || t[2] + t[3] * type_size[t[1]] > end) return 0;
            }
        }
    }
    return 1;
}

static PyObject *reason_codes(PyObject *self, PyObject *args) {
    Py_buffer rows_view, program_view, msg_view, received_view, codes_view, valid_view;
    Py_ssize_t row_len;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*ny*y*y*w*w*", &rows_view, &row_len, &program_view, &msg_view, &received_view,
                          &codes_view, &valid_view))
        return NULL;
    Py_ssize_t rows = row_len > 0 ? rows_view.len / row_len : 0, n_received = received_view.len / 8;
    const char *problem = NULL;
    if (row_len < MIN_FRAME_LEN || row_len > MIN_FRAME_LEN + 255 || rows_view.len % row_len != 0)
        problem = "need 22 <= row_len <= 277 and len(rows) % row_len == 0";
    else if (msg_view.len != rows * 8 || codes_view.len != rows || valid_view.len != SCHEMA_IDS * 8)
        problem = "need one int64 message index and one code byte per row, and 256 int64 counts";
    else if (program_view.len % 8 || !program_is_sound((const int64_t *)program_view.buf, program_view.len / 8))
        problem = "the rule program is malformed";
    const uint8_t *buf = (const uint8_t *)rows_view.buf;
    const int64_t *program = (const int64_t *)program_view.buf, *msg = (const int64_t *)msg_view.buf;
    const int64_t *received = (const int64_t *)received_view.buf;
    uint8_t *codes = (uint8_t *)codes_view.buf;
    int64_t *valid = (int64_t *)valid_view.buf;
    if (problem == NULL) {
        Py_BEGIN_ALLOW_THREADS
        memset(valid, 0, SCHEMA_IDS * sizeof *valid);
        int64_t block_received[BLOCK];
        for (Py_ssize_t r = 0; r < rows && problem == NULL; r += BLOCK) {
            int n = rows - r < BLOCK ? (int)(rows - r) : BLOCK;
            for (int i = 0; i < n; i++) {
                int64_t m = msg[r + i];
                if (m < 0 || m >= n_received) {
                    problem = "a message index is outside the receive times";
                    break;
                }
                block_received[i] = received[m];
            }
            if (problem != NULL) break;
            block_codes(buf + r * row_len, row_len, n, program, block_received, codes + r);
            for (int i = 0; i < n; i++) valid[buf[(r + i) * row_len + 2]] += codes[r + i] == CODE_OK;
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&rows_view);
    PyBuffer_Release(&program_view);
    PyBuffer_Release(&msg_view);
    PyBuffer_Release(&received_view);
    PyBuffer_Release(&codes_view);
    PyBuffer_Release(&valid_view);
    if (problem != NULL) {
        PyErr_SetString(PyExc_ValueError, problem);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ---- b"".join(messages) and the length of each: one pass for the lengths, one to copy ---- */

/* Ask Linux for transparent huge pages under a large buffer, as numpy does for its large arrays: a
 * fresh 74 MB buffer otherwise costs some 18,000 page faults, half the join's time. */
static void advise_huge_pages(char *buf, Py_ssize_t len) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0 || len < (Py_ssize_t)4 << 20) return;
    uintptr_t start = ((uintptr_t)buf + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
    uintptr_t end = ((uintptr_t)buf + (uintptr_t)len) & ~((uintptr_t)page - 1);
    if (end > start) (void)madvise((void *)start, end - start, MADV_HUGEPAGE);
#else
    (void)buf;
    (void)len;
#endif
}

/* The length of a message (-1 with an exception set when it is not bytes-like); when out is not NULL and
 * the length is `room`, its bytes are copied to out. */
static Py_ssize_t take_message(PyObject *item, char *out, Py_ssize_t room) {
    if (PyBytes_Check(item)) {
        Py_ssize_t len = PyBytes_GET_SIZE(item);
        if (out != NULL && len == room) memcpy(out, PyBytes_AS_STRING(item), (size_t)len);
        return len;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(item, &view, PyBUF_SIMPLE) < 0) return -1;
    Py_ssize_t len = view.len;
    if (out != NULL && len == room) memcpy(out, view.buf, (size_t)len);
    PyBuffer_Release(&view);
    return len;
}

static PyObject *join_messages(PyObject *self, PyObject *arg) {
    (void)self;
    PyObject *seq = PySequence_Fast(arg, "messages must be a sequence of bytes-like objects");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), total = 0;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *lengths = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(int64_t)), *joined = NULL;
    if (lengths == NULL) goto fail;
    char *len_out = PyBytes_AS_STRING(lengths);
    for (Py_ssize_t i = 0; i < n; i++) {
#if defined(__GNUC__)
        if (i + 16 < n) __builtin_prefetch(items[i + 16]); /* the objects' headers are cache misses */
#endif
        if (!PyBytes_CheckExact(items[i]) && !PyTuple_CheckExact(seq)) {
            /* Exporting this item's buffer may run Python code that resizes the list under `items`: go on
             * (from the start) over a tuple of its own. Bytes, the common case, run no code. */
            PyObject *tuple = PyList_AsTuple(seq);
            if (tuple == NULL) goto fail;
            Py_DECREF(seq);
            seq = tuple;
            items = PySequence_Fast_ITEMS(seq);
            total = 0;
            i = -1;
            continue;
        }
        int64_t len = take_message(items[i], NULL, 0);
        if (len < 0) goto fail;
        memcpy(len_out + i * sizeof len, &len, sizeof len);
        total += (Py_ssize_t)len;
    }
    joined = PyBytes_FromStringAndSize(NULL, total);
    if (joined == NULL) goto fail;
    char *out = PyBytes_AS_STRING(joined);
    advise_huge_pages(out, total);
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t len;
        memcpy(&len, len_out + i * sizeof len, sizeof len);
        Py_ssize_t taken = take_message(items[i], out, (Py_ssize_t)len);
        if (taken < 0) goto fail;
        if (taken != len) { /* a bytearray resized meanwhile */
            PyErr_SetString(PyExc_RuntimeError, "a message changed size while the messages were joined");
            goto fail;
        }
        out += len;
    }
    Py_DECREF(seq);
    return Py_BuildValue("(NN)", joined, lengths);
fail:
    Py_DECREF(seq);
    Py_XDECREF(lengths);
    Py_XDECREF(joined);
    return NULL;
}

static PyMethodDef methods[] = {
    {"crc16_rows", crc16_rows, METH_VARARGS,
     "crc16_rows(buf, row_len, data_len) -> bytes: little-endian CRC-16/CCITT-FALSE of the first\n"
     "data_len bytes of each row_len-byte row of buf."},
    {"reason_codes", reason_codes, METH_VARARGS,
     "reason_codes(rows, row_len, program, msg, received, codes, valid) -> None: writes the reason code\n"
     "of each row_len-byte frame of rows into codes (uint8), and counts the valid frames of each schema id\n"
     "into valid (256 int64). msg (int64 per row) indexes received (int64 per message)."},
    {"join_messages", join_messages, METH_O,
     "join_messages(messages) -> (bytes, bytes): the messages back to back, and their lengths as int64."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void) {
    build_table();
    return PyModule_Create(&module);
}
