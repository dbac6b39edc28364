/*
 * test_sdnotify.c - src/relay/admin/sdnotify.c: the datagrams systemd would receive on
 * $NOTIFY_SOCKET (a path and the abstract namespace), the no-op outside systemd, bad socket
 * values, and the watchdog interval from WATCHDOG_USEC / WATCHDOG_PID.
 */
#include "admin/sdnotify.h"
#include "harness.h"

#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* Binds a datagram socket at path ("@name": abstract namespace). Returns the fd or -1. */
static int bind_notify_socket(const char *path)
{
	struct sockaddr_un sa;
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	size_t len = strlen(path);
	if (len >= sizeof(sa.sun_path))
		return -1;
	memcpy(sa.sun_path, path, len);
	socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
	if (path[0] == '@')
		sa.sun_path[0] = '\0';
	else
		salen++;
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (bind(fd, (struct sockaddr *)&sa, salen) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* Reads one datagram within 2 s into buf; returns its length or -1. */
static ssize_t read_datagram(int fd, char *buf, size_t cap)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	if (poll(&p, 1, 2000) != 1)
		return -1;
	ssize_t n = recv(fd, buf, cap - 1, 0);
	if (n >= 0)
		buf[n] = '\0';
	return n;
}

static void test_unset_is_a_no_op(void)
{
	unsetenv("NOTIFY_SOCKET");
	CHECK_INT_EQ(obr_sd_notify("READY=1"), 0);
	setenv("NOTIFY_SOCKET", "", 1);
	CHECK_INT_EQ(obr_sd_notify("READY=1"), 0);
	unsetenv("NOTIFY_SOCKET");
}

static void test_path_socket(void)
{
	char dir[] = "/tmp/obr-sdnotify-XXXXXX";
	CHECK(mkdtemp(dir) != NULL);
	char path[128];
	snprintf(path, sizeof(path), "%s/notify", dir);
	int fd = bind_notify_socket(path);
	int ok = fd >= 0;
	char buf[256] = "";
	ssize_t n1 = -1, n2 = -1;
	int rc1 = -9, rc2 = -9;
	char second[256] = "";
	if (ok) {
		setenv("NOTIFY_SOCKET", path, 1);
		rc1 = obr_sd_notify("READY=1");
		n1 = read_datagram(fd, buf, sizeof(buf));
		rc2 = obr_sd_notify("STOPPING=1");
		n2 = read_datagram(fd, second, sizeof(second));
		unsetenv("NOTIFY_SOCKET");
		close(fd);
	}
	unlink(path);
	rmdir(dir);
	CHECK(ok);
	CHECK_INT_EQ(rc1, 1);
	CHECK_INT_EQ(n1, 7);
	CHECK_STR_EQ(buf, "READY=1");
	CHECK_INT_EQ(rc2, 1);
	CHECK_INT_EQ(n2, 10);
	CHECK_STR_EQ(second, "STOPPING=1");
}

static void test_abstract_socket(void)
{
	char name[64];
	snprintf(name, sizeof(name), "@obr-sdnotify-test-%d-%ld", (int)getpid(), random());
	int fd = bind_notify_socket(name);
	CHECK(fd >= 0);
	setenv("NOTIFY_SOCKET", name, 1);
	int rc = obr_sd_notify("READY=1");
	char buf[256] = "";
	ssize_t n = read_datagram(fd, buf, sizeof(buf));
	unsetenv("NOTIFY_SOCKET");
	close(fd);
	CHECK_INT_EQ(rc, 1);
	CHECK_INT_EQ(n, 7);
	CHECK_STR_EQ(buf, "READY=1");
}

static void test_bad_sockets_fail_softly(void)
{
	setenv("NOTIFY_SOCKET", "relative/path", 1);
	CHECK_INT_EQ(obr_sd_notify("READY=1"), -1);
	setenv("NOTIFY_SOCKET", "/nonexistent-obr-dir/notify", 1);
	CHECK_INT_EQ(obr_sd_notify("READY=1"), -1);
	char longpath[300];
	memset(longpath, 'a', sizeof(longpath) - 1);
	longpath[0] = '/';
	longpath[sizeof(longpath) - 1] = '\0';
	setenv("NOTIFY_SOCKET", longpath, 1);
	CHECK_INT_EQ(obr_sd_notify("READY=1"), -1);
	unsetenv("NOTIFY_SOCKET");
}

static void test_watchdog_interval(void)
{
	char pid[32];
	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
	CHECK_INT_EQ(obr_sd_watchdog_usec(), 0);
	setenv("WATCHDOG_USEC", "30000000", 1);
	CHECK_INT_EQ(obr_sd_watchdog_usec(), 30000000);
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	setenv("WATCHDOG_PID", pid, 1);
	CHECK_INT_EQ(obr_sd_watchdog_usec(), 30000000);
	snprintf(pid, sizeof(pid), "%d", (int)getpid() + 1);
	setenv("WATCHDOG_PID", pid, 1);
	CHECK_INT_EQ(obr_sd_watchdog_usec(), 0);   /* for another process */
	unsetenv("WATCHDOG_PID");
	setenv("WATCHDOG_USEC", "soon", 1);
	CHECK_INT_EQ(obr_sd_watchdog_usec(), 0);
	unsetenv("WATCHDOG_USEC");
}

int main(int argc, char **argv)
{
	static const struct test tests[] = {
		TEST(test_unset_is_a_no_op),
		TEST(test_path_socket),
		TEST(test_abstract_socket),
		TEST(test_bad_sockets_fail_softly),
		TEST(test_watchdog_interval),
		TEST_END,
	};
	srandom((unsigned)getpid());
	return run_tests(tests, argc, argv);
}
