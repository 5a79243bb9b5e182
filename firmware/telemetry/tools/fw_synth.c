/* fw_synth: drive the aggregator with a scripted stream and print every frame it closes (hex, one a line).
 *
 * Commands on stdin, whitespace-separated:
 *   init <fw_version u32> <model_id> <low_battery_mv>
 *   inf <latency_us> <confidence> <class> <anomaly 0|1> <samples> <samples * FWT_CHANNELS floats>
 *   sys <mem_peak_pct> <battery_mv> <rebooted 0|1>
 *   close <window_start> <window_s>
 * Exits 2 on bad input or when the aggregator rejects an inference (FWT_EINVAL). tests/test_firmware.py
 * generates the stream, decodes the frames with fleetwatch and compares them with its own aggregation. */
#include <string.h>

#include "fw_telemetry.h"
#include "tool_io.h"

#define MAX_SAMPLES 1024u

int main(void)
{
    static float input[MAX_SAMPLES * FWT_CHANNELS];
    static fwt_aggregator_t agg;
    char command[16];

    fwt_init(&agg, 0, 0, 0);
    while (tool_token(command, sizeof command)) {
        if (strcmp(command, "init") == 0) {
            uint32_t fw_version = tool_u32(UINT32_MAX, "fw_version");
            uint32_t model_id = tool_u32(UINT32_MAX, "model_id");
            fwt_init(&agg, fw_version, model_id, (uint16_t)tool_u32(UINT16_MAX, "low_battery_mv"));
        } else if (strcmp(command, "inf") == 0) {
            uint32_t latency_us = tool_u32(UINT32_MAX, "latency_us");
            float confidence = tool_float("confidence");
            uint8_t predicted = (uint8_t)tool_u32(UINT8_MAX, "class");
            bool anomaly = tool_u32(1, "anomaly") != 0u;
            uint16_t samples = (uint16_t)tool_u32(MAX_SAMPLES, "samples");
            unsigned i;

            for (i = 0; i < samples * FWT_CHANNELS; i++) {
                input[i] = tool_float("input value");
            }
            if (fwt_record_inference(&agg, latency_us, confidence, predicted, anomaly, input, samples) == FWT_EINVAL) {
                fprintf(stderr, "fwt_record_inference rejected an inference (class %u)\n", (unsigned)predicted);
                return 2;
            }
        } else if (strcmp(command, "sys") == 0) {
            uint8_t mem = (uint8_t)tool_u32(UINT8_MAX, "mem_peak_pct");
            uint16_t battery = (uint16_t)tool_u32(UINT16_MAX, "battery_mv");
            fwt_sample_system(&agg, mem, battery, tool_u32(1, "rebooted") != 0u);
        } else if (strcmp(command, "close") == 0) {
            uint8_t frame[FWT_FRAME_LEN];
            uint32_t window_start = tool_u32(UINT32_MAX, "window_start");
            uint16_t window_s = (uint16_t)tool_u32(UINT16_MAX, "window_s");
            size_t len = fwt_close_window(&agg, window_start, window_s, frame, sizeof frame);

            if (len == 0u) {
                fprintf(stderr, "fwt_close_window refused (window_s %u)\n", (unsigned)window_s);
                return 2;
            }
            tool_print_hex(frame, len);
        } else {
            fprintf(stderr, "unknown command %s\n", command);
            return 2;
        }
    }
    return 0;
}
