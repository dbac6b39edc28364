/*
 * bench-producer: the benchmark's writers (libpq, one connection per thread).
 *
 *   bench-producer MODE --db CONNINFO [options]
 *
 * Every transaction is one pipeline round trip: BEGIN, the INSERT (a prepared statement),
 * optionally a bare pg_notify, COMMIT, Sync. The commit time of a row is CLOCK_REALTIME when
 * the COMMIT's result is back in the client. A row's payload is {"p":P,"s":S,"t":T}: partition
 * index, sequence within the partition (1, 2, ...), client insert time in microseconds. The
 * partition key of index P is b0b0b0b0-0000-7000-8000-<P as 12 hex digits>. Partitions are
 * owned by one thread each, so a partition's sequence is its commit order.
 *
 * Modes:
 *   latency   --rate R --seconds S [--conns C]   open loop: row i is due at t0 + i/R, on
 *             connection i mod C, partition i mod P (P is rounded to a multiple of C)
 *   fill      --rows N [--batch B]               N rows, B per transaction (one multi-row
 *             INSERT), row j in partition j mod P
 *   sustained --seconds S [--writers W]          W closed-loop writers of single-row
 *             transactions, writer w on the partitions p with p mod W = w
 *   cost      --table plain|notify|clone|clone_notify|rowtrig|outbox --seconds S [--clients N]
 *             [--rows-per-tx K] [--tx-partitions M]
 *             INSERT+COMMIT rate. plain: bench_plain, no trigger; notify: bench_plain plus one
 *             pg_notify per transaction; clone: bench_clone (the outbox's columns and indexes, no
 *             trigger); clone_notify: bench_clone plus one pg_notify per transaction; rowtrig: bench_rowtrig (the
 *             outbox's columns and indexes with a FOR EACH ROW trigger that notifies every row's
 *             partition, the obvious alternative to the outbox's statement trigger); outbox: the
 *             outbox and its trigger. A K-row transaction spreads its rows over M partitions. A listener
 *             (LISTEN outbox, LISTEN bench) counts the notifications that arrive.
 * Common: --partitions P (100), --url URL (the rows' destination), --out FILE (one line per
 * committed row: "p s insert_us commit_us"), --via insert|enqueue|enqueue_http (single-row
 * transactions into the outbox: a plain INSERT (the default), or the same row through the SQL
 * helper outbox_enqueue(), or outbox_enqueue_http() with the same URL and header).
 * Prints one line of key=value results on stdout.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

enum mode { M_LATENCY, M_FILL, M_SUSTAINED, M_COST };
enum table { T_PLAIN, T_NOTIFY, T_CLONE, T_CLONE_NOTIFY, T_ROWTRIG, T_OUTBOX };
enum via { V_INSERT, V_ENQUEUE, V_ENQUEUE_HTTP };

struct rec {
	int p;
	int64_t s, t_ins, t_commit;
};

struct opts {
	enum mode mode;
	const char *db, *url, *out;
	int partitions, conns, batch, rows_per_tx, tx_partitions;
	double rate, seconds;
	long rows;
	enum table table;
	enum via via;
};

static struct opts o = { .partitions = 100, .conns = 4, .batch = 100, .rows_per_tx = 1, .tx_partitions = 1,
	                 .rate = 200, .seconds = 10, .rows = 20000, .url = "http://127.0.0.1:9/hook" };

static char *destinations;      /* the rows' destinations (JSON text) */
static int64_t *seqs;           /* per partition; each partition is owned by one thread */
static atomic_bool stop_flag;
static atomic_long errors;

struct thread {
	pthread_t tid;
	int id, nthreads;
	PGconn *conn;
	struct rec *recs;
	size_t nrecs, cap;
	long tx, rows;
	double behind_max_ms;
	unsigned rnd;
	uint32_t key_counter;
};

static int64_t real_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static double mono_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_until(double t)
{
	struct timespec ts = { (time_t)t, (long)((t - (double)(time_t)t) * 1e9) };
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL))
		;
}

static void partition_key(int p, char out[37])
{
	snprintf(out, 37, "b0b0b0b0-0000-7000-8000-%012x", (unsigned)p);
}

/* A time-ordered key: 48 bits of milliseconds, then thread, pid and a counter. */
static void idem_key(struct thread *t, char out[37])
{
	uint64_t ms = (uint64_t)(real_us() / 1000);
	uint32_t c = ++t->key_counter;
	snprintf(out, 37, "%08x-%04x-7%03x-8%03x-%04x%08x", (unsigned)(ms >> 16), (unsigned)(ms & 0xffff),
	         (unsigned)(t->id & 0xfff), (unsigned)(getpid() & 0xfff), (unsigned)((getpid() >> 12) & 0xffff), c);
}

static PGconn *connect_db(void)
{
	PGconn *c = PQconnectdb(o.db);
	if (PQstatus(c) != CONNECTION_OK) {
		fprintf(stderr, "bench-producer: connect: %s", PQerrorMessage(c));
		exit(1);
	}
	return c;
}

static const char *table_name(void)
{
	switch (o.table) {
	case T_PLAIN:
	case T_NOTIFY:
		return "bench_plain";
	case T_CLONE:
	case T_CLONE_NOTIFY:
		return "bench_clone";
	case T_ROWTRIG:
		return "bench_rowtrig";
	default:
		return "outbox";
	}
}

/* The third parameter of ins1: the destinations, or for outbox_enqueue_http() the URL. */
static const char *third_param(void)
{
	return o.via == V_ENQUEUE_HTTP ? o.url : destinations;
}

static void prepare(struct thread *t)
{
	char sql[512];
	const char *tab = o.mode == M_COST ? table_name() : "outbox";
	/* the same four parameters in every form (typed: outbox_enqueue_http() does not take $1) */
	static const Oid types[4] = { 2950 /* uuid */, 2950, 25 /* text */, 25 };
	if (o.via == V_ENQUEUE)
		snprintf(sql, sizeof(sql), "SELECT outbox_enqueue($2, $3::jsonb, $4, NULL, NULL, $1)");
	else if (o.via == V_ENQUEUE_HTTP)
		snprintf(sql, sizeof(sql),
		         "SELECT outbox_enqueue_http($2, $3, $4, 'POST', '{\"Content-Type\": \"application/json\"}')");
	else
		snprintf(sql, sizeof(sql),
		         "INSERT INTO %s (idempotent_key, partition_key, destinations, payload) VALUES ($1, $2, $3::jsonb, $4)",
		         tab);
	PGresult *r = PQprepare(t->conn, "ins1", sql, 4, types);
	if (PQresultStatus(r) != PGRES_COMMAND_OK) {
		fprintf(stderr, "bench-producer: prepare: %s", PQerrorMessage(t->conn));
		exit(1);
	}
	PQclear(r);
	snprintf(sql, sizeof(sql),
	         "INSERT INTO %s (idempotent_key, partition_key, destinations, payload) "
	         "SELECT u.k, u.p, $3::jsonb, u.pl FROM unnest($1::uuid[], $2::uuid[], $4::text[]) AS u(k, p, pl)",
	         tab);
	r = PQprepare(t->conn, "insn", sql, 4, NULL);
	if (PQresultStatus(r) != PGRES_COMMAND_OK) {
		fprintf(stderr, "bench-producer: prepare: %s", PQerrorMessage(t->conn));
		exit(1);
	}
	PQclear(r);
	/* warm the connection's caches (plans, catalog, trigger) with a rolled-back insert */
	char key[37], pk[37];
	idem_key(t, key);
	partition_key(0, pk);
	const char *vals[4] = { key, pk, third_param(), "{}" };
	PQclear(PQexec(t->conn, "BEGIN"));
	r = PQexecPrepared(t->conn, "ins1", 4, vals, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) { /* INSERT, or a helper's SELECT */
		fprintf(stderr, "bench-producer: warm-up insert: %s", PQerrorMessage(t->conn));
		exit(1);
	}
	PQclear(r);
	PQclear(PQexec(t->conn, "ROLLBACK"));
	if (!PQenterPipelineMode(t->conn)) {
		fprintf(stderr, "bench-producer: pipeline mode: %s", PQerrorMessage(t->conn));
		exit(1);
	}
}

static void push_rec(struct thread *t, int p, int64_t s, int64_t t_ins)
{
	if (!o.out)
		return;
	if (t->nrecs == t->cap) {
		t->cap = t->cap ? t->cap * 2 : 4096;
		t->recs = realloc(t->recs, t->cap * sizeof(*t->recs));
		if (!t->recs) {
			fprintf(stderr, "bench-producer: out of memory\n");
			exit(1);
		}
	}
	t->recs[t->nrecs++] = (struct rec){ p, s, t_ins, 0 };
}

/* Appends s to an array literal as a quoted element. */
static void arr_add(char **buf, size_t *len, size_t *cap, const char *s, bool first)
{
	size_t need = *len + strlen(s) * 2 + 8;
	if (need > *cap) {
		while (*cap < need)
			*cap = *cap ? *cap * 2 : 4096;
		*buf = realloc(*buf, *cap);
		if (!*buf)
			exit(1);
	}
	char *q = *buf + *len;
	if (!first)
		*q++ = ',';
	*q++ = '"';
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			*q++ = '\\';
		*q++ = *s;
	}
	*q++ = '"';
	*q = '\0';
	*len = (size_t)(q - *buf);
}

/*
 * One transaction of n rows, rows i in partitions parts[i], in one pipeline round trip.
 * Records the commit time of its rows. Returns 0 or -1.
 */
static int transaction(struct thread *t, int n, const int *parts, const char *notify_partition)
{
	char key[37], pk[37], payload[128];
	size_t first_rec = t->nrecs;
	if (!PQsendQueryParams(t->conn, "BEGIN", 0, NULL, NULL, NULL, NULL, 0))
		goto fail;
	if (n == 1) {
		int64_t now = real_us();
		int p = parts[0];
		int64_t s = ++seqs[p];
		idem_key(t, key);
		partition_key(p, pk);
		snprintf(payload, sizeof(payload), "{\"p\":%d,\"s\":%" PRId64 ",\"t\":%" PRId64 "}", p, s, now);
		const char *vals[4] = { key, pk, third_param(), payload };
		if (!PQsendQueryPrepared(t->conn, "ins1", 4, vals, NULL, NULL, 0))
			goto fail;
		push_rec(t, p, s, now);
	} else {
		static __thread char *a[3];
		static __thread size_t cap[3];
		size_t len[3] = { 0, 0, 0 };
		for (int k = 0; k < 3; k++) {
			if (!a[k]) {
				cap[k] = 4096;
				a[k] = malloc(cap[k]);
				if (!a[k])
					exit(1);
			}
			a[k][0] = '{';
			a[k][1] = '\0';
			len[k] = 1;
		}
		for (int i = 0; i < n; i++) {
			int64_t now = real_us();
			int p = parts[i];
			int64_t s = ++seqs[p];
			idem_key(t, key);
			partition_key(p, pk);
			snprintf(payload, sizeof(payload), "{\"p\":%d,\"s\":%" PRId64 ",\"t\":%" PRId64 "}", p, s, now);
			arr_add(&a[0], &len[0], &cap[0], key, i == 0);
			arr_add(&a[1], &len[1], &cap[1], pk, i == 0);
			arr_add(&a[2], &len[2], &cap[2], payload, i == 0);
			push_rec(t, p, s, now);
		}
		for (int k = 0; k < 3; k++) { /* arr_add leaves room for the closing brace */
			a[k][len[k]++] = '}';
			a[k][len[k]] = '\0';
		}
		const char *vals[4] = { a[0], a[1], destinations, a[2] };
		if (!PQsendQueryPrepared(t->conn, "insn", 4, vals, NULL, NULL, 0))
			goto fail;
	}
	if (notify_partition) {
		const char *vals[1] = { notify_partition };
		if (!PQsendQueryParams(t->conn, "SELECT pg_notify('bench', $1)", 1, NULL, vals, NULL, NULL, 0))
			goto fail;
	}
	if (!PQsendQueryParams(t->conn, "COMMIT", 0, NULL, NULL, NULL, NULL, 0) || !PQpipelineSync(t->conn))
		goto fail;
	bool bad = false;
	for (;;) {
		PGresult *r = PQgetResult(t->conn);
		if (!r)
			continue; /* end of one statement's results */
		ExecStatusType st = PQresultStatus(r);
		if (st == PGRES_PIPELINE_SYNC) {
			PQclear(r);
			break;
		}
		if (st == PGRES_FATAL_ERROR || st == PGRES_PIPELINE_ABORTED) {
			if (!bad)
				fprintf(stderr, "bench-producer: %s", PQresultErrorMessage(r));
			bad = true;
		}
		PQclear(r);
	}
	int64_t committed = real_us();
	if (bad) {
		t->nrecs = first_rec;
		atomic_fetch_add(&errors, 1);
		return -1;
	}
	for (size_t i = first_rec; i < t->nrecs; i++)
		t->recs[i].t_commit = committed;
	t->tx++;
	t->rows += n;
	return 0;
fail:
	fprintf(stderr, "bench-producer: send: %s", PQerrorMessage(t->conn));
	exit(1);
}

static double t_start;

static void *latency_thread(void *arg)
{
	struct thread *t = arg;
	long total = (long)(o.rate * o.seconds);
	for (long i = t->id; i < total; i += t->nthreads) {
		double due = t_start + (double)i / o.rate;
		double now = mono_s();
		if (now < due)
			sleep_until(due);
		else if ((now - due) * 1000 > t->behind_max_ms)
			t->behind_max_ms = (now - due) * 1000;
		int p = (int)(i % o.partitions);
		transaction(t, 1, &p, NULL);
	}
	return NULL;
}

static void *sustained_thread(void *arg)
{
	struct thread *t = arg;
	int mine = (o.partitions - t->id + t->nthreads - 1) / t->nthreads; /* partitions p = id + k*W */
	for (long k = 0; !atomic_load(&stop_flag); k++) {
		int p = t->id + (int)(k % mine) * t->nthreads;
		transaction(t, 1, &p, NULL);
	}
	return NULL;
}

static void *cost_thread(void *arg)
{
	struct thread *t = arg;
	int *parts = malloc(sizeof(int) * (size_t)o.rows_per_tx);
	char pk[37];
	if (!parts)
		exit(1);
	while (!atomic_load(&stop_flag)) {
		int base = (int)(rand_r(&t->rnd) % (unsigned)o.partitions);
		for (int i = 0; i < o.rows_per_tx; i++)
			parts[i] = (base + i % o.tx_partitions) % o.partitions;
		partition_key(base, pk);
		transaction(t, o.rows_per_tx, parts,
		            o.table == T_NOTIFY || o.table == T_CLONE_NOTIFY ? pk : NULL);
	}
	free(parts);
	return NULL;
}

/* Counts the notifications that reach a listener while the writers run. */
struct listener {
	pthread_t tid;
	PGconn *conn;
	long count;
	atomic_bool done;
};

static void *listener_thread(void *arg)
{
	struct listener *l = arg;
	int fd = PQsocket(l->conn);
	for (;;) {
		struct pollfd pfd = { fd, POLLIN, 0 };
		poll(&pfd, 1, 50);
		PQconsumeInput(l->conn);
		PGnotify *n;
		while ((n = PQnotifies(l->conn)) != NULL) {
			l->count++;
			PQfreemem(n);
		}
		if (atomic_load(&l->done) && !(pfd.revents & POLLIN))
			break;
	}
	return NULL;
}

static void write_out(struct thread *th, int n)
{
	if (!o.out)
		return;
	FILE *f = fopen(o.out, "w");
	if (!f) {
		perror(o.out);
		exit(1);
	}
	for (int i = 0; i < n; i++)
		for (size_t j = 0; j < th[i].nrecs; j++) {
			const struct rec *r = &th[i].recs[j];
			fprintf(f, "%d %" PRId64 " %" PRId64 " %" PRId64 "\n", r->p, r->s, r->t_ins, r->t_commit);
		}
	if (fclose(f)) {
		perror(o.out);
		exit(1);
	}
}

static void usage(void)
{
	fprintf(stderr, "usage: bench-producer latency|fill|sustained|cost --db CONNINFO [options] (see producer.c)\n");
	exit(2);
}

int main(int argc, char **argv)
{
	if (argc < 2)
		usage();
	if (!strcmp(argv[1], "latency"))
		o.mode = M_LATENCY;
	else if (!strcmp(argv[1], "fill"))
		o.mode = M_FILL;
	else if (!strcmp(argv[1], "sustained"))
		o.mode = M_SUSTAINED;
	else if (!strcmp(argv[1], "cost"))
		o.mode = M_COST;
	else
		usage();
	for (int i = 2; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!v)
			usage();
		i++;
		if (!strcmp(a, "--db"))
			o.db = v;
		else if (!strcmp(a, "--url"))
			o.url = v;
		else if (!strcmp(a, "--out"))
			o.out = v;
		else if (!strcmp(a, "--partitions"))
			o.partitions = atoi(v);
		else if (!strcmp(a, "--conns") || !strcmp(a, "--writers") || !strcmp(a, "--clients"))
			o.conns = atoi(v);
		else if (!strcmp(a, "--batch"))
			o.batch = atoi(v);
		else if (!strcmp(a, "--rows-per-tx"))
			o.rows_per_tx = atoi(v);
		else if (!strcmp(a, "--tx-partitions"))
			o.tx_partitions = atoi(v);
		else if (!strcmp(a, "--rate"))
			o.rate = atof(v);
		else if (!strcmp(a, "--seconds"))
			o.seconds = atof(v);
		else if (!strcmp(a, "--rows"))
			o.rows = atol(v);
		else if (!strcmp(a, "--via")) {
			if (!strcmp(v, "insert"))
				o.via = V_INSERT;
			else if (!strcmp(v, "enqueue"))
				o.via = V_ENQUEUE;
			else if (!strcmp(v, "enqueue_http"))
				o.via = V_ENQUEUE_HTTP;
			else
				usage();
		} else if (!strcmp(a, "--table")) {
			if (!strcmp(v, "plain"))
				o.table = T_PLAIN;
			else if (!strcmp(v, "notify"))
				o.table = T_NOTIFY;
			else if (!strcmp(v, "clone"))
				o.table = T_CLONE;
			else if (!strcmp(v, "clone_notify"))
				o.table = T_CLONE_NOTIFY;
			else if (!strcmp(v, "rowtrig"))
				o.table = T_ROWTRIG;
			else if (!strcmp(v, "outbox"))
				o.table = T_OUTBOX;
			else
				usage();
		} else
			usage();
	}
	if (!o.db || o.partitions < 1 || o.conns < 1 || o.batch < 1 || o.rows_per_tx < 1 || o.tx_partitions < 1)
		usage();
	/* the helpers write one row per call into the outbox */
	if (o.via != V_INSERT && (o.rows_per_tx != 1 || o.mode == M_FILL || (o.mode == M_COST && o.table != T_OUTBOX)))
		usage();
	if (o.mode == M_FILL)
		o.conns = 1;
	if (o.mode == M_LATENCY && o.partitions % o.conns)
		o.partitions += o.conns - o.partitions % o.conns;
	if (o.mode == M_SUSTAINED && o.partitions < o.conns)
		o.partitions = o.conns;
	if (asprintf(&destinations, "[{\"url\": \"%s\", \"headers\": {\"Content-Type\": \"application/json\"}}]", o.url) < 0)
		return 1;
	seqs = calloc((size_t)o.partitions, sizeof(*seqs));
	struct thread *th = calloc((size_t)o.conns, sizeof(*th));
	if (!seqs || !th)
		return 1;
	for (int i = 0; i < o.conns; i++) {
		th[i].id = i;
		th[i].nthreads = o.conns;
		th[i].rnd = (unsigned)(getpid() * 31 + i);
		th[i].conn = connect_db();
		prepare(&th[i]);
	}
	struct listener l = { 0 };
	if (o.mode == M_COST) {
		l.conn = connect_db();
		PGresult *r = PQexec(l.conn, "LISTEN outbox; LISTEN bench");
		if (PQresultStatus(r) != PGRES_COMMAND_OK) {
			fprintf(stderr, "bench-producer: LISTEN: %s", PQerrorMessage(l.conn));
			return 1;
		}
		PQclear(r);
		pthread_create(&l.tid, NULL, listener_thread, &l);
	}

	t_start = mono_s() + 0.05;
	double t0 = t_start;
	if (o.mode == M_FILL) {
		int *parts = malloc(sizeof(int) * (size_t)o.batch);
		if (!parts)
			return 1;
		t0 = mono_s();
		for (long j = 0; j < o.rows;) {
			int n = (int)(o.rows - j < o.batch ? o.rows - j : o.batch);
			for (int k = 0; k < n; k++)
				parts[k] = (int)((j + k) % o.partitions);
			if (transaction(&th[0], n, parts, NULL) == 0)
				j += n;
			else
				return 1;
		}
		free(parts);
	} else {
		void *(*fn)(void *) = o.mode == M_LATENCY ? latency_thread : o.mode == M_SUSTAINED ? sustained_thread : cost_thread;
		for (int i = 0; i < o.conns; i++)
			pthread_create(&th[i].tid, NULL, fn, &th[i]);
		if (o.mode != M_LATENCY) {
			sleep_until(t0 + o.seconds);
			atomic_store(&stop_flag, true);
		}
		for (int i = 0; i < o.conns; i++)
			pthread_join(th[i].tid, NULL);
	}
	double elapsed = mono_s() - t0;
	if (o.mode == M_LATENCY)
		elapsed = mono_s() - t_start;
	long tx = 0, rows = 0;
	double behind = 0;
	for (int i = 0; i < o.conns; i++) {
		tx += th[i].tx;
		rows += th[i].rows;
		if (th[i].behind_max_ms > behind)
			behind = th[i].behind_max_ms;
	}
	if (o.mode == M_COST) {
		usleep(300000); /* the last notifications */
		atomic_store(&l.done, true);
		pthread_join(l.tid, NULL);
		PQfinish(l.conn);
	}
	write_out(th, o.conns);
	printf("tx=%ld rows=%ld seconds=%.3f tps=%.1f rows_per_s=%.1f errors=%ld behind_max_ms=%.2f", tx, rows, elapsed,
	       (double)tx / elapsed, (double)rows / elapsed, atomic_load(&errors), behind);
	if (o.mode == M_COST)
		printf(" notifies=%ld notifies_per_tx=%.3f partitions_per_tx=%d", l.count, tx ? (double)l.count / (double)tx : 0.0,
		       o.rows_per_tx < o.tx_partitions ? o.rows_per_tx : o.tx_partitions);
	printf("\n");
	for (int i = 0; i < o.conns; i++) {
		PQfinish(th[i].conn);
		free(th[i].recs);
	}
	free(th);
	free(seqs);
	free(destinations);
	return atomic_load(&errors) ? 1 : 0;
}
