/* fw_telemetry.h: aggregate a TinyML model's inference health on the device and pack it into a
 * fleetwatch telemetry frame (wire format v1, body schema 1 "tinyml-health").
 *
 * C99, no malloc, no libm, no sample buffers. One fwt_aggregator_t (statically allocated by the caller)
 * holds one window. Per inference the device calls fwt_record_inference(); now and then
 * fwt_sample_system(); at the end of the window fwt_close_window() packs a 74-byte frame (envelope +
 * body + CRC-16) into the caller's buffer and resets the aggregator for the next window. Each call does a
 * fixed amount of work that does not grow with the number of inferences in the window (record: one pass
 * over the input samples passed in that call; close: one pass over the latency histogram).
 * The functions are not reentrant: call them for one aggregator from one thread, or under a lock.
 *
 * What each body field holds (engineering units as the server decodes them):
 *
 *   inference_count  inferences recorded in the window (u16, saturates at 65535, see "Saturation").
 *   anomaly_count    inferences recorded with is_anomaly set.
 *   latency_p50/p95  nearest-rank 50th / 95th percentile of the recorded latencies, in 0.1 ms, read from a
 *                    fixed log-linear histogram (see "Latency percentiles" for the error bound).
 *   mem_peak_pct     the highest mem_peak_pct sampled in the window (0 when never sampled).
 *   battery_mv       the lowest non-zero battery_mv sampled in the window (0 = never sampled).
 *   flags            bit0 time_synced: window_start != 0 at close;
 *                    bit1 saturated: a counter or a scaled value hit its limit (see "Saturation");
 *                    bit2 low_battery: battery_mv above is non-zero and below the threshold of fwt_init;
 *                    bit3 rebooted: some fwt_sample_system() call of the window passed rebooted = true.
 *   input_mean[c]    mean of every input value of channel c recorded in the window, x 1000 (i16).
 *   input_var[c]     POPULATION variance M2 / n of the same values (n = number of samples, not n - 1),
 *                    x 10000 (u16). Both are computed with Welford's update over the samples of each call,
 *                    merged into the window with Chan et al.'s pairwise formula, in float32.
 *   conf_hist[i]     inferences whose top-1 confidence falls in [i/10, (i+1)/10); 1.0 (and anything above)
 *                    counts in the last bin, anything below 0 in the first. The edges are compared as
 *                    float32 (FW_SCHEMA_TINYML_HEALTH_CONF_EDGES): 0.7f counts in bin 7.
 *   class_counts[k]  inferences whose top-1 predicted class is k (0..3).
 *
 * Rounding: every float statistic becomes its wire integer by rounding half away from zero
 * (fwt_scale_i16 / fwt_scale_u16). The server's packer (fleetwatch/frames/encode.py) rounds half to even;
 * the two differ only on exact .5 ties, which statistics practically never produce and integer-valued
 * inputs (golden vectors) never do. Latencies are rounded from microseconds to 0.1 ms the same way.
 *
 * Latency percentiles: each latency is rounded to 0.1 ms units u (0..65535) and counted in a log-linear
 * bucket: values below 2 * 2^FWT_LAT_SUB_BITS get a bucket each; above, every octave [2^e, 2^(e+1)) is
 * split into 2^FWT_LAT_SUB_BITS equal buckets. The reported percentile is the middle of the bucket that
 * holds the nearest-rank percentile, clamped to the smallest and largest latency of the window. Bound: with
 * q the exact nearest-rank percentile of the latencies rounded to 0.1 ms, |reported - q| <= q / 2^(S+1)
 * where S = FWT_LAT_SUB_BITS: 1/32 = 3.125 % for the default S = 4 (208 buckets, 416 bytes),
 * 1/16 = 6.25 % for S = 3 (112 buckets, 224 bytes). A window whose latencies are all equal is exact.
 *
 * Saturation (flag bit1): a u16 counter that reaches 65535 (further inferences of the window are then
 * dropped whole, so sum(conf_hist) == sum(class_counts) == inference_count still holds, and
 * fwt_record_inference returns FWT_SATURATED); a latency of 6553.45 ms or more (reported as 6553.5 ms at
 * most); an input mean of 32.7665 or more or of -32.7675 or less, or a variance of 6.55345 or more (each
 * clamped to its wire limit; a NaN statistic is sent as 0); a mem_peak_pct above 100 (sent as 100).
 */
#ifndef FW_TELEMETRY_H
#define FW_TELEMETRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fw_schema_tinyml_health.h"

/* Envelope v1 (WIRE-FORMAT.md). */
#define FWT_MAGIC 0xFBu
#define FWT_ENVELOPE_VERSION 1u
#define FWT_ENVELOPE_LEN 20u
#define FWT_CRC_LEN 2u
#define FWT_FRAME_LEN FW_SCHEMA_TINYML_HEALTH_FRAME_LEN

/* The body's dimensions, from the generated schema header. */
#define FWT_CHANNELS FW_SCHEMA_TINYML_HEALTH_INPUT_MEAN_COUNT
#define FWT_CLASSES FW_SCHEMA_TINYML_HEALTH_CLASS_COUNTS_COUNT
#define FWT_CONF_BINS FW_SCHEMA_TINYML_HEALTH_CONF_BINS

/* The envelope's fw_version: major << 24 | minor << 16 | patch (patch is 16 bits). */
#define FWT_FW_VERSION(major, minor, patch) \
    ((((uint32_t)(major) & 0xFFu) << 24) | (((uint32_t)(minor) & 0xFFu) << 16) | ((uint32_t)(patch) & 0xFFFFu))

/* Latency histogram resolution: 2^FWT_LAT_SUB_BITS buckets per octave (Zephyr:
 * CONFIG_FW_TELEMETRY_LATENCY_SUB_BITS; elsewhere -DFWT_LAT_SUB_BITS=n). Every translation unit that includes
 * this header must see the same value, since it sets the size of fwt_aggregator_t. */
#if !defined(FWT_LAT_SUB_BITS) && defined(CONFIG_FW_TELEMETRY_LATENCY_SUB_BITS)
#define FWT_LAT_SUB_BITS CONFIG_FW_TELEMETRY_LATENCY_SUB_BITS
#endif
#ifndef FWT_LAT_SUB_BITS
#define FWT_LAT_SUB_BITS 4
#endif
#if FWT_LAT_SUB_BITS < 1 || FWT_LAT_SUB_BITS > 6
#error "FWT_LAT_SUB_BITS must be 1..6"
#endif
#define FWT_LAT_SUB (1u << FWT_LAT_SUB_BITS)
/* 2 * SUB single-value buckets, then SUB buckets for each octave 2^(S+1) .. 2^15 of the u16 range. */
#define FWT_LAT_BUCKETS (2u * FWT_LAT_SUB + (15u - FWT_LAT_SUB_BITS) * FWT_LAT_SUB)

typedef enum {
    FWT_OK = 0,        /* recorded */
    FWT_SATURATED = 1, /* not recorded: the window already holds 65535 inferences (flag bit1 is set) */
    FWT_EINVAL = -1    /* not recorded: class >= FWT_CLASSES, NaN confidence, or NULL input with samples */
} fwt_status_t;

/* One window's state. Allocate it statically (or on a stack that outlives the window) and treat the
 * members as private: only the functions below read or write them. sizeof is 496 bytes with the default
 * FWT_LAT_SUB_BITS = 4 on a 32-bit MCU (`make footprint` prints it). */
typedef struct {
    uint32_t fw_version;
    uint32_t model_id;
    uint32_t input_n;                   /* input samples (rows of FWT_CHANNELS values) in the statistics */
    float input_mean[FWT_CHANNELS];     /* running mean per channel */
    float input_m2[FWT_CHANNELS];       /* running sum of squared deviations per channel */
    uint16_t seq;                       /* seq of the next frame */
    uint16_t low_battery_mv;            /* threshold of flag bit2; 0 disables it */
    uint16_t inference_count;
    uint16_t anomaly_count;
    uint16_t battery_mv;                /* lowest non-zero sample, 0 = none */
    uint16_t latency_min;               /* 0.1 ms */
    uint16_t latency_max;               /* 0.1 ms */
    uint16_t conf_hist[FWT_CONF_BINS];
    uint16_t class_counts[FWT_CLASSES];
    uint16_t latency_hist[FWT_LAT_BUCKETS];
    uint8_t mem_peak_pct;
    uint8_t flags;                      /* saturated and rebooted bits gathered during the window */
} fwt_aggregator_t;

/* Start aggregating: seq 0, an empty window. fw_version as FWT_FW_VERSION(), model_id = CRC-32 (IEEE, as
 * zlib.crc32) of the deployed model blob. low_battery_mv: flag bit2 is set when the window's lowest battery
 * sample is below it (0 disables the flag). */
void fwt_init(fwt_aggregator_t *agg, uint32_t fw_version, uint32_t model_id, uint16_t low_battery_mv);

/* Record one inference.
 *   latency_us       wall time of the inference in microseconds.
 *   top1_confidence  the top-1 score, normally 0..1 (see conf_hist above for values outside).
 *   predicted_class  the top-1 class, 0 .. FWT_CLASSES - 1.
 *   is_anomaly       the application's verdict (anomalous, or below its confidence floor).
 *   input            the model's input window, input_samples rows of FWT_CHANNELS floats, row-major
 *                    (x0 y0 z0 x1 y1 z1 ...), in engineering units (e.g. g). Every value is folded into the
 *                    window's per-channel mean and population variance and nothing is kept. A device that
 *                    only has per-channel means can pass them as one row (input_samples = 1); the
 *                    statistics are then over those means. input may be NULL when input_samples is 0.
 * Returns FWT_OK, FWT_SATURATED or FWT_EINVAL (see fwt_status_t); only FWT_OK changes the window. */
fwt_status_t fwt_record_inference(fwt_aggregator_t *agg, uint32_t latency_us, float top1_confidence,
                                  uint8_t predicted_class, bool is_anomaly, const float *input,
                                  uint16_t input_samples);

/* Record a system sample: peak RAM use in percent since the last sample, battery voltage in mV (0 = not
 * measured), and whether the device rebooted since the last sample (pass true once after boot). */
void fwt_sample_system(fwt_aggregator_t *agg, uint8_t mem_peak_pct, uint16_t battery_mv, bool rebooted);

/* Close the window: pack the frame (seq, window_start = Unix seconds when the window opened or 0 without a
 * clock, window_s = its length in seconds) into out, then start the next window with seq + 1 (wrapping
 * 65535 -> 0). Returns the frame length (FWT_FRAME_LEN), or 0 when out is NULL, buf_len < FWT_FRAME_LEN or
 * window_s is 0; on 0 nothing is written and the window stays open. */
size_t fwt_close_window(fwt_aggregator_t *agg, uint32_t window_start, uint16_t window_s, uint8_t *out,
                        size_t buf_len);

/* ---- Packer: used by fwt_close_window, public for tools and for devices that aggregate elsewhere. ---- */

typedef struct {
    uint16_t seq;
    uint32_t window_start;
    uint16_t window_s;
    uint32_t fw_version;
    uint32_t model_id;
} fwt_envelope_t;

/* Write envelope + body + CRC-16 into out with explicit little-endian byte stores. The values are written
 * as given (no checks of the schema's invariants). Returns FWT_FRAME_LEN, or 0 (nothing written) when out
 * is NULL or buf_len < FWT_FRAME_LEN. */
size_t fwt_pack_frame(const fwt_envelope_t *env, const fw_schema_tinyml_health_t *body, uint8_t *out,
                      size_t buf_len);

/* Engineering value -> wire integer: round(value * scale_inv) half away from zero, clamped to the type's
 * range. Sets *saturated (never clears it) when the result is the type's limit (i16: -32768 or 32767,
 * u16: 65535), when a negative value is clamped to 0 (u16) or when value is NaN (sent as 0). */
int16_t fwt_scale_i16(float value, float scale_inv, bool *saturated);
uint16_t fwt_scale_u16(float value, float scale_inv, bool *saturated);

/* CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, xorout 0 ("123456789" -> 0x29B1). */
uint16_t fwt_crc16(const uint8_t *data, size_t len);

#endif /* FW_TELEMETRY_H */
