/*
 * usage.c - the command's documentation, written once and printed two ways: as `--help` text
 * and as the outbox-relay(1) man page (`--man`, run by the build). The settings come from the
 * settings table in config.c, so neither can drift from what the parser accepts.
 */
#include "cli/usage.h"

#include "config.h"

#include <stdbool.h>
#include <string.h>

struct command_doc {
	const char *synopsis;
	const char *text;
};

struct section_doc {
	const char *title;
	const char *text;
};

static const char summary[] =
	"delivers rows of a PostgreSQL outbox table to HTTP(S) endpoints, SQS and SNS right after commit";

static const struct command_doc commands[] = {
	{ "outbox-relay [run] [OPTIONS]",
	  "connect to DATABASE_URL, listen and deliver (the default)" },
	{ "outbox-relay migrate [--database URL]",
	  "create or upgrade the outbox schema (safe to run again, and concurrently; only adds to a "
	  "crate-made schema)" },
	{ "outbox-relay status [--json] [--exact] [--database URL]",
	  "rows due, delayed, retrying, parked and processed, the oldest due row, leases by instance, "
	  "the NOTIFY queue and the schema version (see status --help)" },
	{ "outbox-relay requeue (--key UUID... | --partition UUID... | --since TS [--until TS] | "
	  "--until TS | --all) [--dry-run] [--database URL]",
	  "make parked rows due again (clears dead_at, retry_after, last_error; attempts = 0) and notify "
	  "a running relay (see requeue --help)" },
	{ "outbox-relay --help | --version | --man",
	  "this text, the version, or this text as a man page" },
};

static const struct section_doc sections[] = {
	{ "HTTP endpoint",
	  "OUTBOX_LISTEN_ADDR serves GET /health (200 while running), /ready (200 when the database "
	  "connections are up and LISTEN is active, else 503 with the reason) and /metrics (Prometheus "
	  "text format)." },
	{ "systemd",
	  "With NOTIFY_SOCKET set (Type=notify) the relay sends READY=1 once ready, STOPPING=1 at "
	  "SIGTERM/SIGINT, and WATCHDOG=1 when WatchdogSec= is set." },
	{ "Signals",
	  "SIGTERM/SIGINT stop claiming, let in-flight requests finish within the grace period, record "
	  "their results, release leases and exit 0. SIGHUP reopens the log file and rereads the config "
	  "file (settings marked reloadable apply at once; others need a restart)." },
	{ "Exit status",
	  "0 done, 1 runtime error (the HTTP endpoint cannot listen, a database error in a command), 2 "
	  "bad settings or arguments." },
};

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))
#define TEXT_WIDTH 100
#define TEXT_INDENT 36

/* Prints text word-wrapped at TEXT_WIDTH, every line indented by indent; the first line starts
 * at column col (already printed). */
static void wrap(FILE *out, const char *text, int indent, int col)
{
	const char *p = text;
	bool first = true;
	while (*p) {
		size_t word = strcspn(p, " ");
		if (!first && col + 1 + (int)word > TEXT_WIDTH) {
			fprintf(out, "\n%*s", indent, "");
			col = indent;
			first = true;
		}
		if (!first) {
			fputc(' ', out);
			col++;
		}
		fwrite(p, 1, word, out);
		col += (int)word;
		first = false;
		p += word;
		while (*p == ' ')
			p++;
	}
	fputc('\n', out);
}

void obr_usage_print(FILE *out)
{
	fprintf(out, "outbox-relay %s - %s\n\nUsage:\n", OBR_VERSION, summary);
	for (size_t i = 0; i < N_OF(commands); i++) {
		int col = fprintf(out, "  ");
		/* a long synopsis wraps at its own indent; the text starts on a line of its own */
		if (strlen(commands[i].synopsis) + 2 >= TEXT_INDENT) {
			wrap(out, commands[i].synopsis, 6, col);
			fprintf(out, "%*s", TEXT_INDENT, "");
		} else {
			col += fprintf(out, "%s", commands[i].synopsis);
			fprintf(out, "%*s", TEXT_INDENT - col, "");
		}
		wrap(out, commands[i].text, TEXT_INDENT, TEXT_INDENT);
	}

	fprintf(out, "\nSettings (environment variable, or flag; the flag wins):\n");
	struct obr_setting_doc s;
	for (size_t i = 0; obr_config_setting_doc(i, &s); i++) {
		fprintf(out, "  %-26s --%s%s\n      ", s.env, s.flag, s.takes_value ? " VALUE" : "");
		wrap(out, s.help, 6, 6);
		if (s.def)
			fprintf(out, "      default: %s\n", s.def);
	}

	for (size_t i = 0; i < N_OF(sections); i++) {
		fprintf(out, "\n%s: ", sections[i].title);
		wrap(out, sections[i].text, 0, (int)strlen(sections[i].title) + 2);
	}
}

/* roff text: a leading '.' or '\'' would start a request, and '\' escapes; '-' is a hyphen
 * unless escaped, which breaks copying flags from the page. */
static void roff(FILE *out, const char *s)
{
	if (*s == '.' || *s == '\'')
		fputs("\\&", out);
	for (; *s; s++) {
		if (*s == '\\')
			fputs("\\e", out);
		else if (*s == '-')
			fputs("\\-", out);
		else
			fputc(*s, out);
	}
}

static void roff_upper(FILE *out, const char *s)
{
	for (; *s; s++)
		fputc(*s >= 'a' && *s <= 'z' ? *s - 'a' + 'A' : *s, out);
}

void obr_usage_print_man(FILE *out)
{
	fprintf(out, ".TH OUTBOX\\-RELAY 1 \"\" \"outbox-relay %s\" \"User Commands\"\n", OBR_VERSION);
	fprintf(out, ".SH NAME\noutbox\\-relay \\- ");
	roff(out, summary);
	fprintf(out, "\n.SH SYNOPSIS\n");
	for (size_t i = 0; i < N_OF(commands); i++) {
		fprintf(out, ".PP\n.B ");
		roff(out, commands[i].synopsis);
		fprintf(out, "\n.RS\n");
		roff(out, commands[i].text);
		fprintf(out, "\n.RE\n");
	}
	fprintf(out, ".SH DESCRIPTION\n"
	             "An application writes its business rows and an outbox row in one transaction; an "
	             "insert trigger notifies the relay, which claims the row's partition, delivers its "
	             "rows in order and records the result. Delivery is at least once, with an "
	             "x\\-idempotent\\-key on every message; order holds per partition across any "
	             "number of relay instances and crashes.\n");
	fprintf(out, ".SH SETTINGS\n"
	             "Each setting is an environment variable or a flag; the flag wins. "
	             "OUTBOX_CONFIG_FILE names a file of KEY=VALUE lines read before the environment.\n");
	struct obr_setting_doc s;
	for (size_t i = 0; obr_config_setting_doc(i, &s); i++) {
		fprintf(out, ".TP\n.BR ");
		roff(out, s.env);
		fprintf(out, " \", \" \\-\\-");
		roff(out, s.flag);
		fprintf(out, "%s\n", s.takes_value ? " \\fIVALUE\\fR" : "");
		roff(out, s.help);
		fputc('\n', out);
		if (s.def) {
			fprintf(out, "Default: ");
			roff(out, s.def);
			fputc('.', out);
			fputc('\n', out);
		}
		if (s.reloadable)
			fprintf(out, "Reloaded on SIGHUP.\n");
	}
	for (size_t i = 0; i < N_OF(sections); i++) {
		fprintf(out, ".SH ");
		roff_upper(out, sections[i].title);
		fputc('\n', out);
		roff(out, sections[i].text);
		fputc('\n', out);
	}
	fprintf(out, ".SH SEE ALSO\n.BR psql (1),\n.BR pgbouncer (1)\n");
}
