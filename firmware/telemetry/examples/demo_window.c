/* demo_window.c: what a device does between two publishes, with made-up but deterministic numbers.
 * On a device the loop below is the inference loop: after each model run, pass its latency, top-1 score and
 * class, the application's anomaly verdict and the model's input window to fwt_record_inference(). */
#include "demo_window.h"

#include "fw_telemetry.h"

#define ROWS 32u         /* samples per model input window */
#define INFERENCES 120u  /* inferences in the demo window */

static fwt_aggregator_t aggregator; /* static: no heap, not on the stack */

size_t demo_window_frame(uint8_t *frame, size_t buf_len)
{
    float input[ROWS * FWT_CHANNELS];
    unsigned i;
    unsigned row;

    fwt_init(&aggregator, FWT_FW_VERSION(1, 4, 2), 0x3A5F1C07u, 3300u);
    fwt_sample_system(&aggregator, 41u, 3710u, true);
    for (i = 0; i < INFERENCES; i++) {
        /* an accelerometer at rest, in g: x and y near 0, z near 1, with a small triangle-wave wobble */
        for (row = 0; row < ROWS; row++) {
            float wobble = (float)((row + i) % 8u) * 0.01f - 0.035f;
            input[row * FWT_CHANNELS + 0u] = wobble;
            input[row * FWT_CHANNELS + 1u] = -wobble * 0.5f;
            input[row * FWT_CHANNELS + 2u] = 1.0f + wobble * 0.2f;
        }
        fwt_record_inference(&aggregator, 18000u + 137u * (i % 11u), 0.55f + 0.004f * (float)(i % 100u),
                             (uint8_t)(i % 7u == 0u ? 1u : 0u), i % 29u == 0u, input, ROWS);
    }
    fwt_sample_system(&aggregator, 47u, 3690u, false);
    /* window_start: Unix seconds when the window opened (from the RTC, SNTP or the Notecard's card.time),
     * 0 when the device has no clock */
    return fwt_close_window(&aggregator, 1794996400u, 3600u, frame, buf_len);
}
