/*
 * main.c - the outbox-relay command: run (the default), migrate, status, requeue, --help,
 * --version.
 */
#include "admin/admin.h"
#include "config.h"
#include "util/log.h"
#include "db/migrate.h"
#include "cli/ops.h"
#include "cli/usage.h"
#include "engine/relay.h"
#include "admin/sdnotify.h"
#include "send/destination.h"
#include "util/clock.h"

#include <curl/curl.h>
#include <errno.h>
#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

struct daemon_ctx {
	struct obr_relay *relay;
	struct event_base *base;
	struct obr_config *cfg;
	int signals;
};

/* SIGHUP: reopen the log file (after logrotate), reread the reloadable settings. */
static void reload(struct daemon_ctx *d)
{
	char err[1024];
	if (d->cfg->log_file && obr_log_open_file(d->cfg->log_file))
		obr_log_error("could not reopen OUTBOX_LOG_FILE \"%s\": %m", d->cfg->log_file);
	if (d->cfg->config_file) {
		if (obr_config_reload(d->cfg, err, sizeof(err))) {
			obr_log_error("SIGHUP: configuration not reloaded: %s", err);
			return;
		}
		obr_log_configure((enum obr_log_level)d->cfg->log_level, (enum obr_log_format)d->cfg->log_format);
	}
	obr_log_info("SIGHUP: log reopened%s", d->cfg->config_file ? ", log level and format reloaded" : "");
}

static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
	obr_sd_notify("WATCHDOG=1");
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	struct daemon_ctx *d = arg;
	if (sig == SIGHUP) {
		reload(d);
		return;
	}
	if (++d->signals > 1) {
		obr_log_warn("second signal: exiting now");
		event_base_loopbreak(d->base);
		return;
	}
	obr_sd_notify("STOPPING=1");
	obr_relay_shutdown(d->relay);
}

static int run(int argc, char **argv)
{
	struct obr_config cfg;
	char err[1024];
	int rc = 1;

	if (obr_config_load(&cfg, (const char *const *)environ, argc, (const char *const *)argv, err, sizeof(err))) {
		fprintf(stderr, "outbox-relay: %s\n", err);
		return 2;
	}
	obr_log_configure((enum obr_log_level)cfg.log_level, (enum obr_log_format)cfg.log_format);
	obr_header_env_use(cfg.header_env); /* checked by obr_config_load; lives as long as cfg */
	if (cfg.log_file && obr_log_open_file(cfg.log_file)) {
		fprintf(stderr, "outbox-relay: invalid value for OUTBOX_LOG_FILE: cannot open \"%s\": %s\n", cfg.log_file,
		        strerror(errno));
		obr_config_free(&cfg);
		return 2;
	}
	srandom((unsigned)time(NULL) ^ (unsigned)getpid());
	signal(SIGPIPE, SIG_IGN);

	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		obr_log_error("could not initialise libcurl");
		obr_config_free(&cfg);
		return 1;
	}
	struct daemon_ctx d = { .cfg = &cfg };
	struct event *sigs[3] = { NULL, NULL, NULL };
	struct event *watchdog = NULL;
	struct obr_admin *admin = NULL;
	d.base = event_base_new();
	if (!d.base)
		goto out;
	d.relay = obr_relay_new(d.base, &cfg);
	if (!d.relay) {
		obr_log_error("could not create the relay (out of memory?)");
		goto out;
	}
	int signums[] = { SIGTERM, SIGINT, SIGHUP };
	for (int i = 0; i < 3; i++) {
		sigs[i] = evsignal_new(d.base, signums[i], on_signal, &d);
		if (!sigs[i] || event_add(sigs[i], NULL))
			goto out;
	}
	if (cfg.listen_addr) {
		/* before connecting: a port in use is a configuration error, reported at once */
		admin = obr_admin_new(d.base, cfg.listen_addr, d.relay, err, sizeof(err));
		if (!admin) {
			obr_log_error("%s", err);
			goto out;
		}
	}
	uint64_t wd_usec = obr_sd_watchdog_usec();
	if (wd_usec) {
		uint64_t half = wd_usec / 2 < 1000 ? 1000 : wd_usec / 2;   /* never a busy loop */
		struct timeval tv = obr_timeval_from_us((int64_t)half);
		watchdog = event_new(d.base, -1, EV_PERSIST, on_watchdog, NULL);
		if (!watchdog || event_add(watchdog, &tv))
			goto out;
		obr_sd_notify("WATCHDOG=1");
	}
	if (obr_relay_start(d.relay))
		goto out;
	event_base_dispatch(d.base);
	obr_log_info("outbox-relay stopped");
	rc = 0;
out:
	for (int i = 0; i < 3; i++)
		if (sigs[i])
			event_free(sigs[i]);
	if (watchdog)
		event_free(watchdog);
	obr_admin_free(admin);
	obr_relay_free(d.relay);
	if (d.base)
		event_base_free(d.base);
	curl_global_cleanup();
	obr_header_env_use(NULL);
	obr_config_free(&cfg);
	return rc;
}

static int migrate(int argc, char **argv)
{
	const char *url = getenv("DATABASE_URL");
	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--database") && i + 1 < argc)
			url = argv[++i];
		else if (!strncmp(argv[i], "--database=", 11))
			url = argv[i] + 11;
		else if (!strcmp(argv[i], "--help")) {
			obr_usage_print(stdout);
			return 0;
		} else {
			fprintf(stderr, "outbox-relay migrate: unknown argument \"%s\"\n", argv[i]);
			return 2;
		}
	}
	if (!url || !*url) {
		fprintf(stderr, "outbox-relay migrate: DATABASE_URL is not set: give the database as DATABASE_URL or --database\n");
		return 2;
	}
	return obr_migrate(url);
}

int main(int argc, char **argv)
{
	if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help"))) {
		obr_usage_print(stdout);
		return 0;
	}
	if (argc > 1 && !strcmp(argv[1], "--man")) {
		obr_usage_print_man(stdout);
		return 0;
	}
	if (argc > 1 && (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V"))) {
		printf("outbox-relay %s\n", OBR_VERSION);
		return 0;
	}
	if (argc > 1 && !strcmp(argv[1], "migrate"))
		return migrate(argc - 2, argv + 2);
	if (argc > 1 && !strcmp(argv[1], "status"))
		return obr_ops_status(argc - 2, argv + 2);
	if (argc > 1 && !strcmp(argv[1], "requeue"))
		return obr_ops_requeue(argc - 2, argv + 2);
	if (argc > 1 && !strcmp(argv[1], "run"))
		return run(argc - 2, argv + 2);
	if (argc > 1 && argv[1][0] != '-') {
		fprintf(stderr, "outbox-relay: unknown command \"%s\" (see --help)\n", argv[1]);
		return 2;
	}
	return run(argc - 1, argv + 1);
}
