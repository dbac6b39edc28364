/*
 * strbuf.h - a growable string with a hard cap, and PostgreSQL array-literal building.
 */
#ifndef OBR_STRBUF_H
#define OBR_STRBUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct obr_strbuf {
	char *data;
	size_t len, cap, max;
	bool failed;      /* out of memory or over max: the content is incomplete */
};

void obr_strbuf_init(struct obr_strbuf *b, size_t max);
void obr_strbuf_append(struct obr_strbuf *b, const char *s, size_t n);
void obr_strbuf_puts(struct obr_strbuf *b, const char *s);
void obr_strbuf_printf(struct obr_strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as one element of an array literal: quoted, with " and \ escaped; NULL = NULL. */
void obr_strbuf_array_elem(struct obr_strbuf *b, const char *s);
void obr_strbuf_reset(struct obr_strbuf *b);
/* Decodes the UTF-8 sequence at s (len bytes available) into *cp; returns its length, or 0
 * when it is invalid (RFC 3629: no overlongs, no surrogates, at most U+10FFFF) or cut short. */
size_t obr_utf8_decode(const unsigned char *s, size_t len, uint32_t *cp);
bool obr_utf8_valid(const char *s, size_t len);
/* Makes s valid UTF-8 in place: an invalid byte becomes '?', a sequence cut at the end is
 * dropped. Text from the network or a truncation goes through this before PostgreSQL sees it. */
void obr_utf8_sanitize(char *s);
/* Cuts any of the characters in chars off the end of s (libpq messages end in "\n"). */
void obr_trim_end(char *s, const char *chars);
void obr_strbuf_free(struct obr_strbuf *b);

/* Helper for building "{a,b,c}": call before each element. */
static inline void obr_strbuf_array_sep(struct obr_strbuf *b, size_t *count)
{
	if ((*count)++)
		obr_strbuf_append(b, ",", 1);
}

#endif
