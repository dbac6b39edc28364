/*
 * relay.c - partitions, their state machine, and the statements that move them.
 *
 * A partition is in exactly one of these states:
 *   IDLE       known, not held: waiting to be claimed (in the claim set) or about to be dropped
 *   CLAIMING   a claim statement for it is running
 *   HELD       we hold its lease: its fetched rows are delivered one after another
 *   ADVANCING  its fetched rows are done; a statement looks for more or releases it
 * Within a HELD partition one row is "current" from its first request until its result is
 * committed; the next row starts only then, so a crash repeats at most the current row.
 *
 * The work connection runs one statement at a time; what accumulates while one runs goes out
 * together in the next (results of many rows in one statement, many partitions per claim).
 */
#include "engine/relay.h"

#include "send/destination.h"
#include "send/sender.h"
#include "util/log.h"
#include "db/pg.h"
#include "admin/sdnotify.h"
#include "db/store.h"
#include "util/strbuf.h"

#include <event2/event.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uuid/uuid.h>

#define KEY_LEN 36
#define MAX_CLAIM_SET 65536          /* notified partitions remembered; beyond, a scan catches up */
#define MAX_STATEMENT_BYTES (64u << 20)
#define LISTEN_CHECK_TIMEOUT_MS 5000
#define SAMPLE_MS 5000                 /* gauges for /metrics, at most this often, when scraped */
#define COMPLETE_BACKOFF_MIN_MS 200    /* after a complete statement failed with an SQL error */
#define COMPLETE_BACKOFF_MAX_MS 30000
#define COMPLETE_MAX_FAILURES 3        /* a result that fails alone this often is given up */
#define HARD_STOP_AFTER_GRACE_MS 2000  /* results that still cannot be written do not hold the exit */
#define RETENTION_EVERY_MS 60000       /* a retention pass (at a poll tick); a full batch asks for the next at once */

const double obr_latency_bounds[OBR_LATENCY_BUCKETS] = {
	0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
};

enum part_state { P_IDLE, P_CLAIMING, P_HELD, P_ADVANCING };

struct row {
	struct row *next;
	char key[KEY_LEN + 1];
	char *destinations;
	char *headers;
	char *payload;
	size_t payload_len;
	char *sent;
	long attempts;
	int64_t created_ms;
};

struct part;
struct delivery;
struct obr_relay;

struct request_ctx {
	struct obr_relay *relay;
	struct delivery *delivery;
	int dest;
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
	bool permanent;             /* a destination said retrying cannot help */
	bool finished;
};

struct part {
	char key[KEY_LEN + 1];
	enum part_state state;
	bool again;                 /* notified while busy: look again before letting go */
	bool in_claim_set;
	bool in_advance_set;
	bool in_ready_list;
	bool lost;                  /* lease taken by another instance: finish current, then drop */
	bool fetched_full;          /* the last fetch returned a full batch: more rows are likely */
	uint64_t held_since;        /* claim_seq when it was claimed: a renewal sent before cannot know it */
	struct row *queue, *queue_tail;
	struct delivery *current;
	struct part *hash_next;
	struct part *ready_next;
};

/* A row's result waiting to be written by the next complete statement. */
struct mark {
	struct part *part;
	char key[KEY_LEN + 1];
	bool success;
	bool park;
	bool counted;               /* an attempt was made (malformed rows are parked without one) */
	int64_t delay_ms;
	char *error;
	char *sent;                 /* int[] literal */
	int failures;               /* complete statements that failed with this result in them */
	bool advance;               /* the complete statement also advances its partition */
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

struct obr_relay {
	struct event_base *base;
	const struct obr_config *cfg;
	char lock_id[KEY_LEN + 1];
	struct {                    /* statement parameters from the configuration, as text (the
	                               settings they come from are not reloaded) */
		char batch[24], lease[24], claim_limit[24], retention_ms[24], retention_batch[24];
	} param;

	struct obr_pg *listen_pg;   /* NULL in poll mode */
	struct obr_pg *work_pg;     /* results, advances, renewals, gauges, retention */
	struct obr_pg *claim_pg;    /* claims and scans: the path from a notification to a request
	                               never waits behind the results of earlier rows */
	struct obr_sender *sender;  /* HTTP, SQS and SNS destinations */

	struct part **buckets;
	size_t nbuckets, nparts;

	struct vec claim_set;       /* struct part *, IDLE */
	struct vec advance_set;     /* struct part *, HELD with nothing left to deliver */
	struct vec marks;           /* struct mark * */
	struct part *ready_head, *ready_tail;   /* HELD partitions waiting for a delivery slot */
	int active;                 /* partitions with a current row */
	int held;                   /* partitions in CLAIMING, HELD or ADVANCING */

	bool scan_wanted;
	bool renew_wanted;
	bool sample_wanted;
	bool retention_wanted;
	bool statement_running;     /* on work_pg */
	uint64_t claim_seq;         /* claim results taken so far */
	uint64_t renew_seq;         /* claim_seq when the running renewal was sent */
	bool claim_running;         /* on claim_pg */
	bool listen_ready;
	bool ready_logged;
	bool first_scan_done;
	bool stopping;
	bool released_all;
	bool listen_check_pending;
	bool complete_isolate;      /* an SQL error: write results one per statement to find the bad one */
	bool complete_paused;       /* backing off after an SQL error */
	int complete_backoff_ms;

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
	struct event *complete_retry_ev;
	struct event *hard_stop_ev;

	struct obr_relay_stats stats;
};

static void kick(struct obr_relay *r);
static void dispatch(struct obr_relay *r);
static void maybe_finish_shutdown(struct obr_relay *r);

/* ---- small helpers ---- */

static int64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t mono_ms(void)
{
	return mono_us() / 1000;
}

static int vec_push(struct vec *v, void *item)
{
	if (v->len == v->cap) {
		size_t cap = v->cap ? v->cap * 2 : 64;
		void **items = realloc(v->items, cap * sizeof(*items));
		if (!items)
			return -1;
		v->items = items;
		v->cap = cap;
	}
	v->items[v->len++] = item;
	return 0;
}

/* One arrival; gaps count up to twice the window, so that after a pause a few quick arrivals
 * are enough to open it again. */
static void arrived(const struct obr_relay *r, struct arrivals *a, bool first_waiting)
{
	int64_t now = mono_us();
	int64_t gap = now - a->last_us, cap = 2 * r->cfg->batch_window_ms * 1000;
	if (gap > cap)
		gap = cap;
	a->gap_us = a->last_us ? a->gap_us + (gap - a->gap_us) / 4 : gap;
	a->last_us = now;
	if (first_waiting)
		a->waiting_since_us = now;
}

static void timer_ms(struct event *ev, int64_t ms)
{
	if (ms < 0)
		ms = 0;
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
	evtimer_add(ev, &tv);
}

/* A notification payload must be a UUID; PostgreSQL prints them lower-case. */
static bool normalize_key(const char *in, char out[KEY_LEN + 1])
{
	if (strlen(in) != KEY_LEN)
		return false;
	for (int i = 0; i < KEY_LEN; i++) {
		char c = in[i];
		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (c != '-')
				return false;
		} else if (c >= 'A' && c <= 'F') {
			c = (char)(c - 'A' + 'a');
		} else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
			return false;
		}
		out[i] = c;
	}
	out[KEY_LEN] = '\0';
	return true;
}

/* ---- partition table ---- */

static size_t key_hash(const char *key)
{
	size_t h = 1469598103934665603u;
	for (int i = 0; i < KEY_LEN; i++)
		h = (h ^ (unsigned char)key[i]) * 1099511628211u;
	return h;
}

static struct part *part_find(struct obr_relay *r, const char *key)
{
	for (struct part *p = r->buckets[key_hash(key) & (r->nbuckets - 1)]; p; p = p->hash_next)
		if (!memcmp(p->key, key, KEY_LEN))
			return p;
	return NULL;
}

static void grow_table(struct obr_relay *r)
{
	size_t n = r->nbuckets * 2;
	struct part **b = calloc(n, sizeof(*b));
	if (!b)
		return; /* keep the old table: longer chains, still correct */
	for (size_t i = 0; i < r->nbuckets; i++) {
		struct part *p = r->buckets[i];
		while (p) {
			struct part *next = p->hash_next;
			size_t slot = key_hash(p->key) & (n - 1);
			p->hash_next = b[slot];
			b[slot] = p;
			p = next;
		}
	}
	free(r->buckets);
	r->buckets = b;
	r->nbuckets = n;
}

static struct part *part_get(struct obr_relay *r, const char *key)
{
	struct part *p = part_find(r, key);
	if (p)
		return p;
	if (r->nparts >= r->nbuckets)
		grow_table(r);
	p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	memcpy(p->key, key, KEY_LEN + 1);
	size_t slot = key_hash(key) & (r->nbuckets - 1);
	p->hash_next = r->buckets[slot];
	r->buckets[slot] = p;
	r->nparts++;
	return p;
}

static void row_free(struct row *row)
{
	if (!row)
		return;
	free(row->destinations);
	free(row->headers);
	free(row->payload);
	free(row->sent);
	free(row);
}

static void drop_queue(struct part *p)
{
	while (p->queue) {
		struct row *next = p->queue->next;
		row_free(p->queue);
		p->queue = next;
	}
	p->queue_tail = NULL;
}

/* Forgets an IDLE partition that nothing refers to any more. */
static void part_maybe_drop(struct obr_relay *r, struct part *p)
{
	if (p->state != P_IDLE || p->in_claim_set || p->in_advance_set || p->in_ready_list || p->current)
		return;
	struct part **pp = &r->buckets[key_hash(p->key) & (r->nbuckets - 1)];
	while (*pp && *pp != p)
		pp = &(*pp)->hash_next;
	if (*pp)
		*pp = p->hash_next;
	drop_queue(p);
	free(p);
	r->nparts--;
}

static void set_state(struct obr_relay *r, struct part *p, enum part_state s)
{
	bool was_held = p->state != P_IDLE;
	bool is_held = s != P_IDLE;
	r->held += (int)is_held - (int)was_held;
	p->state = s;
}

static void want_claim(struct obr_relay *r, struct part *p)
{
	if (p->in_claim_set || r->stopping)
		return;
	arrived(r, &r->claim_arrivals, r->claim_set.len == 0);
	if (r->claim_set.len >= MAX_CLAIM_SET || vec_push(&r->claim_set, p)) {
		r->scan_wanted = true; /* too many to remember: the scan finds them */
		return;
	}
	p->in_claim_set = true;
}

static void want_advance(struct obr_relay *r, struct part *p)
{
	if (p->in_advance_set)
		return;
	if (vec_push(&r->advance_set, p)) {
		obr_log_error("out of memory");
		return;
	}
	p->in_advance_set = true;
}

static void arm_due(struct obr_relay *r, int64_t in_ms)
{
	if (r->stopping)
		return;
	if (in_ms < 1)
		in_ms = 1;
	int64_t at = mono_ms() + in_ms;
	if (r->due_at_ms && r->due_at_ms <= at)
		return;
	r->due_at_ms = at;
	timer_ms(r->due_ev, in_ms);
}

/* ---- notifications ---- */

static void on_notify(void *arg, const char *channel, const char *payload)
{
	struct obr_relay *r = arg;
	char key[KEY_LEN + 1];

	r->stats.notifications++;
	if (r->stopping)
		return;
	if (!normalize_key(payload, key)) {
		obr_log_warn("ignoring notification on channel %s: payload \"%.64s\" is not a partition key", channel, payload);
		return;
	}
	struct part *p = part_get(r, key);
	if (!p) {
		r->scan_wanted = true;
		kick(r);
		return;
	}
	if (p->state == P_IDLE)
		want_claim(r, p);
	else
		p->again = true;
	kick(r);
}

/* ---- delivery ---- */

static void delivery_free(struct delivery *d)
{
	if (!d)
		return;
	obr_plan_clear(&d->plan);
	free(d->ok);
	free(d->ctx);
	row_free(d->row);
	free(d);
}

static int64_t retry_delay_ms(const struct obr_config *cfg, long attempts)
{
	/* base * 2^(attempts-1), capped, then "equal jitter": [delay/2, delay] */
	int64_t delay = cfg->retry_base_ms;
	for (long i = 1; i < attempts && delay < cfg->retry_max_ms; i++)
		delay *= 2;
	if (delay > cfg->retry_max_ms)
		delay = cfg->retry_max_ms;
	int64_t half = delay / 2;
	return half + (half > 0 ? (int64_t)(random() % (half + 1)) : 0);
}

static void add_mark(struct obr_relay *r, struct delivery *d, bool success, bool park, bool counted,
                     const char *error)
{
	struct mark *m = calloc(1, sizeof(*m));
	if (!m) {
		obr_log_error("out of memory recording the result of row %s", d->row->key);
		return;
	}
	m->part = d->part;
	memcpy(m->key, d->row->key, KEY_LEN + 1);
	m->success = success;
	m->park = park;
	m->counted = counted;
	if (!success) {
		struct obr_strbuf sent;
		size_t count = 0;
		obr_strbuf_init(&sent, 4096);
		obr_strbuf_puts(&sent, "{");
		for (int i = 0; i < d->plan.ndests; i++) {
			if (d->ok && d->ok[i]) {
				obr_strbuf_array_sep(&sent, &count);
				obr_strbuf_printf(&sent, "%d", d->plan.dests[i].index);
			}
		}
		obr_strbuf_puts(&sent, "}");
		m->sent = sent.failed ? strdup("{}") : strdup(sent.data);
		obr_strbuf_free(&sent);
		m->error = strdup(error ? error : "unknown error");
		if (m->error)
			obr_utf8_sanitize(m->error); /* answers and row data may be any bytes, cut anywhere */
		m->delay_ms = park ? 0 : retry_delay_ms(r->cfg, d->row->attempts + 1);
	}
	arrived(r, &r->mark_arrivals, r->marks.len == 0);
	if (vec_push(&r->marks, m)) {
		free(m->sent);
		free(m->error);
		free(m);
		obr_log_error("out of memory recording the result of row %s", d->row->key);
		return;
	}
	d->finished = true;
	kick(r);
}

/* Host and path of a URL, for logs: the query string may carry secrets. */
static void url_for_log(const char *url, char *out, size_t cap)
{
	size_t n = strcspn(url, "?#");
	snprintf(out, cap, "%.*s", (int)(n < 200 ? n : 200), url);
}

static int64_t realtime_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void record_latency(struct obr_relay *r, int64_t created_ms)
{
	double s = (double)(realtime_ms() - created_ms) / 1000.0;
	if (s < 0)
		s = 0; /* clocks of client and relay differ */
	r->stats.latency_count++;
	r->stats.latency_sum += s;
	for (int i = 0; i < OBR_LATENCY_BUCKETS; i++) {
		if (s <= obr_latency_bounds[i]) {
			r->stats.latency_buckets[i]++;
			break;
		}
	}
}

static void finish_delivery(struct obr_relay *r, struct delivery *d)
{
	struct row *row = d->row;
	if (!d->error[0]) {
		r->stats.rows_delivered++;
		record_latency(r, row->created_ms);
		obr_log_debug("delivered row %s partition %s", row->key, d->part->key);
		add_mark(r, d, true, false, true, NULL);
		return;
	}
	obr_utf8_sanitize(d->error);
	long attempts = row->attempts + 1;
	bool park = attempts >= r->cfg->failure_limit || d->permanent;
	if (park) {
		for (int i = 0; i < d->plan.ndests; i++)
			if (!d->ok[i]) {
				r->stats.parked[d->plan.dests[i].kind]++;
				break;
			}
		obr_log_warn("parking row %s partition %s after %ld attempts%s: %s", row->key, d->part->key, attempts,
		         d->permanent ? " (permanent error)" : "", d->error);
	} else {
		obr_log_warn("delivery failed for row %s partition %s (attempt %ld of %ld), will retry: %s", row->key,
		         d->part->key, attempts, (long)r->cfg->failure_limit, d->error);
	}
	add_mark(r, d, false, park, true, d->error);
}

static void on_sent(void *arg, const struct obr_send_result *res);

static void dest_failed(struct obr_relay *r, struct delivery *d, int i, const struct obr_send_result *res)
{
	r->stats.failed[d->plan.dests[i].kind]++;
	d->permanent |= res->status == OBR_SEND_PERMANENT;
	const char *why = res->message;
	if (d->error[0])
		return; /* keep the first reason; the others are in the log */
	const struct obr_destination *dest = &d->plan.dests[i];
	char where[256];
	url_for_log(dest->target, where, sizeof(where));
	snprintf(d->error, sizeof(d->error), "destinations[%d] %s %s: %s", dest->index, obr_dest_kind_name(dest->kind),
	         where, why);
}

static void start_delivery(struct obr_relay *r, struct part *p)
{
	struct row *row = p->queue;
	p->queue = row->next;
	if (!p->queue)
		p->queue_tail = NULL;
	row->next = NULL;

	struct delivery *d = calloc(1, sizeof(*d));
	if (!d) {
		obr_log_error("out of memory delivering row %s", row->key);
		row_free(row);
		return;
	}
	d->part = p;
	d->row = row;
	p->current = d;
	r->active++;

	char err[512];
	if (obr_plan_parse(&d->plan, row->key, row->destinations, row->headers, row->sent, NULL, err, sizeof(err))) {
		obr_utf8_sanitize(err);
		r->stats.parked_malformed++;
		obr_log_warn("parking malformed row %s partition %s: %s", row->key, p->key, err);
		add_mark(r, d, false, true, false, err);
		return;
	}
	size_t nd = (size_t)(d->plan.ndests ? d->plan.ndests : 1);
	d->ok = calloc(nd, sizeof(*d->ok));
	d->ctx = calloc(nd, sizeof(*d->ctx));
	if (!d->ok || !d->ctx) {
		snprintf(d->error, sizeof(d->error), "out of memory");
		finish_delivery(r, d);
		return;
	}
	for (int i = 0; i < d->plan.ndests; i++) {
		struct obr_destination *dest = &d->plan.dests[i];
		if (dest->already_sent) {
			d->ok[i] = true;
			continue;
		}
		struct request_ctx *ctx = &d->ctx[i];
		*ctx = (struct request_ctx){ r, d, i };
		struct obr_send_request req = { .dest = dest, .idempotent_key = row->key, .partition_key = p->key,
		                                .payload = row->payload, .payload_len = row->payload_len };
		struct obr_send_result refused;
		if (obr_sender_submit(r->sender, &req, on_sent, ctx, &refused)) {
			dest_failed(r, d, i, &refused); /* e.g. OUTBOX_ALLOWED_HOSTS */
			continue;
		}
		d->waiting++;
	}
	if (d->waiting == 0)
		finish_delivery(r, d);
}

static void on_sent(void *arg, const struct obr_send_result *res)
{
	struct request_ctx *ctx = arg;
	struct obr_relay *r = ctx->relay;
	struct delivery *d = ctx->delivery;
	int i = ctx->dest;

	if (res->status == OBR_SEND_OK) {
		d->ok[i] = true;
		r->stats.delivered[d->plan.dests[i].kind]++;
	} else {
		dest_failed(r, d, i, res);
	}
	if (--d->waiting == 0)
		finish_delivery(r, d);
}

/* Starts the next row of every partition that has one, within the in-flight limit. */
static void dispatch(struct obr_relay *r)
{
	while (r->ready_head && r->active < r->cfg->max_in_flight && !r->stopping) {
		struct part *p = r->ready_head;
		r->ready_head = p->ready_next;
		if (!r->ready_head)
			r->ready_tail = NULL;
		p->ready_next = NULL;
		p->in_ready_list = false;
		if (p->state != P_HELD || p->current || p->lost) {
			part_maybe_drop(r, p);
			continue;
		}
		if (p->queue)
			start_delivery(r, p);
		else
			want_advance(r, p);
	}
}

static void make_ready(struct obr_relay *r, struct part *p)
{
	if (p->in_ready_list)
		return;
	p->in_ready_list = true;
	p->ready_next = NULL;
	if (r->ready_tail)
		r->ready_tail->ready_next = p;
	else
		r->ready_head = p;
	r->ready_tail = p;
}

/* ---- statement results ---- */

/* Takes a claim or advance result: rows per partition, in order. Partitions that end up IDLE
 * are not freed here: the caller's batch still points at them. */
static void take_heads(struct obr_relay *r, const PGresult *res, bool from_claim)
{
	int n = PQntuples(res);
	for (int i = 0; i < n;) {
		const char *key = PQgetvalue(res, i, HC_PARTITION);
		const char *lease = PQgetvalue(res, i, HC_LEASE);
		struct part *p = part_find(r, key);
		int first = i;
		while (i < n && !strcmp(PQgetvalue(res, i, HC_PARTITION), key))
			i++;
		if (!p)
			continue;

		if (!strcmp(lease, "lost")) {
			obr_log_warn("lease on partition %s was lost to another instance", key);
			drop_queue(p);
			set_state(r, p, P_IDLE);
			/* or lost in a database crash (claims commit asynchronously): nobody holds it then,
			 * and a scan finds it */
			r->scan_wanted = true;
			continue;
		}
		if (!strcmp(lease, "released")) {
			set_state(r, p, P_IDLE);
			drop_queue(p);
			if (!PQgetisnull(res, first, HC_KEY))
				arm_due(r, strtoll(PQgetvalue(res, first, HC_DUE_IN_MS), NULL, 10));
			if (p->again) {
				p->again = false;
				want_claim(r, p);
			}
			continue;
		}

		/* held: queue the leading due rows; a row that is not due stops the queue */
		if (from_claim)
			p->held_since = r->claim_seq;
		set_state(r, p, P_HELD);
		p->again = false;
		p->lost = false;
		p->fetched_full = i - first >= r->cfg->batch_size;
		for (int j = first; j < i; j++) {
			if (PQgetisnull(res, j, HC_KEY))
				break;
			if (strcmp(PQgetvalue(res, j, HC_DUE), "t") != 0) {
				arm_due(r, strtoll(PQgetvalue(res, j, HC_DUE_IN_MS), NULL, 10));
				break;
			}
			struct row *row = calloc(1, sizeof(*row));
			if (!row)
				break;
			snprintf(row->key, sizeof(row->key), "%s", PQgetvalue(res, j, HC_KEY));
			row->destinations = strdup(PQgetvalue(res, j, HC_DESTINATIONS));
			row->headers = PQgetisnull(res, j, HC_HEADERS) ? NULL : strdup(PQgetvalue(res, j, HC_HEADERS));
			row->payload_len = (size_t)PQgetlength(res, j, HC_PAYLOAD);
			row->payload = malloc(row->payload_len + 1);
			if (row->payload)
				memcpy(row->payload, PQgetvalue(res, j, HC_PAYLOAD), row->payload_len + 1);
			row->sent = PQgetisnull(res, j, HC_SENT) ? NULL : strdup(PQgetvalue(res, j, HC_SENT));
			row->attempts = strtol(PQgetvalue(res, j, HC_ATTEMPTS), NULL, 10);
			row->created_ms = strtoll(PQgetvalue(res, j, HC_CREATED_MS), NULL, 10);
			if (!row->destinations || !row->payload) {
				row_free(row);
				break;
			}
			if (p->queue_tail)
				p->queue_tail->next = row;
			else
				p->queue = row;
			p->queue_tail = row;
		}
		if (p->queue)
			make_ready(r, p);
		else
			want_advance(r, p); /* nothing due: the advance releases it */
	}
}

struct batch {
	struct obr_relay *relay;
	struct vec parts;   /* or marks */
	bool errored;
};

static struct batch *batch_new(struct obr_relay *r)
{
	struct batch *b = calloc(1, sizeof(*b));
	if (b)
		b->relay = r;
	return b;
}

static void batch_free(struct batch *b)
{
	if (!b)
		return;
	free(b->parts.items);
	free(b);
}

static void statement_error(const char *what, const char *err)
{
	obr_log_warn("%s statement failed, will retry: %s", what, err ? err : "connection lost");
}

static void on_claim_result(void *arg, const PGresult *res, const char *err)
{
	struct batch *b = arg;
	struct obr_relay *r = b->relay;
	r->claim_running = false;

	if (res && !err) {
		r->claim_seq++;
		take_heads(r, res, true);
		r->stats.claims++;
	} else {
		statement_error("claim", err);
	}
	/* partitions not in the result are held by another instance (or the statement failed) */
	for (size_t i = 0; i < b->parts.len; i++) {
		struct part *p = b->parts.items[i];
		if (p->state != P_CLAIMING)
			continue;
		set_state(r, p, P_IDLE);
		if (!res || err)
			want_claim(r, p); /* try again */
		p->again = false;
		part_maybe_drop(r, p);
	}
	batch_free(b);
	dispatch(r);
	kick(r);
}

static void on_advance_result(void *arg, const PGresult *res, const char *err)
{
	struct batch *b = arg;
	struct obr_relay *r = b->relay;
	r->statement_running = false;

	if (res && !err)
		take_heads(r, res, false);
	else
		statement_error("advance", err);
	for (size_t i = 0; i < b->parts.len; i++) {
		struct part *p = b->parts.items[i];
		if (p->state == P_ADVANCING) {
			/* failed statement: still ours as far as we know; look again */
			set_state(r, p, P_HELD);
			want_advance(r, p);
		}
		part_maybe_drop(r, p);
	}
	batch_free(b);
	dispatch(r);
	kick(r);
	maybe_finish_shutdown(r);
}

static void mark_free(struct mark *m)
{
	free(m->error);
	free(m->sent);
	free(m);
}

static void on_complete_result(void *arg, const PGresult *res, const char *err)
{
	struct batch *b = arg;
	struct obr_relay *r = b->relay;
	r->statement_running = false;

	if (!res) {
		/* connection lost: keep the results, they go out after the reconnect */
		statement_error("complete", err);
		for (size_t i = 0; i < b->parts.len; i++)
			vec_push(&r->marks, b->parts.items[i]);
		batch_free(b);
		kick(r);
		return;
	}
	if (err) {
		/* the database refused the statement: back off, and write results one at a time so
		 * one bad result cannot hold back the others; a result that keeps failing alone is
		 * given up (its row stays pending and is delivered again) */
		obr_log_error("could not record %zu delivery results, backing off %d ms: %s", b->parts.len,
		          r->complete_backoff_ms, err);
		bool alone = b->parts.len == 1;
		for (size_t i = 0; i < b->parts.len; i++) {
			struct mark *m = b->parts.items[i];
			if (alone && ++m->failures >= COMPLETE_MAX_FAILURES) {
				struct part *p = m->part;
				obr_log_error("giving up recording the result of row %s partition %s; it will be delivered again",
				          m->key, p->key);
				delivery_free(p->current);
				p->current = NULL;
				r->active--;
				drop_queue(p);
				want_advance(r, p);
				mark_free(m);
				continue;
			}
			vec_push(&r->marks, m);
		}
		batch_free(b);
		r->complete_isolate = true;
		r->complete_paused = true;
		timer_ms(r->complete_retry_ev, r->complete_backoff_ms);
		r->complete_backoff_ms = r->complete_backoff_ms * 2 > COMPLETE_BACKOFF_MAX_MS ? COMPLETE_BACKOFF_MAX_MS
		                                                                          : r->complete_backoff_ms * 2;
		kick(r);
		return;
	}
	if (r->marks.len == 0) {
		r->complete_isolate = false;
		r->complete_backoff_ms = COMPLETE_BACKOFF_MIN_MS;
	}
	for (size_t i = 0; i < b->parts.len; i++) {
		struct mark *m = b->parts.items[i];
		struct part *p = m->part;
		struct delivery *d = p->current;
		p->current = NULL;
		r->active--;
		delivery_free(d);
		if (!m->success && !m->park) {
			drop_queue(p); /* the head waits for its retry; the advance releases the partition */
		}
		if (m->advance) {
			set_state(r, p, P_ADVANCING); /* its fate is in the result */
		} else if (p->lost) {
			drop_queue(p);
			set_state(r, p, P_IDLE);
			p->lost = false;
			part_maybe_drop(r, p);
		} else if (p->queue && !r->stopping) {
			make_ready(r, p);
		} else {
			want_advance(r, p);
		}
	}
	take_heads(r, res, false);
	for (size_t i = 0; i < b->parts.len; i++) {
		struct mark *m = b->parts.items[i];
		struct part *p = m->part;
		if (m->advance) {
			if (p->state == P_ADVANCING) { /* not in the result: look again */
				set_state(r, p, P_HELD);
				want_advance(r, p);
			}
			part_maybe_drop(r, p);
		}
		mark_free(m);
	}
	batch_free(b);
	dispatch(r);
	kick(r);
	maybe_finish_shutdown(r);
}

static void on_scan_result(void *arg, const PGresult *res, const char *err)
{
	struct obr_relay *r = arg;
	r->claim_running = false;

	if (!res || err) {
		statement_error("scan", err);
		r->scan_wanted = true;
		kick(r);
		return;
	}
	r->stats.scans++;
	int n = PQntuples(res);
	for (int i = 0; i < n; i++) {
		if (PQgetisnull(res, i, 0)) {
			if (!PQgetisnull(res, i, 1))
				arm_due(r, strtoll(PQgetvalue(res, i, 1), NULL, 10));
			continue;
		}
		r->stats.scan_found++;
		struct part *p = part_get(r, PQgetvalue(res, i, 0));
		if (p && p->state == P_IDLE)
			want_claim(r, p);
	}
	/* a full page (the last row is the due time): there may be more */
	if (n - 1 >= r->cfg->claim_limit)
		r->scan_wanted = true;
	if (!r->first_scan_done) {
		r->first_scan_done = true;
		if (r->cfg->mode == OBR_MODE_POLL && !r->ready_logged) {
			r->ready_logged = true;
			obr_log_info("relay ready: polling every %lld ms", (long long)r->cfg->poll_interval_ms);
			obr_sd_notify("READY=1");
		}
	}
	kick(r);
}

static void on_renew_result(void *arg, const PGresult *res, const char *err)
{
	struct obr_relay *r = arg;
	r->statement_running = false;
	if (!res || err) {
		statement_error("lease renewal", err);
		kick(r);
		return;
	}
	/* every partition we believe held but is not in the result has been taken over */
	int n = PQntuples(res);
	for (size_t bkt = 0; bkt < r->nbuckets; bkt++) {
		struct part *next;
		for (struct part *p = r->buckets[bkt]; p; p = next) {
			next = p->hash_next;
			/* claimed on the claim connection after this renewal was sent: not in its result */
			if (p->state != P_HELD || p->held_since > r->renew_seq)
				continue;
			bool found = false;
			for (int i = 0; i < n && !found; i++)
				found = !strcmp(PQgetvalue(res, i, 0), p->key);
			if (!found && !p->lost) {
				obr_log_warn("lease on partition %s expired and was taken over; its fetched rows are dropped", p->key);
				p->lost = true;
				drop_queue(p);
				if (!p->current) {
					set_state(r, p, P_IDLE);
					part_maybe_drop(r, p); /* or later, when it leaves the lists */
				}
			}
		}
	}
	kick(r);
}

static void on_sample_result(void *arg, const PGresult *res, const char *err)
{
	struct obr_relay *r = arg;
	r->statement_running = false;
	if (res && !err && PQntuples(res) == 1) {
		r->stats.due_rows = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
		r->stats.oldest_due_age_s = strtod(PQgetvalue(res, 0, 1), NULL);
		r->stats.notification_queue_usage = strtod(PQgetvalue(res, 0, 2), NULL);
		r->stats.sampled_at_unix = realtime_ms() / 1000;
	} else {
		statement_error("sample", err);
	}
	kick(r);
}

static void on_retention_result(void *arg, const PGresult *res, const char *err)
{
	struct obr_relay *r = arg;
	r->statement_running = false;
	if (!res || err || PQntuples(res) != 1) {
		statement_error("retention", err);
		kick(r);
		return;
	}
	bool got = !strcmp(PQgetvalue(res, 0, 0), "t");
	long long rows = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
	long long leases = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
	r->stats.retention_deleted += (uint64_t)rows;
	if (rows || leases)
		obr_log_debug("retention deleted %lld processed rows and %lld released leases", rows, leases);
	/* a full batch: more is waiting; the next batch goes after whatever else is due */
	if (got && (rows >= r->cfg->retention_batch || leases >= r->cfg->retention_batch))
		r->retention_wanted = true;
	kick(r);
}

static void on_release_all_result(void *arg, const PGresult *res, const char *err)
{
	struct obr_relay *r = arg;
	r->statement_running = false;
	if (!res || err)
		obr_log_warn("could not release leases at shutdown (they expire by themselves): %s", err ? err : "connection lost");
	else
		obr_log_info("released %s leases", PQcmdTuples((PGresult *)(uintptr_t)res));
	r->released_all = true;
	event_base_loopbreak(r->base);
}

/* ---- building statements ---- */

static char *uuid_array(struct part **parts, size_t n)
{
	struct obr_strbuf b;
	obr_strbuf_init(&b, MAX_STATEMENT_BYTES);
	obr_strbuf_puts(&b, "{");
	for (size_t i = 0; i < n; i++) {
		if (i)
			obr_strbuf_puts(&b, ",");
		obr_strbuf_append(&b, parts[i]->key, KEY_LEN);
	}
	obr_strbuf_puts(&b, "}");
	if (b.failed) {
		obr_strbuf_free(&b);
		return NULL;
	}
	return b.data;
}

static bool send_heads_statement(struct obr_relay *r, struct obr_pg *pg, const char *sql, struct batch *b,
                                 obr_pg_result_fn fn)
{
	char *keys = uuid_array((struct part **)b->parts.items, b->parts.len);
	const char *params[] = { r->lock_id, keys, r->param.batch, r->param.lease };
	bool ok = keys && obr_pg_query(pg, sql, 4, params, fn, b) == 0;
	free(keys);
	return ok;
}

static bool send_complete(struct obr_relay *r, size_t limit)
{
	struct obr_strbuf done, keys, errs, delays, parks, sents, counted;
	size_t nd = 0, nf = 0;
	struct batch *b = batch_new(r);
	if (!b)
		return false;
	obr_strbuf_init(&done, MAX_STATEMENT_BYTES);
	obr_strbuf_init(&keys, MAX_STATEMENT_BYTES);
	obr_strbuf_init(&errs, MAX_STATEMENT_BYTES);
	obr_strbuf_init(&delays, MAX_STATEMENT_BYTES);
	obr_strbuf_init(&parks, MAX_STATEMENT_BYTES);
	obr_strbuf_init(&sents, MAX_STATEMENT_BYTES);
	obr_strbuf_init(&counted, MAX_STATEMENT_BYTES);
	struct obr_strbuf *all[] = { &done, &keys, &errs, &delays, &parks, &sents, &counted };
	for (size_t i = 0; i < 7; i++)
		obr_strbuf_puts(all[i], "{");

	/* partitions these results leave with nothing fetched, and that had fewer rows than a
	 * batch (so probably nothing more): advanced in the same statement, which saves a round
	 * trip when rows arrive one at a time. A partition that had a full batch goes to the
	 * advance statement, which fetches for many partitions at once and keeps these results
	 * cheap while a backlog drains. Not after a retry (the row keeps its place as the head) */
	struct obr_strbuf adv;
	size_t na = 0;
	obr_strbuf_init(&adv, MAX_STATEMENT_BYTES);
	obr_strbuf_puts(&adv, "{");

	size_t take = r->marks.len < limit ? r->marks.len : limit;
	for (size_t i = 0; i < take; i++) {
		struct mark *m = r->marks.items[i];
		struct part *p = m->part;
		m->advance = (m->success || m->park) && !p->queue && !p->fetched_full && !p->lost && !r->stopping &&
		             p->state == P_HELD;
		if (m->advance) {
			obr_strbuf_array_sep(&adv, &na);
			obr_strbuf_append(&adv, p->key, KEY_LEN);
		}
		if (m->success) {
			obr_strbuf_array_sep(&done, &nd);
			obr_strbuf_puts(&done, m->key);
		} else {
			size_t c = nf;
			obr_strbuf_array_sep(&keys, &c);
			obr_strbuf_puts(&keys, m->key);
			c = nf;
			obr_strbuf_array_sep(&errs, &c);
			obr_strbuf_array_elem(&errs, m->error);
			c = nf;
			obr_strbuf_array_sep(&delays, &c);
			obr_strbuf_printf(&delays, "%lld", (long long)m->delay_ms);
			c = nf;
			obr_strbuf_array_sep(&parks, &c);
			obr_strbuf_puts(&parks, m->park ? "t" : "f");
			c = nf;
			obr_strbuf_array_sep(&sents, &c);
			obr_strbuf_array_elem(&sents, m->sent);
			obr_strbuf_array_sep(&counted, &nf);
			obr_strbuf_puts(&counted, m->counted ? "t" : "f");
		}
		vec_push(&b->parts, m);
	}
	bool failed = false;
	for (size_t i = 0; i < 7; i++) {
		obr_strbuf_puts(all[i], "}");
		failed |= all[i]->failed;
	}
	obr_strbuf_puts(&adv, "}");
	failed |= adv.failed;
	bool ok = false;
	if (!failed && b->parts.len == take) {
		const char *params[] = { done.data, keys.data, errs.data, delays.data, parks.data, sents.data,
			                 counted.data, r->lock_id, adv.data, r->param.batch, r->param.lease };
		ok = obr_pg_query(r->work_pg, r->cfg->delete_on_success ? OBR_SQL_COMPLETE_DELETE : OBR_SQL_COMPLETE, 11,
		                  params, on_complete_result, b) == 0;
	}
	for (size_t i = 0; i < 7; i++)
		obr_strbuf_free(all[i]);
	obr_strbuf_free(&adv);
	if (ok) {
		memmove(r->marks.items, r->marks.items + take, (r->marks.len - take) * sizeof(void *));
		r->marks.len -= take;
	} else {
		batch_free(b);
	}
	return ok;
}

/*
 * OUTBOX_BATCH_WINDOW_MS: whether to hold back a statement (claim, results) so that more of its
 * kind can go with it. Only while work of that kind arrives more often than once per window on
 * average (a lone row, or rows at a slower pace, wait for nothing), at most one window after the
 * oldest waiting arrival, never once enough is there, nor at shutdown. The timer brings the flush
 * back when the window closes.
 */
static bool gathering(struct obr_relay *r, const struct arrivals *a, size_t have, size_t enough, struct event *timer)
{
	int64_t window_us = r->cfg->batch_window_ms * 1000;
	if (window_us <= 0 || r->cfg->mode != OBR_MODE_LISTEN || r->stopping || have >= enough || a->gap_us >= window_us)
		return false;
	int64_t left_us = a->waiting_since_us + window_us - mono_us();
	if (left_us <= 0)
		return false;
	struct timeval tv = { (time_t)(left_us / 1000000), (suseconds_t)(left_us % 1000000) };
	evtimer_add(timer, &tv);
	return true;
}

/* Sends the most useful statement, if the work connection is free. */
static void flush(struct obr_relay *r)
{
	if (r->statement_running || !obr_pg_is_up(r->work_pg))
		return;

	/* 1. lease renewal first, when due: a late renewal lets another instance send our rows */
	if (r->renew_wanted && !r->stopping) {
		r->renew_wanted = false;
		const char *params[] = { r->lock_id, r->param.lease };
		if (obr_pg_query(r->work_pg, OBR_SQL_RENEW, 2, params, on_renew_result, r) == 0) {
			r->statement_running = true;
			r->renew_seq = r->claim_seq;
		}
		return;
	}

	/* 2. results of delivered rows: they unblock their partitions (within the batch window,
	 * unless every row in flight has its result: then nothing more can come) */
	if (r->marks.len && !r->complete_paused) {
		if (!r->complete_isolate &&
		    gathering(r, &r->mark_arrivals, r->marks.len, (size_t)r->active, r->marks_window_ev))
			return;
		if (send_complete(r, r->complete_isolate ? 1 : r->marks.len))
			r->statement_running = true;
		return;
	}

	/* at shutdown nothing is fetched any more: the final release gives back every lease */
	if (r->stopping && r->advance_set.len) {
		for (size_t i = 0; i < r->advance_set.len; i++) {
			struct part *p = r->advance_set.items[i];
			p->in_advance_set = false;
			set_state(r, p, P_IDLE);
			drop_queue(p);
			part_maybe_drop(r, p);
		}
		r->advance_set.len = 0;
	}

	/* 3. held partitions with nothing left: more rows, or release */
	if (r->advance_set.len) {
		struct batch *b = batch_new(r);
		if (!b)
			return;
		size_t take = r->advance_set.len;
		if (take > (size_t)r->cfg->claim_limit)
			take = (size_t)r->cfg->claim_limit;
		for (size_t i = 0; i < take; i++) {
			struct part *p = r->advance_set.items[i];
			p->in_advance_set = false;
			set_state(r, p, P_ADVANCING);
			vec_push(&b->parts, p);
		}
		memmove(r->advance_set.items, r->advance_set.items + take, (r->advance_set.len - take) * sizeof(void *));
		r->advance_set.len -= take;
		if (send_heads_statement(r, r->work_pg, OBR_SQL_ADVANCE, b, on_advance_result)) {
			r->statement_running = true;
		} else {
			for (size_t i = 0; i < b->parts.len; i++) {
				struct part *p = b->parts.items[i];
				set_state(r, p, P_HELD);
				want_advance(r, p);
			}
			batch_free(b);
		}
		return;
	}

	if (r->stopping) {
		/* after the last claim: a lease it takes must not outlive the release */
		if (!r->released_all && r->active == 0 && obr_sender_in_flight(r->sender) == 0 && !r->claim_running) {
			const char *params[] = { r->lock_id };
			if (obr_pg_query(r->work_pg, OBR_SQL_RELEASE_ALL, 1, params, on_release_all_result, r) == 0)
				r->statement_running = true;
		}
		return;
	}

	/* 5. the gauges for /metrics, every few seconds */
	if (r->sample_wanted) {
		r->sample_wanted = false;
		if (obr_pg_query(r->work_pg, OBR_SQL_SAMPLE, 0, NULL, on_sample_result, r) == 0) {
			r->statement_running = true;
			return;
		}
	}

	/* 6. retention, the least urgent */
	if (r->retention_wanted && !r->scan_wanted) {
		r->retention_wanted = false;
		const char *params[] = { r->param.retention_ms, r->param.retention_batch };
		if (obr_pg_query(r->work_pg, OBR_SQL_RETENTION, 2, params, on_retention_result, r) == 0) {
			r->statement_running = true;
			return;
		}
	}

}

/* The claim connection: notified partitions first, then a scan when one is wanted. */
static void flush_claims(struct obr_relay *r)
{
	if (r->claim_running || r->stopping || !obr_pg_is_up(r->claim_pg))
		return;

	/* claim notified partitions, as many as there are free delivery slots */
	int room = (int)r->cfg->max_in_flight - r->held;
	if (r->claim_set.len && room > 0) {
		size_t enough = (size_t)(room < r->cfg->claim_limit ? room : r->cfg->claim_limit);
		if (gathering(r, &r->claim_arrivals, r->claim_set.len, enough, r->claim_window_ev))
			return;
		struct batch *b = batch_new(r);
		if (!b)
			return;
		size_t take = r->claim_set.len;
		if (take > (size_t)room)
			take = (size_t)room;
		if (take > (size_t)r->cfg->claim_limit)
			take = (size_t)r->cfg->claim_limit;
		for (size_t i = 0; i < take; i++) {
			struct part *p = r->claim_set.items[i];
			p->in_claim_set = false;
			set_state(r, p, P_CLAIMING);
			vec_push(&b->parts, p);
		}
		memmove(r->claim_set.items, r->claim_set.items + take, (r->claim_set.len - take) * sizeof(void *));
		r->claim_set.len -= take;
		if (send_heads_statement(r, r->claim_pg, OBR_SQL_CLAIM, b, on_claim_result)) {
			r->claim_running = true;
		} else {
			for (size_t i = 0; i < b->parts.len; i++) {
				struct part *p = b->parts.items[i];
				set_state(r, p, P_IDLE);
				want_claim(r, p);
			}
			batch_free(b);
		}
		return;
	}

	/* then scan for partitions no notification announced */
	if (r->scan_wanted && r->claim_set.len == 0) {
		r->scan_wanted = false;
		const char *params[] = { r->param.claim_limit, r->lock_id };
		if (obr_pg_query(r->claim_pg, OBR_SQL_SCAN, 2, params, on_scan_result, r) == 0)
			r->claim_running = true;
		else
			r->scan_wanted = true;
	}
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
	struct obr_relay *r = arg;
	dispatch(r);
	flush(r);
	flush_claims(r);
}

static void kick(struct obr_relay *r)
{
	event_active(r->kick_ev, EV_TIMEOUT, 0);
}

/* ---- timers ---- */

static void on_listen_check(evutil_socket_t fd, short what, void *arg);

/* The fallback poll tick also carries the periodic chores (the listen connection's health
 * check, retention), so an idle relay sends nothing between two polls. */
static void on_poll(evutil_socket_t fd, short what, void *arg)
{
	struct obr_relay *r = arg;
	int64_t now = mono_ms();
	r->scan_wanted = true;
	if (r->cfg->retention_ms > 0 && now - r->last_retention_ms >= RETENTION_EVERY_MS) {
		r->last_retention_ms = now;
		r->retention_wanted = true;
	}
	if (r->listen_pg && r->cfg->health_check_ms == 0)
		on_listen_check(-1, 0, r);
	kick(r);
}

static void on_due(evutil_socket_t fd, short what, void *arg)
{
	struct obr_relay *r = arg;
	r->due_at_ms = 0;
	r->scan_wanted = true;
	kick(r);
}

static void on_window(evutil_socket_t fd, short what, void *arg)
{
	kick(arg);
}

static void on_complete_retry(evutil_socket_t fd, short what, void *arg)
{
	struct obr_relay *r = arg;
	r->complete_paused = false;
	kick(r);
}

static void on_hard_stop(evutil_socket_t fd, short what, void *arg)
{
	struct obr_relay *r = arg;
	obr_log_warn("exiting with %zu delivery results not recorded: their rows will be delivered again", r->marks.len);
	event_base_loopbreak(r->base);
}

static void on_renew(evutil_socket_t fd, short what, void *arg)
{
	struct obr_relay *r = arg;
	if (r->held > 0) {
		r->renew_wanted = true;
		kick(r);
	}
}

/* ---- connections ---- */

static void check_ready(struct obr_relay *r)
{
	if (r->ready_logged || r->cfg->mode != OBR_MODE_LISTEN)
		return;
	if (r->listen_ready && obr_pg_is_up(r->work_pg) && obr_pg_is_up(r->claim_pg)) {
		r->ready_logged = true;
		obr_log_info("relay ready: listening on channel %s, instance %s", r->cfg->channel, r->lock_id);
		obr_sd_notify("READY=1");
	}
}

static void on_work_connected(void *arg)
{
	struct obr_relay *r = arg;
	r->scan_wanted = true;
	check_ready(r);
	kick(r);
}

/*
 * A statement connection was lost, maybe in a database crash. Claims commit without waiting for
 * the WAL flush (a lease is not a delivery record; the first result written for a partition,
 * which does wait, makes its lease durable too), so a crash can lose a lease taken a moment
 * before. Rows fetched but not started are dropped: each partition finishes its current row,
 * then an advance checks that the lease is still ours before anything more is sent.
 */
static void forget_fetched_rows(struct obr_relay *r)
{
	for (size_t bkt = 0; bkt < r->nbuckets; bkt++)
		for (struct part *p = r->buckets[bkt]; p; p = p->hash_next)
			if (p->state == P_HELD && p->queue) {
				drop_queue(p);
				if (!p->current && !p->in_ready_list)
					want_advance(r, p);
			}
}

static void on_work_disconnected(void *arg, const char *why)
{
	struct obr_relay *r = arg;
	r->stats.reconnects++;
	r->statement_running = false;
	forget_fetched_rows(r);
}

static void on_claim_disconnected(void *arg, const char *why)
{
	struct obr_relay *r = arg;
	r->stats.reconnects++;
	r->claim_running = false;
	forget_fetched_rows(r);
}

static void on_listen_connected(void *arg)
{
	struct obr_relay *r = arg;
	r->listen_ready = true;
	r->listen_check_pending = false;
	/* notifications sent while we were not listening are lost: catch up with a scan */
	r->scan_wanted = true;
	check_ready(r);
	kick(r);
}

static void on_listen_disconnected(void *arg, const char *why)
{
	struct obr_relay *r = arg;
	r->listen_ready = false;
	r->stats.reconnects++;
	evtimer_del(r->listen_check_timeout_ev);
}

static void on_listen_check_result(void *arg, const PGresult *res, const char *err)
{
	struct obr_relay *r = arg;
	r->listen_check_pending = false;
	evtimer_del(r->listen_check_timeout_ev);
}

static void on_listen_check(evutil_socket_t fd, short what, void *arg)
{
	struct obr_relay *r = arg;
	if (!r->listen_pg || !obr_pg_is_up(r->listen_pg) || r->listen_check_pending)
		return;
	if (obr_pg_query(r->listen_pg, "SELECT 1", 0, NULL, on_listen_check_result, r) == 0) {
		r->listen_check_pending = true;
		timer_ms(r->listen_check_timeout_ev, LISTEN_CHECK_TIMEOUT_MS);
	}
}

static void on_listen_check_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct obr_relay *r = arg;
	r->listen_check_pending = false;
	obr_pg_reset(r->listen_pg, "the listen connection did not answer a health check");
}

/* ---- shutdown ---- */

static void maybe_finish_shutdown(struct obr_relay *r)
{
	if (r->stopping)
		kick(r);
}

static void on_grace(evutil_socket_t fd, short what, void *arg)
{
	struct obr_relay *r = arg;
	int n = obr_sender_in_flight(r->sender);
	if (n > 0)
		obr_log_warn("shutdown grace period over: abandoning %d requests in flight (their rows will be sent again)", n);
	obr_sender_abort_all(r->sender);
	/* the abandoned rows have no result to write */
	for (size_t b = 0; b < r->nbuckets; b++) {
		for (struct part *p = r->buckets[b]; p; p = p->hash_next) {
			if (p->current && !p->current->finished) {
				delivery_free(p->current);
				p->current = NULL;
				r->active--;
			}
		}
	}
	if (!obr_pg_is_up(r->work_pg)) {
		obr_log_warn("database unreachable at shutdown: leases expire by themselves");
		event_base_loopbreak(r->base);
		return;
	}
	/* write what can still be written, then go, whatever the database says */
	timer_ms(r->hard_stop_ev, HARD_STOP_AFTER_GRACE_MS);
	kick(r);
}

void obr_relay_shutdown(struct obr_relay *r)
{
	if (r->stopping)
		return;
	r->stopping = true;
	obr_log_info("shutting down: %d rows in flight, grace period %lld ms", r->active, (long long)r->cfg->shutdown_grace_ms);
	for (size_t i = 0; i < r->claim_set.len; i++) {
		struct part *p = r->claim_set.items[i];
		p->in_claim_set = false;
	}
	r->claim_set.len = 0;
	evtimer_del(r->poll_ev);
	evtimer_del(r->due_ev);
	timer_ms(r->grace_ev, r->cfg->shutdown_grace_ms);
	kick(r);
}

/* ---- lifecycle ---- */

struct obr_relay *obr_relay_new(struct event_base *base, const struct obr_config *cfg)
{
	struct obr_relay *r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	r->base = base;
	r->cfg = cfg;
	uuid_t id;
	uuid_generate_random(id);
	uuid_unparse_lower(id, r->lock_id);
	snprintf(r->param.batch, sizeof(r->param.batch), "%lld", (long long)cfg->batch_size);
	snprintf(r->param.lease, sizeof(r->param.lease), "%lld", (long long)cfg->lease_ms);
	snprintf(r->param.claim_limit, sizeof(r->param.claim_limit), "%lld", (long long)cfg->claim_limit);
	snprintf(r->param.retention_ms, sizeof(r->param.retention_ms), "%lld", (long long)cfg->retention_ms);
	snprintf(r->param.retention_batch, sizeof(r->param.retention_batch), "%lld", (long long)cfg->retention_batch);

	r->nbuckets = 1024;
	r->buckets = calloc(r->nbuckets, sizeof(*r->buckets));
	struct obr_send_options sopt = { .timeout_ms = (long)cfg->http_timeout_ms,
		                         .ca_file = cfg->ca_file,
		                         .tls_verify = cfg->tls_verify,
		                         .deny_private = cfg->deny_private_addresses,
		                         .allowed_hosts = cfg->allowed_hosts,
		                         .proxy = cfg->http_proxy };
	if (!cfg->tls_verify)
		obr_log_warn("OUTBOX_TLS_VERIFY is off: HTTPS certificates and host names are not checked");
	char send_err[256];
	r->sender = obr_senders_new(base, &sopt, send_err, sizeof(send_err));
	if (!r->sender) {
		obr_log_error("%s", send_err);
		goto fail;
	}
	r->kick_ev = event_new(base, -1, 0, on_kick, r);
	r->poll_ev = event_new(base, -1, EV_PERSIST, on_poll, r);
	r->due_ev = evtimer_new(base, on_due, r);
	r->renew_ev = event_new(base, -1, EV_PERSIST, on_renew, r);
	r->listen_check_ev = event_new(base, -1, EV_PERSIST, on_listen_check, r);
	r->listen_check_timeout_ev = evtimer_new(base, on_listen_check_timeout, r);
	r->grace_ev = evtimer_new(base, on_grace, r);
	r->complete_retry_ev = evtimer_new(base, on_complete_retry, r);
	r->claim_window_ev = evtimer_new(base, on_window, r);
	r->marks_window_ev = evtimer_new(base, on_window, r);
	r->hard_stop_ev = evtimer_new(base, on_hard_stop, r);
	r->complete_backoff_ms = COMPLETE_BACKOFF_MIN_MS;
	r->stats.due_rows = -1;
	r->stats.oldest_due_age_s = -1;
	r->stats.notification_queue_usage = -1;
	if (!r->complete_retry_ev || !r->hard_stop_ev || !r->claim_window_ev || !r->marks_window_ev || !r->buckets ||
	    !r->kick_ev || !r->poll_ev || !r->due_ev || !r->renew_ev || !r->listen_check_ev ||
	    !r->listen_check_timeout_ev || !r->grace_ev)
		goto fail;

	/* In listen mode the statement connections are ours alone: the hot statements are prepared
	 * once (planning cost more than executing them). Claims do not wait for the WAL flush (see
	 * forget_fetched_rows): that flush would sit between the writer's commit and the request.
	 * Results wait for it unless asked otherwise (OUTBOX_SYNCHRONOUS_COMMIT). Poll mode keeps no
	 * session state: it may run through a transaction pooler. */
	static const struct obr_pg_statement work_prepared[] = {
		{ "obr_advance", OBR_SQL_ADVANCE },
		{ "obr_complete", OBR_SQL_COMPLETE },
		{ "obr_complete_delete", OBR_SQL_COMPLETE_DELETE },
		{ NULL, NULL },
	};
	static const struct obr_pg_statement claim_prepared[] = {
		{ "obr_claim", OBR_SQL_CLAIM },
		{ NULL, NULL },
	};
	bool session = cfg->mode == OBR_MODE_LISTEN;
	/* Generic plans: with the default plan_cache_mode PostgreSQL kept re-planning the results
	 * statement on nearly every execution (its generic plan is estimated dearer than a custom
	 * plan), and planning it costs more than running it (contrib/bench, analysis). */
	const char *generic = "SET plan_cache_mode = force_generic_plan";
	const char *generic_async = "SET plan_cache_mode = force_generic_plan; SET synchronous_commit = off";
	const char *work_setup = session ? (cfg->synchronous_commit ? generic : generic_async) : NULL;
	const char *claim_setup = session ? generic_async : NULL;
	struct obr_pg_callbacks work_cb = { on_work_connected, on_work_disconnected, NULL };
	struct obr_pg_callbacks claim_cb = { on_work_connected, on_claim_disconnected, NULL };
	r->work_pg = obr_pg_new(base, cfg->database_url, "outbox-relay work", work_setup, session ? work_prepared : NULL,
	                        &work_cb, r);
	r->claim_pg = obr_pg_new(base, cfg->database_url, "outbox-relay claim", claim_setup, session ? claim_prepared : NULL,
	                         &claim_cb, r);
	if (!r->work_pg || !r->claim_pg)
		goto fail;
	if (cfg->mode == OBR_MODE_LISTEN) {
		char listen_sql[128];
		snprintf(listen_sql, sizeof(listen_sql), "LISTEN %s", cfg->channel);
		struct obr_pg_callbacks listen_cb = { on_listen_connected, on_listen_disconnected, on_notify };
		r->listen_pg = obr_pg_new(base, cfg->database_url, "outbox-relay listen", listen_sql, NULL, &listen_cb, r);
		if (!r->listen_pg)
			goto fail;
	}
	return r;
fail:
	obr_relay_free(r);
	return NULL;
}

int obr_relay_start(struct obr_relay *r)
{
	struct timeval tv;
	int64_t ms = r->cfg->poll_interval_ms;
	tv = (struct timeval){ (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
	event_add(r->poll_ev, &tv);
	ms = r->cfg->lease_ms / 3;
	tv = (struct timeval){ (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
	event_add(r->renew_ev, &tv);
	r->sample_wanted = true;
	r->last_sample_ms = mono_ms();
	if (r->cfg->retention_ms > 0) {
		r->retention_wanted = true;
		r->last_retention_ms = mono_ms();
	}
	if (r->listen_pg) {
		ms = r->cfg->health_check_ms;
		if (ms > 0) {
			tv = (struct timeval){ (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
			event_add(r->listen_check_ev, &tv);
		}
		obr_pg_start(r->listen_pg);
	}
	obr_pg_start(r->work_pg);
	obr_pg_start(r->claim_pg);
	obr_log_info("outbox-relay %s starting: mode %s, instance %s", OBR_VERSION, obr_mode_name(r->cfg->mode), r->lock_id);
	return 0;
}

const struct obr_relay_stats *obr_relay_stats(struct obr_relay *r)
{
	/* a scrape asks for fresh gauges; the answer serves the next scrape (no query when idle
	 * and nobody looks, and never more than one every SAMPLE_MS) */
	int64_t now = mono_ms();
	if (now - r->last_sample_ms >= SAMPLE_MS) {
		r->last_sample_ms = now;
		r->sample_wanted = true;
		kick(r);
	}
	r->stats.in_flight_requests = obr_sender_in_flight(r->sender);
	r->stats.leases_held = r->held;
	return &r->stats;
}

bool obr_relay_ready(const struct obr_relay *r, char *why, size_t whylen)
{
	if (r->stopping) {
		snprintf(why, whylen, "shutting down");
		return false;
	}
	if (!obr_pg_is_up(r->work_pg) || !obr_pg_is_up(r->claim_pg)) {
		snprintf(why, whylen, "database connection is down");
		return false;
	}
	if (r->listen_pg && !r->listen_ready) {
		snprintf(why, whylen, "LISTEN is not active (listen connection down)");
		return false;
	}
	if (!r->listen_pg && !r->first_scan_done) {
		snprintf(why, whylen, "first poll not done yet");
		return false;
	}
	return true;
}

void obr_relay_free(struct obr_relay *r)
{
	if (!r)
		return;
	obr_pg_free(r->listen_pg);
	obr_pg_free(r->work_pg);
	obr_pg_free(r->claim_pg);
	obr_sender_abort_all(r->sender);
	for (size_t b = 0; r->buckets && b < r->nbuckets; b++) {
		struct part *p = r->buckets[b];
		while (p) {
			struct part *next = p->hash_next;
			if (p->current)
				delivery_free(p->current);
			drop_queue(p);
			free(p);
			p = next;
		}
	}
	for (size_t i = 0; i < r->marks.len; i++)
		mark_free(r->marks.items[i]);
	free(r->marks.items);
	free(r->claim_set.items);
	free(r->advance_set.items);
	free(r->buckets);
	obr_sender_free(r->sender);
	struct event *evs[] = { r->kick_ev, r->poll_ev, r->due_ev, r->renew_ev, r->listen_check_ev,
		                r->listen_check_timeout_ev, r->grace_ev,
		                r->complete_retry_ev, r->hard_stop_ev, r->claim_window_ev, r->marks_window_ev };
	for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
		if (evs[i])
			event_free(evs[i]);
	free(r);
}
