/* pgarray.c: see pgarray.h. */
#include "pgarray.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void
outbox__pgarray_init(struct outbox__pgarray *a, size_t max)
{
	a->data = NULL;
	a->len = 0;
	a->cap = 0;
	a->max = max;
	a->count = 0;
}

void
outbox__pgarray_free(struct outbox__pgarray *a)
{
	if (a == NULL)
		return;
	free(a->data);
	a->data = NULL;
	a->len = 0;
	a->cap = 0;
	a->count = 0;
}

/* Makes room for extra more bytes plus a NUL, within max. */
static enum outbox_rc
grow(struct outbox__pgarray *a, size_t extra)
{
	size_t need;
	size_t cap;
	char *data;

	if (extra > a->max || a->len > a->max - extra)
		return OUTBOX_E_TOO_BIG;
	need = a->len + extra + 1;
	if (need <= a->cap)
		return OUTBOX_OK;
	/* Doubling keeps appends amortised O(1); max (< SIZE_MAX / 2) caps it. */
	cap = a->cap < 256 ? 256 : a->cap * 2;
	if (cap < need)
		cap = need;
	if (cap > a->max + 1)
		cap = a->max + 1;
	data = realloc(a->data, cap);
	if (data == NULL)
		return OUTBOX_E_NOMEM;
	a->data = data;
	a->cap = cap;
	return OUTBOX_OK;
}

enum outbox_rc
outbox__pgarray_reserve(struct outbox__pgarray *a, size_t hint)
{
	size_t room = a->max - a->len;

	return grow(a, hint < room ? hint : room);
}

enum outbox_rc
outbox__pgarray_add(struct outbox__pgarray *a, const char *elem, size_t len)
{
	size_t specials = 0;
	size_t extra;
	enum outbox_rc rc;
	char *p;

	if (elem == NULL) {
		if ((rc = grow(a, 6)) != OUTBOX_OK) /* "{" or ",", then NULL, room for "}" */
			return rc;
		a->data[a->len++] = a->count == 0 ? '{' : ',';
		memcpy(a->data + a->len, "NULL", 4);
		a->len += 4;
		a->count++;
		return OUTBOX_OK;
	}
	for (size_t i = 0; i < len; i++)
		if (elem[i] == '"' || elem[i] == '\\')
			specials++;
	/* Separator, two quotes and the closing brace: 4. Checked so that nothing overflows. */
	if (a->max < 4 || len > a->max || specials > a->max - len || len + specials > a->max - 4)
		return OUTBOX_E_TOO_BIG;
	extra = len + specials + 4;
	if ((rc = grow(a, extra)) != OUTBOX_OK)
		return rc;
	p = a->data + a->len;
	*p++ = a->count == 0 ? '{' : ',';
	*p++ = '"';
	for (size_t i = 0; i < len; i++) {
		if (elem[i] == '"' || elem[i] == '\\')
			*p++ = '\\';
		*p++ = elem[i];
	}
	*p++ = '"';
	a->len = (size_t)(p - a->data);
	a->count++;
	return OUTBOX_OK;
}

enum outbox_rc
outbox__pgarray_finish(struct outbox__pgarray *a)
{
	enum outbox_rc rc;

	/* add() already reserved the closing brace within max; an empty array needs "{}". */
	if ((rc = grow(a, a->count == 0 ? 2 : 1)) != OUTBOX_OK)
		return rc;
	if (a->count == 0)
		a->data[a->len++] = '{';
	a->data[a->len++] = '}';
	a->data[a->len] = '\0';
	return OUTBOX_OK;
}

int
outbox__format_timestamp(int64_t unix_us, char out[OUTBOX__TIMESTAMP_BUFSZ])
{
	time_t secs;
	struct tm tm;

	if (unix_us < 0 || unix_us > OUTBOX__MAX_UNIX_US)
		return -1;
	secs = (time_t)(unix_us / 1000000);
	if (gmtime_r(&secs, &tm) == NULL)
		return -1;
	snprintf(out, OUTBOX__TIMESTAMP_BUFSZ, "%04d-%02d-%02d %02d:%02d:%02d.%06d+00",
		 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
		 (int)(unix_us % 1000000));
	return 0;
}
