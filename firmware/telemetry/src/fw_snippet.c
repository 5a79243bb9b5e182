/* fw_snippet.c: snippet header, little-endian float32 samples and CRC-16 (see fw_snippet.h). */
#include "fw_snippet.h"

#include <string.h>

#include "fw_le.h"
#include "fw_telemetry.h"

/* Compile-time check (C99 has no _Static_assert): samples are sent as 4-byte IEEE-754 floats. */
typedef char fws_float_size_check[(sizeof(float) == 4u && sizeof(uint32_t) == 4u) ? 1 : -1];

static int fws_valid(const fws_info_t *info, uint16_t count, const uint8_t *out, size_t buf_len)
{
    return info != NULL && out != NULL && info->channels >= 1u && info->channels <= FWS_MAX_CHANNELS &&
           count >= 1u && info->interval_ms > 0.0f && info->interval_ms <= FWS_MAX_INTERVAL_MS &&
           buf_len >= FWS_LEN(info->channels, count);
}

size_t fws_pack_in_place(const fws_info_t *info, uint16_t count, uint8_t *out, size_t buf_len)
{
    size_t values;
    size_t i;
    size_t len;
    float value;
    uint32_t bits;

    if (!fws_valid(info, count, out, buf_len)) {
        return 0;
    }
    values = (size_t)info->channels * count;
    for (i = 0; i < values; i++) {
        memcpy(&value, out + FWS_HEADER_LEN + 4u * i, sizeof value);
        memcpy(&bits, &value, sizeof bits);
        fw_put_u32(out + FWS_HEADER_LEN + 4u * i, bits);
    }
    memcpy(&bits, &info->interval_ms, sizeof bits);
    out[0] = FWS_MAGIC;
    out[1] = FWS_VERSION;
    out[2] = info->channels;
    out[3] = FWS_SAMPLE_FLOAT32;
    fw_put_u32(out + 4, bits);
    fw_put_u32(out + 8, info->start_time);
    fw_put_u32(out + 12, info->model_id);
    out[16] = info->reason;
    out[17] = 0u;
    fw_put_u16(out + 18, count);
    len = FWS_LEN(info->channels, count);
    fw_put_u16(out + len - FWS_CRC_LEN, fwt_crc16(out, len - FWS_CRC_LEN));
    return len;
}

size_t fws_pack(const fws_info_t *info, const float *samples, uint16_t count, uint8_t *out, size_t buf_len)
{
    if (samples == NULL || !fws_valid(info, count, out, buf_len)) {
        return 0;
    }
    memmove(out + FWS_HEADER_LEN, samples, 4u * (size_t)info->channels * count);
    return fws_pack_in_place(info, count, out, buf_len);
}
