/*
 * aws_credentials_parse.c - the pure half of the credential chain: what the sources answer
 * (container and instance-metadata JSON, STS XML), expiry times and refresh delays, and which
 * container endpoints may receive the authorization token. No I/O: unit-tested.
 */
#include "send/aws_credentials.h"

#include <ctype.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define CONTAINER_HOST "http://169.254.170.2"

/* ---- pure helpers ---- */

void obr_aws_free_secret(char **s)
{
	if (*s) {
		explicit_bzero(*s, strlen(*s));
		free(*s);
		*s = NULL;
	}
}

void obr_aws_creds_clear(struct obr_aws_creds *c)
{
	obr_aws_free_secret(&c->access_key);
	obr_aws_free_secret(&c->secret_key);
	obr_aws_free_secret(&c->token);
	obr_aws_free_secret(&c->userpwd);
	c->expires = 0;
}

int obr_aws_parse_time(const char *s, time_t *out)
{
	int Y, M, D, h, m, sec, n = 0;
	if (!s || sscanf(s, "%4d-%2d-%2d%*1[Tt ]%2d:%2d:%2d%n", &Y, &M, &D, &h, &m, &sec, &n) != 6 || n == 0)
		return -1;
	if (M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || sec > 60 || Y < 1970)
		return -1;
	const char *p = s + n;
	if (*p == '.') {
		p++;
		if (!isdigit((unsigned char)*p))
			return -1;
		while (isdigit((unsigned char)*p))
			p++;
	}
	long offset = 0;
	if (*p == 'Z' || *p == 'z') {
		p++;
	} else if (*p == '+' || *p == '-') {
		int oh, om = 0, k = 0;
		char sign = *p++;
		if (sscanf(p, "%2d:%2d%n", &oh, &om, &k) == 2 || sscanf(p, "%2d%2d%n", &oh, &om, &k) == 2) {
			p += k;
		} else {
			return -1;
		}
		offset = (oh * 3600L + om * 60L) * (sign == '+' ? 1 : -1);
	}
	if (*p != '\0')
		return -1;
	struct tm tm = { 0 };
	tm.tm_year = Y - 1900;
	tm.tm_mon = M - 1;
	tm.tm_mday = D;
	tm.tm_hour = h;
	tm.tm_min = m;
	tm.tm_sec = sec;
	time_t t = timegm(&tm);
	if (t == (time_t)-1)
		return -1;
	*out = t - offset;
	return 0;
}

long obr_aws_refresh_delay(time_t now, time_t expires)
{
	long lifetime = (long)(expires - now);
	if (lifetime <= 0)
		return -1;
	if (lifetime > 600)
		return lifetime - 300;
	return lifetime / 2 > 0 ? lifetime / 2 : 1;
}

time_t obr_aws_usable_until(time_t now, time_t expires)
{
	long lifetime = (long)(expires - now);
	long margin = lifetime >= 240 ? 60 : lifetime / 4;
	return expires - margin;
}

bool obr_aws_header_safe(const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		if (*p < 32 || *p == 127)
			return false;
	return true;
}

/* Takes ownership of key/secret/token (any may be NULL) into out, checking them. */
int obr_aws_fill_creds(struct obr_aws_creds *out, const char *key, const char *secret, const char *token,
                       const char *expiration, char *err, size_t errlen)
{
	memset(out, 0, sizeof(*out));
	if (!key || !*key || !secret || !*secret) {
		snprintf(err, errlen, "the answer has no %s", !key || !*key ? "AccessKeyId" : "SecretAccessKey");
		return -1;
	}
	if (!obr_aws_header_safe(key) || strchr(key, ':') || !obr_aws_header_safe(secret) || (token && !obr_aws_header_safe(token))) {
		snprintf(err, errlen, "the answer has credentials with characters that cannot be sent");
		return -1;
	}
	if (expiration && *expiration && obr_aws_parse_time(expiration, &out->expires)) {
		snprintf(err, errlen, "the answer has an unreadable Expiration \"%.40s\"", expiration);
		return -1;
	}
	out->access_key = strdup(key);
	out->secret_key = strdup(secret);
	out->token = token && *token ? strdup(token) : NULL;
	size_t n = strlen(key) + strlen(secret) + 2;
	out->userpwd = malloc(n);
	if (!out->access_key || !out->secret_key || (token && *token && !out->token) || !out->userpwd) {
		obr_aws_creds_clear(out);
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	snprintf(out->userpwd, n, "%s:%s", key, secret);
	return 0;
}

static const char *jstr(struct json_object *o, const char *k)
{
	struct json_object *v;
	if (!json_object_object_get_ex(o, k, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

int obr_aws_parse_creds_json(const char *body, size_t len, struct obr_aws_creds *out, char *err, size_t errlen)
{
	memset(out, 0, sizeof(*out));
	if (len > 1024 * 1024) {
		snprintf(err, errlen, "the answer is too large");
		return -1;
	}
	struct json_tokener *tok = json_tokener_new();
	struct json_object *o = tok ? json_tokener_parse_ex(tok, body, (int)len) : NULL;
	json_tokener_free(tok);
	if (!o || !json_object_is_type(o, json_type_object)) {
		json_object_put(o);
		snprintf(err, errlen, "the answer is not a JSON object");
		return -1;
	}
	int rc = -1;
	const char *code = jstr(o, "Code");
	if (code && strcmp(code, "Success") != 0) {
		const char *msg = jstr(o, "Message");
		snprintf(err, errlen, "the answer says %.60s%s%.200s", code, msg ? ": " : "", msg ? msg : "");
		goto out;
	}
	rc = obr_aws_fill_creds(out, jstr(o, "AccessKeyId"), jstr(o, "SecretAccessKey"), jstr(o, "Token"), jstr(o, "Expiration"),
	                err, errlen);
out:
	/* the parsed copy of the secret goes with the object; json-c keeps no other copy */
	json_object_put(o);
	return rc;
}

int obr_aws_parse_sts_creds(const char *body, size_t len, struct obr_aws_creds *out, char *err, size_t errlen)
{
	memset(out, 0, sizeof(*out));
	const char *c;
	size_t clen, end;
	if (obr_xml_element(body, len, "Error", &c, &clen, &end)) {
		char code[64], msg[300];
		if (!obr_xml_text(c, clen, "Code", code, sizeof(code)))
			snprintf(code, sizeof(code), "UnknownError");
		if (!obr_xml_text(c, clen, "Message", msg, sizeof(msg)))
			msg[0] = '\0';
		snprintf(err, errlen, "STS %s%s%s", code, msg[0] ? ": " : "", msg);
		return -1;
	}
	if (!obr_xml_element(body, len, "Credentials", &c, &clen, &end)) {
		snprintf(err, errlen, "the STS answer has no Credentials");
		return -1;
	}
	char key[256], exp[64];
	char *secret = malloc(1024), *token = malloc(8192);
	int rc = -1;
	if (!secret || !token) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	if (!obr_xml_text(c, clen, "AccessKeyId", key, sizeof(key)))
		key[0] = '\0';
	if (!obr_xml_text(c, clen, "SecretAccessKey", secret, 1024))
		secret[0] = '\0';
	if (!obr_xml_text(c, clen, "SessionToken", token, 8192))
		token[0] = '\0';
	if (!obr_xml_text(c, clen, "Expiration", exp, sizeof(exp)))
		exp[0] = '\0';
	rc = obr_aws_fill_creds(out, key, secret, token, exp, err, errlen);
out:
	if (secret) {
		explicit_bzero(secret, 1024);
		free(secret);
	}
	if (token) {
		explicit_bzero(token, 8192);
		free(token);
	}
	return rc;
}

/* http:// container endpoints must be local (loopback, or the ECS/EKS link-local hosts), as in
 * the SDKs: the Authorization token must not travel in clear text elsewhere. */
static bool container_host_allowed(const char *url)
{
	if (!strncasecmp(url, "https://", 8))
		return true;
	if (strncasecmp(url, "http://", 7) != 0)
		return false;
	const char *h = url + 7;
	size_t n = h[0] == '[' ? strcspn(h, "]") + 1 : strcspn(h, ":/?#");
	static const char *const allowed[] = { "localhost", "[::1]", "169.254.170.2", "169.254.170.23", "[fd00:ec2::23]" };
	for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++)
		if (strlen(allowed[i]) == n && !strncasecmp(h, allowed[i], n))
			return true;
	/* 127.0.0.0/8 */
	unsigned a, b, c, d;
	char rest;
	char host[64];
	if (n < sizeof(host)) {
		memcpy(host, h, n);
		host[n] = '\0';
		if (sscanf(host, "%u.%u.%u.%u%c", &a, &b, &c, &d, &rest) == 4 && a == 127 && b < 256 && c < 256 && d < 256)
			return true;
	}
	return false;
}

int obr_aws_container_url(const struct obr_aws_config *cfg, char *out, size_t cap, char *why, size_t whylen)
{
	int n;
	if (cfg->container_relative_uri) {
		const char *rel = cfg->container_relative_uri;
		n = snprintf(out, cap, "%s%s%s", CONTAINER_HOST, rel[0] == '/' ? "" : "/", rel);
	} else if (cfg->container_full_uri) {
		if (!container_host_allowed(cfg->container_full_uri)) {
			snprintf(why, whylen,
			         "AWS_CONTAINER_CREDENTIALS_FULL_URI must be https:// or an http:// URL on a loopback or "
			         "ECS/EKS host");
			return -1;
		}
		n = snprintf(out, cap, "%s", cfg->container_full_uri);
	} else {
		snprintf(why, whylen, "not configured");
		return -1;
	}
	if (n < 0 || (size_t)n >= cap) {
		snprintf(why, whylen, "the container credentials URL is too long");
		return -1;
	}
	if (!obr_aws_header_safe(out) || strchr(out, ' ')) {
		snprintf(why, whylen, "the container credentials URL has invalid characters");
		return -1;
	}
	return 0;
}

