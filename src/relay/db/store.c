/*
 * store.c - the statements. Parameters are described above each one.
 */
#include "db/store.h"

/* When a row is due: the later of process_after and, once it failed, retry_after. The due-time
 * index (sql/005) is on exactly this expression. t is a table alias with its dot, or "". */
#define DUE_AT(t) "greatest(" t "process_after, coalesce(" t "retry_after, " t "process_after))"

/* Milliseconds from now until ts, clamped to [0, one day] before anything is subtracted: an
 * infinite timestamp (a row written before sql/007) or an extreme finite one then yields a
 * usable number instead of an error ("cannot subtract infinite timestamps") that would fail
 * the statement for every partition in it. A due timer a day away just makes a scan that
 * looks again. NULL stays NULL (no row: no timer). */
#define MS_UNTIL(ts) \
	"CASE WHEN (" ts ") IS NOT NULL THEN ceil(extract(epoch FROM " \
	"least(greatest(" ts ", now()), now() + interval '1 day') - now()) * 1000)::bigint END"

/* Milliseconds since the epoch of a row's created_at, for the latency histogram; an infinite
 * created_at (before sql/007) counts as now. */
#define CREATED_MS(t) \
	"floor(extract(epoch FROM CASE WHEN isfinite(" t "created_at) THEN " t "created_at ELSE now() END) * 1000)::bigint"

/*
 * A partition's first rows in delivery order; part is the outer partition.
 *
 * The claim reads them FOR SHARE: a statement that waited for a lock (its lease insert waits
 * for a concurrent claim of the same partition) still reads with the snapshot it started with,
 * in which the previous holder's last results may not be committed yet. A row lock that
 * conflicts with that UPDATE makes PostgreSQL follow the row to its latest version and check it
 * again (READ COMMITTED re-evaluation), so a row completed meanwhile is skipped instead of sent
 * again. (FOR KEY SHARE would not do: it does not conflict with a non-key UPDATE, so it locks
 * the old version without re-checking.) The lock lasts only for the statement; applications
 * insert rows and never update them. The advance reads partitions it already holds, which
 * nobody else completes, so it needs no lock.
 *
 * Its WHERE must not imply "process_after IS NOT NULL": that keeps the due-time index
 * (outbox_pending_due, sql/005) out of reach, so the rows come through a partition_key index
 * whatever the statistics say.
 */
#define HEADS_OF(part, limit, skip, lock) \
	"SELECT x.*, row_number() OVER (ORDER BY x.process_after, x.created_at, x.idempotent_key) AS rn FROM (" \
	"SELECT o.idempotent_key, o.destinations::text AS destinations, o.headers::text AS headers, o.payload, " \
	"       o.attempts, o.sent_destinations::text AS sent, " \
	"       " DUE_AT("o.") " <= now() AS due, " \
	"       " MS_UNTIL(DUE_AT("o.")) " AS due_in_ms, " \
	"       " CREATED_MS("o.") " AS created_ms, " \
	"       o.process_after, o.created_at " \
	"  FROM outbox o " \
	" WHERE o.partition_key = " part " AND o.processed_at IS NULL AND o.dead_at IS NULL" skip " " \
	" ORDER BY o.process_after, o.created_at, o.idempotent_key LIMIT " limit " " lock ") x"

/*
 * The byte budget (OUTBOX_FETCH_BYTES, less what the relay holds already): a row's data
 * (destinations, headers, payload) is returned only when it is due and the due rows before it
 * in the result came to less than the budget, so one statement returns at most the budget plus
 * one row, and at least its first due row unless the budget is 0. Past the budget the row
 * columns stay, the data columns are NULL (the relay fetches them later). Computed over the
 * result's own order (the window "w", ORDER BY partition, rn), so it costs no extra sort;
 * octet_length does not detoast.
 */
#define FETCHED(col, budget) \
	"CASE WHEN h.due AND coalesce(sum(CASE WHEN h.due THEN octet_length(h.destinations) + " \
	"octet_length(h.payload) + coalesce(octet_length(h.headers), 0) END) " \
	"OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) < " budget " THEN " col " END"

#define HEADS_COLUMNS(budget) \
	"h.idempotent_key, " FETCHED("h.destinations", budget) ", " FETCHED("h.headers", budget) ", " \
	FETCHED("h.payload", budget) ", h.attempts, h.sent, h.due, h.due_in_ms, h.created_ms"

/*
 * Claim: lease the given partitions and return each leased partition's first rows, in one
 * round trip. Free partitions get a new lease row; expired leases (a dead instance's) and our
 * own (after a reconnect) are taken over. A live lease of another instance is neither changed
 * nor locked (ON CONFLICT DO NOTHING, not DO UPDATE, which would lock it and could deadlock
 * with that instance's own statements): such partitions are simply absent from the result.
 * Rows are inserted in key order, so concurrent claims wait on each other without a cycle.
 * A lease ends clock_timestamp() + lease, here and in every renewal: the statement's now() is
 * when it started, and one that waited for a lock would write a lease shorter than the one the
 * relay counts from when it sent it.
 * $1 lock_id, $2 uuid[] partitions, $3 rows per partition, $4 lease ms, $5 byte budget
 */
const char OBR_SQL_CLAIM[] =
	"WITH p AS (SELECT DISTINCT k FROM unnest($2::uuid[]) AS k), "
	"took AS ("
	"  UPDATE outbox_lock SET lock_id = $1::uuid, processing_until = clock_timestamp() + $4::bigint * interval '1 millisecond' "
	"   WHERE ctid IN (SELECT ctid FROM outbox_lock WHERE partition_key IN (SELECT k FROM p) AND processed_at IS NULL "
	"                     AND (processing_until < now() OR lock_id = $1::uuid) ORDER BY partition_key FOR UPDATE) "
	"  RETURNING partition_key), "
	"inserted AS ("
	"  INSERT INTO outbox_lock (partition_key, lock_id, processing_until) "
	"  SELECT k, $1::uuid, clock_timestamp() + $4::bigint * interval '1 millisecond' "
	"    FROM p WHERE k NOT IN (SELECT partition_key FROM took) ORDER BY k "
	"  ON CONFLICT (partition_key) WHERE processed_at IS NULL DO NOTHING "
	"  RETURNING partition_key), "
	"leased AS (SELECT partition_key FROM took UNION ALL SELECT partition_key FROM inserted) "
	"SELECT l.partition_key::text, '" OBR_LEASE_HELD "', " HEADS_COLUMNS("$5::bigint")
	"  FROM leased l LEFT JOIN LATERAL (" HEADS_OF("l.partition_key", "$3", "", "FOR SHARE OF o") ") h ON true "
	" WINDOW w AS (ORDER BY l.partition_key, h.rn) "
	" ORDER BY l.partition_key, h.rn";

/*
 * Advance: for partitions we hold whose fetched rows are done, look again. A partition whose
 * head is due keeps its lease (renewed) and gets its next rows; any other is released in the
 * same statement, with its head's due time so the relay can arm a timer. A row committed after
 * this statement's snapshot was notified, and the relay claims its partition again.
 *
 * Lock order, here and in complete: the partitions' lease rows first, in key order (the
 * "leases" CTE; "(SELECT count(*) FROM leases) >= 0" is always true and makes a modification
 * wait for it), outbox rows after. A claim also locks leases in key order before it reads rows
 * FOR SHARE, so a claim taking over an expired lease never waits on these in a cycle.
 * $1 lock_id, $2 uuid[] partitions, $3 rows per partition, $4 lease ms, $5 byte budget
 */
#define LEASES_FIRST(parts) \
	"leases AS MATERIALIZED (SELECT partition_key FROM outbox_lock " \
	"         WHERE partition_key = ANY(" parts "::uuid[]) AND processed_at IS NULL ORDER BY partition_key FOR UPDATE), "
#define AFTER_LEASES " AND (SELECT count(*) FROM leases) >= 0 "

#define ADVANCE(lock_id, parts, limit, lease, skip, budget) \
	"h AS (" \
	"  SELECT p.k, x.* FROM (SELECT DISTINCT k FROM unnest(" parts "::uuid[]) AS k) p " \
	"  LEFT JOIN LATERAL (" HEADS_OF("p.k", limit, skip, "") ") x ON true), " \
	"decide AS (SELECT k, coalesce(bool_or(rn = 1 AND due), false) AS keep FROM h GROUP BY k), " \
	"rel AS (DELETE FROM outbox_lock l USING decide d " \
	"         WHERE NOT d.keep AND l.partition_key = d.k AND l.lock_id = " lock_id "::uuid AND l.processed_at IS NULL " \
	AFTER_LEASES "RETURNING l.partition_key), " \
	"ren AS (UPDATE outbox_lock l SET processing_until = clock_timestamp() + " lease "::bigint * interval '1 millisecond' FROM decide d " \
	"         WHERE d.keep AND l.partition_key = d.k AND l.lock_id = " lock_id "::uuid AND l.processed_at IS NULL " \
	AFTER_LEASES "RETURNING l.partition_key) " \
	"(SELECT h.k::text, CASE WHEN ren.partition_key IS NOT NULL THEN '" OBR_LEASE_HELD "' " \
	"                        WHEN rel.partition_key IS NOT NULL THEN '" OBR_LEASE_RELEASED "' " \
	"                        ELSE '" OBR_LEASE_LOST "' END, " HEADS_COLUMNS(budget "::bigint") \
	"  FROM h LEFT JOIN rel ON rel.partition_key = h.k LEFT JOIN ren ON ren.partition_key = h.k " \
	" WINDOW w AS (ORDER BY h.k, h.rn) " \
	" ORDER BY h.k, h.rn)"

const char OBR_SQL_ADVANCE[] = "WITH " LEASES_FIRST("$2") ADVANCE("$1", "$2", "$3", "$4", "", "$5");

/*
 * Complete: the results of delivered rows, successes and failures, in one statement, and the
 * advance of the partitions those rows leave with nothing fetched (the common case at low
 * rates: one round trip and one commit per row instead of two). A failed row keeps its place
 * (process_after is never touched, unlike the crate): its retry_after blocks the partition until
 * the retry, or dead_at parks it.
 *
 * The advance reads with the statement's snapshot, in which this statement's own results are
 * not visible: the rows written here are left out of its heads by key. (The relay advances a
 * partition here only after a success or a parking, never after a retry: the row waiting for its
 * retry must stay the head.) Lock order as in the advance.
 *
 * Re-read: a partition whose row moved on here (delivered or parked) but whose head now sorts
 * before that row got a row in front of the rows the relay already fetched: a parked row was
 * requeued (it keeps its place), or a transaction committed late. Such a partition, unless it
 * is advanced here anyway, gets one more result row: lease OBR_LEASE_REREAD and NULL row
 * columns. The relay must then drop its fetched rows of that partition and advance it before
 * starting another of its rows, so the partition's current head goes first. One index descent
 * per row that moved on.
 *
 * $1 uuid[] delivered; failures as parallel arrays: $2 uuid[] key, $3 text[] error,
 * $4 bigint[] retry delay ms, $5 bool[] park, $6 text[] sent_destinations (int[] literals),
 * $7 bool[] counts as an attempt, $13 bigint[] the row's attempts when it was fetched; $8
 * lock_id, $9 uuid[] partitions to advance, $10 rows per partition, $11 lease ms, $12 byte
 * budget. The result is the advance's (no rows when $9 is empty), then the re-read rows.
 *
 * Written once: a statement that committed but whose answer was lost with its connection is
 * sent again after the reconnect. A delivered row is then already processed; a failed one
 * has moved past the attempts it was fetched with, so its failure is not counted twice.
 */
#define MOVED_COLUMNS "o.partition_key, o.process_after, o.created_at, o.idempotent_key"
#define NOT_WRITTEN_HERE(t) " AND " t "idempotent_key <> ALL($1::uuid[]) AND " t "idempotent_key <> ALL($2::uuid[])"

#define REREAD_ROWS \
	" UNION ALL " \
	"SELECT m.partition_key::text, '" OBR_LEASE_REREAD "', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL " \
	"  FROM (SELECT * FROM done UNION ALL SELECT " MOVED_COLUMNS " FROM failed o WHERE o.park) m " \
	" WHERE m.partition_key <> ALL($9::uuid[]) " \
	"   AND (SELECT (n.process_after, n.created_at, n.idempotent_key) FROM outbox n " \
	"         WHERE n.partition_key = m.partition_key AND n.processed_at IS NULL AND n.dead_at IS NULL" \
	NOT_WRITTEN_HERE("n.") \
	"         ORDER BY n.process_after, n.created_at, n.idempotent_key LIMIT 1) " \
	"       < (m.process_after, m.created_at, m.idempotent_key)"

#define COMPLETE_FAILED \
	"failed AS (UPDATE outbox o SET attempts = o.attempts + f.counted::int, last_error = f.err, " \
	"       retry_after = CASE WHEN f.park THEN NULL ELSE now() + f.delay_ms * interval '1 millisecond' END, " \
	"       dead_at = CASE WHEN f.park THEN now() END, sent_destinations = f.sent::int[] " \
	"  FROM unnest($2::uuid[], $3::text[], $4::bigint[], $5::bool[], $6::text[], $7::bool[], $13::bigint[]) " \
	"       AS f(key, err, delay_ms, park, sent, counted, attempts) " \
	" WHERE o.idempotent_key = f.key AND (o.processed_at IS NULL) IS TRUE AND o.attempts = f.attempts" AFTER_LEASES \
	"RETURNING " MOVED_COLUMNS ", f.park), " \
	ADVANCE("$8", "$9", "$10", "$11", NOT_WRITTEN_HERE("o."), "$12") REREAD_ROWS

/* The rows are found through the primary key (a join with the unnested keys). "(processed_at
 * IS NULL) IS TRUE" keeps the planner from matching the partial pending-row indexes, which it
 * would otherwise walk whole when its statistics say nothing is pending (a table of mostly
 * processed rows, then a backlog). */
const char OBR_SQL_COMPLETE[] =
	"WITH " LEASES_FIRST("$9")
	"done AS (UPDATE outbox o SET processed_at = now(), attempts = o.attempts + 1, retry_after = NULL "
	"           FROM unnest($1::uuid[]) AS d(key) "
	"          WHERE o.idempotent_key = d.key AND (o.processed_at IS NULL) IS TRUE" AFTER_LEASES
	"         RETURNING " MOVED_COLUMNS "), "
	COMPLETE_FAILED;

const char OBR_SQL_COMPLETE_DELETE[] =
	"WITH " LEASES_FIRST("$9")
	"done AS (DELETE FROM outbox o WHERE o.idempotent_key = ANY($1::uuid[])" AFTER_LEASES
	"         RETURNING " MOVED_COLUMNS "), "
	COMPLETE_FAILED;

/*
 * Scan (fallback poll, catch-up after a connect, due timer): partitions whose head is due and
 * that no live lease holds, oldest first; then one row (NULL partition) with the milliseconds
 * until the next row becomes due, for the due timer. Our own leases do not hide a partition: a
 * release lost in a PostgreSQL crash comes back as ours, and the relay (which holds nothing
 * locally for it) claims it again at once.
 *
 * It never reads every pending row (DISTINCT ON over them did: 2 s per scan with a million
 * delayed rows; contrib/bench). A partition whose head is due has a due row (its head), so:
 * - up to SCAN_DUE_ROWS due rows: their partitions, from the due-time index
 *   (outbox_pending_due, oldest first), are the only candidates; each one's head is one descent
 *   of the partition index. Cost: the due rows, however many rows are delayed.
 * - more due rows than that: a skip scan over every partition with pending rows. Each step of
 *   the recursive CTE descends the partition index (outbox_pending_by_partition, in delivery
 *   order) once, to the next partition_key's first pending row, which is its head. Cost: the
 *   partitions, not their rows (10,000 partitions: 10,000 descents, whatever their rows).
 * Only one of the two runs: the other is behind a one-time filter. The next due time is one
 * descent of the due-time index.
 * $1 limit, $2 lock_id
 */
#define SCAN_DUE_ROWS "1024"

#define PENDING_HEAD_OF(cond) \
	"SELECT o.partition_key, o.process_after, o.retry_after FROM outbox o " \
	" WHERE o.processed_at IS NULL AND o.dead_at IS NULL" cond \
	" ORDER BY o.partition_key, o.process_after, o.created_at, o.idempotent_key LIMIT 1"

#define PENDING_DUE(cmp) \
	"processed_at IS NULL AND dead_at IS NULL AND process_after IS NOT NULL AND " DUE_AT("") " " cmp " now()"

const char OBR_SQL_SCAN[] =
	"WITH RECURSIVE "
	"due_rows AS MATERIALIZED (SELECT partition_key AS k FROM outbox WHERE " PENDING_DUE("<=")
	"  ORDER BY " DUE_AT("") " LIMIT " SCAN_DUE_ROWS " + 1), "
	"walk (k, process_after, retry_after) AS ("
	"  (" PENDING_HEAD_OF("") ") "
	"  UNION ALL "
	"  SELECT n.* FROM walk w CROSS JOIN LATERAL (" PENDING_HEAD_OF(" AND o.partition_key > w.k") ") n), "
	"heads (k, process_after, retry_after) AS ("
	"  SELECT x.* FROM (SELECT DISTINCT k FROM due_rows) c "
	"   CROSS JOIN LATERAL (" PENDING_HEAD_OF(" AND o.partition_key = c.k") ") x "
	"   WHERE (SELECT count(*) FROM due_rows) <= " SCAN_DUE_ROWS
	"  UNION ALL "
	"  SELECT * FROM walk WHERE (SELECT count(*) FROM due_rows) > " SCAN_DUE_ROWS ") "
	"(SELECT h.k::text, NULL::bigint FROM heads h "
	"  WHERE " DUE_AT("h.") " <= now() "
	"    AND NOT EXISTS (SELECT 1 FROM outbox_lock l WHERE l.partition_key = h.k AND l.processed_at IS NULL "
	"                       AND l.processing_until >= now() AND l.lock_id <> $2::uuid) "
	"  ORDER BY h.process_after LIMIT $1::int) "
	"UNION ALL "
	"SELECT NULL, (SELECT " MS_UNTIL("m") " FROM (SELECT min(" DUE_AT("") ") AS m FROM outbox "
	"               WHERE " PENDING_DUE(">") ") s)";

/* Renew every lease of this instance; the result is the set still held. Rows are locked in key
 * order, as a claim locks the expired leases it takes over: the two never deadlock.
 * $1 lock_id, $2 lease ms */
const char OBR_SQL_RENEW[] =
	"UPDATE outbox_lock SET processing_until = clock_timestamp() + $2::bigint * interval '1 millisecond' "
	" WHERE ctid IN (SELECT ctid FROM outbox_lock WHERE lock_id = $1::uuid AND processed_at IS NULL "
	"                 ORDER BY partition_key FOR UPDATE) "
	"RETURNING partition_key::text";

/*
 * Linger probe: the heads of partitions we hold with nothing fetched (OUTBOX_LINGER_MS), in
 * one read-only statement: no lock, no lease written, no commit to wait for. Only partitions
 * with a pending row and still leased to us are in the result (a lease lost meanwhile is for
 * the renewal to find); its rows are those of the claim, under the lease already held.
 * $1 lock_id, $2 uuid[] partitions, $3 rows per partition, $4 byte budget
 */
const char OBR_SQL_PROBE[] =
	"SELECT p.k::text, '" OBR_LEASE_HELD "', " HEADS_COLUMNS("$4::bigint")
	"  FROM (SELECT DISTINCT k FROM unnest($2::uuid[]) AS k) p "
	"  JOIN outbox_lock l ON l.partition_key = p.k AND l.processed_at IS NULL AND l.lock_id = $1::uuid "
	"  CROSS JOIN LATERAL (" HEADS_OF("p.k", "$3", "", "") ") h "
	" WINDOW w AS (ORDER BY p.k, h.rn) "
	" ORDER BY p.k, h.rn";

/*
 * Last look after releases (sql/010: a writer skips its NOTIFY while the partition's lease is
 * live, so a row it commits after the release committed was seen by nobody). Sent on the
 * connection that released, so after those releases committed: its snapshot "cur" then counts
 * every writer that could have skipped as ended or in progress. Partitions "waiting" on an
 * earlier such snapshot ($1) are looked at once every transaction in progress in it has ended;
 * "fresh" ones ($3, released since) at once when nothing at all is in progress, otherwise they
 * wait on "cur". The first row (NULL partition): $1 done, cur done, cur as text. Then one row
 * per looked-at partition with pending rows: the milliseconds until its head is due.
 * $1 text snapshot or NULL, $2 uuid[] waiting, $3 uuid[] fresh
 */
const char OBR_SQL_LASTLOOK[] =
	"WITH cur AS MATERIALIZED (SELECT pg_current_snapshot() AS s), "
	"gate AS MATERIALIZED (SELECT "
	"  NOT EXISTS (SELECT 1 FROM pg_snapshot_xip($1::text::pg_snapshot) x WHERE NOT pg_visible_in_snapshot(x, c.s)) AS old_done, "
	"  NOT EXISTS (SELECT 1 FROM pg_snapshot_xip(c.s)) AS new_done, c.s::text AS snap FROM cur c), "
	"look AS (SELECT k FROM unnest($2::uuid[]) AS k WHERE (SELECT old_done FROM gate) "
	"         UNION SELECT k FROM unnest($3::uuid[]) AS k WHERE (SELECT new_done FROM gate)) "
	"SELECT NULL::text, g.old_done, g.new_done, g.snap, NULL::bigint FROM gate g "
	"UNION ALL "
	"SELECT l.k::text, NULL, NULL, NULL, " MS_UNTIL("h.due_at") " FROM look l "
	"  CROSS JOIN LATERAL (SELECT " DUE_AT("o.") " AS due_at FROM outbox o "
	"   WHERE o.partition_key = l.k AND o.processed_at IS NULL AND o.dead_at IS NULL "
	"   ORDER BY o.process_after, o.created_at, o.idempotent_key LIMIT 1) h "
	" WHERE h.due_at IS NOT NULL";

/* Shutdown: give back every lease of this instance, and NOTIFY each partition: a writer that
 * skipped its NOTIFY under our lease (sql/010) may still commit, and we will not look again;
 * another instance that claims the partition does, when it releases it. The result is the
 * number of leases released. $1 lock_id, $2 channel */
const char OBR_SQL_RELEASE_ALL[] =
	"WITH d AS (DELETE FROM outbox_lock WHERE lock_id = $1::uuid AND processed_at IS NULL RETURNING partition_key) "
	"SELECT count(pg_notify($2::text, partition_key::text)) FROM d";

/* The gauges behind /metrics, sampled every few seconds (never per scrape): due rows and the
 * age of the oldest (a '-infinity' process_after, possible in rows older than sql/007, is left
 * out of the age), from the partial index of pending rows; the notification queue's fill; the
 * sessions waiting for the cluster-wide lock that every committing transaction which notified
 * takes (held through its WAL flush): the first sign that notifying writers queue on it. */
const char OBR_SQL_SAMPLE[] =
	"SELECT count(*), coalesce(extract(epoch FROM now() - min(process_after) FILTER (WHERE isfinite(process_after))), 0)::float8, "
	"       pg_notification_queue_usage(), "
	"       (SELECT count(*) FROM pg_locks WHERE locktype = 'object' AND classid = 'pg_database'::regclass "
	"           AND objid = 0 AND NOT granted) "
	"  FROM outbox WHERE processed_at IS NULL AND dead_at IS NULL AND process_after IS NOT NULL "
	"   AND " DUE_AT("") " <= now()";

/*
 * Retention: delete one bounded batch of processed rows older than the retention, and released
 * lease rows (left by the crate's scheduled mode). At most one instance works at a time: the
 * transaction-scoped advisory lock is taken inside the statement, so it works through poolers
 * too; an instance that does not get it deletes nothing. SKIP LOCKED and the small batches keep
 * locks short. $1 retention ms, $2 batch size
 */
const char OBR_SQL_RETENTION[] =
	"WITH lock AS MATERIALIZED (SELECT pg_try_advisory_xact_lock(7957355443025064307) AS got), "
	"old AS (SELECT idempotent_key FROM outbox "
	"         WHERE processed_at < now() - $1::bigint * interval '1 millisecond' AND (SELECT got FROM lock) "
	"         ORDER BY processed_at LIMIT $2::int FOR UPDATE SKIP LOCKED), "
	"del AS (DELETE FROM outbox o USING old WHERE o.idempotent_key = old.idempotent_key RETURNING 1), "
	"old_leases AS (SELECT ctid FROM outbox_lock WHERE processed_at IS NOT NULL AND (SELECT got FROM lock) "
	"                LIMIT $2::int FOR UPDATE SKIP LOCKED), "
	"del_leases AS (DELETE FROM outbox_lock l USING old_leases WHERE l.ctid = old_leases.ctid RETURNING 1) "
	"SELECT (SELECT got FROM lock), (SELECT count(*) FROM del), (SELECT count(*) FROM del_leases)";
