/*
 * aws_config.c - where SQS/SNS requests go: the environment as the AWS SDKs read it, regions
 * from queue URLs and topic ARNs, endpoint URLs, and which hosts may receive signed requests.
 */
#include "send/aws_config.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- configuration ---- */

static const char *nonempty(const char *(*getenv_fn)(const char *), const char *name)
{
	const char *v = getenv_fn(name);
	return v && *v ? v : NULL;
}

static const char *first_set(const char *(*getenv_fn)(const char *), const char *const *names, const char **which)
{
	for (; *names; names++) {
		const char *v = nonempty(getenv_fn, *names);
		if (v) {
			*which = *names;
			return v;
		}
	}
	return NULL;
}

static bool is_http_url(const char *url)
{
	const char *rest;
	if (!strncasecmp(url, "http://", 7))
		rest = url + 7;
	else if (!strncasecmp(url, "https://", 8))
		rest = url + 8;
	else
		return false;
	if (!*rest || *rest == '/' || *rest == ':')
		return false;
	for (const unsigned char *p = (const unsigned char *)url; *p; p++)
		if (*p <= 32 || *p >= 127)
			return false;
	return true;
}

static const char *process_getenv(const char *name)
{
	return getenv(name);
}

void obr_aws_config_clear(struct obr_aws_config *cfg)
{
	char **fields[] = {
		&cfg->region, &cfg->local_region, &cfg->endpoint_sqs, &cfg->endpoint_sns, &cfg->endpoint_sts,
		&cfg->access_key, &cfg->secret_key, &cfg->session_token, &cfg->web_identity_token_file,
		&cfg->role_arn, &cfg->role_session_name, &cfg->container_relative_uri, &cfg->container_full_uri,
		&cfg->container_token, &cfg->container_token_file, &cfg->imds_endpoint,
	};
	for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
		if (*fields[i]) {
			/* secrets do not outlive their use */
			explicit_bzero(*fields[i], strlen(*fields[i]));
			free(*fields[i]);
		}
		*fields[i] = NULL;
	}
	cfg->imds_disabled = false;
}

/* Copies value (may be NULL) into *dst; a URL must be http(s). Returns 0 or -1 with err. */
static int take(char **dst, const char *value, const char *url_var, char *err, size_t errlen)
{
	if (!value)
		return 0;
	if (url_var && !is_http_url(value)) {
		snprintf(err, errlen, "%s must be an http:// or https:// URL", url_var);
		return -1;
	}
	if (!(*dst = strdup(value))) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	return 0;
}

int obr_aws_config_load(struct obr_aws_config *cfg, const char *(*getenv_fn)(const char *), char *err, size_t errlen)
{
	memset(cfg, 0, sizeof(*cfg));
	if (!getenv_fn)
		getenv_fn = process_getenv;

	static const char *const region_vars[] = { "AWS_REGION", "AWS_DEFAULT_REGION", NULL };
	static const char *const sqs_vars[] = { "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL", "LOCAL_ENDPOINT", NULL };
	static const char *const sns_vars[] = { "AWS_ENDPOINT_URL_SNS", "AWS_ENDPOINT_URL", "LOCAL_ENDPOINT", NULL };
	static const char *const sts_vars[] = { "AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL", NULL };
	const char *which = NULL, *sqs_var = NULL, *sns_var = NULL, *sts_var = NULL;
	const char *sqs = first_set(getenv_fn, sqs_vars, &sqs_var);
	const char *sns = first_set(getenv_fn, sns_vars, &sns_var);
	const char *sts = first_set(getenv_fn, sts_vars, &sts_var);
	const char *imds = nonempty(getenv_fn, "AWS_EC2_METADATA_SERVICE_ENDPOINT");
	if (!imds) {
		const char *mode = nonempty(getenv_fn, "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE");
		imds = mode && !strcasecmp(mode, "IPv6") ? "http://[fd00:ec2::254]" : "http://169.254.169.254";
	}
	if (take(&cfg->region, first_set(getenv_fn, region_vars, &which), NULL, err, errlen) ||
	    take(&cfg->local_region, nonempty(getenv_fn, "LOCAL_REGION"), NULL, err, errlen) ||
	    take(&cfg->endpoint_sqs, sqs, sqs_var, err, errlen) ||
	    take(&cfg->endpoint_sns, sns, sns_var, err, errlen) ||
	    take(&cfg->endpoint_sts, sts, sts_var, err, errlen) ||
	    take(&cfg->access_key, nonempty(getenv_fn, "AWS_ACCESS_KEY_ID"), NULL, err, errlen) ||
	    take(&cfg->secret_key, nonempty(getenv_fn, "AWS_SECRET_ACCESS_KEY"), NULL, err, errlen) ||
	    take(&cfg->session_token, nonempty(getenv_fn, "AWS_SESSION_TOKEN"), NULL, err, errlen) ||
	    take(&cfg->web_identity_token_file, nonempty(getenv_fn, "AWS_WEB_IDENTITY_TOKEN_FILE"), NULL, err, errlen) ||
	    take(&cfg->role_arn, nonempty(getenv_fn, "AWS_ROLE_ARN"), NULL, err, errlen) ||
	    take(&cfg->role_session_name, nonempty(getenv_fn, "AWS_ROLE_SESSION_NAME"), NULL, err, errlen) ||
	    take(&cfg->container_relative_uri, nonempty(getenv_fn, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"), NULL, err,
	         errlen) ||
	    take(&cfg->container_full_uri, nonempty(getenv_fn, "AWS_CONTAINER_CREDENTIALS_FULL_URI"), NULL, err, errlen) ||
	    take(&cfg->container_token, nonempty(getenv_fn, "AWS_CONTAINER_AUTHORIZATION_TOKEN"), NULL, err, errlen) ||
	    take(&cfg->container_token_file, nonempty(getenv_fn, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"), NULL, err,
	         errlen) ||
	    take(&cfg->imds_endpoint, imds, "AWS_EC2_METADATA_SERVICE_ENDPOINT", err, errlen))
		goto fail;
	/* the metadata base URL without a trailing slash: paths are appended */
	size_t n = strlen(cfg->imds_endpoint);
	while (n > 0 && cfg->imds_endpoint[n - 1] == '/')
		cfg->imds_endpoint[--n] = '\0';
	const char *disabled = nonempty(getenv_fn, "AWS_EC2_METADATA_DISABLED");
	cfg->imds_disabled = disabled && !strcasecmp(disabled, "true");
	return 0;
fail:
	obr_aws_config_clear(cfg);
	return -1;
}

/* ---- regions and endpoints ---- */

/* Host of an http(s) URL (without port), lower case. */
static bool url_host(const char *url, char *host, size_t cap, const char **after_host)
{
	const char *p = strstr(url, "://");
	if (!p)
		return false;
	p += 3;
	size_t n;
	if (*p == '[') {
		n = strcspn(p, "]");
		if (p[n] == ']')
			n++;
	} else {
		n = strcspn(p, ":/?#");
	}
	if (n == 0 || n >= cap)
		return false;
	for (size_t i = 0; i < n; i++)
		host[i] = (char)tolower((unsigned char)p[i]);
	host[n] = '\0';
	if (after_host)
		*after_host = p + n;
	return true;
}

/* us-east-1, ap-southeast-2, us-gov-west-1, cn-north-1, eu-central-2 ... */
static bool looks_like_region(const char *s, size_t n)
{
	if (n < 4 || n >= OBR_AWS_REGION_MAX)
		return false;
	int dashes = 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (c == '-')
			dashes++;
		else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')))
			return false;
	}
	return dashes >= 2 && s[n - 1] >= '0' && s[n - 1] <= '9' && s[0] != '-';
}

static bool copy_region(const char *s, size_t n, char *out, size_t cap)
{
	if (!looks_like_region(s, n) || n >= cap)
		return false;
	memcpy(out, s, n);
	out[n] = '\0';
	return true;
}

bool obr_aws_region_from_queue_url(const char *url, char *out, size_t cap)
{
	char host[256];
	if (!url_host(url, host, sizeof(host), NULL))
		return false;
	if (!strcmp(host, "queue.amazonaws.com"))
		return copy_region("us-east-1", 9, out, cap);
	const char *q = strstr(host, ".queue.amazonaws.com");
	if (q && q[strlen(".queue.amazonaws.com")] == '\0') {
		const char *start = q;
		while (start > host && start[-1] != '.')
			start--;
		return copy_region(start, (size_t)(q - start), out, cap);
	}
	/* a label "sqs" followed by a region label: sqs.<region>.amazonaws.com, VPC endpoints
	 * (vpce-x.sqs.<region>.vpce.amazonaws.com) and emulators (sqs.<region>.localhost) */
	for (const char *p = host; *p;) {
		size_t n = strcspn(p, ".");
		if (n == 3 && !strncmp(p, "sqs", 3) && p[n] == '.') {
			const char *r = p + n + 1;
			size_t rn = strcspn(r, ".");
			if (copy_region(r, rn, out, cap))
				return true;
		}
		p += n;
		if (*p == '.')
			p++;
	}
	return false;
}

bool obr_aws_region_from_topic_arn(const char *arn, char *out, size_t cap)
{
	/* arn:partition:sns:region:account:name */
	const char *f[6];
	size_t len[6];
	const char *p = arn;
	for (int i = 0; i < 6; i++) {
		f[i] = p;
		len[i] = i < 5 ? strcspn(p, ":") : strlen(p);
		if (i < 5 && p[len[i]] != ':')
			return false;
		p += len[i] + 1;
	}
	if (len[0] != 3 || strncmp(f[0], "arn", 3) || len[2] != 3 || strncmp(f[2], "sns", 3))
		return false;
	return copy_region(f[3], len[3], out, cap);
}

bool obr_aws_target_region(const struct obr_aws_config *cfg, enum obr_dest_kind kind, const char *target, char *out,
                           size_t cap)
{
	if (cfg->region && strlen(cfg->region) < cap) {
		snprintf(out, cap, "%s", cfg->region);
		return true;
	}
	bool found = kind == OBR_DEST_SNS ? obr_aws_region_from_topic_arn(target, out, cap)
	                                  : obr_aws_region_from_queue_url(target, out, cap);
	if (found)
		return true;
	if (cfg->local_region && strlen(cfg->local_region) < cap) {
		snprintf(out, cap, "%s", cfg->local_region);
		return true;
	}
	return false;
}

static bool ends_with_fifo(const char *s, size_t n)
{
	return n >= 5 && !strncmp(s + n - 5, ".fifo", 5);
}

bool obr_aws_target_is_fifo(enum obr_dest_kind kind, const char *target)
{
	if (kind == OBR_DEST_SNS) {
		const char *name = strrchr(target, ':');
		name = name ? name + 1 : target;
		return ends_with_fifo(name, strlen(name));
	}
	size_t n = strcspn(target, "?#");
	while (n > 0 && target[n - 1] == '/')
		n--;
	return ends_with_fifo(target, n);
}

static const char *aws_domain(const char *region)
{
	return !strncmp(region, "cn-", 3) ? "amazonaws.com.cn" : "amazonaws.com";
}

static int override_url(const char *url, char *out, size_t cap)
{
	const char *p = strstr(url, "://");
	bool has_path = p && strchr(p + 3, '/');
	int n = snprintf(out, cap, "%s%s", url, has_path ? "" : "/");
	return n < 0 || (size_t)n >= cap ? -1 : 0;
}

int obr_aws_request_url(const struct obr_aws_config *cfg, enum obr_dest_kind kind, const char *target,
                        const char *region, char *out, size_t cap)
{
	const char *override = kind == OBR_DEST_SNS ? cfg->endpoint_sns : cfg->endpoint_sqs;
	if (override)
		return override_url(override, out, cap);
	int n;
	if (kind == OBR_DEST_SNS) {
		n = snprintf(out, cap, "https://sns.%s.%s/", region, aws_domain(region));
	} else {
		char host[256];
		const char *after;
		if (!url_host(target, host, sizeof(host), &after))
			return -1;
		size_t hl = strlen(host);
		static const char legacy[] = "queue.amazonaws.com";
		size_t ll = sizeof(legacy) - 1;
		if (hl >= ll && !strcmp(host + hl - ll, legacy) && (hl == ll || host[hl - ll - 1] == '.')) {
			n = snprintf(out, cap, "https://sqs.%s.amazonaws.com/", region);
		} else {
			/* scheme://host[:port]/ of the queue URL, as written */
			size_t prefix = (size_t)(after - target);
			if (*after == ':')
				prefix += strcspn(after, "/?#");
			n = snprintf(out, cap, "%.*s/", (int)prefix, target);
		}
	}
	return n < 0 || (size_t)n >= cap ? -1 : 0;
}

int obr_aws_sts_url(const struct obr_aws_config *cfg, char *out, size_t cap)
{
	if (cfg->endpoint_sts)
		return override_url(cfg->endpoint_sts, out, cap);
	const char *region = cfg->region ? cfg->region : cfg->local_region;
	int n = region ? snprintf(out, cap, "https://sts.%s.%s/", region, aws_domain(region))
	               : snprintf(out, cap, "https://sts.amazonaws.com/");
	return n < 0 || (size_t)n >= cap ? -1 : 0;
}


static bool ends_with_domain(const char *host, const char *domain)
{
	size_t hl = strlen(host), dl = strlen(domain);
	return hl > dl + 1 && !strcmp(host + hl - dl, domain) && host[hl - dl - 1] == '.';
}

bool obr_aws_trusted_url(const char *url)
{
	if (strncasecmp(url, "https://", 8) != 0)
		return false;
	char host[256];
	const char *after;
	if (!url_host(url, host, sizeof(host), &after) || (*after && !strchr(":/", *after)))
		return false;
	/* a plain DNS name: no userinfo, no address literal, nothing curl would read otherwise */
	for (const char *p = host; *p; p++)
		if (!(isalnum((unsigned char)*p) || *p == '.' || *p == '-'))
			return false;
	return ends_with_domain(host, "amazonaws.com") || ends_with_domain(host, "amazonaws.com.cn");
}
