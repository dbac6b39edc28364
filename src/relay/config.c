/*
 * config.c - the settings table and its parser.
 */
#include "config.h"

#include "send/destination.h"
#include "send/webhook_sign.h"
#include "util/log.h"
#include "util/netaddr.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum setting_type {
	T_STRING, T_INT, T_BOOL, T_ENUM,
	T_DURATION, /* "0", or a number with ms, s, m, h or d; stored in milliseconds */
	T_LISTEN, /* host:port or [v6]:port; "off" or empty stores NULL (disabled) */
};

struct setting {
	const char *env;          /* environment variable */
	const char *flag;         /* --flag */
	enum setting_type type;
	size_t offset;            /* into struct obr_config */
	const char *def;          /* default as text; NULL = unset */
	int64_t min, max;         /* T_INT bounds */
	const char *const *choices; /* T_ENUM: index = stored value */
	const char *help;
	bool reloadable;            /* SIGHUP applies a new value from the config file */
};

enum source { SRC_DEFAULT = 0, SRC_FILE, SRC_ENV, SRC_FLAG };

static const char *const mode_choices[] = { "listen", "poll", NULL };
static const char *const level_choices[] = { "error", "warning", "info", "debug", NULL };
static const char *const format_choices[] = { "text", "json", NULL };

#define OFF(field) offsetof(struct obr_config, field)
#define DAY_MS INT64_C(86400000)

static const struct setting settings[] = {
	{ "DATABASE_URL", "database", T_STRING, OFF(database_url), NULL, 0, 0, NULL,
	  "PostgreSQL connection: a libpq URI or conninfo string (required)" },
	{ "OUTBOX_MODE", "mode", T_ENUM, OFF(mode), "listen", 0, 0, mode_choices,
	  "listen: LISTEN/NOTIFY push plus a slow fallback poll; poll: poll only (PgBouncer transaction pooling, managed poolers)" },
	{ "OUTBOX_CHANNEL", "channel", T_STRING, OFF(channel), "outbox", 0, 0, NULL,
	  "notification channel the insert trigger notifies" },
	{ "OUTBOX_POLL_INTERVAL_MS", "poll-interval-ms", T_INT, OFF(poll_interval_ms), NULL, 50, DAY_MS, NULL,
	  "fallback poll interval; default 30000 in listen mode, 1000 in poll mode" },
	{ "OUTBOX_LEASE_MS", "lease-ms", T_INT, OFF(lease_ms), "30000", 1000, DAY_MS, NULL,
	  "partition lease length; renewed every third of it while work is in flight, taken over when "
	  "expired; in listen mode a third of it is also the work connection's statement_timeout" },
	{ "OUTBOX_RETRY_BASE_MS", "retry-base-ms", T_INT, OFF(retry_base_ms), "1000", 1, DAY_MS, NULL,
	  "first retry delay of a failed row; doubles per attempt, with jitter" },
	{ "OUTBOX_RETRY_MAX_MS", "retry-max-ms", T_INT, OFF(retry_max_ms), "300000", 1, 7 * DAY_MS, NULL,
	  "cap of the retry delay" },
	{ "OUTBOX_FAILURE_LIMIT", "failure-limit", T_INT, OFF(failure_limit), "10", 1, 1000000, NULL,
	  "attempts (the crate's count) after which a failing row is parked and its partition moves on" },
	{ "OUTBOX_DELETE_ON_SUCCESS", "delete-on-success", T_BOOL, OFF(delete_on_success), "false", 0, 0, NULL,
	  "delete delivered rows instead of setting processed_at" },
	{ "OUTBOX_SYNCHRONOUS_COMMIT", "synchronous-commit", T_BOOL, OFF(synchronous_commit), "true", 0, 0, NULL,
	  "listen mode: whether delivery results and lease renewals wait for the WAL flush (claims never do); false is faster, but after a PostgreSQL crash rows already delivered may be sent again after newer rows of their partition" },
	{ "OUTBOX_HTTP_TIMEOUT_MS", "http-timeout-ms", T_INT, OFF(http_timeout_ms), "3000", 1, 600000, NULL,
	  "timeout of one HTTP request, connection included" },
	{ "OUTBOX_MAX_IN_FLIGHT", "max-in-flight", T_INT, OFF(max_in_flight), "128", 1, 100000, NULL,
	  "partitions delivered concurrently (each sends one row at a time)" },
	{ "OUTBOX_HOST_MAX_IN_FLIGHT", "host-max-in-flight", T_INT, OFF(host_max_in_flight), "32", 0, 100000, NULL,
	  "HTTP requests in flight to one host (host:port) at most; rows for a host at its limit wait without taking a slot of OUTBOX_MAX_IN_FLIGHT (0: no limit)" },
	{ "OUTBOX_CIRCUIT_FAILURES", "circuit-failures", T_INT, OFF(circuit_failures), "10", 0, 100000, NULL,
	  "consecutive failures of an HTTP host (no answer, timeout, 5xx) that open its circuit: its rows then wait without spending attempts for a cool-down (1 s, doubling while it stays sick, up to 5 min) until one probe request succeeds (0: no circuit breaker)" },
	{ "OUTBOX_BATCH_SIZE", "batch-size", T_INT, OFF(batch_size), "32", 1, 10000, NULL,
	  "rows fetched per partition per query" },
	{ "OUTBOX_FETCH_BYTES", "fetch-bytes", T_INT, OFF(fetch_bytes), "16777216", 65536, INT64_C(1) << 40, NULL,
	  "bytes of row data (payload, destinations, headers) fetched and not yet delivered, at most; one row larger than this is still fetched, alone" },
	{ "OUTBOX_CLAIM_LIMIT", "claim-limit", T_INT, OFF(claim_limit), "256", 1, 100000, NULL,
	  "partitions claimed per query and found per poll" },
	{ "OUTBOX_BATCH_WINDOW_MS", "batch-window-ms", T_INT, OFF(batch_window_ms), "0", 0, 1000, NULL,
	  "listen mode: while notified partitions or results arrive more often than once per window, gather them for up to this long before a claim or results statement: fewer statements and wake-ups per row under load, for up to this much more latency (0: send at once)" },
	{ "OUTBOX_LINGER_MS", "linger-ms", T_INT, OFF(linger_ms), "200", 0, 60000, NULL,
	  "while rows arrive at OUTBOX_LINGER_MIN_RATE or faster, a partition whose rows come less than this far apart stays held this long after its last row, and writers of a held partition skip their NOTIFY (sql/010), which spares their commits PostgreSQL's notify lock; new rows of such partitions are found by one read-only statement every OUTBOX_LINGER_POLL_MS (0: release at once)" },
	{ "OUTBOX_LINGER_MIN_RATE", "linger-min-rate", T_INT, OFF(linger_min_rate), "500", 0, 10000000, NULL,
	  "rows per second the relay must be delivering before partitions linger (0: always)" },
	{ "OUTBOX_LINGER_POLL_MS", "linger-poll-ms", T_INT, OFF(linger_poll_ms), "2", 1, 1000, NULL,
	  "how often the partitions that linger are read for new rows: the latency a row of a lingering partition may gain" },
	{ "OUTBOX_SHUTDOWN_GRACE_MS", "shutdown-grace-ms", T_INT, OFF(shutdown_grace_ms), "8000", 0, 3600000, NULL,
	  "on SIGTERM/SIGINT, how long in-flight requests may take to finish" },
	{ "OUTBOX_HEALTH_CHECK_MS", "health-check-ms", T_INT, OFF(health_check_ms), "0", 0, 3600000, NULL,
	  "interval of the cheap query that proves the listen connection alive; 0 = with each fallback poll, so an idle relay is silent between polls" },
	{ "OUTBOX_TLS_VERIFY", "tls-verify", T_BOOL, OFF(tls_verify), "true", 0, 0, NULL,
	  "verify HTTPS certificates and host names; false is for tests only and logs a warning at start" },
	{ "OUTBOX_ALLOWED_HOSTS", "allowed-hosts", T_STRING, OFF(allowed_hosts), NULL, 0, 0, NULL,
	  "comma-separated destination hosts the relay may call (*.example.com matches subdomains); rows for other hosts are parked; unset = any" },
	{ "OUTBOX_HEADER_ENV", "header-env", T_STRING, OFF(header_env), NULL, 0, 0, NULL,
	  "environment variables an HTTP destination's {{NAME}} header values may read: names and PREFIX_* patterns, separated by spaces or commas; rows asking for others are parked; unset = any; never the relay's own settings and credentials (DATABASE_URL, PG*, AWS_*, OUTBOX_*, LOCAL_ENDPOINT, LOCAL_REGION, proxy, CURL_*, SSL_CERT_*, OPENSSL_*, systemd's), whatever this says" },
	{ "OUTBOX_DENY_PRIVATE_ADDRESSES", "deny-private-addresses", T_BOOL, OFF(deny_private_addresses), "false", 0, 0, NULL,
	  "refuse to connect row destinations to loopback, private, link-local and unique-local addresses (checked after DNS); such rows are parked" },
	{ "OUTBOX_CA_FILE", "ca-file", T_STRING, OFF(ca_file), NULL, 0, 0, NULL,
	  "extra CA bundle (PEM) for HTTPS destinations; the system store is used otherwise" },
	{ "OUTBOX_HTTP_PROXY", "http-proxy", T_STRING, OFF(http_proxy), NULL, 0, 0, NULL,
	  "proxy for destination requests (HTTP, SQS, SNS): http://, https://, socks5:// or socks5h://host:port; unset = no proxy (HTTPS_PROXY, ALL_PROXY and NO_PROXY in the environment are ignored); AWS credential endpoints never use it" },
	{ "OUTBOX_WEBHOOK_SECRET", "webhook-secret", T_STRING, OFF(webhook_secret), NULL, 0, 0, NULL,
	  "sign every HTTP delivery the Standard Webhooks way (webhook-id, webhook-timestamp, webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>) with each of these secrets, whsec_<base64> separated by spaces (two during a rotation: both signatures are sent); a destination with \"signing\": false is not signed; prefer the environment or the config file to the flag (the command line is visible to other users); unset = unsigned" },
	{ "OUTBOX_LOG_LEVEL", "log-level", T_ENUM, OFF(log_level), "info", 0, 0, level_choices,
	  "error, warning, info or debug (reloaded from the config file on SIGHUP)", true },
	{ "OUTBOX_LOG_FORMAT", "log-format", T_ENUM, OFF(log_format), "text", 0, 0, format_choices,
	  "text or json, one event per line (reloaded from the config file on SIGHUP)", true },
	{ "OUTBOX_LOG_FILE", "log-file", T_STRING, OFF(log_file), NULL, 0, 0, NULL,
	  "append the log to this file instead of stderr; reopened on SIGHUP (for logrotate)" },
	{ "OUTBOX_CONFIG_FILE", "config", T_STRING, OFF(config_file), NULL, 0, 0, NULL,
	  "file of KEY=VALUE lines (as contrib/systemd/outbox-relay.env.example) read before the environment; SIGHUP rereads it" },
	{ "OUTBOX_RETENTION", "retention", T_DURATION, OFF(retention_ms), "7d", 0, 3650 * DAY_MS, NULL,
	  "delete processed rows older than this (e.g. 12h, 7d; 0 keeps them), in batches, one instance at a time" },
	{ "OUTBOX_RETENTION_BATCH", "retention-batch", T_INT, OFF(retention_batch), "1000", 1, 100000, NULL,
	  "rows deleted per retention statement (short statements, no long locks)" },
	{ "OUTBOX_LISTEN_ADDR", "listen-addr", T_LISTEN, OFF(listen_addr), "127.0.0.1:9095", 0, 0, NULL,
	  "host:port (IPv6 as [addr]:port) of the HTTP endpoint serving /health, /ready and /metrics; off (or empty) disables it" },
};

#define N_SETTINGS (sizeof(settings) / sizeof(settings[0]))

const char *obr_mode_name(enum obr_mode mode)
{
	return mode_choices[mode];
}

static int apply(struct obr_config *cfg, const struct setting *s, const char *value, const char *source,
                 char *err, size_t errlen)
{
	char *base = (char *)cfg;

	switch (s->type) {
	case T_STRING: {
		char **dst = (char **)(void *)(base + s->offset);
		if (*value == '\0') {
			snprintf(err, errlen, "invalid value for %s (%s): must not be empty", s->env, source);
			return -1;
		}
		char *copy = strdup(value);
		if (!copy) {
			snprintf(err, errlen, "out of memory");
			return -1;
		}
		free(*dst);
		*dst = copy;
		return 0;
	}
	case T_INT: {
		int64_t *dst = (int64_t *)(void *)(base + s->offset);
		char *end;
		errno = 0;
		long long v = strtoll(value, &end, 10);
		if (errno || end == value || *end != '\0') {
			snprintf(err, errlen, "invalid value for %s (%s): \"%s\" is not an integer", s->env, source, value);
			return -1;
		}
		if (v < s->min || v > s->max) {
			snprintf(err, errlen, "invalid value for %s (%s): %lld is out of range %" PRId64 "..%" PRId64,
			         s->env, source, v, s->min, s->max);
			return -1;
		}
		*dst = (int64_t)v;
		return 0;
	}
	case T_BOOL: {
		bool *dst = (bool *)(void *)(base + s->offset);
		if (!strcasecmp(value, "true") || !strcmp(value, "1") || !strcasecmp(value, "yes") || !strcasecmp(value, "on"))
			*dst = true;
		else if (!strcasecmp(value, "false") || !strcmp(value, "0") || !strcasecmp(value, "no") || !strcasecmp(value, "off"))
			*dst = false;
		else {
			snprintf(err, errlen, "invalid value for %s (%s): \"%s\" is not a boolean (true or false)",
			         s->env, source, value);
			return -1;
		}
		return 0;
	}
	case T_DURATION: {
		int64_t *dst = (int64_t *)(void *)(base + s->offset);
		char *end;
		errno = 0;
		long long v = strtoll(value, &end, 10);
		static const struct { const char *unit; int64_t ms; } units[] = {
			{ "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "h", 3600000 }, { "d", DAY_MS },
		};
		int64_t mult = -1;
		for (size_t u = 0; u < sizeof(units) / sizeof(units[0]); u++)
			if (!strcmp(end, units[u].unit))
				mult = units[u].ms;
		if (errno || end == value || v < 0 || (mult < 0 && !(v == 0 && *end == '\0'))) {
			snprintf(err, errlen, "invalid value for %s (%s): \"%s\" is not a duration (e.g. 0, 500ms, 30s, 15m, 12h, 7d)",
			         s->env, source, value);
			return -1;
		}
		if (mult < 0)
			mult = 1;
		if (v > s->max / mult || v * mult < s->min) {
			snprintf(err, errlen, "invalid value for %s (%s): %s is out of range", s->env, source, value);
			return -1;
		}
		*dst = (int64_t)v * mult;
		return 0;
	}
	case T_LISTEN: {
		char **dst = (char **)(void *)(base + s->offset);
		char host[OBR_LISTEN_HOST_MAX], why[256];
		unsigned port;
		char *copy = NULL;
		if (*value != '\0' && strcasecmp(value, "off") != 0) {
			if (obr_listen_addr_parse(value, host, sizeof(host), &port, why, sizeof(why))) {
				snprintf(err, errlen, "invalid value for %s (%s): %s", s->env, source, why);
				return -1;
			}
			copy = strdup(value);
			if (!copy) {
				snprintf(err, errlen, "out of memory");
				return -1;
			}
		}
		free(*dst);
		*dst = copy;
		return 0;
	}
	case T_ENUM: {
		int *dst = (int *)(void *)(base + s->offset);
		for (int i = 0; s->choices[i]; i++) {
			if (!strcasecmp(value, s->choices[i])) {
				*dst = i;
				return 0;
			}
		}
		char list[256] = "";
		for (int i = 0; s->choices[i]; i++) {
			strncat(list, i ? ", " : "", sizeof(list) - strlen(list) - 1);
			strncat(list, s->choices[i], sizeof(list) - strlen(list) - 1);
		}
		snprintf(err, errlen, "invalid value for %s (%s): \"%s\" is not one of %s", s->env, source, value, list);
		return -1;
	}
	}
	return -1;
}

static const struct setting *find_env(const char *name, size_t len)
{
	for (size_t i = 0; i < N_SETTINGS; i++)
		if (strlen(settings[i].env) == len && !strncmp(settings[i].env, name, len))
			return &settings[i];
	return NULL;
}

static const struct setting *find_flag(const char *name, size_t len)
{
	for (size_t i = 0; i < N_SETTINGS; i++)
		if (strlen(settings[i].flag) == len && !strncmp(settings[i].flag, name, len))
			return &settings[i];
	return NULL;
}

#define MAX_FILE_LINE 8192

/* Reads a KEY=VALUE file: # comments, blank lines, optional "export ", optional quotes. */
static int load_file(struct obr_config *cfg, const char *path, bool reload, char *err, size_t errlen)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		snprintf(err, errlen, "cannot read OUTBOX_CONFIG_FILE \"%s\": %s", path, strerror(errno));
		return -1;
	}
	/* getline, not fgets into a fixed buffer: fgets cut a longer line and the loop read its tail
	 * as a line of its own (a long value could smuggle in another setting, such as
	 * OUTBOX_TLS_VERIFY=false), and a NUL byte silently ended a line; both are errors now. */
	char *line = NULL;
	size_t linecap = 0;
	ssize_t len;
	int lineno = 0, rc = 0;
	while (rc == 0 && (len = getline(&line, &linecap, f)) >= 0) {
		lineno++;
		if ((size_t)len > MAX_FILE_LINE) {
			snprintf(err, errlen, "%s:%d: line longer than %d bytes", path, lineno, MAX_FILE_LINE);
			rc = -1;
			break;
		}
		if (memchr(line, '\0', (size_t)len)) {
			snprintf(err, errlen, "%s:%d: NUL byte in the line", path, lineno);
			rc = -1;
			break;
		}
		char *p = line;
		size_t n = (size_t)len;
		while (n && (p[n - 1] == '\n' || p[n - 1] == '\r' || p[n - 1] == ' ' || p[n - 1] == '\t'))
			p[--n] = '\0';
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p == '\0' || *p == '#')
			continue;
		if (!strncmp(p, "export ", 7))
			p += 7;
		char *eq = strchr(p, '=');
		if (!eq) {
			snprintf(err, errlen, "%s:%d: expected KEY=VALUE", path, lineno);
			rc = -1;
			break;
		}
		*eq = '\0';
		char *value = eq + 1;
		size_t vl = strlen(value);
		if (vl >= 2 && (value[0] == '"' || value[0] == '\'') && value[vl - 1] == value[0]) {
			value[vl - 1] = '\0';
			value++;
		}
		const struct setting *s = find_env(p, strlen(p));
		if (!s) {
			snprintf(err, errlen, "%s:%d: unknown setting %s (see --help for the list)", path, lineno, p);
			rc = -1;
			break;
		}
		if (s->offset == OFF(config_file))
			continue;
		size_t idx = (size_t)(s - settings);
		if (cfg->source[idx] > SRC_FILE)
			continue; /* the environment or a flag wins */
		if (reload && !s->reloadable)
			continue;
		char source[300];
		snprintf(source, sizeof(source), "%s:%d", path, lineno);
		rc = apply(cfg, s, value, source, err, errlen);
		cfg->source[idx] = SRC_FILE;
	}
	/* a read error (a directory, EIO) is not an empty file */
	if (rc == 0 && ferror(f)) {
		snprintf(err, errlen, "cannot read OUTBOX_CONFIG_FILE \"%s\": %s", path, strerror(errno));
		rc = -1;
	}
	free(line);
	fclose(f);
	return rc;
}

/* scheme://[user:password@]host[:port][/]: the message never quotes the value (credentials) */
static int check_proxy(const char *url, char *err, size_t errlen)
{
	static const char *const schemes[] = { "http://", "https://", "socks5://", "socks5h://", NULL };
	const char *rest = NULL;
	for (const char *const *sc = schemes; *sc && !rest; sc++)
		if (!strncasecmp(url, *sc, strlen(*sc)))
			rest = url + strlen(*sc);
	bool ok = rest && *rest && *rest != '/' && *rest != ':';
	for (const unsigned char *p = (const unsigned char *)url; ok && *p; p++)
		ok = *p > 32 && *p < 127;
	if (!ok) {
		snprintf(err, errlen, "invalid value for OUTBOX_HTTP_PROXY: use http://, https://, socks5:// or "
		                      "socks5h:// followed by host:port");
		return -1;
	}
	return 0;
}

int obr_config_load(struct obr_config *cfg, const char *const *envp, int argc, const char *const *argv,
                    char *err, size_t errlen)
{
	memset(cfg, 0, sizeof(*cfg));
	_Static_assert(N_SETTINGS <= sizeof(cfg->source), "struct obr_config.source is too small");

	for (size_t i = 0; i < N_SETTINGS; i++)
		if (settings[i].def && apply(cfg, &settings[i], settings[i].def, "default", err, errlen))
			goto fail;

	/* the config file comes first (lowest precedence after the defaults): find it */
	const char *file = NULL;
	for (const char *const *e = envp; e && *e; e++)
		if (!strncmp(*e, "OUTBOX_CONFIG_FILE=", 19))
			file = *e + 19;
	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--config") && i + 1 < argc)
			file = argv[i + 1];
		else if (!strncmp(argv[i], "--config=", 9))
			file = argv[i] + 9;
	}
	if (file && *file && load_file(cfg, file, false, err, errlen))
		goto fail;

	for (const char *const *e = envp; e && *e; e++) {
		const char *eq = strchr(*e, '=');
		if (!eq)
			continue;
		size_t len = (size_t)(eq - *e);
		const struct setting *s = find_env(*e, len);
		if (!s) {
			if (len > 7 && !strncmp(*e, "OUTBOX_", 7)) {
				snprintf(err, errlen, "unknown setting %.*s in the environment (see --help for the list)",
				         (int)len, *e);
				goto fail;
			}
			continue;
		}
		if (apply(cfg, s, eq + 1, "environment", err, errlen))
			goto fail;
		cfg->source[s - settings] = SRC_ENV;
	}

	for (int i = 0; i < argc; i++) {
		const char *arg = argv[i];
		if (strncmp(arg, "--", 2) != 0) {
			snprintf(err, errlen, "unexpected argument \"%s\"", arg);
			goto fail;
		}
		arg += 2;
		const char *eq = strchr(arg, '=');
		size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
		const struct setting *s = find_flag(arg, len);
		if (!s) {
			snprintf(err, errlen, "unknown option --%.*s (see --help)", (int)len, arg);
			goto fail;
		}
		const char *value = eq ? eq + 1 : NULL;
		if (!value) {
			if (s->type == T_BOOL)
				value = "true";
			else if (i + 1 < argc)
				value = argv[++i];
			else {
				snprintf(err, errlen, "option --%s needs a value", s->flag);
				goto fail;
			}
		}
		char source[80];
		snprintf(source, sizeof(source), "--%s", s->flag);
		if (apply(cfg, s, value, source, err, errlen))
			goto fail;
		cfg->source[s - settings] = SRC_FLAG;
	}
	if (!cfg->database_url) {
		snprintf(err, errlen, "DATABASE_URL is not set: give the database as DATABASE_URL or --database");
		goto fail;
	}
	if (obr_conninfo_check(cfg->database_url, err, errlen))
		goto fail;
	if (cfg->poll_interval_ms == 0)
		cfg->poll_interval_ms = cfg->mode == OBR_MODE_POLL ? 1000 : 30000;
	if (cfg->retry_max_ms < cfg->retry_base_ms) {
		snprintf(err, errlen, "invalid value for OUTBOX_RETRY_MAX_MS: %" PRId64 " is below OUTBOX_RETRY_BASE_MS (%" PRId64 ")",
		         cfg->retry_max_ms, cfg->retry_base_ms);
		goto fail;
	}
	if (cfg->header_env && obr_header_env_check(cfg->header_env, err, errlen))
		goto fail;
	if (cfg->http_proxy && check_proxy(cfg->http_proxy, err, errlen))
		goto fail;
	if (cfg->webhook_secret) {
		struct obr_webhook_keys keys; /* checked here, parsed again by the sender that uses them */
		int bad = obr_webhook_keys_parse(cfg->webhook_secret, &keys, err, errlen);
		obr_webhook_keys_clear(&keys);
		if (bad)
			goto fail;
	}
	for (const char *c = cfg->channel; *c; c++) {
		if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_')) {
			snprintf(err, errlen, "invalid value for OUTBOX_CHANNEL: \"%s\" (use lower-case letters, digits and _)",
			         cfg->channel);
			goto fail;
		}
	}
	return 0;

fail:
	obr_config_free(cfg);
	return -1;
}

void obr_config_free(struct obr_config *cfg)
{
	if (!cfg)
		return;
	for (size_t i = 0; i < N_SETTINGS; i++) {
		if (settings[i].type == T_STRING || settings[i].type == T_LISTEN) {
			char **p = (char **)(void *)((char *)cfg + settings[i].offset);
			free(*p);
			*p = NULL;
		}
	}
}

int obr_conninfo_check(const char *conninfo, char *err, size_t errlen)
{
	char *msg = NULL;
	PQconninfoOption *opts = PQconninfoParse(conninfo, &msg);
	if (opts) {
		PQconninfoFree(opts);
		return 0;
	}
	/* libpq's message may quote the offending part, a password included: not repeated here */
	PQfreemem(msg);
	snprintf(err, errlen, "invalid value for DATABASE_URL: not a valid libpq URI or conninfo string "
	                      "(check its syntax and the percent-encoding of the user and password)");
	return -1;
}

int obr_config_reload(struct obr_config *cfg, char *err, size_t errlen)
{
	if (!cfg->config_file) {
		snprintf(err, errlen, "no OUTBOX_CONFIG_FILE to reload");
		return -1;
	}
	/* check the whole file on a scratch copy first: a bad file changes nothing */
	struct obr_config scratch;
	memset(&scratch, 0, sizeof(scratch));
	for (size_t i = 0; i < N_SETTINGS; i++)
		if (settings[i].def && apply(&scratch, &settings[i], settings[i].def, "default", err, errlen))
			break;
	int rc = load_file(&scratch, cfg->config_file, false, err, errlen);
	obr_config_free(&scratch);
	if (rc)
		return -1;
	return load_file(cfg, cfg->config_file, true, err, errlen);
}

bool obr_config_setting_doc(size_t i, struct obr_setting_doc *out)
{
	if (i >= N_SETTINGS)
		return false;
	const struct setting *s = &settings[i];
	out->env = s->env;
	out->flag = s->flag;
	out->def = s->def;
	out->help = s->help;
	out->takes_value = s->type != T_BOOL;
	out->reloadable = s->reloadable;
	return true;
}
