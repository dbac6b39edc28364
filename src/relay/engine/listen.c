/*
 * listen.c - the listen connection: notifications name partitions to claim; a health check
 * finds a connection that stopped answering.
 */
#include "engine/engine_int.h"

#include "util/log.h"

#include <event2/event.h>
#include <string.h>

void listen_on_notify(void *arg, const char *channel, const char *payload)
{
	struct obr_relay *r = arg;
	char key[OBR_KEY_LEN + 1];

	r->stats.notifications++;
	if (r->stopping || r->tearing_down)
		return;
	if (!part_key_normalize(payload, key)) {
		obr_log_warn("ignoring notification on channel %s: payload \"%.64s\" is not a partition key", channel, payload);
		return;
	}
	struct part *p = part_get(r, key);
	if (!p) {
		r->scan_wanted = true;
		relay_kick(r);
		return;
	}
	if (p->state == PS_IDLE || p->state == PS_CLAIM_WANTED)
		claim_want(r, p);
	else
		p->notified = true;
	relay_kick(r);
}

void listen_on_connected(void *arg)
{
	struct obr_relay *r = arg;
	r->listen_ready = true;
	r->listen_check_pending = false;
	/* notifications sent while we were not listening are lost: catch up with a scan; and once
	 * the transactions in progress now have ended, scan again (writers that skipped their
	 * NOTIFY under a lease of an instance that stopped meanwhile) */
	r->scan_wanted = true;
	lastlook_rescan(r);
	relay_check_ready(r);
	relay_kick(r);
}

void listen_on_disconnected(void *arg, const char *why)
{
	struct obr_relay *r = arg;
	r->listen_ready = false;
	r->stats.reconnects++;
	evtimer_del(r->listen_check_timeout_ev);
}

static void on_check_result(void *arg, const PGresult *res, const char *err)
{
	struct obr_relay *r = arg;
	r->listen_check_pending = false;
	evtimer_del(r->listen_check_timeout_ev);
}

void listen_check(struct obr_relay *r)
{
	if (!r->listen_pg || !obr_pg_is_up(r->listen_pg) || r->listen_check_pending)
		return;
	if (obr_pg_query(r->listen_pg, "SELECT 1", 0, NULL, on_check_result, r) == 0) {
		r->listen_check_pending = true;
		relay_timer_ms(r->listen_check_timeout_ev, LISTEN_CHECK_TIMEOUT_MS);
	}
}

void listen_on_check_timeout(struct obr_relay *r)
{
	r->listen_check_pending = false;
	obr_pg_reset(r->listen_pg, "the listen connection did not answer a health check");
}
