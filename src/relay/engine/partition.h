/*
 * partition.h - the partition table, and the one gate through which a partition changes state.
 *
 * A partition's state is where it is: every partition is on exactly one list, the list of its
 * state (as PgBouncer keeps its connections). part_set_state moves it and checks that the move
 * is legal (an assertion in builds without NDEBUG, which the test builds are). A partition that
 * becomes IDLE is freed at the end of the loop turn (part_reap, after dispatch), never inside a
 * callback that may still hold it, unless something wants it again before.
 *
 *   IDLE           not held, wanted by nothing: freed at the end of the loop turn
 *   CLAIM_WANTED   notified or found by a scan: waits for a claim statement
 *   CLAIMING       in the running claim statement
 *   READY          held, with fetched rows waiting for a delivery slot
 *   DELIVERING     held, its current row's requests are running or its result is being written
 *   LOST           its lease was taken over while a row was current: dropped once that is done
 *   ADVANCE_WANTED held, nothing left to deliver: waits for an advance (more rows, or release)
 *   ADVANCING      in the running advance statement (or a results statement that advances it)
 *   LINGERING      held with nothing fetched, kept a little after its last row (linger.c)
 *   PROBING        lingering, in the running linger probe
 */
#ifndef OBR_PARTITION_H
#define OBR_PARTITION_H

#include "send/destination.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define OBR_KEY_LEN 36

struct obr_relay;

enum part_state {
	PS_IDLE,
	PS_CLAIM_WANTED,
	PS_CLAIMING,
	PS_READY,
	PS_DELIVERING,
	PS_LOST,
	PS_ADVANCE_WANTED,
	PS_ADVANCING,
	PS_LINGERING,
	PS_PROBING,
	PS_COUNT
};

struct row {
	struct row *next;
	char key[OBR_KEY_LEN + 1];
	char *destinations;
	char *headers;
	char *payload;
	size_t payload_len;
	char *sent;
	long attempts;
	int64_t created_ms;
	size_t bytes;               /* of destinations, headers and payload */
	size_t *held_bytes;         /* the relay's sum of fetched rows' bytes, less this row's when freed */
	bool planned;               /* destinations parsed into plan (or plan_error), at the first look */
	struct obr_plan plan;       /* moves to the delivery when the row starts */
	bool plan_failed;           /* they could not be parsed ... */
	char *plan_error;           /* ... and why (NULL when out of memory) */
};

struct part {
	char key[OBR_KEY_LEN + 1];
	enum part_state state;      /* changed only by part_set_state */
	struct part *prev, *next;   /* on the list of its state */
	struct part *hash_next;
	bool notified;              /* notified while held: look again before letting go */
	bool fetched_full;          /* the last fetch returned a full batch: more rows are likely */
	int64_t last_row_ms;        /* monotonic: when its last row's result was written (linger) */
	uint64_t held_since;        /* claim_seq when it was claimed: a renewal sent before cannot know it */
	int64_t lease_until_ms;     /* monotonic: no row starts after this without a newer claim, advance
	                               or renewal (the sending time of the last one that held it, plus
	                               the lease, less a margin) */
	struct row *queue, *queue_tail;
	struct delivery *current;   /* DELIVERING and LOST only */
};

struct part_list {
	struct part *head, *tail;
	size_t n;
};

struct part_table {
	struct part **buckets;
	size_t nbuckets, nparts;
	struct part_list in[PS_COUNT];
};

int part_table_init(struct part_table *t);
/* Frees every partition, whatever its state (the relay is going away). */
void part_table_free(struct part_table *t);

struct part *part_find(struct part_table *t, const char *key);
/* Finds or creates (IDLE) the partition; NULL when out of memory. */
struct part *part_get(struct obr_relay *r, const char *key);

/* THE gate: moves p to the list of state to. Leaving the held states drops fetched rows. */
void part_set_state(struct obr_relay *r, struct part *p, enum part_state to);
bool part_transition_legal(enum part_state from, enum part_state to);
const char *part_state_name(enum part_state s);
/* Partitions whose lease we hold or are taking (CLAIMING to ADVANCING). */
size_t part_held(const struct part_table *t);
static inline struct part *part_first(const struct part_table *t, enum part_state s)
{
	return t->in[s].head;
}
static inline size_t part_count(const struct part_table *t, enum part_state s)
{
	return t->in[s].n;
}
/* Held with nothing to deliver after their last row (linger.c): lingering or being probed. */
static inline size_t part_lingering(const struct part_table *t)
{
	return t->in[PS_LINGERING].n + t->in[PS_PROBING].n;
}

/* Frees the IDLE partitions; called at the end of a loop turn. */
void part_reap(struct part_table *t);

void row_free(struct row *row);
void delivery_free(struct delivery *d);
/* Normalizes a partition key (a UUID, any case) into out; false when it is not one. */
bool part_key_normalize(const char *in, char out[OBR_KEY_LEN + 1]);
void part_drop_queue(struct part *p);

#endif
