/*
 * fake_send.c - see fake_send.h. The sender the engine gets from obr_senders_new
 * (send/sender.h): it records requests and answers them when the test says.
 */
#include "fake_send.h"

#include "send/sender.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_REQUESTS 64

struct pending {
	struct fake_request req;
	obr_send_done_fn done;
	void *arg;
};

static struct pending pending[MAX_REQUESTS];
static int npending, nstarted, naborted;

static void drop(int i)
{
	free(pending[i].req.target);
	free(pending[i].req.body);
	memmove(&pending[i], &pending[i + 1], (size_t)(npending - i - 1) * sizeof(pending[0]));
	npending--;
}

static int fake_submit(void *self, const struct obr_send_request *req, obr_send_done_fn done, void *arg,
                       struct obr_send_result *refused)
{
	if (npending == MAX_REQUESTS) {
		refused->status = OBR_SEND_RETRY;
		refused->retry_after_ms = -1;
		snprintf(refused->message, sizeof(refused->message), "too many requests in the fake sender");
		return -1;
	}
	struct pending *p = &pending[npending++];
	p->req.target = strdup(req->dest->target);
	p->req.body = strndup(req->payload, req->payload_len);
	p->req.id = ++nstarted;
	p->done = done;
	p->arg = arg;
	return 0;
}

static int fake_in_flight(const void *self)
{
	return npending;
}

static void fake_abort_all(void *self)
{
	while (npending) {
		naborted++;
		drop(0);
	}
}

static void fake_free(void *self)
{
	free(self);
}

static const struct obr_sender_ops fake_ops = { fake_submit, fake_in_flight, fake_abort_all, fake_free };

/* In place of send/senders.c's: the engine gets the fake. */
struct obr_sender *obr_senders_new(struct event_base *base, const struct obr_send_options *opt, char *err,
                                   size_t errlen)
{
	struct obr_sender *s = calloc(1, sizeof(*s));
	if (s) {
		s->ops = &fake_ops;
		s->self = s;
	}
	return s;
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
	struct obr_send_result res = { .status = ok ? OBR_SEND_OK : OBR_SEND_RETRY, .retry_after_ms = -1 };
	if (!ok)
		snprintf(res.message, sizeof(res.message), "HTTP 503");
	pending[i].req.target = NULL;
	pending[i].req.body = NULL;
	drop(i);
	p.done(p.arg, &res);
	free(p.req.target);
	free(p.req.body);
}

void fake_send_reset(void)
{
	fake_abort_all(NULL);
	nstarted = naborted = 0;
}
