/*
 * keyset.c - sets of partition keys, and the record of released partitions for the last look
 * (lastlook.c). Below the stages: claim.c records a release here, listen.c asks for a rescan,
 * lastlook.c reads and empties the sets; this file calls no stage.
 */
#include "engine/engine_int.h"

#include <stdlib.h>
#include <string.h>

#define KEYSET_MAX_KEYS 4096 /* per set; more: the look is a scan instead */

static bool keyset_has(const struct keyset *k, const char *key)
{
	for (size_t i = 0; i < k->len; i++)
		if (!memcmp(k->keys + i * OBR_KEY_LEN, key, OBR_KEY_LEN))
			return true;
	return false;
}

void keyset_add(struct keyset *k, const char *key)
{
	if (keyset_has(k, key))
		return;
	if (k->len == k->cap) {
		size_t cap = k->cap ? k->cap * 2 : 16;
		char *keys = k->len < KEYSET_MAX_KEYS ? realloc(k->keys, cap * OBR_KEY_LEN) : NULL;
		if (!keys) {
			k->overflow = true;
			return;
		}
		k->keys = keys;
		k->cap = cap;
	}
	memcpy(k->keys + k->len++ * OBR_KEY_LEN, key, OBR_KEY_LEN);
}

void keyset_merge(struct keyset *into, struct keyset *from)
{
	for (size_t i = 0; i < from->len; i++)
		keyset_add(into, from->keys + i * OBR_KEY_LEN);
	into->overflow |= from->overflow;
	from->len = 0;
	from->overflow = false;
}

void keyset_free(struct keyset *k)
{
	free(k->keys);
	memset(k, 0, sizeof(*k));
}

void lastlook_released(struct obr_relay *r, const char *key)
{
	/* poll mode: nobody listens, the poll is the look */
	if (r->cfg->mode != OBR_MODE_LISTEN)
		return;
	keyset_add(&r->lastlook.fresh, key);
}

static uint64_t key_hash(const char *key)
{
	uint64_t h = 1469598103934665603u; /* FNV-1a */
	for (const char *c = key; *c; c++)
		h = (h ^ (unsigned char)*c) * 1099511628211u;
	return h ? h : 1;
}

void recent_release_note(struct recent_releases *t, const char *key, int64_t now_ms)
{
	uint64_t h = key_hash(key);
	size_t i = (size_t)(h % RECENT_RELEASES);
	t->hash[i] = h;
	t->at_ms[i] = now_ms;
}

bool recent_release_within(const struct recent_releases *t, const char *key, int64_t now_ms, int64_t ms)
{
	uint64_t h = key_hash(key);
	size_t i = (size_t)(h % RECENT_RELEASES);
	return t->hash[i] == h && t->at_ms[i] && now_ms - t->at_ms[i] < ms;
}

void lastlook_rescan(struct obr_relay *r)
{
	r->lastlook.fresh.overflow = true; /* a set with keys left out is looked at with a scan */
}
