/*
 * fuzz_config.c - the relay's configuration: obr_config_load from an environment and flags,
 * the KEY=VALUE config file it names (load_file, reached through OUTBOX_CONFIG_FILE or
 * --config), obr_config_reload on a changed file, and the AWS settings read from the same
 * environment (obr_aws_config_load and the endpoint URLs built from them).
 *
 * Input: up to four sections, separated by lines holding only "%%":
 *   environment, one NAME=VALUE entry per line
 *   %%
 *   command-line arguments, one per line (the flags after the subcommand)
 *   %%
 *   config file content
 *   %%
 *   config file content at SIGHUP (obr_config_reload)
 * When the input has a config file section, OUTBOX_CONFIG_FILE names it. Whatever path the
 * input gives in OUTBOX_CONFIG_FILE or --config is replaced by that file (a memfd, read as
 * /proc/self/fd/N), so the target never opens anything else.
 *
 * Checked besides memory errors: an accepted configuration is usable (see check_config) and
 * came from a file without over-long lines or NUL bytes; a refused one has a message.
 */
#include "fuzz.h"

#include "send/aws_credentials.h"
#include "send/aws_protocol.h"
#include "util/netaddr.h"
#include "config.h"

#include <fcntl.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAX_LINES 256

static int file_fd = -1;
static char file_path[64];

/* The one scratch file: a memfd, else an unnamed file in /tmp; named through /proc/self/fd. */
static int scratch_file(void)
{
	if (file_fd >= 0)
		return 0;
	file_fd = memfd_create("obr-fuzz-config", MFD_CLOEXEC);
#ifdef O_TMPFILE
	if (file_fd < 0)
		file_fd = open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
#endif
	if (file_fd < 0) {
		char tmpl[] = "/tmp/obr-fuzz-config-XXXXXX";
		file_fd = mkstemp(tmpl);
		if (file_fd >= 0)
			unlink(tmpl);
	}
	if (file_fd < 0)
		return -1;
	snprintf(file_path, sizeof(file_path), "/proc/self/fd/%d", file_fd);
	return 0;
}

static void write_file(const char *content, size_t len)
{
	FUZZ_CHECK(ftruncate(file_fd, 0) == 0);
	size_t off = 0;
	while (off < len) {
		ssize_t n = pwrite(file_fd, content + off, len - off, (off_t)off);
		FUZZ_CHECK(n > 0);
		off += (size_t)n;
	}
}

/* getenv over the input's environment, for obr_aws_config_load: the last entry wins. */
static const char *const *aws_env;

static const char *fuzz_getenv(const char *name)
{
	size_t nl = strlen(name);
	const char *found = NULL;
	for (const char *const *e = aws_env; *e; e++)
		if (!strncmp(*e, name, nl) && (*e)[nl] == '=')
			found = *e + nl + 1;
	return found;
}

/* What holds whatever the table's bounds are (they are config.c's to change): the database is
 * set, the enums are in their lists, no number is negative, the retry cap is not below the
 * base, the channel is an identifier, strings are never empty, the listen address parses. */
static void check_config(const struct obr_config *cfg)
{
	FUZZ_CHECK(cfg->database_url && cfg->database_url[0]);
	FUZZ_CHECK(!strcmp(obr_mode_name(cfg->mode), "listen") || !strcmp(obr_mode_name(cfg->mode), "poll"));
	FUZZ_CHECK(cfg->channel && cfg->channel[0]);
	for (const char *c = cfg->channel; *c; c++)
		FUZZ_CHECK((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_');
	const int64_t numbers[] = {
		cfg->poll_interval_ms, cfg->lease_ms, cfg->retry_base_ms, cfg->retry_max_ms, cfg->failure_limit,
		cfg->http_timeout_ms, cfg->max_in_flight, cfg->batch_size, cfg->claim_limit, cfg->shutdown_grace_ms,
		cfg->health_check_ms, cfg->retention_ms, cfg->retention_batch,
	};
	for (size_t i = 0; i < sizeof(numbers) / sizeof(numbers[0]); i++)
		FUZZ_CHECK(numbers[i] >= 0);
	FUZZ_CHECK(cfg->poll_interval_ms > 0 && cfg->retry_base_ms <= cfg->retry_max_ms);
	FUZZ_CHECK(cfg->log_level >= 0 && cfg->log_level <= 3);
	FUZZ_CHECK(cfg->log_format >= 0 && cfg->log_format <= 1);
	const char *const strings[] = { cfg->ca_file, cfg->allowed_hosts, cfg->log_file, cfg->config_file };
	for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++)
		FUZZ_CHECK(!strings[i] || strings[i][0]);
	if (cfg->listen_addr) {
		char host[OBR_LISTEN_HOST_MAX], why[256];
		unsigned port;
		FUZZ_CHECK(obr_listen_addr_parse(cfg->listen_addr, host, sizeof(host), &port, why, sizeof(why)) == 0);
		FUZZ_CHECK(port <= 65535);
	}
}

/* A file the relay accepted has no line over 8192 bytes (newline included) and no NUL byte:
 * such a line is refused, never cut in two (the tail once read as a setting of its own). */
static void check_file_lines(const char *content, size_t len)
{
	FUZZ_CHECK(memchr(content, '\0', len) == NULL);
	for (size_t start = 0; start < len;) {
		const char *nl = memchr(content + start, '\n', len - start);
		size_t end = nl ? (size_t)(nl - content) + 1 : len;
		FUZZ_CHECK(end - start <= 8192);
		start = end;
	}
}

static void check_message(const char *err, size_t errlen)
{
	FUZZ_CHECK(memchr(err, '\0', errlen) != NULL);
	FUZZ_CHECK(err[0] != '\0');
}

/* The AWS side of the same environment. */
static void aws_settings(const char *const *env)
{
	aws_env = env;
	struct obr_aws_config cfg;
	char err[512], url[2048], why[256], region[OBR_AWS_REGION_MAX];
	if (obr_aws_config_load(&cfg, fuzz_getenv, err, sizeof(err))) {
		check_message(err, sizeof(err));
		return;
	}
	FUZZ_CHECK(cfg.imds_endpoint != NULL);
	(void)obr_aws_sts_url(&cfg, url, sizeof(url));
	(void)obr_aws_container_url(&cfg, url, sizeof(url), why, sizeof(why));
	static const struct {
		enum obr_dest_kind kind;
		const char *target;
	} targets[] = {
		{ OBR_DEST_SQS, "https://sqs.eu-west-1.amazonaws.com/123456789012/orders" },
		{ OBR_DEST_SQS, "https://queue.amazonaws.com/123456789012/orders.fifo" },
		{ OBR_DEST_SNS, "arn:aws:sns:us-east-1:123456789012:events" },
		{ OBR_DEST_SNS, "arn:aws-cn:sns:cn-north-1:123456789012:events.fifo" },
	};
	for (size_t i = 0; i < sizeof(targets) / sizeof(targets[0]); i++) {
		if (!obr_aws_target_region(&cfg, targets[i].kind, targets[i].target, region, sizeof(region)))
			continue;
		if (obr_aws_request_url(&cfg, targets[i].kind, targets[i].target, region, url, sizeof(url)) == 0)
			FUZZ_CHECK(strlen(url) < sizeof(url));
	}
	obr_aws_config_clear(&cfg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_fields f;
	if (size > 64 * 1024 || scratch_file() || fuzz_split(&f, data, size, 4))
		return 0;

	/* the environment, with the file's path wherever the input names one */
	char *env[MAX_LINES + 2];
	size_t nenv = fuzz_lines(f.field[0], env, MAX_LINES);
	char env_file[96];
	snprintf(env_file, sizeof(env_file), "OUTBOX_CONFIG_FILE=%s", file_path);
	for (size_t i = 0; i < nenv; i++)
		if (!strncmp(env[i], "OUTBOX_CONFIG_FILE=", 19) && env[i][19])
			env[i] = env_file;
	if (f.n > 2)
		env[nenv++] = env_file;
	env[nenv] = NULL;

	/* the flags, likewise */
	char *argv[MAX_LINES + 1];
	size_t argc = f.n > 1 ? fuzz_lines(f.field[1], argv, MAX_LINES) : 0;
	char flag_file[96];
	snprintf(flag_file, sizeof(flag_file), "--config=%s", file_path);
	for (size_t i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--config") && i + 1 < argc) {
			if (argv[i + 1][0])
				argv[i + 1] = file_path;
			i++;
		} else if (!strncmp(argv[i], "--config=", 9) && argv[i][9]) {
			argv[i] = flag_file;
		}
	}
	argv[argc] = NULL;

	write_file(f.n > 2 ? f.field[2] : "", f.n > 2 ? f.len[2] : 0);

	struct obr_config cfg;
	char err[512];
	const char *const *cenv = (const char *const *)env;
	const char *const *cargv = (const char *const *)argv;
	if (obr_config_load(&cfg, cenv, (int)argc, cargv, err, sizeof(err)) == 0) {
		check_config(&cfg);
		if (f.n > 2)
			check_file_lines(f.field[2], f.len[2]);
		if (cfg.config_file) {
			FUZZ_CHECK(!strcmp(cfg.config_file, file_path));
			size_t section = f.n > 3 ? 3 : 2;
			if (f.n > 3)
				write_file(f.field[3], f.len[3]);
			if (obr_config_reload(&cfg, err, sizeof(err)) == 0) {
				check_config(&cfg);
				if (f.n > section)
					check_file_lines(f.field[section], f.len[section]);
			} else {
				check_message(err, sizeof(err));
			}
		}
		obr_config_free(&cfg);
	} else {
		check_message(err, sizeof(err));
	}
	aws_settings(cenv);
	fuzz_fields_free(&f);
	return 0;
}
