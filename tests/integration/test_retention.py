"""Retention (OUTBOX_RETENTION) and reloading on SIGHUP (OUTBOX_CONFIG_FILE, OUTBOX_LOG_FILE)."""

import signal
import time

from conftest import wait_until


def _age_processed(db, n_old: int, n_recent: int, url: str) -> None:
    """n_old processed rows from 10 days ago, n_recent processed an hour ago, one pending."""
    db.execute(
        """INSERT INTO outbox (idempotent_key, partition_key, destinations, payload, attempts,
                               created_at, process_after, processed_at)
           SELECT gen_random_uuid(), gen_random_uuid(), %s::jsonb, 'old', 1,
                  now() - interval '10 days', now() - interval '10 days',
                  now() - interval '10 days' + g * interval '1 millisecond'
             FROM generate_series(1, %s) g""", (f'[{{"url":"{url}"}}]', n_old))
    db.execute(
        """INSERT INTO outbox (idempotent_key, partition_key, destinations, payload, attempts,
                               created_at, process_after, processed_at)
           SELECT gen_random_uuid(), gen_random_uuid(), %s::jsonb, 'recent', 1,
                  now() - interval '1 hour', now() - interval '1 hour', now() - interval '1 hour'
             FROM generate_series(1, %s) g""", (f'[{{"url":"{url}"}}]', n_recent))


def test_retention_deletes_only_old_processed_rows_in_batches_with_two_instances(db, sink, relay):
    _age_processed(db, n_old=2500, n_recent=40, url=sink.url("/r"))
    # a parked row and a pending-but-delayed row are never touched, however old
    db.execute("""INSERT INTO outbox (idempotent_key, partition_key, destinations, payload, created_at,
                                      process_after, dead_at, last_error)
                  VALUES (gen_random_uuid(), gen_random_uuid(), '[]', 'parked', now() - interval '30 days',
                          now() - interval '30 days', now() - interval '20 days', 'x')""")
    db.execute("""INSERT INTO outbox (idempotent_key, partition_key, destinations, payload, created_at, process_after)
                  VALUES (gen_random_uuid(), gen_random_uuid(), %s::jsonb, 'later', now() - interval '30 days',
                          now() + interval '1 day')""", (f'[{{"url":"{sink.url("/r")}"}}]',))
    # released lease rows as the crate's scheduled mode leaves them, and one active lease
    db.execute("""INSERT INTO outbox_lock (partition_key, lock_id, processed_at, processing_until)
                  SELECT gen_random_uuid(), gen_random_uuid(), now() - interval '1 day', now() - interval '1 day'
                    FROM generate_series(1, 30)""")
    db.execute("""INSERT INTO outbox_lock (partition_key, lock_id, processing_until)
                  VALUES (gen_random_uuid(), gen_random_uuid(), now() + interval '1 hour')""")

    env = dict(OUTBOX_RETENTION="7d", OUTBOX_RETENTION_BATCH="200", OUTBOX_LOG_LEVEL="debug")
    r1 = relay(db, **env)
    r2 = relay(db, **env)
    wait_until(lambda: db.scalar("SELECT count(*) FROM outbox WHERE payload = 'old'") == 0, 30,
               "old processed rows deleted")
    wait_until(lambda: db.scalar("SELECT count(*) FROM outbox_lock WHERE processed_at IS NOT NULL") == 0, 10,
               "released lease rows deleted")
    assert db.scalar("SELECT count(*) FROM outbox WHERE payload = 'recent'") == 40
    assert db.scalar("SELECT count(*) FROM outbox WHERE payload = 'parked'") == 1
    assert db.scalar("SELECT count(*) FROM outbox WHERE payload = 'later'") == 1
    assert db.scalar("SELECT count(*) FROM outbox_lock WHERE processed_at IS NULL") == 1
    # bounded batches: 2500 rows took at least 13 statements of at most 200 rows
    log = r1.log() + r2.log()
    batches = [int(n) for n in __import__("re").findall(r"retention deleted (\d+) processed rows", log)]
    assert sum(batches) == 2500, batches
    assert max(batches) <= 200 and len(batches) >= 13, batches


def test_retention_zero_keeps_everything(db, sink, relay):
    _age_processed(db, n_old=50, n_recent=0, url=sink.url("/r"))
    r = relay(db, OUTBOX_RETENTION="0", OUTBOX_POLL_INTERVAL_MS="100")
    # the relay is up and polling; a row it delivers proves time has passed for a pass
    db.insert_http_rows(sink.url("/probe"), 1)
    sink.wait_for_count(1)
    assert db.scalar("SELECT count(*) FROM outbox WHERE payload = 'old'") == 50
    assert r.alive()


def test_bad_retention_value_is_refused(run_relay, db):
    res = run_relay("run", db=db, env={"OUTBOX_RETENTION": "7 days"})
    assert res.returncode == 2
    assert "OUTBOX_RETENTION" in res.stderr


def test_sighup_reopens_log_file_and_reloads_log_level(db, sink, relay, tmp_path):
    log_file = tmp_path / "relay-file.log"
    config = tmp_path / "relay.env"
    config.write_text("# test config\nOUTBOX_LOG_LEVEL=info\nOUTBOX_POLL_INTERVAL_MS=3600000\n")
    r = relay(db, "--config", str(config), OUTBOX_LOG_FILE=str(log_file), ready=False)
    wait_until(lambda: log_file.exists() and "relay ready" in log_file.read_text(), 20, "relay ready in the log file")

    db.insert_http_rows(sink.url("/a"), 1)
    sink.wait_for_count(1)
    assert "debug: delivered row" not in log_file.read_text()

    # logrotate: move the file away, raise the level in the config file, SIGHUP
    rotated = tmp_path / "relay-file.log.1"
    log_file.rename(rotated)
    config.write_text("OUTBOX_LOG_LEVEL=debug\nOUTBOX_POLL_INTERVAL_MS=3600000\n")
    r.send_signal(signal.SIGHUP)
    wait_until(lambda: log_file.exists() and "SIGHUP" in log_file.read_text(), 10, "log reopened")
    db.insert_http_rows(sink.url("/b"), 1)
    sink.wait_for_count(2)
    wait_until(lambda: "debug: delivered row" in log_file.read_text(), 10, "debug level applied")

    # a broken config file changes nothing and says why
    config.write_text("OUTBOX_LOG_LEVEL=loud\n")
    r.send_signal(signal.SIGHUP)
    wait_until(lambda: "configuration not reloaded" in log_file.read_text(), 10, "reload refused")
    assert "OUTBOX_LOG_LEVEL" in log_file.read_text().split("configuration not reloaded")[-1]
    assert r.alive()
    assert r.stop() == 0
