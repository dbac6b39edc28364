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

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "send/destination.h" /* OBR_DEST_KINDS */

struct event_base;
struct obr_relay;

#define OBR_LATENCY_BUCKETS 16
#define OBR_HOST_STATS 20   /* hosts with their own series on /metrics, at most (names come from rows) */

/* Upper bounds (seconds) of the commit-to-delivery latency histogram buckets. */
extern const double obr_latency_bounds[OBR_LATENCY_BUCKETS];

/* Counters only grow; gauges are sampled. Everything a /metrics scrape needs. */
struct obr_relay_stats {
	uint64_t rows_delivered;                  /* rows whose every destination succeeded */
	uint64_t delivered[OBR_DEST_KINDS];       /* successful requests, by destination kind */
	uint64_t failed[OBR_DEST_KINDS];          /* failed requests, by destination kind */
	uint64_t parked[OBR_DEST_KINDS];          /* rows parked at the failure limit, by failing kind */
	uint64_t parked_malformed;                /* rows parked because they could not be parsed */
	uint64_t notifications;
	uint64_t scans;
	uint64_t scan_found;                      /* partitions the scans found */
	uint64_t claims;
	uint64_t reconnects;
	uint64_t retention_deleted;               /* processed rows deleted by retention */
	uint64_t circuit_deferred;                /* rows put off, without an attempt, for an open circuit */
	uint64_t latency_count;                   /* created_at -> destination's answer */
	double latency_sum;                       /* seconds */
	uint64_t latency_buckets[OBR_LATENCY_BUCKETS]; /* cumulative is computed by the exporter */
	/* gauges */
	int64_t in_flight_requests;
	int64_t leases_held;
	int64_t partitions_lingering;             /* held after their last row (OUTBOX_LINGER_MS) */
	int64_t circuits_open;                    /* HTTP hosts whose circuit is open */
	size_t nhosts;                            /* per-host figures below: hosts in use or sick, at most OBR_HOST_STATS */
	struct {
		char name[128];
		int64_t in_flight;
		int64_t failures;
		bool open;
	} hosts[OBR_HOST_STATS];
	int64_t listen_selftest_ok;               /* 1: LISTEN heard the relay's own notification; 0: not
	                                             (polling instead); -1: not tested (poll mode, or not yet) */
	/* sampled from the database every OBR_SAMPLE_MS; -1 until the first sample */
	int64_t due_rows;
	double oldest_due_age_s;
	double notification_queue_usage;
	int64_t notify_lock_waiters;              /* sessions waiting for the notify commit lock */
	int64_t sampled_at_unix;
};

struct obr_relay *obr_relay_new(struct event_base *base, const struct obr_config *cfg);
/* Connects and starts working; returns 0 or -1. */
int obr_relay_start(struct obr_relay *relay);
/* Stop claiming, let in-flight deliveries finish (within the grace period), record their
 * results, release every lease, then break the loop. */
void obr_relay_shutdown(struct obr_relay *relay);
/* Updates the gauges and returns the statistics. */
const struct obr_relay_stats *obr_relay_stats(struct obr_relay *relay);
/* Ready: the database connections are up and, in listen mode, LISTEN is active. Otherwise
 * false with the reason in why. */
bool obr_relay_ready(const struct obr_relay *relay, char *why, size_t whylen);
void obr_relay_free(struct obr_relay *relay);

#endif
