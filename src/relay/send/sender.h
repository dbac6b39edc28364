/*
 * sender.h - one interface for every kind of destination.
 *
 * The engine hands a sender a neutral description of one delivery (a row's destination and
 * payload) and gets back a neutral result: delivered, failed and worth retrying, or failed for
 * good. Which protocol, which checks (OUTBOX_ALLOWED_HOSTS, private addresses, AWS hosts) and
 * which batching apply is the sender's business. HTTP (http.c) and SQS/SNS (aws.c) implement
 * it; obr_senders_new (senders.c) builds both on one curl multi and dispatches on the kind.
 */
#ifndef OBR_SENDER_H
#define OBR_SENDER_H

#include <stdbool.h>
#include <stddef.h>

#include "send/destination.h"

struct event_base;

enum obr_send_status {
	OBR_SEND_OK,
	OBR_SEND_RETRY,        /* try again later (normal backoff) */
	OBR_SEND_PERMANENT,    /* retrying cannot help: park the row */
};

#define OBR_SEND_MESSAGE_MAX 512

struct obr_send_result {
	enum obr_send_status status;
	char message[OBR_SEND_MESSAGE_MAX]; /* why not OK, for last_error and the log; no secrets */
	long retry_after_ms;                /* the destination asked for this pause (Retry-After on a 429
	                                       or 503, seconds or an HTTP date); -1: none */
	long http_status;                   /* HTTP destinations: the answer's status; 0: none (or not HTTP) */
};

/* One delivery. Everything is copied by submit. */
struct obr_send_request {
	const struct obr_destination *dest; /* kind, target, method, headers (or message attributes) */
	const char *idempotent_key;         /* the row's key */
	const char *partition_key;          /* FIFO message group */
	const char *payload;
	size_t payload_len;
};

typedef void (*obr_send_done_fn)(void *arg, const struct obr_send_result *res);

struct obr_sender_ops {
	/* Returns 0: done is called exactly once later (from an event, never inside submit), unless
	 * abort_all runs first. Returns -1: refused at once with the reason in *refused (done is not
	 * called), e.g. a host not in OUTBOX_ALLOWED_HOSTS or out of memory. */
	int (*submit)(void *self, const struct obr_send_request *req, obr_send_done_fn done, void *arg,
	              struct obr_send_result *refused);
	/* Deliveries submitted and not answered yet. */
	int (*in_flight)(const void *self);
	/* Forgets every delivery in flight; their callbacks are not called. */
	void (*abort_all)(void *self);
	void (*free)(void *self);
};

struct obr_sender {
	const struct obr_sender_ops *ops;
	void *self;
};

/* What the senders need from the configuration. */
struct obr_send_options {
	long timeout_ms;
	const char *ca_file;         /* extra CA bundle; NULL = system store */
	bool tls_verify;
	bool deny_private;           /* row-controlled requests never reach private addresses */
	const char *allowed_hosts;   /* OUTBOX_ALLOWED_HOSTS; NULL = any host */
	const char *proxy;           /* OUTBOX_HTTP_PROXY; NULL = no proxy (the environment's are ignored) */
	const char *webhook_secret;  /* OUTBOX_WEBHOOK_SECRET: HTTP deliveries are signed; NULL = not */
};

/* The relay's sender: HTTP, SQS and SNS behind one object. Returns NULL with the reason in err. */
struct obr_sender *obr_senders_new(struct event_base *base, const struct obr_send_options *opt, char *err,
                                   size_t errlen);

static inline int obr_sender_submit(struct obr_sender *s, const struct obr_send_request *req, obr_send_done_fn done,
                                    void *arg, struct obr_send_result *refused)
{
	return s->ops->submit(s->self, req, done, arg, refused);
}

static inline int obr_sender_in_flight(const struct obr_sender *s)
{
	return s ? s->ops->in_flight(s->self) : 0;
}

static inline void obr_sender_abort_all(struct obr_sender *s)
{
	if (s)
		s->ops->abort_all(s->self);
}

static inline void obr_sender_free(struct obr_sender *s)
{
	if (s)
		s->ops->free(s->self);
}

/* Fills a result (message printf-style). */
void obr_send_result_set(struct obr_send_result *res, enum obr_send_status status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#endif
