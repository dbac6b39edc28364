/*
 * senders.c - the relay's sender: HTTP and SQS/SNS behind one object, on one curl multi.
 *
 * The only file that knows every kind of sender; it dispatches each delivery on its
 * destination's kind. The senders themselves know only sender.h.
 */
#include "send/sender.h"

#include "send/aws.h"
#include "send/http.h"
#include "send/webhook_sign.h"

#include <stdio.h>
#include <stdlib.h>

struct senders {
	struct obr_sender base;
	struct obr_http *http;        /* the transport both share (and the credential fetches) */
	struct obr_sender *http_sender;
	struct obr_sender *aws_sender;
};

static struct obr_sender *for_kind(struct senders *s, enum obr_dest_kind kind)
{
	return kind == OBR_DEST_HTTP ? s->http_sender : s->aws_sender;
}

static int senders_submit(void *self, const struct obr_send_request *req, obr_send_done_fn done, void *arg,
                          struct obr_send_result *refused)
{
	struct senders *s = self;
	return obr_sender_submit(for_kind(s, req->dest->kind), req, done, arg, refused);
}

static int senders_in_flight(const void *self)
{
	const struct senders *s = self;
	return obr_sender_in_flight(s->http_sender) + obr_sender_in_flight(s->aws_sender);
}

static void senders_abort_all(void *self)
{
	struct senders *s = self;
	obr_sender_abort_all(s->aws_sender);
	obr_sender_abort_all(s->http_sender);
	if (s->http)
		obr_http_abort_all(s->http); /* batches and credential fetches on the wire */
}

static void senders_free(void *self)
{
	struct senders *s = self;
	senders_abort_all(s);
	obr_sender_free(s->aws_sender);
	obr_sender_free(s->http_sender);
	obr_http_free(s->http);
	free(s);
}

static const struct obr_sender_ops senders_ops = {
	.submit = senders_submit,
	.in_flight = senders_in_flight,
	.abort_all = senders_abort_all,
	.free = senders_free,
};

struct obr_sender *obr_senders_new(struct event_base *base, const struct obr_send_options *opt, char *err,
                                   size_t errlen)
{
	struct senders *s = calloc(1, sizeof(*s));
	if (!s) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	s->base = (struct obr_sender){ &senders_ops, s };
	struct obr_http_options hopt = {
		.timeout_ms = opt->timeout_ms,
		.ca_file = opt->ca_file,
		.tls_verify = opt->tls_verify,
		.deny_private = opt->deny_private,
		.proxy = opt->proxy,
	};
	s->http = obr_http_new(base, &hopt);
	s->http_sender = s->http ? obr_http_sender_new(s->http, opt->allowed_hosts) : NULL;
	if (!s->http_sender) {
		snprintf(err, errlen, "out of memory");
		senders_free(s);
		return NULL;
	}
	if (opt->webhook_secret) {
		struct obr_webhook_keys keys;
		if (obr_webhook_keys_parse(opt->webhook_secret, &keys, err, errlen)) {
			senders_free(s);
			return NULL;
		}
		s->http_sender = obr_webhook_signer_new(s->http_sender, &keys, NULL);
		obr_webhook_keys_clear(&keys);
		if (!s->http_sender) {
			snprintf(err, errlen, "out of memory");
			senders_free(s);
			return NULL;
		}
	}
	s->aws_sender = obr_aws_sender_new(base, s->http, opt->allowed_hosts, err, errlen);
	if (!s->aws_sender) {
		senders_free(s);
		return NULL;
	}
	return &s->base;
}
