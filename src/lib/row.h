/*
 * row.h: the body of struct outbox_row, shared by row.c (building) and insert.c (sending).
 */
#ifndef OUTBOX_ROW_H
#define OUTBOX_ROW_H

#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

#include "outbox.h"

/* How rows are serialised: compact, and URLs stay readable ("/" is not escaped). */
#define OUTBOX__JSON_FLAGS (JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)

struct outbox_row {
	char idempotent_key[OUTBOX_UUID_STRLEN]; /* lowercase text */
	char partition_key[OUTBOX_UUID_STRLEN];  /* lowercase text */
	json_object *destinations;               /* owned; always an array */
	json_object *headers;                    /* owned; an object, or NULL for SQL NULL */
	char *payload;                           /* owned */
	size_t payload_len;
	int64_t created_at_us;    /* client clock when built, Unix microseconds */
	int64_t process_after_us; /* created_at_us unless delayed */
};

/*
 * What can only be checked on the finished row, before it is inserted: at least one
 * destination, and no HTTP request with more than OUTBOX_MAX_HEADERS headers once the
 * destination's, the row's and x-idempotent-key are merged as the relay merges them. index
 * names the row in the message.
 */
enum outbox_rc outbox__row_check(const struct outbox_row *row, size_t index,
				 struct outbox_error *err);

#endif /* OUTBOX_ROW_H */
