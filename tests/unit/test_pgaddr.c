/*
 * test_pgaddr.c - the hosts of a connection string (src/relay/db/pgaddr.c): which need a
 * lookup, and the keyword/value arrays libpq gets once names are addresses.
 */
#include "harness.h"
#include "db/pgaddr.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* value of key in a NULL-ended keyword/value pair of arrays, or NULL */
static const char *param(char **keys, char **vals, const char *key)
{
	for (size_t i = 0; keys[i]; i++)
		if (!strcmp(keys[i], key))
			return vals[i];
	return NULL;
}

static struct obr_pg_host mk(const char *host, const char *addr, const char *port)
{
	struct obr_pg_host h = { strdup(host), strdup(addr), strdup(port), false };
	return h;
}

static void clear_hosts(struct obr_pg_host *e, int n)
{
	for (int i = 0; i < n; i++)
		obr_pg_host_clear(&e[i]);
}

static void clear_env(void)
{
	unsetenv("PGHOST");
	unsetenv("PGHOSTADDR");
	unsetenv("PGPORT");
	unsetenv("PGSERVICE");
	unsetenv("PGCONNECT_TIMEOUT");
}

static void test_multi_host_uri_names_ips_and_sockets(void)
{
	struct obr_pg_target t;
	char err[128];
	clear_env();
	CHECK_INT_EQ(obr_pg_target_parse("postgresql://u:pw@db.example:5433,10.0.0.7:5434,[::1]:5435,%2Ftmp/app"
	                                 "?connect_timeout=1&sslmode=verify-full",
	                                 &t, err, sizeof(err)),
	             0);
	CHECK_INT_EQ(t.nhosts, 4);
	CHECK(t.hosts[0].lookup);
	CHECK(!t.hosts[1].lookup);  /* literal IPv4 */
	CHECK(!t.hosts[2].lookup);  /* literal IPv6 */
	CHECK(!t.hosts[3].lookup);  /* socket directory */
	CHECK_STR_EQ(t.hosts[3].host, "/tmp");
	CHECK(!t.single_port);
	CHECK_INT_EQ(t.connect_timeout_s, 2); /* libpq's minimum */
	CHECK(obr_pg_target_needs_lookup(&t));

	/* the name became two addresses: one entry each, host kept for TLS verification */
	struct obr_pg_host e[5] = {
		mk("db.example", "192.0.2.1", "5433"), mk("db.example", "2001:db8::1", "5433"), mk("10.0.0.7", "", "5434"),
		mk("::1", "", "5435"), mk("/tmp", "", "5432"),
	};
	char **keys, **vals;
	CHECK_INT_EQ(obr_pg_params_build(&t, e, 5, "outbox-relay work", &keys, &vals), 0);
	CHECK_STR_EQ(param(keys, vals, "host"), "db.example,db.example,10.0.0.7,::1,/tmp");
	CHECK_STR_EQ(param(keys, vals, "hostaddr"), "192.0.2.1,2001:db8::1,,,");
	CHECK_STR_EQ(param(keys, vals, "port"), "5433,5433,5434,5435,5432");
	CHECK_STR_EQ(param(keys, vals, "password"), "pw");
	CHECK_STR_EQ(param(keys, vals, "sslmode"), "verify-full");
	CHECK_STR_EQ(param(keys, vals, "dbname"), "app");
	CHECK_STR_EQ(param(keys, vals, "application_name"), "outbox-relay work");
	CHECK_STR_EQ(param(keys, vals, "tcp_user_timeout"), OBR_PG_TCP_USER_TIMEOUT_MS);
	CHECK_STR_EQ(param(keys, vals, "keepalives_idle"), "10");
	obr_pg_params_free(keys, vals);

	/* libpq reports where it is; an entry is found by name, port and address */
	CHECK_INT_EQ(obr_pg_host_find(e, 5, "db.example", "5433", "2001:db8::1"), 1);
	CHECK_INT_EQ(obr_pg_host_find(e, 5, "db.example", "5433", ""), 0);
	CHECK_INT_EQ(obr_pg_host_find(e, 5, "::1", "5435", "::1"), 3);
	CHECK_INT_EQ(obr_pg_host_find(e, 5, "other", "5433", ""), -1);
	clear_hosts(e, 5);
	obr_pg_target_free(&t);
}

static void test_user_settings_win_and_single_port_stays_single(void)
{
	struct obr_pg_target t;
	char err[128];
	clear_env();
	CHECK_INT_EQ(obr_pg_target_parse("host=a.example,b.example port=6432 tcp_user_timeout=5000 keepalives=0 "
	                                 "application_name=mine connect_timeout=0",
	                                 &t, err, sizeof(err)),
	             0);
	CHECK_INT_EQ(t.nhosts, 2);
	CHECK(t.single_port);
	CHECK_INT_EQ(t.connect_timeout_s, 0);
	struct obr_pg_host e[2] = { mk("a.example", "192.0.2.1", "6432"), mk("b.example", "192.0.2.2", "6432") };
	char **keys, **vals;
	CHECK_INT_EQ(obr_pg_params_build(&t, e, 2, "outbox-relay claim", &keys, &vals), 0);
	CHECK_STR_EQ(param(keys, vals, "port"), "6432");
	CHECK_STR_EQ(param(keys, vals, "tcp_user_timeout"), "5000");
	CHECK_STR_EQ(param(keys, vals, "keepalives"), "0");
	CHECK_STR_EQ(param(keys, vals, "application_name"), "outbox-relay claim");
	size_t apps = 0;
	for (size_t i = 0; keys[i]; i++)
		apps += !strcmp(keys[i], "application_name");
	CHECK_INT_EQ((int)apps, 1);
	obr_pg_params_free(keys, vals);
	clear_hosts(e, 2);
	obr_pg_target_free(&t);
}

static void test_nothing_to_look_up(void)
{
	struct obr_pg_target t;
	char err[128];
	clear_env();
	/* the user's own hostaddr: libpq needs no lookup */
	CHECK_INT_EQ(obr_pg_target_parse("host=db.example hostaddr=192.0.2.9 dbname=x", &t, err, sizeof(err)), 0);
	CHECK(!obr_pg_target_needs_lookup(&t));
	CHECK_STR_EQ(t.hosts[0].hostaddr, "192.0.2.9");
	obr_pg_target_free(&t);
	/* no host at all: libpq's default socket */
	CHECK_INT_EQ(obr_pg_target_parse("dbname=x", &t, err, sizeof(err)), 0);
	CHECK(!obr_pg_target_needs_lookup(&t));
	CHECK_INT_EQ(t.connect_timeout_s, OBR_PG_CONNECT_TIMEOUT_S);
	obr_pg_target_free(&t);
	/* a service file names hosts we cannot see: passed through to libpq */
	CHECK_INT_EQ(obr_pg_target_parse("service=mydb host=db.example", &t, err, sizeof(err)), 0);
	CHECK(t.passthrough);
	CHECK(!obr_pg_target_needs_lookup(&t));
	obr_pg_target_free(&t);
	/* counts libpq refuses: passed through, libpq says what is wrong */
	CHECK_INT_EQ(obr_pg_target_parse("host=a.example,b.example port=1,2,3", &t, err, sizeof(err)), 0);
	CHECK(t.passthrough);
	char **keys, **vals;
	CHECK_INT_EQ(obr_pg_params_build(&t, NULL, 0, "n", &keys, &vals), 0);
	CHECK_STR_EQ(param(keys, vals, "port"), "1,2,3");
	CHECK_STR_EQ(param(keys, vals, "host"), "a.example,b.example");
	obr_pg_params_free(keys, vals);
	obr_pg_target_free(&t);
}

static void test_environment_hosts_are_resolved_too(void)
{
	struct obr_pg_target t;
	char err[128];
	clear_env();
	setenv("PGHOST", "env.example", 1);
	setenv("PGPORT", "7000", 1);
	CHECK_INT_EQ(obr_pg_target_parse("dbname=x", &t, err, sizeof(err)), 0);
	clear_env();
	CHECK(obr_pg_target_needs_lookup(&t));
	CHECK_STR_EQ(t.hosts[0].host, "env.example");
	CHECK_STR_EQ(t.hosts[0].port, "7000");
	obr_pg_target_free(&t);
}

static void test_bad_string_is_refused_without_quoting_it(void)
{
	struct obr_pg_target t;
	char err[128];
	CHECK_INT_EQ(obr_pg_target_parse("postgresql://u:secret@h/db?nonsense_option=1", &t, err, sizeof(err)), -1);
	CHECK(strstr(err, "secret") == NULL);
}

static void test_hosts_file(void)
{
	char path[] = "/tmp/obr-test-hosts-XXXXXX";
	int fd = mkstemp(path);
	CHECK(fd >= 0);
	FILE *f = fdopen(fd, "w");
	fputs("# comment\n127.0.0.1 localhost\n10.1.2.3  db.internal  DB  # primary\n::1 localhost ip6-localhost\n"
	      "not-an-ip db.internal\n10.1.2.4 db.internal\n",
	      f);
	fclose(f);
	char addrs[4][OBR_PG_ADDR_LEN];
	int n = obr_pg_hosts_file_lookup(path, "db.internal", addrs, 4);
	CHECK_INT_EQ(n, 2);
	CHECK_STR_EQ(addrs[0], "10.1.2.3");
	CHECK_STR_EQ(addrs[1], "10.1.2.4");
	CHECK_INT_EQ(obr_pg_hosts_file_lookup(path, "localhost", addrs, 4), 2);
	CHECK_STR_EQ(addrs[1], "::1");
	CHECK_INT_EQ(obr_pg_hosts_file_lookup(path, "db", addrs, 1), 1); /* case-insensitive, bounded */
	CHECK_INT_EQ(obr_pg_hosts_file_lookup(path, "missing", addrs, 4), 0);
	unlink(path);
	CHECK_INT_EQ(obr_pg_hosts_file_lookup(path, "db.internal", addrs, 4), 0);
}

int main(int argc, char **argv)
{
	static const struct test tests[] = {
		TEST(test_multi_host_uri_names_ips_and_sockets),
		TEST(test_user_settings_win_and_single_port_stays_single),
		TEST(test_nothing_to_look_up),
		TEST(test_environment_hosts_are_resolved_too),
		TEST(test_bad_string_is_refused_without_quoting_it),
		TEST(test_hosts_file),
		TEST_END,
	};
	return run_tests(tests, argc, argv);
}
