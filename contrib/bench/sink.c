/*
 * bench-sink: the benchmark's HTTP endpoint. Answers every request 200 at once and records
 * its arrival in memory; nothing is written to disk until asked.
 *
 *   bench-sink [--port N]          (0 or absent: the kernel picks; prints "listening PORT")
 *
 * Binds 127.0.0.1 only. A small HTTP/1.1 server on raw sockets and libevent events (no
 * evhttp: no per-request header lists or allocations), keep-alive and pipelined requests,
 * Content-Length bodies (chunked bodies are refused with 411 and the connection closed).
 *
 * A record: arrival time (CLOCK_REALTIME, microseconds, taken when the whole request is in),
 * a sequence number, and from the body the numbers after "p":, "s": and "t": (partition
 * index, per-partition sequence, producer insert time in microseconds; -1 when absent).
 *
 * Control requests (never recorded), any method:
 *   /_ctl/count              -> "<records>\n"
 *   /_ctl/dump?file=PATH     -> writes "seq arrival_us p s t" lines to PATH, answers the count
 *   /_ctl/reset              -> forgets the records (sequence numbers keep growing)
 * SIGTERM / SIGINT end the loop.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>

#define IN_CAP (256 * 1024)
#define MAX_HEAD 16384

struct record {
	int64_t arrival_us;
	uint64_t seq;
	int64_t p, s, t;
};

static struct {
	struct record *recs;
	size_t len, cap;
	uint64_t next_seq;
	uint64_t served;
} g;

struct conn {
	evutil_socket_t fd;
	struct event *rev, *wev;
	char *in;
	size_t in_len;
	char *out;
	size_t out_len, out_cap;
	bool closing; /* close once out is flushed */
};

static struct event_base *base;

static int64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void conn_free(struct conn *c)
{
	event_free(c->rev);
	event_free(c->wev);
	close(c->fd);
	free(c->in);
	free(c->out);
	free(c);
}

static int out_append(struct conn *c, const char *data, size_t n)
{
	if (c->out_len + n > c->out_cap) {
		size_t cap = c->out_cap ? c->out_cap : 4096;
		while (cap < c->out_len + n)
			cap *= 2;
		char *o = realloc(c->out, cap);
		if (!o)
			return -1;
		c->out = o;
		c->out_cap = cap;
	}
	memcpy(c->out + c->out_len, data, n);
	c->out_len += n;
	return 0;
}

static void respond(struct conn *c, int status, const char *body, bool close_after)
{
	char head[256];
	size_t blen = body ? strlen(body) : 0;
	const char *reason = status == 200 ? "OK" : status == 404 ? "Not Found" : status == 411 ? "Length Required" : "Bad Request";
	int n = snprintf(head, sizeof(head), "HTTP/1.1 %d %s\r\nContent-Length: %zu\r\n%s\r\n", status, reason, blen,
	                 close_after ? "Connection: close\r\n" : "");
	if (out_append(c, head, (size_t)n) || (blen && out_append(c, body, blen)))
		c->closing = true;
	if (close_after)
		c->closing = true;
}

static int64_t field(const char *body, size_t len, const char *name)
{
	/* name is like "\"p\":" ; the body is not NUL-terminated */
	size_t nl = strlen(name);
	if (len < nl)
		return -1;
	const char *hit = memmem(body, len, name, nl);
	if (!hit)
		return -1;
	const char *q = hit + nl, *end = body + len;
	while (q < end && *q == ' ')
		q++;
	if (q >= end || *q < '0' || *q > '9')
		return -1;
	int64_t v = 0;
	while (q < end && *q >= '0' && *q <= '9')
		v = v * 10 + (*q++ - '0');
	return v;
}

static void record(int64_t arrival, const char *body, size_t len)
{
	if (g.len == g.cap) {
		size_t cap = g.cap ? g.cap * 2 : 65536;
		struct record *r = realloc(g.recs, cap * sizeof(*r));
		if (!r) {
			fprintf(stderr, "bench-sink: out of memory, record dropped\n");
			return;
		}
		g.recs = r;
		g.cap = cap;
	}
	struct record *r = &g.recs[g.len++];
	r->arrival_us = arrival;
	r->seq = ++g.next_seq;
	r->p = field(body, len, "\"p\":");
	r->s = field(body, len, "\"s\":");
	r->t = field(body, len, "\"t\":");
}

static void control(struct conn *c, const char *path, size_t plen)
{
	char buf[128];
	if (plen >= 11 && !strncmp(path, "/_ctl/count", 11)) {
		snprintf(buf, sizeof(buf), "%zu\n", g.len);
		respond(c, 200, buf, false);
	} else if (plen >= 11 && !strncmp(path, "/_ctl/reset", 11)) {
		g.len = 0;
		respond(c, 200, "0\n", false);
	} else if (plen > 16 && !strncmp(path, "/_ctl/dump?file=", 16)) {
		char file[4096];
		size_t fl = plen - 16 < sizeof(file) - 1 ? plen - 16 : sizeof(file) - 1;
		memcpy(file, path + 16, fl);
		file[fl] = '\0';
		FILE *f = fopen(file, "w");
		if (!f) {
			respond(c, 400, "cannot open file\n", false);
			return;
		}
		for (size_t i = 0; i < g.len; i++) {
			const struct record *r = &g.recs[i];
			fprintf(f, "%" PRIu64 " %" PRId64 " %" PRId64 " %" PRId64 " %" PRId64 "\n", r->seq, r->arrival_us, r->p,
			        r->s, r->t);
		}
		bool bad = fclose(f) != 0;
		snprintf(buf, sizeof(buf), "%zu\n", g.len);
		respond(c, bad ? 400 : 200, bad ? "write failed\n" : buf, false);
	} else {
		respond(c, 404, "unknown control request\n", false);
	}
}

/* Case-insensitive header lookup in [head, end); returns the value start or NULL. */
static const char *header(const char *head, const char *end, const char *name, size_t *vlen)
{
	size_t nl = strlen(name);
	const char *line = memchr(head, '\n', (size_t)(end - head));
	while (line && line + 1 < end) {
		line++;
		const char *eol = memchr(line, '\n', (size_t)(end - line));
		if (!eol)
			eol = end;
		if ((size_t)(eol - line) > nl && line[nl] == ':' && !strncasecmp(line, name, nl)) {
			const char *v = line + nl + 1;
			while (v < eol && (*v == ' ' || *v == '\t'))
				v++;
			const char *ve = eol;
			while (ve > v && (ve[-1] == '\r' || ve[-1] == ' '))
				ve--;
			*vlen = (size_t)(ve - v);
			return v;
		}
		line = eol < end ? eol : NULL;
	}
	return NULL;
}

/* Parses and answers every complete request in the input buffer. */
static void process(struct conn *c)
{
	size_t off = 0;
	while (!c->closing && off < c->in_len) {
		char *start = c->in + off;
		size_t avail = c->in_len - off;
		char *hend = memmem(start, avail, "\r\n\r\n", 4);
		if (!hend) {
			if (avail > MAX_HEAD) {
				respond(c, 400, "header too large\n", true);
				off = c->in_len;
			}
			break;
		}
		size_t head_len = (size_t)(hend - start) + 4;
		size_t vlen = 0;
		int64_t clen = 0;
		const char *v = header(start, hend + 2, "content-length", &vlen);
		if (v)
			clen = strtoll(v, NULL, 10);
		if (header(start, hend + 2, "transfer-encoding", &vlen)) {
			respond(c, 411, "chunked bodies are not supported\n", true);
			off = c->in_len;
			break;
		}
		if (clen < 0 || clen > IN_CAP / 2) {
			respond(c, 400, "body too large\n", true);
			off = c->in_len;
			break;
		}
		if (avail < head_len + (size_t)clen)
			break; /* body not complete yet */
		int64_t arrival = now_us();
		bool close_after = false;
		v = header(start, hend + 2, "connection", &vlen);
		if (v && vlen == 5 && !strncasecmp(v, "close", 5))
			close_after = true;
		/* request line: METHOD SP PATH SP VERSION */
		const char *sp = memchr(start, ' ', head_len);
		const char *path = sp ? sp + 1 : start;
		const char *pe = memchr(path, ' ', (size_t)(hend - path));
		size_t plen = pe ? (size_t)(pe - path) : 0;
		if (plen >= 6 && !strncmp(path, "/_ctl/", 6)) {
			control(c, path, plen);
			if (close_after)
				c->closing = true;
		} else {
			record(arrival, start + head_len, (size_t)clen);
			g.served++;
			respond(c, 200, NULL, close_after);
		}
		off += head_len + (size_t)clen;
	}
	if (off) {
		memmove(c->in, c->in + off, c->in_len - off);
		c->in_len -= off;
	}
}

static void flush_out(struct conn *c)
{
	while (c->out_len) {
		ssize_t n = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				event_add(c->wev, NULL);
				return;
			}
			if (errno == EINTR)
				continue;
			conn_free(c);
			return;
		}
		memmove(c->out, c->out + n, c->out_len - (size_t)n);
		c->out_len -= (size_t)n;
	}
	event_del(c->wev);
	if (c->closing)
		conn_free(c);
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	flush_out(arg);
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	struct conn *c = arg;
	for (;;) {
		if (c->in_len == IN_CAP) {
			respond(c, 400, "request too large\n", true);
			break;
		}
		size_t room = IN_CAP - c->in_len;
		ssize_t n = recv(fd, c->in + c->in_len, room, 0);
		if (n > 0) {
			c->in_len += (size_t)n;
			if ((size_t)n < room)
				break; /* short read: the socket is drained */
			continue;
		}
		if (n == 0) {
			c->closing = true;
			if (!c->out_len) {
				conn_free(c);
				return;
			}
			break;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			break;
		conn_free(c);
		return;
	}
	process(c);
	if (c->closing)
		event_del(c->rev);
	flush_out(c);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
	(void)l;
	(void)sa;
	(void)salen;
	(void)arg;
	struct conn *c = calloc(1, sizeof(*c));
	if (!c || !(c->in = malloc(IN_CAP))) {
		free(c);
		close(fd);
		return;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	evutil_make_socket_nonblocking(fd);
	c->fd = fd;
	c->rev = event_new(base, fd, EV_READ | EV_PERSIST, on_read, c);
	c->wev = event_new(base, fd, EV_WRITE, on_write, c);
	if (!c->rev || !c->wev) {
		if (c->rev)
			event_free(c->rev);
		if (c->wev)
			event_free(c->wev);
		free(c->in);
		free(c);
		close(fd);
		return;
	}
	event_add(c->rev, NULL);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	(void)arg;
	event_base_loopbreak(base);
}

int main(int argc, char **argv)
{
	int port = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--port") && i + 1 < argc) {
			port = atoi(argv[++i]);
		} else {
			fprintf(stderr, "usage: bench-sink [--port N]\n");
			return 2;
		}
	}
	signal(SIGPIPE, SIG_IGN);
	base = event_base_new();
	if (!base)
		return 1;
	struct sockaddr_in sin = { 0 };
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sin.sin_port = htons((uint16_t)port);
	struct evconnlistener *l = evconnlistener_new_bind(base, on_accept, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
	                                                   1024, (struct sockaddr *)&sin, sizeof(sin));
	if (!l) {
		fprintf(stderr, "bench-sink: cannot bind 127.0.0.1:%d: %s\n", port, strerror(errno));
		return 1;
	}
	struct sockaddr_in bound;
	socklen_t blen = sizeof(bound);
	getsockname(evconnlistener_get_fd(l), (struct sockaddr *)&bound, &blen);
	printf("listening %d\n", ntohs(bound.sin_port));
	fflush(stdout);
	struct event *s1 = evsignal_new(base, SIGTERM, on_signal, NULL);
	struct event *s2 = evsignal_new(base, SIGINT, on_signal, NULL);
	event_add(s1, NULL);
	event_add(s2, NULL);
	event_base_dispatch(base);
	fprintf(stderr, "bench-sink: served %" PRIu64 " requests\n", g.served);
	event_free(s1);
	event_free(s2);
	evconnlistener_free(l);
	event_base_free(base);
	free(g.recs);
	return 0;
}
