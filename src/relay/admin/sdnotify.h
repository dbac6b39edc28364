/*
 * sdnotify.h - the systemd notification protocol (sd_notify(3)) without libsystemd.
 *
 * When systemd starts a Type=notify service it sets NOTIFY_SOCKET to a unix datagram socket:
 * a path ("/run/systemd/notify") or a name in the abstract namespace ("@name"). Each state
 * change is one datagram of newline-separated VAR=value assignments: READY=1 once the relay
 * is ready, STOPPING=1 when it begins to shut down, WATCHDOG=1 as a keep-alive. Outside
 * systemd (NOTIFY_SOCKET unset) every call is a cheap no-op.
 */
#ifndef OBR_SDNOTIFY_H
#define OBR_SDNOTIFY_H

#include <stdint.h>

/* Sends state (e.g. "READY=1") to $NOTIFY_SOCKET. Returns 1 when sent, 0 when NOTIFY_SOCKET
 * is not set, -1 on an error (logged as a warning; the relay carries on). Safe to call from
 * libevent callbacks; it never blocks. */
int obr_sd_notify(const char *state);

/* The watchdog interval systemd asks for (WatchdogSec=, from WATCHDOG_USEC when WATCHDOG_PID
 * is unset or this process), in microseconds; 0 when there is no watchdog. The relay sends
 * WATCHDOG=1 every half of it from its event loop, so a stuck loop gets the service
 * restarted. */
uint64_t obr_sd_watchdog_usec(void);

#endif
