/*
 * aws.c - SQS and SNS delivery: messages grouped per queue or topic, sent in batches of up to
 * 10 once credentials are at hand, each message answered with its own entry's result.
 *
 * Flow: submit (the sender interface, sender.h) checks the message (what the service would
 * refuse for it alone fails it at once, permanently), queues it under its target and makes the
 * flush event active, so everything submitted in one loop turn goes out together; a target that
 * reaches 10 messages goes out at once. The flush asks the credential chain
 * (aws_credentials.c): ready -> batches are built (aws_protocol.c) and started on the shared
 * curl multi; pending -> the messages wait (the chain calls back); failed -> they fail,
 * retryably. A batch refused as a whole goes again one message per batch. Callbacks always run
 * from an event, never inside submit.
 */
#include "send/aws.h"

#include "send/aws_credentials.h"
#include "send/aws_protocol.h"
#include "send/sender.h"
#include "util/log.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_WAITING 100000   /* messages queued (waiting for credentials or the flush) */

struct amsg {
	struct amsg *next;
	obr_send_done_fn done;
	void *arg;
	enum obr_dest_kind kind;
	char *target;                  /* queue URL or topic ARN */
	bool alone;                    /* its batch failed as a whole: sent in a batch of its own */
	struct obr_aws_entry entry;    /* points into the copies below */
	char *body;
	char *key;
	char *group;
	struct obr_header *attrs;
	int nattrs;
	size_t size;
	/* a failure decided before sending, reported by the flush */
	bool permanent;
	char *error;
};

struct target {
	struct target *next;
	enum obr_dest_kind kind;
	char *name;                    /* queue URL or topic ARN */
	char *url;                     /* where requests go */
	char sigv4[128];               /* "aws:amz:<region>:sqs" */
	bool fifo;
	bool row_controlled;           /* the request host is the row's queue URL's: deny_private applies */
	struct amsg *head, *tail;
	int count;
};

struct batch {
	struct obr_aws *aws;
	struct batch *prev, *next;
	enum obr_dest_kind kind;
	bool aborted;                  /* forgotten by aws_abort_all: free on completion */
	char target[200];              /* queue URL or topic ARN, for the log */
	int n;
	struct amsg *msgs[OBR_AWS_MAX_BATCH];
};

struct obr_aws {
	struct obr_sender sender;
	struct event_base *base;
	char *allowed_hosts;           /* OUTBOX_ALLOWED_HOSTS (SQS requests go to the queue URL's host) */
	struct obr_http *http;
	struct obr_aws_config cfg;
	struct obr_aws_credentials *creds;
	struct event *flush_ev;
	struct target *targets;
	struct amsg *failed_head, *failed_tail;
	struct batch *batches;         /* on the wire */
	int queued;                    /* in targets and the failed list */
	int sending;                   /* messages in batches on the wire */
};

static void on_flush(evutil_socket_t fd, short what, void *arg);
static void on_creds_change(void *arg);
static void aws_free(void *self);

static void msg_free(struct amsg *m)
{
	if (!m)
		return;
	free(m->body);
	free(m->target);
	free(m->key);
	free(m->group);
	for (int i = 0; i < m->nattrs; i++) {
		free(m->attrs[i].name);
		free(m->attrs[i].value);
	}
	free(m->attrs);
	free(m->error);
	free(m);
}

static void msg_list_free(struct amsg *m)
{
	while (m) {
		struct amsg *next = m->next;
		msg_free(m);
		m = next;
	}
}

static void target_free(struct target *t)
{
	msg_list_free(t->head);
	free(t->name);
	free(t->url);
	free(t);
}

static struct obr_aws *aws_new(struct event_base *base, struct obr_http *http, const char *allowed_hosts, char *err,
                               size_t errlen)
{
	struct obr_aws *aws = calloc(1, sizeof(*aws));
	if (!aws || (allowed_hosts && !(aws->allowed_hosts = strdup(allowed_hosts)))) {
		free(aws);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	aws->base = base;
	aws->http = http;
	char why[200];
	if (obr_aws_config_load(&aws->cfg, NULL, why, sizeof(why))) {
		snprintf(err, errlen, "SQS/SNS configuration: %s", why);
		free(aws->allowed_hosts);
		free(aws);
		return NULL;
	}
	aws->flush_ev = event_new(base, -1, 0, on_flush, aws);
	aws->creds = obr_aws_credentials_new(base, http, &aws->cfg, on_creds_change, aws);
	if (!aws->flush_ev || !aws->creds) {
		snprintf(err, errlen, "out of memory");
		aws_free(aws);
		return NULL;
	}
	return aws;
}

static void schedule_flush(struct obr_aws *aws)
{
	event_active(aws->flush_ev, EV_TIMEOUT, 0);
}

static void on_creds_change(void *arg)
{
	on_flush(-1, 0, arg);
}

/* A failure known before sending: reported by the next flush. */
static void fail_later(struct obr_aws *aws, struct amsg *m, const char *why, bool permanent)
{
	free(m->error);
	m->error = strdup(why);
	m->permanent = permanent;
	m->next = NULL;
	if (aws->failed_tail)
		aws->failed_tail->next = m;
	else
		aws->failed_head = m;
	aws->failed_tail = m;
	aws->queued++;
	schedule_flush(aws);
}

static struct target *target_get(struct obr_aws *aws, enum obr_dest_kind kind, const char *name, char *err,
                                 size_t errlen, bool *permanent)
{
	*permanent = false;
	for (struct target *t = aws->targets; t; t = t->next)
		if (t->kind == kind && !strcmp(t->name, name))
			return t;
	char region[OBR_AWS_REGION_MAX];
	if (!obr_aws_target_region(&aws->cfg, kind, name, region, sizeof(region))) {
		snprintf(err, errlen, "cannot tell the AWS region of this %s: set AWS_REGION",
		         kind == OBR_DEST_SNS ? "topic" : "queue");
		return NULL;
	}
	char url[2048];
	if (obr_aws_request_url(&aws->cfg, kind, name, region, url, sizeof(url))) {
		snprintf(err, errlen, "cannot build the %s endpoint URL", kind == OBR_DEST_SNS ? "SNS" : "SQS");
		*permanent = true;
		return NULL;
	}
	/* signed requests carry the access key id and session token: without an operator's
	 * endpoint override they go to AWS over TLS, never to a host a row names */
	bool overridden = kind == OBR_DEST_SNS ? aws->cfg.endpoint_sns != NULL : aws->cfg.endpoint_sqs != NULL;
	if (!overridden && !obr_aws_trusted_url(url)) {
		snprintf(err, errlen,
		         "not an AWS endpoint (https://*.amazonaws.com or *.amazonaws.com.cn): signed requests go "
		         "elsewhere only with AWS_ENDPOINT_URL_%s",
		         kind == OBR_DEST_SNS ? "SNS" : "SQS");
		*permanent = true;
		return NULL;
	}
	struct target *t = calloc(1, sizeof(*t));
	if (!t || !(t->name = strdup(name)) || !(t->url = strdup(url))) {
		if (t)
			target_free(t);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	t->kind = kind;
	t->fifo = obr_aws_target_is_fifo(kind, name);
	/* SNS requests go to sns.<region>.amazonaws.com or an override, SQS requests to the queue
	 * URL's host unless an operator's override says where */
	t->row_controlled = kind == OBR_DEST_SQS && !aws->cfg.endpoint_sqs;
	snprintf(t->sigv4, sizeof(t->sigv4), "aws:amz:%s:%s", region, kind == OBR_DEST_SNS ? "sns" : "sqs");
	t->next = aws->targets;
	aws->targets = t;
	return t;
}

static void target_unlink(struct obr_aws *aws, struct target *t)
{
	for (struct target **pp = &aws->targets; *pp; pp = &(*pp)->next) {
		if (*pp == t) {
			*pp = t->next;
			return;
		}
	}
}

static void report(struct amsg *m, const struct obr_aws_entry_result *r)
{
	struct obr_send_result res = { .status = OBR_SEND_OK, .retry_after_ms = -1 };
	if (!r->ok)
		obr_send_result_set(&res, r->permanent ? OBR_SEND_PERMANENT : OBR_SEND_RETRY, "%s", r->error);
	m->done(m->arg, &res);
}

/* Queues a message under its target; NULL when there is none (the message then fails). */
static struct target *enqueue(struct obr_aws *aws, struct amsg *m)
{
	char err[OBR_AWS_ERROR_MAX];
	bool permanent;
	m->next = NULL;
	struct target *t = target_get(aws, m->kind, m->target, err, sizeof(err), &permanent);
	if (!t) {
		fail_later(aws, m, err, permanent);
		return NULL;
	}
	if (t->tail)
		t->tail->next = m;
	else
		t->head = m;
	t->tail = m;
	t->count++;
	aws->queued++;
	return t;
}

/* Puts a message back under its target, to go in a batch of its own. */
static void requeue_alone(struct obr_aws *aws, struct amsg *m)
{
	m->alone = true;
	if (enqueue(aws, m))
		schedule_flush(aws);
}

static void batch_unlink(struct obr_aws *aws, struct batch *b)
{
	if (b->prev)
		b->prev->next = b->next;
	else
		aws->batches = b->next;
	if (b->next)
		b->next->prev = b->prev;
}

static void on_batch_done(void *arg, const struct obr_http_result *res)
{
	struct batch *b = arg;
	struct obr_aws *aws = b->aws;
	batch_unlink(aws, b);
	if (b->aborted) {
		free(b);
		return;
	}
	aws->sending -= b->n;

	struct obr_aws_entry_result results[OBR_AWS_MAX_BATCH];
	const char *svc = b->kind == OBR_DEST_SNS ? "SNS" : "SQS";
	if (res->ok) {
		int rc = b->kind == OBR_DEST_SNS ? obr_aws_parse_sns_batch(res->body, res->body_len, b->n, results)
		                                 : obr_aws_parse_sqs_batch(res->body, res->body_len, b->n, results);
		if (rc) {
			for (int i = 0; i < b->n; i++) {
				memset(&results[i], 0, sizeof(results[i]));
				snprintf(results[i].error, sizeof(results[i].error),
				         "%s answered HTTP %ld with a body that is not a batch result", svc, res->status);
			}
		}
	} else {
		obr_aws_request_failure(b->kind, res->status, res->body, res->body_len, res->error, &results[0]);
		results[0].permanent |= res->permanent; /* e.g. a private address refused by obr_http */
		if (b->n > 1 && obr_aws_failure_may_be_one_entry(res->status, results[0].code)) {
			/* one entry can make the service refuse the whole request: each goes again
			 * alone, so only the message at fault is blamed */
			obr_log_debug("%s batch of %d to %s failed as a whole (%s): sending each message alone", svc, b->n,
			              b->target, results[0].error);
			for (int i = 0; i < b->n; i++)
				requeue_alone(aws, b->msgs[i]);
			free(b);
			return;
		}
		for (int i = 1; i < b->n; i++)
			results[i] = results[0];
		if (obr_aws_code_is_credential(results[0].code))
			obr_aws_credentials_invalidate(aws->creds);
	}
	int failed = 0;
	for (int i = 0; i < b->n; i++)
		failed += !results[i].ok;
	if (failed)
		obr_log_debug("%s batch of %d to %s: %d failed", svc, b->n, b->target, failed);
	else
		obr_log_debug("%s batch of %d to %s delivered", svc, b->n, b->target);
	for (int i = 0; i < b->n; i++) {
		report(b->msgs[i], &results[i]);
		msg_free(b->msgs[i]);
	}
	free(b);
}

/* Sends a target's queued messages in batches: up to 10 entries, and several only while
 * their sizes add up to the batch limit. */
static void send_target(struct obr_aws *aws, struct target *t, const struct obr_aws_creds *creds)
{
	size_t max_bytes = obr_aws_max_batch_bytes(t->kind);
	while (t->head) {
		struct batch *b = calloc(1, sizeof(*b));
		if (!b) {
			struct amsg *m = t->head;
			t->head = m->next;
			t->count--;
			aws->queued--;
			fail_later(aws, m, "out of memory", false);
			continue;
		}
		b->aws = aws;
		b->kind = t->kind;
		snprintf(b->target, sizeof(b->target), "%.*s", (int)strcspn(t->name, "?#"), t->name);
		size_t total = 0;
		while (t->head && b->n < OBR_AWS_MAX_BATCH &&
		       (b->n == 0 || (total + t->head->size <= max_bytes && !t->head->alone && !b->msgs[0]->alone))) {
			struct amsg *m = t->head;
			t->head = m->next;
			m->next = NULL;
			t->count--;
			aws->queued--;
			total += m->size;
			b->msgs[b->n++] = m;
		}
		if (!t->head)
			t->tail = NULL;

		const struct obr_aws_entry *entries[OBR_AWS_MAX_BATCH];
		for (int i = 0; i < b->n; i++)
			entries[i] = &b->msgs[i]->entry;
		struct obr_strbuf body;
		obr_strbuf_init(&body, OBR_AWS_MAX_BODY);
		int rc = t->kind == OBR_DEST_SNS ? obr_aws_build_sns_batch(&body, t->name, t->fifo, entries, b->n)
		                                 : obr_aws_build_sqs_batch(&body, t->name, t->fifo, entries, b->n);
		/* obr_header holds char *: header texts live in writable (never written) arrays */
		static char content_type[] = "Content-Type", target_hdr[] = "X-Amz-Target",
		            token_hdr[] = "X-Amz-Security-Token", form[] = "application/x-www-form-urlencoded; charset=utf-8",
		            json[] = "application/x-amz-json-1.0", action[] = "AmazonSQS.SendMessageBatch";
		struct obr_header headers[3];
		int nh = 0;
		if (t->kind == OBR_DEST_SNS) {
			headers[nh++] = (struct obr_header){ content_type, form };
		} else {
			headers[nh++] = (struct obr_header){ content_type, json };
			headers[nh++] = (struct obr_header){ target_hdr, action };
		}
		if (creds->token)
			headers[nh++] = (struct obr_header){ token_hdr, creds->token };
		struct obr_http_request req = {
			.method = "POST",
			.url = t->url,
			.headers = headers,
			.nheaders = nh,
			.body = body.data,
			.body_len = body.len,
			.aws_sigv4 = t->sigv4,
			.userpwd = creds->userpwd,
			.keep_response = OBR_AWS_RESPONSE_KEEP,
			.row_controlled = t->row_controlled,
			.proxied = true,
		};
		if (rc == 0 && obr_http_start(aws->http, &req, on_batch_done, b) == 0) {
			b->next = aws->batches;
			if (b->next)
				b->next->prev = b;
			aws->batches = b;
			aws->sending += b->n;
		} else {
			for (int i = 0; i < b->n; i++)
				fail_later(aws, b->msgs[i], rc ? "out of memory building the request" : "could not start the request",
				           false);
			free(b);
		}
		obr_strbuf_free(&body);
	}
}

/* Fails every queued message (not yet sent) with why. */
static void fail_queued(struct obr_aws *aws, const char *why)
{
	while (aws->targets) {
		struct target *t = aws->targets;
		aws->targets = t->next;
		while (t->head) {
			struct amsg *m = t->head;
			t->head = m->next;
			aws->queued--;
			fail_later(aws, m, why, false);
		}
		target_free(t);
	}
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
	struct obr_aws *aws = arg;

	if (aws->targets) {
		const struct obr_aws_creds *creds = NULL;
		char err[512];
		switch (obr_aws_credentials_get(aws->creds, &creds, err, sizeof(err))) {
		case OBR_CREDS_READY:
			while (aws->targets) {
				struct target *t = aws->targets;
				send_target(aws, t, creds);
				target_unlink(aws, t);
				target_free(t);
			}
			break;
		case OBR_CREDS_PENDING:
			break; /* on_creds_change flushes again */
		case OBR_CREDS_FAILED:
			fail_queued(aws, err);
			break;
		}
	}

	/* answers decided before sending; callbacks may submit again, so take the list first */
	struct amsg *m = aws->failed_head;
	aws->failed_head = aws->failed_tail = NULL;
	while (m) {
		struct amsg *next = m->next;
		aws->queued--;
		struct obr_aws_entry_result r = { 0 };
		r.permanent = m->permanent;
		snprintf(r.error, sizeof(r.error), "%s", m->error ? m->error : "out of memory");
		report(m, &r);
		msg_free(m);
		m = next;
	}
}

static char *dup_n(const char *s, size_t n)
{
	char *d = malloc(n + 1);
	if (d) {
		memcpy(d, s, n);
		d[n] = '\0';
	}
	return d;
}

static int aws_submit(void *self, const struct obr_send_request *req, obr_send_done_fn done, void *arg,
                      struct obr_send_result *refused)
{
	struct obr_aws *aws = self;
	enum obr_dest_kind kind = req->dest->kind;
	const char *target = req->dest->target;
	if (kind != OBR_DEST_SQS && kind != OBR_DEST_SNS) {
		obr_send_result_set(refused, OBR_SEND_PERMANENT, "not an SQS or SNS destination");
		return -1;
	}
	/* SQS requests go to the queue URL's host (signed): the allow-list covers them too */
	if (kind == OBR_DEST_SQS && !obr_host_allowed(target, aws->allowed_hosts)) {
		obr_send_result_set(refused, OBR_SEND_PERMANENT, "host is not in OUTBOX_ALLOWED_HOSTS");
		return -1;
	}
	const char *payload = req->payload;
	size_t payload_len = payload ? req->payload_len : 0;
	const struct obr_header *attrs = req->dest->headers;
	int nattrs = req->dest->nheaders;
	struct amsg *m = calloc(1, sizeof(*m));
	if (!m)
		goto oom;
	m->done = done;
	m->arg = arg;
	m->kind = kind;
	m->target = strdup(target);
	m->body = dup_n(payload ? payload : "", payload_len);
	m->key = strdup(req->idempotent_key);
	m->group = strdup(req->partition_key);
	m->attrs = nattrs > 0 ? calloc((size_t)nattrs, sizeof(*m->attrs)) : NULL;
	if (!m->target || !m->body || !m->key || !m->group || (nattrs > 0 && !m->attrs))
		goto oom;
	for (int i = 0; i < nattrs; i++) {
		m->attrs[i].name = strdup(attrs[i].name);
		m->attrs[i].value = strdup(attrs[i].value);
		m->nattrs++;
		if (!m->attrs[i].name || !m->attrs[i].value)
			goto oom;
	}
	m->entry = (struct obr_aws_entry){
		.body = m->body,
		.body_len = payload_len,
		.key = m->key,
		.group = m->group,
		.attrs = m->attrs,
		.nattrs = m->nattrs,
	};

	char err[OBR_AWS_ERROR_MAX];
	if (aws->queued >= MAX_WAITING) {
		snprintf(err, sizeof(err), "more than %d SQS/SNS messages are waiting to be sent", MAX_WAITING);
		fail_later(aws, m, err, false);
		return 0;
	}
	if (obr_aws_entry_check(kind, &m->entry, &m->size, err, sizeof(err))) {
		fail_later(aws, m, err, true);
		return 0;
	}
	struct target *t = enqueue(aws, m);
	if (!t)
		return 0;
	if (t->count >= OBR_AWS_MAX_BATCH) {
		/* a full batch goes at once when credentials are at hand; otherwise with the flush */
		const struct obr_aws_creds *creds = NULL;
		char cerr[512];
		if (obr_aws_credentials_get(aws->creds, &creds, cerr, sizeof(cerr)) == OBR_CREDS_READY)
			send_target(aws, t, creds);
	}
	schedule_flush(aws);
	return 0;
oom:
	msg_free(m);
	obr_send_result_set(refused, OBR_SEND_RETRY, "could not start the request (out of memory)");
	return -1;
}

static int aws_in_flight(const void *self)
{
	const struct obr_aws *aws = self;
	return aws->queued + aws->sending;
}

static void aws_abort_all(void *self)
{
	struct obr_aws *aws = self;
	while (aws->targets) {
		struct target *t = aws->targets;
		aws->targets = t->next;
		target_free(t);
	}
	msg_list_free(aws->failed_head);
	aws->failed_head = aws->failed_tail = NULL;
	for (struct batch *b = aws->batches; b; b = b->next) {
		if (b->aborted)
			continue;
		b->aborted = true;
		for (int i = 0; i < b->n; i++)
			msg_free(b->msgs[i]);
		b->n = 0;
	}
	aws->queued = 0;
	aws->sending = 0;
	if (aws->creds)
		obr_aws_credentials_abort(aws->creds);
}

static void aws_free(void *self)
{
	struct obr_aws *aws = self;
	aws_abort_all(aws);
	/* batches on the wire belong to obr_http: cancelled here, not reported */
	obr_http_cancel(aws->http, on_batch_done);
	while (aws->batches) {
		struct batch *b = aws->batches;
		batch_unlink(aws, b);
		free(b);
	}
	obr_aws_credentials_free(aws->creds);
	if (aws->flush_ev)
		event_free(aws->flush_ev);
	obr_aws_config_clear(&aws->cfg);
	free(aws->allowed_hosts);
	free(aws);
}

static const struct obr_sender_ops aws_sender_ops = {
	.submit = aws_submit,
	.in_flight = aws_in_flight,
	.abort_all = aws_abort_all,
	.free = aws_free,
};

struct obr_sender *obr_aws_sender_new(struct event_base *base, struct obr_http *http, const char *allowed_hosts,
                                      char *err, size_t errlen)
{
	struct obr_aws *aws = aws_new(base, http, allowed_hosts, err, errlen);
	if (!aws)
		return NULL;
	aws->sender = (struct obr_sender){ &aws_sender_ops, aws };
	return &aws->sender;
}
