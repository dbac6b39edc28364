/*
 * deliver.c - starts the current row of READY partitions (one request per destination) and
 * collects the answers into the row's result (a mark), which complete.c writes.
 */
#include "engine/engine_int.h"

#include "send/destination.h"
#include "send/sender.h"
#include "util/log.h"
#include "util/strbuf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
	memcpy(m->key, d->row->key, OBR_KEY_LEN + 1);
	m->success = success;
	m->park = park;
	m->counted = counted;
	m->attempts = d->row->attempts;
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
		if (park)
			m->delay_ms = 0;
		else if (d->retry_after_ms >= 0) /* the destination said when: as asked, within the maximum */
			m->delay_ms = d->retry_after_ms < r->cfg->retry_max_ms ? d->retry_after_ms : r->cfg->retry_max_ms;
		else
			m->delay_ms = retry_delay_ms(r->cfg, d->row->attempts + 1);
	}
	relay_arrived(r, &r->mark_arrivals, r->marks.len == 0);
	if (relay_vec_push(&r->marks, m)) {
		free(m->sent);
		free(m->error);
		free(m);
		obr_log_error("out of memory recording the result of row %s", d->row->key);
		return;
	}
	d->finished = true;
	relay_kick(r);
}

/* Host and path of a URL, for logs: the query string may carry secrets. */
static void url_for_log(const char *url, char *out, size_t cap)
{
	size_t n = strcspn(url, "?#");
	snprintf(out, cap, "%.*s", (int)(n < 200 ? n : 200), url);
}

static void record_latency(struct obr_relay *r, int64_t created_ms)
{
	double s = (double)(relay_realtime_ms() - created_ms) / 1000.0;
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

/* The host's circuit is open: the row waits for the cool-down (or the probe), and this
 * attempt does not count; the host is sick, not the row. Logged at info when a request failed,
 * at debug when the row was put off before any (one line per row and cool-down otherwise). */
static void defer_for_host(struct obr_relay *r, struct delivery *d, const struct obr_host *h,
                           enum obr_log_level level)
{
	int64_t wait = obr_host_wait_ms(h, relay_mono_ms());
	if (wait > d->retry_after_ms)
		d->retry_after_ms = wait;
	if (!d->error[0])
		snprintf(d->error, sizeof(d->error), "circuit open for host %s after %d failures in a row", h->name,
		         h->failures);
	r->stats.circuit_deferred++;
	obr_log_event(level,
	              OBR_LOGF(OBR_LOGF_S("event", "deferred"), OBR_LOGF_S("row", d->row->key),
	                       OBR_LOGF_S("partition", d->part->key), OBR_LOGF_S("host", h->name),
	                       OBR_LOGF_S("error", d->error), OBR_LOGF_I("wait_ms", d->retry_after_ms)),
	              "row %s partition %s waits %lld ms for host %s, whose circuit is open; no attempt counted: %s",
	              d->row->key, d->part->key, (long long)d->retry_after_ms, h->name, d->error);
	add_mark(r, d, false, false, false, d->error);
}

static void finish_delivery(struct obr_relay *r, struct delivery *d)
{
	struct row *row = d->row;
	long attempts = row->attempts + 1;
	long long duration_ms = (relay_mono_us() - d->started_us) / 1000;
	if (!d->error[0]) {
		r->stats.rows_delivered++;
		record_latency(r, row->created_ms);
		obr_log_event(OBR_LOG_DEBUG,
		              OBR_LOGF(OBR_LOGF_S("event", "delivered"), OBR_LOGF_S("row", row->key),
		                       OBR_LOGF_S("partition", d->part->key), OBR_LOGF_I("attempt", attempts),
		                       OBR_LOGF_I("destinations", d->plan.ndests), OBR_LOGF_I("duration_ms", duration_ms)),
		              "delivered row %s partition %s", row->key, d->part->key);
		add_mark(r, d, true, false, true, NULL);
		return;
	}
	obr_utf8_sanitize(d->error);
	/* failed on a host whose circuit is open now (it opened on this failure, or this was the
	 * probe): the host is sick, not the row; it waits for the cool-down without an attempt */
	struct obr_host *sick = d->fail_dest >= 0 && d->ctx ? d->ctx[d->fail_dest].host : NULL;
	if (sick && sick->open_until_ms && !d->permanent) {
		defer_for_host(r, d, sick, OBR_LOG_INFO);
		return;
	}
	bool park = attempts >= r->cfg->failure_limit || d->permanent;
	const struct obr_destination *dest = d->fail_dest >= 0 ? &d->plan.dests[d->fail_dest] : NULL;
	char host[OBR_HOST_NAME_MAX + 1] = "";
	if (dest && !obr_host_of_url(dest->target, host))
		host[0] = '\0'; /* an SNS topic ARN */
	struct obr_log_field facts[] = {
		OBR_LOGF_S("event", park ? "parked" : "retry"),
		OBR_LOGF_S("row", row->key),
		OBR_LOGF_S("partition", d->part->key),
		OBR_LOGF_I("attempt", attempts),
		OBR_LOGF_I("failure_limit", r->cfg->failure_limit),
		OBR_LOGF_S("dest_kind", dest ? obr_dest_kind_name(dest->kind) : NULL),
		OBR_LOGF_S("host", host[0] ? host : NULL),
		OBR_LOGF_S("error", d->error),
		OBR_LOGF_I("duration_ms", duration_ms),
		OBR_LOGF_I("status", d->fail_status), /* last: left out when there was no HTTP answer */
	};
	size_t nfacts = sizeof(facts) / sizeof(facts[0]) - (d->fail_status > 0 ? 0 : 1);
	if (park) {
		for (int i = 0; i < d->plan.ndests; i++)
			if (!d->ok || !d->ok[i]) { /* no d->ok: out of memory before the first request */
				r->stats.parked[d->plan.dests[i].kind]++;
				break;
			}
		obr_log_event(OBR_LOG_WARN, facts, nfacts, "parking row %s partition %s after %ld attempts%s: %s", row->key,
		              d->part->key, attempts, d->permanent ? " (permanent error)" : "", d->error);
	} else {
		obr_log_event(OBR_LOG_WARN, facts, nfacts,
		              "delivery failed for row %s partition %s (attempt %ld of %ld), will retry: %s", row->key,
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
	if (res->retry_after_ms > d->retry_after_ms)
		d->retry_after_ms = res->retry_after_ms;
	if (d->error[0])
		return; /* keep the first reason; the others are in the log */
	d->fail_dest = i;
	d->fail_status = res->http_status;
	const struct obr_destination *dest = &d->plan.dests[i];
	char where[256];
	url_for_log(dest->target, where, sizeof(where));
	snprintf(d->error, sizeof(d->error), "destinations[%d] %s %s: %s", dest->index, obr_dest_kind_name(dest->kind),
	         where, why);
}

/* The row's destinations, parsed once (the first look may be an admission check). */
static const char *row_plan(struct row *row)
{
	if (!row->planned) {
		char err[512];
		row->planned = true;
		if (obr_plan_parse(&row->plan, row->key, row->destinations, row->headers, row->sent, NULL, err,
		                   sizeof(err))) {
			obr_utf8_sanitize(err);
			row->plan_failed = true;
			row->plan_error = strdup(err);
		}
	}
	if (!row->plan_failed)
		return NULL;
	return row->plan_error ? row->plan_error : "destinations could not be parsed (out of memory)";
}

/* ---- hosts: admission of HTTP destinations (hosts.c) ---- */

/* The host entry of a destination still to send, or NULL (not HTTP, no host, no room). */
static struct obr_host *dest_host(struct obr_relay *r, const struct obr_destination *dest)
{
	char name[OBR_HOST_NAME_MAX + 1];
	if (dest->kind != OBR_DEST_HTTP || dest->already_sent || !obr_host_of_url(dest->target, name))
		return NULL;
	return obr_hosts_get(&r->hosts, name);
}

/* What the hosts of the row's HTTP destinations say: the worst verdict; *open_host names a host
 * whose circuit is open. A row whose destinations cannot be parsed is admitted (and parked). */
static enum obr_host_verdict row_admit(struct obr_relay *r, struct row *row, struct obr_host **open_host)
{
	enum obr_host_verdict worst = OBR_HOST_GO;
	if (row_plan(row))
		return worst;
	int64_t now = relay_mono_ms();
	for (int i = 0; i < row->plan.ndests; i++) {
		struct obr_host *h = dest_host(r, &row->plan.dests[i]);
		if (!h)
			continue;
		enum obr_host_verdict v = obr_host_admit(&r->hosts, h, now);
		if (v == OBR_HOST_OPEN) {
			*open_host = h;
			return v;
		}
		if (v == OBR_HOST_BUSY || (v == OBR_HOST_PROBE && worst == OBR_HOST_GO))
			worst = v;
	}
	return worst;
}

static void host_answered(struct obr_relay *r, struct request_ctx *ctx, const struct obr_send_result *res)
{
	if (!ctx->host)
		return;
	/* no answer, a timeout or a 5xx: the host is sick; any other answer shows it is alive */
	bool sick = res->status == OBR_SEND_RETRY && (res->http_status == 0 || res->http_status >= 500);
	switch (obr_host_finished(&r->hosts, ctx->host, ctx->probe, sick, relay_mono_ms())) {
	case OBR_HOST_OPENED:
		obr_log_event(OBR_LOG_WARN,
		              OBR_LOGF(OBR_LOGF_S("event", "circuit_open"), OBR_LOGF_S("host", ctx->host->name),
		                       OBR_LOGF_I("failures", ctx->host->failures),
		                       OBR_LOGF_I("cooldown_ms", ctx->host->cooldown_ms)),
		              "circuit open for host %s after %d failures in a row: its rows wait %lld ms without spending "
		              "attempts, then one request probes it",
		              ctx->host->name, ctx->host->failures, (long long)ctx->host->cooldown_ms);
		break;
	case OBR_HOST_CLOSED:
		obr_log_event(OBR_LOG_INFO,
		              OBR_LOGF(OBR_LOGF_S("event", "circuit_closed"), OBR_LOGF_S("host", ctx->host->name)),
		              "circuit closed for host %s: the probe request succeeded", ctx->host->name);
		break;
	case OBR_HOST_SAME:
		break;
	}
	relay_kick(r); /* a row waiting for this host may go now */
}

static void start_delivery(struct obr_relay *r, struct part *p, struct obr_host *open_host)
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
		part_drop_queue(p); /* the advance fetches the head again */
		part_set_state(r, p, PS_ADVANCE_WANTED);
		return;
	}
	d->part = p;
	d->row = row;
	d->fail_dest = -1;
	d->retry_after_ms = -1;
	d->started_us = relay_mono_us();
	p->current = d;
	part_set_state(r, p, PS_DELIVERING);

	const char *err = row_plan(row);
	d->plan = row->plan; /* the delivery owns it from here */
	row->plan = (struct obr_plan){ 0 };
	if (err) {
		r->stats.parked_malformed++;
		obr_log_event(OBR_LOG_WARN,
		              OBR_LOGF(OBR_LOGF_S("event", "parked"), OBR_LOGF_S("row", row->key),
		                       OBR_LOGF_S("partition", p->key), OBR_LOGF_S("error", err)),
		              "parking malformed row %s partition %s: %s", row->key, p->key, err);
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
	for (int i = 0; i < d->plan.ndests; i++)
		d->ok[i] = d->plan.dests[i].already_sent;
	if (open_host) {
		defer_for_host(r, d, open_host, OBR_LOG_DEBUG);
		return;
	}
	for (int i = 0; i < d->plan.ndests; i++) {
		struct obr_destination *dest = &d->plan.dests[i];
		if (dest->already_sent)
			continue;
		struct request_ctx *ctx = &d->ctx[i];
		*ctx = (struct request_ctx){ r, d, i, dest_host(r, dest), false };
		struct obr_send_request req = { .dest = dest, .idempotent_key = row->key, .partition_key = p->key,
		                                .payload = row->payload, .payload_len = row->payload_len };
		struct obr_send_result refused;
		if (obr_sender_submit(r->sender, &req, on_sent, ctx, &refused)) {
			ctx->host = NULL;
			dest_failed(r, d, i, &refused); /* e.g. OUTBOX_ALLOWED_HOSTS */
			continue;
		}
		if (ctx->host) {
			ctx->probe = obr_host_admit(&r->hosts, ctx->host, relay_mono_ms()) == OBR_HOST_PROBE;
			obr_host_started(ctx->host, ctx->probe);
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

	host_answered(r, ctx, res);
	if (res->status == OBR_SEND_OK) {
		d->ok[i] = true;
		r->stats.delivered[d->plan.dests[i].kind]++;
	} else {
		dest_failed(r, d, i, res);
	}
	if (--d->waiting == 0)
		finish_delivery(r, d);
}

/* A row starts only while the lease is surely ours: past the local deadline (a statement
 * stalled, renewals could not go out) another instance may have taken the partition over, so
 * the fetched rows are dropped and the advance renews the lease (or finds it lost) and fetches
 * the head again. */
static bool lease_deadline_passed(struct obr_relay *r, struct part *p)
{
	if (relay_mono_ms() < p->lease_until_ms)
		return false;
	obr_log_warn("lease on partition %s not renewed in time; checking it before the next row", p->key);
	part_drop_queue(p);
	part_set_state(r, p, PS_ADVANCE_WANTED);
	relay_kick(r);
	return true;
}

/* READY partitions in order, within OUTBOX_MAX_IN_FLIGHT; one whose head waits for a busy host
 * is passed over (it keeps no slot), one whose host's circuit is open has its head deferred. */
void deliver_dispatch(struct obr_relay *r)
{
	struct part *p = part_first(&r->parts, PS_READY), *next;
	r->host_waiting = 0;
	for (; p && relay_active(r) < r->cfg->max_in_flight && !r->stopping && !r->tearing_down; p = next) {
		next = p->next; /* p leaves the READY list when it starts */
		if (lease_deadline_passed(r, p))
			continue;
		struct obr_host *open_host = NULL;
		enum obr_host_verdict v = row_admit(r, p->queue, &open_host);
		if (v == OBR_HOST_BUSY) {
			r->host_waiting++;
			continue;
		}
		start_delivery(r, p, v == OBR_HOST_OPEN ? open_host : NULL);
	}
}

void deliver_abandon(struct obr_relay *r)
{
	/* the abandoned rows have no result to write */
	enum part_state with_row[] = { PS_DELIVERING, PS_LOST };
	for (size_t s = 0; s < sizeof(with_row) / sizeof(with_row[0]); s++) {
		struct part *p = part_first(&r->parts, with_row[s]), *next;
		for (; p; p = next) {
			next = p->next;
			if (p->current && !p->current->finished) {
				delivery_free(p->current);
				p->current = NULL;
				part_set_state(r, p, PS_IDLE);
			}
		}
	}
}

/* Partitions with a current row: what OUTBOX_MAX_IN_FLIGHT counts. */
int relay_active(const struct obr_relay *r)
{
	return (int)(part_count(&r->parts, PS_DELIVERING) + part_count(&r->parts, PS_LOST));
}
