/* Example: publish each window's frame over MQTT, topic fleet/<device>/telemetry, QoS 1, binary payload
 * (the 74 frame bytes as they are: no JSON, no base64).
 *
 * HARDWARE / NETWORK REQUIRED for the real transport: a Zephyr device with networking, Zephyr's MQTT client
 * (CONFIG_MQTT_LIB=y, CONFIG_HWINFO=y) and a client the application has already connected
 * (mqtt_client_init, mqtt_connect, and mqtt_input / mqtt_live called from its network loop). That branch is
 * compiled only in a Zephyr build; it is not built in this repository.
 *
 * Host build (-DHOST_BUILD, `make examples`): the transport is a stub that prints the topic and QoS, then
 * the payload as one line of hex, so the hardware-independent part (aggregate, pack) runs anywhere.
 *
 * QoS 1 is at-least-once: the broker acknowledges with PUBACK (MQTT_EVT_PUBACK carrying the message id).
 * Zephyr's client does not keep the message for a retry, so a device keeps the frame until that PUBACK
 * and publishes it again with dup_flag = 1 after a reconnect; the server tolerates duplicates (same seq). */
#include <stdio.h>
#include <string.h>

#include "demo_window.h"
#include "fw_telemetry.h"

#ifdef HOST_BUILD

static int device_id(char *out, size_t len)
{
    return snprintf(out, len, "host-demo") > 0 ? 0 : -1;
}

static int publish(const char *topic, const uint8_t *payload, size_t len)
{
    size_t i;

    printf("MQTT PUBLISH topic=%s qos=1 retain=0 bytes=%u\n", topic, (unsigned)len);
    for (i = 0; i < len; i++) {
        printf("%02x", payload[i]);
    }
    printf("\n");
    return 0;
}

#else /* Zephyr device build */

#include <zephyr/drivers/hwinfo.h>
#include <zephyr/net/mqtt.h>

/* Connected by the application's network code. */
extern struct mqtt_client app_mqtt_client;

/* The device id of the topic: the hardware id as hex (the server takes it from the topic segment). */
static int device_id(char *out, size_t len)
{
    uint8_t id[8];
    ssize_t n = hwinfo_get_device_id(id, sizeof id);
    ssize_t i;

    if (n <= 0 || len < (size_t)(2 * n + 1)) {
        return -1;
    }
    for (i = 0; i < n; i++) {
        snprintf(out + 2 * i, 3, "%02x", id[i]);
    }
    return 0;
}

static int publish(const char *topic, const uint8_t *payload, size_t len)
{
    static uint16_t message_id;
    struct mqtt_publish_param param;

    message_id = (uint16_t)(message_id + 1u);
    if (message_id == 0u) { /* QoS 1 needs a non-zero id */
        message_id = 1u;
    }
    memset(&param, 0, sizeof param);
    param.message.topic.topic.utf8 = (const uint8_t *)topic;
    param.message.topic.topic.size = strlen(topic);
    param.message.topic.qos = MQTT_QOS_1_AT_LEAST_ONCE;
    param.message.payload.data = (uint8_t *)payload;
    param.message.payload.len = len;
    param.message_id = message_id;
    param.dup_flag = 0;
    param.retain_flag = 0;
    return mqtt_publish(&app_mqtt_client, &param);
}

#endif /* HOST_BUILD */

int main(void)
{
    uint8_t frame[FWT_FRAME_LEN];
    char id[32];
    char topic[64];
    size_t len = demo_window_frame(frame, sizeof frame);

    if (len == 0u || device_id(id, sizeof id) != 0) {
        return 1;
    }
    snprintf(topic, sizeof topic, "fleet/%s/telemetry", id);
    return publish(topic, frame, len) == 0 ? 0 : 1;
}
