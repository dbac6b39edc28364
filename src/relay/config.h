/*
 * config.h - every setting of the relay: an environment variable and a flag with the same
 * meaning, one declarative table that drives parsing, validation, defaults and --help.
 *
 * Precedence: built-in default < environment < command-line flag. A bad value, or an unknown
 * OUTBOX_* variable or flag, is an error that names the setting: the relay never starts
 * with a silently wrong value.
 */
#ifndef OBR_CONFIG_H
#define OBR_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

enum obr_mode {
	OBR_MODE_LISTEN = 0,   /* LISTEN/NOTIFY push plus a slow fallback poll */
	OBR_MODE_POLL = 1,     /* poll only: no session state, works through transaction poolers */
};

struct obr_config {
	char *database_url;
	enum obr_mode mode;
	char *channel;
	int64_t poll_interval_ms;      /* 0 = mode's default, resolved by obr_config_load */
	int64_t lease_ms;
	int64_t retry_base_ms;
	int64_t retry_max_ms;
	int64_t failure_limit;
	bool delete_on_success;
	bool synchronous_commit;       /* the work connection's own commits wait for the WAL flush */
	int64_t http_timeout_ms;
	int64_t max_in_flight;
	int64_t host_max_in_flight;
	int64_t circuit_failures;
	int64_t batch_size;
	int64_t claim_limit;
	int64_t fetch_bytes;           /* row data fetched and not delivered yet, at most (one row more) */
	int64_t batch_window_ms;       /* listen mode: gather claims and results this long first */
	int64_t linger_ms;             /* a busy partition stays held this long after its last row */
	int64_t linger_min_rate;       /* ... while the relay delivers at least this many rows/s */
	int64_t linger_poll_ms;        /* lingering partitions are read this often */
	int64_t shutdown_grace_ms;
	int64_t health_check_ms;
	char *ca_file;
	bool tls_verify;
	char *allowed_hosts;           /* comma-separated host names, *.suffix wildcards; NULL = any */
	char *header_env;              /* variables {{NAME}} header values may read; NULL = any not refused */
	bool deny_private_addresses;
	char *http_proxy;              /* OUTBOX_HTTP_PROXY for destination requests; NULL = none */
	char *webhook_secret;          /* OUTBOX_WEBHOOK_SECRET: whsec_ keys signing HTTP deliveries; NULL = unsigned */
	int log_level;                 /* enum obr_log_level */
	int log_format;                /* enum obr_log_format */
	char *listen_addr;             /* /health, /ready, /metrics endpoint; NULL = disabled */
	int64_t retention_ms;          /* processed rows older than this are deleted; 0 = never */
	int64_t retention_batch;
	char *log_file;                /* NULL = stderr */
	char *config_file;             /* KEY=VALUE file read at start and, for reloadable settings, on SIGHUP */
	unsigned char source[64];      /* per setting: where its value came from (internal) */
};

/* Fills cfg from defaults, the environment (envp-style array) and argv flags. argv holds only
 * the flags (subcommand already removed). Returns 0, or -1 with a message in err. */
int obr_config_load(struct obr_config *cfg, const char *const *envp, int argc, const char *const *argv,
                    char *err, size_t errlen);
void obr_config_free(struct obr_config *cfg);

/* SIGHUP: rereads the config file and applies the settings that can change while running
 * (log level and format) unless the environment or a flag set them. Other changed settings
 * are reported as needing a restart. Returns 0, or -1 with a message (nothing applied). */
int obr_config_reload(struct obr_config *cfg, char *err, size_t errlen);

/* One setting as documentation: what --help and the man page print (cli/usage.c). */
struct obr_setting_doc {
	const char *env;            /* environment variable */
	const char *flag;           /* without the leading -- */
	const char *def;            /* default as text, or NULL */
	const char *help;
	bool takes_value;           /* false for switches (booleans) */
	bool reloadable;            /* SIGHUP applies a new value from the config file */
};

/* The i-th setting of the table; false past the last one. */
bool obr_config_setting_doc(size_t i, struct obr_setting_doc *out);

const char *obr_mode_name(enum obr_mode mode);

/* Whether conninfo parses as a libpq URI or conninfo string; the message never quotes it. */
int obr_conninfo_check(const char *conninfo, char *err, size_t errlen);

#endif
