/*
 * log.h - one event per line on stderr, text or JSON, filtered by level before formatting.
 *
 * The log is process-wide (a daemon has one stderr); everything else lives in handles.
 * Messages follow PostgreSQL's style: lower case, no trailing period, details as key=value.
 */
#ifndef OBR_LOG_H
#define OBR_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

enum obr_log_level {
	OBR_LOG_ERROR = 0,
	OBR_LOG_WARN = 1,
	OBR_LOG_INFO = 2,
	OBR_LOG_DEBUG = 3,
};

enum obr_log_format {
	OBR_LOG_TEXT = 0,
	OBR_LOG_JSON = 1,
};

void obr_log_configure(enum obr_log_level level, enum obr_log_format format);
/* Sends stderr (our log, and anything a library prints) to path, appending; called again on
 * SIGHUP after logrotate moved the file. Returns 0, or -1 with errno set. */
int obr_log_open_file(const char *path);
bool obr_log_enabled(enum obr_log_level level);
void obr_log_write(enum obr_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A fact of an event, for OUTBOX_LOG_FORMAT=json: each becomes a key of the line's object, next
 * to "msg" (text lines show only the message, which says the same in words). */
enum obr_log_field_type { OBR_LOGF_STR, OBR_LOGF_INT };
struct obr_log_field {
	const char *key;            /* a literal: row, partition, attempt, dest_kind, host, ... */
	enum obr_log_field_type type;
	const char *s;              /* OBR_LOGF_STR; NULL leaves the field out */
	long long i;                /* OBR_LOGF_INT */
};
#define OBR_LOGF_S(k, v) ((struct obr_log_field){ .key = (k), .type = OBR_LOGF_STR, .s = (v) })
#define OBR_LOGF_I(k, v) ((struct obr_log_field){ .key = (k), .type = OBR_LOGF_INT, .i = (long long)(v) })

void obr_log_write_fields(enum obr_log_level level, const struct obr_log_field *fields, size_t nfields,
                          const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* obr_log_event(OBR_LOG_WARN, OBR_LOGF(OBR_LOGF_S("row", key), OBR_LOGF_I("attempt", n)), "...", ...) */
#define OBR_LOGF(...) (const struct obr_log_field[]){ __VA_ARGS__ }, \
	sizeof((const struct obr_log_field[]){ __VA_ARGS__ }) / sizeof(struct obr_log_field)
#define obr_log_event(level, ...) \
	do { if (obr_log_enabled(level)) obr_log_write_fields((level), __VA_ARGS__); } while (0)

/* Arguments are evaluated only when the level is enabled. */
#define obr_log(level, ...) \
	do { if (obr_log_enabled(level)) obr_log_write((level), __VA_ARGS__); } while (0)
#define obr_log_error(...) obr_log(OBR_LOG_ERROR, __VA_ARGS__)
#define obr_log_warn(...)  obr_log(OBR_LOG_WARN, __VA_ARGS__)
#define obr_log_info(...)  obr_log(OBR_LOG_INFO, __VA_ARGS__)
#define obr_log_debug(...) obr_log(OBR_LOG_DEBUG, __VA_ARGS__)

#endif
