/*
 * obr-test-sink: a recording HTTP endpoint for outbox-relay's integration tests and benchmark.
 *
 *   obr-test-sink [--port N] [--max-body BYTES] [--max-stored BYTES]
 *
 * Binds 127.0.0.1:N (0: the kernel picks), prints "listening PORT\n" on stdout once bound,
 * and answers every request not under /_sink/ according to the current rules (default: 200,
 * empty body), recording it on arrival. SIGTERM/SIGINT end the loop and free everything.
 *
 * Control API (never recorded):
 *   GET  /_sink/requests[?since=SEQ][&limit=N]  JSON array of records with seq > SEQ
 *   GET  /_sink/count                           {"count": N, "next_seq": S, "pending": P}
 *                                               (records since the last reset; answers waiting
 *                                               on a delay or a drop)
 *   GET  /_sink/rules                           the current rules with their remaining "times"
 *   POST /_sink/rules                           body: JSON array of rules; replaces the current ones
 *   POST /_sink/reset                           forget records and rules
 *
 * A rule: {"path": "/exact" | "prefix": "/p" (neither: every path), "method": "POST",
 *          "status": 200, "delay_ms": 0, "drop": false, "times": N, "body": "...",
 *          "headers": {"Name": "value"}}.
 * Rules are tried in order; the first that matches the request's path and method and has
 * "times" left answers it. "drop" closes the connection with a TCP reset and no response,
 * after delay_ms. Unknown keys are rejected, so a misspelt rule fails loudly.
 *
 * A record: {"seq", "time_us" (CLOCK_REALTIME), "method", "uri", "path", "http_version",
 *            "peer_port", "headers": [[name, value], ...] (arrival order, duplicates kept),
 *            "body" (UTF-8; invalid bytes shown as U+FFFD), "body_size",
 *            "body_base64" (only when the body is not valid UTF-8), "body_stored",
 *            "response": {"status", "delay_ms", "drop", "rule" (index or null)},
 *            "answered_us" (CLOCK_REALTIME when the answer was sent or the connection
 *            dropped; null while it waits, or when its connection closed first)}.
 * [time_us, answered_us) is the time a request spent at the sink: a client that sends its
 * next request only after an answer never has two of these spans overlap.
 * Sequence numbers keep growing across resets, so "since" never sees an old record again.
 *
 * The loop never blocks: delayed answers and drops wait on an evtimer. Request bodies above
 * --max-body (16 MiB) are refused by libevent with 413 and not recorded. Once the stored
 * bodies exceed --max-stored (1 GiB), later records keep their size but not their bytes.
 */

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <netinet/in.h>
#include <sys/queue.h> /* TAILQ_* for the evkeyvalq header lists */
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/http_struct.h> /* major/minor: libevent 2.1 has no accessor for the version */
#include <event2/keyvalq_struct.h>
#include <json-c/json.h>

#define SINK_DEFAULT_MAX_BODY   (16u * 1024u * 1024u)
#define SINK_DEFAULT_MAX_STORED (1024ull * 1024u * 1024u)
#define SINK_MAX_HEADERS_SIZE   (1024 * 1024)
#define SINK_MAX_DELAY_MS       (10 * 60 * 1000)
#define SINK_CONTROL_PREFIX     "/_sink/"

struct header_pair {
	char *name;
	char *value;
};

struct record {
	uint64_t seq;
	int64_t time_us;
	int64_t answered_us; /* 0: not answered (yet) */
	const char *method; /* static string */
	char *uri;
	char *path;
	struct header_pair *headers;
	size_t n_headers;
	char *body; /* NULL when empty or not stored */
	size_t body_size;
	bool body_stored;
	int http_major, http_minor;
	int peer_port;
	int status;
	int delay_ms;
	bool drop;
	int rule; /* index of the rule that answered, -1 for the default */
};

struct rule {
	char *path;   /* exact path, or NULL */
	char *prefix; /* path prefix, or NULL */
	char *method; /* NULL: any */
	int status;
	int delay_ms;
	bool drop;
	long long times; /* remaining uses; -1: unlimited */
	long long times_initial;
	char *body; /* NULL: empty */
	size_t body_len;
	struct header_pair *headers;
	size_t n_headers;
};

/* An answer that waits on a timer: a delayed reply, or a drop. */
struct pending {
	struct pending *prev, *next;
	struct sink *sink;
	struct evhttp_request *req;
	struct event *timer;
	struct evbuffer *body; /* NULL for a drop */
	int status;
	bool drop;
	uint64_t seq;          /* the record it answers */
};

struct sink {
	struct event_base *base;
	struct evhttp *http;
	struct record *records;
	size_t n_records, cap_records;
	uint64_t next_seq;        /* seq of the next record */
	uint64_t first_seq;       /* seq of records[0] */
	unsigned long long stored_bytes, max_stored;
	struct rule *rules;
	size_t n_rules;
	struct pending *pending; /* doubly linked, unordered */
	size_t n_pending;
};

/* ---- small helpers ---------------------------------------------------------------------- */

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (p == NULL) {
		fprintf(stderr, "obr-test-sink: out of memory (%zu bytes)\n", n);
		abort();
	}
	return p;
}

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);
	if (p == NULL) {
		fprintf(stderr, "obr-test-sink: out of memory\n");
		abort();
	}
	return p;
}

static char *xstrdup(const char *s)
{
	size_t n = strlen(s);
	char *p = xmalloc(n + 1);
	memcpy(p, s, n + 1);
	return p;
}

static int64_t realtime_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static const char *method_name(enum evhttp_cmd_type cmd)
{
	switch (cmd) {
	case EVHTTP_REQ_GET: return "GET";
	case EVHTTP_REQ_POST: return "POST";
	case EVHTTP_REQ_HEAD: return "HEAD";
	case EVHTTP_REQ_PUT: return "PUT";
	case EVHTTP_REQ_DELETE: return "DELETE";
	case EVHTTP_REQ_OPTIONS: return "OPTIONS";
	case EVHTTP_REQ_TRACE: return "TRACE";
	case EVHTTP_REQ_CONNECT: return "CONNECT";
	case EVHTTP_REQ_PATCH: return "PATCH";
	}
	return "UNKNOWN";
}

/* Length of the valid UTF-8 sequence at s[0..n), or 0 when it is not one. */
static size_t utf8_seq_len(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	size_t len;
	uint32_t cp;

	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF) {
		len = 2;
		cp = c & 0x1F;
	} else if (c >= 0xE0 && c <= 0xEF) {
		len = 3;
		cp = c & 0x0F;
	} else if (c >= 0xF0 && c <= 0xF4) {
		len = 4;
		cp = c & 0x07;
	} else {
		return 0;
	}
	if (n < len)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xC0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3F);
	}
	if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
	    (cp >= 0xD800 && cp <= 0xDFFF))
		return 0;
	return len;
}

static bool utf8_valid(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0;
	while (i < n) {
		size_t l = utf8_seq_len(p + i, n - i);
		if (l == 0)
			return false;
		i += l;
	}
	return true;
}

/* A JSON string for arbitrary bytes: valid UTF-8 as is, each invalid byte as U+FFFD. */
static json_object *json_string_utf8(const char *s, size_t n)
{
	if (utf8_valid(s, n))
		return json_object_new_string_len(s, (int)n);

	const unsigned char *p = (const unsigned char *)s;
	char *out = xmalloc(n * 3 + 1);
	size_t o = 0;
	for (size_t i = 0; i < n;) {
		size_t l = utf8_seq_len(p + i, n - i);
		if (l == 0) {
			memcpy(out + o, "\xEF\xBF\xBD", 3);
			o += 3;
			i++;
		} else {
			memcpy(out + o, p + i, l);
			o += l;
			i += l;
		}
	}
	json_object *j = json_object_new_string_len(out, (int)o);
	free(out);
	return j;
}

static json_object *json_base64(const char *s, size_t n)
{
	static const char alphabet[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	const unsigned char *p = (const unsigned char *)s;
	size_t olen = (n + 2) / 3 * 4;
	char *out = xmalloc(olen + 1);
	size_t o = 0, i = 0;

	for (; i + 3 <= n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
		out[o++] = alphabet[v >> 18 & 63];
		out[o++] = alphabet[v >> 12 & 63];
		out[o++] = alphabet[v >> 6 & 63];
		out[o++] = alphabet[v & 63];
	}
	if (n - i == 1) {
		uint32_t v = (uint32_t)p[i] << 16;
		out[o++] = alphabet[v >> 18 & 63];
		out[o++] = alphabet[v >> 12 & 63];
		out[o++] = '=';
		out[o++] = '=';
	} else if (n - i == 2) {
		uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
		out[o++] = alphabet[v >> 18 & 63];
		out[o++] = alphabet[v >> 12 & 63];
		out[o++] = alphabet[v >> 6 & 63];
		out[o++] = '=';
	}
	json_object *j = json_object_new_string_len(out, (int)o);
	free(out);
	return j;
}

/* Parses a non-negative decimal integer that fits in an unsigned long long. */
static bool parse_ull(const char *s, unsigned long long *out)
{
	char *end;
	if (s == NULL || *s < '0' || *s > '9')
		return false;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0')
		return false;
	*out = v;
	return true;
}

/* ---- records and rules ------------------------------------------------------------------ */

static void record_free(struct record *r)
{
	free(r->uri);
	free(r->path);
	for (size_t i = 0; i < r->n_headers; i++) {
		free(r->headers[i].name);
		free(r->headers[i].value);
	}
	free(r->headers);
	free(r->body);
}

static void records_clear(struct sink *s)
{
	for (size_t i = 0; i < s->n_records; i++)
		record_free(&s->records[i]);
	free(s->records);
	s->records = NULL;
	s->n_records = s->cap_records = 0;
	s->first_seq = s->next_seq;
	s->stored_bytes = 0;
}

static void header_pairs_free(struct header_pair *h, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(h[i].name);
		free(h[i].value);
	}
	free(h);
}

static void rules_free(struct rule *rules, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(rules[i].path);
		free(rules[i].prefix);
		free(rules[i].method);
		free(rules[i].body);
		header_pairs_free(rules[i].headers, rules[i].n_headers);
	}
	free(rules);
}

/* The first rule that matches and still has uses left; uses one. -1: none. */
static int rules_match(struct sink *s, const char *method, const char *path)
{
	for (size_t i = 0; i < s->n_rules; i++) {
		struct rule *r = &s->rules[i];
		if (r->times == 0)
			continue;
		if (r->path != NULL && strcmp(path, r->path) != 0)
			continue;
		if (r->prefix != NULL && strncmp(path, r->prefix, strlen(r->prefix)) != 0)
			continue;
		if (r->method != NULL && strcasecmp(method, r->method) != 0)
			continue;
		if (r->times > 0)
			r->times--;
		return (int)i;
	}
	return -1;
}

static struct record *record_append(struct sink *s)
{
	if (s->n_records == s->cap_records) {
		size_t cap = s->cap_records ? s->cap_records * 2 : 1024;
		struct record *n = realloc(s->records, cap * sizeof(*n));
		if (n == NULL) {
			fprintf(stderr, "obr-test-sink: out of memory for %zu records\n", cap);
			abort();
		}
		s->records = n;
		s->cap_records = cap;
	}
	struct record *r = &s->records[s->n_records++];
	memset(r, 0, sizeof(*r));
	r->seq = s->next_seq++;
	return r;
}

/* ---- HTTP answers ----------------------------------------------------------------------- */

static void send_json(struct evhttp_request *req, int status, json_object *j)
{
	size_t len;
	const char *text = json_object_to_json_string_length(
		j, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &len);
	struct evbuffer *buf = evbuffer_new();
	evbuffer_add(buf, text, len);
	evbuffer_add(buf, "\n", 1);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "application/json");
	evhttp_send_reply(req, status, NULL, buf);
	evbuffer_free(buf);
	json_object_put(j);
}

static void send_error_json(struct evhttp_request *req, int status, const char *message)
{
	json_object *j = json_object_new_object();
	json_object_object_add(j, "error", json_object_new_string(message));
	send_json(req, status, j);
}

static void pending_unlink(struct pending *p)
{
	struct sink *s = p->sink;
	if (p->prev != NULL)
		p->prev->next = p->next;
	else
		s->pending = p->next;
	if (p->next != NULL)
		p->next->prev = p->prev;
	p->prev = p->next = NULL;
	s->n_pending--;
}

static void pending_free(struct pending *p)
{
	event_free(p->timer);
	if (p->body != NULL)
		evbuffer_free(p->body);
	free(p);
}

/* Closes the request's connection with a TCP reset and no response. */
static void drop_connection(struct evhttp_request *req)
{
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	if (evcon == NULL) {
		/* Already detached from its (closed) connection: only the request is left. */
		evhttp_request_free(req);
		return;
	}
	struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
	evutil_socket_t fd = bev != NULL ? bufferevent_getfd(bev) : -1;
	if (fd >= 0) {
		struct linger lg = { .l_onoff = 1, .l_linger = 0 };
		(void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
	/* Frees the request too; our close callback finds no other pending answer on it. */
	evhttp_connection_free(evcon);
}

/* Marks the record seq (if it is still kept: a reset forgets records) as answered now. */
static void record_answered(struct sink *s, uint64_t seq)
{
	if (seq >= s->first_seq && seq - s->first_seq < s->n_records)
		s->records[seq - s->first_seq].answered_us = realtime_us();
}

static void pending_fire(evutil_socket_t fd, short what, void *arg)
{
	struct pending *p = arg;
	pending_unlink(p);
	record_answered(p->sink, p->seq);
	if (p->drop) {
		drop_connection(p->req);
	} else {
		evhttp_send_reply(p->req, p->status, NULL, p->body);
	}
	pending_free(p);
}

/*
 * A connection is going away (the peer's error, or evhttp_free at exit): libevent frees its
 * requests, so answers still waiting for them must be forgotten first.
 */
static void connection_closed(struct evhttp_connection *evcon, void *arg)
{
	struct sink *s = arg;
	struct pending *p = s->pending;
	while (p != NULL) {
		struct pending *next = p->next;
		if (evhttp_request_get_connection(p->req) == evcon) {
			pending_unlink(p);
			pending_free(p);
		}
		p = next;
	}
}

static void pending_add(struct sink *s, struct evhttp_request *req, uint64_t seq, int status,
			struct evbuffer *body, bool drop, int delay_ms)
{
	struct pending *p = xcalloc(1, sizeof(*p));
	p->sink = s;
	p->seq = seq;
	p->req = req;
	p->status = status;
	p->body = body;
	p->drop = drop;
	p->timer = evtimer_new(s->base, pending_fire, p);
	if (p->timer == NULL) {
		fprintf(stderr, "obr-test-sink: evtimer_new failed\n");
		abort();
	}
	p->next = s->pending;
	if (s->pending != NULL)
		s->pending->prev = p;
	s->pending = p;
	s->n_pending++;

	evhttp_connection_set_closecb(evhttp_request_get_connection(req), connection_closed, s);
	struct timeval tv = { .tv_sec = delay_ms / 1000, .tv_usec = (delay_ms % 1000) * 1000 };
	evtimer_add(p->timer, &tv);
}

/* ---- recording -------------------------------------------------------------------------- */

static void handle_recorded(struct sink *s, struct evhttp_request *req, const char *path)
{
	struct record *r = record_append(s);
	r->time_us = realtime_us();
	r->method = method_name(evhttp_request_get_command(req));
	r->uri = xstrdup(evhttp_request_get_uri(req));
	r->path = xstrdup(path);
	r->http_major = req->major;
	r->http_minor = req->minor;

	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	if (evcon != NULL) {
		char *addr = NULL;
		ev_uint16_t port = 0;
		evhttp_connection_get_peer(evcon, &addr, &port);
		r->peer_port = port;
	}

	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	struct evkeyval *kv;
	size_t nh = 0;
	TAILQ_FOREACH(kv, in, next)
		nh++;
	r->headers = xcalloc(nh, sizeof(*r->headers));
	TAILQ_FOREACH(kv, in, next) {
		r->headers[r->n_headers].name = xstrdup(kv->key);
		r->headers[r->n_headers].value = xstrdup(kv->value);
		r->n_headers++;
	}

	struct evbuffer *input = evhttp_request_get_input_buffer(req);
	r->body_size = evbuffer_get_length(input);
	r->body_stored = s->stored_bytes + r->body_size <= s->max_stored;
	if (r->body_size > 0 && r->body_stored) {
		r->body = xmalloc(r->body_size);
		evbuffer_remove(input, r->body, r->body_size);
		s->stored_bytes += r->body_size;
	}

	int ri = rules_match(s, r->method, path);
	const struct rule *rule = ri >= 0 ? &s->rules[ri] : NULL;
	r->rule = ri;
	r->status = rule != NULL ? rule->status : 200;
	r->delay_ms = rule != NULL ? rule->delay_ms : 0;
	r->drop = rule != NULL && rule->drop;

	if (r->drop) {
		/* Even without a delay the connection is freed from a timer callback, outside
		 * libevent's request dispatch. */
		pending_add(s, req, r->seq, 0, NULL, true, r->delay_ms);
		return;
	}

	struct evbuffer *body = evbuffer_new();
	if (rule != NULL) {
		struct evkeyvalq *out = evhttp_request_get_output_headers(req);
		for (size_t i = 0; i < rule->n_headers; i++)
			evhttp_add_header(out, rule->headers[i].name, rule->headers[i].value);
		if (rule->body_len > 0)
			evbuffer_add(body, rule->body, rule->body_len);
	}
	if (r->delay_ms > 0) {
		pending_add(s, req, r->seq, r->status, body, false, r->delay_ms);
		return;
	}
	r->answered_us = realtime_us();
	evhttp_send_reply(req, r->status, NULL, body);
	evbuffer_free(body);
}

/* ---- control API ------------------------------------------------------------------------ */

static json_object *record_json(const struct record *r)
{
	json_object *j = json_object_new_object();
	json_object_object_add(j, "seq", json_object_new_int64((int64_t)r->seq));
	json_object_object_add(j, "time_us", json_object_new_int64(r->time_us));
	json_object_object_add(j, "answered_us", r->answered_us ? json_object_new_int64(r->answered_us) : NULL);
	json_object_object_add(j, "method", json_object_new_string(r->method));
	json_object_object_add(j, "uri", json_string_utf8(r->uri, strlen(r->uri)));
	json_object_object_add(j, "path", json_string_utf8(r->path, strlen(r->path)));
	char version[16];
	snprintf(version, sizeof(version), "%d.%d", r->http_major, r->http_minor);
	json_object_object_add(j, "http_version", json_object_new_string(version));
	json_object_object_add(j, "peer_port", json_object_new_int(r->peer_port));

	json_object *headers = json_object_new_array_ext((int)r->n_headers);
	for (size_t i = 0; i < r->n_headers; i++) {
		json_object *pair = json_object_new_array_ext(2);
		const struct header_pair *h = &r->headers[i];
		json_object_array_add(pair, json_string_utf8(h->name, strlen(h->name)));
		json_object_array_add(pair, json_string_utf8(h->value, strlen(h->value)));
		json_object_array_add(headers, pair);
	}
	json_object_object_add(j, "headers", headers);

	const char *body = r->body != NULL ? r->body : "";
	size_t body_len = r->body != NULL ? r->body_size : 0;
	json_object_object_add(j, "body", json_string_utf8(body, body_len));
	if (!utf8_valid(body, body_len))
		json_object_object_add(j, "body_base64", json_base64(body, body_len));
	json_object_object_add(j, "body_size", json_object_new_int64((int64_t)r->body_size));
	json_object_object_add(j, "body_stored", json_object_new_boolean(r->body_stored));

	json_object *resp = json_object_new_object();
	json_object_object_add(resp, "status", r->drop ? NULL : json_object_new_int(r->status));
	json_object_object_add(resp, "delay_ms", json_object_new_int(r->delay_ms));
	json_object_object_add(resp, "drop", json_object_new_boolean(r->drop));
	json_object_object_add(resp, "rule", r->rule >= 0 ? json_object_new_int(r->rule) : NULL);
	json_object_object_add(j, "response", resp);
	return j;
}

static void control_requests(struct sink *s, struct evhttp_request *req)
{
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *query = evhttp_uri_get_query(uri);
	unsigned long long since = 0, limit = ULLONG_MAX;

	if (query != NULL) {
		struct evkeyvalq params;
		TAILQ_INIT(&params);
		if (evhttp_parse_query_str(query, &params) != 0) {
			send_error_json(req, 400, "malformed query string");
			return;
		}
		const char *v_since = evhttp_find_header(&params, "since");
		const char *v_limit = evhttp_find_header(&params, "limit");
		bool ok = (v_since == NULL || parse_ull(v_since, &since)) &&
			  (v_limit == NULL || parse_ull(v_limit, &limit));
		evhttp_clear_headers(&params);
		if (!ok) {
			send_error_json(req, 400, "since and limit must be non-negative integers");
			return;
		}
	}

	/* records[i].seq == first_seq + i: "since" is an index, no scan. */
	size_t start = 0;
	if (since >= s->first_seq)
		start = since - s->first_seq + 1 < s->n_records ? (size_t)(since - s->first_seq + 1)
								 : s->n_records;
	size_t end = s->n_records;
	if (limit < end - start)
		end = start + (size_t)limit;

	/* One record at a time into the reply: memory stays at the size of the answer. */
	struct evbuffer *buf = evbuffer_new();
	evbuffer_add(buf, "[", 1);
	for (size_t i = start; i < end; i++) {
		json_object *j = record_json(&s->records[i]);
		size_t len;
		const char *text = json_object_to_json_string_length(
			j, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &len);
		if (i > start)
			evbuffer_add(buf, ",", 1);
		evbuffer_add(buf, text, len);
		json_object_put(j);
	}
	evbuffer_add(buf, "]\n", 2);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "application/json");
	evhttp_send_reply(req, 200, NULL, buf);
	evbuffer_free(buf);
}

static json_object *rule_json(const struct rule *r)
{
	json_object *j = json_object_new_object();
	if (r->path != NULL)
		json_object_object_add(j, "path", json_object_new_string(r->path));
	if (r->prefix != NULL)
		json_object_object_add(j, "prefix", json_object_new_string(r->prefix));
	if (r->method != NULL)
		json_object_object_add(j, "method", json_object_new_string(r->method));
	json_object_object_add(j, "status", json_object_new_int(r->status));
	json_object_object_add(j, "delay_ms", json_object_new_int(r->delay_ms));
	json_object_object_add(j, "drop", json_object_new_boolean(r->drop));
	if (r->times_initial >= 0) {
		json_object_object_add(j, "times", json_object_new_int64(r->times_initial));
		json_object_object_add(j, "times_left", json_object_new_int64(r->times));
	}
	if (r->body != NULL)
		json_object_object_add(j, "body", json_object_new_string_len(r->body, (int)r->body_len));
	if (r->n_headers > 0) {
		json_object *h = json_object_new_object();
		for (size_t i = 0; i < r->n_headers; i++)
			json_object_object_add(h, r->headers[i].name,
					       json_object_new_string(r->headers[i].value));
		json_object_object_add(j, "headers", h);
	}
	return j;
}

static bool json_get_int(json_object *v, long long min, long long max, long long *out)
{
	if (!json_object_is_type(v, json_type_int))
		return false;
	errno = 0;
	int64_t n = json_object_get_int64(v);
	if (errno != 0 || n < min || n > max)
		return false;
	*out = n;
	return true;
}

static bool header_token_ok(const char *s)
{
	if (*s == '\0')
		return false;
	for (; *s; s++)
		if (*s <= ' ' || *s == ':' || *s == 0x7f)
			return false;
	return true;
}

/* Fills *r from one rule object; on error writes a message to err and returns false. */
static bool rule_parse(json_object *o, struct rule *r, char *err, size_t errlen)
{
	memset(r, 0, sizeof(*r));
	r->status = 200;
	r->times = r->times_initial = -1;

	if (!json_object_is_type(o, json_type_object)) {
		snprintf(err, errlen, "a rule must be a JSON object");
		return false;
	}
	json_object_object_foreach(o, key, v) {
		long long n;
		if (strcmp(key, "path") == 0 || strcmp(key, "prefix") == 0) {
			if (!json_object_is_type(v, json_type_string) ||
			    json_object_get_string(v)[0] != '/') {
				snprintf(err, errlen, "\"%s\" must be a string starting with /", key);
				return false;
			}
			char **dst = strcmp(key, "path") == 0 ? &r->path : &r->prefix;
			free(*dst);
			*dst = xstrdup(json_object_get_string(v));
		} else if (strcmp(key, "method") == 0) {
			if (!json_object_is_type(v, json_type_string)) {
				snprintf(err, errlen, "\"method\" must be a string");
				return false;
			}
			free(r->method);
			r->method = xstrdup(json_object_get_string(v));
		} else if (strcmp(key, "status") == 0) {
			if (!json_get_int(v, 100, 599, &n)) {
				snprintf(err, errlen, "\"status\" must be an integer in 100..599");
				return false;
			}
			r->status = (int)n;
		} else if (strcmp(key, "delay_ms") == 0) {
			if (!json_get_int(v, 0, SINK_MAX_DELAY_MS, &n)) {
				snprintf(err, errlen, "\"delay_ms\" must be an integer in 0..%d",
					 SINK_MAX_DELAY_MS);
				return false;
			}
			r->delay_ms = (int)n;
		} else if (strcmp(key, "drop") == 0) {
			if (!json_object_is_type(v, json_type_boolean)) {
				snprintf(err, errlen, "\"drop\" must be true or false");
				return false;
			}
			r->drop = json_object_get_boolean(v);
		} else if (strcmp(key, "times") == 0) {
			if (json_object_is_type(v, json_type_null))
				continue;
			if (!json_get_int(v, 1, LLONG_MAX, &n)) {
				snprintf(err, errlen, "\"times\" must be a positive integer");
				return false;
			}
			r->times = r->times_initial = n;
		} else if (strcmp(key, "body") == 0) {
			if (json_object_is_type(v, json_type_null))
				continue;
			if (!json_object_is_type(v, json_type_string)) {
				snprintf(err, errlen, "\"body\" must be a string");
				return false;
			}
			free(r->body);
			r->body_len = (size_t)json_object_get_string_len(v);
			r->body = xmalloc(r->body_len + 1);
			memcpy(r->body, json_object_get_string(v), r->body_len + 1);
		} else if (strcmp(key, "headers") == 0) {
			if (!json_object_is_type(v, json_type_object)) {
				snprintf(err, errlen, "\"headers\" must be an object of strings");
				return false;
			}
			header_pairs_free(r->headers, r->n_headers);
			r->n_headers = 0;
			r->headers = xcalloc((size_t)json_object_object_length(v), sizeof(*r->headers));
			json_object_object_foreach(v, hname, hval) {
				if (!json_object_is_type(hval, json_type_string) ||
				    !header_token_ok(hname) ||
				    strpbrk(json_object_get_string(hval), "\r\n") != NULL) {
					snprintf(err, errlen, "bad response header \"%.64s\"", hname);
					return false;
				}
				r->headers[r->n_headers].name = xstrdup(hname);
				r->headers[r->n_headers].value = xstrdup(json_object_get_string(hval));
				r->n_headers++;
			}
		} else {
			snprintf(err, errlen, "unknown rule key \"%.64s\"", key);
			return false;
		}
	}
	if (r->path != NULL && r->prefix != NULL) {
		snprintf(err, errlen, "a rule has \"path\" or \"prefix\", not both");
		return false;
	}
	return true;
}

static void control_set_rules(struct sink *s, struct evhttp_request *req)
{
	struct evbuffer *input = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(input);
	char *text = xmalloc(len + 1);
	evbuffer_remove(input, text, len);
	text[len] = '\0';

	struct json_tokener *tok = json_tokener_new();
	json_object *arr = json_tokener_parse_ex(tok, text, (int)len);
	enum json_tokener_error jerr = json_tokener_get_error(tok);
	json_tokener_free(tok);
	free(text);
	if (arr == NULL || jerr != json_tokener_success ||
	    !json_object_is_type(arr, json_type_array)) {
		json_object_put(arr);
		send_error_json(req, 400, "the body must be a JSON array of rules");
		return;
	}

	size_t n = json_object_array_length(arr);
	struct rule *rules = xcalloc(n, sizeof(*rules));
	char err[160];
	for (size_t i = 0; i < n; i++) {
		char msg[128];
		if (!rule_parse(json_object_array_get_idx(arr, i), &rules[i], msg, sizeof(msg))) {
			snprintf(err, sizeof(err), "rule %zu: %s", i, msg);
			rules_free(rules, i + 1);
			json_object_put(arr);
			send_error_json(req, 400, err);
			return;
		}
	}
	json_object_put(arr);

	rules_free(s->rules, s->n_rules);
	s->rules = rules;
	s->n_rules = n;
	json_object *j = json_object_new_object();
	json_object_object_add(j, "rules", json_object_new_int64((int64_t)n));
	send_json(req, 200, j);
}

static void handle_control(struct sink *s, struct evhttp_request *req, const char *path)
{
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	const char *what = path + strlen(SINK_CONTROL_PREFIX);

	if (strcmp(what, "requests") == 0 && cmd == EVHTTP_REQ_GET) {
		control_requests(s, req);
	} else if (strcmp(what, "count") == 0 && cmd == EVHTTP_REQ_GET) {
		json_object *j = json_object_new_object();
		json_object_object_add(j, "count", json_object_new_int64((int64_t)s->n_records));
		json_object_object_add(j, "next_seq", json_object_new_int64((int64_t)s->next_seq));
		json_object_object_add(j, "pending", json_object_new_int64((int64_t)s->n_pending));
		send_json(req, 200, j);
	} else if (strcmp(what, "reset") == 0 && cmd == EVHTTP_REQ_POST) {
		records_clear(s);
		rules_free(s->rules, s->n_rules);
		s->rules = NULL;
		s->n_rules = 0;
		json_object *j = json_object_new_object();
		json_object_object_add(j, "reset", json_object_new_boolean(1));
		send_json(req, 200, j);
	} else if (strcmp(what, "rules") == 0 && cmd == EVHTTP_REQ_POST) {
		control_set_rules(s, req);
	} else if (strcmp(what, "rules") == 0 && cmd == EVHTTP_REQ_GET) {
		json_object *arr = json_object_new_array_ext((int)s->n_rules);
		for (size_t i = 0; i < s->n_rules; i++)
			json_object_array_add(arr, rule_json(&s->rules[i]));
		send_json(req, 200, arr);
	} else if (strcmp(what, "requests") == 0 || strcmp(what, "count") == 0 ||
		   strcmp(what, "reset") == 0 || strcmp(what, "rules") == 0) {
		send_error_json(req, 405, "method not allowed");
	} else {
		send_error_json(req, 404, "unknown control endpoint");
	}
}

static void handle_request(struct evhttp_request *req, void *arg)
{
	struct sink *s = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;
	if (path == NULL || path[0] == '\0')
		path = "/";

	if (strncmp(path, SINK_CONTROL_PREFIX, strlen(SINK_CONTROL_PREFIX)) == 0)
		handle_control(s, req, path);
	else
		handle_recorded(s, req, path);
}

/* ---- main ------------------------------------------------------------------------------- */

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	event_base_loopbreak(arg);
}

static void usage(FILE *f)
{
	fputs("usage: obr-test-sink [--port N] [--max-body BYTES] [--max-stored BYTES]\n"
	      "  --port N            port on 127.0.0.1, 0 lets the kernel pick (default 0)\n"
	      "  --max-body BYTES    larger request bodies get 413 (default 16777216)\n"
	      "  --max-stored BYTES  keep bodies until they total this much (default 1073741824)\n",
	      f);
}

int main(int argc, char **argv)
{
	unsigned long long port = 0, max_body = SINK_DEFAULT_MAX_BODY;
	unsigned long long max_stored = SINK_DEFAULT_MAX_STORED;

	for (int i = 1; i < argc; i += 2) {
		unsigned long long *dst = NULL;
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			usage(stdout);
			return 0;
		} else if (strcmp(argv[i], "--port") == 0) {
			dst = &port;
		} else if (strcmp(argv[i], "--max-body") == 0) {
			dst = &max_body;
		} else if (strcmp(argv[i], "--max-stored") == 0) {
			dst = &max_stored;
		}
		if (dst == NULL || i + 1 >= argc || !parse_ull(argv[i + 1], dst)) {
			fprintf(stderr, "obr-test-sink: bad argument \"%s\"\n", argv[i]);
			usage(stderr);
			return 2;
		}
	}
	if (port > 65535 || max_body > (unsigned long long)EV_SSIZE_MAX) {
		fprintf(stderr, "obr-test-sink: --port or --max-body out of range\n");
		return 2;
	}

	/* A peer that closes while we write must not kill the process. */
	signal(SIGPIPE, SIG_IGN);

	struct sink s = { 0 };
	s.next_seq = s.first_seq = 1;
	s.max_stored = max_stored;
	s.base = event_base_new();
	s.http = s.base != NULL ? evhttp_new(s.base) : NULL;
	if (s.http == NULL) {
		fprintf(stderr, "obr-test-sink: cannot create the event loop\n");
		return 1;
	}
	evhttp_set_allowed_methods(s.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
						   EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
						   EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
						   EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
	evhttp_set_max_body_size(s.http, (ev_ssize_t)max_body);
	evhttp_set_max_headers_size(s.http, SINK_MAX_HEADERS_SIZE);
	/* Read and discard an oversized body so the client sees the 413 rather than a reset. */
	evhttp_set_flags(s.http, EVHTTP_SERVER_LINGERING_CLOSE);
	evhttp_set_gencb(s.http, handle_request, &s);

	struct evhttp_bound_socket *bound =
		evhttp_bind_socket_with_handle(s.http, "127.0.0.1", (ev_uint16_t)port);
	if (bound == NULL) {
		fprintf(stderr, "obr-test-sink: cannot bind 127.0.0.1:%llu: %s\n", port,
			strerror(errno));
		evhttp_free(s.http);
		event_base_free(s.base);
		return 1;
	}
	struct sockaddr_in sa;
	socklen_t salen = sizeof(sa);
	if (getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&sa, &salen) != 0) {
		fprintf(stderr, "obr-test-sink: getsockname: %s\n", strerror(errno));
		evhttp_free(s.http);
		event_base_free(s.base);
		return 1;
	}

	struct event *sigterm = evsignal_new(s.base, SIGTERM, on_signal, s.base);
	struct event *sigint = evsignal_new(s.base, SIGINT, on_signal, s.base);
	evsignal_add(sigterm, NULL);
	evsignal_add(sigint, NULL);

	printf("listening %u\n", (unsigned)ntohs(sa.sin_port));
	fflush(stdout);

	int rc = event_base_dispatch(s.base) < 0 ? 1 : 0;

	/* evhttp_free closes every connection; connection_closed forgets their waiting answers. */
	evhttp_free(s.http);
	while (s.pending != NULL) {
		struct pending *p = s.pending;
		pending_unlink(p);
		evhttp_request_free(p->req); /* detached from its connection earlier */
		pending_free(p);
	}
	event_free(sigterm);
	event_free(sigint);
	records_clear(&s);
	rules_free(s.rules, s.n_rules);
	event_base_free(s.base);
	libevent_global_shutdown();
	return rc;
}
