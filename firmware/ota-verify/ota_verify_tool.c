/* ota_verify_tool: check one signed command read from stdin, as a device would.
 *
 *   ota_verify_tool PUBLIC_KEY.pem DEVICE_ID NOW LAST_ISSUED < message
 *
 * Prints the result name ("ok", "bad_signature", ...) and, when ok, the command's fields as name=value
 * lines. The exit status is the ota_verify_result_t value (0 = ok; 64 = usage or I/O error).
 */
#include <stdio.h>
#include <stdlib.h>

#include "ota_verify.h"

#define USAGE_ERROR 64

static const char *const STRINGS[] = {"device", "version", "rollback_version", "url", "sha256", "rollout_id", "nonce"};
static const char *const INTEGERS[] = {"issued", "expires", "model_id", "rollback_model_id"};

static int read_all(FILE *file, unsigned char *buf, size_t size, size_t *len)
{
    *len = fread(buf, 1u, size, file);
    return ferror(file) || *len == size ? -1 : 0; /* a full buffer means the input is too long */
}

int main(int argc, char **argv)
{
    static unsigned char key_pem[8192];
    static unsigned char message[OTA_VERIFY_MAX_MESSAGE + 1u];
    size_t key_len;
    size_t message_len;
    FILE *key_file;
    mbedtls_pk_context key;
    ota_command_t cmd;
    ota_verify_result_t result;
    size_t k;

    if (argc != 5) {
        fprintf(stderr, "usage: %s PUBLIC_KEY.pem DEVICE_ID NOW LAST_ISSUED < message\n", argv[0]);
        return USAGE_ERROR;
    }
    key_file = fopen(argv[1], "rb");
    if (key_file == NULL || read_all(key_file, key_pem, sizeof key_pem - 1u, &key_len) != 0) {
        fprintf(stderr, "cannot read the key file %s\n", argv[1]);
        return USAGE_ERROR;
    }
    fclose(key_file);
    key_pem[key_len] = '\0';
    if (read_all(stdin, message, sizeof message, &message_len) != 0) {
        puts(ota_verify_result_name(OTA_VERIFY_MALFORMED));
        return OTA_VERIFY_MALFORMED;
    }
    mbedtls_pk_init(&key);
    result = ota_verify_load_key(&key, key_pem, key_len + 1u);
    if (result == OTA_VERIFY_OK) {
        result = ota_verify(message, message_len, &key, argv[2], strtoll(argv[3], NULL, 10),
                            strtoll(argv[4], NULL, 10), &cmd);
    }
    puts(ota_verify_result_name(result));
    if (result == OTA_VERIFY_OK) {
        char value[OTA_VERIFY_MAX_VALUE + 1u];
        long long number;
        for (k = 0u; k < sizeof STRINGS / sizeof STRINGS[0]; k++) {
            if (ota_command_string(&cmd, STRINGS[k], value, sizeof value) == 0) {
                printf("%s=%s\n", STRINGS[k], value);
            }
        }
        for (k = 0u; k < sizeof INTEGERS / sizeof INTEGERS[0]; k++) {
            if (ota_command_int(&cmd, INTEGERS[k], &number) == 0) {
                printf("%s=%lld\n", INTEGERS[k], number);
            }
        }
    }
    mbedtls_pk_free(&key);
    return (int)result;
}
