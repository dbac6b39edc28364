/*
 * claim.c - claims and scans on the claim connection, and take_heads, which turns the rows a
 * claim, advance or results statement fetched into a partition's queue.
 */
#include "engine/engine_int.h"

#include "admin/sdnotify.h"
#include "db/store.h"
#include "util/log.h"
#include "util/strbuf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void want(struct obr_relay *r, struct part *p, bool capped)
{
	if (p->state != PS_IDLE || r->stopping)
		return;
	size_t wanted = part_count(&r->parts, PS_CLAIM_WANTED);
	relay_arrived(r, &r->claim_arrivals, wanted == 0);
	if (capped && (r->claim_overflow || wanted >= MAX_CLAIM_SET)) {
		/* too many to remember (anyone may NOTIFY anything): forget them all, p too, and
		 * every one until the next scan is sent; that scan finds every partition whose head
		 * is due, however it was announced (their rows committed before it started) */
		struct part *q;
		while ((q = part_first(&r->parts, PS_CLAIM_WANTED)))
			part_set_state(r, q, PS_IDLE);
		if (!r->claim_overflow)
			obr_log_warn("more than %d notified partitions waiting: forgot them, a scan catches up",
			             MAX_CLAIM_SET);
		r->claim_overflow = true;
		r->scan_wanted = true;
		return;
	}
	part_set_state(r, p, PS_CLAIM_WANTED);
}

void claim_want(struct obr_relay *r, struct part *p)
{
	want(r, p, true);
}

static struct row *row_from_result(struct obr_relay *r, const PGresult *res, int j)
{
	struct row *row = calloc(1, sizeof(*row));
	if (!row)
		return NULL;
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
		return NULL;
	}
	row->bytes = strlen(row->destinations) + (row->headers ? strlen(row->headers) : 0) + row->payload_len;
	row->held_bytes = &r->fetched_bytes;
	r->fetched_bytes += row->bytes;
	return row;
}

int64_t claim_lease_deadline(const struct obr_relay *r, const struct stmt *s)
{
	return s->sent_ms + r->cfg->lease_ms * (100 - LEASE_MARGIN_PERCENT) / 100;
}

void claim_take_heads(struct obr_relay *r, const struct stmt *s, const PGresult *res, enum part_state expect,
                      enum heads_from from)
{
	int n = PQntuples(res);
	for (int i = 0; i < n;) {
		const char *key = PQgetvalue(res, i, HC_PARTITION);
		const char *lease = PQgetvalue(res, i, HC_LEASE);
		struct part *p = part_find(&r->parts, key);
		int first = i;
		while (i < n && !strcmp(PQgetvalue(res, i, HC_PARTITION), key))
			i++;
		/* a results statement saw a row that now sorts before the ones fetched (a requeue, a
		 * late commit): the partition forgets them and looks at its head again */
		if (p && !strcmp(lease, OBR_LEASE_REREAD)) {
			if (p->state == PS_READY) {
				part_drop_queue(p);
				part_set_state(r, p, PS_ADVANCE_WANTED);
			}
			continue;
		}
		if (!p || p->state != expect)
			continue;

		if (!strcmp(lease, "lost")) {
			obr_log_warn("lease on partition %s was lost to another instance", key);
			part_set_state(r, p, PS_IDLE);
			/* or lost in a database crash (claims commit asynchronously): nobody holds it then,
			 * and a scan finds it */
			r->scan_wanted = true;
			continue;
		}
		if (!strcmp(lease, "released")) {
			part_set_state(r, p, PS_IDLE);
			lastlook_released(r, key);
			if (p->last_row_ms) /* when its last row was written: was it busy? (linger.c) */
				recent_release_note(&r->linger.recent, key, p->last_row_ms);
			if (!PQgetisnull(res, first, HC_KEY))
				relay_arm_due(r, strtoll(PQgetvalue(res, first, HC_DUE_IN_MS), NULL, 10));
			if (p->notified) {
				p->notified = false;
				claim_want(r, p);
			}
			continue;
		}

		/* held: queue the leading due rows; a row that is not due stops the queue */
		if (from == HEADS_CLAIM)
			p->held_since = r->claim_seq;
		if (from != HEADS_PROBE) {
			int64_t until = claim_lease_deadline(r, s); /* taken, or renewed by an advance */
			if (until > p->lease_until_ms)
				p->lease_until_ms = until;
		}
		p->notified = false;
		p->fetched_full = i - first >= r->cfg->batch_size;
		for (int j = first; j < i; j++) {
			if (PQgetisnull(res, j, HC_KEY))
				break;
			if (strcmp(PQgetvalue(res, j, HC_DUE), "t") != 0) {
				relay_arm_due(r, strtoll(PQgetvalue(res, j, HC_DUE_IN_MS), NULL, 10));
				break;
			}
			if (PQgetisnull(res, j, HC_PAYLOAD)) {
				p->fetched_full = true; /* past the byte budget: an advance fetches it */
				break;
			}
			struct row *row = row_from_result(r, res, j);
			if (!row)
				break;
			if (p->queue_tail)
				p->queue_tail->next = row;
			else
				p->queue = row;
			p->queue_tail = row;
		}
		/* nothing due: the advance releases it */
		part_set_state(r, p, p->queue ? PS_READY : PS_ADVANCE_WANTED);
	}
}

char *claim_keys_in(struct obr_relay *r, enum part_state s)
{
	struct obr_strbuf b;
	size_t count = 0;
	obr_strbuf_init(&b, MAX_STATEMENT_BYTES);
	obr_strbuf_puts(&b, "{");
	for (struct part *p = part_first(&r->parts, s); p; p = p->next) {
		obr_strbuf_array_sep(&b, &count);
		obr_strbuf_append(&b, p->key, OBR_KEY_LEN);
	}
	obr_strbuf_puts(&b, "}");
	if (b.failed) {
		obr_strbuf_free(&b);
		return NULL;
	}
	return b.data;
}

size_t claim_fetch_budget(const struct obr_relay *r, char out[24])
{
	size_t limit = (size_t)r->cfg->fetch_bytes;
	size_t budget = r->fetched_bytes < limit ? limit - r->fetched_bytes : 0;
	snprintf(out, 24, "%zu", budget);
	return budget;
}

bool claim_send_heads(struct obr_relay *r, struct conn *c, const char *sql, enum part_state in, obr_pg_result_fn fn)
{
	struct stmt *s = stmt_new(r, c);
	char *keys = claim_keys_in(r, in);
	char budget[24];
	claim_fetch_budget(r, budget);
	const char *params[] = { r->lock_id, keys, r->param.batch, r->param.lease, budget };
	bool ok = s && keys && stmt_send(s, sql, 5, params, fn);
	if (!ok)
		stmt_free(s);
	free(keys);
	return ok;
}

static void on_claim_result(void *arg, const PGresult *res, const char *err)
{
	struct stmt *s = stmt_answer(arg, err);
	if (!s)
		return;
	struct obr_relay *r = s->relay;
	bool failed = !res || err;

	if (!failed) {
		r->claim_seq++;
		claim_take_heads(r, s, res, PS_CLAIMING, HEADS_CLAIM);
		r->stats.claims++;
		relay_statement_ok(r, SK_CLAIM);
	} else {
		relay_statement_failed(r, SK_CLAIM, s, res, err);
	}
	/* partitions not in the result are held by another instance (or the statement failed) */
	struct part *p;
	while ((p = part_first(&r->parts, PS_CLAIMING))) {
		part_set_state(r, p, PS_IDLE);
		p->notified = false;
		if (failed)
			claim_want(r, p); /* try again */
	}
	deliver_dispatch(r);
	relay_kick(r);
}

/* Notified partitions, as many as there are free delivery slots. */
static size_t claim_room(const struct obr_relay *r)
{
	/* partitions waiting for a busy host (OUTBOX_HOST_MAX_IN_FLIGHT) take no slot, nor do
	 * lingering ones (they take one when a probe finds them rows) */
	size_t held = part_held(&r->parts) - part_lingering(&r->parts);
	size_t waiting = r->host_waiting < held ? r->host_waiting : held;
	held -= waiting;
	return (size_t)r->cfg->max_in_flight > held ? (size_t)r->cfg->max_in_flight - held : 0;
}

bool claim_wanted(struct obr_relay *r)
{
	return part_count(&r->parts, PS_CLAIM_WANTED) && claim_room(r) > 0;
}

bool claim_send(struct obr_relay *r)
{
	size_t room = claim_room(r), limit = (size_t)r->cfg->claim_limit;
	size_t wanted = part_count(&r->parts, PS_CLAIM_WANTED);
	size_t enough = room < limit ? room : limit;
	if (relay_gathering(r, &r->claim_arrivals, wanted, enough, r->claim_window_ev))
		return true;
	size_t take = wanted < enough ? wanted : enough;
	for (size_t i = 0; i < take; i++)
		part_set_state(r, part_first(&r->parts, PS_CLAIM_WANTED), PS_CLAIMING);
	if (!claim_send_heads(r, &r->claim, OBR_SQL_CLAIM, PS_CLAIMING, on_claim_result)) {
		struct part *p;
		while ((p = part_first(&r->parts, PS_CLAIMING))) {
			part_set_state(r, p, PS_IDLE);
			claim_want(r, p);
		}
	}
	return true;
}

static void on_scan_result(void *arg, const PGresult *res, const char *err)
{
	struct stmt *s = stmt_answer(arg, err);
	if (!s)
		return;
	struct obr_relay *r = s->relay;

	if (!res || err) {
		relay_statement_failed(r, SK_SCAN, s, res, err);
		r->scan_wanted = true; /* after the backoff */
		relay_kick(r);
		return;
	}
	relay_statement_ok(r, SK_SCAN);
	r->stats.scans++;
	int n = PQntuples(res);
	for (int i = 0; i < n; i++) {
		if (PQgetisnull(res, i, 0)) {
			if (!PQgetisnull(res, i, 1))
				relay_arm_due(r, strtoll(PQgetvalue(res, i, 1), NULL, 10));
			continue;
		}
		char key[OBR_KEY_LEN + 1];
		if (!part_key_normalize(PQgetvalue(res, i, 0), key))
			continue;
		r->stats.scan_found++;
		struct part *p = part_get(r, key);
		if (p)
			want(r, p, false); /* a page of found partitions: never forgotten */
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
	relay_kick(r);
}

/* Then a scan for partitions no notification announced. */
bool claim_scan_wanted(struct obr_relay *r)
{
	return r->scan_wanted && part_count(&r->parts, PS_CLAIM_WANTED) == 0;
}

bool claim_send_scan(struct obr_relay *r)
{
	r->scan_wanted = false;
	r->claim_overflow = false; /* notified from now on: maybe committed after this scan's snapshot */
	struct stmt *s = stmt_new(r, &r->claim);
	const char *params[] = { r->param.claim_limit, r->lock_id };
	if (!s || !stmt_send(s, OBR_SQL_SCAN, 2, params, on_scan_result)) {
		stmt_free(s);
		r->scan_wanted = true;
	}
	return true;
}
