/*
 * netaddr.c - listen addresses ("host:port", "[ipv6]:port"), parsed without the network.
 */
#include "util/netaddr.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static bool host_char_ok(char c, bool bracketed)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_')
		return true;
	return bracketed && (c == ':' || c == '%');
}

int obr_listen_addr_parse(const char *addr, char *host, size_t hostlen, unsigned *port, char *err,
                          size_t errlen)
{
	const char *h, *h_end, *p;
	bool bracketed = addr[0] == '[';

	if (bracketed) {
		h = addr + 1;
		h_end = strchr(h, ']');
		if (!h_end) {
			snprintf(err, errlen, "\"%s\" has a \"[\" without its \"]\"", addr);
			return -1;
		}
		if (h_end[1] != ':') {
			snprintf(err, errlen, "\"%s\" is not [address]:port", addr);
			return -1;
		}
		p = h_end + 2;
	} else {
		h = addr;
		const char *colon = strrchr(addr, ':');
		if (!colon) {
			snprintf(err, errlen, "\"%s\" is not host:port (e.g. 127.0.0.1:9095, [::1]:9095)", addr);
			return -1;
		}
		h_end = colon;
		p = colon + 1;
		if (memchr(h, ':', (size_t)(h_end - h))) {
			snprintf(err, errlen, "\"%s\": an IPv6 address must be in brackets, e.g. [::1]:9095", addr);
			return -1;
		}
	}
	size_t n = (size_t)(h_end - h);
	if (n == 0) {
		snprintf(err, errlen, "\"%s\" has no host (use 0.0.0.0 or [::] for every interface)", addr);
		return -1;
	}
	if (n >= hostlen) {
		snprintf(err, errlen, "\"%.64s...\": the host is too long", addr);
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		if (!host_char_ok(h[i], bracketed)) {
			snprintf(err, errlen, "\"%s\": the host contains an invalid character", addr);
			return -1;
		}
	}
	if (*p == '\0') {
		snprintf(err, errlen, "\"%s\" has no port", addr);
		return -1;
	}
	unsigned long v = 0;
	for (const char *c = p; *c; c++) {
		if (*c < '0' || *c > '9' || v > 65535) {
			snprintf(err, errlen, "\"%s\": the port must be a number from 0 to 65535", addr);
			return -1;
		}
		v = v * 10 + (unsigned long)(*c - '0');
	}
	if (v > 65535) {
		snprintf(err, errlen, "\"%s\": the port must be a number from 0 to 65535", addr);
		return -1;
	}
	memcpy(host, h, n);
	host[n] = '\0';
	*port = (unsigned)v;
	return 0;
}
