/*
 * pgresolve.c - host name lookups for db/pg.c without blocking the loop (see pgresolve.h).
 */
#include "db/pgresolve.h"

#include "util/log.h"

#include <arpa/inet.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* addresses kept per host name and address family */
#define MAX_ADDRS 8
#define HOSTS_FILE "/etc/hosts"

/* One A or AAAA query (or a hosts file answer) for t->hosts[host]. */
struct lookup {
	struct lookup *next;
	struct obr_pg_resolver *r;
	struct evdns_request *req;  /* until its callback ran: libevent frees it then */
	int host;
	bool stale;                 /* cancelled: its callback still comes, and frees it */
	int naddrs;
	char addrs[MAX_ADDRS][OBR_PG_ADDR_LEN];
};

struct obr_pg_resolver {
	struct event_base *base;
	struct evdns_base *dns;     /* made at the first name that needs a name server */
	const char *name;
	void (*done)(void *arg);
	void *arg;
	const struct obr_pg_target *target;
	struct lookup *lookups;
	int pending;
};

struct obr_pg_resolver *obr_pg_resolver_new(struct event_base *base, const char *name, void (*done)(void *arg),
                                            void *arg)
{
	struct obr_pg_resolver *r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	r->base = base;
	r->name = name;
	r->done = done;
	r->arg = arg;
	return r;
}

static void unlink_lookup(struct obr_pg_resolver *r, struct lookup *l)
{
	for (struct lookup **lp = &r->lookups; *lp; lp = &(*lp)->next) {
		if (*lp == l) {
			*lp = l->next;
			return;
		}
	}
}

static void on_answer(int result, char type, int count, int ttl, void *addresses, void *arg)
{
	struct lookup *l = arg;
	struct obr_pg_resolver *r = l->r;
	l->req = NULL; /* libevent frees the request after this callback */
	if (l->stale) {
		unlink_lookup(r, l);
		free(l);
		return;
	}
	for (int i = 0; result == DNS_ERR_NONE && i < count && l->naddrs < MAX_ADDRS; i++) {
		const void *a = type == DNS_IPv4_A ? (const void *)((const struct in_addr *)addresses + i)
		                                   : (const void *)((const struct in6_addr *)addresses + i);
		if ((type == DNS_IPv4_A || type == DNS_IPv6_AAAA) &&
		    inet_ntop(type == DNS_IPv4_A ? AF_INET : AF_INET6, a, l->addrs[l->naddrs], OBR_PG_ADDR_LEN))
			l->naddrs++;
	}
	if (result != DNS_ERR_NONE && result != DNS_ERR_NOTEXIST && result != DNS_ERR_NODATA)
		obr_log_debug("%s connection: lookup of \"%s\" failed: %s", r->name, r->target->hosts[l->host].host,
		              evdns_err_to_string(result));
	if (--r->pending == 0)
		r->done(r->arg);
}

static struct lookup *lookup_new(struct obr_pg_resolver *r, int host)
{
	struct lookup *l = calloc(1, sizeof(*l));
	if (!l)
		return NULL;
	l->r = r;
	l->host = host;
	l->next = r->lookups;
	r->lookups = l;
	return l;
}

static struct evdns_base *dns_base(struct obr_pg_resolver *r)
{
	if (r->dns)
		return r->dns;
	/* tests point the relay at a local stand-in name server (there is no other way to make a
	 * lookup slow on purpose without root); everyone else gets resolv.conf */
	const char *conf = getenv("OBR_TEST_RESOLV_CONF");
	r->dns = evdns_base_new(r->base, EVDNS_BASE_DISABLE_WHEN_INACTIVE | (conf ? 0 : EVDNS_BASE_INITIALIZE_NAMESERVERS));
	if (r->dns && conf && evdns_base_resolv_conf_parse(r->dns, DNS_OPTIONS_ALL, conf) != 0)
		obr_log_warn("%s connection: could not read %s", r->name, conf);
	return r->dns;
}

int obr_pg_resolver_start(struct obr_pg_resolver *r, const struct obr_pg_target *t)
{
	obr_pg_resolver_cancel(r);
	r->target = t;
	for (int i = 0; i < t->nhosts; i++) {
		if (!t->hosts[i].lookup)
			continue;
		struct lookup *l = lookup_new(r, i);
		if (!l)
			return -1;
		l->naddrs = obr_pg_hosts_file_lookup(HOSTS_FILE, t->hosts[i].host, l->addrs, MAX_ADDRS);
		if (l->naddrs)
			continue;
		if (!dns_base(r))
			return -1;
		for (int v6 = 0; v6 < 2; v6++) {
			struct lookup *q = lookup_new(r, i);
			if (!q)
				return -1;
			q->req = v6 ? evdns_base_resolve_ipv6(r->dns, t->hosts[i].host, 0, on_answer, q)
			            : evdns_base_resolve_ipv4(r->dns, t->hosts[i].host, 0, on_answer, q);
			if (!q->req)
				return -1;
			r->pending++;
		}
	}
	return r->pending ? 0 : 1;
}

static int add_entry(struct obr_pg_host *entries, int *n, const struct obr_pg_host *h, const char *addr)
{
	struct obr_pg_host *e = &entries[*n];
	e->host = strdup(h->host);
	e->hostaddr = strdup(addr ? addr : h->hostaddr);
	e->port = strdup(h->port);
	if (!e->host || !e->hostaddr || !e->port) {
		obr_pg_host_clear(e);
		return -1;
	}
	(*n)++;
	return 0;
}

int obr_pg_resolver_entries(struct obr_pg_resolver *r, const struct obr_pg_target *t, struct obr_pg_host **entries,
                            char *unresolved, size_t unresolved_len)
{
	size_t max = 1;
	for (int i = 0; i < t->nhosts; i++)
		max += t->hosts[i].lookup ? 2 * MAX_ADDRS : 1;
	struct obr_pg_host *e = calloc(max, sizeof(*e));
	int n = 0;
	if (!e)
		goto oom;
	unresolved[0] = '\0';
	for (int i = 0; i < t->nhosts; i++) {
		const struct obr_pg_host *h = &t->hosts[i];
		if (!h->lookup) {
			if (add_entry(e, &n, h, NULL))
				goto oom;
			continue;
		}
		int before = n;
		/* IPv4 addresses first, then IPv6, each in the order they came */
		for (int pass = 0; pass < 2; pass++) {
			for (struct lookup *l = r->lookups; l; l = l->next) {
				if (l->host != i || l->stale)
					continue;
				for (int a = 0; a < l->naddrs; a++) {
					bool v6 = strchr(l->addrs[a], ':') != NULL;
					if (v6 == (pass == 1) && add_entry(e, &n, h, l->addrs[a]))
						goto oom;
				}
			}
		}
		if (n == before) {
			size_t o = strlen(unresolved);
			snprintf(unresolved + o, unresolved_len - o, "%s\"%s\"", o ? ", " : "", h->host);
		}
	}
	obr_pg_resolver_cancel(r);
	*entries = e;
	return n;
oom:
	for (int i = 0; i < n; i++)
		obr_pg_host_clear(&e[i]);
	free(e);
	obr_pg_resolver_cancel(r);
	return -1;
}

void obr_pg_resolver_cancel(struct obr_pg_resolver *r)
{
	struct lookup **lp = &r->lookups;
	while (*lp) {
		struct lookup *l = *lp;
		if (l->req && !l->stale) {
			l->stale = true;
			evdns_cancel_request(r->dns, l->req);
		}
		if (l->req) {
			lp = &l->next;
			continue;
		}
		*lp = l->next;
		free(l);
	}
	r->pending = 0;
}

void obr_pg_resolver_free(struct obr_pg_resolver *r)
{
	if (!r)
		return;
	/* the loop no longer runs: lookups in flight go with the evdns base, without callbacks */
	if (r->dns)
		evdns_base_free(r->dns, 0);
	while (r->lookups) {
		struct lookup *next = r->lookups->next;
		free(r->lookups);
		r->lookups = next;
	}
	free(r);
}
