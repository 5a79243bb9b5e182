/* fw_snippet_pack: pack snippets with the device's packer (fws_pack), one hex snippet per snippet in.
 *
 * Input (stdin), whitespace-separated, per snippet:
 *   channels count interval_ms start_time model_id reason  then count x channels sample values
 * (rows of interleaved channels). tests/test_firmware.py decodes the output with
 * fleetwatch.frames.snippet.decode_snippet and compares the values. */
#include <stdlib.h>

#include "fw_snippet.h"
#include "tool_io.h"

int main(void)
{
    static float samples[FWS_MAX_CHANNELS * 4096u];
    static uint8_t out[FWS_LEN(FWS_MAX_CHANNELS, 4096u)];
    char first[64];
    char *end;

    while (tool_token(first, sizeof first)) {
        fws_info_t info;
        unsigned long channels = strtoul(first, &end, 10);
        uint16_t count;
        size_t i;

        if (*end != '\0' || channels < 1u || channels > FWS_MAX_CHANNELS) {
            fprintf(stderr, "channels: %s is not an integer 1..%u\n", first, FWS_MAX_CHANNELS);
            return 2;
        }
        info.channels = (uint8_t)channels;
        count = (uint16_t)tool_u32(4096u, "count");
        info.interval_ms = tool_float("interval_ms");
        info.start_time = tool_u32(UINT32_MAX, "start_time");
        info.model_id = tool_u32(UINT32_MAX, "model_id");
        info.reason = (uint8_t)tool_u32(UINT8_MAX, "reason");
        for (i = 0; i < (size_t)count * info.channels; i++) {
            samples[i] = tool_float("sample");
        }
        tool_print_hex(out, fws_pack(&info, samples, count, out, sizeof out));
    }
    return 0;
}
