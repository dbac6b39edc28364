/*
 * error.h: filling a caller's struct outbox_error.
 *
 * Every failure path of the library goes through outbox__fail, so the rules (err may be NULL,
 * the message is bounded and cut on a UTF-8 character boundary) hold everywhere.
 */
#ifndef OUTBOX_ERROR_H
#define OUTBOX_ERROR_H

#include "outbox.h"

#if defined(__GNUC__) || defined(__clang__)
#define OUTBOX_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define OUTBOX_PRINTF(f, a)
#endif

/* Fills err (when not NULL) with code and the formatted message; returns code. */
enum outbox_rc outbox__fail(struct outbox_error *err, enum outbox_rc code, const char *fmt, ...)
	OUTBOX_PRINTF(3, 4);

/* The same for OUTBOX_E_DB, recording the SQLSTATE (NULL or "" when there is none). */
enum outbox_rc outbox__fail_db(struct outbox_error *err, const char *sqlstate, const char *fmt, ...)
	OUTBOX_PRINTF(3, 4);

#endif /* OUTBOX_ERROR_H */
