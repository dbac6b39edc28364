/*
 * test_engine.c - the engine (src/relay/engine) without a server: a scripted PostgreSQL
 * (fake_pg.c, in place of db/pg.c) and a fake sender (fake_send.c, in place of http/aws).
 * Each test drives one relay through claims, deliveries, results, advances, lost leases,
 * connections lost mid-statement and shutdown, and checks the statements it sends, the
 * requests it starts and where its partitions are.
 */
#include "engine/engine_int.h"

#include "db/store.h"
#include "fake_pg.h"
#include "fake_send.h"
#include "harness.h"
#include "util/log.h"

#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PART_A "0190a000-0000-7000-8000-00000000000a"
#define PART_B "0190a000-0000-7000-8000-00000000000b"
#define ROW_1 "0190a000-0000-7000-8000-000000000001"
#define ROW_2 "0190a000-0000-7000-8000-000000000002"
#define ROW_3 "0190a000-0000-7000-8000-000000000003"
#define ROW_4 "0190a000-0000-7000-8000-000000000004"
#define PART_C "0190a000-0000-7000-8000-00000000000c"
#define PART_D "0190a000-0000-7000-8000-00000000000d"
#define DESTS "[{\"url\":\"http://127.0.0.1:9/hook\"}]"

struct env {
	struct event_base *base;
	struct obr_config cfg;
	struct obr_relay *r;
	struct obr_pg *work, *claim, *listen;
};

static const char *const heads_cols[] = { "partition", "lease", "key", "destinations", "headers", "payload",
	                                  "attempts", "sent", "due", "due_in_ms", "created_ms" };

static PGresult *heads(void)
{
	return fake_result(11, heads_cols);
}

/* One fetched row of a held partition (payload = the row's key, to see the order). */
static void head_row(PGresult *res, const char *part, const char *key)
{
	const char *v[] = { part, "held", key, DESTS, NULL, key, "0", NULL, "t", "0", "0" };
	fake_result_row(res, v);
}

/* A partition with no row left, in this lease state ("held", "released", "lost"). */
static void head_none(PGresult *res, const char *part, const char *lease)
{
	const char *v[] = { part, lease, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL };
	fake_result_row(res, v);
}

static PGresult *empty(int ncols)
{
	static const char *const names[] = { "a", "b", "c", "d" };
	return fake_result(ncols, names);
}

/* Runs whatever the last steps made ready (kicks, callbacks), without waiting for timers. */
static void settle(struct env *e)
{
	for (int i = 0; i < 20; i++)
		event_base_loop(e->base, EVLOOP_NONBLOCK);
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Runs the loop (timers too) until pg's running statement is sql, for at most 10 s. */
static bool wait_for(struct env *e, struct obr_pg *pg, const char *sql)
{
	int64_t until = now_ms() + 10000;
	while (now_ms() < until) {
		struct fake_query *q = fake_pg_head(pg);
		if (q && q->sql == sql)
			return true;
		struct timeval tv = { 0, 20000 };
		event_base_loopexit(e->base, &tv);
		event_base_dispatch(e->base);
	}
	return false;
}

static bool head_is(struct obr_pg *pg, const char *sql)
{
	struct fake_query *q = fake_pg_head(pg);
	return q && q->sql == sql;
}

static const char *param(struct obr_pg *pg, int i)
{
	struct fake_query *q = fake_pg_head(pg);
	return q && i < q->nparams ? q->params[i] : NULL;
}

/* The first row of a last look (OBR_SQL_LASTLOOK). */
static PGresult *last_look(bool old_done, bool new_done, const char *snap)
{
	static const char *const names[] = { "k", "old_done", "new_done", "snap", "due_in_ms" };
	PGresult *res = fake_result(5, names);
	const char *v[] = { NULL, old_done ? "t" : "f", new_done ? "t" : "f", snap, NULL };
	fake_result_row(res, v);
	return res;
}

static enum part_state state_of(struct env *e, const char *key)
{
	struct part *p = part_find(&e->r->parts, key);
	return p ? p->state : PS_COUNT; /* PS_COUNT: not in the table (freed) */
}

/* The work connection's running statement is the self-test's NOTIFY: answer it, and deliver
 * the notification on the listen connection when heard. */
static bool selftest_answered(struct env *e, bool heard)
{
	if (head_is(e->work, OBR_SQL_LASTLOOK)) {
		/* the last look after a (re)connect goes first: nothing in progress */
		fake_pg_answer(e->work, last_look(true, true, "9:9:"), NULL);
		settle(e);
	}
	struct fake_query *q = fake_pg_head(e->work);
	if (!q || !strstr(q->sql, "pg_notify") || q->nparams != 2 || strcmp(q->params[0], "outbox") != 0)
		return false;
	char token[128];
	snprintf(token, sizeof(token), "%s", q->params[1]);
	fake_pg_answer(e->work, empty(1), NULL);
	if (heard)
		fake_pg_notify(e->listen, "outbox", token);
	settle(e);
	return true;
}

static const char *extra_env[4]; /* more settings for the next env_start */

/* A relay with its three connections up, its first scan and sample answered: idle. */
static bool env_start(struct env *e, const char *lease_ms, const char *grace_ms)
{
	char lease[64], grace[64];
	snprintf(lease, sizeof(lease), "OUTBOX_LEASE_MS=%s", lease_ms);
	snprintf(grace, sizeof(grace), "OUTBOX_SHUTDOWN_GRACE_MS=%s", grace_ms);
	const char *envp[] = { "DATABASE_URL=postgresql://127.0.0.1/unit", "OUTBOX_BATCH_WINDOW_MS=0",
		               "OUTBOX_POLL_INTERVAL_MS=3600000", "OUTBOX_RETENTION=0", lease, grace,
		               extra_env[0], extra_env[1], extra_env[2], extra_env[3], NULL };
	char err[512];
	memset(e, 0, sizeof(*e));
	fake_send_reset();
	if (obr_config_load(&e->cfg, envp, 0, NULL, err, sizeof(err))) {
		fprintf(stderr, "config: %s\n", err);
		return false;
	}
	e->base = event_base_new();
	e->r = obr_relay_new(e->base, &e->cfg);
	if (!e->r || obr_relay_start(e->r))
		return false;
	e->work = fake_pg_find("outbox-relay work");
	e->claim = fake_pg_find("outbox-relay claim");
	e->listen = fake_pg_find("outbox-relay listen");
	if (!e->work || !e->claim || !e->listen)
		return false;
	fake_pg_connect(e->listen);
	fake_pg_connect(e->work);
	fake_pg_connect(e->claim);
	settle(e);
	/* the LISTEN self-test, the catch-up scan, the gauges, and the last look after connecting
	 * (nothing in progress: it asks for one more scan), in whatever order the relay sends them */
	bool tested = false, scanned = false, sampled = false, looked = false;
	for (int i = 0; i < 8 && (fake_pg_head(e->work) || fake_pg_head(e->claim)); i++) {
		struct fake_query *q = fake_pg_head(e->work);
		if (q && strstr(q->sql, "pg_notify") && !tested) {
			if (!selftest_answered(e, true))
				return false;
			tested = true;
			continue;
		} else if (head_is(e->work, OBR_SQL_SAMPLE) && !sampled) {
			fake_pg_answer(e->work, fake_error_result(), "not in this test");
			sampled = true;
		} else if (head_is(e->work, OBR_SQL_LASTLOOK) && !looked) {
			fake_pg_answer(e->work, last_look(true, true, "9:9:"), NULL);
			looked = true;
		} else if (q) {
			return false;
		}
		if (head_is(e->claim, OBR_SQL_SCAN)) {
			fake_pg_answer(e->claim, empty(2), NULL);
			scanned = true;
		} else if (fake_pg_head(e->claim)) {
			return false;
		}
		settle(e);
	}
	return tested && scanned && sampled && looked && !fake_pg_head(e->work) && !fake_pg_head(e->claim);
}

static void env_free(struct env *e)
{
	obr_relay_free(e->r);
	event_base_free(e->base);
	obr_config_free(&e->cfg);
	fake_send_reset();
}

/* Notifies part and answers its claim with these rows held. */
static bool claim_with_rows(struct env *e, const char *part, const char *const *rows, int nrows)
{
	fake_pg_notify(e->listen, "outbox", part);
	settle(e);
	char want[64];
	snprintf(want, sizeof(want), "{%s}", part);
	if (!head_is(e->claim, OBR_SQL_CLAIM) || strcmp(param(e->claim, 1), want) != 0)
		return false;
	PGresult *res = heads();
	for (int i = 0; i < nrows; i++)
		head_row(res, part, rows[i]);
	if (!nrows)
		head_none(res, part, "held");
	fake_pg_answer(e->claim, res, NULL);
	settle(e);
	return true;
}

/* ---- the gate ---- */

static void test_state_table(void)
{
	CHECK_STR_EQ(part_state_name(PS_IDLE), "idle");
	CHECK_STR_EQ(part_state_name(PS_ADVANCING), "advancing");
	CHECK_STR_EQ(part_state_name(PS_COUNT), "invalid");
	CHECK(part_transition_legal(PS_IDLE, PS_CLAIM_WANTED));
	CHECK(part_transition_legal(PS_CLAIMING, PS_READY));
	CHECK(part_transition_legal(PS_DELIVERING, PS_LOST));
	CHECK(part_transition_legal(PS_LOST, PS_IDLE));
	/* a partition is never delivered without a claim, nor claimed while held */
	CHECK(!part_transition_legal(PS_IDLE, PS_READY));
	CHECK(!part_transition_legal(PS_CLAIM_WANTED, PS_DELIVERING));
	CHECK(!part_transition_legal(PS_READY, PS_CLAIMING));
	CHECK(!part_transition_legal(PS_LOST, PS_READY));
}

/* An illegal change stops a debug build (the test builds have assertions on). */
static void test_illegal_change_asserts(void)
{
#ifdef NDEBUG
	return;
#else
	struct env e;
	CHECK(env_start(&e, "30000", "8000"));
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		signal(SIGABRT, SIG_DFL);
		if (!freopen("/dev/null", "w", stderr)) /* the expected assertion message */
			_exit(2);
		struct part *p = part_get(e.r, PART_A);
		part_set_state(e.r, p, PS_DELIVERING); /* idle -> delivering: never */
		_exit(0);
	}
	int status = 0;
	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
	env_free(&e);
#endif
}

/* ---- the data flow ---- */

/* claim -> deliver -> result that advances in the same statement -> released -> freed */
static void test_claim_deliver_complete_release(void)
{
	struct env e;
	CHECK(env_start(&e, "30000", "8000"));
	const char *rows[] = { ROW_1 };
	CHECK(claim_with_rows(&e, PART_A, rows, 1));
	CHECK_INT_EQ(state_of(&e, PART_A), PS_DELIVERING);
	CHECK_INT_EQ(fake_send_count(), 1);
	CHECK_STR_EQ(fake_send_get(0)->target, "http://127.0.0.1:9/hook");
	CHECK_STR_EQ(fake_send_get(0)->body, ROW_1);
	CHECK_INT_EQ(obr_relay_stats(e.r)->leases_held, 1);

	fake_send_answer(0, true);
	settle(&e);
	CHECK(head_is(e.work, OBR_SQL_COMPLETE));
	CHECK_STR_EQ(param(e.work, 0), "{" ROW_1 "}");   /* delivered */
	CHECK_STR_EQ(param(e.work, 1), "{}");            /* failed */
	CHECK_STR_EQ(param(e.work, 8), "{" PART_A "}");  /* advanced in the same statement */

	PGresult *res = heads();
	head_none(res, PART_A, "released");
	fake_pg_answer(e.work, res, NULL);
	settle(&e);
	CHECK_INT_EQ(state_of(&e, PART_A), PS_COUNT); /* released and freed at the end of the turn */
	CHECK_INT_EQ(obr_relay_stats(e.r)->leases_held, 0);
	CHECK_INT_EQ(obr_relay_stats(e.r)->rows_delivered, 1);
	/* the last look after the release: nothing in progress, nothing pending */
	CHECK(head_is(e.work, OBR_SQL_LASTLOOK));
	CHECK(param(e.work, 0) == NULL);
	CHECK_STR_EQ(param(e.work, 1), "{}");
	CHECK_STR_EQ(param(e.work, 2), "{" PART_A "}");
	fake_pg_answer(e.work, last_look(true, true, "9:9:"), NULL);
	settle(&e);
	CHECK(!fake_pg_head(e.work) && !fake_pg_head(e.claim));
	env_free(&e);
}

/* A writer in flight at the release (it skipped its NOTIFY): the relay waits on the snapshot
 * taken after the release, then looks again and claims the partition. */
static void test_last_look_waits_for_writers(void)
{
	struct env e;
	CHECK(env_start(&e, "30000", "8000"));
	const char *rows[] = { ROW_1 };
	CHECK(claim_with_rows(&e, PART_A, rows, 1));
	fake_send_answer(0, true);
	settle(&e);
	PGresult *res = heads();
	head_none(res, PART_A, "released");
	fake_pg_answer(e.work, res, NULL);
	settle(&e);
	CHECK(head_is(e.work, OBR_SQL_LASTLOOK));
	fake_pg_answer(e.work, last_look(true, false, "100:102:100"), NULL); /* xid 100 in progress */
	settle(&e);
	CHECK(!fake_pg_head(e.claim));
	int64_t until = now_ms() + 2000;
	while (!fake_pg_head(e.work) && now_ms() < until)
		settle(&e); /* the backoff timer */
	CHECK(head_is(e.work, OBR_SQL_LASTLOOK));
	CHECK_STR_EQ(param(e.work, 0), "100:102:100");
	CHECK_STR_EQ(param(e.work, 1), "{" PART_A "}");
	CHECK_STR_EQ(param(e.work, 2), "{}");
	res = last_look(true, true, "102:102:");
	const char *found[] = { PART_A, NULL, NULL, NULL, "0" };
	fake_result_row(res, found);
	fake_pg_answer(e.work, res, NULL);
	settle(&e);
	CHECK(head_is(e.claim, OBR_SQL_CLAIM));
	CHECK_STR_EQ(param(e.claim, 1), "{" PART_A "}");
	fake_pg_answer(e.claim, heads(), NULL);
	settle(&e);
	env_free(&e);
}

/* Rows of one partition go one at a time, in order; a failed row is retried as the head. */
static void test_order_and_retry(void)
{
	struct env e;
	CHECK(env_start(&e, "30000", "8000"));
	const char *rows[] = { ROW_1, ROW_2 };
	CHECK(claim_with_rows(&e, PART_A, rows, 2));
	CHECK_INT_EQ(fake_send_count(), 1);
	CHECK_STR_EQ(fake_send_get(0)->body, ROW_1);
	fake_send_answer(0, true);
	settle(&e);
	CHECK_INT_EQ(fake_send_count(), 0); /* ROW_2 waits until ROW_1's result is committed */
	CHECK(head_is(e.work, OBR_SQL_COMPLETE));
	CHECK_STR_EQ(param(e.work, 8), "{}"); /* more rows fetched: no advance */
	fake_pg_answer(e.work, heads(), NULL);
	settle(&e);
	CHECK_INT_EQ(fake_send_count(), 1);
	CHECK_STR_EQ(fake_send_get(0)->body, ROW_2);

	fake_send_answer(0, false);
	settle(&e);
	CHECK(head_is(e.work, OBR_SQL_COMPLETE));
	CHECK_STR_EQ(param(e.work, 1), "{" ROW_2 "}");
	CHECK_STR_EQ(param(e.work, 4), "{f}");   /* not parked */
	CHECK_STR_EQ(param(e.work, 8), "{}");    /* a retry keeps its place: the advance looks */
	fake_pg_answer(e.work, heads(), NULL);
	settle(&e);
	CHECK(head_is(e.work, OBR_SQL_ADVANCE));
	CHECK_STR_EQ(param(e.work, 1), "{" PART_A "}");
	PGresult *res = heads();
	head_none(res, PART_A, "released");
	fake_pg_answer(e.work, res, NULL);
	settle(&e);
	CHECK_INT_EQ(state_of(&e, PART_A), PS_COUNT);
	env_free(&e);
}

/* Notified while held: after the release the partition is claimed again (a fresh look). */
static void test_release_with_fresh_look(void)
{
	struct env e;
	CHECK(env_start(&e, "30000", "8000"));
	const char *rows[] = { ROW_1 };
	CHECK(claim_with_rows(&e, PART_A, rows, 1));
	fake_pg_notify(e.listen, "outbox", PART_A); /* a new row committed while we deliver */
	settle(&e);
	CHECK(!fake_pg_head(e.claim));             /* not claimed twice */
	fake_send_answer(0, true);
	settle(&e);
	PGresult *res = heads();
	head_none(res, PART_A, "released");
	fake_pg_answer(e.work, res, NULL);
	settle(&e);
	CHECK(head_is(e.claim, OBR_SQL_CLAIM));
	CHECK_STR_EQ(param(e.claim, 1), "{" PART_A "}");
	CHECK_INT_EQ(state_of(&e, PART_A), PS_CLAIMING);
	fake_pg_answer(e.claim, heads(), NULL); /* another instance has it now */
	settle(&e);
	CHECK_INT_EQ(state_of(&e, PART_A), PS_COUNT);
	env_free(&e);
}

/* An advance that finds the lease lost drops the partition and scans. */
static void test_lost_in_advance(void)
{
	struct env e;
	CHECK(env_start(&e, "30000", "8000"));
	const char *rows[] = { ROW_1, ROW_2 };
	CHECK(claim_with_rows(&e, PART_A, rows, 2));
	fake_send_answer(0, false); /* retry: the advance decides */
	settle(&e);
	fake_pg_answer(e.work, heads(), NULL);
	settle(&e);
	CHECK(head_is(e.work, OBR_SQL_ADVANCE));
	PGresult *res = heads();
	head_none(res, PART_A, "lost");
	fake_pg_answer(e.work, res, NULL);
	settle(&e);
	CHECK_INT_EQ(state_of(&e, PART_A), PS_COUNT);
	CHECK_INT_EQ(fake_send_count(), 0); /* ROW_2 was dropped with the lease */
	CHECK(head_is(e.claim, OBR_SQL_SCAN));
	env_free(&e);
}

/* A renewal that no longer lists a partition: its current row finishes, the rest is dropped. */
static void test_lost_in_renewal(void)
{
	struct env e;
	CHECK(env_start(&e, "1000", "8000"));
	const char *rows[] = { ROW_1, ROW_2 };
	CHECK(claim_with_rows(&e, PART_A, rows, 2));
	CHECK(wait_for(&e, e.work, OBR_SQL_RENEW));
	fake_pg_answer(e.work, empty(1), NULL); /* renewed nothing: taken over */
	settle(&e);
	CHECK_INT_EQ(state_of(&e, PART_A), PS_LOST);
	fake_send_answer(0, true);
	settle(&e);
	CHECK(head_is(e.work, OBR_SQL_COMPLETE));
	CHECK_STR_EQ(param(e.work, 0), "{" ROW_1 "}");
	CHECK_STR_EQ(param(e.work, 8), "{}"); /* no advance of a lost partition */
	fake_pg_answer(e.work, heads(), NULL);
	settle(&e);
	CHECK_INT_EQ(state_of(&e, PART_A), PS_COUNT);
	CHECK_INT_EQ(fake_send_started(), 1); /* ROW_2 never sent */
	env_free(&e);
}

/* ---- connections lost mid-statement ---- */

/* The results statement's connection drops: the result is kept and written after the
 * reconnect; the rows fetched behind it are forgotten and fetched again. */
static void test_results_connection_lost(void)
{
	struct env e;
	CHECK(env_start(&e, "30000", "8000"));
	const char *rows[] = { ROW_1, ROW_2, ROW_3 };
	CHECK(claim_with_rows(&e, PART_A, rows, 3));
	fake_send_answer(0, true);
	settle(&e);
	CHECK(head_is(e.work, OBR_SQL_COMPLETE));
	fake_pg_drop(e.work, "server closed the connection unexpectedly");
	settle(&e);
	CHECK_INT_EQ(fake_send_count(), 0);
	CHECK_INT_EQ(state_of(&e, PART_A), PS_DELIVERING); /* its result is still to be written */

	fake_pg_connect(e.work);
	settle(&e);
	CHECK(head_is(e.work, OBR_SQL_COMPLETE));
	CHECK_STR_EQ(param(e.work, 0), "{" ROW_1 "}");
	CHECK_STR_EQ(param(e.work, 8), "{" PART_A "}"); /* nothing fetched any more: advance */
	PGresult *res = heads();
	head_row(res, PART_A, ROW_2);
	head_row(res, PART_A, ROW_3);
	fake_pg_answer(e.work, res, NULL);
	settle(&e);
	CHECK_INT_EQ(fake_send_count(), 1);
	CHECK_STR_EQ(fake_send_get(0)->body, ROW_2);
	CHECK_INT_EQ(fake_send_started(), 2); /* ROW_2 and ROW_3 were not sent before the re-fetch */
	env_free(&e);
}

/* PART_A held with ROW_1 and ROW_2; ROW_1 delivered; its results statement is running. */
static bool first_of_two_recording(struct env *e)
{
	const char *rows[] = { ROW_1, ROW_2 };
	if (!env_start(e, "30000", "8000") || !claim_with_rows(e, PART_A, rows, 2))
		return false;
	fake_send_answer(0, true);
	settle(e);
	return head_is(e->work, OBR_SQL_COMPLETE);
}

/*
 * Issue 12 item 1: libpq returns the results statement's result, then the FATAL of a backend
 * terminated before the commit, for the same statement; pg.c calls back for both. The first
 * answer freed the statement's batch and the second read it (heap-use-after-free); and the
 * result had not been committed, so acting on it started the next row of the partition
 * before the previous one was recorded (order went back after the reconnect).
 */
static void test_results_answered_twice(void)
{
	struct env e;
	CHECK(first_of_two_recording(&e));
	fake_pg_answer_more(e.work, heads(), NULL);
	settle(&e);
	CHECK_INT_EQ(fake_send_count(), 0); /* not final before the statement's end */
	fake_pg_answer_more(e.work, fake_error_result(), "terminating connection due to administrator command");
	settle(&e);
	fake_pg_drop(e.work, "server closed the connection unexpectedly");
	settle(&e);
	CHECK_INT_EQ(fake_send_count(), 0);
	CHECK_INT_EQ(state_of(&e, PART_A), PS_DELIVERING); /* ROW_1's result still to be written */
	fake_pg_connect(e.work);
	settle(&e);
	CHECK(head_is(e.work, OBR_SQL_COMPLETE));
	CHECK_STR_EQ(param(e.work, 0), "{" ROW_1 "}"); /* written again */
	CHECK_STR_EQ(param(e.work, 8), "{" PART_A "}");
	PGresult *res = heads();
	head_row(res, PART_A, ROW_2);
	fake_pg_answer(e.work, res, NULL);
	settle(&e);
	CHECK_INT_EQ(fake_send_count(), 1);
	CHECK_STR_EQ(fake_send_get(0)->body, ROW_2);
	CHECK_INT_EQ(fake_send_started(), 2);
	env_free(&e);
}

/* An error after the result, then the statement's end on a live connection (a commit that
 * failed): the statement failed, whatever its result said. */
static void test_error_after_result(void)
{
	struct env e;
	CHECK(first_of_two_recording(&e));
	fake_pg_answer_more(e.work, heads(), NULL);
	fake_pg_answer_more(e.work, fake_error_result(), "could not serialize access");
	fake_pg_finish(e.work);
	settle(&e);
	CHECK_INT_EQ(fake_send_count(), 0);
	CHECK(relay_backing_off(e.r, SK_COMPLETE)); /* refused: backing off, then written again */
	CHECK_INT_EQ(e.r->marks.len, 1);
	env_free(&e);
}

/* Issue 12 item 6: a refused results statement backs off; then its results go one per
 * statement (to find a bad one), but results that were not in it go together again: steady
 * load must not keep the relay writing one result per statement. */
static void test_isolate_only_the_refused_results(void)
{
	struct env e;
	CHECK(env_start(&e, "30000", "8000"));
	const char *r1[] = { ROW_1 }, *r2[] = { ROW_2 }, *r3[] = { ROW_3 }, *r4[] = { ROW_4 };
	CHECK(claim_with_rows(&e, PART_A, r1, 1));
	CHECK(claim_with_rows(&e, PART_B, r2, 1));
	fake_send_answer(0, true);
	fake_send_answer(0, true);
	settle(&e);
	CHECK(head_is(e.work, OBR_SQL_COMPLETE));
	CHECK(strstr(param(e.work, 0), ROW_1) && strstr(param(e.work, 0), ROW_2));
	fake_pg_answer(e.work, fake_error_result(), "deadlock detected");
	settle(&e);
	CHECK(relay_backing_off(e.r, SK_COMPLETE));
	CHECK(!fake_pg_head(e.work)); /* nothing during the backoff */
	/* meanwhile two more partitions finish a row */
	CHECK(claim_with_rows(&e, PART_C, r3, 1));
	CHECK(claim_with_rows(&e, PART_D, r4, 1));
	fake_send_answer(0, true);
	fake_send_answer(0, true);
	settle(&e);
	CHECK(!fake_pg_head(e.work));
	/* after the backoff: the two refused results, each alone */
	const char *alone[2];
	for (int i = 0; i < 2; i++) {
		CHECK(wait_for(&e, e.work, OBR_SQL_COMPLETE));
		const char *p0 = param(e.work, 0);
		CHECK(p0 && (!strcmp(p0, "{" ROW_1 "}") || !strcmp(p0, "{" ROW_2 "}")));
		alone[i] = p0 && strstr(p0, ROW_1) ? ROW_1 : ROW_2;
		fake_pg_answer(e.work, heads(), NULL);
		settle(&e);
	}
	CHECK(strcmp(alone[0], alone[1]) != 0);
	CHECK(!relay_backing_off(e.r, SK_COMPLETE));
	/* the others together */
	CHECK(head_is(e.work, OBR_SQL_COMPLETE));
	CHECK(param(e.work, 0) && strstr(param(e.work, 0), ROW_3) && strstr(param(e.work, 0), ROW_4));
	fake_pg_answer(e.work, heads(), NULL);
	settle(&e);
	env_free(&e);
}

/* Issue 12 item 4: a results statement stalls past the lease (a row lock, an I/O stall): the
 * renewals cannot go out on the busy connection, so when it finally answers, the next fetched
 * row must not start before the lease is confirmed; an advance renews it (or finds it lost)
 * and fetches the head again. The work connection's statement_timeout is a third of the lease. */
static void test_no_row_starts_past_the_lease_deadline(void)
{
	struct env e;
	CHECK(env_start(&e, "1000", "8000"));
	CHECK_INT_EQ(fake_pg_statement_timeout(e.work), 333);
	CHECK_INT_EQ(fake_pg_statement_timeout(e.claim), 0);
	const char *rows[] = { ROW_1, ROW_2 };
	CHECK(claim_with_rows(&e, PART_A, rows, 2));
	fake_send_answer(0, true);
	settle(&e);
	CHECK(head_is(e.work, OBR_SQL_COMPLETE));
	/* the statement stalls past 80% of the lease */
	int64_t until = now_ms() + 900;
	while (now_ms() < until) {
		struct timeval tv = { 0, 20000 };
		event_base_loopexit(e.base, &tv);
		event_base_dispatch(e.base);
	}
	CHECK(head_is(e.work, OBR_SQL_COMPLETE)); /* nothing else could go meanwhile */
	fake_pg_answer(e.work, heads(), NULL);
	settle(&e);
	CHECK_INT_EQ(fake_send_count(), 0); /* ROW_2 fetched, but not started */
	CHECK_INT_EQ(fake_send_started(), 1);
	CHECK(state_of(&e, PART_A) == PS_ADVANCE_WANTED || state_of(&e, PART_A) == PS_ADVANCING);
	if (head_is(e.work, OBR_SQL_RENEW)) {
		PGresult *ren = empty(1);
		const char *v[] = { PART_A };
		fake_result_row(ren, v);
		fake_pg_answer(e.work, ren, NULL);
		settle(&e);
	}
	CHECK(head_is(e.work, OBR_SQL_ADVANCE));
	PGresult *res = heads();
	head_row(res, PART_A, ROW_2);
	fake_pg_answer(e.work, res, NULL);
	settle(&e);
	CHECK_INT_EQ(fake_send_count(), 1); /* renewed by the advance: ROW_2 goes now */
	CHECK_STR_EQ(fake_send_get(0)->body, ROW_2);
	fake_send_answer(0, true);
	settle(&e);
	env_free(&e);
}

/* Issue 15 item 3: LISTEN that hears nothing (a transaction pooler) is found by the self-test:
 * /ready says so, the relay polls every second, and tests again; a passing test ends it. Other
 * instances' self-tests are not partitions. */
static void test_listen_selftest(void)
{
	struct env e;
	CHECK(env_start(&e, "30000", "8000"));
	char why[256];
	CHECK(obr_relay_ready(e.r, why, sizeof(why)));
	CHECK_INT_EQ(obr_relay_stats(e.r)->listen_selftest_ok, 1);
	/* another instance's self-test: ignored, no scan, no claim */
	fake_pg_notify(e.listen, "outbox", "outbox-relay-selftest 11111111-2222-4333-8444-555555555555 1");
	settle(&e);
	CHECK(!fake_pg_head(e.claim) && !fake_pg_head(e.work));

	/* the listen connection comes back, and this time nothing is heard */
	fake_pg_drop(e.listen, "gone");
	fake_pg_connect(e.listen);
	settle(&e);
	CHECK(head_is(e.claim, OBR_SQL_SCAN)); /* the catch-up scan */
	fake_pg_answer(e.claim, empty(2), NULL);
	CHECK(selftest_answered(&e, false));
	listen_selftest_timeout(e.r); /* what its timer does after SELFTEST_TIMEOUT_MS */
	CHECK(!obr_relay_ready(e.r, why, sizeof(why)));
	CHECK(strstr(why, "LISTEN hears no notifications") != NULL);
	CHECK_INT_EQ(obr_relay_stats(e.r)->listen_selftest_ok, 0);
	CHECK(e.r->listen_deaf);
	/* tested again later: heard */
	listen_selftest_retry(e.r);
	settle(&e);
	CHECK(selftest_answered(&e, true));
	CHECK(!e.r->listen_deaf);
	CHECK(obr_relay_ready(e.r, why, sizeof(why)));
	CHECK_INT_EQ(obr_relay_stats(e.r)->listen_selftest_ok, 1);
	env_free(&e);
}

/* The self-test's deadline runs from the commit of its NOTIFY, not from the send: a NOTIFY
 * whose commit waits (for the notify commit lock behind busy writers, a slow WAL flush, a
 * statement backoff) says nothing about LISTEN, and must not make the relay unready. A
 * notification heard before the statement's answer needs no deadline at all. */
static void test_listen_selftest_deadline_from_commit(void)
{
	struct env e;
	CHECK(env_start(&e, "30000", "8000"));
	char why[256];
	fake_pg_drop(e.listen, "gone");
	fake_pg_connect(e.listen);
	settle(&e);
	CHECK(head_is(e.claim, OBR_SQL_SCAN));
	fake_pg_answer(e.claim, empty(2), NULL);
	CHECK(head_is(e.work, OBR_SQL_LASTLOOK)); /* after the reconnect; nothing in progress */
	fake_pg_answer(e.work, last_look(true, true, "9:9:"), NULL);
	settle(&e);
	struct fake_query *q = fake_pg_head(e.work);
	CHECK(q && strstr(q->sql, "pg_notify") != NULL);
	/* sent, not committed yet: no deadline runs */
	CHECK(!evtimer_pending(e.r->selftest_timeout_ev, NULL));
	CHECK(obr_relay_ready(e.r, why, sizeof(why)));
	CHECK(!e.r->listen_deaf);
	/* committed: now it must arrive in time */
	CHECK(selftest_answered(&e, false));
	CHECK(evtimer_pending(e.r->selftest_timeout_ev, NULL));
	listen_selftest_timeout(e.r);
	CHECK(e.r->listen_deaf);
	CHECK(!obr_relay_ready(e.r, why, sizeof(why)));

	/* heard before its statement's answer came in: passed, and no deadline is left behind */
	listen_selftest_retry(e.r);
	settle(&e);
	q = fake_pg_head(e.work);
	CHECK(q && strstr(q->sql, "pg_notify") != NULL && q->nparams == 2);
	char token[128];
	snprintf(token, sizeof(token), "%s", q->params[1]);
	fake_pg_notify(e.listen, "outbox", token);
	settle(&e);
	CHECK(!e.r->listen_deaf);
	fake_pg_answer(e.work, empty(1), NULL);
	settle(&e);
	CHECK(!evtimer_pending(e.r->selftest_timeout_ev, NULL));
	CHECK(obr_relay_ready(e.r, why, sizeof(why)));
	CHECK_INT_EQ(obr_relay_stats(e.r)->listen_selftest_ok, 1);
	env_free(&e);
}

/* The result arrives before the statement's end is read: it is acted on once the end is in. */
static void test_result_final_at_statement_end(void)
{
	struct env e;
	CHECK(first_of_two_recording(&e));
	fake_pg_answer_more(e.work, heads(), NULL);
	settle(&e);
	CHECK_INT_EQ(fake_send_count(), 0);
	fake_pg_finish(e.work);
	int64_t until = now_ms() + 10000;
	while (fake_send_count() == 0 && now_ms() < until)
		event_base_loop(e.base, EVLOOP_ONCE);
	CHECK_INT_EQ(fake_send_count(), 1);
	CHECK_STR_EQ(fake_send_get(0)->body, ROW_2);
	env_free(&e);
}

/* A connection lost while the statement is being sent answers inside obr_pg_query: the
 * statement is not counted as running afterwards, or the work connection would wait forever. */
static void test_lost_while_sending(void)
{
	struct env e;
	CHECK(env_start(&e, "30000", "8000"));
	const char *rows[] = { ROW_1 };
	CHECK(claim_with_rows(&e, PART_A, rows, 1));
	fake_pg_fail_next_send(e.work);
	fake_send_answer(0, true);
	settle(&e);
	CHECK(!fake_pg_head(e.work));
	fake_pg_connect(e.work);
	settle(&e);
	CHECK(head_is(e.work, OBR_SQL_COMPLETE));
	CHECK_STR_EQ(param(e.work, 0), "{" ROW_1 "}");
	fake_pg_answer(e.work, heads(), NULL);
	settle(&e);
	env_free(&e);
}

/* The claim connection drops mid-claim: the partitions are claimed again after the reconnect. */
static void test_claim_connection_lost(void)
{
	struct env e;
	CHECK(env_start(&e, "30000", "8000"));
	fake_pg_notify(e.listen, "outbox", PART_A);
	fake_pg_notify(e.listen, "outbox", PART_B);
	settle(&e);
	CHECK(head_is(e.claim, OBR_SQL_CLAIM));
	CHECK_STR_EQ(param(e.claim, 1), "{" PART_A "," PART_B "}");
	fake_pg_drop(e.claim, "server closed the connection unexpectedly");
	settle(&e);
	CHECK_INT_EQ(state_of(&e, PART_A), PS_CLAIM_WANTED);
	fake_pg_connect(e.claim);
	settle(&e);
	CHECK(head_is(e.claim, OBR_SQL_CLAIM));
	CHECK_STR_EQ(param(e.claim, 1), "{" PART_A "," PART_B "}");
	fake_pg_answer(e.claim, heads(), NULL);
	settle(&e);
	env_free(&e);
}

/* ---- shutdown ---- */

/* Rows in flight finish, their results are written, then every lease is released. */
static void test_shutdown_with_rows_in_flight(void)
{
	struct env e;
	CHECK(env_start(&e, "30000", "8000"));
	const char *rows[] = { ROW_1, ROW_2 };
	CHECK(claim_with_rows(&e, PART_A, rows, 2));
	obr_relay_shutdown(e.r);
	fake_pg_notify(e.listen, "outbox", PART_B);
	settle(&e);
	CHECK(!fake_pg_head(e.claim)); /* nothing claimed any more */
	CHECK(!fake_pg_head(e.work));  /* the release waits for the row in flight */
	fake_send_answer(0, true);
	settle(&e);
	CHECK(head_is(e.work, OBR_SQL_COMPLETE));
	CHECK_STR_EQ(param(e.work, 8), "{}");
	fake_pg_answer(e.work, heads(), NULL);
	settle(&e);
	CHECK_INT_EQ(fake_send_started(), 1); /* ROW_2 is left for later */
	CHECK(head_is(e.work, OBR_SQL_RELEASE_ALL));
	fake_pg_answer(e.work, empty(1), NULL);
	settle(&e);
	CHECK(e.r->released_all);
	CHECK_INT_EQ(state_of(&e, PART_A), PS_COUNT);
	env_free(&e);
}

/* The grace period ends with a request in flight: it is abandoned, no result is written for
 * it, and the leases are released. Freeing the relay with a statement queued is clean. */
static void test_shutdown_grace_over(void)
{
	struct env e;
	CHECK(env_start(&e, "30000", "0"));
	const char *rows[] = { ROW_1 };
	CHECK(claim_with_rows(&e, PART_A, rows, 1));
	obr_relay_shutdown(e.r);
	CHECK(wait_for(&e, e.work, OBR_SQL_RELEASE_ALL));
	CHECK_INT_EQ(fake_send_aborted(), 1);
	CHECK_INT_EQ(fake_pg_count(e.work), 1);
	env_free(&e); /* with the release unanswered */
}

/* ---- memory bounds ---- */

/* More notified partitions wait than MAX_CLAIM_SET (a flood: anyone may NOTIFY anything): all
 * are forgotten at once, and a scan, which finds every partition with a due head, comes next. */
static void test_notification_flood_forgotten(void)
{
	struct env e;
	CHECK(env_start(&e, "30000", "8000"));
	fake_pg_notify(e.listen, "outbox", PART_A);
	settle(&e);
	CHECK(head_is(e.claim, OBR_SQL_CLAIM)); /* running: the flood waits behind it */
	char key[OBR_KEY_LEN + 1];
	for (int i = 0; i <= MAX_CLAIM_SET; i++) {
		snprintf(key, sizeof(key), "0190b000-0000-7000-8000-%012d", i);
		fake_pg_notify(e.listen, "outbox", key);
	}
	settle(&e);
	CHECK_INT_EQ(part_count(&e.r->parts, PS_CLAIM_WANTED), 0);
	CHECK_INT_EQ(e.r->parts.nparts, 1); /* PART_A, claiming; the flood is freed */
	fake_pg_notify(e.listen, "outbox", PART_B); /* committed before the scan: it finds it */
	settle(&e);
	CHECK_INT_EQ(state_of(&e, PART_B), PS_COUNT);
	fake_pg_answer(e.claim, heads(), NULL); /* held by another instance */
	settle(&e);
	CHECK(head_is(e.claim, OBR_SQL_SCAN));
	fake_pg_notify(e.listen, "outbox", PART_B); /* maybe after the scan's snapshot: remembered */
	settle(&e);
	CHECK_INT_EQ(state_of(&e, PART_B), PS_CLAIM_WANTED);
	env_free(&e);
}

/* Rows past the byte budget come without their data: a partition delivers what it got, and
 * every heads statement asks for OUTBOX_FETCH_BYTES less the rows the relay holds; with none
 * left, advances wait for delivered rows to make room. */
static void test_fetch_budget(void)
{
	struct env e;
	CHECK(env_start(&e, "30000", "8000"));
	size_t row_bytes = strlen(DESTS) + OBR_KEY_LEN; /* head_row: payload = key, no headers */
	e.cfg.fetch_bytes = 1000;
	fake_pg_notify(e.listen, "outbox", PART_A);
	settle(&e);
	CHECK(head_is(e.claim, OBR_SQL_CLAIM));
	CHECK_STR_EQ(param(e.claim, 4), "1000");
	PGresult *res = heads();
	head_row(res, PART_A, ROW_1);
	const char *past[] = { PART_A, "held", ROW_2, NULL, NULL, NULL, "0", NULL, "t", "0", "0" };
	fake_result_row(res, past);
	fake_pg_answer(e.claim, res, NULL);
	settle(&e);
	CHECK_INT_EQ(state_of(&e, PART_A), PS_DELIVERING);
	CHECK_INT_EQ(e.r->fetched_bytes, row_bytes);

	e.cfg.fetch_bytes = (int64_t)row_bytes; /* full */
	fake_pg_notify(e.listen, "outbox", PART_B);
	settle(&e);
	CHECK(head_is(e.claim, OBR_SQL_CLAIM));
	CHECK_STR_EQ(param(e.claim, 4), "0");
	res = heads();
	head_row(res, PART_B, ROW_3);
	fake_result_row(res, (const char *[]){ PART_B, "held", ROW_3, NULL, NULL, NULL, "0", NULL, "t", "0", "0" });
	fake_pg_answer(e.claim, res, NULL);
	settle(&e);
	CHECK_INT_EQ(state_of(&e, PART_B), PS_DELIVERING); /* ROW_3 came with its data */
	fake_send_answer(1, true);
	settle(&e);
	CHECK(head_is(e.work, OBR_SQL_COMPLETE));
	fake_pg_answer(e.work, heads(), NULL);
	settle(&e);
	CHECK_INT_EQ(state_of(&e, PART_B), PS_ADVANCE_WANTED);
	CHECK(!fake_pg_head(e.work)); /* ROW_1 fills the budget: no advance yet */

	fake_send_answer(0, true);
	settle(&e);
	CHECK(head_is(e.work, OBR_SQL_COMPLETE));
	CHECK_STR_EQ(param(e.work, 8), "{}"); /* rows past the budget: the advance fetches them */
	fake_pg_answer(e.work, heads(), NULL);
	settle(&e);
	CHECK_INT_EQ(e.r->fetched_bytes, 0);
	CHECK(head_is(e.work, OBR_SQL_ADVANCE));
	char budget[24];
	snprintf(budget, sizeof(budget), "%zu", row_bytes);
	CHECK_STR_EQ(param(e.work, 4), budget); /* every fetched row delivered: the whole budget again */
	env_free(&e);
}

/* Results that do not fit in one statement's string limit go out in more statements, in order
 * (one over the limit was refused and retried forever). */
static void test_results_split_at_string_limit(void)
{
	struct env e;
	CHECK(env_start(&e, "30000", "8000"));
	const char *rows_a[] = { ROW_1 }, *rows_b[] = { ROW_2 };
	CHECK(claim_with_rows(&e, PART_A, rows_a, 1));
	CHECK(claim_with_rows(&e, PART_B, rows_b, 1));
	CHECK_INT_EQ(fake_send_count(), 2);
	fake_send_answer(0, false);
	fake_send_answer(0, false);
	CHECK_INT_EQ(e.r->marks.len, 2);
	size_t err_len = strlen(((struct mark *)e.r->marks.items[0])->error);
	e.r->statement_limit = err_len + err_len / 2 + 8; /* one error fits, two do not */
	settle(&e);
	CHECK(head_is(e.work, OBR_SQL_COMPLETE));
	CHECK_STR_EQ(param(e.work, 1), "{" ROW_1 "}");
	fake_pg_answer(e.work, heads(), NULL);
	settle(&e);
	CHECK(head_is(e.work, OBR_SQL_COMPLETE));
	CHECK_STR_EQ(param(e.work, 1), "{" ROW_2 "}");
	fake_pg_answer(e.work, heads(), NULL);
	settle(&e);
	CHECK_INT_EQ(e.r->marks.len, 0);
	env_free(&e);
}

/* ---- lingering (linger.c) ---- */

/* A relay whose partitions linger whatever the rate, and PART_A written once: its first row is
 * delivered and the partition released at once (nothing says it is busy yet), as always. */
static bool linger_start(struct env *e, const char *linger_ms)
{
	char ms[64];
	snprintf(ms, sizeof(ms), "OUTBOX_LINGER_MS=%s", linger_ms);
	extra_env[0] = "OUTBOX_LINGER_MIN_RATE=0";
	extra_env[1] = ms;
	extra_env[2] = "OUTBOX_LINGER_POLL_MS=50";
	bool started = env_start(e, "30000", "8000");
	memset(extra_env, 0, sizeof(extra_env));
	const char *rows[] = { ROW_1 };
	if (!started || !claim_with_rows(e, PART_A, rows, 1))
		return false;
	fake_send_answer(0, true);
	settle(e);
	char want[64];
	snprintf(want, sizeof(want), "{%s}", PART_A);
	if (!head_is(e->work, OBR_SQL_COMPLETE) || strcmp(param(e->work, 8), want) != 0)
		return false; /* advanced (and so released) in the results statement */
	PGresult *res = heads();
	head_none(res, PART_A, "released");
	fake_pg_answer(e->work, res, NULL);
	settle(e);
	if (!head_is(e->work, OBR_SQL_LASTLOOK))
		return false;
	fake_pg_answer(e->work, last_look(true, true, "9:9:"), NULL);
	settle(e);
	return state_of(e, PART_A) == PS_COUNT;
}

/* PART_A lingers. Its poll timer may have fired already (a slow run: valgrind), so it may be in
 * the next probe: that one finds nothing new, and it lingers on. */
static bool lingers(struct env *e)
{
	for (int i = 0; i < 20 && state_of(e, PART_A) == PS_PROBING && head_is(e->claim, OBR_SQL_PROBE); i++) {
		fake_pg_answer(e->claim, heads(), NULL);
		settle(e);
	}
	return state_of(e, PART_A) == PS_LINGERING;
}

/* A busy partition (its previous row written less than OUTBOX_LINGER_MS ago, here before its
 * release) stays held after its row: the results statement does not advance it, the probe
 * reads it for new rows (read-only, on the claim connection, without renewing the lease) and
 * delivers what it finds; once the linger is over the advance releases it, and the last look
 * follows. A notification for a lingering partition makes the probe go at once. */
static void test_linger_probe_and_release(void)
{
	struct env e;
	CHECK(linger_start(&e, "300"));
	const char *rows[] = { ROW_2 };
	CHECK(claim_with_rows(&e, PART_A, rows, 1));
	int64_t lease_until = part_find(&e.r->parts, PART_A)->lease_until_ms;
	fake_send_answer(0, true);
	settle(&e);
	CHECK(head_is(e.work, OBR_SQL_COMPLETE));
	CHECK_STR_EQ(param(e.work, 8), "{}"); /* not advanced: it lingers */
	fake_pg_answer(e.work, heads(), NULL);
	settle(&e);
	CHECK(lingers(&e));
	CHECK_INT_EQ(obr_relay_stats(e.r)->partitions_lingering, 1);
	CHECK_INT_EQ(obr_relay_stats(e.r)->leases_held, 1);

	/* the probe, after OUTBOX_LINGER_POLL_MS: nothing new yet */
	CHECK(wait_for(&e, e.claim, OBR_SQL_PROBE));
	CHECK_STR_EQ(param(e.claim, 1), "{" PART_A "}");
	CHECK_INT_EQ(state_of(&e, PART_A), PS_PROBING);
	fake_pg_answer(e.claim, heads(), NULL);
	settle(&e);
	CHECK(lingers(&e));

	/* the next one finds a row: delivered under the lease already held, which it did not renew */
	CHECK(wait_for(&e, e.claim, OBR_SQL_PROBE));
	PGresult *res = heads();
	head_row(res, PART_A, ROW_3);
	fake_pg_answer(e.claim, res, NULL);
	settle(&e);
	CHECK_INT_EQ(state_of(&e, PART_A), PS_DELIVERING);
	CHECK_INT_EQ(fake_send_started(), 3);
	CHECK_STR_EQ(fake_send_get(0)->body, ROW_3);
	CHECK(part_find(&e.r->parts, PART_A)->lease_until_ms == lease_until);
	fake_send_answer(0, true);
	settle(&e);
	CHECK(head_is(e.work, OBR_SQL_COMPLETE));
	fake_pg_answer(e.work, heads(), NULL);
	settle(&e);
	CHECK(lingers(&e));

	/* a notification for it (a writer that did not see the lease): probed at once */
	fake_pg_notify(e.listen, "outbox", PART_A);
	settle(&e);
	CHECK(head_is(e.claim, OBR_SQL_PROBE));
	fake_pg_answer(e.claim, heads(), NULL);
	settle(&e);

	/* no row for OUTBOX_LINGER_MS (the probes meanwhile find nothing): the advance releases it,
	 * and the last look follows */
	int64_t until = now_ms() + 10000;
	while (!head_is(e.work, OBR_SQL_ADVANCE) && now_ms() < until) {
		if (head_is(e.claim, OBR_SQL_PROBE))
			fake_pg_answer(e.claim, heads(), NULL);
		if (head_is(e.work, OBR_SQL_SAMPLE)) /* its backoff after env_start's refusal is over */
			fake_pg_answer(e.work, fake_error_result(), "not in this test");
		if (head_is(e.work, OBR_SQL_RENEW)) { /* a lingering partition's lease is renewed too */
			PGresult *ren = empty(1);
			const char *v[] = { PART_A };
			fake_result_row(ren, v);
			fake_pg_answer(e.work, ren, NULL);
		}
		struct timeval tv = { 0, 2000 };
		event_base_loopexit(e.base, &tv);
		event_base_dispatch(e.base);
	}
	CHECK(head_is(e.work, OBR_SQL_ADVANCE));
	CHECK_STR_EQ(param(e.work, 1), "{" PART_A "}");
	res = heads();
	head_none(res, PART_A, "released");
	fake_pg_answer(e.work, res, NULL);
	settle(&e);
	CHECK_INT_EQ(state_of(&e, PART_A), PS_COUNT);
	CHECK(head_is(e.work, OBR_SQL_LASTLOOK));
	fake_pg_answer(e.work, last_look(true, true, "9:9:"), NULL);
	settle(&e);
	CHECK_INT_EQ(obr_relay_stats(e.r)->partitions_lingering, 0);
	CHECK_INT_EQ(obr_relay_stats(e.r)->rows_delivered, 3);
	env_free(&e);
}

/* A partition written once in a while does not linger: its previous row is longer ago than
 * OUTBOX_LINGER_MS, so the results statement advances (releases) it as before. (Below
 * OUTBOX_LINGER_MIN_RATE, 500 rows/s by default, nothing lingers:
 * test_claim_deliver_complete_release.) At shutdown a lingering partition is let go. */
static void test_linger_only_busy_partitions(void)
{
	struct env e;
	CHECK(linger_start(&e, "50"));
	struct timespec pause = { 0, 80 * 1000000 }; /* longer than the linger */
	nanosleep(&pause, NULL);
	const char *rows[] = { ROW_2 };
	CHECK(claim_with_rows(&e, PART_A, rows, 1));
	fake_send_answer(0, true);
	settle(&e);
	CHECK(head_is(e.work, OBR_SQL_COMPLETE));
	CHECK_STR_EQ(param(e.work, 8), "{" PART_A "}"); /* released at once */
	PGresult *res = heads();
	head_none(res, PART_A, "released");
	fake_pg_answer(e.work, res, NULL);
	settle(&e);
	CHECK(head_is(e.work, OBR_SQL_LASTLOOK));
	fake_pg_answer(e.work, last_look(true, true, "9:9:"), NULL);
	settle(&e);

	/* written again at once: busy now, it lingers; the shutdown lets it go */
	const char *more[] = { ROW_3 };
	CHECK(claim_with_rows(&e, PART_A, more, 1));
	fake_send_answer(0, true);
	settle(&e);
	CHECK_STR_EQ(param(e.work, 8), "{}");
	fake_pg_answer(e.work, heads(), NULL);
	settle(&e);
	CHECK(lingers(&e));
	obr_relay_shutdown(e.r);
	settle(&e);
	CHECK(state_of(&e, PART_A) == PS_COUNT || state_of(&e, PART_A) == PS_IDLE);
	CHECK(head_is(e.work, OBR_SQL_RELEASE_ALL));
	env_free(&e);
}

int main(int argc, char **argv)
{
	obr_log_configure(getenv("OBR_TEST_LOG") ? OBR_LOG_DEBUG : OBR_LOG_ERROR, OBR_LOG_TEXT);
	static const struct test tests[] = {
		TEST(test_state_table),
		TEST(test_illegal_change_asserts),
		TEST(test_claim_deliver_complete_release),
		TEST(test_order_and_retry),
		TEST(test_release_with_fresh_look),
		TEST(test_last_look_waits_for_writers),
		TEST(test_lost_in_advance),
		TEST(test_lost_in_renewal),
		TEST(test_results_connection_lost),
		TEST(test_results_answered_twice),
		TEST(test_error_after_result),
		TEST(test_isolate_only_the_refused_results),
		TEST(test_no_row_starts_past_the_lease_deadline),
		TEST(test_listen_selftest),
		TEST(test_listen_selftest_deadline_from_commit),
		TEST(test_result_final_at_statement_end),
		TEST(test_lost_while_sending),
		TEST(test_claim_connection_lost),
		TEST(test_shutdown_with_rows_in_flight),
		TEST(test_shutdown_grace_over),
		TEST(test_notification_flood_forgotten),
		TEST(test_fetch_budget),
		TEST(test_results_split_at_string_limit),
		TEST(test_linger_probe_and_release),
		TEST(test_linger_only_busy_partitions),
		TEST_END,
	};
	return run_tests(tests, argc, argv);
}
