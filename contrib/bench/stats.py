#!/usr/bin/env python3
"""Joins the producer's commit records with the sink's arrival records, and aggregates runs.

  stats.py join COMMITS SINK [--start-us T] [--end-us T]
      COMMITS: "p s insert_us commit_us" per committed row (bench-producer --out)
      SINK:    "seq arrival_us p s t" per request (bench-sink /_ctl/dump)
      Prints key=value figures: committed, delivered (distinct rows), duplicates, missing,
      latency percentiles (ms, arrival - commit) over first arrivals, order violations (a
      partition whose rows first arrived out of sequence order), first/last arrival, and with
      --start-us the rate from T to the last arrival; with --end-us the rows delivered by T.
  stats.py summary RESULTS
      RESULTS: lines "workload<TAB>figure<TAB>value" (one per repetition). Prints median and
      min-max per figure, then the targets table with PASS/FAIL.
"""
import statistics
import sys


def pct(sorted_vals, q):
    if not sorted_vals:
        return float("nan")
    k = (len(sorted_vals) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


def join(argv):
    commits_path, sink_path = argv[0], argv[1]
    start_us = end_us = None
    i = 2
    while i < len(argv):
        if argv[i] == "--start-us":
            start_us = int(argv[i + 1])
        elif argv[i] == "--end-us":
            end_us = int(argv[i + 1])
        i += 2
    commits = {}
    with open(commits_path) as f:
        for line in f:
            p, s, t_ins, t_commit = line.split()
            commits[(int(p), int(s))] = int(t_commit)
    first = {}
    dups = 0
    unknown = 0
    arrivals = []
    with open(sink_path) as f:
        for line in f:
            seq, arr, p, s, _t = line.split()
            key = (int(p), int(s))
            arr = int(arr)
            if key not in commits:
                unknown += 1
                continue
            if key in first:
                dups += 1
                continue
            first[key] = (int(seq), arr)
            arrivals.append(arr)
    lat = sorted((arr - commits[k]) / 1000.0 for k, (_, arr) in first.items())
    # order: per partition, by sink sequence, the row sequence numbers must increase
    by_part = {}
    for (p, s), (seq, _) in first.items():
        by_part.setdefault(p, []).append((seq, s))
    violations = 0
    for rows in by_part.values():
        rows.sort()
        for a, b in zip(rows, rows[1:]):
            if b[1] < a[1]:
                violations += 1
    out = {
        "committed": len(commits),
        "delivered": len(first),
        "duplicates": dups,
        "unknown": unknown,
        "missing": len(commits) - len(first),
        "order_violations": violations,
        "p50_ms": pct(lat, 0.50),
        "p90_ms": pct(lat, 0.90),
        "p99_ms": pct(lat, 0.99),
        "max_ms": lat[-1] if lat else float("nan"),
    }
    if arrivals:
        out["first_arrival_us"] = min(arrivals)
        out["last_arrival_us"] = max(arrivals)
        if start_us is not None:
            secs = (max(arrivals) - start_us) / 1e6
            out["seconds"] = secs
            out["rows_per_s"] = len(first) / secs if secs > 0 else float("nan")
        if end_us is not None:
            out["delivered_by_end"] = sum(1 for a in arrivals if a <= end_us)
    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in out.items()))


# Targets of issue 6: (workload, figure, comparison, bound or (workload, figure, factor), label)
TARGETS = [
    ("latency200", "p50_ms", "<=", 0.7, "latency 200/s p50 <= 0.7 ms"),
    ("latency200", "p99_ms", "<=", 3.0, "latency 200/s p99 <= 3 ms"),
    ("latency1000", "p50_ms", "<=", 1.0, "latency 1000/s p50 <= 1 ms"),
    ("latency1000", "p99_ms", "<=", 5.0, "latency 1000/s p99 <= 5 ms"),
    ("latency200", "missing", "==", 0, "latency 200/s delivered == committed"),
    ("latency1000", "missing", "==", 0, "latency 1000/s delivered == committed"),
    ("drain", "relay_cpu_ms_per_1000", "<=", 60.0, "CPU <= 60 ms per 1000 deliveries (drain)"),
    ("sustained", "relay_cpu_ms_per_1000", "<=", 60.0, "CPU <= 60 ms per 1000 deliveries (sustained)"),
    ("latency1000", "relay_cpu_ms_per_1000", "<=", 60.0, "CPU <= 60 ms per 1000 deliveries (1000/s)"),
    ("latency200", "relay_cpu_ms_per_1000", "<=", 60.0, "CPU <= 60 ms per 1000 deliveries (200/s)"),
    ("drain", "rows_per_s", ">=", ("limits", "sink_rps", 0.5), "drain >= 50% of the sink's ceiling"),
    ("drain", "order_violations", "==", 0, "drain: per-partition order kept"),
    ("drain_stale", "rows_per_s", ">=", ("limits", "sink_rps", 0.5), "drain, stale statistics >= 50% of the sink's ceiling"),
    ("drain_stale", "order_violations", "==", 0, "drain, stale statistics: per-partition order kept"),
    ("drain_stale", "relay_cpu_ms_per_1000", "<=", 60.0, "CPU <= 60 ms per 1000 deliveries (drain, stale)"),
    ("cost", "outbox_vs_notify_1x1", ">=", 0.9, "writer cost: (c) >= 90% of (b), 1 client, 1 row"),
    ("cost", "outbox_vs_notify_4x1", ">=", 0.9, "writer cost: (c) >= 90% of (b), 4 clients, 1 row"),
    ("cost", "notifies_per_partition_1x100", "==", 1.0, "100-row tx: one NOTIFY per partition (1 client)"),
    ("cost", "notifies_per_partition_4x100", "==", 1.0, "100-row tx: one NOTIFY per partition (4 clients)"),
    ("idle", "relay_queries", "==", 0, "idle: no queries between polls"),
    ("rss", "relay_peak_rss_mb", "<=", 16.0, "peak RSS under load <= 16 MB"),
    ("sustained", "order_violations", "==", 0, "sustained: per-partition order kept"),
    # issue 14
    ("writers", "linger_rows_per_s", ">=", ("writers", "clone_rows_per_s", 0.8), "writers (INSERT), relay on >= 80% of no trigger"),
    ("writers", "linger_http_rows_per_s", ">=", ("writers", "clone_rows_per_s", 0.8), "writers (enqueue_http), relay on >= 80% of no trigger"),
    ("helpers", "enqueue_1c_rows_per_s", ">=", ("helpers", "insert_1c_rows_per_s", 0.95), "outbox_enqueue >= 95% of INSERT (1 client)"),
    ("helpers", "enqueue_http_1c_rows_per_s", ">=", ("helpers", "insert_1c_rows_per_s", 0.95), "outbox_enqueue_http >= 95% of INSERT (1 client)"),
    ("helpers", "enqueue_4c_rows_per_s", ">=", ("helpers", "insert_4c_rows_per_s", 0.95), "outbox_enqueue >= 95% of INSERT (4 clients)"),
    ("helpers", "enqueue_http_4c_rows_per_s", ">=", ("helpers", "insert_4c_rows_per_s", 0.95), "outbox_enqueue_http >= 95% of INSERT (4 clients)"),
    ("latency200", "p50_ms", "<=", 0.5, "latency 200/s p50 <= 0.5 ms (issue 14)"),
    ("latency200", "p99_ms", "<=", 2.0, "latency 200/s p99 <= 2 ms (issue 14)"),
    ("latency200_http", "p50_ms", "<=", 0.5, "latency 200/s, enqueue_http x2, p50 <= 0.5 ms"),
    ("latency200_http", "p99_ms", "<=", 2.0, "latency 200/s, enqueue_http x2, p99 <= 2 ms"),
    ("latency1000_http", "p99_ms", "<=", 5.0, "latency 1000/s, enqueue_http x2, p99 <= 5 ms"),
    ("latency1000", "db_cpu_us_per_row_relay", "<=", 50.0, "PostgreSQL CPU the relay adds <= 50 us/row (1000/s)"),
    ("latency1000_http", "relay_cpu_ms_per_1000", "<=", 60.0, "CPU <= 60 ms per 1000 deliveries (1000/s, http)"),
    ("drain", "rows_per_s", ">=", 20000.0, "drain >= 20,000 rows/s (issue 14)"),
]


def summary(argv):
    data = {}
    order = []
    with open(argv[0]) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3:
                continue
            w, fig, v = parts
            try:
                v = float(v)
            except ValueError:
                continue
            if (w, fig) not in data:
                order.append((w, fig))
            data.setdefault((w, fig), []).append(v)

    def med(w, fig):
        vals = data.get((w, fig))
        return statistics.median(vals) if vals else None

    print(f"{'workload':<14} {'figure':<34} {'median':>12} {'min':>12} {'max':>12} {'n':>3}")
    for w, fig in order:
        vals = data[(w, fig)]
        print(f"{w:<14} {fig:<34} {statistics.median(vals):>12.3f} {min(vals):>12.3f} {max(vals):>12.3f} {len(vals):>3}")
    print()
    print(f"{'target':<52} {'median':>12} {'bound':>12}  result")
    failed = 0
    for w, fig, op, bound, label in TARGETS:
        v = med(w, fig)
        if isinstance(bound, tuple):
            ref = med(bound[0], bound[1])
            b = ref * bound[2] if ref is not None else None
        else:
            b = bound
        if v is None or b is None:
            print(f"{label:<52} {'-':>12} {'-':>12}  NOT RUN")
            continue
        ok = {"<=": v <= b, ">=": v >= b, "==": abs(v - b) < 1e-9}[op]
        # every repetition must pass the exact checks (counts, order), not only the median
        if op == "==":
            ok = all(abs(x - b) < 1e-9 for x in data[(w, fig)])
        failed += not ok
        print(f"{label:<52} {v:>12.3f} {op + ' ' + format(b, '.3f'):>12}  {'PASS' if ok else 'FAIL'}")
    return failed


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "join":
        join(sys.argv[2:])
    elif len(sys.argv) == 3 and sys.argv[1] == "summary":
        summary(sys.argv[2:])
    else:
        sys.stderr.write(__doc__)
        sys.exit(2)
