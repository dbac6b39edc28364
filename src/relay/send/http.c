/*
 * http.c - libcurl multi socket API on libevent.
 */
#include "send/http.h"

#include "util/log.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <event2/event.h>
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
	struct request *requests;   /* in flight, for abort_all */
	int in_flight;
};

static void request_free(struct request *r)
{
	if (!r)
		return;
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

static void check_done(struct obr_http *http)
{
	CURLMsg *msg;
	int left;

	while ((msg = curl_multi_info_read(http->multi, &left)) != NULL) {
		if (msg->msg != CURLMSG_DONE)
			continue;
		struct request *r;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)(void *)&r);
		struct obr_http_result res = { 0 };
		curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &res.status);
		r->response[r->response_len] = '\0';
		res.body = r->response;
		res.body_len = r->response_len;
		if (r->refused[0]) {
			snprintf(res.error, sizeof(res.error),
			         "refused to connect to %s: a loopback or private address (OUTBOX_DENY_PRIVATE_ADDRESSES)", r->refused);
			res.permanent = true;
		} else if (msg->data.result != CURLE_OK) {
			/* curl says "Couldn't connect to server"; the system's reason (refused, unreachable,
			 * timed out) is what an operator needs */
			long os_errno = 0;
			curl_easy_getinfo(r->easy, CURLINFO_OS_ERRNO, &os_errno);
			const char *why = r->errbuf[0] ? r->errbuf : curl_easy_strerror(msg->data.result);
			if (os_errno > 0 && msg->data.result == CURLE_COULDNT_CONNECT)
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
		curl_multi_remove_handle(http->multi, r->easy);
		unlink_request(http, r);
		r->done(r->arg, &res);
		request_free(r);
	}
}

static bool private_v4(const unsigned char a[4])
{
	return a[0] == 0 || a[0] == 10 || a[0] == 127 || (a[0] == 169 && a[1] == 254) ||
	       (a[0] == 172 && (a[1] & 0xf0) == 16) || (a[0] == 192 && a[1] == 168) ||
	       (a[0] == 100 && (a[1] & 0xc0) == 64) || a[0] >= 224;
}

/* Loopback, private, link-local, unique-local, CGNAT, multicast, unspecified. */
static bool private_address(const struct curl_sockaddr *address)
{
	/* curl's address is as long as addrlen says, beyond the declared struct sockaddr */
	struct sockaddr_storage ss = { 0 };
	memcpy(&ss, &address->addr, address->addrlen < sizeof(ss) ? address->addrlen : sizeof(ss));
	if (address->family == AF_INET) {
		struct sockaddr_in in4;
		memcpy(&in4, &ss, sizeof(in4));
		unsigned char a4[4];
		memcpy(a4, &in4.sin_addr, 4);
		return private_v4(a4);
	}
	if (address->family != AF_INET6)
		return true;
	struct sockaddr_in6 in6;
	memcpy(&in6, &ss, sizeof(in6));
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

/* CURLOPT_OPENSOCKETFUNCTION: the address is known after DNS, before any connection. */
static curl_socket_t open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *address)
{
	struct request *r = clientp;
	if (purpose == CURLSOCKTYPE_IPCXN && private_address(address)) {
		struct sockaddr_storage ss = { 0 };
		memcpy(&ss, &address->addr, address->addrlen < sizeof(ss) ? address->addrlen : sizeof(ss));
		const void *in = address->family == AF_INET ? (const void *)&((struct sockaddr_in *)(void *)&ss)->sin_addr
		                                            : (const void *)&((struct sockaddr_in6 *)(void *)&ss)->sin6_addr;
		if (!inet_ntop(address->family, in, r->refused, sizeof(r->refused)))
			snprintf(r->refused, sizeof(r->refused), "a private address");
		return CURL_SOCKET_BAD;
	}
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
	if (req->row_controlled && http->opt.deny_private) {
		curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_socket);
		curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, r);
	}
	curl_easy_setopt(e, CURLOPT_USERAGENT, "outbox-relay/" OBR_VERSION);
	if (http->opt.ca_file)
		curl_easy_setopt(e, CURLOPT_CAINFO, http->opt.ca_file);

	if (curl_multi_add_handle(http->multi, e) != CURLM_OK)
		goto fail;
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

int obr_http_send(struct obr_http *http, enum obr_http_method method, const char *url,
                  const struct obr_header *headers, int nheaders, const char *body, size_t body_len,
                  obr_http_done_fn done, void *arg)
{
	struct obr_http_request req = {
		.method = obr_http_method_name(method),
		.url = url,
		.headers = headers,
		.nheaders = nheaders,
		.body = body,
		.body_len = body_len,
		.row_controlled = true,
	};
	return obr_http_start(http, &req, done, arg);
}

int obr_http_in_flight(const struct obr_http *http)
{
	return http->in_flight;
}

void obr_http_abort_all(struct obr_http *http)
{
	while (http->requests) {
		struct request *r = http->requests;
		curl_multi_remove_handle(http->multi, r->easy);
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
	free(http->ca_file);
	free(http);
}
