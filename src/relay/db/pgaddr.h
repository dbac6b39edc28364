/*
 * pgaddr.h - the hosts of a libpq connection string, so the relay can resolve their names
 * without blocking and hand libpq numeric addresses.
 *
 * libpq resolves host names with a blocking getaddrinfo, and PQconnectPoll ignores
 * connect_timeout. The relay therefore parses DATABASE_URL once (PQconninfoParse), resolves
 * the names itself (pg.c, evdns), and connects with keyword/value arrays in which every host
 * name that was looked up has its own entry per address: host= keeps the name (TLS
 * verification, pg_hba, .pgpass), hostaddr= the address. One entry is one connection attempt
 * for libpq, so a timer per entry can skip an address that black-holes.
 *
 * What is not looked up: Unix socket paths, literal IP addresses, empty entries (libpq's
 * default socket), and everything when the user gave hostaddr= or a service= (whose host
 * libpq reads from pg_service.conf).
 */
#ifndef OBR_PGADDR_H
#define OBR_PGADDR_H

#include <stdbool.h>
#include <stddef.h>

/* defaults the relay sets unless the connection string sets them itself */
#define OBR_PG_CONNECT_TIMEOUT_S 10
#define OBR_PG_TCP_USER_TIMEOUT_MS "30000"

/* One connection attempt: host as written (may be empty or a socket directory), hostaddr
 * numeric or empty, port or empty. */
struct obr_pg_host {
	char *host;
	char *hostaddr;
	char *port;
	bool lookup; /* host is a name that needs resolving (hostaddr still empty) */
};

struct obr_pg_target {
	char **keys;                 /* the connection string's options but host/hostaddr/port */
	char **vals;
	int nopts;
	struct obr_pg_host *hosts;   /* as written, one per host= entry */
	int nhosts;
	bool single_port;            /* one port= value for all hosts (or none): keep it single */
	bool passthrough;            /* hosts unusable for us (mismatched lists): libpq decides */
	int connect_timeout_s;       /* per attempt; 0: none (connect_timeout=0 as in libpq) */
};

/* Parses conninfo (URI or key=value). Returns 0, or -1 with err set (never quoting the
 * string: it may hold a password). t is zeroed first; free with obr_pg_target_free. */
int obr_pg_target_parse(const char *conninfo, struct obr_pg_target *t, char *err, size_t errlen);
void obr_pg_target_free(struct obr_pg_target *t);

/* Does any host need a lookup? */
bool obr_pg_target_needs_lookup(const struct obr_pg_target *t);

/* Keyword/value arrays for PQconnectStartParams(keys, vals, 0) that connect to hosts[0..n)
 * with the connection string's other options plus the relay's: application_name (always
 * ours), keepalives, tcp_user_timeout (unless set). Both arrays end with NULL; free with
 * obr_pg_params_free. Returns -1 when out of memory. */
int obr_pg_params_build(const struct obr_pg_target *t, const struct obr_pg_host *hosts, int n, const char *app_name,
                        char ***keys, char ***vals);
void obr_pg_params_free(char **keys, char **vals);

/* Entry index in hosts[0..n) that a connection attempt at (host, port, addr) is, as libpq
 * reports them (PQhost, PQport, PQhostaddr); -1 when none matches. */
int obr_pg_host_find(const struct obr_pg_host *hosts, int n, const char *host, const char *port, const char *addr);

void obr_pg_host_clear(struct obr_pg_host *h);

/* room for a numeric IPv4 or IPv6 address */
#define OBR_PG_ADDR_LEN 64

/* The addresses a hosts file (/etc/hosts) lists for name, in file order, up to max; returns
 * how many (0 when none or the file is unreadable). */
int obr_pg_hosts_file_lookup(const char *path, const char *name, char (*addrs)[OBR_PG_ADDR_LEN], int max);

#endif
