/*
 * netaddr.h - the syntax of a listen address (OUTBOX_LISTEN_ADDR), shared by the settings
 * table, which validates it at start, and the admin endpoint, which binds it.
 */
#ifndef OBR_NETADDR_H
#define OBR_NETADDR_H

#include <stddef.h>

#define OBR_LISTEN_HOST_MAX 256

/* Splits a listen address: "host:port", or "[ipv6]:port" (IPv6 literals need the brackets).
 * host receives the name or address without brackets, port 0..65535 (0: any free port).
 * Returns 0, or -1 with a message (no trailing period) in err; host and port are then
 * untouched. */
int obr_listen_addr_parse(const char *addr, char *host, size_t hostlen, unsigned *port,
                          char *err, size_t errlen);

#endif
