/*
 * fake_send.c - see fake_send.h. Implements the parts of send/http.h and send/aws.h the
 * engine calls.
 */
#include "fake_send.h"

#include "send/aws.h"
#include "send/http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_REQUESTS 64

struct pending {
	struct fake_request req;
	obr_http_done_fn done;
	void *arg;
};

static struct pending pending[MAX_REQUESTS];
static int npending, nstarted, naborted;

struct obr_http {
	int unused;
};

struct obr_aws {
	int unused;
};

static int record(const char *target, const char *body, size_t body_len, obr_http_done_fn done, void *arg)
{
	if (npending == MAX_REQUESTS)
		return -1;
	struct pending *p = &pending[npending++];
	p->req.target = strdup(target);
	p->req.body = strndup(body, body_len);
	p->req.id = ++nstarted;
	p->done = done;
	p->arg = arg;
	return 0;
}

static void drop(int i)
{
	free(pending[i].req.target);
	free(pending[i].req.body);
	memmove(&pending[i], &pending[i + 1], (size_t)(npending - i - 1) * sizeof(pending[0]));
	npending--;
}

struct obr_http *obr_http_new(struct event_base *base, const struct obr_http_options *opt)
{
	return calloc(1, sizeof(struct obr_http));
}

int obr_http_send(struct obr_http *http, enum obr_http_method method, const char *url,
                  const struct obr_header *headers, int nheaders, const char *body, size_t body_len,
                  obr_http_done_fn done, void *arg)
{
	return record(url, body, body_len, done, arg);
}

int obr_http_in_flight(const struct obr_http *http)
{
	return npending;
}

void obr_http_abort_all(struct obr_http *http)
{
	while (npending) {
		naborted++;
		drop(0);
	}
}

void obr_http_free(struct obr_http *http)
{
	free(http);
}

struct obr_aws *obr_aws_new(struct event_base *base, struct obr_http *http, char *err, size_t errlen)
{
	return calloc(1, sizeof(struct obr_aws));
}

int obr_aws_submit(struct obr_aws *aws, enum obr_dest_kind kind, const char *target, const char *idempotent_key,
                   const char *partition_key, const struct obr_header *attrs, int nattrs, const char *payload,
                   size_t payload_len, obr_http_done_fn done, void *arg)
{
	return record(target, payload, payload_len, done, arg);
}

int obr_aws_in_flight(const struct obr_aws *aws)
{
	return 0; /* every request is counted by the fake obr_http */
}

void obr_aws_abort_all(struct obr_aws *aws)
{
}

void obr_aws_free(struct obr_aws *aws)
{
	free(aws);
}

int fake_send_count(void)
{
	return npending;
}

int fake_send_started(void)
{
	return nstarted;
}

int fake_send_aborted(void)
{
	return naborted;
}

const struct fake_request *fake_send_get(int i)
{
	return i < npending ? &pending[i].req : NULL;
}

void fake_send_answer(int i, bool ok)
{
	struct pending p = pending[i];
	struct obr_http_result res = { .status = ok ? 200 : 503, .ok = ok };
	if (!ok)
		snprintf(res.error, sizeof(res.error), "HTTP 503");
	pending[i].req.target = NULL;
	pending[i].req.body = NULL;
	drop(i);
	p.done(p.arg, &res);
	free(p.req.target);
	free(p.req.body);
}

void fake_send_reset(void)
{
	obr_http_abort_all(NULL);
	nstarted = naborted = 0;
}
