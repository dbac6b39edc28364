/*
 * pgclient.c - obr-test-pg URL SCENARIO: one db/pg.c connection on a libevent loop.
 *
 *   statement-timeout  obr_pg_set_statement_timeout(200 ms), then SELECT pg_sleep(30):
 *                      prints "sqlstate CODE" of the failed statement
 *   free-pending       frees the connection while a statement runs: prints "callback" if
 *                      pg.c called the owner back from obr_pg_free, then "freed"
 *   reset-backoff      obr_pg_reset as soon as each session is up (as for a read-only
 *                      server), 5 times: the log shows the reconnect delays
 *
 * Exits 0 when the scenario ran to its end, 1 otherwise; the log goes to stderr.
 */
#include "db/pg.h"
#include "util/log.h"

#include <event2/event.h>
#include <stdio.h>
#include <string.h>

struct run {
	struct event_base *base;
	struct obr_pg *pg;
	const char *scenario;
	struct event *later;
	int connects;
	int rc;
};

static void on_result(void *arg, const PGresult *res, const char *err)
{
	struct run *r = arg;
	if (!strcmp(r->scenario, "free-pending")) {
		printf("callback\n");
		fflush(stdout);
		return;
	}
	printf("sqlstate %s\n", res ? obr_pg_sqlstate(res) : "none");
	fflush(stdout);
	r->rc = 0;
	event_base_loopbreak(r->base);
}

static void on_later(evutil_socket_t fd, short what, void *arg)
{
	struct run *r = arg;
	if (!strcmp(r->scenario, "free-pending")) {
		obr_pg_free(r->pg); /* the statement is still running */
		r->pg = NULL;
		printf("freed\n");
		fflush(stdout);
		r->rc = 0;
		event_base_loopbreak(r->base);
		return;
	}
	/* reset-backoff: from the loop, not from inside pg.c's callback */
	if (r->connects >= 5) {
		r->rc = 0;
		event_base_loopbreak(r->base);
		return;
	}
	obr_pg_reset(r->pg, "test reset");
}

static void on_connected(void *arg)
{
	struct run *r = arg;
	r->connects++;
	if (!strcmp(r->scenario, "reset-backoff")) {
		struct timeval now = { 0, 0 };
		evtimer_add(r->later, &now);
		return;
	}
	if (obr_pg_query(r->pg, "SELECT pg_sleep(30)", 0, NULL, on_result, r) != 0) {
		event_base_loopbreak(r->base);
		return;
	}
	if (!strcmp(r->scenario, "free-pending")) {
		struct timeval soon = { 0, 100000 };
		evtimer_add(r->later, &soon);
	}
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: obr-test-pg URL statement-timeout|free-pending|reset-backoff\n");
		return 2;
	}
	obr_log_configure(OBR_LOG_DEBUG, OBR_LOG_TEXT);
	struct run r = { .scenario = argv[2], .rc = 1 };
	r.base = event_base_new();
	r.later = evtimer_new(r.base, on_later, &r);
	struct obr_pg_callbacks cb = { on_connected, NULL, NULL };
	r.pg = obr_pg_new(r.base, argv[1], "obr-test-pg", NULL, NULL, &cb, &r);
	if (!r.base || !r.later || !r.pg)
		return 1;
	if (!strcmp(r.scenario, "statement-timeout") && obr_pg_set_statement_timeout(r.pg, 200) != 0)
		return 1;
	obr_pg_start(r.pg);
	event_base_dispatch(r.base);
	obr_pg_free(r.pg);
	event_free(r.later);
	event_base_free(r.base);
	return r.rc;
}
