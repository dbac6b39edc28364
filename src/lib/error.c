/* error.c: see error.h. */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *
outbox_rc_str(enum outbox_rc rc)
{
	switch (rc) {
	case OUTBOX_OK:
		return "ok";
	case OUTBOX_E_INVALID:
		return "invalid argument";
	case OUTBOX_E_NOMEM:
		return "out of memory";
	case OUTBOX_E_TOO_BIG:
		return "too big";
	case OUTBOX_E_DB:
		return "database error";
	}
	return "unknown error";
}

/*
 * A message cut at the buffer's end may end inside a multibyte character; drop the partial
 * character so that whoever logs the message never emits invalid UTF-8.
 */
static void
trim_partial_utf8(char *s, size_t len)
{
	size_t i = len;
	size_t need;
	unsigned char lead;

	/* Walk back over continuation bytes (10xxxxxx) to the lead byte, at most 3. */
	while (i > 0 && len - i < 3 && ((unsigned char)s[i - 1] & 0xC0) == 0x80)
		i--;
	if (i == 0)
		return;
	lead = (unsigned char)s[i - 1];
	if (lead < 0x80)
		return; /* ASCII: nothing was cut */
	if ((lead & 0xE0) == 0xC0)
		need = 2;
	else if ((lead & 0xF0) == 0xE0)
		need = 3;
	else if ((lead & 0xF8) == 0xF0)
		need = 4;
	else
		return; /* not UTF-8 at all: leave it to the reader */
	if (len - (i - 1) < need)
		s[i - 1] = '\0';
}

static void OUTBOX_PRINTF(4, 0)
vfill(struct outbox_error *err, enum outbox_rc code, const char *sqlstate, const char *fmt,
      va_list ap)
{
	int n;

	err->code = code;
	err->sqlstate[0] = '\0';
	if (sqlstate != NULL && strlen(sqlstate) == 5)
		memcpy(err->sqlstate, sqlstate, 6);
	n = vsnprintf(err->message, sizeof(err->message), fmt, ap);
	if (n < 0)
		snprintf(err->message, sizeof(err->message), "%s", outbox_rc_str(code));
	else if ((size_t)n >= sizeof(err->message))
		trim_partial_utf8(err->message, sizeof(err->message) - 1);
}

enum outbox_rc
outbox__fail(struct outbox_error *err, enum outbox_rc code, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL)
		return code;
	va_start(ap, fmt);
	vfill(err, code, NULL, fmt, ap);
	va_end(ap);
	return code;
}

enum outbox_rc
outbox__fail_db(struct outbox_error *err, const char *sqlstate, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL)
		return OUTBOX_E_DB;
	va_start(ap, fmt);
	vfill(err, OUTBOX_E_DB, sqlstate, fmt, ap);
	va_end(ap);
	return OUTBOX_E_DB;
}
