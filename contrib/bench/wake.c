/*
 * bench-wake: what one wake-up costs a process on this machine. A child sleeps in epoll_wait
 * on a loopback TCP connection; the parent sends it one byte at a fixed rate (open loop) and
 * waits for the one-byte answer. The child does nothing else: recv, send, sleep again. Its CPU
 * time (utime + stime, from wait4) divided by the messages is the floor of a process that is
 * woken once per event at that rate: the relay is woken at least three times per row arriving
 * alone (the notification, the claim's answer, the HTTP answer) and once more for the result.
 *
 *   bench-wake [--rate 200] [--seconds 5]
 *
 * Prints one line: "rate=R wakes=N child_cpu_us_per_wake=X child_ctxsw_per_wake=Y".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void sleeper(int fd)
{
	int ep = epoll_create1(0);
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
		die("epoll");
	for (;;) {
		struct epoll_event got;
		if (epoll_wait(ep, &got, 1, -1) < 0)
			continue;
		char c;
		ssize_t n = recv(fd, &c, 1, 0);
		if (n <= 0)
			_exit(0);
		if (send(fd, &c, 1, 0) != 1)
			_exit(1);
	}
}

int main(int argc, char **argv)
{
	double rate = 200, seconds = 5;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--rate") && i + 1 < argc)
			rate = atof(argv[++i]);
		else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
			seconds = atof(argv[++i]);
		else {
			fprintf(stderr, "usage: bench-wake [--rate 200] [--seconds 5]\n");
			return 2;
		}
	}
	if (rate <= 0 || seconds <= 0) {
		fprintf(stderr, "bench-wake: --rate and --seconds must be positive\n");
		return 2;
	}

	int lfd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof(a);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(lfd, 1) < 0 ||
	    getsockname(lfd, (struct sockaddr *)&a, &alen) < 0)
		die("listen");
	int cfd = socket(AF_INET, SOCK_STREAM, 0);
	if (cfd < 0 || connect(cfd, (struct sockaddr *)&a, sizeof(a)) < 0)
		die("connect");
	int sfd = accept(lfd, NULL, NULL);
	if (sfd < 0)
		die("accept");
	int one = 1;
	setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(sfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

	pid_t child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		close(cfd);
		close(lfd);
		sleeper(sfd);
	}
	close(sfd);

	long total = (long)(rate * seconds);
	struct timespec next;
	clock_gettime(CLOCK_MONOTONIC, &next);
	long step_ns = (long)(1e9 / rate);
	for (long i = 0; i < total; i++) {
		next.tv_nsec += step_ns;
		while (next.tv_nsec >= 1000000000L) {
			next.tv_nsec -= 1000000000L;
			next.tv_sec++;
		}
		clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
		char c = 'x';
		if (send(cfd, &c, 1, 0) != 1 || recv(cfd, &c, 1, 0) != 1)
			die("ping");
	}
	close(cfd);
	int status;
	struct rusage ru;
	if (wait4(child, &status, 0, &ru) < 0)
		die("wait4");
	double cpu_us = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
	                (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
	printf("rate=%.0f wakes=%ld child_cpu_us_per_wake=%.1f child_ctxsw_per_wake=%.2f\n", rate, total,
	       cpu_us / (double)total, (double)(ru.ru_nvcsw + ru.ru_nivcsw) / (double)total);
	return 0;
}
