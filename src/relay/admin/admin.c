/*
 * admin.c - /health, /ready and /metrics on evhttp, and the Prometheus text format.
 */
#include "admin/admin.h"

#include "send/destination.h"
#include "util/log.h"
#include "util/netaddr.h"
#include "util/numfmt.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <fcntl.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define ADMIN_MAX_HEADERS 8192
#define ADMIN_MAX_BODY 4096
#define ADMIN_TIMEOUT_S 10

struct obr_admin {
	struct evhttp *http;
	struct obr_relay *relay;
	unsigned port;
};

/* ---- the Prometheus text format (0.0.4) ---- */

static void family(struct obr_strbuf *b, const char *name, const char *type, const char *help)
{
	obr_strbuf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void sample_u64(struct obr_strbuf *b, const char *name, const char *labels, uint64_t v)
{
	obr_strbuf_printf(b, "%s%s %" PRIu64 "\n", name, labels ? labels : "", v);
}

static void sample_double(struct obr_strbuf *b, const char *name, const char *labels, double v)
{
	char num[40];
	obr_fmt_double(num, sizeof(num), v);
	obr_strbuf_printf(b, "%s%s %s\n", name, labels ? labels : "", num);
}

static void by_kind(struct obr_strbuf *b, const char *name, const uint64_t *values)
{
	for (int k = 0; k < OBR_DEST_KINDS; k++) {
		char labels[64];
		snprintf(labels, sizeof(labels), "{kind=\"%s\"}", obr_dest_kind_name((enum obr_dest_kind)k));
		sample_u64(b, name, labels, values[k]);
	}
}

/* {host="..."} with the Prometheus escapes: host names come from rows. */
static void host_label(char *out, size_t cap, const char *host)
{
	size_t n = 0;
	n += (size_t)snprintf(out, cap, "{host=\"");
	for (const char *c = host; *c && n + 4 < cap; c++) {
		if (*c == '\\' || *c == '"')
			out[n++] = '\\';
		out[n++] = *c == '\n' ? 'n' : *c;
	}
	snprintf(out + n, cap - n, "\"}");
}

/* Per-host figures of the hosts in use or sick (at most OBR_HOST_STATS). */
static void host_families(struct obr_strbuf *out, const struct obr_relay_stats *st)
{
	family(out, "outbox_relay_circuits_open", "gauge", "HTTP hosts whose circuit is open (OUTBOX_CIRCUIT_FAILURES)");
	sample_u64(out, "outbox_relay_circuits_open", NULL, st->circuits_open > 0 ? (uint64_t)st->circuits_open : 0);
	family(out, "outbox_relay_circuit_deferred_total", "counter",
	       "Rows put off without an attempt because their host's circuit was open");
	sample_u64(out, "outbox_relay_circuit_deferred_total", NULL, st->circuit_deferred);
	if (st->nhosts == 0)
		return;
	static const char *const names[] = { "outbox_relay_host_requests_in_flight", "outbox_relay_host_failures",
		                             "outbox_relay_host_circuit_open" };
	static const char *const helps[] = {
		"HTTP requests in flight to this host (hosts in use or sick, at most 20)",
		"Consecutive failures of this host (no answer, timeout, 5xx)",
		"1 while this host's circuit is open",
	};
	for (size_t f = 0; f < 3; f++) {
		family(out, names[f], "gauge", helps[f]);
		for (size_t i = 0; i < st->nhosts && i < OBR_HOST_STATS; i++) {
			char labels[300];
			host_label(labels, sizeof(labels), st->hosts[i].name);
			int64_t v = f == 0 ? st->hosts[i].in_flight : f == 1 ? st->hosts[i].failures : st->hosts[i].open;
			sample_u64(out, names[f], labels, v > 0 ? (uint64_t)v : 0);
		}
	}
}

int obr_metrics_format(const struct obr_relay_stats *st, bool ready, struct obr_strbuf *out)
{
	family(out, "outbox_relay_up", "gauge", "1 while the relay process serves this endpoint");
	sample_u64(out, "outbox_relay_up", NULL, 1);
	family(out, "outbox_relay_info", "gauge", "Build information (always 1)");
	/* OBR_VERSION is ours (meson's project version): no label escaping needed */
	obr_strbuf_printf(out, "outbox_relay_info{version=\"%s\"} 1\n", OBR_VERSION);
	family(out, "outbox_relay_ready", "gauge",
	       "1 when the database connections are up and, in listen mode, LISTEN is active");
	sample_u64(out, "outbox_relay_ready", NULL, ready ? 1 : 0);

	family(out, "outbox_relay_delivered_total", "counter", "Successful requests, by destination kind");
	by_kind(out, "outbox_relay_delivered_total", st->delivered);
	family(out, "outbox_relay_failed_total", "counter",
	       "Failed requests (every attempt counts), by destination kind");
	by_kind(out, "outbox_relay_failed_total", st->failed);
	family(out, "outbox_relay_parked_total", "counter",
	       "Rows parked (dead_at set): at the failure limit by failing destination kind, or malformed");
	by_kind(out, "outbox_relay_parked_total", st->parked);
	sample_u64(out, "outbox_relay_parked_total", "{kind=\"malformed\"}", st->parked_malformed);
	family(out, "outbox_relay_rows_delivered_total", "counter", "Rows whose every destination succeeded");
	sample_u64(out, "outbox_relay_rows_delivered_total", NULL, st->rows_delivered);

	family(out, "outbox_relay_delivery_latency_seconds", "histogram",
	       "Time from a row's created_at to the answer of its last destination, for delivered rows");
	uint64_t cumulative = 0;
	for (int i = 0; i < OBR_LATENCY_BUCKETS; i++) {
		char le[40], labels[64];
		cumulative += st->latency_buckets[i];
		obr_fmt_double(le, sizeof(le), obr_latency_bounds[i]);
		snprintf(labels, sizeof(labels), "{le=\"%s\"}", le);
		sample_u64(out, "outbox_relay_delivery_latency_seconds_bucket", labels, cumulative);
	}
	/* rows slower than the last bound are in no bucket: +Inf is the total count */
	sample_u64(out, "outbox_relay_delivery_latency_seconds_bucket", "{le=\"+Inf\"}", st->latency_count);
	sample_double(out, "outbox_relay_delivery_latency_seconds_sum", NULL, st->latency_sum);
	sample_u64(out, "outbox_relay_delivery_latency_seconds_count", NULL, st->latency_count);

	family(out, "outbox_relay_requests_in_flight", "gauge", "Destination requests currently in flight");
	sample_u64(out, "outbox_relay_requests_in_flight", NULL,
	           st->in_flight_requests > 0 ? (uint64_t)st->in_flight_requests : 0);
	family(out, "outbox_relay_leases_held", "gauge", "Partition leases this instance holds");
	sample_u64(out, "outbox_relay_leases_held", NULL, st->leases_held > 0 ? (uint64_t)st->leases_held : 0);
	family(out, "outbox_relay_partitions_lingering", "gauge",
	       "Held partitions with nothing to deliver, kept a little after their last row (their writers skip NOTIFY)");
	sample_u64(out, "outbox_relay_partitions_lingering", NULL,
	           st->partitions_lingering > 0 ? (uint64_t)st->partitions_lingering : 0);
	host_families(out, st);

	if (st->listen_selftest_ok >= 0) {
		family(out, "outbox_relay_listen_selftest_ok", "gauge",
		       "1 when LISTEN heard the relay's own test notification; 0 when not (polling instead: a transaction pooler?)");
		sample_u64(out, "outbox_relay_listen_selftest_ok", NULL, (uint64_t)st->listen_selftest_ok);
	}

	/* sampled from the database: absent until the first sample (-1) */
	if (st->due_rows >= 0) {
		family(out, "outbox_relay_due_rows", "gauge", "Rows due for delivery now (sampled from the database)");
		sample_u64(out, "outbox_relay_due_rows", NULL, (uint64_t)st->due_rows);
	}
	if (st->oldest_due_age_s >= 0) {
		family(out, "outbox_relay_oldest_due_age_seconds", "gauge",
		       "Age of the oldest due row, 0 when none is due (sampled from the database)");
		sample_double(out, "outbox_relay_oldest_due_age_seconds", NULL, st->oldest_due_age_s);
	}
	if (st->notification_queue_usage >= 0) {
		family(out, "outbox_relay_notification_queue_usage", "gauge",
		       "pg_notification_queue_usage(): fraction 0..1 of the NOTIFY queue in use (sampled)");
		sample_double(out, "outbox_relay_notification_queue_usage", NULL, st->notification_queue_usage);
	}
	if (st->notify_lock_waiters >= 0) {
		family(out, "outbox_relay_notify_lock_waiters", "gauge",
		       "Sessions waiting for the cluster-wide lock a committing transaction that notified takes (sampled)");
		sample_u64(out, "outbox_relay_notify_lock_waiters", NULL, (uint64_t)st->notify_lock_waiters);
	}
	if (st->sampled_at_unix > 0) {
		family(out, "outbox_relay_last_sample_timestamp_seconds", "gauge",
		       "Unix time of the last database sample behind the sampled gauges");
		sample_u64(out, "outbox_relay_last_sample_timestamp_seconds", NULL, (uint64_t)st->sampled_at_unix);
	}

	family(out, "outbox_relay_notifications_total", "counter", "Notifications received on the listen connection");
	sample_u64(out, "outbox_relay_notifications_total", NULL, st->notifications);
	family(out, "outbox_relay_polls_total", "counter", "Scans for due partitions (catch-up and fallback polls)");
	sample_u64(out, "outbox_relay_polls_total", NULL, st->scans);
	family(out, "outbox_relay_poll_found_partitions_total", "counter", "Due partitions the polls found");
	sample_u64(out, "outbox_relay_poll_found_partitions_total", NULL, st->scan_found);
	family(out, "outbox_relay_claims_total", "counter", "Claim statements sent");
	sample_u64(out, "outbox_relay_claims_total", NULL, st->claims);
	family(out, "outbox_relay_reconnects_total", "counter", "Database reconnections");
	sample_u64(out, "outbox_relay_reconnects_total", NULL, st->reconnects);
	family(out, "outbox_relay_retention_deleted_total", "counter", "Processed rows deleted by retention");
	sample_u64(out, "outbox_relay_retention_deleted_total", NULL, st->retention_deleted);

	return out->failed ? -1 : 0;
}

/* ---- HTTP ---- */

static void reply(struct evhttp_request *req, int code, const char *reason, const char *content_type,
                  const char *body, size_t len)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	evhttp_add_header(h, "Content-Type", content_type);
	evhttp_add_header(h, "Cache-Control", "no-store");
	struct evbuffer *buf = evbuffer_new();
	if (!buf) {
		evhttp_send_error(req, 500, "out of memory");
		return;
	}
	if (evbuffer_add(buf, body, len)) {
		evbuffer_free(buf);
		evhttp_send_error(req, 500, "out of memory");
		return;
	}
	evhttp_send_reply(req, code, reason, buf);
	evbuffer_free(buf);
}

/* {"status": status[, "reason": reason]} with json-c's escaping. */
static void reply_json(struct evhttp_request *req, int code, const char *reason_phrase, const char *status,
                       const char *reason)
{
	json_object *o = json_object_new_object();
	if (!o) {
		evhttp_send_error(req, 500, "out of memory");
		return;
	}
	json_object_object_add(o, "status", json_object_new_string(status));
	if (reason)
		json_object_object_add(o, "reason", json_object_new_string(reason));
	size_t len = 0;
	const char *text = json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE,
	                                                     &len);
	if (text) {
		char line[1024];
		int n = snprintf(line, sizeof(line), "%s\n", text);
		if (n > 0 && (size_t)n < sizeof(line))
			reply(req, code, reason_phrase, "application/json", line, (size_t)n);
		else
			evhttp_send_error(req, 500, "answer too long");
	} else {
		evhttp_send_error(req, 500, "out of memory");
	}
	json_object_put(o);
}

static void serve_metrics(struct obr_admin *a, struct evhttp_request *req)
{
	char why[256];
	bool ready = obr_relay_ready(a->relay, why, sizeof(why));
	const struct obr_relay_stats *st = obr_relay_stats(a->relay);
	struct obr_strbuf b;
	obr_strbuf_init(&b, OBR_METRICS_MAX_BYTES);
	if (obr_metrics_format(st, ready, &b)) {
		obr_log_error("could not build the /metrics answer: over %u bytes or out of memory", OBR_METRICS_MAX_BYTES);
		evhttp_send_error(req, 500, "metrics unavailable");
	} else {
		reply(req, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", b.data, b.len);
	}
	obr_strbuf_free(&b);
}

static void on_request(struct evhttp_request *req, void *arg)
{
	struct obr_admin *a = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	enum { P_NONE, P_HEALTH, P_READY, P_METRICS } which = P_NONE;

	if (path && !strcmp(path, "/health"))
		which = P_HEALTH;
	else if (path && !strcmp(path, "/ready"))
		which = P_READY;
	else if (path && !strcmp(path, "/metrics"))
		which = P_METRICS;
	if (which == P_NONE) {
		reply_json(req, 404, "Not Found", "not found", NULL);
		return;
	}
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
		reply_json(req, 405, "Method Not Allowed", "method not allowed", NULL);
		return;
	}
	switch (which) {
	case P_HEALTH:
		reply_json(req, 200, "OK", "up", NULL);
		break;
	case P_READY: {
		char why[256] = "";
		if (obr_relay_ready(a->relay, why, sizeof(why)))
			reply_json(req, 200, "OK", "ready", NULL);
		else
			reply_json(req, 503, "Service Unavailable", "not ready", why[0] ? why : "unknown");
		break;
	}
	case P_METRICS:
		serve_metrics(a, req);
		break;
	case P_NONE:
		break;
	}
}

/* Resolves host (a name or a literal) and binds the first address that works. Returns a
 * listening non-blocking socket, or -1 with err set. */
static int bind_listen(const char *addr, const char *host, unsigned port, char *err, size_t errlen)
{
	struct addrinfo hints = { 0 }, *ai = NULL;
	char portstr[8];
	snprintf(portstr, sizeof(portstr), "%u", port);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	int gai = getaddrinfo(host, portstr, &hints, &ai);
	if (gai) {
		snprintf(err, errlen, "could not resolve OUTBOX_LISTEN_ADDR \"%s\": %s", addr, gai_strerror(gai));
		return -1;
	}
	int fd = -1, saved = 0;
	for (struct addrinfo *p = ai; p; p = p->ai_next) {
		fd = socket(p->ai_family, p->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, p->ai_protocol);
		if (fd < 0) {
			saved = errno;
			continue;
		}
		int one = 1;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, p->ai_addr, p->ai_addrlen) == 0 && listen(fd, 64) == 0)
			break;
		saved = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	if (fd < 0)
		snprintf(err, errlen, "could not listen on OUTBOX_LISTEN_ADDR \"%s\": %s", addr, strerror(saved));
	return fd;
}

static unsigned bound_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &len))
		return 0;
	if (ss.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return 0;
}

struct obr_admin *obr_admin_new(struct event_base *base, const char *listen_addr, struct obr_relay *relay,
                                char *err, size_t errlen)
{
	char host[OBR_LISTEN_HOST_MAX], perr[256];
	unsigned port;
	if (obr_listen_addr_parse(listen_addr, host, sizeof(host), &port, perr, sizeof(perr))) {
		snprintf(err, errlen, "invalid value for OUTBOX_LISTEN_ADDR: %s", perr);
		return NULL;
	}
	struct obr_admin *a = calloc(1, sizeof(*a));
	if (!a) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	a->relay = relay;
	a->http = evhttp_new(base);
	if (!a->http) {
		snprintf(err, errlen, "could not create the HTTP endpoint (out of memory?)");
		goto fail;
	}
	/* every method reaches on_request, which answers 405 instead of libevent's 501 */
	evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
	                                            EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
	                                            EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
	evhttp_set_max_headers_size(a->http, ADMIN_MAX_HEADERS);
	evhttp_set_max_body_size(a->http, ADMIN_MAX_BODY);
	evhttp_set_timeout(a->http, ADMIN_TIMEOUT_S);
	evhttp_set_gencb(a->http, on_request, a);

	int fd = bind_listen(listen_addr, host, port, err, errlen);
	if (fd < 0)
		goto fail;
	a->port = bound_port(fd);
	if (!evhttp_accept_socket_with_handle(a->http, fd)) {
		close(fd);
		snprintf(err, errlen, "could not serve HTTP on OUTBOX_LISTEN_ADDR \"%s\"", listen_addr);
		goto fail;
	}
	obr_log_info("serving /health, /ready and /metrics on %s (port %u)", listen_addr, a->port);
	return a;
fail:
	obr_admin_free(a);
	return NULL;
}

unsigned obr_admin_port(const struct obr_admin *a)
{
	return a->port;
}

void obr_admin_free(struct obr_admin *a)
{
	if (!a)
		return;
	if (a->http)
		evhttp_free(a->http);
	free(a);
}
