/* Host unit tests of ota_verify: commands signed here with mbedTLS (the server's signatures are tested
 * from Python, tests/test_ota_verify.py), then checked as a device would: good, tampered, expired,
 * other key, other device, replayed, and commands that are signed but not canonical. */
#include <stdio.h>
#include <string.h>

#include <mbedtls/base64.h>
#include <mbedtls/ecp.h>
#include <mbedtls/md.h>

#include "ota_verify.h"

static int failures = 0;

#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                                \
        }                                                                              \
    } while (0)

/* xorshift64*: a deterministic byte source for test keys (never for production keys). */
static int test_rng(void *state, unsigned char *out, size_t len)
{
    unsigned long long *x = (unsigned long long *)state;
    size_t i;
    for (i = 0u; i < len; i++) {
        *x ^= *x >> 12;
        *x ^= *x << 25;
        *x ^= *x >> 27;
        out[i] = (unsigned char)((*x * 2685821657736338717ULL) >> 56);
    }
    return 0;
}

static unsigned long long rng_state = 0x9E3779B97F4A7C15ULL;

static void make_key(mbedtls_pk_context *signer, mbedtls_pk_context *verifier)
{
    unsigned char pem[512];
    mbedtls_pk_init(signer);
    mbedtls_pk_init(verifier);
    CHECK(mbedtls_pk_setup(signer, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY)) == 0);
    CHECK(mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(*signer), test_rng, &rng_state) == 0);
    CHECK(mbedtls_pk_write_pubkey_pem(signer, pem, sizeof pem) == 0);
    CHECK(ota_verify_load_key(verifier, pem, strlen((const char *)pem) + 1u) == OTA_VERIFY_OK);
}

/* {"cmd":<cmd>,"sig":"<base64 DER of the signature over cmd>"} into out; returns its length. */
static size_t sign(mbedtls_pk_context *signer, const char *cmd, char *out, size_t size)
{
    unsigned char hash[32];
    unsigned char sig[MBEDTLS_ECDSA_MAX_LEN];
    unsigned char b64[128];
    size_t sig_len = 0u;
    size_t b64_len = 0u;
    int n;
    CHECK(mbedtls_md(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), (const unsigned char *)cmd, strlen(cmd), hash) == 0);
    CHECK(mbedtls_pk_sign(signer, MBEDTLS_MD_SHA256, hash, sizeof hash, sig, &sig_len, test_rng, &rng_state) == 0);
    CHECK(mbedtls_base64_encode(b64, sizeof b64, &b64_len, sig, sig_len) == 0);
    n = snprintf(out, size, "{\"cmd\":%s,\"sig\":\"%.*s\"}", cmd, (int)b64_len, (const char *)b64);
    CHECK(n > 0 && (size_t)n < size);
    return (size_t)n;
}

static ota_verify_result_t check(mbedtls_pk_context *key, const char *msg, size_t len, const char *device,
                                 long long now, long long last_issued, ota_command_t *cmd)
{
    return ota_verify((const unsigned char *)msg, len, key, device, now, last_issued, cmd);
}

#define GOOD                                                                                       \
    "{\"device\":\"dev-7\",\"expires\":2000,\"issued\":1000,\"nonce\":\"ab12\",\"rollback_version\":" \
    "\"1.0.0\",\"rollout_id\":\"fw-1.1.0\",\"sha256\":\"00ff\",\"url\":\"https://u/a\\\"b\\\\c\\u0041\"," \
    "\"version\":\"1.1.0\"}"

static void test_good_command_and_fields(mbedtls_pk_context *signer, mbedtls_pk_context *key)
{
    char msg[1024];
    char value[OTA_VERIFY_MAX_VALUE + 1u];
    char tiny[4];
    long long number = 0;
    ota_command_t cmd;
    size_t len = sign(signer, GOOD, msg, sizeof msg);
    CHECK(check(key, msg, len, "dev-7", 1500, 999, &cmd) == OTA_VERIFY_OK);
    CHECK(cmd.issued == 1000 && cmd.expires == 2000 && cmd.cmd_len == strlen(GOOD));
    CHECK(ota_command_string(&cmd, "version", value, sizeof value) == 0 && strcmp(value, "1.1.0") == 0);
    CHECK(ota_command_string(&cmd, "url", value, sizeof value) == 0 && strcmp(value, "https://u/a\"b\\cA") == 0);
    CHECK(ota_command_string(&cmd, "version", tiny, sizeof tiny) == -1);
    CHECK(ota_command_string(&cmd, "issued", value, sizeof value) == -1);
    CHECK(ota_command_string(&cmd, "missing", value, sizeof value) == -1);
    CHECK(ota_command_int(&cmd, "expires", &number) == 0 && number == 2000);
    CHECK(ota_command_int(&cmd, "url", &number) == -1);
}

static void test_rejections(mbedtls_pk_context *signer, mbedtls_pk_context *key, mbedtls_pk_context *other_key)
{
    char msg[1024];
    ota_command_t cmd;
    size_t len = sign(signer, GOOD, msg, sizeof msg);
    size_t at = strlen("{\"cmd\":{\"device\":\"dev-7\",\"expires\":");

    CHECK(check(key, msg, len, "dev-7", 2000, 0, &cmd) == OTA_VERIFY_EXPIRED);
    CHECK(check(key, msg, len, "dev-8", 1500, 0, &cmd) == OTA_VERIFY_WRONG_DEVICE);
    CHECK(check(key, msg, len, "dev-7", 1500, 1000, &cmd) == OTA_VERIFY_REPLAYED);
    CHECK(check(other_key, msg, len, "dev-7", 1500, 0, &cmd) == OTA_VERIFY_BAD_SIGNATURE);
    msg[at] = '3'; /* expires 2000 -> 3000 */
    CHECK(check(key, msg, len, "dev-7", 1500, 0, &cmd) == OTA_VERIFY_BAD_SIGNATURE);
    msg[at] = '2';
    msg[len - 4u] = msg[len - 4u] == 'A' ? 'B' : 'A'; /* a signature character */
    CHECK(check(key, msg, len, "dev-7", 1500, 0, &cmd) != OTA_VERIFY_OK);
    CHECK(check(key, msg, 0u, "dev-7", 1500, 0, &cmd) == OTA_VERIFY_MALFORMED);
    CHECK(check(key, "{\"cmd\":{},\"sig\":\"\"}", 19u, "dev-7", 1500, 0, &cmd) == OTA_VERIFY_MALFORMED);
    CHECK(check(key, msg + 1, len - 1u, "dev-7", 1500, 0, &cmd) == OTA_VERIFY_MALFORMED);
}

static void test_fleet_wide(mbedtls_pk_context *signer, mbedtls_pk_context *key)
{
    char msg[512];
    ota_command_t cmd;
    size_t len = sign(signer, "{\"device\":\"*\",\"expires\":2000,\"issued\":1000,\"model_id\":42}", msg, sizeof msg);
    CHECK(check(key, msg, len, "any-device", 1500, 0, &cmd) == OTA_VERIFY_OK);
}

/* Signed by the right key, but not a canonical command: a device must not guess what was meant. */
static void test_signed_but_not_canonical(mbedtls_pk_context *signer, mbedtls_pk_context *key)
{
    static const char *const bad[] = {
        "{\"expires\":2000,\"device\":\"dev-7\",\"issued\":1000}",              /* keys out of order */
        "{\"device\":\"dev-7\",\"device\":\"dev-7\",\"expires\":2000,\"issued\":1000}", /* repeated key */
        "{\"device\":\"dev-7\", \"expires\":2000,\"issued\":1000}",             /* whitespace */
        "{\"device\":\"dev-7\",\"expires\":2000.5,\"issued\":1000}",            /* a float */
        "{\"device\":\"dev-7\",\"expires\":02000,\"issued\":1000}",             /* a leading zero */
        "{\"device\":\"dev-7\",\"expires\":2000,\"issued\":1000,\"x\":{}}",     /* nested */
        "{\"device\":\"dev-7\",\"expires\":2000,\"issued\":true}",              /* a boolean */
        "{\"device\":\"dev-7\",\"issued\":1000}",                               /* no expiry */
        "{\"device\":\"dev\\q\",\"expires\":2000,\"issued\":1000}",             /* a bad escape */
        "{\"device\":\"dev-7\",\"expires\":99999999999999999999,\"issued\":1}", /* overflow */
    };
    char msg[512];
    ota_command_t cmd;
    size_t k;
    for (k = 0u; k < sizeof bad / sizeof bad[0]; k++) {
        size_t len = sign(signer, bad[k], msg, sizeof msg);
        if (check(key, msg, len, "dev-7", 1500, 0, &cmd) != OTA_VERIFY_MALFORMED) {
            fprintf(stderr, "not refused as malformed: %s\n", bad[k]);
            failures++;
        }
    }
}

static void test_bad_key(void)
{
    mbedtls_pk_context key;
    static const unsigned char not_a_key[] = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
    mbedtls_pk_init(&key);
    CHECK(ota_verify_load_key(&key, not_a_key, sizeof not_a_key) == OTA_VERIFY_BAD_KEY);
    mbedtls_pk_free(&key);
    CHECK(strcmp(ota_verify_result_name(OTA_VERIFY_REPLAYED), "replayed") == 0);
}

int main(void)
{
    mbedtls_pk_context signer;
    mbedtls_pk_context key;
    mbedtls_pk_context other_signer;
    mbedtls_pk_context other_key;
    make_key(&signer, &key);
    make_key(&other_signer, &other_key);
    test_good_command_and_fields(&signer, &key);
    test_rejections(&signer, &key, &other_key);
    test_fleet_wide(&signer, &key);
    test_signed_but_not_canonical(&signer, &key);
    test_bad_key();
    mbedtls_pk_free(&signer);
    mbedtls_pk_free(&key);
    mbedtls_pk_free(&other_signer);
    mbedtls_pk_free(&other_key);
    if (failures != 0) {
        fprintf(stderr, "%d checks failed\n", failures);
        return 1;
    }
    puts("ota_verify: all tests passed");
    return 0;
}
