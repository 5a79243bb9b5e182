/* fw_pack_lines: pack decoded frames with the device's packer (fwt_pack_frame), one hex frame per frame in.
 *
 * Input (stdin), whitespace-separated, 32 values per frame, in engineering units as `fleetwatch decode`
 * prints them (fw_version as its u32):
 *   seq window_start window_s fw_version model_id inference_count anomaly_count latency_p50_ms
 *   latency_p95_ms mem_peak_pct flags battery_mv input_mean[3] input_var[3] conf_hist[10] class_counts[4]
 * Scaled values go through fwt_scale_u16 / fwt_scale_i16, as on the device. tests/test_firmware.py feeds
 * it the golden vectors and compares the bytes. */
#include <stdlib.h>

#include "fw_telemetry.h"
#include "tool_io.h"

int main(void)
{
    char first[64];
    char *end;

    while (tool_token(first, sizeof first)) {
        fwt_envelope_t env;
        fw_schema_tinyml_health_t body;
        uint8_t frame[FWT_FRAME_LEN];
        bool saturated = false; /* a decoded value at its wire limit is legitimate here: not an error */
        unsigned long seq = strtoul(first, &end, 10);
        unsigned i;

        if (*end != '\0' || seq > UINT16_MAX) {
            fprintf(stderr, "seq: %s is not an integer 0..65535\n", first);
            return 2;
        }
        env.seq = (uint16_t)seq;
        env.window_start = tool_u32(UINT32_MAX, "window_start");
        env.window_s = (uint16_t)tool_u32(UINT16_MAX, "window_s");
        env.fw_version = tool_u32(UINT32_MAX, "fw_version");
        env.model_id = tool_u32(UINT32_MAX, "model_id");
        body.inference_count = (uint16_t)tool_u32(UINT16_MAX, "inference_count");
        body.anomaly_count = (uint16_t)tool_u32(UINT16_MAX, "anomaly_count");
        body.latency_p50 = fwt_scale_u16(tool_float("latency_p50_ms"), FW_SCHEMA_TINYML_HEALTH_LATENCY_P50_SCALE_INV,
                                         &saturated);
        body.latency_p95 = fwt_scale_u16(tool_float("latency_p95_ms"), FW_SCHEMA_TINYML_HEALTH_LATENCY_P95_SCALE_INV,
                                         &saturated);
        body.mem_peak_pct = (uint8_t)tool_u32(UINT8_MAX, "mem_peak_pct");
        body.flags = (uint8_t)tool_u32(UINT8_MAX, "flags");
        body.battery_mv = (uint16_t)tool_u32(UINT16_MAX, "battery_mv");
        for (i = 0; i < FW_SCHEMA_TINYML_HEALTH_INPUT_MEAN_COUNT; i++) {
            body.input_mean[i] =
                fwt_scale_i16(tool_float("input_mean"), FW_SCHEMA_TINYML_HEALTH_INPUT_MEAN_SCALE_INV, &saturated);
        }
        for (i = 0; i < FW_SCHEMA_TINYML_HEALTH_INPUT_VAR_COUNT; i++) {
            body.input_var[i] =
                fwt_scale_u16(tool_float("input_var"), FW_SCHEMA_TINYML_HEALTH_INPUT_VAR_SCALE_INV, &saturated);
        }
        for (i = 0; i < FW_SCHEMA_TINYML_HEALTH_CONF_HIST_COUNT; i++) {
            body.conf_hist[i] = (uint16_t)tool_u32(UINT16_MAX, "conf_hist");
        }
        for (i = 0; i < FW_SCHEMA_TINYML_HEALTH_CLASS_COUNTS_COUNT; i++) {
            body.class_counts[i] = (uint16_t)tool_u32(UINT16_MAX, "class_counts");
        }
        tool_print_hex(frame, fwt_pack_frame(&env, &body, frame, sizeof frame));
    }
    return 0;
}
