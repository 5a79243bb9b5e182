/* tool_io.h: whitespace-separated tokens from stdin for the host tools (not part of the device library). */
#ifndef TOOL_IO_H
#define TOOL_IO_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* The next token into buf (at most size - 1 characters); false at end of input. */
bool tool_token(char *buf, size_t size);

/* The next token as an unsigned integer <= max, or as a float; exit(2) with a message on bad input. */
uint32_t tool_u32(uint32_t max, const char *what);
float tool_float(const char *what);

/* One frame as a line of lower-case hex. */
void tool_print_hex(const uint8_t *data, size_t len);

#endif /* TOOL_IO_H */
