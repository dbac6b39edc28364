/*
 * pgaddr.c - the hosts of a libpq connection string (see pgaddr.h).
 */
#include "db/pgaddr.h"

#include <arpa/inet.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static bool is_ip_literal(const char *s)
{
	unsigned char buf[sizeof(struct in6_addr)];
	return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

/* Splits a comma-separated libpq list (no escaping exists for it) into *out; returns the
 * number of entries (an empty string is one empty entry, as in libpq), or -1. */
static int split_list(const char *s, char ***out)
{
	int n = 1;
	for (const char *c = s; *c; c++)
		n += *c == ',';
	char **v = calloc((size_t)n, sizeof(char *));
	if (!v)
		return -1;
	const char *start = s;
	for (int i = 0; i < n; i++) {
		const char *end = strchr(start, ',');
		size_t len = end ? (size_t)(end - start) : strlen(start);
		v[i] = strndup(start, len);
		if (!v[i]) {
			for (int j = 0; j < i; j++)
				free(v[j]);
			free(v);
			return -1;
		}
		start = end ? end + 1 : start + len;
	}
	*out = v;
	return n;
}

static void free_list(char **v, int n)
{
	for (int i = 0; v && i < n; i++)
		free(v[i]);
	free(v);
}

static int add_opt(struct obr_pg_target *t, const char *key, const char *val)
{
	char *k = strdup(key), *v = strdup(val);
	if (!k || !v) {
		free(k);
		free(v);
		return -1;
	}
	t->keys[t->nopts] = k;
	t->vals[t->nopts] = v;
	t->nopts++;
	return 0;
}

/* libpq's reading of connect_timeout: seconds, at least 2; zero or less waits forever.
 * A value libpq refuses gets our default here (libpq then reports it). */
static int connect_timeout_of(const char *s)
{
	if (!s || !*s)
		return OBR_PG_CONNECT_TIMEOUT_S;
	char *end;
	long v = strtol(s, &end, 10);
	if (*end || end == s || v > 86400 * 365)
		return OBR_PG_CONNECT_TIMEOUT_S;
	if (v <= 0)
		return 0;
	return v < 2 ? 2 : (int)v;
}

/* Fills t->hosts from the host, hostaddr and port lists. Lists libpq would refuse (counts
 * that do not match) set passthrough: libpq gets them as written and says what is wrong. */
static int fill_hosts(struct obr_pg_target *t, const char *host, const char *hostaddr, const char *port)
{
	char **hv = NULL, **av = NULL, **pv = NULL;
	int nh = 0, na = 0, np = 0, rc = -1;
	if ((host && (nh = split_list(host, &hv)) < 0) || (hostaddr && (na = split_list(hostaddr, &av)) < 0) ||
	    (port && (np = split_list(port, &pv)) < 0))
		goto out;
	int n = nh ? nh : na ? na : 1;
	if ((na && na != n) || (np > 1 && np != n)) {
		t->passthrough = true;
		rc = 0;
		goto out;
	}
	t->hosts = calloc((size_t)n, sizeof(*t->hosts));
	if (!t->hosts)
		goto out;
	t->nhosts = n;
	t->single_port = np <= 1;
	for (int i = 0; i < n; i++) {
		struct obr_pg_host *h = &t->hosts[i];
		h->host = strdup(nh ? hv[i] : "");
		h->hostaddr = strdup(na ? av[i] : "");
		h->port = strdup(np ? pv[np == 1 ? 0 : i] : "");
		if (!h->host || !h->hostaddr || !h->port)
			goto out;
		h->lookup = !*h->hostaddr && *h->host && h->host[0] != '/' && h->host[0] != '@' &&
		            !is_ip_literal(h->host);
	}
	rc = 0;
out:
	free_list(hv, nh);
	free_list(av, na);
	free_list(pv, np);
	return rc;
}

int obr_pg_target_parse(const char *conninfo, struct obr_pg_target *t, char *err, size_t errlen)
{
	memset(t, 0, sizeof(*t));
	char *msg = NULL;
	PQconninfoOption *opts = PQconninfoParse(conninfo, &msg);
	if (!opts) {
		/* libpq's message may quote the offending part, a password included */
		PQfreemem(msg);
		snprintf(err, errlen, "not a valid libpq URI or conninfo string");
		return -1;
	}
	int n = 0;
	for (PQconninfoOption *o = opts; o->keyword; o++)
		n++;
	t->keys = calloc((size_t)n + 3, sizeof(char *));
	t->vals = calloc((size_t)n + 3, sizeof(char *));
	const char *host = NULL, *hostaddr = NULL, *port = NULL, *timeout = NULL, *service = NULL;
	if (!t->keys || !t->vals)
		goto oom;
	for (PQconninfoOption *o = opts; o->keyword; o++) {
		if (!o->val)
			continue;
		if (!strcmp(o->keyword, "host"))
			host = o->val;
		else if (!strcmp(o->keyword, "hostaddr"))
			hostaddr = o->val;
		else if (!strcmp(o->keyword, "port"))
			port = o->val;
		else if (add_opt(t, o->keyword, o->val))
			goto oom;
		if (!strcmp(o->keyword, "connect_timeout"))
			timeout = o->val;
		else if (!strcmp(o->keyword, "service"))
			service = o->val;
	}
	/* what libpq would take from the environment, taken here so we resolve it too */
	host = host ? host : getenv("PGHOST");
	hostaddr = hostaddr ? hostaddr : getenv("PGHOSTADDR");
	port = port ? port : getenv("PGPORT");
	timeout = timeout ? timeout : getenv("PGCONNECT_TIMEOUT");
	service = service ? service : getenv("PGSERVICE");
	t->connect_timeout_s = connect_timeout_of(timeout);
	/* a service file may name hosts we cannot see: libpq resolves those itself */
	if (service)
		t->passthrough = true;
	else if (fill_hosts(t, host, hostaddr, port))
		goto oom;
	if (t->passthrough) {
		if ((host && add_opt(t, "host", host)) || (hostaddr && add_opt(t, "hostaddr", hostaddr)) ||
		    (port && add_opt(t, "port", port)))
			goto oom;
	}
	PQconninfoFree(opts);
	return 0;
oom:
	PQconninfoFree(opts);
	obr_pg_target_free(t);
	snprintf(err, errlen, "out of memory");
	return -1;
}

void obr_pg_host_clear(struct obr_pg_host *h)
{
	free(h->host);
	free(h->hostaddr);
	free(h->port);
	memset(h, 0, sizeof(*h));
}

void obr_pg_target_free(struct obr_pg_target *t)
{
	for (int i = 0; i < t->nopts; i++) {
		free(t->keys[i]);
		free(t->vals[i]);
	}
	free(t->keys);
	free(t->vals);
	for (int i = 0; i < t->nhosts; i++)
		obr_pg_host_clear(&t->hosts[i]);
	free(t->hosts);
	memset(t, 0, sizeof(*t));
}

bool obr_pg_target_needs_lookup(const struct obr_pg_target *t)
{
	for (int i = 0; i < t->nhosts; i++)
		if (t->hosts[i].lookup)
			return true;
	return false;
}

/* Joins one field of hosts[0..n) with commas; NULL when out of memory. */
static char *join(const struct obr_pg_host *hosts, int n, size_t field)
{
	size_t len = 1;
	for (int i = 0; i < n; i++)
		len += strlen(*(char *const *)(const void *)((const char *)&hosts[i] + field)) + 1;
	char *s = malloc(len), *o = s;
	if (!s)
		return NULL;
	for (int i = 0; i < n; i++) {
		const char *v = *(char *const *)(const void *)((const char *)&hosts[i] + field);
		size_t l = strlen(v);
		if (i)
			*o++ = ',';
		memcpy(o, v, l);
		o += l;
	}
	*o = '\0';
	return s;
}

static bool has_key(const struct obr_pg_target *t, const char *key)
{
	for (int i = 0; i < t->nopts; i++)
		if (!strcmp(t->keys[i], key))
			return true;
	return false;
}

int obr_pg_params_build(const struct obr_pg_target *t, const struct obr_pg_host *hosts, int n, const char *app_name,
                        char ***keysp, char ***valsp)
{
	/* keepalives find a half-open idle connection; tcp_user_timeout fails a statement sent
	 * into a host that vanished within seconds instead of the kernel's ~15 minutes */
	static const char *const defaults[][2] = {
		{ "keepalives", "1" },        { "keepalives_idle", "10" }, { "keepalives_interval", "5" },
		{ "keepalives_count", "3" }, { "tcp_user_timeout", OBR_PG_TCP_USER_TIMEOUT_MS },
	};
	size_t ndef = sizeof(defaults) / sizeof(defaults[0]);
	size_t cap = (size_t)t->nopts + ndef + 5;
	char **keys = calloc(cap, sizeof(char *)), **vals = calloc(cap, sizeof(char *));
	size_t k = 0;
	bool ok = keys && vals;
	for (int i = 0; ok && i < t->nopts; i++) {
		if (!strcmp(t->keys[i], "application_name"))
			continue; /* ours names the connection in pg_stat_activity */
		keys[k] = strdup(t->keys[i]);
		vals[k] = strdup(t->vals[i]);
		ok = keys[k] && vals[k];
		k++;
	}
	for (size_t i = 0; ok && i < ndef; i++) {
		if (has_key(t, defaults[i][0]))
			continue;
		keys[k] = strdup(defaults[i][0]);
		vals[k] = strdup(defaults[i][1]);
		ok = keys[k] && vals[k];
		k++;
	}
	if (ok) {
		keys[k] = strdup("application_name");
		vals[k] = strdup(app_name);
		ok = keys[k] && vals[k];
		k++;
	}
	bool any_addr = false, any_port = false;
	for (int i = 0; i < n; i++) {
		any_addr |= *hosts[i].hostaddr != '\0';
		any_port |= *hosts[i].port != '\0';
	}
	if (ok && n > 0) {
		keys[k] = strdup("host");
		vals[k] = join(hosts, n, offsetof(struct obr_pg_host, host));
		ok = keys[k] && vals[k];
		k++;
	}
	if (ok && n > 0 && any_addr) {
		keys[k] = strdup("hostaddr");
		vals[k] = join(hosts, n, offsetof(struct obr_pg_host, hostaddr));
		ok = keys[k] && vals[k];
		k++;
	}
	if (ok && n > 0 && any_port) {
		keys[k] = strdup("port");
		vals[k] = t->single_port ? strdup(hosts[0].port) : join(hosts, n, offsetof(struct obr_pg_host, port));
		ok = keys[k] && vals[k];
		k++;
	}
	if (!ok) {
		obr_pg_params_free(keys, vals);
		return -1;
	}
	*keysp = keys;
	*valsp = vals;
	return 0;
}

void obr_pg_params_free(char **keys, char **vals)
{
	/* a failed build may leave one of a pair NULL: walk both to the first double NULL */
	for (size_t i = 0; keys && vals && (keys[i] || vals[i]); i++) {
		free(keys[i]);
		free(vals[i]);
	}
	free(keys);
	free(vals);
}

int obr_pg_host_find(const struct obr_pg_host *hosts, int n, const char *host, const char *port, const char *addr)
{
	for (int i = 0; i < n; i++) {
		const struct obr_pg_host *h = &hosts[i];
		const char *name = *h->host ? h->host : h->hostaddr;
		if (*name && host && strcmp(name, host))
			continue;
		if (*h->port && port && strcmp(h->port, port))
			continue;
		if (*h->hostaddr && addr && *addr && strcmp(h->hostaddr, addr))
			continue;
		return i;
	}
	return -1;
}

int obr_pg_hosts_file_lookup(const char *path, const char *name, char (*addrs)[OBR_PG_ADDR_LEN], int max)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	char line[1024];
	int n = 0;
	while (n < max && fgets(line, sizeof(line), f)) {
		line[strcspn(line, "#\n")] = '\0';
		char *save = NULL;
		char *addr = strtok_r(line, " \t", &save);
		if (!addr || !is_ip_literal(addr) || strlen(addr) >= OBR_PG_ADDR_LEN)
			continue;
		for (char *alias; (alias = strtok_r(NULL, " \t", &save)) != NULL;) {
			if (!strcasecmp(alias, name)) {
				snprintf(addrs[n++], OBR_PG_ADDR_LEN, "%s", addr);
				break;
			}
		}
	}
	fclose(f);
	return n;
}
