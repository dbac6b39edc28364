/*
 * relay.h - the delivery engine: one libevent loop that wakes on notifications, claims the
 * notified partitions, delivers their rows in order and records the results.
 *
 * Data flow:
 *   listen connection (LISTEN, never in a transaction) -> partitions to claim
 *   work connection: claim + fetch -> deliver (curl multi) -> complete -> advance or release
 *   timers: fallback poll, earliest due row, lease renewal, shutdown grace
 */
#ifndef OBR_RELAY_H
#define OBR_RELAY_H

#include <stdint.h>

#include "config.h"

struct event_base;
struct obr_relay;

struct obr_relay_stats {
	uint64_t delivered;
	uint64_t failed;          /* failed attempts (each retry counts) */
	uint64_t parked;
	uint64_t notifications;
	uint64_t scans;
	uint64_t scan_found;
	uint64_t claims;
	uint64_t reconnects;
};

struct obr_relay *obr_relay_new(struct event_base *base, const struct obr_config *cfg);
/* Connects and starts working; returns 0 or -1. */
int obr_relay_start(struct obr_relay *relay);
/* Stop claiming, let in-flight deliveries finish (within the grace period), record their
 * results, release every lease, then break the loop. */
void obr_relay_shutdown(struct obr_relay *relay);
const struct obr_relay_stats *obr_relay_stats(const struct obr_relay *relay);
void obr_relay_free(struct obr_relay *relay);

#endif
