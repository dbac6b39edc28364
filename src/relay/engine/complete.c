/*
 * complete.c - the work connection's statements that move held partitions: results of
 * delivered rows (which may advance their partitions in the same statement), advances (more
 * rows, or release), lease renewals and the final release at shutdown.
 */
#include "engine/engine_int.h"

#include "db/store.h"
#include "util/log.h"
#include "util/strbuf.h"

#include <event2/event.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- results ---- */

/* Puts marks of a statement that did not write them back in front of the waiting ones. */
static void marks_return(struct obr_relay *r, struct vec *marks)
{
	for (size_t i = 0; i < marks->len; i++)
		if (relay_vec_push(&r->marks, marks->items[i])) {
			obr_log_error("out of memory keeping the result of row %s", ((struct mark *)marks->items[i])->key);
			mark_free(marks->items[i]);
		}
	marks->len = 0;
}

/* The database refused the statement: back off, and write its results one at a time so one
 * bad result cannot hold back the others (results that were not in it still go together); a
 * result that keeps failing alone is given up (its row stays pending and is delivered again). */
static void complete_refused(struct obr_relay *r, struct stmt *s, const PGresult *res, const char *err)
{
	struct vec *marks = &s->marks;
	relay_statement_failed(r, SK_COMPLETE, s, res, err);
	bool alone = marks->len == 1;
	for (size_t i = 0; i < marks->len; i++) {
		struct mark *m = marks->items[i];
		if (alone && ++m->failures >= COMPLETE_MAX_FAILURES) {
			struct part *p = m->part;
			obr_log_error("giving up recording the result of row %s partition %s; it will be delivered again", m->key,
			              p->key);
			delivery_free(p->current);
			p->current = NULL;
			part_drop_queue(p);
			part_set_state(r, p, p->state == PS_LOST ? PS_IDLE : PS_ADVANCE_WANTED);
			mark_free(m);
			marks->items[i] = NULL;
		} else {
			m->suspect = true;
		}
	}
	size_t kept = 0;
	for (size_t i = 0; i < marks->len; i++)
		if (marks->items[i])
			marks->items[kept++] = marks->items[i];
	marks->len = kept;
	marks_return(r, marks);
}

/* Partitions still ADVANCING after their statement's result was taken were not in it: look again. */
static void advancing_not_answered(struct obr_relay *r)
{
	struct part *p;
	while ((p = part_first(&r->parts, PS_ADVANCING)))
		part_set_state(r, p, PS_ADVANCE_WANTED);
}

static void on_complete_result(void *arg, const PGresult *res, const char *err)
{
	struct stmt *s = stmt_answer(arg, err);
	if (!s)
		return;
	struct obr_relay *r = s->relay;
	struct vec *marks = &s->marks;

	if (!res) {
		/* connection lost: keep the results, they go out after the reconnect */
		relay_statement_failed(r, SK_COMPLETE, s, res, err);
		marks_return(r, marks);
		relay_kick(r);
		return;
	}
	if (err) {
		complete_refused(r, s, res, err);
		relay_kick(r);
		return;
	}
	relay_statement_ok(r, SK_COMPLETE);
	for (size_t i = 0; i < marks->len; i++) {
		struct mark *m = marks->items[i];
		struct part *p = m->part;
		struct delivery *d = p->current;
		p->current = NULL;
		delivery_free(d);
		if (!m->success && !m->park)
			part_drop_queue(p); /* the head waits for its retry; the advance releases the partition */
		if (m->success || m->park) {
			linger_row_done(r);
			linger_row_written(p);
		}
		if (m->advance)
			part_set_state(r, p, PS_ADVANCING); /* its fate is in the result */
		else if (p->state == PS_LOST)
			part_set_state(r, p, PS_IDLE);
		else if (p->queue && !r->stopping)
			part_set_state(r, p, PS_READY);
		else if (m->linger && !r->stopping)
			linger_enter(r, p);
		else
			part_set_state(r, p, PS_ADVANCE_WANTED);
	}
	claim_take_heads(r, s, res, PS_ADVANCING, HEADS_ADVANCE);
	advancing_not_answered(r);
	for (size_t i = 0; i < marks->len; i++)
		mark_free(marks->items[i]);
	marks->len = 0;
	deliver_dispatch(r);
	relay_kick(r);
}

/* Results of delivered rows: they unblock their partitions (within the batch window, unless
 * every row in flight has its result: then nothing more can come). */
bool complete_wanted(struct obr_relay *r)
{
	return r->marks.len > 0;
}

/* At most what a result adds to a results statement (array elements may be escaped and quoted). */
static size_t mark_bytes(const struct mark *m)
{
	return 2 * (OBR_KEY_LEN + 4) + 2 * (m->error ? strlen(m->error) : 0) + 2 * (m->sent ? strlen(m->sent) : 0) + 64;
}

static size_t statement_bytes(struct obr_strbuf *const *bufs, size_t n, const struct obr_strbuf *adv)
{
	size_t len = adv->len;
	for (size_t i = 0; i < n; i++)
		len += bufs[i]->len;
	return len;
}

static void send_complete(struct obr_relay *r, size_t limit)
{
	struct obr_strbuf done, keys, errs, delays, parks, sents, counted, attempts;
	size_t nd = 0, nf = 0;
	struct stmt *s = stmt_new(r, &r->work);
	if (!s)
		return;
	obr_strbuf_init(&done, r->statement_limit);
	obr_strbuf_init(&keys, r->statement_limit);
	obr_strbuf_init(&errs, r->statement_limit);
	obr_strbuf_init(&delays, r->statement_limit);
	obr_strbuf_init(&parks, r->statement_limit);
	obr_strbuf_init(&sents, r->statement_limit);
	obr_strbuf_init(&counted, r->statement_limit);
	obr_strbuf_init(&attempts, r->statement_limit);
	struct obr_strbuf *all[] = { &done, &keys, &errs, &delays, &parks, &sents, &counted, &attempts };
	const size_t nall = sizeof(all) / sizeof(all[0]);
	for (size_t i = 0; i < nall; i++)
		obr_strbuf_puts(all[i], "{");

	/* partitions these results leave with nothing fetched, and that had fewer rows than a
	 * batch (so probably nothing more): advanced in the same statement, which saves a round
	 * trip when rows arrive one at a time. A partition that had a full batch goes to the
	 * advance statement, which fetches for many partitions at once and keeps these results
	 * cheap while a backlog drains. Not after a retry (the row keeps its place as the head) */
	struct obr_strbuf adv;
	size_t na = 0;
	obr_strbuf_init(&adv, r->statement_limit);
	obr_strbuf_puts(&adv, "{");

	size_t take = r->marks.len < limit ? r->marks.len : limit;
	for (size_t i = 0; i < take; i++) {
		struct mark *m = r->marks.items[i];
		struct part *p = m->part;
		/* what fits the string limit goes now, the rest in the next statement (one result
		 * always fits: its error and sent list are short) */
		if (i > 0 && statement_bytes(all, nall, &adv) + mark_bytes(m) > r->statement_limit) {
			take = i;
			break;
		}
		/* a busy partition lingers instead (linger.c): no advance, no release */
		m->linger = (m->success || m->park) && linger_takes(r, p);
		m->advance = (m->success || m->park) && !p->queue && !p->fetched_full && !r->stopping &&
		             p->state == PS_DELIVERING && !m->linger;
		if (m->advance) {
			obr_strbuf_array_sep(&adv, &na);
			obr_strbuf_append(&adv, p->key, OBR_KEY_LEN);
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
			c = nf;
			obr_strbuf_array_sep(&counted, &c);
			obr_strbuf_puts(&counted, m->counted ? "t" : "f");
			obr_strbuf_array_sep(&attempts, &nf);
			obr_strbuf_printf(&attempts, "%ld", m->attempts);
		}
		relay_vec_push(&s->marks, m);
	}
	bool failed = false;
	for (size_t i = 0; i < nall; i++) {
		obr_strbuf_puts(all[i], "}");
		failed |= all[i]->failed;
	}
	obr_strbuf_puts(&adv, "}");
	failed |= adv.failed;
	if (!failed && s->marks.len == take) {
		/* the statement owns its marks from here: its callback may run before stmt_send returns */
		memmove(r->marks.items, r->marks.items + take, (r->marks.len - take) * sizeof(void *));
		r->marks.len -= take;
		char budget[24];
		claim_fetch_budget(r, budget);
		const char *params[] = { done.data, keys.data, errs.data, delays.data, parks.data, sents.data,
			                 counted.data, r->lock_id, adv.data, r->param.batch, r->param.lease, budget,
			                 attempts.data };
		if (!stmt_send(s, r->cfg->delete_on_success ? OBR_SQL_COMPLETE_DELETE : OBR_SQL_COMPLETE, 13, params,
		               on_complete_result)) {
			/* back in front, in their order */
			memmove(r->marks.items + take, r->marks.items, r->marks.len * sizeof(void *));
			memcpy(r->marks.items, s->marks.items, take * sizeof(void *));
			r->marks.len += take;
			s->marks.len = 0;
			stmt_free(s);
		}
	} else {
		s->marks.len = 0; /* still r->marks' */
		stmt_free(s);
	}
	for (size_t i = 0; i < nall; i++)
		obr_strbuf_free(all[i]);
	obr_strbuf_free(&adv);
}

bool complete_send(struct obr_relay *r)
{
	/* a result of a refused statement goes alone, first */
	for (size_t i = 0; i < r->marks.len; i++) {
		struct mark *m = r->marks.items[i];
		if (m->suspect) {
			r->marks.items[i] = r->marks.items[0];
			r->marks.items[0] = m;
			send_complete(r, 1);
			return true;
		}
	}
	if (relay_gathering(r, &r->mark_arrivals, r->marks.len, (size_t)relay_active(r), r->marks_window_ev))
		return true;
	send_complete(r, r->marks.len);
	return true;
}

/* ---- advances ---- */

static void on_advance_result(void *arg, const PGresult *res, const char *err)
{
	struct stmt *s = stmt_answer(arg, err);
	if (!s)
		return;
	struct obr_relay *r = s->relay;

	if (res && !err) {
		relay_statement_ok(r, SK_ADVANCE);
		claim_take_heads(r, s, res, PS_ADVANCING, HEADS_ADVANCE);
	} else {
		relay_statement_failed(r, SK_ADVANCE, s, res, err);
	}
	/* a failed statement: still ours as far as we know; look again */
	advancing_not_answered(r);
	deliver_dispatch(r);
	relay_kick(r);
}

/* At shutdown nothing is fetched any more: the final release gives back every lease. */
bool advance_drop_wanted(struct obr_relay *r)
{
	return r->stopping && part_count(&r->parts, PS_ADVANCE_WANTED);
}

bool advance_drop(struct obr_relay *r)
{
	struct part *p;
	while ((p = part_first(&r->parts, PS_ADVANCE_WANTED)))
		part_set_state(r, p, PS_IDLE);
	return false;
}

/* Held partitions with nothing left: more rows, or release; once the rows fetched before are
 * under OUTBOX_FETCH_BYTES (they are being delivered: the room comes back). */
bool advance_wanted(struct obr_relay *r)
{
	char budget[24];
	return part_count(&r->parts, PS_ADVANCE_WANTED) > 0 && claim_fetch_budget(r, budget) > 0;
}

bool advance_send(struct obr_relay *r)
{
	size_t take = part_count(&r->parts, PS_ADVANCE_WANTED);
	if (take > (size_t)r->cfg->claim_limit)
		take = (size_t)r->cfg->claim_limit;
	for (size_t i = 0; i < take; i++)
		part_set_state(r, part_first(&r->parts, PS_ADVANCE_WANTED), PS_ADVANCING);
	if (!claim_send_heads(r, &r->work, OBR_SQL_ADVANCE, PS_ADVANCING, on_advance_result))
		advancing_not_answered(r);
	return true;
}

/* ---- lease renewal ---- */

static bool renewal_knows(const PGresult *res, const struct part *p)
{
	int n = PQntuples(res);
	for (int i = 0; i < n; i++)
		if (!strcmp(PQgetvalue(res, i, 0), p->key))
			return true;
	return false;
}

static void on_renew_result(void *arg, const PGresult *res, const char *err)
{
	struct stmt *s = stmt_answer(arg, err);
	if (!s)
		return;
	struct obr_relay *r = s->relay;
	if (!res || err) {
		relay_statement_failed(r, SK_RENEW, s, res, err);
		relay_kick(r);
		return;
	}
	relay_statement_ok(r, SK_RENEW);
	/* every partition we believe held but is not in the result has been taken over (claims and
	 * advances in flight are answered by their own statements) */
	enum part_state held[] = { PS_READY, PS_DELIVERING, PS_ADVANCE_WANTED, PS_LINGERING };
	for (size_t k = 0; k < sizeof(held) / sizeof(held[0]); k++) {
		struct part *p = part_first(&r->parts, held[k]), *next;
		for (; p; p = next) {
			next = p->next;
			/* claimed on the claim connection after this renewal was sent: not in its result */
			if (p->held_since > r->renew_seq)
				continue;
			if (renewal_knows(res, p)) {
				int64_t until = claim_lease_deadline(r, s);
				if (until > p->lease_until_ms)
					p->lease_until_ms = until;
				continue;
			}
			obr_log_warn("lease on partition %s expired and was taken over; its fetched rows are dropped", p->key);
			part_drop_queue(p);
			part_set_state(r, p, p->current ? PS_LOST : PS_IDLE);
		}
	}
	relay_kick(r);
}

/* Lease renewal first, when due: a late renewal lets another instance send our rows. */
bool renew_wanted(struct obr_relay *r)
{
	return r->renew_wanted && !r->stopping;
}

bool renew_send(struct obr_relay *r)
{
	r->renew_wanted = false;
	struct stmt *s = stmt_new(r, &r->work);
	const char *params[] = { r->lock_id, r->param.lease };
	r->renew_seq = r->claim_seq;
	if (!s || !stmt_send(s, OBR_SQL_RENEW, 2, params, on_renew_result))
		stmt_free(s);
	return true;
}

/* ---- shutdown ---- */

static void on_release_all_result(void *arg, const PGresult *res, const char *err)
{
	struct stmt *s = stmt_answer(arg, err);
	if (!s)
		return;
	struct obr_relay *r = s->relay;
	if (!res || err)
		obr_log_warn("could not release leases at shutdown (they expire by themselves): %s", err ? err : "connection lost");
	else
		obr_log_info("released %s leases", PQntuples(res) == 1 ? PQgetvalue(res, 0, 0) : "0");
	r->released_all = true;
	event_base_loopbreak(r->base);
}

bool release_all_wanted(struct obr_relay *r)
{
	return r->stopping;
}

/* After the last claim: a lease it takes must not outlive the release. */
bool release_all_send(struct obr_relay *r)
{
	if (!r->released_all && relay_active(r) == 0 && relay_senders_idle(r) && !r->claim.running) {
		struct stmt *s = stmt_new(r, &r->work);
		const char *params[] = { r->lock_id, r->cfg->channel };
		if (!s || !stmt_send(s, OBR_SQL_RELEASE_ALL, 2, params, on_release_all_result))
			stmt_free(s);
	}
	return true;
}
