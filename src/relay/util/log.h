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

/* Arguments are evaluated only when the level is enabled. */
#define obr_log(level, ...) \
	do { if (obr_log_enabled(level)) obr_log_write((level), __VA_ARGS__); } while (0)
#define obr_log_error(...) obr_log(OBR_LOG_ERROR, __VA_ARGS__)
#define obr_log_warn(...)  obr_log(OBR_LOG_WARN, __VA_ARGS__)
#define obr_log_info(...)  obr_log(OBR_LOG_INFO, __VA_ARGS__)
#define obr_log_debug(...) obr_log(OBR_LOG_DEBUG, __VA_ARGS__)

#endif
