/*
 * strbuf.c - bounded growable strings.
 */
#include "util/strbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void obr_strbuf_init(struct obr_strbuf *b, size_t max)
{
	memset(b, 0, sizeof(*b));
	b->max = max;
}

static bool reserve(struct obr_strbuf *b, size_t extra)
{
	if (b->failed)
		return false;
	if (b->len + extra + 1 > b->max) {
		b->failed = true;
		return false;
	}
	if (b->len + extra + 1 <= b->cap)
		return true;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->len + extra + 1)
		cap *= 2;
	char *d = realloc(b->data, cap);
	if (!d) {
		b->failed = true;
		return false;
	}
	b->data = d;
	b->cap = cap;
	return true;
}

void obr_strbuf_append(struct obr_strbuf *b, const char *s, size_t n)
{
	if (!reserve(b, n))
		return;
	memcpy(b->data + b->len, s, n);
	b->len += n;
	b->data[b->len] = '\0';
}

void obr_strbuf_puts(struct obr_strbuf *b, const char *s)
{
	obr_strbuf_append(b, s, strlen(s));
}

void obr_strbuf_printf(struct obr_strbuf *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0 || !reserve(b, (size_t)n))
		return;
	va_start(ap, fmt);
	vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

void obr_strbuf_array_elem(struct obr_strbuf *b, const char *s)
{
	if (!s) {
		obr_strbuf_append(b, "NULL", 4);
		return;
	}
	obr_strbuf_append(b, "\"", 1);
	for (const char *p = s; *p; p++) {
		if (*p == '"' || *p == '\\')
			obr_strbuf_append(b, "\\", 1);
		obr_strbuf_append(b, p, 1);
	}
	obr_strbuf_append(b, "\"", 1);
}

size_t obr_utf8_decode(const unsigned char *s, size_t len, uint32_t *cp)
{
	if (s[0] < 0x80) {
		*cp = s[0];
		return 1;
	}
	size_t n;
	uint32_t c, min;
	if ((s[0] & 0xE0) == 0xC0) {
		n = 2;
		c = s[0] & 0x1F;
		min = 0x80;
	} else if ((s[0] & 0xF0) == 0xE0) {
		n = 3;
		c = s[0] & 0x0F;
		min = 0x800;
	} else if ((s[0] & 0xF8) == 0xF0) {
		n = 4;
		c = s[0] & 0x07;
		min = 0x10000;
	} else {
		return 0;
	}
	if (n > len)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xC0) != 0x80)
			return 0;
		c = (c << 6) | (s[i] & 0x3F);
	}
	if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
		return 0;
	*cp = c;
	return n;
}

bool obr_utf8_valid(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;
	for (size_t i = 0; i < len;) {
		uint32_t cp;
		size_t n = obr_utf8_decode(p + i, len - i, &cp);
		if (!n)
			return false;
		i += n;
	}
	return true;
}

void obr_utf8_sanitize(char *s)
{
	unsigned char *p = (unsigned char *)s;
	size_t rest = strlen(s);
	while (rest) {
		uint32_t cp;
		size_t n = obr_utf8_decode(p, rest, &cp);
		if (n) {
			p += n;
			rest -= n;
			continue;
		}
		/* a sequence cut short by a truncation at the very end: drop it */
		size_t want = *p >= 0xf0 ? 4 : *p >= 0xe0 ? 3 : 2;
		if (rest < want && *p >= 0xc2 && *p <= 0xf4) {
			bool tail = true;
			for (size_t i = 1; i < rest; i++)
				tail &= p[i] >= 0x80 && p[i] <= 0xbf;
			if (tail) {
				*p = '\0';
				return;
			}
		}
		*p++ = '?';
		rest--;
	}
}

void obr_trim_end(char *s, const char *chars)
{
	size_t n = strlen(s);
	while (n && strchr(chars, s[n - 1]))
		s[--n] = '\0';
}

void obr_strbuf_reset(struct obr_strbuf *b)
{
	b->len = 0;
	b->failed = false;
	if (b->data)
		b->data[0] = '\0';
}

void obr_strbuf_free(struct obr_strbuf *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}
