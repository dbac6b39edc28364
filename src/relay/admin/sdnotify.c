/*
 * sdnotify.c - READY=1 / STOPPING=1 / WATCHDOG=1 to systemd over $NOTIFY_SOCKET.
 */
#include "admin/sdnotify.h"

#include "util/log.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int obr_sd_notify(const char *state)
{
	const char *path = getenv("NOTIFY_SOCKET");
	if (!path || !*path)
		return 0;

	struct sockaddr_un sa;
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	size_t len = strlen(path);
	if (path[0] != '/' && path[0] != '@') {
		obr_log_warn("cannot notify systemd: NOTIFY_SOCKET \"%.108s\" is neither an absolute path nor an abstract socket name",
		         path);
		return -1;
	}
	if (len >= sizeof(sa.sun_path)) {
		obr_log_warn("cannot notify systemd: NOTIFY_SOCKET is longer than a unix socket address (%zu bytes)",
		         sizeof(sa.sun_path) - 1);
		return -1;
	}
	memcpy(sa.sun_path, path, len);
	socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
	if (path[0] == '@')
		sa.sun_path[0] = '\0';      /* abstract namespace: no terminating NUL counts */
	else
		salen++;                    /* a path: include its NUL */

	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		obr_log_warn("cannot notify systemd (%s): socket: %s", state, strerror(errno));
		return -1;
	}
	size_t n = strlen(state);
	ssize_t sent = sendto(fd, state, n, MSG_NOSIGNAL, (const struct sockaddr *)&sa, salen);
	int saved = errno;
	close(fd);
	if (sent < 0 || (size_t)sent != n) {
		obr_log_warn("cannot notify systemd (%s) on %s: %s", state, path, sent < 0 ? strerror(saved) : "short write");
		return -1;
	}
	obr_log_debug("notified systemd: %s", state);
	return 1;
}

uint64_t obr_sd_watchdog_usec(void)
{
	const char *usec = getenv("WATCHDOG_USEC");
	if (!usec || !*usec)
		return 0;
	const char *pid = getenv("WATCHDOG_PID");
	if (pid && *pid) {
		char *end;
		errno = 0;
		long long p = strtoll(pid, &end, 10);
		if (errno || *end || p != (long long)getpid())
			return 0;           /* meant for another process */
	}
	char *end;
	errno = 0;
	unsigned long long v = strtoull(usec, &end, 10);
	if (errno || *end || end == usec)
		return 0;
	return (uint64_t)v;
}
