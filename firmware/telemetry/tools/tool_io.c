/* tool_io.c: token input and hex output for the host tools. */
#include "tool_io.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

bool tool_token(char *buf, size_t size)
{
    size_t len = 0;
    int ch;

    do {
        ch = getchar();
    } while (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r');
    while (ch != EOF && ch != ' ' && ch != '\t' && ch != '\n' && ch != '\r') {
        if (len + 1u < size) {
            buf[len++] = (char)ch;
        }
        ch = getchar();
    }
    buf[len] = '\0';
    return len > 0u;
}

static void need_token(char *buf, size_t size, const char *what)
{
    if (!tool_token(buf, size)) {
        fprintf(stderr, "input ended where %s was expected\n", what);
        exit(2);
    }
}

uint32_t tool_u32(uint32_t max, const char *what)
{
    char buf[64];
    char *end;
    unsigned long value;

    need_token(buf, sizeof buf, what);
    errno = 0;
    value = strtoul(buf, &end, 10);
    if (*end != '\0' || errno != 0 || buf[0] == '-' || value > max) {
        fprintf(stderr, "%s: %s is not an integer 0..%lu\n", what, buf, (unsigned long)max);
        exit(2);
    }
    return (uint32_t)value;
}

float tool_float(const char *what)
{
    char buf[64];
    char *end;
    float value;

    need_token(buf, sizeof buf, what);
    value = strtof(buf, &end);
    if (*end != '\0' || end == buf) {
        fprintf(stderr, "%s: %s is not a number\n", what, buf);
        exit(2);
    }
    return value;
}

void tool_print_hex(const uint8_t *data, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++) {
        printf("%02x", data[i]);
    }
    putchar('\n');
}
