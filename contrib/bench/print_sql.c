/*
 * print_sql - prints one of the relay's statements (src/relay/db/store.c) exactly as the relay
 * sends it, so it can be EXPLAINed or run by hand. Used by contrib/bench/scan.sh and by the
 * integration tests that check a statement's result directly.
 *
 *   print_sql scan | psql ...
 */
#include "db/store.h"

#include <stdio.h>
#include <string.h>

static const struct {
	const char *name;
	const char *sql;
} statements[] = {
	{ "claim", OBR_SQL_CLAIM },         { "advance", OBR_SQL_ADVANCE },
	{ "complete", OBR_SQL_COMPLETE },   { "complete_delete", OBR_SQL_COMPLETE_DELETE },
	{ "scan", OBR_SQL_SCAN },           { "renew", OBR_SQL_RENEW },
	{ "release_all", OBR_SQL_RELEASE_ALL }, { "sample", OBR_SQL_SAMPLE },
	{ "retention", OBR_SQL_RETENTION },
};

int main(int argc, char **argv)
{
	size_t n = sizeof(statements) / sizeof(statements[0]);
	for (size_t i = 0; argc == 2 && i < n; i++) {
		if (!strcmp(argv[1], statements[i].name)) {
			printf("%s\n", statements[i].sql);
			return 0;
		}
	}
	fprintf(stderr, "usage: print_sql NAME\nnames:");
	for (size_t i = 0; i < n; i++)
		fprintf(stderr, " %s", statements[i].name);
	fprintf(stderr, "\n");
	return 2;
}
