/*
 * admin.h - the relay's operations endpoint: GET /health, /ready and /metrics over HTTP,
 * served by libevent's evhttp on the relay's own event_base (OUTBOX_LISTEN_ADDR).
 *
 *   /health   200 {"status":"up"} while the process and its loop run
 *   /ready    200 {"status":"ready"}, or 503 {"status":"not ready","reason":"..."} while the
 *             database is unreachable, LISTEN is not active, or the relay is stopping
 *   /metrics  Prometheus text exposition format 0.0.4, from obr_relay_stats()
 *
 * HEAD is answered like GET without a body; other methods get 405, other paths 404. Nothing
 * served here carries a secret (no connection string, no URL, no payload). Requests are small
 * and bounded (headers 8 KiB, body 4 KiB, 10 s timeout); answers are built in bounded buffers.
 */
#ifndef OBR_ADMIN_H
#define OBR_ADMIN_H

#include <stdbool.h>
#include <stddef.h>

#include "engine/relay.h"
#include "util/strbuf.h"

struct event_base;
struct obr_admin;

#define OBR_METRICS_MAX_BYTES (256u * 1024u)

/* Binds listen_addr and serves on base. relay is borrowed and must outlive the endpoint.
 * Returns NULL with a message naming the address in err (e.g. the address is in use). */
struct obr_admin *obr_admin_new(struct event_base *base, const char *listen_addr,
                                struct obr_relay *relay, char *err, size_t errlen);
/* The port actually bound (useful with port 0). */
unsigned obr_admin_port(const struct obr_admin *admin);
void obr_admin_free(struct obr_admin *admin);

/* Appends the /metrics document for st to out (a pure function: no I/O, no clock).
 * ready: the value of outbox_relay_ready. Returns 0, or -1 when out overflowed its cap or
 * memory ran out (out->failed). */
int obr_metrics_format(const struct obr_relay_stats *st, bool ready, struct obr_strbuf *out);

#endif
