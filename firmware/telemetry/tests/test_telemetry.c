/* Host unit tests of the telemetry library: CRC, packer, rounding, aggregator, latency error bound.
 * Prints one line per failure and a closing "N passed, M failed"; exits 1 when anything failed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fw_snippet.h"
#include "fw_telemetry.h"

static int passed;
static int failed;

#define CHECK(cond) check((cond), #cond, __LINE__)
#define CHECK_EQ(actual, expected) check_eq((long)(actual), (long)(expected), #actual, __LINE__)

static void check(int ok, const char *what, int line)
{
    if (ok) {
        passed++;
    } else {
        failed++;
        printf("FAIL line %d: %s\n", line, what);
    }
}

static void check_eq(long actual, long expected, const char *what, int line)
{
    if (actual == expected) {
        passed++;
    } else {
        failed++;
        printf("FAIL line %d: %s == %ld, expected %ld\n", line, what, actual, expected);
    }
}

static uint16_t get_u16(const uint8_t *frame, unsigned offset)
{
    return (uint16_t)(frame[offset] | (frame[offset + 1u] << 8));
}

static uint32_t get_u32(const uint8_t *frame, unsigned offset)
{
    return (uint32_t)frame[offset] | ((uint32_t)frame[offset + 1u] << 8) | ((uint32_t)frame[offset + 2u] << 16) |
           ((uint32_t)frame[offset + 3u] << 24);
}

#define FIELD(name) (FWT_ENVELOPE_LEN + FW_SCHEMA_TINYML_HEALTH_##name##_OFFSET)
#define BODY_U16(frame, name, i) get_u16((frame), FIELD(name) + 2u * (unsigned)(i))

/* A deterministic generator (xorshift32) so every run tests the same numbers. */
static uint32_t rng_state = 2463534242u;

static uint32_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

static double rng_unit(void)
{
    return (double)(rng() >> 8) / 16777216.0;
}

static size_t close_ok(fwt_aggregator_t *agg, uint32_t window_start, uint8_t *frame)
{
    size_t len = fwt_close_window(agg, window_start, 3600, frame, FWT_FRAME_LEN);
    CHECK_EQ(len, FWT_FRAME_LEN);
    CHECK_EQ(get_u16(frame, FWT_FRAME_LEN - FWT_CRC_LEN), fwt_crc16(frame, FWT_FRAME_LEN - FWT_CRC_LEN));
    return len;
}

static void test_crc(void)
{
    const uint8_t check_string[] = "123456789";

    CHECK_EQ(fwt_crc16(check_string, 9), 0x29B1);
    CHECK_EQ(fwt_crc16(check_string, 0), 0xFFFF);
}

/* golden vector valid-1 of shared/golden/frames-v1.jsonl */
static void test_pack_known_frame(void)
{
    static const char expected_hex[] =
        "fb0101340100a06afd6a100ed532bdf0787a14fc6401a000060110011001fee2a3c1564a65649a0c3c8a452e02000600"
        "080008000a0010001400350054009500f3002b0028001e000b1e";
    static const uint16_t conf[] = {2, 6, 8, 8, 10, 16, 20, 53, 84, 149};
    static const uint16_t classes[] = {243, 43, 40, 30};
    fwt_envelope_t env = {1, 1794992800u, 3600, 0, 4229200504u};
    fw_schema_tinyml_health_t body;
    uint8_t frame[FWT_FRAME_LEN + 4];
    char hex[2 * FWT_FRAME_LEN + 1];
    bool saturated = false;
    unsigned i;

    env.fw_version = FWT_FW_VERSION(240, 189, 13013);
    memset(&body, 0, sizeof body);
    body.inference_count = 356;
    body.anomaly_count = 160;
    body.latency_p50 = fwt_scale_u16(26.2f, FW_SCHEMA_TINYML_HEALTH_LATENCY_P50_SCALE_INV, &saturated);
    body.latency_p95 = fwt_scale_u16(27.2f, FW_SCHEMA_TINYML_HEALTH_LATENCY_P95_SCALE_INV, &saturated);
    body.mem_peak_pct = 16;
    body.flags = 1;
    body.battery_mv = 58110;
    body.input_mean[0] = fwt_scale_i16(-15.965f, FW_SCHEMA_TINYML_HEALTH_INPUT_MEAN_SCALE_INV, &saturated);
    body.input_mean[1] = fwt_scale_i16(19.03f, FW_SCHEMA_TINYML_HEALTH_INPUT_MEAN_SCALE_INV, &saturated);
    body.input_mean[2] = fwt_scale_i16(25.701f, FW_SCHEMA_TINYML_HEALTH_INPUT_MEAN_SCALE_INV, &saturated);
    body.input_var[0] = fwt_scale_u16(0.3226f, FW_SCHEMA_TINYML_HEALTH_INPUT_VAR_SCALE_INV, &saturated);
    body.input_var[1] = fwt_scale_u16(3.5388f, FW_SCHEMA_TINYML_HEALTH_INPUT_VAR_SCALE_INV, &saturated);
    body.input_var[2] = fwt_scale_u16(1.1845f, FW_SCHEMA_TINYML_HEALTH_INPUT_VAR_SCALE_INV, &saturated);
    memcpy(body.conf_hist, conf, sizeof conf);
    memcpy(body.class_counts, classes, sizeof classes);
    CHECK(!saturated);

    memset(frame, 0xAA, sizeof frame);
    CHECK_EQ(fwt_pack_frame(&env, &body, frame, sizeof frame), FWT_FRAME_LEN);
    for (i = 0; i < FWT_FRAME_LEN; i++) {
        sprintf(hex + 2 * i, "%02x", frame[i]);
    }
    CHECK(strcmp(hex, expected_hex) == 0);
    CHECK_EQ(frame[FWT_FRAME_LEN], 0xAA);

    memset(frame, 0xAA, sizeof frame);
    CHECK_EQ(fwt_pack_frame(&env, &body, frame, FWT_FRAME_LEN - 1u), 0);
    CHECK_EQ(fwt_pack_frame(&env, &body, NULL, sizeof frame), 0);
    CHECK_EQ(frame[0], 0xAA);
}

static void test_scaling(void)
{
    bool sat = false;

    CHECK_EQ(fwt_scale_i16(2.5f, 1.0f, &sat), 3);
    CHECK_EQ(fwt_scale_i16(-2.5f, 1.0f, &sat), -3);
    CHECK_EQ(fwt_scale_i16(2.4999998f, 1.0f, &sat), 2);
    CHECK_EQ(fwt_scale_i16(0.49999997f, 1.0f, &sat), 0);
    CHECK_EQ(fwt_scale_i16(-0.49999997f, 1.0f, &sat), 0);
    CHECK_EQ(fwt_scale_i16(-20.466f, 1000.0f, &sat), -20466);
    CHECK_EQ(fwt_scale_u16(5.1093f, 10000.0f, &sat), 51093);
    CHECK_EQ(fwt_scale_i16(32766.4f, 1.0f, &sat), 32766);
    CHECK_EQ(fwt_scale_i16(-32767.4f, 1.0f, &sat), -32767);
    CHECK_EQ(fwt_scale_u16(-0.4f, 1.0f, &sat), 0);
    CHECK_EQ(fwt_scale_u16(65534.4f, 1.0f, &sat), 65534);
    CHECK(!sat);

    sat = false;
    CHECK_EQ(fwt_scale_i16(32766.5f, 1.0f, &sat), 32767);
    CHECK(sat);
    sat = false;
    CHECK_EQ(fwt_scale_i16(-32767.5f, 1.0f, &sat), -32768);
    CHECK(sat);
    sat = false;
    CHECK_EQ(fwt_scale_i16(1e30f, 1000.0f, &sat), 32767);
    CHECK(sat);
    sat = false;
    CHECK_EQ(fwt_scale_u16(-0.5f, 1.0f, &sat), 0);
    CHECK(sat);
    sat = false;
    CHECK_EQ(fwt_scale_u16(65534.5f, 1.0f, &sat), 65535);
    CHECK(sat);
    sat = false;
    CHECK_EQ(fwt_scale_u16((float)INFINITY, 1.0f, &sat), 65535);
    CHECK(sat);
    sat = false;
    CHECK_EQ(fwt_scale_u16((float)NAN, 1.0f, &sat), 0);
    CHECK(sat);
}

static void test_empty_window_and_envelope(void)
{
    fwt_aggregator_t agg;
    uint8_t frame[FWT_FRAME_LEN];
    unsigned i;

    fwt_init(&agg, FWT_FW_VERSION(1, 2, 300), 0xDEADBEEFu, 3300);
    close_ok(&agg, 1794996400u, frame);
    CHECK_EQ(frame[0], FWT_MAGIC);
    CHECK_EQ(frame[1], 1);
    CHECK_EQ(frame[2], FW_SCHEMA_TINYML_HEALTH_ID);
    CHECK_EQ(frame[3], FW_SCHEMA_TINYML_HEALTH_BODY_LEN);
    CHECK_EQ(get_u16(frame, 4), 0);
    CHECK_EQ(get_u32(frame, 6), 1794996400u);
    CHECK_EQ(get_u16(frame, 10), 3600);
    CHECK_EQ(get_u32(frame, 12), 0x0102012Cu);
    CHECK_EQ(get_u32(frame, 16), 0xDEADBEEFu);
    CHECK_EQ(frame[FIELD(FLAGS)], FW_SCHEMA_TINYML_HEALTH_FLAGS_TIME_SYNCED);
    for (i = 0; i < FW_SCHEMA_TINYML_HEALTH_BODY_LEN; i++) {
        if (FWT_ENVELOPE_LEN + i != FIELD(FLAGS)) {
            CHECK_EQ(frame[FWT_ENVELOPE_LEN + i], 0);
        }
    }

    close_ok(&agg, 0, frame);
    CHECK_EQ(get_u16(frame, 4), 1);
    CHECK_EQ(frame[FIELD(FLAGS)], 0);

    CHECK_EQ(fwt_close_window(&agg, 0, 0, frame, sizeof frame), 0);
    CHECK_EQ(fwt_close_window(&agg, 0, 60, frame, sizeof frame - 1u), 0);
    CHECK_EQ(fwt_close_window(&agg, 0, 60, NULL, sizeof frame), 0);
    close_ok(&agg, 0, frame);
    CHECK_EQ(get_u16(frame, 4), 2);
}

static void test_seq_wraps(void)
{
    fwt_aggregator_t agg;
    uint8_t frame[FWT_FRAME_LEN];
    unsigned long i;

    fwt_init(&agg, 0, 0, 0);
    for (i = 0; i < 65535ul; i++) {
        fwt_close_window(&agg, 0, 1, frame, sizeof frame);
    }
    CHECK_EQ(get_u16(frame, 4), 65534);
    fwt_close_window(&agg, 0, 1, frame, sizeof frame);
    CHECK_EQ(get_u16(frame, 4), 65535);
    fwt_close_window(&agg, 0, 1, frame, sizeof frame);
    CHECK_EQ(get_u16(frame, 4), 0);
}

static void test_counts_and_bins(void)
{
    static const float confidences[] = {0.0f, 0.0999f, 0.1f, 0.7f, 0.69999f, 0.95f, 1.0f, 1.5f, -0.2f, 0.5f};
    static const int expected_bins[] = {0, 0, 1, 7, 6, 9, 9, 9, 0, 5};
    fwt_aggregator_t agg;
    uint8_t frame[FWT_FRAME_LEN];
    uint16_t bins[FWT_CONF_BINS] = {0};
    unsigned i;

    fwt_init(&agg, 0, 0, 0);
    for (i = 0; i < sizeof confidences / sizeof confidences[0]; i++) {
        CHECK_EQ(fwt_record_inference(&agg, 1000, confidences[i], (uint8_t)(i % FWT_CLASSES), i < 3, NULL, 0),
                 FWT_OK);
        bins[expected_bins[i]]++;
    }
    CHECK_EQ(fwt_record_inference(&agg, 1000, 0.5f, FWT_CLASSES, false, NULL, 0), FWT_EINVAL);
    CHECK_EQ(fwt_record_inference(&agg, 1000, (float)NAN, 0, false, NULL, 0), FWT_EINVAL);
    CHECK_EQ(fwt_record_inference(&agg, 1000, 0.5f, 0, false, NULL, 2), FWT_EINVAL);
    close_ok(&agg, 1, frame);
    CHECK_EQ(BODY_U16(frame, INFERENCE_COUNT, 0), 10);
    CHECK_EQ(BODY_U16(frame, ANOMALY_COUNT, 0), 3);
    for (i = 0; i < FWT_CONF_BINS; i++) {
        CHECK_EQ(BODY_U16(frame, CONF_HIST, i), bins[i]);
    }
    CHECK_EQ(BODY_U16(frame, CLASS_COUNTS, 0), 3);
    CHECK_EQ(BODY_U16(frame, CLASS_COUNTS, 1), 3);
    CHECK_EQ(BODY_U16(frame, CLASS_COUNTS, 2), 2);
    CHECK_EQ(BODY_U16(frame, CLASS_COUNTS, 3), 2);
    CHECK_EQ(BODY_U16(frame, LATENCY_P50, 0), 10);
    CHECK_EQ(BODY_U16(frame, LATENCY_P95, 0), 10);
    CHECK_EQ(frame[FIELD(FLAGS)], FW_SCHEMA_TINYML_HEALTH_FLAGS_TIME_SYNCED);

    close_ok(&agg, 1, frame);
    CHECK_EQ(BODY_U16(frame, INFERENCE_COUNT, 0), 0);
    CHECK_EQ(BODY_U16(frame, CONF_HIST, 0), 0);
}

static void test_counter_saturation(void)
{
    fwt_aggregator_t agg;
    uint8_t frame[FWT_FRAME_LEN];
    uint32_t conf_sum = 0;
    uint32_t class_sum = 0;
    unsigned long i;

    fwt_init(&agg, 0, 0, 0);
    for (i = 0; i < 65534ul; i++) {
        fwt_record_inference(&agg, 2000, 0.9f, (uint8_t)(i % FWT_CLASSES), true, NULL, 0);
    }
    CHECK_EQ(agg.flags & FW_SCHEMA_TINYML_HEALTH_FLAGS_SATURATED, 0);
    CHECK_EQ(fwt_record_inference(&agg, 2000, 0.9f, 0, true, NULL, 0), FWT_OK);
    CHECK_EQ(fwt_record_inference(&agg, 2000, 0.9f, 0, true, NULL, 0), FWT_SATURATED);
    close_ok(&agg, 0, frame);
    CHECK_EQ(BODY_U16(frame, INFERENCE_COUNT, 0), 65535);
    CHECK_EQ(BODY_U16(frame, ANOMALY_COUNT, 0), 65535);
    for (i = 0; i < FWT_CONF_BINS; i++) {
        conf_sum += BODY_U16(frame, CONF_HIST, i);
    }
    for (i = 0; i < FWT_CLASSES; i++) {
        class_sum += BODY_U16(frame, CLASS_COUNTS, i);
    }
    CHECK_EQ(conf_sum, 65535);
    CHECK_EQ(class_sum, 65535);
    CHECK_EQ(frame[FIELD(FLAGS)], FW_SCHEMA_TINYML_HEALTH_FLAGS_SATURATED);

    close_ok(&agg, 0, frame);
    CHECK_EQ(frame[FIELD(FLAGS)], 0);
}

/* |reported - q| <= q / 2^(S+1), q = exact nearest-rank percentile of the latencies rounded to 0.1 ms. */
static int within_bound(uint16_t reported, uint16_t exact)
{
    long diff = labs((long)reported - (long)exact);
    return diff * (1L << (FWT_LAT_SUB_BITS + 1)) <= (long)exact;
}

static void test_latency_saturation_and_rounding(void)
{
    fwt_aggregator_t agg;
    uint8_t frame[FWT_FRAME_LEN];

    fwt_init(&agg, 0, 0, 0);
    fwt_record_inference(&agg, 149, 0.5f, 0, false, NULL, 0);
    fwt_record_inference(&agg, 150, 0.5f, 0, false, NULL, 0);
    close_ok(&agg, 0, frame);
    CHECK_EQ(BODY_U16(frame, LATENCY_P50, 0), 1);
    CHECK_EQ(BODY_U16(frame, LATENCY_P95, 0), 2);
    CHECK_EQ(frame[FIELD(FLAGS)], 0);

    fwt_record_inference(&agg, 6553449u, 0.5f, 0, false, NULL, 0);
    close_ok(&agg, 0, frame);
    CHECK_EQ(BODY_U16(frame, LATENCY_P95, 0), 65534);
    CHECK_EQ(frame[FIELD(FLAGS)], 0);

    fwt_record_inference(&agg, 1000, 0.5f, 0, false, NULL, 0);
    fwt_record_inference(&agg, 0xFFFFFFFFu, 0.5f, 0, false, NULL, 0);
    close_ok(&agg, 0, frame);
    CHECK_EQ(BODY_U16(frame, LATENCY_P50, 0), 10);
    CHECK(within_bound(BODY_U16(frame, LATENCY_P95, 0), 65535));
    CHECK_EQ(frame[FIELD(FLAGS)], FW_SCHEMA_TINYML_HEALTH_FLAGS_SATURATED);
}

static void test_system_samples(void)
{
    fwt_aggregator_t agg;
    uint8_t frame[FWT_FRAME_LEN];

    fwt_init(&agg, 0, 0, 3300);
    fwt_sample_system(&agg, 40, 3700, true);
    fwt_sample_system(&agg, 65, 3250, false);
    fwt_sample_system(&agg, 50, 0, false);
    fwt_sample_system(&agg, 20, 3600, false);
    close_ok(&agg, 0, frame);
    CHECK_EQ(frame[FIELD(MEM_PEAK_PCT)], 65);
    CHECK_EQ(BODY_U16(frame, BATTERY_MV, 0), 3250);
    CHECK_EQ(frame[FIELD(FLAGS)],
             FW_SCHEMA_TINYML_HEALTH_FLAGS_LOW_BATTERY | FW_SCHEMA_TINYML_HEALTH_FLAGS_REBOOTED);

    fwt_sample_system(&agg, 30, 3300, false);
    close_ok(&agg, 0, frame);
    CHECK_EQ(BODY_U16(frame, BATTERY_MV, 0), 3300);
    CHECK_EQ(frame[FIELD(FLAGS)], 0);

    close_ok(&agg, 0, frame);
    CHECK_EQ(BODY_U16(frame, BATTERY_MV, 0), 0);
    CHECK_EQ(frame[FIELD(MEM_PEAK_PCT)], 0);
    CHECK_EQ(frame[FIELD(FLAGS)], 0);

    fwt_sample_system(&agg, 250, 3000, false);
    close_ok(&agg, 0, frame);
    CHECK_EQ(frame[FIELD(MEM_PEAK_PCT)], 100);
    CHECK_EQ(frame[FIELD(FLAGS)],
             FW_SCHEMA_TINYML_HEALTH_FLAGS_SATURATED | FW_SCHEMA_TINYML_HEALTH_FLAGS_LOW_BATTERY);

    fwt_init(&agg, 0, 0, 0);
    fwt_sample_system(&agg, 10, 1, false);
    close_ok(&agg, 0, frame);
    CHECK_EQ(frame[FIELD(FLAGS)], 0);
}

/* The window's statistics against a double-precision two-pass reference, within one wire step. */
static void test_input_statistics(void)
{
    enum { CALLS = 400, ROWS = 64 };
    static float input[ROWS * FWT_CHANNELS];
    static const double offsets[FWT_CHANNELS] = {-20.0, 0.5, 9.81};
    static const double spreads[FWT_CHANNELS] = {3.0, 0.05, 1.5};
    double sum[FWT_CHANNELS] = {0};
    double sum_sq[FWT_CHANNELS] = {0};
    fwt_aggregator_t agg;
    uint8_t frame[FWT_FRAME_LEN];
    unsigned call;
    unsigned row;
    unsigned c;
    double n = 0;

    fwt_init(&agg, 0, 0, 0);
    for (call = 0; call < CALLS; call++) {
        unsigned rows = 1u + call % ROWS;
        for (row = 0; row < rows; row++) {
            for (c = 0; c < FWT_CHANNELS; c++) {
                float x = (float)(offsets[c] + spreads[c] * (rng_unit() * 2.0 - 1.0) + 0.001 * call);
                input[row * FWT_CHANNELS + c] = x;
                sum[c] += x;
            }
        }
        n += rows;
        CHECK_EQ(fwt_record_inference(&agg, 5000, 0.8f, 1, false, input, (uint16_t)rows), FWT_OK);
        for (row = 0; row < rows; row++) {
            for (c = 0; c < FWT_CHANNELS; c++) {
                sum_sq[c] += (double)input[row * FWT_CHANNELS + c] * input[row * FWT_CHANNELS + c];
            }
        }
    }
    close_ok(&agg, 0, frame);
    for (c = 0; c < FWT_CHANNELS; c++) {
        double mean = sum[c] / n;
        double var = sum_sq[c] / n - mean * mean;
        double got_mean = (int16_t)BODY_U16(frame, INPUT_MEAN, c) / 1000.0;
        double got_var = BODY_U16(frame, INPUT_VAR, c) / 10000.0;
        CHECK(fabs(got_mean - mean) <= 0.001);
        CHECK(fabs(got_var - var) <= 0.0001);
    }
    CHECK_EQ(frame[FIELD(FLAGS)], 0);
}

static void test_input_saturation(void)
{
    static const float big[FWT_CHANNELS * 2] = {40.0f, -40.0f, 0.0f, 40.0f, -40.0f, 10.0f};
    fwt_aggregator_t agg;
    uint8_t frame[FWT_FRAME_LEN];

    fwt_init(&agg, 0, 0, 0);
    fwt_record_inference(&agg, 100, 0.5f, 0, false, big, 2);
    close_ok(&agg, 0, frame);
    CHECK_EQ((int16_t)BODY_U16(frame, INPUT_MEAN, 0), 32767);
    CHECK_EQ((int16_t)BODY_U16(frame, INPUT_MEAN, 1), -32768);
    CHECK_EQ((int16_t)BODY_U16(frame, INPUT_MEAN, 2), 5000);
    CHECK_EQ(BODY_U16(frame, INPUT_VAR, 0), 0);
    CHECK_EQ(BODY_U16(frame, INPUT_VAR, 2), 65535);
    CHECK_EQ(frame[FIELD(FLAGS)], FW_SCHEMA_TINYML_HEALTH_FLAGS_SATURATED);
}

static int compare_u16(const void *a, const void *b)
{
    return (int)*(const uint16_t *)a - (int)*(const uint16_t *)b;
}

static uint32_t draw_latency(unsigned shape, uint32_t base)
{
    switch (shape) {
    case 0: /* uniform over a decade */
        return base + (uint32_t)(rng_unit() * 9.0 * base);
    case 1: /* log-uniform over four decades */
        return (uint32_t)(base * pow(10.0, 4.0 * rng_unit()));
    case 2: /* bimodal: a fast path and a slow path */
        return rng() % 5u == 0 ? base * 20u + rng() % base : base + rng() % (base / 4u + 1u);
    default: /* constant with rare outliers */
        return rng() % 50u == 0 ? base * 3u : base;
    }
}

static void test_latency_percentiles_bound(void)
{
    enum { MAX_N = 2000 };
    static uint16_t quantised[MAX_N];
    static const uint32_t bases[] = {40, 230, 1700, 26000, 300000};
    fwt_aggregator_t agg;
    uint8_t frame[FWT_FRAME_LEN];
    unsigned trial;
    int bound_failures = 0;
    double worst = 0.0;

    fwt_init(&agg, 0, 0, 0);
    for (trial = 0; trial < 2000u; trial++) {
        unsigned n = 1u + rng() % MAX_N;
        unsigned shape = trial % 4u;
        uint32_t base = bases[(trial / 4u) % (sizeof bases / sizeof bases[0])];
        unsigned i;
        uint16_t q50;
        uint16_t q95;
        uint16_t p50;
        uint16_t p95;

        for (i = 0; i < n; i++) {
            uint32_t us = draw_latency(shape, base);
            uint32_t units = us / 100u + (us % 100u >= 50u ? 1u : 0u);
            quantised[i] = (uint16_t)(units > 65535u ? 65535u : units);
            fwt_record_inference(&agg, us, 0.5f, 0, false, NULL, 0);
        }
        qsort(quantised, n, sizeof quantised[0], compare_u16);
        q50 = quantised[(n + 1u) / 2u - 1u];
        q95 = quantised[(95u * n + 99u) / 100u - 1u];
        fwt_close_window(&agg, 0, 60, frame, sizeof frame);
        p50 = BODY_U16(frame, LATENCY_P50, 0);
        p95 = BODY_U16(frame, LATENCY_P95, 0);
        if (!within_bound(p50, q50) || !within_bound(p95, q95) || p50 > p95) {
            bound_failures++;
            printf("  trial %u (shape %u, n %u): p50 %u vs %u, p95 %u vs %u\n", trial, shape, n, p50, q50, p95, q95);
        }
        if (q50 > 0 && fabs((double)p50 - q50) / q50 > worst) {
            worst = fabs((double)p50 - q50) / q50;
        }
        if (q95 > 0 && fabs((double)p95 - q95) / q95 > worst) {
            worst = fabs((double)p95 - q95) / q95;
        }
    }
    CHECK_EQ(bound_failures, 0);
    printf("latency percentiles (FWT_LAT_SUB_BITS=%d, %u buckets): worst relative error %.5f, bound 1/%d\n",
           FWT_LAT_SUB_BITS, FWT_LAT_BUCKETS, worst, 1 << (FWT_LAT_SUB_BITS + 1));
}

/* The bound holds for every value of the u16 range: in a window of 0, u and 6553.4 ms the median is u, so
 * each bucket's reported middle is checked against every value the bucket holds. */
static void test_latency_every_bucket(void)
{
    fwt_aggregator_t agg;
    uint8_t frame[FWT_FRAME_LEN];
    uint32_t u;
    int failures = 0;

    fwt_init(&agg, 0, 0, 0);
    for (u = 1; u < 65535u; u++) {
        fwt_record_inference(&agg, u * 100u, 0.5f, 0, false, NULL, 0);
        fwt_record_inference(&agg, 0, 0.5f, 0, false, NULL, 0);
        fwt_record_inference(&agg, 6553400u, 0.5f, 0, false, NULL, 0);
        fwt_close_window(&agg, 0, 60, frame, sizeof frame);
        if (!within_bound(BODY_U16(frame, LATENCY_P50, 0), (uint16_t)u)) {
            failures++;
        }
    }
    CHECK_EQ(failures, 0);
}

/* A snippet packed by the device equals the bytes the server's encoder writes for the same values
 * (fleetwatch.frames.snippet.encode_snippet), both with fws_pack and in place. */
static void test_snippet_known_bytes(void)
{
    static const char expected_hex[] = "fc01030100002041c086fd6acdab3412010002000000003f000080bf00001c41"
                                       "0000a03f00000000000020c0cb7c";
    const float samples[6] = {0.5f, -1.0f, 9.75f, 1.25f, 0.0f, -2.5f};
    fws_info_t info = {3u, 10.0f, 1795000000u, 0x1234ABCDu, FWS_REASON_ANOMALY};
    uint8_t out[FWS_LEN(3u, 2u) + 1u];
    uint8_t in_place[FWS_LEN(3u, 2u)];
    char hex[2u * sizeof out + 1u];
    size_t i;

    memset(out, 0xAA, sizeof out);
    CHECK_EQ(FWS_LEN(3u, 2u), 46);
    CHECK_EQ(fws_pack(&info, samples, 2u, out, sizeof out), FWS_LEN(3u, 2u));
    for (i = 0; i < FWS_LEN(3u, 2u); i++) {
        sprintf(hex + 2u * i, "%02x", out[i]);
    }
    CHECK(strcmp(hex, expected_hex) == 0);
    CHECK_EQ(out[FWS_LEN(3u, 2u)], 0xAA);
    CHECK_EQ(get_u16(out, FWS_LEN(3u, 2u) - FWS_CRC_LEN), fwt_crc16(out, FWS_LEN(3u, 2u) - FWS_CRC_LEN));

    memcpy(in_place + FWS_HEADER_LEN, samples, sizeof samples);
    CHECK_EQ(fws_pack_in_place(&info, 2u, in_place, sizeof in_place), FWS_LEN(3u, 2u));
    CHECK(memcmp(in_place, out, sizeof in_place) == 0);
}

/* Bad arguments write nothing and return 0. */
static void test_snippet_refusals(void)
{
    const float samples[4] = {1.0f, 2.0f, 3.0f, 4.0f};
    fws_info_t info = {2u, 1.0f, 0u, 0u, FWS_REASON_REQUESTED};
    uint8_t out[FWS_LEN(2u, 2u)];

    memset(out, 0x55, sizeof out);
    CHECK_EQ(fws_pack(&info, samples, 2u, out, sizeof out - 1u), 0);
    CHECK_EQ(fws_pack(&info, samples, 0u, out, sizeof out), 0);
    CHECK_EQ(fws_pack(&info, NULL, 2u, out, sizeof out), 0);
    CHECK_EQ(fws_pack(NULL, samples, 2u, out, sizeof out), 0);
    CHECK_EQ(fws_pack(&info, samples, 2u, NULL, sizeof out), 0);
    info.interval_ms = 0.0f;
    CHECK_EQ(fws_pack(&info, samples, 2u, out, sizeof out), 0);
    info.interval_ms = FWS_MAX_INTERVAL_MS * 2.0f; /* the server rejects it as bad_interval */
    CHECK_EQ(fws_pack(&info, samples, 2u, out, sizeof out), 0);
    info.interval_ms = 1.0f;
    info.channels = 0u;
    CHECK_EQ(fws_pack(&info, samples, 2u, out, sizeof out), 0);
    info.channels = FWS_MAX_CHANNELS + 1u;
    CHECK_EQ(fws_pack_in_place(&info, 1u, out, sizeof out), 0);
    CHECK_EQ(out[0], 0x55);
    info.channels = 2u;
    info.interval_ms = FWS_MAX_INTERVAL_MS; /* the largest the server takes */
    CHECK_EQ(fws_pack(&info, samples, 2u, out, sizeof out), FWS_LEN(2u, 2u));
    CHECK_EQ(out[0], FWS_MAGIC);
    CHECK_EQ(get_u16(out, 18), 2);
    CHECK_EQ(get_u32(out, 8), 0);
}

int main(void)
{
    test_crc();
    test_pack_known_frame();
    test_scaling();
    test_empty_window_and_envelope();
    test_seq_wraps();
    test_counts_and_bins();
    test_counter_saturation();
    test_latency_saturation_and_rounding();
    test_system_samples();
    test_input_statistics();
    test_input_saturation();
    test_latency_percentiles_bound();
    test_latency_every_bucket();
    test_snippet_known_bytes();
    test_snippet_refusals();
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
