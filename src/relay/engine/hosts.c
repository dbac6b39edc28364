/*
 * hosts.c - per-host concurrency limit and circuit breaker (see hosts.h).
 */
#include "engine/hosts.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

int obr_hosts_init(struct obr_hosts *t, int limit, int failures_to_open)
{
	*t = (struct obr_hosts){ .limit = limit > 0 ? limit : 0, .failures_to_open = failures_to_open > 0 ? failures_to_open : 0 };
	t->nbuckets = 256;
	t->buckets = calloc(t->nbuckets, sizeof(*t->buckets));
	return t->buckets ? 0 : -1;
}

void obr_hosts_free(struct obr_hosts *t)
{
	for (size_t i = 0; t->buckets && i < t->nbuckets; i++) {
		struct obr_host *h = t->buckets[i];
		while (h) {
			struct obr_host *next = h->hash_next;
			free(h);
			h = next;
		}
	}
	free(t->buckets);
	t->buckets = NULL;
	t->n = 0;
}

bool obr_host_of_url(const char *url, char out[OBR_HOST_NAME_MAX + 1])
{
	const char *p = strstr(url, "://");
	if (!p)
		return false;
	p += 3;
	size_t n = strcspn(p, "/?#");
	const char *at = memchr(p, '@', n); /* user:password@ (refused by the row format anyway) */
	if (at) {
		n -= (size_t)(at + 1 - p);
		p = at + 1;
	}
	if (n == 0 || n > OBR_HOST_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		out[i] = (char)tolower((unsigned char)p[i]);
	out[n] = '\0';
	return true;
}

static size_t name_hash(const char *s)
{
	size_t h = 1469598103934665603u; /* FNV-1a */
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211u;
	return h;
}

static bool forgettable(const struct obr_host *h)
{
	return h->in_flight == 0 && h->failures == 0 && h->open_until_ms == 0 && !h->probing;
}

/* Forgets one idle healthy host to make room; false when every entry is in use. */
static bool evict_one(struct obr_hosts *t)
{
	for (size_t i = 0; i < t->nbuckets; i++)
		for (struct obr_host **pp = &t->buckets[i]; *pp; pp = &(*pp)->hash_next)
			if (forgettable(*pp)) {
				struct obr_host *h = *pp;
				*pp = h->hash_next;
				free(h);
				t->n--;
				return true;
			}
	return false;
}

struct obr_host *obr_hosts_get(struct obr_hosts *t, const char *name)
{
	size_t slot = name_hash(name) & (t->nbuckets - 1);
	for (struct obr_host *h = t->buckets[slot]; h; h = h->hash_next)
		if (!strcmp(h->name, name))
			return h;
	if (strlen(name) > OBR_HOST_NAME_MAX || (t->n >= OBR_HOSTS_MAX && !evict_one(t)))
		return NULL;
	struct obr_host *h = calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	strcpy(h->name, name);
	h->cooldown_ms = OBR_CIRCUIT_COOLDOWN_MIN_MS;
	h->hash_next = t->buckets[slot];
	t->buckets[slot] = h;
	t->n++;
	return h;
}

enum obr_host_verdict obr_host_admit(const struct obr_hosts *t, const struct obr_host *h, int64_t now_ms)
{
	if (h->open_until_ms) {
		if (h->probing || now_ms < h->open_until_ms)
			return OBR_HOST_OPEN;
		return OBR_HOST_PROBE;
	}
	if (t->limit > 0 && h->in_flight >= t->limit)
		return OBR_HOST_BUSY;
	return OBR_HOST_GO;
}

void obr_host_started(struct obr_host *h, bool probe)
{
	h->in_flight++;
	if (probe)
		h->probing = true;
}

enum obr_host_change obr_host_finished(const struct obr_hosts *t, struct obr_host *h, bool probe, bool sick,
                                       int64_t now_ms)
{
	if (h->in_flight > 0)
		h->in_flight--;
	if (probe)
		h->probing = false;
	if (!sick) {
		h->failures = 0;
		if (!h->open_until_ms)
			return OBR_HOST_SAME;
		if (!probe)
			return OBR_HOST_SAME; /* a request started before it opened: only the probe decides */
		h->open_until_ms = 0;
		h->cooldown_ms = OBR_CIRCUIT_COOLDOWN_MIN_MS;
		return OBR_HOST_CLOSED;
	}
	h->failures++;
	if (t->failures_to_open == 0)
		return OBR_HOST_SAME;
	if (probe) {
		/* still sick: open again, for twice as long */
		h->cooldown_ms = h->cooldown_ms * 2 > OBR_CIRCUIT_COOLDOWN_MAX_MS ? OBR_CIRCUIT_COOLDOWN_MAX_MS
		                                                                  : h->cooldown_ms * 2;
		h->open_until_ms = now_ms + h->cooldown_ms;
		return OBR_HOST_SAME;
	}
	if (h->open_until_ms || h->failures < t->failures_to_open)
		return OBR_HOST_SAME;
	h->open_until_ms = now_ms + h->cooldown_ms;
	h->opened++;
	return OBR_HOST_OPENED;
}

int64_t obr_host_wait_ms(const struct obr_host *h, int64_t now_ms)
{
	if (h->open_until_ms > now_ms)
		return h->open_until_ms - now_ms;
	return OBR_CIRCUIT_COOLDOWN_MIN_MS; /* a probe runs: look again soon */
}

int64_t obr_hosts_next_change(const struct obr_hosts *t, int64_t now_ms)
{
	int64_t first = 0;
	for (size_t i = 0; i < t->nbuckets; i++)
		for (const struct obr_host *h = t->buckets[i]; h; h = h->hash_next)
			if (h->open_until_ms > now_ms && (!first || h->open_until_ms < first))
				first = h->open_until_ms;
	return first;
}

size_t obr_hosts_open_count(const struct obr_hosts *t)
{
	size_t n = 0;
	for (size_t i = 0; i < t->nbuckets; i++)
		for (const struct obr_host *h = t->buckets[i]; h; h = h->hash_next)
			n += h->open_until_ms != 0;
	return n;
}
