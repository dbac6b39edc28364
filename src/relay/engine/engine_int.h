/*
 * engine_int.h - what the engine's files share: struct obr_relay and the objects it owns.
 * Not for use outside src/relay/engine (and its unit test).
 *
 * Data flow, one file per stage:
 *   listen.c    notifications and the listen connection -> partitions to claim
 *   claim.c     claim and scan statements; take_heads turns fetched rows into a queue
 *   deliver.c   starts a row's requests, collects their answers into a result (a mark)
 *   complete.c  results statements, advances, renewals, the final release
 *   linger.c    busy partitions held a little after their last row, and read for new ones
 *   partition.c the partition table and THE gate for partition state (part_set_state)
 *   relay.c     the loop: scheduler (kick/flush), timers, connections, shutdown, public API
 */
#ifndef OBR_ENGINE_INT_H
#define OBR_ENGINE_INT_H

#include "engine/partition.h"
#include "engine/relay.h"
#include "db/pg.h"
#include "send/destination.h"

#include "engine/hosts.h"
#include "util/backoff.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MAX_CLAIM_SET 8192           /* notified partitions remembered; beyond, forgotten: a scan catches up */
#define MAX_STATEMENT_BYTES (64u << 20)
#define LISTEN_CHECK_TIMEOUT_MS 5000
#define SELFTEST_TIMEOUT_MS 5000       /* the relay's own notification must arrive this soon after its commit ... */
#define SELFTEST_RETRY_MS 30000        /* ... else it polls and tests LISTEN again this often */
#define SELFTEST_PREFIX "outbox-relay-selftest " /* a payload no partition key can be */
#define DEAF_POLL_MS 1000              /* the poll interval while LISTEN hears nothing (as poll mode's) */
#define SAMPLE_MS 5000                 /* gauges for /metrics, at most this often, when scraped */
#define LEASE_MARGIN_PERCENT 20      /* a lease is ours until 80% of it from when it was taken or renewed */
#define STATEMENT_TIMEOUT_SHARE 3    /* the work connection's statement_timeout: a third of the lease */
#define STMT_BACKOFF_MIN_MS 100     /* a statement kind the database refused waits this, doubling */
#define STMT_BACKOFF_MAX_MS 30000   /* ... up to this, until one succeeds */
#define STMT_LOG_EVERY_MS 10000     /* a repeating statement error is logged this often, with a count */
#define COMPLETE_MAX_FAILURES 3        /* a result that fails alone this often is given up */
#define HARD_STOP_AFTER_GRACE_MS 2000  /* results that still cannot be written do not hold the exit */
#define RETENTION_EVERY_MS 60000       /* a retention pass (at a poll tick); a full batch asks for the next at once */

/* The statements the engine sends, each backing off on its own while the database refuses it. */
enum stmt_kind {
	SK_CLAIM,
	SK_SCAN,
	SK_ADVANCE,
	SK_COMPLETE,
	SK_RENEW,
	SK_SAMPLE,
	SK_RETENTION,
	SK_SELFTEST,
	SK_LASTLOOK,
	SK_PROBE,
	SK_KINDS,
	SK_NONE = SK_KINDS, /* a scheduler entry that sends nothing */
};

struct obr_sender;
struct event;
struct event_base;

struct request_ctx {
	struct obr_relay *relay;
	struct delivery *delivery;
	int dest;
	struct obr_host *host;      /* an HTTP destination's host (hosts.c), or NULL */
	bool probe;                 /* the request probes the host's open circuit */
};

/* One row being delivered: its destinations' requests, then its result until committed. */
struct delivery {
	struct part *part;
	struct row *row;
	struct obr_plan plan;
	int waiting;                /* requests still running */
	bool *ok;                   /* per destination */
	struct request_ctx *ctx;    /* per destination: what a request's callback needs */
	char error[1024];           /* first failure */
	int fail_dest;              /* the destination of the first failure; -1: none */
	long fail_status;           /* its HTTP status; 0: none */
	int64_t retry_after_ms;     /* the longest pause a destination asked for (Retry-After); -1: none */
	int64_t started_us;         /* monotonic: the first request */
	bool permanent;             /* a destination said retrying cannot help */
	bool finished;
};

/* A row's result waiting to be written by the next complete statement. */
struct mark {
	struct part *part;
	char key[OBR_KEY_LEN + 1];
	bool success;
	bool park;
	bool counted;               /* an attempt was made (malformed rows are parked without one) */
	int64_t delay_ms;
	long attempts;              /* the row's attempts when fetched: a result is written only once */
	char *error;
	char *sent;                 /* int[] literal */
	int failures;               /* complete statements that failed with this result alone */
	bool suspect;               /* in a complete statement that failed: written alone until it works */
	bool advance;               /* the complete statement also advances its partition */
	bool linger;                /* ... or its partition lingers after it (linger.c) */
};

struct vec {
	void **items;
	size_t len, cap;
};

/* How often work of one kind arrives, for OUTBOX_BATCH_WINDOW_MS. */
struct arrivals {
	int64_t last_us;            /* monotonic: the latest arrival */
	int64_t gap_us;             /* moving average of the time between arrivals */
	int64_t waiting_since_us;   /* the oldest arrival not sent yet */
};

/*
 * A statement sent on a connection, and the argument its callback gets. pg.c calls back once
 * per result, and libpq can return a statement's result and then an error for the same
 * statement (a backend terminated after the result but before the commit): the transaction
 * did not commit. So the ledger keeps the first answer (a copy) and hands it to the engine's
 * callback only when the statement has ended on a live connection (pg.c no longer has it);
 * a later error replaces it, and a connection lost before the end makes it a lost statement
 * (NULL result). A statement is freed only when pg.c cannot name it any more: when a later
 * statement on the same connection was handed over, or when the connection was lost.
 */
struct stmt {
	struct stmt *next;
	struct obr_relay *relay;
	struct conn *conn;
	obr_pg_result_fn handler;   /* the engine's callback: called once, with the outcome */
	int64_t sent_ms;            /* monotonic: when it was queued (leases it takes or renews count from here) */
	bool answered;              /* pg.c called back */
	bool handed_over;           /* handler called */
	PGresult *res;              /* the answer, until the statement has ended */
	char *err;
	struct vec marks;           /* results statement: struct mark * it writes (owned until handed over) */
};
/* One statement connection and the statements sent on it, oldest first. */
struct conn {
	struct obr_pg *pg;
	struct stmt *head, *tail;
	bool running;               /* a statement has not been handed over yet */
	bool reset_wanted;          /* the server is read-only: reconnect (at the next flush) */
	bool drop_session_wanted;   /* a prepared statement was missing: a transaction pooler */
};

/* lastlook.c: partition keys (OBR_KEY_LEN bytes each, no terminator) */
struct keyset {
	char *keys;
	size_t len, cap;
	bool overflow;              /* keys were left out: the look is a scan */
};
/* Released partitions that a writer may have skipped its NOTIFY for (sql/010). */
struct lastlook {
	struct keyset fresh;        /* released since the last round was sent */
	struct keyset sent;         /* fresh ones in the round in flight */
	struct keyset waiting;      /* looked at once every transaction in progress in snap ended */
	char *snap;                 /* pg_snapshot as text */
	bool running, timer_armed;
	int backoff_ms;             /* while waiting on snap */
	struct event *ev;
};

/* Partitions released lately and when their last row was written, by a hash of the key: a
 * fixed table (keyset.c). A collision can only make a partition look busy. */
#define RECENT_RELEASES 4096
struct recent_releases {
	uint64_t hash[RECENT_RELEASES];
	int64_t at_ms[RECENT_RELEASES];     /* monotonic; 0: empty */
};

/* Busy partitions kept after their last row (OUTBOX_LINGER_MS). */
struct lingering {
	struct recent_releases recent;      /* a partition claimed again soon after its last row is busy */
	int64_t last_row_us;        /* monotonic: the latest result of a delivered row */
	int64_t gap_us;             /* moving average of the time between results */
	bool probe_due;             /* the poll interval is over (or a lingering partition was notified) */
	struct event *ev;
};

struct obr_relay {
	struct event_base *base;
	const struct obr_config *cfg;
	char lock_id[OBR_KEY_LEN + 1];
	struct {                    /* statement parameters from the configuration, as text (the
	                               settings they come from are not reloaded) */
		char batch[24], lease[24], claim_limit[24], retention_ms[24], retention_batch[24];
	} param;

	struct obr_pg *listen_pg;   /* NULL in poll mode */
	struct conn work;           /* results, advances, renewals, gauges, retention */
	struct conn claim;          /* claims and scans: the path from a notification to a request
	                               never waits behind the results of earlier rows */
	struct obr_sender *sender;  /* HTTP, SQS and SNS destinations */
	struct obr_hosts hosts;     /* per HTTP host: requests in flight, circuit breaker */
	size_t host_waiting;        /* READY partitions the last dispatch left for a busy host */

	struct part_table parts;    /* every known partition, and one list per state */
	struct vec marks;           /* struct mark *, not sent yet */
	size_t fetched_bytes;       /* rows fetched and not freed yet (OUTBOX_FETCH_BYTES) */
	size_t statement_limit;     /* a results statement's parameters, at most (MAX_STATEMENT_BYTES) */

	bool scan_wanted;
	bool claim_overflow;        /* notified partitions were forgotten: none is remembered until a scan is sent */
	bool renew_wanted;
	bool sample_wanted;
	bool retention_wanted;
	bool tearing_down;          /* obr_relay_free: callbacks change nothing any more */
	uint64_t claim_seq;         /* claim results taken so far */
	uint64_t renew_seq;         /* claim_seq when the running renewal was sent */
	bool listen_ready;
	bool ready_logged;
	bool first_scan_done;
	bool stopping;
	bool released_all;
	bool listen_check_pending;
	bool selftest_wanted;       /* LISTEN (re)connected: send ourselves a notification */
	bool selftest_pending;      /* sent, not heard yet */
	bool listen_deaf;           /* the self-test failed: polling every DEAF_POLL_MS until one passes */
	uint64_t selftest_seq;
	char selftest_token[sizeof(SELFTEST_PREFIX) + OBR_KEY_LEN + 24];
	struct obr_backoff backoff[SK_KINDS]; /* per statement kind: refused by the database */
	bool read_only;             /* a write failed with SQLSTATE 25006 and none has worked since */

	struct event *kick_ev;      /* one flush per loop turn */
	struct event *poll_ev;
	struct event *due_ev;
	int64_t due_at_ms;          /* monotonic; 0 = not armed */
	struct event *renew_ev;
	struct event *listen_check_ev;
	struct event *listen_check_timeout_ev;
	struct event *grace_ev;
	int64_t last_sample_ms;      /* monotonic: gauges are sampled when scraped, at most every SAMPLE_MS */
	int64_t last_retention_ms;
	struct arrivals claim_arrivals;   /* notified partitions to claim (batch window) */
	struct arrivals mark_arrivals;    /* results to write (batch window) */
	struct event *claim_window_ev;
	struct event *marks_window_ev;
	struct event *backoff_ev;   /* the earliest end of a statement kind's backoff */
	struct event *selftest_timeout_ev;
	struct event *selftest_retry_ev;
	struct event *hard_stop_ev;
	struct event *settle_ev;    /* a statement answered but not ended yet: look again soon */
	struct lastlook lastlook;
	struct lingering linger;

	struct obr_relay_stats stats;
};

/* ---- loop.c: what every stage takes from the loop ---- */
void relay_kick(struct obr_relay *r);           /* flush (and reap) at the end of this loop turn */
int64_t relay_mono_us(void);
int64_t relay_mono_ms(void);
int64_t relay_realtime_ms(void);
void relay_timer_ms(struct event *ev, int64_t ms);
int relay_vec_push(struct vec *v, void *item);
void relay_arrived(const struct obr_relay *r, struct arrivals *a, bool first_waiting);
bool relay_gathering(struct obr_relay *r, const struct arrivals *a, size_t have, size_t enough, struct event *timer);
void relay_arm_due(struct obr_relay *r, int64_t in_ms);
/* A statement's outcome, for its kind's backoff: failed with res (the error result; NULL when
 * the connection was lost: pg.c's reconnect backs off then) and err. A read-only database
 * (SQLSTATE 25006) also makes /ready say so and reconnects s's connection. */
void relay_statement_failed(struct obr_relay *r, enum stmt_kind k, struct stmt *s, const PGresult *res, const char *err);
void relay_statement_ok(struct obr_relay *r, enum stmt_kind k);
bool relay_backing_off(const struct obr_relay *r, enum stmt_kind k);
void relay_backoff_over(struct obr_relay *r);    /* the backoff timer fired */
void relay_poll_every(struct obr_relay *r, int64_t ms); /* the fallback poll's interval from now on */
void relay_check_ready(struct obr_relay *r);     /* logs and tells systemd once everything is up */
bool relay_senders_idle(const struct obr_relay *r); /* no request in flight */

/* ---- stmt.c: statements ---- */
/* Send through the connection's ledger through the connection's ledger; the handler runs once */
struct stmt *stmt_new(struct obr_relay *r, struct conn *c);
/* Returns false when the statement could not be queued: then the caller frees s (stmt_free).
 * On true s belongs to the ledger: fn may even have run already (connection lost at once). */
bool stmt_send(struct stmt *s, const char *sql, int nparams, const char *const *params, obr_pg_result_fn fn);
void stmt_free(struct stmt *s);
/* In a handler: the statement its argument names, or NULL when the relay is being freed
 * (then the handler does nothing). */
struct stmt *stmt_answer(void *arg, const char *err);
/* Hands over the connection's answered statement once pg.c has read its end. */
void stmt_settle(struct obr_relay *r, struct conn *c);
/* The connection is lost: answers the statement in flight with why, forgets the rest. */
void stmt_forget_all(struct conn *c, const char *why);
void mark_free(struct mark *m);

/* ---- relay.c: the loop ---- */
void relay_forget_fetched_rows(struct obr_relay *r);

/* ---- listen.c ---- */
void listen_on_notify(void *arg, const char *channel, const char *payload);
/* Partition key (normalized) has rows to look at: claim it, or make its holder look again. */
void listen_wake(struct obr_relay *r, const char key[OBR_KEY_LEN + 1]);
void listen_on_connected(void *arg);
void listen_on_disconnected(void *arg, const char *why);
void listen_check(struct obr_relay *r);
void listen_on_check_timeout(struct obr_relay *r);
bool listen_selftest_wanted(struct obr_relay *r);
bool listen_selftest_send(struct obr_relay *r);
void listen_selftest_timeout(struct obr_relay *r);  /* not heard in time: poll, test again later */
void listen_selftest_retry(struct obr_relay *r);

/* ---- claim.c ---- */
void claim_want(struct obr_relay *r, struct part *p);   /* an IDLE partition: claim it */
/* Takes a claim or advance result: rows per partition, in order, for partitions in state
 * expect (others are not ours to change and are skipped). */
enum heads_from {
	HEADS_CLAIM,                /* took the leases */
	HEADS_ADVANCE,              /* renewed them (advance, or results that advance) */
	HEADS_PROBE,                /* read under leases held already: they last as they did */
};
void claim_take_heads(struct obr_relay *r, const struct stmt *s, const PGresult *res, enum part_state expect,
                      enum heads_from from);
/* The keys of the partitions in state s, as a uuid[] literal (malloc'ed); NULL: out of memory. */
char *claim_keys_in(struct obr_relay *r, enum part_state s);
/* Where the lease of a partition held by statement s ends for us, on the monotonic clock. */
int64_t claim_lease_deadline(const struct obr_relay *r, const struct stmt *s);
/* What a statement may fetch now: OUTBOX_FETCH_BYTES less the rows held, as text; 0 when full. */
size_t claim_fetch_budget(const struct obr_relay *r, char out[24]);
bool claim_send_heads(struct obr_relay *r, struct conn *c, const char *sql, enum part_state in, obr_pg_result_fn fn);
bool claim_wanted(struct obr_relay *r);
bool claim_send(struct obr_relay *r);
bool claim_scan_wanted(struct obr_relay *r);
bool claim_send_scan(struct obr_relay *r);

/* ---- linger.c ---- */
void linger_init(struct obr_relay *r);
void linger_row_done(struct obr_relay *r);          /* a delivered row's result was written */
void linger_row_written(struct part *p);            /* ... it was p's */
/* Whether p, whose current row is done and which has nothing fetched, lingers instead of being
 * advanced (and so released, when nothing is pending). */
bool linger_takes(const struct obr_relay *r, const struct part *p);
void linger_enter(struct obr_relay *r, struct part *p);
void linger_poke(struct obr_relay *r);              /* probe now: notified, or the poll interval is over */
void linger_stop(struct obr_relay *r);              /* shutdown: every lingering partition is let go */
bool linger_probe_wanted(struct obr_relay *r);
bool linger_probe_send(struct obr_relay *r);

/* ---- deliver.c ---- */
void deliver_dispatch(struct obr_relay *r);      /* starts rows of READY partitions, within the limit */
void deliver_abandon(struct obr_relay *r);       /* grace period over: forget unfinished rows */
int relay_active(const struct obr_relay *r);    /* partitions with a current row */

/* ---- complete.c ---- */
bool complete_wanted(struct obr_relay *r);
bool complete_send(struct obr_relay *r);
bool advance_wanted(struct obr_relay *r);
bool advance_send(struct obr_relay *r);
bool advance_drop_wanted(struct obr_relay *r);
bool advance_drop(struct obr_relay *r);
bool renew_wanted(struct obr_relay *r);
bool renew_send(struct obr_relay *r);
/* ---- keyset.c (below the stages) ---- */
void keyset_add(struct keyset *k, const char *key);
void keyset_merge(struct keyset *into, struct keyset *from); /* empties from */
void keyset_free(struct keyset *k);
void lastlook_released(struct obr_relay *r, const char *key); /* a partition's lease was given back */
void lastlook_rescan(struct obr_relay *r);                     /* scan once writers in progress ended */
void recent_release_note(struct recent_releases *t, const char *key, int64_t now_ms);
bool recent_release_within(const struct recent_releases *t, const char *key, int64_t now_ms, int64_t ms);

/* ---- lastlook.c: a stage beside listen (it finds partitions to claim) ---- */
bool lastlook_wanted(struct obr_relay *r);
bool lastlook_send(struct obr_relay *r);
void lastlook_on_timer(struct obr_relay *r);
void lastlook_init(struct obr_relay *r);
void lastlook_free(struct obr_relay *r);

bool release_all_wanted(struct obr_relay *r);
bool release_all_send(struct obr_relay *r);

#endif
