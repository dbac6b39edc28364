/*
 * hosts.h - admission per destination host (HTTP destinations, by host[:port]): a limit of
 * concurrent requests, and a circuit breaker. One sick endpoint must not slow the healthy
 * ones: a host at its limit makes its rows wait without taking a slot of OUTBOX_MAX_IN_FLIGHT,
 * and a host that failed OUTBOX_CIRCUIT_FAILURES times in a row (no answer, a timeout, a 5xx)
 * is "open" for a cool-down that doubles while it stays sick; its rows wait without spending
 * attempts, and one request at a time probes it once the cool-down is over.
 *
 * Pure: the caller passes the clock. Host names come from rows (untrusted), so the table is
 * bounded: beyond OBR_HOSTS_MAX entries, idle healthy hosts are forgotten, and a host that
 * finds no room is admitted without limits (nothing is refused for lack of bookkeeping).
 */
#ifndef OBR_HOSTS_H
#define OBR_HOSTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define OBR_HOSTS_MAX 4096
#define OBR_HOST_NAME_MAX 255
#define OBR_CIRCUIT_COOLDOWN_MIN_MS 1000
#define OBR_CIRCUIT_COOLDOWN_MAX_MS 300000

struct obr_host {
	char name[OBR_HOST_NAME_MAX + 1]; /* host[:port], lowercase */
	struct obr_host *hash_next;
	int in_flight;
	int failures;               /* consecutive: no answer, timeout, 5xx */
	int64_t open_until_ms;      /* monotonic: open until then; 0: closed */
	int64_t cooldown_ms;        /* the next open period */
	bool probing;               /* open, cool-down over, one request is testing it */
	uint64_t opened;            /* times the circuit opened */
};

struct obr_hosts {
	struct obr_host **buckets;
	size_t nbuckets, n;
	int limit;                  /* requests in flight per host; 0: no limit */
	int failures_to_open;       /* 0: no circuit breaker */
};

enum obr_host_verdict {
	OBR_HOST_GO,                /* start */
	OBR_HOST_PROBE,             /* start, as the probe of an open circuit */
	OBR_HOST_BUSY,              /* at its limit: wait for one of its requests to end */
	OBR_HOST_OPEN,              /* circuit open (or a probe runs): wait, no attempt spent */
};

int obr_hosts_init(struct obr_hosts *t, int limit, int failures_to_open);
void obr_hosts_free(struct obr_hosts *t);

/* The host of an http(s) URL as "host[:port]", lowercase; false when url has none. */
bool obr_host_of_url(const char *url, char out[OBR_HOST_NAME_MAX + 1]);

/* The entry for name (created when new); NULL when the table is full of hosts in use. */
struct obr_host *obr_hosts_get(struct obr_hosts *t, const char *name);

enum obr_host_verdict obr_host_admit(const struct obr_hosts *t, const struct obr_host *h, int64_t now_ms);
void obr_host_started(struct obr_host *h, bool probe);

enum obr_host_change { OBR_HOST_SAME, OBR_HOST_OPENED, OBR_HOST_CLOSED };
/* A request ended. sick: no answer, a timeout or a 5xx (a 4xx shows the host is alive). */
enum obr_host_change obr_host_finished(const struct obr_hosts *t, struct obr_host *h, bool probe, bool sick,
                                       int64_t now_ms);

/* How long a row for h should wait before its next look (OBR_HOST_OPEN), in ms, >= 1. */
int64_t obr_host_wait_ms(const struct obr_host *h, int64_t now_ms);
/* The earliest end of a cool-down (monotonic), 0: none; for a timer. */
int64_t obr_hosts_next_change(const struct obr_hosts *t, int64_t now_ms);
size_t obr_hosts_open_count(const struct obr_hosts *t);

#endif
