/* fw_aggregator.c: one window of inference health in fixed state (see fw_telemetry.h for every field's
 * definition, the latency error bound and the saturation rules). */
#include <string.h>

#include "fw_telemetry.h"

#define FLAG_TIME_SYNCED ((uint8_t)FW_SCHEMA_TINYML_HEALTH_FLAGS_TIME_SYNCED)
#define FLAG_SATURATED ((uint8_t)FW_SCHEMA_TINYML_HEALTH_FLAGS_SATURATED)
#define FLAG_LOW_BATTERY ((uint8_t)FW_SCHEMA_TINYML_HEALTH_FLAGS_LOW_BATTERY)
#define FLAG_REBOOTED ((uint8_t)FW_SCHEMA_TINYML_HEALTH_FLAGS_REBOOTED)

static const float conf_edges[FWT_CONF_BINS + 1u] = FW_SCHEMA_TINYML_HEALTH_CONF_EDGES;

/* Empty the window; keep identity, threshold and seq. */
static void reset_window(fwt_aggregator_t *agg)
{
    uint32_t fw_version = agg->fw_version;
    uint32_t model_id = agg->model_id;
    uint16_t seq = agg->seq;
    uint16_t low_battery_mv = agg->low_battery_mv;

    memset(agg, 0, sizeof *agg);
    agg->fw_version = fw_version;
    agg->model_id = model_id;
    agg->seq = seq;
    agg->low_battery_mv = low_battery_mv;
    agg->latency_min = UINT16_MAX;
}

void fwt_init(fwt_aggregator_t *agg, uint32_t fw_version, uint32_t model_id, uint16_t low_battery_mv)
{
    agg->fw_version = fw_version;
    agg->model_id = model_id;
    agg->seq = 0;
    agg->low_battery_mv = low_battery_mv;
    reset_window(agg);
}

/* Latency bucket of u (0.1 ms units): shift = how far u is above the single-value range, in octaves;
 * bucket = shift * SUB + (u >> shift). Buckets 0 .. 2*SUB-1 hold one value each. */
static unsigned latency_bucket(uint16_t u)
{
    unsigned shift = 0;

    while (((unsigned)u >> shift) >= 2u * FWT_LAT_SUB) {
        shift++;
    }
    return shift * FWT_LAT_SUB + ((unsigned)u >> shift);
}

/* The value reported for a bucket: the middle of its integer range (lower middle for an even width),
 * clamped to the window's smallest and largest latency. */
static uint16_t bucket_value(const fwt_aggregator_t *agg, unsigned bucket)
{
    uint32_t lo = bucket;
    uint32_t width = 1;
    uint32_t mid;

    if (bucket >= 2u * FWT_LAT_SUB) {
        unsigned shift = bucket / FWT_LAT_SUB - 1u;
        lo = (uint32_t)(bucket - shift * FWT_LAT_SUB) << shift;
        width = (uint32_t)1 << shift;
    }
    mid = lo + (width - 1u) / 2u;
    if (mid < agg->latency_min) {
        mid = agg->latency_min;
    }
    if (mid > agg->latency_max) {
        mid = agg->latency_max;
    }
    return (uint16_t)mid;
}

/* Nearest-rank percentiles: the k-th smallest latency with k = ceil(p * n). */
static void latency_percentiles(const fwt_aggregator_t *agg, uint16_t *p50, uint16_t *p95)
{
    uint32_t n = agg->inference_count;
    uint32_t k50 = (n + 1u) / 2u;
    uint32_t k95 = (95u * n + 99u) / 100u;
    uint32_t seen = 0;
    unsigned bucket;

    *p50 = 0;
    *p95 = 0;
    if (n == 0) {
        return;
    }
    for (bucket = 0; bucket < FWT_LAT_BUCKETS; bucket++) {
        uint32_t before = seen;
        seen += agg->latency_hist[bucket];
        if (before < k50 && seen >= k50) {
            *p50 = bucket_value(agg, bucket);
        }
        if (seen >= k95) {
            *p95 = bucket_value(agg, bucket);
            return;
        }
    }
}

/* Fold rows of FWT_CHANNELS values into the window: Welford's update over this call's rows, then Chan et
 * al.'s merge of (n_b, mean_b, m2_b) into the window's (n_a, mean_a, m2_a). Merging once per call keeps
 * the float32 rounding of the window's mean from growing with every sample. */
static void fold_input(fwt_aggregator_t *agg, const float *input, uint16_t samples)
{
    float mean_b[FWT_CHANNELS] = {0};
    float m2_b[FWT_CHANNELS] = {0};
    float n_a;
    float n_b;
    float weight;
    unsigned row;
    unsigned c;

    for (row = 0; row < samples; row++) {
        float inv_n = 1.0f / (float)(row + 1u);
        for (c = 0; c < FWT_CHANNELS; c++) {
            float x = input[row * FWT_CHANNELS + c];
            float delta = x - mean_b[c];
            mean_b[c] += delta * inv_n;
            m2_b[c] += delta * (x - mean_b[c]);
        }
    }
    n_a = (float)agg->input_n;
    n_b = (float)samples;
    weight = n_b / (n_a + n_b);
    for (c = 0; c < FWT_CHANNELS; c++) {
        float delta = mean_b[c] - agg->input_mean[c];
        agg->input_mean[c] += delta * weight;
        agg->input_m2[c] += m2_b[c] + delta * delta * n_a * weight;
    }
    agg->input_n += samples;
}

fwt_status_t fwt_record_inference(fwt_aggregator_t *agg, uint32_t latency_us, float top1_confidence,
                                  uint8_t predicted_class, bool is_anomaly, const float *input,
                                  uint16_t input_samples)
{
    uint32_t latency;
    uint16_t u;
    unsigned bin = 0;

    if (predicted_class >= FWT_CLASSES || top1_confidence != top1_confidence ||
        (input == NULL && input_samples > 0u)) {
        return FWT_EINVAL;
    }
    if (agg->inference_count == UINT16_MAX) {
        agg->flags |= FLAG_SATURATED;
        return FWT_SATURATED;
    }
    if (++agg->inference_count == UINT16_MAX) {
        agg->flags |= FLAG_SATURATED;
    }
    if (is_anomaly) {
        agg->anomaly_count++;
    }
    agg->class_counts[predicted_class]++;
    while (bin + 1u < FWT_CONF_BINS && top1_confidence >= conf_edges[bin + 1u]) {
        bin++;
    }
    agg->conf_hist[bin]++;

    latency = latency_us / 100u + (latency_us % 100u >= 50u ? 1u : 0u);
    if (latency >= UINT16_MAX) {
        latency = UINT16_MAX;
        agg->flags |= FLAG_SATURATED;
    }
    u = (uint16_t)latency;
    agg->latency_hist[latency_bucket(u)]++;
    if (u < agg->latency_min) {
        agg->latency_min = u;
    }
    if (u > agg->latency_max) {
        agg->latency_max = u;
    }

    if (input_samples > 0u) {
        fold_input(agg, input, input_samples);
    }
    return FWT_OK;
}

void fwt_sample_system(fwt_aggregator_t *agg, uint8_t mem_peak_pct, uint16_t battery_mv, bool rebooted)
{
    if (mem_peak_pct > 100u) {
        mem_peak_pct = 100u;
        agg->flags |= FLAG_SATURATED;
    }
    if (mem_peak_pct > agg->mem_peak_pct) {
        agg->mem_peak_pct = mem_peak_pct;
    }
    if (battery_mv != 0u && (agg->battery_mv == 0u || battery_mv < agg->battery_mv)) {
        agg->battery_mv = battery_mv;
    }
    if (rebooted) {
        agg->flags |= FLAG_REBOOTED;
    }
}

size_t fwt_close_window(fwt_aggregator_t *agg, uint32_t window_start, uint16_t window_s, uint8_t *out,
                        size_t buf_len)
{
    fwt_envelope_t env;
    fw_schema_tinyml_health_t body;
    bool saturated = false;
    size_t len;
    unsigned c;

    if (out == NULL || buf_len < FWT_FRAME_LEN || window_s == 0u) {
        return 0;
    }
    env.seq = agg->seq;
    env.window_start = window_start;
    env.window_s = window_s;
    env.fw_version = agg->fw_version;
    env.model_id = agg->model_id;

    memset(&body, 0, sizeof body);
    body.inference_count = agg->inference_count;
    body.anomaly_count = agg->anomaly_count;
    latency_percentiles(agg, &body.latency_p50, &body.latency_p95);
    body.mem_peak_pct = agg->mem_peak_pct;
    body.battery_mv = agg->battery_mv;
    if (agg->input_n > 0u) {
        float n = (float)agg->input_n;
        for (c = 0; c < FWT_CHANNELS; c++) {
            body.input_mean[c] =
                fwt_scale_i16(agg->input_mean[c], FW_SCHEMA_TINYML_HEALTH_INPUT_MEAN_SCALE_INV, &saturated);
            body.input_var[c] =
                fwt_scale_u16(agg->input_m2[c] / n, FW_SCHEMA_TINYML_HEALTH_INPUT_VAR_SCALE_INV, &saturated);
        }
    }
    memcpy(body.conf_hist, agg->conf_hist, sizeof body.conf_hist);
    memcpy(body.class_counts, agg->class_counts, sizeof body.class_counts);
    body.flags = agg->flags;
    if (saturated) {
        body.flags |= FLAG_SATURATED;
    }
    if (window_start != 0u) {
        body.flags |= FLAG_TIME_SYNCED;
    }
    if (agg->battery_mv != 0u && agg->battery_mv < agg->low_battery_mv) {
        body.flags |= FLAG_LOW_BATTERY;
    }

    len = fwt_pack_frame(&env, &body, out, buf_len);
    agg->seq++;
    reset_window(agg);
    return len;
}
