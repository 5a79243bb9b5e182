/* fw_snippet.h: pack a short raw sensor recording (a "snippet") for fleetwatch's data loop.
 *
 * Wire format v1 (docs/wire-format.md, "Snippets"): a 20-byte little-endian header, count x channels
 * IEEE-754 float32 samples, little-endian, channels interleaved (x0 y0 z0 x1 y1 z1 ...), then the
 * CRC-16/CCITT-FALSE of everything before it (fwt_crc16, the frames' CRC).
 *
 *   offset size type  field
 *   0      1    u8    magic        0xFC
 *   1      1    u8    version      1
 *   2      1    u8    channels     1..16
 *   3      1    u8    sample_type  1 = float32
 *   4      4    f32   interval_ms  time between two samples, > 0 and <= 3,600,000 (one hour)
 *   8      4    u32   start_time   Unix seconds of the first sample (0: the device has no clock)
 *   12     4    u32   model_id     CRC-32 of the deployed model blob (as in frames)
 *   16     1    u8    reason       why it was captured (FWS_REASON_*)
 *   17     1    u8    flags        reserved, 0
 *   18     2    u16   count        samples per channel, 1..65535
 *   20     4*channels*count        samples
 *   ...    2    u16   crc
 *
 * C99, no malloc, no libm. Two ways to pack:
 *   - fws_pack copies samples from the caller's array into the caller's output buffer;
 *   - fws_pack_in_place packs samples the device already recorded (native floats) at
 *     out + FWS_HEADER_LEN, so a device needs one buffer of FWS_LEN(channels, count) bytes, no second copy.
 */
#ifndef FW_SNIPPET_H
#define FW_SNIPPET_H

#include <stddef.h>
#include <stdint.h>

#define FWS_MAGIC 0xFCu
#define FWS_VERSION 1u
#define FWS_HEADER_LEN 20u
#define FWS_CRC_LEN 2u
#define FWS_MAX_CHANNELS 16u
/* The largest interval_ms the server accepts (one hour; fleetwatch.frames.snippet.MAX_INTERVAL_MS). */
#define FWS_MAX_INTERVAL_MS 3600000.0f
#define FWS_SAMPLE_FLOAT32 1u
/* Bytes on the wire of a snippet of count samples of channels channels. */
#define FWS_LEN(channels, count) (FWS_HEADER_LEN + 4u * (size_t)(channels) * (size_t)(count) + FWS_CRC_LEN)

/* Why the snippet was captured (the server names them: unspecified, anomaly, ...). */
#define FWS_REASON_UNSPECIFIED 0u
#define FWS_REASON_ANOMALY 1u       /* the model flagged an anomaly */
#define FWS_REASON_LOW_CONFIDENCE 2u /* top-1 confidence under the device's floor */
#define FWS_REASON_REQUESTED 3u     /* the server asked (fleet/<device>/cmd/snippet or Notehub env var) */
#define FWS_REASON_PERIODIC 4u      /* a routine random sample */
#define FWS_REASON_MANUAL 5u        /* a button or a debug console */

typedef struct {
    uint8_t channels;    /* 1..FWS_MAX_CHANNELS */
    float interval_ms;   /* > 0 and <= FWS_MAX_INTERVAL_MS */
    uint32_t start_time; /* Unix seconds, 0 when the device has no clock */
    uint32_t model_id;
    uint8_t reason; /* FWS_REASON_* */
} fws_info_t;

/* Header + samples (count rows of info->channels floats, interleaved) + CRC into out. Returns
 * FWS_LEN(channels, count), or 0 (nothing written) when a pointer is NULL, channels is 0 or over
 * FWS_MAX_CHANNELS, count is 0, interval_ms is not in (0, FWS_MAX_INTERVAL_MS], or buf_len is too small. */
size_t fws_pack(const fws_info_t *info, const float *samples, uint16_t count, uint8_t *out, size_t buf_len);

/* The same, for samples already stored as native floats at out + FWS_HEADER_LEN (any alignment): they
 * are rewritten little-endian in place (a no-op on little-endian CPUs), then the header and CRC are
 * written. Returns as fws_pack. */
size_t fws_pack_in_place(const fws_info_t *info, uint16_t count, uint8_t *out, size_t buf_len);

#endif /* FW_SNIPPET_H */
