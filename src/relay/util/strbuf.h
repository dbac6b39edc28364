/*
 * strbuf.h - a growable string with a hard cap, and PostgreSQL array-literal building.
 */
#ifndef OBR_STRBUF_H
#define OBR_STRBUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct strbuf {
	char *data;
	size_t len, cap, max;
	bool failed;      /* out of memory or over max: the content is incomplete */
};

void strbuf_init(struct strbuf *b, size_t max);
void strbuf_append(struct strbuf *b, const char *s, size_t n);
void strbuf_puts(struct strbuf *b, const char *s);
void strbuf_printf(struct strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as one element of an array literal: quoted, with " and \ escaped; NULL = NULL. */
void strbuf_array_elem(struct strbuf *b, const char *s);
void strbuf_reset(struct strbuf *b);
/* Decodes the UTF-8 sequence at s (len bytes available) into *cp; returns its length, or 0
 * when it is invalid (RFC 3629: no overlongs, no surrogates, at most U+10FFFF) or cut short. */
size_t obr_utf8_decode(const unsigned char *s, size_t len, uint32_t *cp);
bool obr_utf8_valid(const char *s, size_t len);
/* Makes s valid UTF-8 in place: an invalid byte becomes '?', a sequence cut at the end is
 * dropped. Text from the network or a truncation goes through this before PostgreSQL sees it. */
void obr_utf8_sanitize(char *s);
/* Cuts any of the characters in chars off the end of s (libpq messages end in "\n"). */
void obr_trim_end(char *s, const char *chars);
void strbuf_free(struct strbuf *b);

/* Helper for building "{a,b,c}": call before each element. */
static inline void strbuf_array_sep(struct strbuf *b, size_t *count)
{
	if ((*count)++)
		strbuf_append(b, ",", 1);
}

#endif
