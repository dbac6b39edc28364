/*
 * test_netaddr.c - src/relay/util/netaddr.c: the OUTBOX_LISTEN_ADDR syntax, both through
 * obr_listen_addr_parse and the settings table.
 */
#include "util/netaddr.h"
#include "config.h"
#include "harness.h"

#include <stdio.h>
#include <string.h>

static void test_listen_addr_parse(void)
{
	static const struct {
		const char *addr;
		const char *host;    /* NULL: must be rejected */
		unsigned port;
	} cases[] = {
		{ "127.0.0.1:9095", "127.0.0.1", 9095 },
		{ "0.0.0.0:80", "0.0.0.0", 80 },
		{ "[::1]:9095", "::1", 9095 },
		{ "[::]:1", "::", 1 },
		{ "[fe80::1%eth0]:9095", "fe80::1%eth0", 9095 },
		{ "localhost:0", "localhost", 0 },
		{ "metrics.example-1.internal:65535", "metrics.example-1.internal", 65535 },
		{ "::1:9095", NULL, 0 },
		{ "127.0.0.1", NULL, 0 },
		{ "127.0.0.1:", NULL, 0 },
		{ ":9095", NULL, 0 },
		{ "[]:9095", NULL, 0 },
		{ "[::1]", NULL, 0 },
		{ "[::1]9095", NULL, 0 },
		{ "[::1:9095", NULL, 0 },
		{ "127.0.0.1:65536", NULL, 0 },
		{ "127.0.0.1:99999999999999999999", NULL, 0 },
		{ "127.0.0.1:-1", NULL, 0 },
		{ "127.0.0.1:90a", NULL, 0 },
		{ "host name:9095", NULL, 0 },
		{ "h/st:9095", NULL, 0 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char host[OBR_LISTEN_HOST_MAX] = "", err[256] = "";
		unsigned port = 12345;
		int rc = obr_listen_addr_parse(cases[i].addr, host, sizeof(host), &port, err, sizeof(err));
		if (cases[i].host) {
			if (rc != 0)
				fprintf(stderr, "  %s: %s\n", cases[i].addr, err);
			CHECK_INT_EQ(rc, 0);
			CHECK_STR_EQ(host, cases[i].host);
			CHECK_INT_EQ(port, cases[i].port);
		} else {
			if (rc == 0)
				fprintf(stderr, "  %s was accepted\n", cases[i].addr);
			CHECK_INT_EQ(rc, -1);
			CHECK(err[0] != '\0');
			CHECK(err[strlen(err) - 1] != '.');
			CHECK_INT_EQ(port, 12345);   /* untouched on error */
		}
	}
}

static void test_listen_addr_setting(void)
{
	struct obr_config cfg;
	char err[512];

	const char *def[] = { "DATABASE_URL=postgresql:///x", NULL };
	CHECK_INT_EQ(obr_config_load(&cfg, def, 0, NULL, err, sizeof(err)), 0);
	CHECK_STR_EQ(cfg.listen_addr, "127.0.0.1:9095");
	obr_config_free(&cfg);

	const char *off[] = { "DATABASE_URL=postgresql:///x", "OUTBOX_LISTEN_ADDR=off", NULL };
	CHECK_INT_EQ(obr_config_load(&cfg, off, 0, NULL, err, sizeof(err)), 0);
	CHECK(cfg.listen_addr == NULL);
	obr_config_free(&cfg);

	const char *empty[] = { "DATABASE_URL=postgresql:///x", "OUTBOX_LISTEN_ADDR=", NULL };
	CHECK_INT_EQ(obr_config_load(&cfg, empty, 0, NULL, err, sizeof(err)), 0);
	CHECK(cfg.listen_addr == NULL);
	obr_config_free(&cfg);

	const char *v6[] = { "DATABASE_URL=postgresql:///x", "OUTBOX_LISTEN_ADDR=off", NULL };
	const char *flag[] = { "--listen-addr", "[::1]:9100", NULL };
	CHECK_INT_EQ(obr_config_load(&cfg, v6, 2, flag, err, sizeof(err)), 0);
	CHECK_STR_EQ(cfg.listen_addr, "[::1]:9100");
	obr_config_free(&cfg);

	const char *bad[] = { "DATABASE_URL=postgresql:///x", "OUTBOX_LISTEN_ADDR=::1:9095", NULL };
	CHECK_INT_EQ(obr_config_load(&cfg, bad, 0, NULL, err, sizeof(err)), -1);
	CHECK(strstr(err, "OUTBOX_LISTEN_ADDR") != NULL);
	CHECK(strstr(err, "brackets") != NULL);

	const char *badflag[] = { "--listen-addr=9095", NULL };
	CHECK_INT_EQ(obr_config_load(&cfg, def, 1, badflag, err, sizeof(err)), -1);
	CHECK(strstr(err, "OUTBOX_LISTEN_ADDR (--listen-addr)") != NULL);
}

int main(int argc, char **argv)
{
	static const struct test tests[] = {
		TEST(test_listen_addr_parse),
		TEST(test_listen_addr_setting),
		TEST_END,
	};
	return run_tests(tests, argc, argv);
}
