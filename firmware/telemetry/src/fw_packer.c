/* fw_packer.c: envelope + body + CRC-16 with explicit little-endian byte stores at the offsets of the
 * generated schema header, and the float -> wire integer conversion (round half away from zero). */
#include "fw_telemetry.h"
#include "fw_le.h"

#define BODY(field) (FWT_ENVELOPE_LEN + FW_SCHEMA_TINYML_HEALTH_##field##_OFFSET)

static void put_u16_array(uint8_t *p, const uint16_t *v, unsigned count)
{
    unsigned i;

    for (i = 0; i < count; i++) {
        fw_put_u16(p + 2u * i, v[i]);
    }
}

size_t fwt_pack_frame(const fwt_envelope_t *env, const fw_schema_tinyml_health_t *body, uint8_t *out,
                      size_t buf_len)
{
    unsigned i;

    if (out == NULL || buf_len < FWT_FRAME_LEN) {
        return 0;
    }
    out[0] = FWT_MAGIC;
    out[1] = FWT_ENVELOPE_VERSION;
    out[2] = FW_SCHEMA_TINYML_HEALTH_ID;
    out[3] = FW_SCHEMA_TINYML_HEALTH_BODY_LEN;
    fw_put_u16(out + 4, env->seq);
    fw_put_u32(out + 6, env->window_start);
    fw_put_u16(out + 10, env->window_s);
    fw_put_u32(out + 12, env->fw_version);
    fw_put_u32(out + 16, env->model_id);

    fw_put_u16(out + BODY(INFERENCE_COUNT), body->inference_count);
    fw_put_u16(out + BODY(ANOMALY_COUNT), body->anomaly_count);
    fw_put_u16(out + BODY(LATENCY_P50), body->latency_p50);
    fw_put_u16(out + BODY(LATENCY_P95), body->latency_p95);
    out[BODY(MEM_PEAK_PCT)] = body->mem_peak_pct;
    out[BODY(FLAGS)] = body->flags;
    fw_put_u16(out + BODY(BATTERY_MV), body->battery_mv);
    for (i = 0; i < FW_SCHEMA_TINYML_HEALTH_INPUT_MEAN_COUNT; i++) {
        /* int16 -> uint16 is defined (modulo 2^16): the two's complement bytes */
        fw_put_u16(out + BODY(INPUT_MEAN) + 2u * i, (uint16_t)body->input_mean[i]);
    }
    put_u16_array(out + BODY(INPUT_VAR), body->input_var, FW_SCHEMA_TINYML_HEALTH_INPUT_VAR_COUNT);
    put_u16_array(out + BODY(CONF_HIST), body->conf_hist, FW_SCHEMA_TINYML_HEALTH_CONF_HIST_COUNT);
    put_u16_array(out + BODY(CLASS_COUNTS), body->class_counts, FW_SCHEMA_TINYML_HEALTH_CLASS_COUNTS_COUNT);

    fw_put_u16(out + FWT_ENVELOPE_LEN + FW_SCHEMA_TINYML_HEALTH_BODY_LEN,
            fwt_crc16(out, FWT_ENVELOPE_LEN + FW_SCHEMA_TINYML_HEALTH_BODY_LEN));
    return FWT_FRAME_LEN;
}

/* x rounded half away from zero; |x| < 2^23 so that the truncation and the fraction are exact. */
static int32_t round_half_away(float x)
{
    int32_t t = (int32_t)x;
    float frac = x - (float)t;

    if (frac >= 0.5f) {
        t++;
    } else if (frac <= -0.5f) {
        t--;
    }
    return t;
}

/* round(value * scale_inv) clamped to lo..hi. A scaled value at or below lo_limit becomes lo, one that
 * rounds to hi or above becomes hi; both, and NaN (sent as 0), set *saturated. Comparing before converting
 * keeps the float -> int conversion defined. */
static int32_t scale_clamped(float value, float scale_inv, int32_t lo, float lo_limit, int32_t hi, bool *saturated)
{
    float x = value * scale_inv;

    if (x != x) {
        *saturated = true;
        return 0;
    }
    if (x <= lo_limit) {
        *saturated = true;
        return lo;
    }
    if (x >= (float)hi - 0.5f) {
        *saturated = true;
        return hi;
    }
    return round_half_away(x);
}

int16_t fwt_scale_i16(float value, float scale_inv, bool *saturated)
{
    /* -32767.5 rounds (half away from zero) to -32768, the limit */
    return (int16_t)scale_clamped(value, scale_inv, INT16_MIN, -32767.5f, INT16_MAX, saturated);
}

uint16_t fwt_scale_u16(float value, float scale_inv, bool *saturated)
{
    /* -0.5 rounds to -1: a negative value clipped to 0; 0 itself is no limit for a u16 statistic */
    return (uint16_t)scale_clamped(value, scale_inv, 0, -0.5f, UINT16_MAX, saturated);
}
