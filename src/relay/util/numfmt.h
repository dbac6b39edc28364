/*
 * numfmt.h - numbers as text that reads back exactly (the /metrics document, status --json).
 */
#ifndef OBR_NUMFMT_H
#define OBR_NUMFMT_H

#include <stddef.h>

/* The shortest text that reads back as v (Go's strconv 'g' -1): integral values without an
 * exponent below 1e15 ("60", not "6e+01"), NaN as "NaN", infinities as "+Inf" / "-Inf" (the
 * Prometheus spelling). cap of 32 bytes is always enough. */
void obr_fmt_double(char *buf, size_t cap, double v);

#endif
