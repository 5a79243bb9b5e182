/* demo_window.h: the hardware-independent half of both examples: aggregate one window and pack its frame. */
#ifndef DEMO_WINDOW_H
#define DEMO_WINDOW_H

#include <stddef.h>
#include <stdint.h>

/* Record a deterministic hour of inferences (a stand-in for the model loop), close the window and write
 * its frame into frame. Returns the frame length, 0 when buf_len is too small. */
size_t demo_window_frame(uint8_t *frame, size_t buf_len);

#endif /* DEMO_WINDOW_H */
