/* ota_verify.h: device-side check of a signed OTA command from fleetwatch (C99, mbedTLS, no malloc).
 *
 * A command arrives as one line of ASCII JSON, exactly
 *
 *     {"cmd":<C>,"sig":"<S>"}
 *
 * where <C> is the canonical command (a flat JSON object, keys sorted, no whitespace, values only
 * strings and integers) and <S> is base64 of the ECDSA P-256 / SHA-256 signature over the bytes <C>,
 * in ASN.1 DER. The signature is checked over the bytes as received: nothing is re-serialised.
 *
 * ota_verify() checks, in this order: the envelope's form, the signature, the command's form, that it
 * names this device (or "*", a fleet-wide command), that it has not expired (now < expires), and that
 * it is newer than the last command the device accepted (issued > last_issued). The device persists
 * `issued` of each command it accepts and passes it back as last_issued, so an old command replayed by
 * someone with access to the transport is refused.
 */
#ifndef OTA_VERIFY_H
#define OTA_VERIFY_H

#include <stddef.h>

#include <mbedtls/pk.h>

/* Longest command value ota_command_string() copies out (plus the terminating NUL). */
#define OTA_VERIFY_MAX_VALUE 255u
/* Largest message accepted (the command is small: ~350 bytes). */
#define OTA_VERIFY_MAX_MESSAGE 2048u

typedef enum {
    OTA_VERIFY_OK = 0,
    OTA_VERIFY_MALFORMED = 1,     /* not {"cmd":{...},"sig":"..."}, or the command is not canonical */
    OTA_VERIFY_BAD_SIGNATURE = 2, /* the signature does not verify with the key (tampered, other key) */
    OTA_VERIFY_WRONG_DEVICE = 3,  /* signed for another device */
    OTA_VERIFY_EXPIRED = 4,       /* now >= expires */
    OTA_VERIFY_REPLAYED = 5,      /* issued <= last_issued */
    OTA_VERIFY_BAD_KEY = 6        /* the key is not an EC P-256 public key */
} ota_verify_result_t;

/* A verified command: where its canonical bytes are in the message, and the fields every check uses. */
typedef struct {
    const char *cmd;
    size_t cmd_len;
    long long issued;
    long long expires;
} ota_command_t;

/* Parse a PEM (NUL-terminated, len includes the NUL) or DER public key into `key` and check that it is
 * an EC key on a 256-bit curve. Returns OTA_VERIFY_OK or OTA_VERIFY_BAD_KEY. */
ota_verify_result_t ota_verify_load_key(mbedtls_pk_context *key, const unsigned char *buf, size_t len);

/* Verify `msg` (len bytes, not NUL-terminated) for `device_id` at Unix time `now`. On OTA_VERIFY_OK,
 * `out` describes the command; on any other result, the command must be ignored. */
ota_verify_result_t ota_verify(const unsigned char *msg, size_t len, mbedtls_pk_context *key,
                               const char *device_id, long long now, long long last_issued,
                               ota_command_t *out);

/* Copy the string value of `name` (unescaped) into `buf`. Returns 0, or -1 when the command has no
 * such string or it does not fit (`size` includes the NUL). */
int ota_command_string(const ota_command_t *cmd, const char *name, char *buf, size_t size);

/* The integer value of `name`. Returns 0, or -1 when the command has no such integer. */
int ota_command_int(const ota_command_t *cmd, const char *name, long long *value);

/* "ok", "malformed", "bad_signature", "wrong_device", "expired", "replayed", "bad_key". */
const char *ota_verify_result_name(ota_verify_result_t result);

#endif /* OTA_VERIFY_H */
