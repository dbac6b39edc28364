/*
 * partition.c - the partition table and the gate for partition state (see partition.h).
 */
#include "engine/engine_int.h"

#include "util/log.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

static const char *const state_names[PS_COUNT] = {
	[PS_IDLE] = "idle",
	[PS_CLAIM_WANTED] = "claim-wanted",
	[PS_CLAIMING] = "claiming",
	[PS_READY] = "ready",
	[PS_DELIVERING] = "delivering",
	[PS_LOST] = "lost",
	[PS_ADVANCE_WANTED] = "advance-wanted",
	[PS_ADVANCING] = "advancing",
	[PS_LINGERING] = "lingering",
	[PS_PROBING] = "probing",
};

#define BIT(s) (1u << (s))

/* Legal moves, by the state left. Why each one exists is said where it is made. */
static const unsigned legal_to[PS_COUNT] = {
	[PS_IDLE] = BIT(PS_CLAIM_WANTED),
	[PS_CLAIM_WANTED] = BIT(PS_CLAIMING) | BIT(PS_IDLE),                       /* claim sent; shutdown */
	[PS_CLAIMING] = BIT(PS_READY) | BIT(PS_ADVANCE_WANTED) | BIT(PS_IDLE) |    /* held; released, lost */
	                BIT(PS_CLAIM_WANTED),                                      /* statement failed */
	[PS_READY] = BIT(PS_DELIVERING) | BIT(PS_ADVANCE_WANTED) |                 /* started; rows forgotten */
	             BIT(PS_IDLE),                                                 /* lease expired */
	[PS_DELIVERING] = BIT(PS_READY) | BIT(PS_ADVANCE_WANTED) | BIT(PS_ADVANCING) | /* result written */
	                  BIT(PS_LINGERING) |                                      /* ... kept while busy */
	                  BIT(PS_LOST) | BIT(PS_IDLE),                             /* lease expired; abandoned */
	[PS_LOST] = BIT(PS_IDLE) | BIT(PS_ADVANCING),      /* result written (advanced when sent before the loss) */
	[PS_ADVANCE_WANTED] = BIT(PS_ADVANCING) | BIT(PS_IDLE),                    /* sent; shutdown, expired */
	[PS_ADVANCING] = BIT(PS_READY) | BIT(PS_ADVANCE_WANTED) | BIT(PS_IDLE),    /* held; failed; released */
	[PS_LINGERING] = BIT(PS_PROBING) | BIT(PS_ADVANCE_WANTED) |                /* probe sent; linger over */
	                 BIT(PS_IDLE),                                             /* lease expired */
	[PS_PROBING] = BIT(PS_READY) | BIT(PS_LINGERING) |                         /* rows; none */
	               BIT(PS_ADVANCE_WANTED),                                     /* head not due; shutdown */
};

static bool is_held(enum part_state s)
{
	return s != PS_IDLE && s != PS_CLAIM_WANTED;
}

const char *part_state_name(enum part_state s)
{
	return (unsigned)s < PS_COUNT ? state_names[s] : "invalid";
}

bool part_transition_legal(enum part_state from, enum part_state to)
{
	return (unsigned)from < PS_COUNT && (unsigned)to < PS_COUNT && (legal_to[from] & BIT(to));
}

static void list_remove(struct part_list *l, struct part *p)
{
	if (p->prev)
		p->prev->next = p->next;
	else
		l->head = p->next;
	if (p->next)
		p->next->prev = p->prev;
	else
		l->tail = p->prev;
	p->prev = p->next = NULL;
	l->n--;
}

static void list_append(struct part_list *l, struct part *p)
{
	p->next = NULL;
	p->prev = l->tail;
	if (l->tail)
		l->tail->next = p;
	else
		l->head = p;
	l->tail = p;
	l->n++;
}

void part_set_state(struct obr_relay *r, struct part *p, enum part_state to)
{
	enum part_state from = p->state;
	if (from == to)
		return;
	if (!part_transition_legal(from, to)) {
		obr_log_error("partition %s: illegal state change %s -> %s", p->key, part_state_name(from),
		              part_state_name(to));
		assert(!"illegal partition state change");
		return;
	}
	/* a current row exists exactly in DELIVERING and LOST; READY means rows to start */
	assert((to == PS_DELIVERING || to == PS_LOST) == (p->current != NULL) || to == PS_ADVANCING);
	assert(to != PS_READY || p->queue);
	obr_log_debug("partition %s: %s -> %s", p->key, part_state_name(from), part_state_name(to));
	list_remove(&r->parts.in[from], p);
	list_append(&r->parts.in[to], p);
	p->state = to;
	if (!is_held(to)) {
		part_drop_queue(p);
		p->fetched_full = false;
		if (to == PS_IDLE)
			relay_kick(r); /* the end of the turn reaps it */
	}
}

size_t part_held(const struct part_table *t)
{
	size_t n = 0;
	for (int s = 0; s < PS_COUNT; s++)
		if (is_held((enum part_state)s))
			n += t->in[s].n;
	return n;
}

/* A partition key as the relay keeps it: a UUID, lower-case as PostgreSQL prints it. A
 * notification payload that is not one is not a partition. */
bool part_key_normalize(const char *in, char out[OBR_KEY_LEN + 1])
{
	if (strlen(in) != OBR_KEY_LEN)
		return false;
	for (int i = 0; i < OBR_KEY_LEN; i++) {
		char c = in[i];
		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (c != '-')
				return false;
		} else if (c >= 'A' && c <= 'F') {
			c = (char)(c - 'A' + 'a');
		} else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
			return false;
		}
		out[i] = c;
	}
	out[OBR_KEY_LEN] = '\0';
	return true;
}

static size_t key_hash(const char *key)
{
	size_t h = 1469598103934665603u;
	for (int i = 0; i < OBR_KEY_LEN; i++)
		h = (h ^ (unsigned char)key[i]) * 1099511628211u;
	return h;
}

int part_table_init(struct part_table *t)
{
	memset(t, 0, sizeof(*t));
	t->nbuckets = 1024;
	t->buckets = calloc(t->nbuckets, sizeof(*t->buckets));
	return t->buckets ? 0 : -1;
}

struct part *part_find(struct part_table *t, const char *key)
{
	for (struct part *p = t->buckets[key_hash(key) & (t->nbuckets - 1)]; p; p = p->hash_next)
		if (!memcmp(p->key, key, OBR_KEY_LEN))
			return p;
	return NULL;
}

static void grow_table(struct part_table *t)
{
	size_t n = t->nbuckets * 2;
	struct part **b = calloc(n, sizeof(*b));
	if (!b)
		return; /* keep the old table: longer chains, still correct */
	for (size_t i = 0; i < t->nbuckets; i++) {
		struct part *p = t->buckets[i];
		while (p) {
			struct part *next = p->hash_next;
			size_t slot = key_hash(p->key) & (n - 1);
			p->hash_next = b[slot];
			b[slot] = p;
			p = next;
		}
	}
	free(t->buckets);
	t->buckets = b;
	t->nbuckets = n;
}

struct part *part_get(struct obr_relay *r, const char *key)
{
	struct part_table *t = &r->parts;
	struct part *p = part_find(t, key);
	if (p)
		return p;
	if (t->nparts >= t->nbuckets)
		grow_table(t);
	p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	memcpy(p->key, key, OBR_KEY_LEN);
	p->key[OBR_KEY_LEN] = '\0';
	size_t slot = key_hash(p->key) & (t->nbuckets - 1);
	p->hash_next = t->buckets[slot];
	t->buckets[slot] = p;
	t->nparts++;
	p->state = PS_IDLE;
	list_append(&t->in[PS_IDLE], p);
	relay_kick(r); /* reaped at the end of the turn unless wanted */
	return p;
}

void row_free(struct row *row)
{
	if (!row)
		return;
	if (row->held_bytes)
		*row->held_bytes -= row->bytes;
	free(row->destinations);
	free(row->headers);
	free(row->payload);
	free(row->sent);
	obr_plan_clear(&row->plan);
	free(row->plan_error);
	free(row);
}

/* The row being delivered and its requests' bookkeeping. */
void delivery_free(struct delivery *d)
{
	if (!d)
		return;
	obr_plan_clear(&d->plan);
	free(d->ok);
	free(d->ctx);
	row_free(d->row);
	free(d);
}

void part_drop_queue(struct part *p)
{
	while (p->queue) {
		struct row *next = p->queue->next;
		row_free(p->queue);
		p->queue = next;
	}
	p->queue_tail = NULL;
}

static void part_free(struct part_table *t, struct part *p)
{
	struct part **pp = &t->buckets[key_hash(p->key) & (t->nbuckets - 1)];
	while (*pp && *pp != p)
		pp = &(*pp)->hash_next;
	if (*pp)
		*pp = p->hash_next;
	list_remove(&t->in[p->state], p);
	if (p->current)
		delivery_free(p->current);
	part_drop_queue(p);
	free(p);
	t->nparts--;
}

void part_reap(struct part_table *t)
{
	while (t->in[PS_IDLE].head)
		part_free(t, t->in[PS_IDLE].head);
}

void part_table_free(struct part_table *t)
{
	for (int s = 0; s < PS_COUNT; s++)
		while (t->in[s].head)
			part_free(t, t->in[s].head);
	free(t->buckets);
	t->buckets = NULL;
}
