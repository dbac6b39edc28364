/*
 * pgarray.h: text-format PostgreSQL array literals, for binding a whole batch of rows as one
 * array parameter per column (INSERT ... SELECT FROM unnest($1::uuid[], ...)).
 *
 * Pure string building, no libpq: the unit tests cover it byte for byte. Every element is
 * written double-quoted with '"' and '\' backslash-escaped, which is the one encoding array_in
 * reads back verbatim whatever the element holds (commas, braces, spaces, the word NULL,
 * multibyte text); a missing element (C NULL) is written as the unquoted NULL. The buffer has
 * a hard maximum so that a huge batch fails cleanly instead of exhausting memory.
 */
#ifndef OUTBOX_PGARRAY_H
#define OUTBOX_PGARRAY_H

#include <stddef.h>
#include <stdint.h>

#include "outbox.h"

struct outbox__pgarray {
	char *data;   /* NUL-terminated after outbox__pgarray_finish */
	size_t len;   /* bytes written, without the NUL */
	size_t cap;   /* bytes allocated */
	size_t max;   /* len may never exceed this */
	size_t count; /* elements added */
};

/* No allocation yet; max bounds the finished literal (without its NUL). */
void outbox__pgarray_init(struct outbox__pgarray *a, size_t max);

/* Reserves room for about hint bytes up front (a sizing hint; may fail with NOMEM or TOO_BIG). */
enum outbox_rc outbox__pgarray_reserve(struct outbox__pgarray *a, size_t hint);

/* Appends one element of len bytes, or SQL NULL when elem is NULL. */
enum outbox_rc outbox__pgarray_add(struct outbox__pgarray *a, const char *elem, size_t len);

/* Closes the literal ("{}" when empty) and NUL-terminates a->data. */
enum outbox_rc outbox__pgarray_finish(struct outbox__pgarray *a);

/* Frees the buffer; the struct may be reused after outbox__pgarray_init. NULL-safe. */
void outbox__pgarray_free(struct outbox__pgarray *a);

/* Upper bound of the microseconds accepted as a timestamp: 9999-12-31 23:59:59.999999 UTC. */
#define OUTBOX__MAX_UNIX_US INT64_C(253402300799999999)

/* Room for "YYYY-MM-DD HH:MM:SS.ffffff+00" and the NUL, with margin. */
#define OUTBOX__TIMESTAMP_BUFSZ 48

/*
 * Formats unix_us (0 .. OUTBOX__MAX_UNIX_US) as a timestamptz literal in UTC with an explicit
 * +00 offset, so that neither the session's TimeZone nor DateStyle changes its meaning.
 * Returns 0, or -1 when unix_us is out of range.
 */
int outbox__format_timestamp(int64_t unix_us, char out[OUTBOX__TIMESTAMP_BUFSZ]);

#endif /* OUTBOX_PGARRAY_H */
