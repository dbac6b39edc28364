/*
 * migrate.h - `outbox-relay migrate`: applies the numbered sql/ migrations (embedded in the
 * binary at build time) that the database has not recorded yet.
 *
 * Everything runs in one transaction that first takes a transaction-scoped advisory lock, so
 * two migrate runs at the same moment apply each migration once and never interleave; a failure
 * rolls back the whole run.
 */
#ifndef OBR_MIGRATE_H
#define OBR_MIGRATE_H

struct obr_migration {
	int version;
	const char *name;
	const char *sql;
};

extern const struct obr_migration obr_migrations[];
extern const int obr_migration_count;

/* Returns the process exit code. Messages go to the log. */
int obr_migrate(const char *conninfo);

#endif
