/* Example: send each window's frame through a Blues Notecard with note-c: a `note.add` request to the
 * outbound Notefile telemetry.qo whose `payload` field carries the frame bytes base64-encoded
 * (JAddBinaryToObject does the encoding). A Notehub route then delivers the event as JSON with that
 * `payload` field to fleetwatch's Notehub endpoint, which decodes the base64 back into the frame.
 *
 * HARDWARE REQUIRED for the real transport: a Notecard on I2C or serial and note-c
 * (https://github.com/blues/note-c) with the application's platform hooks (NoteSetFnDefault plus
 * NoteSetFnI2C or NoteSetFnSerial) and a hub.set done at boot. That branch is compiled only in a device
 * build; it is not built in this repository. note-c allocates the JSON request through its own allocator
 * hooks; the telemetry library itself does not allocate.
 *
 * Host build (-DHOST_BUILD, `make examples`): the transport is a stub that prints the request it would
 * send, as JSON with the base64 payload, so the hardware-independent part (aggregate, pack) runs anywhere. */
#include <stdio.h>

#include "demo_window.h"
#include "fw_telemetry.h"

#define NOTEFILE "telemetry.qo"

#ifdef HOST_BUILD

static void print_base64(const uint8_t *data, size_t len)
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i;

    for (i = 0; i < len; i += 3u) {
        uint32_t chunk = (uint32_t)data[i] << 16;
        if (i + 1u < len) {
            chunk |= (uint32_t)data[i + 1u] << 8;
        }
        if (i + 2u < len) {
            chunk |= data[i + 2u];
        }
        putchar(alphabet[(chunk >> 18) & 63u]);
        putchar(alphabet[(chunk >> 12) & 63u]);
        putchar(i + 1u < len ? alphabet[(chunk >> 6) & 63u] : '=');
        putchar(i + 2u < len ? alphabet[chunk & 63u] : '=');
    }
}

static int send_frame(const uint8_t *frame, size_t len)
{
    printf("{\"req\":\"note.add\",\"file\":\"%s\",\"payload\":\"", NOTEFILE);
    print_base64(frame, len);
    printf("\"}\n");
    return 0;
}

#else /* device build with note-c */

#include "note.h"

static int send_frame(const uint8_t *frame, size_t len)
{
    J *req = NoteNewRequest("note.add");

    if (req == NULL) {
        return -1;
    }
    JAddStringToObject(req, "file", NOTEFILE);
    if (!JAddBinaryToObject(req, "payload", frame, (uint32_t)len)) {
        JDelete(req);
        return -1;
    }
    return NoteRequest(req) ? 0 : -1; /* NoteRequest frees req */
}

#endif /* HOST_BUILD */

int main(void)
{
    uint8_t frame[FWT_FRAME_LEN];
    size_t len = demo_window_frame(frame, sizeof frame);

    if (len == 0u) {
        return 1;
    }
    return send_frame(frame, len) == 0 ? 0 : 1;
}
