/*
 * lastlook.c - the last look at released partitions (issue 14, sql/010).
 *
 * Writers skip their NOTIFY while a live lease holds their partition. A writer that skipped
 * and commits after our release committed would be seen by nobody until the fallback poll, so
 * after releases the relay waits until every transaction in progress just after them has
 * ended, then looks at those partitions once more: one statement per round on the work
 * connection (the one that released, so the releases have committed when it runs), whatever
 * the number of partitions. Nothing in progress (a quiet database): the look is in the first
 * round. A long application transaction only delays the look; rounds back off meanwhile.
 */
#include "engine/engine_int.h"

#include "db/store.h"
#include "util/log.h"
#include "util/strbuf.h"

#include <stdlib.h>
#include <string.h>

#define LASTLOOK_BACKOFF_MIN_MS 1
#define LASTLOOK_BACKOFF_MAX_MS 100

static char *keyset_array(const struct keyset *k)
{
	struct obr_strbuf b;
	size_t count = 0;
	obr_strbuf_init(&b, MAX_STATEMENT_BYTES);
	obr_strbuf_puts(&b, "{");
	for (size_t i = 0; i < k->len; i++) {
		obr_strbuf_array_sep(&b, &count);
		obr_strbuf_append(&b, k->keys + i * OBR_KEY_LEN, OBR_KEY_LEN);
	}
	obr_strbuf_puts(&b, "}");
	if (b.failed) {
		obr_strbuf_free(&b);
		return NULL;
	}
	return b.data;
}

/* Due now: as if notified. Later: the due timer. */
static void look_found(struct obr_relay *r, const char *key, int64_t due_in_ms)
{
	if (due_in_ms > 0) {
		relay_arm_due(r, due_in_ms);
		return;
	}
	char k[OBR_KEY_LEN + 1];
	if (part_key_normalize(key, k))
		listen_wake(r, k);
}

static void retry_later(struct obr_relay *r)
{
	struct lastlook *l = &r->lastlook;
	l->timer_armed = true;
	relay_timer_ms(l->ev, l->backoff_ms);
	l->backoff_ms = l->backoff_ms * 2 > LASTLOOK_BACKOFF_MAX_MS ? LASTLOOK_BACKOFF_MAX_MS : l->backoff_ms * 2;
}

static void on_lastlook_result(void *arg, const PGresult *res, const char *err)
{
	struct stmt *s = stmt_answer(arg, err);
	if (!s)
		return;
	struct obr_relay *r = s->relay;
	struct lastlook *l = &r->lastlook;
	l->running = false;
	if (!res || err || PQntuples(res) < 1 || !PQgetisnull(res, 0, OBR_LASTLOOK_PARTITION)) {
		/* they get a snapshot of a later round, after this kind's backoff */
		relay_statement_failed(r, SK_LASTLOOK, s, res, err ? err : "connection lost");
		keyset_merge(&l->fresh, &l->sent);
		relay_kick(r);
		return;
	}
	relay_statement_ok(r, SK_LASTLOOK);
	bool old_done = !strcmp(PQgetvalue(res, 0, OBR_LASTLOOK_OLD_DONE), "t");
	bool new_done = !strcmp(PQgetvalue(res, 0, OBR_LASTLOOK_NEW_DONE), "t");
	for (int i = 1; i < PQntuples(res); i++)
		look_found(r, PQgetvalue(res, i, OBR_LASTLOOK_PARTITION),
		           strtoll(PQgetvalue(res, i, OBR_LASTLOOK_DUE_IN_MS), NULL, 10));
	if (old_done) {
		if (l->waiting.overflow)
			r->scan_wanted = true;
		l->waiting.len = 0;
		l->waiting.overflow = false;
		if (new_done) {
			if (l->sent.overflow)
				r->scan_wanted = true;
			l->sent.len = 0;
			l->sent.overflow = false;
		} else {
			/* the fresh ones wait on this statement's snapshot */
			keyset_merge(&l->waiting, &l->sent);
			free(l->snap);
			l->snap = strdup(PQgetvalue(res, 0, OBR_LASTLOOK_SNAPSHOT));
			if (!l->snap) /* cannot wait on it: the next round takes another */
				keyset_merge(&l->fresh, &l->waiting);
		}
		l->backoff_ms = LASTLOOK_BACKOFF_MIN_MS;
	} else {
		keyset_merge(&l->fresh, &l->sent);
	}
	if (l->waiting.len || l->waiting.overflow)
		retry_later(r);
	relay_kick(r);
}

bool lastlook_wanted(struct obr_relay *r)
{
	struct lastlook *l = &r->lastlook;
	if (l->running || l->timer_armed || r->stopping)
		return false;
	return l->waiting.len || l->waiting.overflow || l->fresh.len || l->fresh.overflow;
}

bool lastlook_send(struct obr_relay *r)
{
	struct lastlook *l = &r->lastlook;
	bool waiting = l->waiting.len || l->waiting.overflow;
	keyset_merge(&l->sent, &l->fresh);
	char *w = keyset_array(&l->waiting), *f = keyset_array(&l->sent);
	const char *params[] = { waiting ? l->snap : NULL, w, f };
	struct stmt *s = stmt_new(r, &r->work);
	bool ok = s && w && f && stmt_send(s, OBR_SQL_LASTLOOK, 3, params, on_lastlook_result);
	free(w);
	free(f);
	if (!ok) {
		stmt_free(s);
		keyset_merge(&l->fresh, &l->sent);
		return false;
	}
	l->running = true;
	return true;
}

void lastlook_on_timer(struct obr_relay *r)
{
	r->lastlook.timer_armed = false;
	relay_kick(r);
}

void lastlook_init(struct obr_relay *r)
{
	r->lastlook.backoff_ms = LASTLOOK_BACKOFF_MIN_MS;
}

void lastlook_free(struct obr_relay *r)
{
	keyset_free(&r->lastlook.fresh);
	keyset_free(&r->lastlook.sent);
	keyset_free(&r->lastlook.waiting);
	free(r->lastlook.snap);
	r->lastlook.snap = NULL;
}
