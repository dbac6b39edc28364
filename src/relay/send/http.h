/*
 * http.h - HTTP(S) requests on the relay's event loop through the libcurl multi interface.
 *
 * One CURLM for the process: connections are kept alive and reused, HTTP/2 is used when the
 * server offers it over TLS. Socket and timer callbacks plug curl into libevent; there is no
 * curl_easy_perform and no busy loop.
 */
#ifndef OBR_HTTP_H
#define OBR_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include "send/destination.h"

struct event_base;
struct obr_http;

struct obr_http_result {
	long status;             /* HTTP status, 0 when no answer */
	bool ok;                 /* 2xx */
	bool permanent;          /* retrying cannot help (e.g. the queue does not exist): park the row */
	long retry_after_s;      /* the answer's Retry-After in seconds; -1: none */
	char error[512];         /* why not ok, for last_error and the log */
	const char *body;        /* the response body (up to keep_response bytes), valid in the callback */
	size_t body_len;
};

/* A request in full; everything is copied by obr_http_start. */
struct obr_http_request {
	const char *method;                 /* "POST", "PUT", "PATCH", "GET" */
	const char *url;
	const struct obr_header *headers;
	int nheaders;
	const char *body;                   /* NULL: no body (GET) */
	size_t body_len;
	const char *aws_sigv4;              /* CURLOPT_AWS_SIGV4, e.g. "aws:amz:eu-west-1:sqs"; NULL: unsigned */
	const char *userpwd;                /* "ACCESS_KEY:SECRET_KEY" for aws_sigv4 */
	size_t keep_response;               /* response bytes to hand to the callback (0: 512, for errors) */
	long timeout_ms;                    /* 0: the default of obr_http_new */
	bool row_controlled;                /* the URL came from a row: deny_private applies */
	bool proxied;                       /* a destination request: the operator's proxy (if any) applies.
	                                       Credential requests never go through a proxy. */
};

typedef void (*obr_http_done_fn)(void *arg, const struct obr_http_result *res);

struct obr_http_options {
	long timeout_ms;
	const char *ca_file;     /* extra CA bundle; NULL = system store */
	bool tls_verify;         /* false only for tests: certificates and host names unchecked */
	bool deny_private;       /* row-controlled requests never connect to private addresses */
	const char *proxy;       /* OUTBOX_HTTP_PROXY, for proxied requests; NULL: none. The
	                            environment's HTTPS_PROXY, ALL_PROXY, NO_PROXY are ignored. */
};

struct obr_http *obr_http_new(struct event_base *base, const struct obr_http_options *opt);

/* Starts one request: any method, signing, a response body for the caller. Everything is
 * copied. Returns 0 (done is called later, from an event), or -1 when the request could not be
 * started (the callback is not called). With a proxy and deny_private, a row-controlled URL's
 * host is resolved and checked first: the proxy, not curl, would connect to it. */
int obr_http_start(struct obr_http *http, const struct obr_http_request *req, obr_http_done_fn done, void *arg);

/* Requests on the wire, of every user of this multi (destinations and credential fetches). */
int obr_http_in_flight(const struct obr_http *http);
/* Cancels the requests started with this callback; their callbacks are not called. */
void obr_http_cancel(struct obr_http *http, obr_http_done_fn done);
/* Cancels every request in flight; their callbacks are not called. */
void obr_http_abort_all(struct obr_http *http);
void obr_http_free(struct obr_http *http);

/* The HTTP destination sender (sender.h) on this multi: applies allowed_hosts (copied; NULL =
 * any host), sends the row's method, headers and payload to its URL. */
struct obr_sender;
struct obr_sender *obr_http_sender_new(struct obr_http *http, const char *allowed_hosts);

#endif
