/*
 * log.c - line-oriented logging to stderr.
 */
#include "util/log.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static enum obr_log_level current_level = OBR_LOG_INFO;
static enum obr_log_format current_format = OBR_LOG_TEXT;

static const char *const level_names[] = { "error", "warning", "info", "debug" };

void obr_log_configure(enum obr_log_level level, enum obr_log_format format)
{
	current_level = level;
	current_format = format;
}

int obr_log_open_file(const char *path)
{
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (fd < 0)
		return -1;
	if (dup2(fd, STDERR_FILENO) < 0) {
		close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

bool obr_log_enabled(enum obr_log_level level)
{
	return level <= current_level;
}

/* JSON string escaping for the message; control characters become \u00XX. */
static size_t json_escape(char *dst, size_t cap, const char *src)
{
	size_t o = 0;
	for (const unsigned char *s = (const unsigned char *)src; *s && o + 7 < cap; s++) {
		if (*s == '"' || *s == '\\') {
			dst[o++] = '\\';
			dst[o++] = (char)*s;
		} else if (*s < 0x20) {
			o += (size_t)snprintf(dst + o, cap - o, "\\u%04x", *s);
		} else {
			dst[o++] = (char)*s;
		}
	}
	dst[o] = '\0';
	return o;
}

/* Keys of the line's own object: a field may not take their place. */
static bool reserved_key(const char *key)
{
	return !strcmp(key, "ts") || !strcmp(key, "level") || !strcmp(key, "pid") || !strcmp(key, "msg");
}

static void write_line(enum obr_log_level level, const struct obr_log_field *fields, size_t nfields,
                       const char *fmt, va_list ap)
{
	char msg[4096];
	char line[12288];
	char ts[40];
	struct timespec now;
	struct tm tm;

	vsnprintf(msg, sizeof(msg), fmt, ap);

	/* one event per line: a newline inside a message would split it */
	for (char *p = msg; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';

	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	size_t n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(ts + n, sizeof(ts) - n, ".%03ldZ", now.tv_nsec / 1000000);

	size_t len;
	if (current_format == OBR_LOG_JSON) {
		char esc[sizeof(msg) * 2];
		json_escape(esc, sizeof(esc), msg);
		len = (size_t)snprintf(line, sizeof(line), "{\"ts\":\"%s\",\"level\":\"%s\",\"pid\":%d,\"msg\":\"%s\"",
		                       ts, level_names[level], (int)getpid(), esc);
		/* a field goes in whole or not at all, so a long line still closes its object */
		char field[sizeof(esc) / 2 + 160];
		for (size_t i = 0; i < nfields; i++) {
			const struct obr_log_field *f = &fields[i];
			if (reserved_key(f->key) || (f->type == OBR_LOGF_STR && !f->s))
				continue;
			int w;
			if (f->type == OBR_LOGF_INT) {
				w = snprintf(field, sizeof(field), ",\"%s\":%lld", f->key, f->i);
			} else {
				json_escape(esc, sizeof(esc) / 2, f->s);    /* a field is at most half a message */
				w = snprintf(field, sizeof(field), ",\"%s\":\"%s\"", f->key, esc);
			}
			if (w < 0 || (size_t)w >= sizeof(field) || len + (size_t)w + 3 > sizeof(line))
				continue;
			memcpy(line + len, field, (size_t)w);
			len += (size_t)w;
		}
		len += (size_t)snprintf(line + len, sizeof(line) - len, "}\n");
	} else {
		int w = snprintf(line, sizeof(line), "%s [%d] %s: %s\n", ts, (int)getpid(), level_names[level], msg);
		if (w < 0)
			return;
		len = (size_t)w;
		if (len >= sizeof(line)) {
			len = sizeof(line) - 1;
			line[len - 1] = '\n';
		}
	}
	/* a single write keeps lines whole when several processes share the file */
	ssize_t w = write(STDERR_FILENO, line, len);
	(void)w;
}

void obr_log_write(enum obr_log_level level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	write_line(level, NULL, 0, fmt, ap);
	va_end(ap);
}

void obr_log_write_fields(enum obr_log_level level, const struct obr_log_field *fields, size_t nfields,
                          const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	write_line(level, fields, nfields, fmt, ap);
	va_end(ap);
}
