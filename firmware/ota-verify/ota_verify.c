/* ota_verify.c: see ota_verify.h. No malloc; the only buffers are on the stack (under 200 bytes). */
#include "ota_verify.h"

#include <string.h>

#include <mbedtls/base64.h>
#include <mbedtls/md.h>

static const char PREFIX[] = "{\"cmd\":";
static const char SEPARATOR[] = ",\"sig\":\"";
static const char SUFFIX[] = "\"}";
#define LEN(literal) (sizeof(literal) - 1u)
/* A DER ECDSA P-256 signature is at most 72 bytes: 96 base64 characters. */
#define MAX_SIGNATURE 72u
#define MAX_SIGNATURE_B64 96u

/* ---- the canonical command: a flat JSON object of string and integer values ----------------------- */

typedef struct {
    const char *key;
    size_t key_len;
    int is_string;
    const char *raw; /* string: the characters between the quotes, still escaped */
    size_t raw_len;
    long long number;
} member_t;

/* Called for each member in order; a non-zero return stops the walk early (not an error). */
typedef int (*visit_fn)(void *ctx, const member_t *member);

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* s[*i] is the opening quote; on success *i is past the closing quote. Escapes are checked, not decoded. */
static int scan_string(const char *s, size_t n, size_t *i, const char **raw, size_t *raw_len)
{
    size_t j = *i + 1u;
    *raw = s + j;
    while (j < n && s[j] != '"') {
        unsigned char c = (unsigned char)s[j];
        if (c < 0x20u || c >= 0x7Fu) {
            return -1; /* canonical commands are printable ASCII */
        }
        if (c == '\\') {
            if (j + 1u >= n) {
                return -1;
            }
            if (s[j + 1u] == 'u') {
                if (j + 5u >= n || hex_digit(s[j + 2u]) < 0 || hex_digit(s[j + 3u]) < 0 ||
                    hex_digit(s[j + 4u]) < 0 || hex_digit(s[j + 5u]) < 0) {
                    return -1;
                }
                j += 6u;
                continue;
            }
            if (strchr("\"\\/bfnrt", s[j + 1u]) == NULL || s[j + 1u] == '\0') {
                return -1;
            }
            j += 2u;
            continue;
        }
        j++;
    }
    if (j >= n) {
        return -1;
    }
    *raw_len = (size_t)(s + j - *raw);
    *i = j + 1u;
    return 0;
}

/* -?(0|[1-9][0-9]*) within long long. */
static int scan_integer(const char *s, size_t n, size_t *i, long long *value)
{
    size_t j = *i;
    int negative = 0;
    unsigned long long magnitude = 0u;
    const unsigned long long limit = 9223372036854775807ULL;
    if (j < n && s[j] == '-') {
        negative = 1;
        j++;
    }
    if (j >= n || s[j] < '0' || s[j] > '9' || (s[j] == '0' && j + 1u < n && s[j + 1u] >= '0' && s[j + 1u] <= '9')) {
        return -1;
    }
    while (j < n && s[j] >= '0' && s[j] <= '9') {
        unsigned digit = (unsigned)(s[j] - '0');
        if (magnitude > (limit - digit) / 10u) {
            return -1;
        }
        magnitude = magnitude * 10u + digit;
        j++;
    }
    *value = negative ? -(long long)magnitude : (long long)magnitude;
    *i = j;
    return 0;
}

static int raw_key_compare(const member_t *a, const member_t *b)
{
    size_t shorter = a->key_len < b->key_len ? a->key_len : b->key_len;
    int order = memcmp(a->key, b->key, shorter);
    if (order != 0) {
        return order;
    }
    return (a->key_len > b->key_len) - (a->key_len < b->key_len);
}

/* Walk the canonical object s[0..n): keys strictly ascending (so never repeated), no whitespace,
 * values strings or integers only. Returns 0 when well formed (or stopped by the visitor), -1 if not. */
static int walk(const char *s, size_t n, visit_fn visit, void *ctx)
{
    size_t i = 1u;
    member_t previous;
    int first = 1;
    memset(&previous, 0, sizeof previous);
    if (n < 2u || s[0] != '{' || s[n - 1u] != '}') {
        return -1;
    }
    if (n == 2u) {
        return 0;
    }
    for (;;) {
        member_t m;
        memset(&m, 0, sizeof m);
        if (s[i] != '"' || scan_string(s, n - 1u, &i, &m.key, &m.key_len) != 0 || i >= n - 1u || s[i] != ':') {
            return -1;
        }
        i++;
        if (!first && raw_key_compare(&previous, &m) >= 0) {
            return -1;
        }
        if (s[i] == '"') {
            m.is_string = 1;
            if (scan_string(s, n - 1u, &i, &m.raw, &m.raw_len) != 0) {
                return -1;
            }
        } else if (scan_integer(s, n - 1u, &i, &m.number) != 0) {
            return -1;
        }
        if (visit != NULL && visit(ctx, &m) != 0) {
            return 0;
        }
        previous = m;
        first = 0;
        if (i == n - 1u) {
            return 0;
        }
        if (s[i] != ',') {
            return -1;
        }
        i++;
    }
}

/* Decode a checked raw string into buf (NUL-terminated); only \u escapes below 0x80 are supported. */
static int unescape(const char *raw, size_t len, char *buf, size_t size)
{
    size_t i = 0u;
    size_t out = 0u;
    while (i < len) {
        char c = raw[i];
        if (c == '\\') {
            char e = raw[i + 1u];
            if (e == 'u') {
                int code = (hex_digit(raw[i + 2u]) << 12) | (hex_digit(raw[i + 3u]) << 8) |
                           (hex_digit(raw[i + 4u]) << 4) | hex_digit(raw[i + 5u]);
                if (code == 0 || code >= 0x80) {
                    return -1;
                }
                c = (char)code;
                i += 6u;
            } else {
                static const char from[] = "\"\\/bfnrt";
                static const char to[] = "\"\\/\b\f\n\r\t";
                c = to[strchr(from, e) - from];
                i += 2u;
            }
        } else {
            i++;
        }
        if (out + 1u >= size) {
            return -1;
        }
        buf[out++] = c;
    }
    buf[out] = '\0';
    return 0;
}

/* ---- field lookup ----------------------------------------------------------------------------------- */

typedef struct {
    const char *name;
    const member_t *found;
    member_t copy;
} lookup_t;

static int find_member(void *ctx, const member_t *m)
{
    lookup_t *lookup = (lookup_t *)ctx;
    if (m->key_len == strlen(lookup->name) && memcmp(m->key, lookup->name, m->key_len) == 0) {
        lookup->copy = *m;
        lookup->found = &lookup->copy;
        return 1;
    }
    return 0;
}

static const member_t *lookup(const char *cmd, size_t len, const char *name, lookup_t *state)
{
    state->name = name;
    state->found = NULL;
    if (walk(cmd, len, find_member, state) != 0) {
        return NULL;
    }
    return state->found;
}

int ota_command_string(const ota_command_t *cmd, const char *name, char *buf, size_t size)
{
    lookup_t state;
    const member_t *m = lookup(cmd->cmd, cmd->cmd_len, name, &state);
    if (m == NULL || !m->is_string || size == 0u) {
        return -1;
    }
    return unescape(m->raw, m->raw_len, buf, size);
}

int ota_command_int(const ota_command_t *cmd, const char *name, long long *value)
{
    lookup_t state;
    const member_t *m = lookup(cmd->cmd, cmd->cmd_len, name, &state);
    if (m == NULL || m->is_string) {
        return -1;
    }
    *value = m->number;
    return 0;
}

/* ---- verification ----------------------------------------------------------------------------------- */

ota_verify_result_t ota_verify_load_key(mbedtls_pk_context *key, const unsigned char *buf, size_t len)
{
    if (mbedtls_pk_parse_public_key(key, buf, len) != 0 || !mbedtls_pk_can_do(key, MBEDTLS_PK_ECDSA) ||
        mbedtls_pk_get_bitlen(key) != 256u) {
        return OTA_VERIFY_BAD_KEY;
    }
    return OTA_VERIFY_OK;
}

ota_verify_result_t ota_verify(const unsigned char *msg, size_t len, mbedtls_pk_context *key,
                               const char *device_id, long long now, long long last_issued,
                               ota_command_t *out)
{
    const char *text = (const char *)msg;
    size_t cut;
    size_t b64_len;
    size_t sig_len = 0u;
    unsigned char sig[MAX_SIGNATURE];
    unsigned char hash[32];
    char device[OTA_VERIFY_MAX_VALUE + 1u];
    ota_command_t cmd;

    if (!mbedtls_pk_can_do(key, MBEDTLS_PK_ECDSA) || mbedtls_pk_get_bitlen(key) != 256u) {
        return OTA_VERIFY_BAD_KEY;
    }
    if (len > OTA_VERIFY_MAX_MESSAGE || len < LEN(PREFIX) + 2u + LEN(SEPARATOR) + LEN(SUFFIX) ||
        memcmp(text, PREFIX, LEN(PREFIX)) != 0 || memcmp(text + len - LEN(SUFFIX), SUFFIX, LEN(SUFFIX)) != 0) {
        return OTA_VERIFY_MALFORMED;
    }
    /* The last separator: base64 never contains one, a command's strings cannot (quotes are escaped). */
    cut = len - LEN(SUFFIX) - LEN(SEPARATOR);
    while (cut > LEN(PREFIX) && memcmp(text + cut, SEPARATOR, LEN(SEPARATOR)) != 0) {
        cut--;
    }
    if (cut <= LEN(PREFIX)) {
        return OTA_VERIFY_MALFORMED;
    }
    b64_len = len - LEN(SUFFIX) - (cut + LEN(SEPARATOR));
    if (b64_len == 0u || b64_len > MAX_SIGNATURE_B64 ||
        mbedtls_base64_decode(sig, sizeof sig, &sig_len, msg + cut + LEN(SEPARATOR), b64_len) != 0) {
        return OTA_VERIFY_MALFORMED;
    }
    cmd.cmd = text + LEN(PREFIX);
    cmd.cmd_len = cut - LEN(PREFIX);
    if (mbedtls_md(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), (const unsigned char *)cmd.cmd, cmd.cmd_len,
                   hash) != 0 ||
        mbedtls_pk_verify(key, MBEDTLS_MD_SHA256, hash, sizeof hash, sig, sig_len) != 0) {
        return OTA_VERIFY_BAD_SIGNATURE;
    }
    /* Signed by the server: now its content. */
    if (walk(cmd.cmd, cmd.cmd_len, NULL, NULL) != 0 || ota_command_int(&cmd, "issued", &cmd.issued) != 0 ||
        ota_command_int(&cmd, "expires", &cmd.expires) != 0 ||
        ota_command_string(&cmd, "device", device, sizeof device) != 0) {
        return OTA_VERIFY_MALFORMED;
    }
    if (strcmp(device, device_id) != 0 && strcmp(device, "*") != 0) {
        return OTA_VERIFY_WRONG_DEVICE;
    }
    if (now >= cmd.expires) {
        return OTA_VERIFY_EXPIRED;
    }
    if (cmd.issued <= last_issued) {
        return OTA_VERIFY_REPLAYED;
    }
    *out = cmd;
    return OTA_VERIFY_OK;
}

const char *ota_verify_result_name(ota_verify_result_t result)
{
    switch (result) {
    case OTA_VERIFY_OK:
        return "ok";
    case OTA_VERIFY_MALFORMED:
        return "malformed";
    case OTA_VERIFY_BAD_SIGNATURE:
        return "bad_signature";
    case OTA_VERIFY_WRONG_DEVICE:
        return "wrong_device";
    case OTA_VERIFY_EXPIRED:
        return "expired";
    case OTA_VERIFY_REPLAYED:
        return "replayed";
    case OTA_VERIFY_BAD_KEY:
        return "bad_key";
    }
    return "unknown";
}
