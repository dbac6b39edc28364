/*
 * pgresolve.h - resolves the host names of a connection string on the event loop.
 *
 * The hosts file first, as getaddrinfo would, then A and AAAA queries to the name servers of
 * /etc/resolv.conf (libevent's evdns). The result is the list of connection attempts libpq
 * gets (db/pgaddr.h): one entry per address of a name, other hosts as written.
 */
#ifndef OBR_PGRESOLVE_H
#define OBR_PGRESOLVE_H

#include "db/pgaddr.h"

#include <stddef.h>

struct event_base;
struct obr_pg_resolver;

/* done(arg) is called from the loop when every lookup has answered. name is for logs. */
struct obr_pg_resolver *obr_pg_resolver_new(struct event_base *base, const char *name, void (*done)(void *arg),
                                            void *arg);

/* Starts the lookups of t's hosts (t must outlive them). Returns 1 when everything is known
 * already (done is not called), 0 when done will be called, -1 when a lookup could not start. */
int obr_pg_resolver_start(struct obr_pg_resolver *r, const struct obr_pg_target *t);

/* The attempts for t from what has answered so far, in t's order (IPv4 before IPv6 within a
 * name); names without an address are listed in unresolved. Ends the lookups. Returns the
 * number of entries (*entries to free with obr_pg_host_clear each, then free), -1 when out of
 * memory. */
int obr_pg_resolver_entries(struct obr_pg_resolver *r, const struct obr_pg_target *t, struct obr_pg_host **entries,
                            char *unresolved, size_t unresolved_len);

/* Ends the lookups in flight (done is not called for them). */
void obr_pg_resolver_cancel(struct obr_pg_resolver *r);

/* The loop must not run afterwards with lookups in flight: libevent's pending callbacks for
 * them are dropped with the resolver. */
void obr_pg_resolver_free(struct obr_pg_resolver *r);

#endif
