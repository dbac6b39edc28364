/*
 * destination.h - a row's destinations and headers, parsed and checked before anything is sent.
 *
 * Pure functions of the row's text (no I/O), so every malformed shape is unit-tested. A row
 * that does not parse is parked by the relay with the message this module writes. What a row
 * may hold is liboutbox's row format (src/lib/rowformat.h), applied in its read mode: a row
 * the C library or the SQL helpers would refuse to write is parked here.
 *
 * Shapes (outbox-pattern-processor 0.3.6, tried in its order SQS, SNS, HTTP):
 *   {"queue_url": "..."}                                   SQS
 *   {"topic_arn": "..."}                                   SNS
 *   {"url": "...", "headers": {...}|null, "method": "POST"|"PUT"|"PATCH"|null}   HTTP
 */
#ifndef OBR_DESTINATION_H
#define OBR_DESTINATION_H

#include <stdbool.h>
#include <stddef.h>

#include "outbox.h"

#define OBR_MAX_DESTINATIONS OUTBOX_MAX_DESTINATIONS
#define OBR_MAX_HEADERS OUTBOX_MAX_HEADERS

enum obr_dest_kind { OBR_DEST_HTTP, OBR_DEST_SQS, OBR_DEST_SNS };
#define OBR_DEST_KINDS (OBR_DEST_SNS + 1) /* the kinds above: per-kind arrays */
enum obr_http_method { OBR_POST, OBR_PUT, OBR_PATCH };

struct obr_header {
	char *name;
	char *value;
};

struct obr_destination {
	enum obr_dest_kind kind;
	int index;                      /* position in the row's destinations array */
	bool already_sent;              /* listed in sent_destinations: skip on this attempt */
	char *target;                   /* url, queue_url or topic_arn */
	enum obr_http_method method;
	bool no_signing;                /* HTTP: "signing": false, sent without webhook signatures */
	/* HTTP: final request headers (destination's, then the row's; x-idempotent-key last).
	 * SQS/SNS: the row's headers (message attributes). */
	struct obr_header *headers;
	int nheaders, cap;
};

struct obr_plan {
	struct obr_destination *dests;
	int ndests;
};

/* Returns 0, or -1 with the reason in err (suitable for last_error). getenv_fn resolves
 * {{ENV_NAME}} header values (NULL = getenv), except the relay's own settings and credentials
 * (outbox__env_refused) and those OUTBOX_HEADER_ENV leaves out: a row asking for one fails,
 * naming the variable, never its value. sent_destinations is PostgreSQL's int[] text
 * ("{0,2}") or NULL. */
int obr_plan_parse(struct obr_plan *plan, const char *idempotent_key, const char *destinations_json,
                   const char *headers_json, const char *sent_destinations, const char *(*getenv_fn)(const char *),
                   char *err, size_t errlen);
void obr_plan_clear(struct obr_plan *plan);

/* Whether url's host is in allowlist ("a.example.com,*.b.example.com"; case-insensitive; a
 * "*." entry matches subdomains, not the bare domain). A NULL allowlist allows every host. */
bool obr_host_allowed(const char *url, const char *allowlist);

/* OUTBOX_HEADER_ENV: variable names and PREFIX_* patterns, separated by spaces or commas,
 * that {{NAME}} header values may read; NULL allows every variable but the refused ones.
 * obr_header_env_check validates it (0, or -1 with a message naming the setting);
 * obr_header_env_use makes it the process's rule for obr_plan_parse (borrowed: spec must live
 * until it is replaced); obr_header_env_allowed is the match itself. */
int obr_header_env_check(const char *spec, char *err, size_t errlen);
void obr_header_env_use(const char *spec);
bool obr_header_env_allowed(const char *name, const char *spec);

const char *obr_dest_kind_name(enum obr_dest_kind kind);
const char *obr_http_method_name(enum obr_http_method method);

#endif
