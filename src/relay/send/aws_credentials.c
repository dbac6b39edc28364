/*
 * aws_credentials.c - the AWS credential chain: environment, web identity (STS), container
 * endpoint, EC2 instance metadata (IMDSv2); asynchronous fetches and refresh before expiry.
 * (What the sources answer is read by aws_credentials_parse.c.)
 */
#include "send/aws_credentials.h"

#include "util/log.h"

#include <ctype.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

enum source { SRC_ENV, SRC_WEB_IDENTITY, SRC_CONTAINER, SRC_IMDS, SRC_COUNT };

static const char *const source_names[SRC_COUNT] = {
	"environment", "web identity", "container", "instance metadata",
};

#define NO_CREDENTIALS \
	"no AWS credentials found (tried: environment, web identity, container, instance metadata)"

#define RETRY_AFTER_FAILURE_MS 1000      /* a failed chain walk is repeated after this pause */
#define STS_TIMEOUT_MS 5000
#define CONTAINER_TIMEOUT_MS 2000
#define IMDS_TIMEOUT_MS 1000
#define IMDS_TOKEN_TTL "21600"
#define TOKEN_FILE_MAX (64 * 1024)

struct fetch {
	struct obr_aws_credentials *owner;
	enum source src;
	int step;              /* IMDS: 0 token, 1 role name, 2 role credentials */
	bool refresh;          /* renewing the current credentials, not walking the chain */
	bool aborted;          /* forgotten by obr_aws_credentials_abort: free on completion */
	char *imds_token;
	struct fetch *prev, *next;
};

struct obr_aws_credentials {
	struct event_base *base;
	struct obr_http *http;
	const struct obr_aws_config *cfg;
	void (*on_change)(void *arg);
	void *arg;

	struct obr_aws_creds cur;
	bool have;
	enum source cur_src;
	time_t usable_until;         /* 0: no expiry */

	struct fetch *active;        /* the fetch in progress, if any */
	struct fetch *fetches_list;  /* every fetch alive, aborted ones included */
	unsigned long fetches;

	bool failed;
	char error[512];
	int64_t retry_at_ms;         /* monotonic: when a failed walk may run again */
	char reasons[400];           /* why configured sources failed, for the error message */
	char last_logged[512];
	int64_t last_logged_ms;

	struct event *refresh_ev;
	struct event *notify_ev;
};

/* ---- the chain ---- */

static int64_t monotonic_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void notify(struct obr_aws_credentials *c)
{
	event_active(c->notify_ev, EV_TIMEOUT, 0);
}

static void on_notify(evutil_socket_t fd, short what, void *arg)
{
	struct obr_aws_credentials *c = arg;
	c->on_change(c->arg);
}

static void add_reason(struct obr_aws_credentials *c, enum source src, const char *why)
{
	size_t n = strlen(c->reasons);
	snprintf(c->reasons + n, sizeof(c->reasons) - n, "; %s: %s", source_names[src], why);
}

static void fetch_free(struct obr_aws_credentials *c, struct fetch *f)
{
	if (f->prev)
		f->prev->next = f->next;
	else
		c->fetches_list = f->next;
	if (f->next)
		f->next->prev = f->prev;
	if (c->active == f)
		c->active = NULL;
	obr_aws_free_secret(&f->imds_token);
	free(f);
}

static void schedule_refresh(struct obr_aws_credentials *c, long seconds)
{
	struct timeval tv = { seconds, 0 };
	evtimer_add(c->refresh_ev, &tv);
}

static void format_time(time_t t, char *out, size_t cap)
{
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Takes creds (moved) as the current credentials. Returns -1 when they are already expired. */
static int install(struct obr_aws_credentials *c, enum source src, struct obr_aws_creds *creds, char *why,
                   size_t whylen)
{
	time_t now = time(NULL);
	long delay = 0;
	if (creds->expires) {
		delay = obr_aws_refresh_delay(now, creds->expires);
		if (delay < 0) {
			char when[32];
			format_time(creds->expires, when, sizeof(when));
			snprintf(why, whylen, "the credentials expired already (Expiration %s)", when);
			obr_aws_creds_clear(creds);
			return -1;
		}
	}
	obr_aws_creds_clear(&c->cur);
	c->cur = *creds;
	memset(creds, 0, sizeof(*creds));
	c->have = true;
	c->cur_src = src;
	c->failed = false;
	c->last_logged[0] = '\0';
	c->last_logged_ms = 0;
	c->fetches++;
	evtimer_del(c->refresh_ev);
	if (c->cur.expires) {
		c->usable_until = obr_aws_usable_until(now, c->cur.expires);
		schedule_refresh(c, delay);
		char when[32];
		format_time(c->cur.expires, when, sizeof(when));
		obr_log_info("AWS credentials from %s, temporary (expire %s, refresh in %ld s)", source_names[src], when, delay);
	} else {
		c->usable_until = 0;
		obr_log_info("AWS credentials from %s%s", source_names[src], c->cur.token ? " (with a session token)" : "");
	}
	return 0;
}

static int start_source(struct obr_aws_credentials *c, enum source src, bool refresh, char *why, size_t whylen);

static bool configured(const struct obr_aws_config *cfg, enum source src)
{
	switch (src) {
	case SRC_ENV: return cfg->access_key || cfg->secret_key;
	case SRC_WEB_IDENTITY: return cfg->web_identity_token_file || cfg->role_arn;
	case SRC_CONTAINER: return cfg->container_relative_uri || cfg->container_full_uri;
	case SRC_IMDS: return !cfg->imds_disabled;
	case SRC_COUNT: break;
	}
	return false;
}

/* Walks the chain from src on; ends with credentials installed, a fetch in flight, or failed. */
static void walk(struct obr_aws_credentials *c, enum source from)
{
	const struct obr_aws_config *cfg = c->cfg;
	char why[300];
	for (int s = from; s < SRC_COUNT; s++) {
		enum source src = (enum source)s;
		if (!configured(cfg, src))
			continue;
		if (src == SRC_ENV) {
			if (!cfg->access_key || !cfg->secret_key) {
				add_reason(c, src, cfg->access_key ? "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not"
				                                   : "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not");
				continue;
			}
			struct obr_aws_creds creds;
			if (obr_aws_fill_creds(&creds, cfg->access_key, cfg->secret_key, cfg->session_token, NULL, why, sizeof(why)) ||
			    install(c, src, &creds, why, sizeof(why))) {
				add_reason(c, src, why);
				continue;
			}
			return;
		}
		if (start_source(c, src, false, why, sizeof(why)) == 0)
			return;
		add_reason(c, src, why);
	}
	c->failed = true;
	snprintf(c->error, sizeof(c->error), "%s%s", NO_CREDENTIALS, c->reasons);
	c->retry_at_ms = monotonic_ms() + RETRY_AFTER_FAILURE_MS;
	/* once per change of reason, and at least once a minute while it lasts, not per walk */
	int64_t now = monotonic_ms();
	if ((strcmp(c->last_logged, c->error) != 0 && now - c->last_logged_ms >= 5000) ||
	    now - c->last_logged_ms >= 60000) {
		obr_log_warn("%s", c->error);
		snprintf(c->last_logged, sizeof(c->last_logged), "%s", c->error);
		c->last_logged_ms = now;
	}
}

static void refresh_failed(struct obr_aws_credentials *c, enum source src, const char *why)
{
	time_t now = time(NULL);
	if (c->have && c->cur.expires && now < c->usable_until) {
		long left = (long)(c->usable_until - now);
		long retry = left / 2 < 30 ? (left / 2 > 0 ? left / 2 : 1) : 30;
		obr_log_warn("refreshing AWS credentials from %s failed, current ones kept for %ld s more, retry in %ld s: %s",
		         source_names[src], left, retry, why);
		schedule_refresh(c, retry);
	} else {
		obr_log_warn("refreshing AWS credentials from %s failed and they expired: %s", source_names[src], why);
		c->have = false;
		obr_aws_creds_clear(&c->cur);
	}
}

/* The end of a fetch: success installs, failure goes on along the chain (or retries a refresh). */
static void fetch_finished(struct obr_aws_credentials *c, struct fetch *f, struct obr_aws_creds *creds,
                           const char *failure)
{
	enum source src = f->src;
	bool refresh = f->refresh;
	char why[300];
	fetch_free(c, f);
	if (!failure) {
		if (install(c, src, creds, why, sizeof(why)) == 0) {
			notify(c);
			return;
		}
		failure = why;
	}
	if (refresh) {
		refresh_failed(c, src, failure);
	} else {
		add_reason(c, src, failure);
		walk(c, (enum source)(src + 1));
		if (c->active)
			return; /* the next source is being asked */
	}
	notify(c);
}

static char *read_small_file(const char *path, const char *what, char *why, size_t whylen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		snprintf(why, whylen, "cannot open %s %.200s: %s", what, path, strerror(errno));
		return NULL;
	}
	char *buf = malloc(TOKEN_FILE_MAX + 1);
	size_t len = 0;
	if (!buf) {
		close(fd);
		snprintf(why, whylen, "out of memory");
		return NULL;
	}
	for (;;) {
		ssize_t n = read(fd, buf + len, TOKEN_FILE_MAX + 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			snprintf(why, whylen, "cannot read %s %.200s: %s", what, path, strerror(errno));
			goto fail;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len > TOKEN_FILE_MAX) {
			snprintf(why, whylen, "%s %.200s is larger than %d bytes", what, path, TOKEN_FILE_MAX);
			goto fail;
		}
	}
	close(fd);
	while (len > 0 && isspace((unsigned char)buf[len - 1]))
		len--;
	buf[len] = '\0';
	if (len == 0 || !obr_aws_header_safe(buf)) {
		snprintf(why, whylen, "%s %.200s is empty or has control characters", what, path);
		explicit_bzero(buf, len);
		free(buf);
		return NULL;
	}
	return buf;
fail:
	close(fd);
	explicit_bzero(buf, len);
	free(buf);
	return NULL;
}

static void on_fetch_done(void *arg, const struct obr_http_result *res);

static int fetch_request(struct fetch *f, const char *method, const char *url, const struct obr_header *headers,
                         int nheaders, const char *body, size_t body_len, long timeout_ms, char *why, size_t whylen)
{
	struct obr_http_request req = {
		.method = method,
		.url = url,
		.headers = headers,
		.nheaders = nheaders,
		.body = body,
		.body_len = body_len,
		.keep_response = OBR_AWS_RESPONSE_KEEP,
		.timeout_ms = timeout_ms,
	};
	if (obr_http_start(f->owner->http, &req, on_fetch_done, f)) {
		snprintf(why, whylen, "could not start the request");
		return -1;
	}
	return 0;
}

static int start_web_identity(struct fetch *f, char *why, size_t whylen)
{
	const struct obr_aws_config *cfg = f->owner->cfg;
	if (!cfg->web_identity_token_file || !cfg->role_arn) {
		snprintf(why, whylen, "%s is set but %s is not",
		         cfg->role_arn ? "AWS_ROLE_ARN" : "AWS_WEB_IDENTITY_TOKEN_FILE",
		         cfg->role_arn ? "AWS_WEB_IDENTITY_TOKEN_FILE" : "AWS_ROLE_ARN");
		return -1;
	}
	char url[512];
	if (obr_aws_sts_url(cfg, url, sizeof(url))) {
		snprintf(why, whylen, "the STS endpoint URL is too long");
		return -1;
	}
	char *token = read_small_file(cfg->web_identity_token_file, "AWS_WEB_IDENTITY_TOKEN_FILE", why, whylen);
	if (!token)
		return -1;
	char session[64];
	if (cfg->role_session_name)
		snprintf(session, sizeof(session), "%s", cfg->role_session_name);
	else
		snprintf(session, sizeof(session), "outbox-relay-%ld", (long)time(NULL));
	struct obr_strbuf b;
	obr_strbuf_init(&b, 4 * TOKEN_FILE_MAX);
	obr_strbuf_puts(&b, "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=");
	obr_form_encode(&b, cfg->role_arn, strlen(cfg->role_arn));
	obr_strbuf_puts(&b, "&RoleSessionName=");
	obr_form_encode(&b, session, strlen(session));
	obr_strbuf_puts(&b, "&WebIdentityToken=");
	obr_form_encode(&b, token, strlen(token));
	explicit_bzero(token, strlen(token));
	free(token);
	int rc = -1;
	if (b.failed) {
		snprintf(why, whylen, "out of memory");
	} else {
		static char ct[] = "Content-Type", form[] = "application/x-www-form-urlencoded; charset=utf-8",
		            accept[] = "Accept", xml[] = "text/xml";
		const struct obr_header headers[] = { { ct, form }, { accept, xml } };
		rc = fetch_request(f, "POST", url, headers, 2, b.data, b.len, STS_TIMEOUT_MS, why, whylen);
	}
	if (b.data)
		explicit_bzero(b.data, b.len);
	obr_strbuf_free(&b);
	return rc;
}

static int start_container(struct fetch *f, char *why, size_t whylen)
{
	const struct obr_aws_config *cfg = f->owner->cfg;
	char url[2048];
	if (obr_aws_container_url(cfg, url, sizeof(url), why, whylen))
		return -1;
	char *token = NULL;
	if (cfg->container_token_file) {
		token = read_small_file(cfg->container_token_file, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", why, whylen);
		if (!token)
			return -1;
	} else if (cfg->container_token) {
		if (!obr_aws_header_safe(cfg->container_token)) {
			snprintf(why, whylen, "AWS_CONTAINER_AUTHORIZATION_TOKEN has control characters");
			return -1;
		}
		token = strdup(cfg->container_token);
		if (!token) {
			snprintf(why, whylen, "out of memory");
			return -1;
		}
	}
	static char accept[] = "Accept", json[] = "application/json", authorization[] = "Authorization";
	struct obr_header headers[2] = { { accept, json }, { authorization, token } };
	int rc = fetch_request(f, "GET", url, headers, token ? 2 : 1, NULL, 0, CONTAINER_TIMEOUT_MS, why, whylen);
	obr_aws_free_secret(&token);
	return rc;
}

static int imds_step(struct fetch *f, const char *role, char *why, size_t whylen)
{
	const struct obr_aws_config *cfg = f->owner->cfg;
	char url[1024];
	if (f->step == 0) {
		static char ttl_hdr[] = "X-aws-ec2-metadata-token-ttl-seconds", ttl[] = IMDS_TOKEN_TTL;
		const struct obr_header headers[] = { { ttl_hdr, ttl } };
		snprintf(url, sizeof(url), "%s/latest/api/token", cfg->imds_endpoint);
		return fetch_request(f, "PUT", url, headers, 1, "", 0, IMDS_TIMEOUT_MS, why, whylen);
	}
	snprintf(url, sizeof(url), "%s/latest/meta-data/iam/security-credentials/%s", cfg->imds_endpoint,
	         f->step == 2 ? role : "");
	static char token_hdr[] = "X-aws-ec2-metadata-token";
	struct obr_header headers[] = { { token_hdr, f->imds_token } };
	return fetch_request(f, "GET", url, headers, 1, NULL, 0, IMDS_TIMEOUT_MS, why, whylen);
}

static int start_source(struct obr_aws_credentials *c, enum source src, bool refresh, char *why, size_t whylen)
{
	struct fetch *f = calloc(1, sizeof(*f));
	if (!f) {
		snprintf(why, whylen, "out of memory");
		return -1;
	}
	f->owner = c;
	f->src = src;
	f->refresh = refresh;
	f->next = c->fetches_list;
	if (f->next)
		f->next->prev = f;
	c->fetches_list = f;
	int rc;
	switch (src) {
	case SRC_WEB_IDENTITY: rc = start_web_identity(f, why, whylen); break;
	case SRC_CONTAINER: rc = start_container(f, why, whylen); break;
	case SRC_IMDS: rc = imds_step(f, NULL, why, whylen); break;
	default:
		snprintf(why, whylen, "cannot be fetched");
		rc = -1;
		break;
	}
	if (rc) {
		fetch_free(c, f);
		return -1;
	}
	c->active = f;
	return 0;
}

/* Why an answer is not usable, without its body (it could hold anything). */
static void http_failure(const struct obr_http_result *res, char *why, size_t whylen)
{
	if (res->status == 0)
		snprintf(why, whylen, "request failed: %s", res->error);
	else
		snprintf(why, whylen, "HTTP %ld", res->status);
}

static bool valid_role_name(const char *s)
{
	if (!*s || strlen(s) > 128)
		return false;
	for (; *s; s++)
		if (!(isalnum((unsigned char)*s) || strchr("+=,.@_-", *s)))
			return false;
	return true;
}

static void on_fetch_done(void *arg, const struct obr_http_result *res)
{
	struct fetch *f = arg;
	struct obr_aws_credentials *c = f->owner;
	if (f->aborted) {
		fetch_free(c, f);
		return;
	}
	struct obr_aws_creds creds = { 0 };
	char why[300];
	const char *failure = why;

	if (f->src == SRC_WEB_IDENTITY) {
		if (res->ok) {
			if (obr_aws_parse_sts_creds(res->body, res->body_len, &creds, why, sizeof(why)) == 0)
				failure = NULL;
		} else {
			/* STS errors come as XML with a code worth showing */
			char detail[250];
			if (res->status >= 400 &&
			    obr_aws_parse_sts_creds(res->body, res->body_len, &creds, detail, sizeof(detail)) != 0 &&
			    !strncmp(detail, "STS ", 4))
				snprintf(why, sizeof(why), "HTTP %ld, %s", res->status, detail);
			else
				http_failure(res, why, sizeof(why));
			obr_aws_creds_clear(&creds);
		}
	} else if (!res->ok) {
		http_failure(res, why, sizeof(why));
		if (f->src == SRC_IMDS && f->step == 1 && res->status == 404)
			snprintf(why, sizeof(why), "no IAM role is attached to the instance (HTTP 404)");
	} else if (f->src == SRC_CONTAINER || (f->src == SRC_IMDS && f->step == 2)) {
		if (obr_aws_parse_creds_json(res->body, res->body_len, &creds, why, sizeof(why)) == 0)
			failure = NULL;
	} else if (f->step == 0) {
		/* IMDSv2 session token */
		size_t n = res->body_len;
		while (n > 0 && isspace((unsigned char)res->body[n - 1]))
			n--;
		f->imds_token = n ? strndup(res->body, n) : NULL;
		if (!f->imds_token || !obr_aws_header_safe(f->imds_token)) {
			snprintf(why, sizeof(why), "the metadata token answer is empty or unusable");
		} else {
			f->step = 1;
			if (imds_step(f, NULL, why, sizeof(why)) == 0)
				return;
		}
	} else {
		/* the role name: the first line */
		char role[160];
		size_t n = strcspn(res->body, "\r\n");
		if (n >= sizeof(role))
			n = sizeof(role) - 1;
		memcpy(role, res->body, n);
		role[n] = '\0';
		if (!valid_role_name(role)) {
			snprintf(why, sizeof(why), "no usable IAM role name in the instance metadata");
		} else {
			f->step = 2;
			if (imds_step(f, role, why, sizeof(why)) == 0)
				return;
		}
	}
	fetch_finished(c, f, &creds, failure);
	obr_aws_creds_clear(&creds);
}

static void on_refresh(evutil_socket_t fd, short what, void *arg)
{
	struct obr_aws_credentials *c = arg;
	if (!c->have || !c->cur.expires || c->active)
		return;
	char why[300];
	if (start_source(c, c->cur_src, true, why, sizeof(why)))
		refresh_failed(c, c->cur_src, why);
}

/* ---- public ---- */

struct obr_aws_credentials *obr_aws_credentials_new(struct event_base *base, struct obr_http *http,
                                                    const struct obr_aws_config *cfg, void (*on_change)(void *arg),
                                                    void *arg)
{
	struct obr_aws_credentials *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->base = base;
	c->http = http;
	c->cfg = cfg;
	c->on_change = on_change;
	c->arg = arg;
	c->refresh_ev = evtimer_new(base, on_refresh, c);
	c->notify_ev = event_new(base, -1, 0, on_notify, c);
	if (!c->refresh_ev || !c->notify_ev) {
		obr_aws_credentials_free(c);
		return NULL;
	}
	return c;
}

enum obr_aws_cred_state obr_aws_credentials_get(struct obr_aws_credentials *c, const struct obr_aws_creds **out,
                                                char *err, size_t errlen)
{
	time_t now = time(NULL);
	if (c->have && (!c->cur.expires || now < c->usable_until)) {
		*out = &c->cur;
		return OBR_CREDS_READY;
	}
	if (c->active)
		return OBR_CREDS_PENDING; /* a walk, or the refresh of credentials that just ran out */
	if (c->have) {
		c->have = false;
		obr_aws_creds_clear(&c->cur);
		evtimer_del(c->refresh_ev);
	}
	if (c->failed) {
		if (monotonic_ms() < c->retry_at_ms) {
			snprintf(err, errlen, "%s", c->error);
			return OBR_CREDS_FAILED;
		}
	}
	c->failed = false;
	c->reasons[0] = '\0';
	walk(c, SRC_ENV);
	if (c->have) {
		*out = &c->cur;
		return OBR_CREDS_READY;
	}
	if (c->active)
		return OBR_CREDS_PENDING;
	snprintf(err, errlen, "%s", c->error);
	return OBR_CREDS_FAILED;
}

void obr_aws_credentials_invalidate(struct obr_aws_credentials *c)
{
	if (!c->have || !c->cur.expires)
		return; /* long-term keys come back unchanged: nothing to fetch */
	obr_log_warn("AWS rejected the credentials from %s: fetching new ones", source_names[c->cur_src]);
	c->have = false;
	obr_aws_creds_clear(&c->cur);
	evtimer_del(c->refresh_ev);
}

unsigned long obr_aws_credentials_fetches(const struct obr_aws_credentials *c)
{
	return c->fetches;
}

void obr_aws_credentials_abort(struct obr_aws_credentials *c)
{
	if (c->active) {
		c->active->aborted = true;
		c->active = NULL;
	}
	evtimer_del(c->refresh_ev);
}

void obr_aws_credentials_free(struct obr_aws_credentials *c)
{
	if (!c)
		return;
	obr_http_cancel(c->http, on_fetch_done); /* requests still on the wire point at the fetches */
	while (c->fetches_list)
		fetch_free(c, c->fetches_list);
	obr_aws_creds_clear(&c->cur);
	if (c->refresh_ev)
		event_free(c->refresh_ev);
	if (c->notify_ev)
		event_free(c->notify_ev);
	free(c);
}
