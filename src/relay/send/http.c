/*
 * http.c - libcurl multi socket API on libevent.
 */
#include "send/http.h"

#include "send/sender.h"
#include "util/log.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_RESPONSE_KEEP 512  /* bytes of an error response body kept for last_error */

struct request {
	struct obr_http *http;
	CURL *easy;
	struct curl_slist *headers;
	char *body;
	obr_http_done_fn done;
	void *arg;
	char errbuf[CURL_ERROR_SIZE];
	char refused[INET6_ADDRSTRLEN]; /* a private address deny_private kept us from */
	char *response;           /* keep + 1 bytes */
	size_t response_len, keep;
	bool in_multi;            /* added to the curl multi (else: the host is being checked) */
	struct evdns_getaddrinfo_request *dns; /* resolving the URL's host (proxied, deny_private) */
	struct event *refuse_ev;  /* reports a refusal decided before curl, from the loop */
	struct request *prev, *next;
};

struct sock {
	struct event *ev;
};

struct obr_http {
	struct event_base *base;
	CURLM *multi;
	struct event *timer;
	struct obr_http_options opt;
	char *ca_file;
	char *proxy;
	struct evdns_base *dns;     /* only with a proxy and deny_private */
	struct request *requests;   /* in flight, for abort_all */
	int in_flight;
};

static void request_free(struct request *r)
{
	if (!r)
		return;
	if (r->dns) {
		/* cancelling runs the callback with EVUTIL_EAI_CANCEL, which only forgets r->dns */
		evdns_getaddrinfo_cancel(r->dns);
	}
	if (r->refuse_ev)
		event_free(r->refuse_ev);
	if (r->in_multi)
		curl_multi_remove_handle(r->http->multi, r->easy);
	if (r->easy)
		curl_easy_cleanup(r->easy);
	curl_slist_free_all(r->headers);
	free(r->body);
	free(r->response);
	free(r);
}

static void unlink_request(struct obr_http *http, struct request *r)
{
	if (r->prev)
		r->prev->next = r->next;
	else
		http->requests = r->next;
	if (r->next)
		r->next->prev = r->prev;
	http->in_flight--;
}

/* Reports a request's end (result: curl's, or CURLE_OK when it never reached curl) and frees it. */
static void complete(struct obr_http *http, struct request *r, CURLcode result)
{
	struct obr_http_result res = { 0 };
	res.retry_after_s = -1;
	if (r->in_multi) {
		curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &res.status);
		curl_off_t retry_after = 0;
		if (curl_easy_getinfo(r->easy, CURLINFO_RETRY_AFTER, &retry_after) == CURLE_OK && retry_after > 0)
			res.retry_after_s = (long)retry_after;
	}
	r->response[r->response_len] = '\0';
	res.body = r->response;
	res.body_len = r->response_len;
	if (r->refused[0]) {
		snprintf(res.error, sizeof(res.error),
		         "refused to connect to %s: a loopback or private address (OUTBOX_DENY_PRIVATE_ADDRESSES)", r->refused);
		res.permanent = true;
	} else if (result != CURLE_OK) {
		/* curl says "Couldn't connect to server"; the system's reason (refused, unreachable,
		 * timed out) is what an operator needs */
		long os_errno = 0;
		curl_easy_getinfo(r->easy, CURLINFO_OS_ERRNO, &os_errno);
		const char *why = r->errbuf[0] ? r->errbuf : curl_easy_strerror(result);
		if (os_errno > 0 && result == CURLE_COULDNT_CONNECT)
			snprintf(res.error, sizeof(res.error), "%s (%s)", why, strerror((int)os_errno));
		else
			snprintf(res.error, sizeof(res.error), "%s", why);
	} else if (res.status >= 200 && res.status < 300) {
		res.ok = true;
	} else {
		char shown[256];
		size_t n = r->response_len < sizeof(shown) - 1 ? r->response_len : sizeof(shown) - 1;
		for (size_t i = 0; i < n; i++)
			shown[i] = (unsigned char)r->response[i] < 32 ? ' ' : r->response[i];
		shown[n] = '\0';
		snprintf(res.error, sizeof(res.error), "HTTP %ld%s%s", res.status, n ? ": " : "", shown);
	}
	unlink_request(http, r);
	r->done(r->arg, &res);
	request_free(r);
}

static void check_done(struct obr_http *http)
{
	CURLMsg *msg;
	int left;

	while ((msg = curl_multi_info_read(http->multi, &left)) != NULL) {
		if (msg->msg != CURLMSG_DONE)
			continue;
		struct request *r;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)(void *)&r);
		complete(http, r, msg->data.result);
	}
}

static bool private_v4(const unsigned char a[4])
{
	return a[0] == 0 || a[0] == 10 || a[0] == 127 || (a[0] == 169 && a[1] == 254) ||
	       (a[0] == 172 && (a[1] & 0xf0) == 16) || (a[0] == 192 && a[1] == 168) ||
	       (a[0] == 100 && (a[1] & 0xc0) == 64) || a[0] >= 224;
}

/* Loopback, private, link-local, unique-local, CGNAT, multicast, unspecified. */
static bool private_address(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET) {
		struct sockaddr_in in4;
		memcpy(&in4, ss, sizeof(in4));
		unsigned char a4[4];
		memcpy(a4, &in4.sin_addr, 4);
		return private_v4(a4);
	}
	if (ss->ss_family != AF_INET6)
		return true;
	struct sockaddr_in6 in6;
	memcpy(&in6, ss, sizeof(in6));
	const unsigned char *a = in6.sin6_addr.s6_addr;
	static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
	static const unsigned char zero[15] = { 0 };
	if (!memcmp(a, mapped, 12))
		return private_v4(a + 12);
	if (!memcmp(a, zero, 15) && (a[15] == 0 || a[15] == 1))
		return true;                               /* :: and ::1 */
	return (a[0] & 0xfe) == 0xfc ||              /* fc00::/7 unique local */
	       (a[0] == 0xfe && (a[1] & 0xc0) == 0x80) || /* fe80::/10 link local */
	       a[0] == 0xff;                         /* multicast */
}

/* Whether the address (len bytes, maybe beyond struct sockaddr) is private: then it is kept
 * in r->refused for the error message. */
static bool refuse_private(struct request *r, const struct sockaddr *sa, size_t len)
{
	struct sockaddr_storage ss = { 0 };
	memcpy(&ss, sa, len < sizeof(ss) ? len : sizeof(ss));
	ss.ss_family = sa->sa_family;
	if (!private_address(&ss))
		return false;
	const void *in = ss.ss_family == AF_INET ? (const void *)&((struct sockaddr_in *)(void *)&ss)->sin_addr
	                                         : (const void *)&((struct sockaddr_in6 *)(void *)&ss)->sin6_addr;
	if (!inet_ntop(ss.ss_family, in, r->refused, sizeof(r->refused)))
		snprintf(r->refused, sizeof(r->refused), "a private address");
	return true;
}

/* CURLOPT_OPENSOCKETFUNCTION: the address is known after DNS, before any connection. */
static curl_socket_t open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *address)
{
	struct request *r = clientp;
	/* curl's address is as long as addrlen says, beyond the declared struct sockaddr */
	if (purpose == CURLSOCKTYPE_IPCXN && refuse_private(r, &address->addr, address->addrlen))
		return CURL_SOCKET_BAD;
	return socket(address->family, address->socktype, address->protocol);
}

static void on_socket_event(evutil_socket_t fd, short what, void *arg)
{
	struct obr_http *http = arg;
	int action = ((what & EV_READ) ? CURL_CSELECT_IN : 0) | ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
	int running;
	curl_multi_socket_action(http->multi, fd, action, &running);
	check_done(http);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct obr_http *http = arg;
	int running;
	curl_multi_socket_action(http->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	check_done(http);
}

static int socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	struct obr_http *http = userp;
	struct sock *sk = socketp;

	if (what == CURL_POLL_REMOVE) {
		if (sk) {
			event_free(sk->ev);
			free(sk);
			curl_multi_assign(http->multi, s, NULL);
		}
		return 0;
	}
	short kind = (short)(((what & CURL_POLL_IN) ? EV_READ : 0) | ((what & CURL_POLL_OUT) ? EV_WRITE : 0) | EV_PERSIST);
	if (!sk) {
		sk = calloc(1, sizeof(*sk));
		if (!sk)
			return -1;
		curl_multi_assign(http->multi, s, sk);
	} else {
		event_free(sk->ev);
	}
	sk->ev = event_new(http->base, s, kind, on_socket_event, http);
	if (!sk->ev)
		return -1;
	event_add(sk->ev, NULL);
	return 0;
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	struct obr_http *http = userp;
	if (timeout_ms < 0) {
		evtimer_del(http->timer);
		return 0;
	}
	struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
	evtimer_add(http->timer, &tv);
	return 0;
}

/* Keeps the start of an error answer for last_error; a success body is discarded. */
static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	struct request *r = userdata;
	size_t n = size * nmemb;
	size_t room = r->keep - r->response_len;
	size_t take = n < room ? n : room;
	memcpy(r->response + r->response_len, ptr, take);
	r->response_len += take;
	return n;
}

struct obr_http *obr_http_new(struct event_base *base, const struct obr_http_options *opt)
{
	struct obr_http *http = calloc(1, sizeof(*http));
	if (!http)
		return NULL;
	http->base = base;
	http->opt = *opt;
	if (opt->ca_file && !(http->ca_file = strdup(opt->ca_file)))
		goto fail;
	http->opt.ca_file = http->ca_file;
	if (opt->proxy && !(http->proxy = strdup(opt->proxy)))
		goto fail;
	http->opt.proxy = http->proxy;
	/* through a proxy curl connects to the proxy: the destination's host is resolved here */
	if (opt->proxy && opt->deny_private &&
	    !(http->dns = evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE)))
		goto fail;
	http->multi = curl_multi_init();
	http->timer = evtimer_new(base, on_timeout, http);
	if (!http->multi || !http->timer)
		goto fail;
	curl_multi_setopt(http->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
	curl_multi_setopt(http->multi, CURLMOPT_SOCKETDATA, http);
	curl_multi_setopt(http->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
	curl_multi_setopt(http->multi, CURLMOPT_TIMERDATA, http);
	curl_multi_setopt(http->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
	curl_multi_setopt(http->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 0L);
	return http;
fail:
	obr_http_free(http);
	return NULL;
}

static void on_refused(evutil_socket_t fd, short what, void *arg)
{
	struct request *r = arg;
	complete(r->http, r, r->refused[0] ? CURLE_OK : CURLE_COULDNT_RESOLVE_HOST);
}

/* The URL's host resolved: every address must be public, else the request is refused. */
static void on_resolved(int result, struct evutil_addrinfo *res, void *arg)
{
	struct request *r = arg;
	if (result == EVUTIL_EAI_CANCEL) {
		r->dns = NULL; /* request_free is on its way */
		return;
	}
	r->dns = NULL;
	bool refused = false;
	for (struct evutil_addrinfo *ai = res; ai && !refused; ai = ai->ai_next)
		refused = refuse_private(r, ai->ai_addr, ai->ai_addrlen);
	if (res)
		evutil_freeaddrinfo(res);
	if (result != 0 && !refused)
		snprintf(r->errbuf, sizeof(r->errbuf), "could not resolve the host: %s", evutil_gai_strerror(result));
	if (refused || result != 0 || curl_multi_add_handle(r->http->multi, r->easy) != CURLM_OK) {
		if (!refused && result == 0)
			snprintf(r->errbuf, sizeof(r->errbuf), "could not start the request");
		event_active(r->refuse_ev, EV_TIMEOUT, 0); /* may run inside obr_http_start: report from the loop */
		return;
	}
	r->in_multi = true;
}

/* Resolves the URL's host (a literal address needs no lookup): on_resolved goes on. */
static int resolve_host(struct request *r, const char *url)
{
	CURLU *u = curl_url();
	char *host = NULL;
	if (!u)
		return -1;
	if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK || curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
		snprintf(r->errbuf, sizeof(r->errbuf), "the URL has no host that can be checked");
		event_active(r->refuse_ev, EV_TIMEOUT, 0);
	} else {
		size_t n = strlen(host);
		if (n >= 2 && host[0] == '[' && host[n - 1] == ']') { /* IPv6 literal */
			memmove(host, host + 1, n - 2);
			host[n - 2] = '\0';
		}
		struct evutil_addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
		/* NULL: answered at once (a literal, the hosts file) or failed; on_resolved ran */
		r->dns = evdns_getaddrinfo(r->http->dns, host, NULL, &hints, on_resolved, r);
	}
	curl_free(host);
	curl_url_cleanup(u);
	return 0;
}

int obr_http_start(struct obr_http *http, const struct obr_http_request *req, obr_http_done_fn done, void *arg)
{
	struct request *r = calloc(1, sizeof(*r));
	if (!r)
		return -1;
	r->http = http;
	r->done = done;
	r->arg = arg;
	r->keep = req->keep_response ? req->keep_response : DEFAULT_RESPONSE_KEEP;
	r->easy = curl_easy_init();
	r->response = malloc(r->keep + 1);
	if (!r->easy || !r->response)
		goto fail;
	if (req->body) {
		r->body = malloc(req->body_len + 1);
		if (!r->body)
			goto fail;
		memcpy(r->body, req->body, req->body_len);
		r->body[req->body_len] = '\0';
	}

	bool has_content_type = false;
	char line[8600];
	for (int i = 0; i < req->nheaders; i++) {
		const struct obr_header *h = &req->headers[i];
		if (!strcasecmp(h->name, "content-type"))
			has_content_type = true;
		/* "Name;" is curl's way to send a header with an empty value */
		if (h->value[0])
			snprintf(line, sizeof(line), "%s: %s", h->name, h->value);
		else
			snprintf(line, sizeof(line), "%s;", h->name);
		struct curl_slist *l = curl_slist_append(r->headers, line);
		if (!l)
			goto fail;
		r->headers = l;
	}
	/* curl would add its own Content-Type and Expect: the caller decides what is sent. Not on
	 * signed requests: libcurl before 8.3 signs a header removal as an empty header it never
	 * sends (curl issue 11664), so the signature would not match; signed requests carry their
	 * own Content-Type and stay under curl's 1 MiB Expect threshold. */
	const char *suppress[] = { has_content_type || !req->body || req->aws_sigv4 ? NULL : "Content-Type:",
		                   req->aws_sigv4 ? NULL : "Expect:" };
	for (size_t i = 0; i < 2; i++) {
		if (!suppress[i])
			continue;
		struct curl_slist *l = curl_slist_append(r->headers, suppress[i]);
		if (!l)
			goto fail;
		r->headers = l;
	}

	CURL *e = r->easy;
	long timeout = req->timeout_ms ? req->timeout_ms : http->opt.timeout_ms;
	curl_easy_setopt(e, CURLOPT_URL, req->url);
	curl_easy_setopt(e, CURLOPT_PRIVATE, r);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
	if (r->body) {
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body);
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
		if (strcmp(req->method, "POST") != 0)
			curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
	} else if (strcmp(req->method, "GET") != 0) {
		curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
	}
	if (req->aws_sigv4) {
		curl_easy_setopt(e, CURLOPT_AWS_SIGV4, req->aws_sigv4);
		curl_easy_setopt(e, CURLOPT_USERPWD, req->userpwd);
	}
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, timeout);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, http->opt.tls_verify ? 1L : 0L);
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, http->opt.tls_verify ? 2L : 0L);
	/* never the environment's proxy (HTTPS_PROXY, ALL_PROXY): "" turns it off */
	bool via_proxy = req->proxied && http->opt.proxy;
	curl_easy_setopt(e, CURLOPT_PROXY, via_proxy ? http->opt.proxy : "");
	if (via_proxy)
		curl_easy_setopt(e, CURLOPT_NOPROXY, ""); /* NO_PROXY neither: the operator's setting decides */
	bool check_host = req->row_controlled && http->opt.deny_private;
	if (check_host && !via_proxy) {
		curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_socket);
		curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, r);
	}
	curl_easy_setopt(e, CURLOPT_USERAGENT, "outbox-relay/" OBR_VERSION);
	if (http->opt.ca_file)
		curl_easy_setopt(e, CURLOPT_CAINFO, http->opt.ca_file);

	if (check_host && via_proxy) {
		r->refuse_ev = event_new(http->base, -1, 0, on_refused, r);
		if (!r->refuse_ev || resolve_host(r, req->url))
			goto fail;
	} else if (curl_multi_add_handle(http->multi, e) != CURLM_OK) {
		goto fail;
	} else {
		r->in_multi = true;
	}
	r->next = http->requests;
	if (r->next)
		r->next->prev = r;
	http->requests = r;
	http->in_flight++;
	return 0;
fail:
	request_free(r);
	return -1;
}

int obr_http_in_flight(const struct obr_http *http)
{
	return http->in_flight;
}

void obr_http_cancel(struct obr_http *http, obr_http_done_fn done)
{
	struct request *r = http->requests;
	while (r) {
		struct request *next = r->next;
		if (r->done == done) {
			unlink_request(http, r);
			request_free(r);
		}
		r = next;
	}
}

void obr_http_abort_all(struct obr_http *http)
{
	while (http->requests) {
		struct request *r = http->requests;
		unlink_request(http, r);
		request_free(r);
	}
}

void obr_http_free(struct obr_http *http)
{
	if (!http)
		return;
	if (http->multi) {
		obr_http_abort_all(http);
		curl_multi_cleanup(http->multi);
	}
	if (http->timer)
		event_free(http->timer);
	if (http->dns)
		evdns_base_free(http->dns, 0);
	free(http->ca_file);
	free(http->proxy);
	free(http);
}

/* ---- the HTTP destination sender ---- */

struct send_ctx {
	struct http_sender *s;
	obr_send_done_fn done;
	void *arg;
	struct send_ctx *prev, *next;
};

struct http_sender {
	struct obr_sender base;
	struct obr_http *http;
	char *allowed_hosts;
	struct send_ctx *pending;
	int in_flight;
};

static void ctx_unlink(struct http_sender *s, struct send_ctx *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		s->pending = c->next;
	if (c->next)
		c->next->prev = c->prev;
	s->in_flight--;
}

static void on_sent(void *arg, const struct obr_http_result *res)
{
	struct send_ctx *c = arg;
	ctx_unlink(c->s, c);
	struct obr_send_result out = { .status = OBR_SEND_OK };
	if (!res->ok)
		obr_send_result_set(&out, res->permanent ? OBR_SEND_PERMANENT : OBR_SEND_RETRY, "%s", res->error);
	out.http_status = res->status;
	/* only "too many requests" and "unavailable" ask for a pause (RFC 9110 10.2.3) */
	bool busy = res->status == 429 || res->status == 503;
	out.retry_after_ms = busy && res->retry_after_s >= 0 ? res->retry_after_s * 1000 : -1;
	c->done(c->arg, &out);
	free(c);
}

static int http_submit(void *self, const struct obr_send_request *req, obr_send_done_fn done, void *arg,
                       struct obr_send_result *refused)
{
	struct http_sender *s = self;
	const struct obr_destination *dest = req->dest;
	if (dest->kind != OBR_DEST_HTTP) {
		obr_send_result_set(refused, OBR_SEND_PERMANENT, "not an HTTP destination");
		return -1;
	}
	if (!obr_host_allowed(dest->target, s->allowed_hosts)) {
		obr_send_result_set(refused, OBR_SEND_PERMANENT, "host is not in OUTBOX_ALLOWED_HOSTS");
		return -1;
	}
	struct send_ctx *c = calloc(1, sizeof(*c));
	if (!c) {
		obr_send_result_set(refused, OBR_SEND_RETRY, "could not start the request (out of memory)");
		return -1;
	}
	*c = (struct send_ctx){ .s = s, .done = done, .arg = arg };
	struct obr_http_request hreq = {
		.method = obr_http_method_name(dest->method),
		.url = dest->target,
		.headers = dest->headers,
		.nheaders = dest->nheaders,
		.body = req->payload,
		.body_len = req->payload_len,
		.row_controlled = true,
		.proxied = true,
	};
	if (obr_http_start(s->http, &hreq, on_sent, c)) {
		free(c);
		obr_send_result_set(refused, OBR_SEND_RETRY, "could not start the request (out of memory)");
		return -1;
	}
	c->next = s->pending;
	if (c->next)
		c->next->prev = c;
	s->pending = c;
	s->in_flight++;
	return 0;
}

static int http_in_flight(const void *self)
{
	const struct http_sender *s = self;
	return s->in_flight;
}

static void http_sender_abort_all(void *self)
{
	struct http_sender *s = self;
	obr_http_cancel(s->http, on_sent);
	while (s->pending) {
		struct send_ctx *c = s->pending;
		ctx_unlink(s, c);
		free(c);
	}
}

static void http_sender_free(void *self)
{
	struct http_sender *s = self;
	http_sender_abort_all(s);
	free(s->allowed_hosts);
	free(s);
}

static const struct obr_sender_ops http_sender_ops = {
	.submit = http_submit,
	.in_flight = http_in_flight,
	.abort_all = http_sender_abort_all,
	.free = http_sender_free,
};

struct obr_sender *obr_http_sender_new(struct obr_http *http, const char *allowed_hosts)
{
	struct http_sender *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->base = (struct obr_sender){ &http_sender_ops, s };
	s->http = http;
	if (allowed_hosts && !(s->allowed_hosts = strdup(allowed_hosts))) {
		free(s);
		return NULL;
	}
	return &s->base;
}
