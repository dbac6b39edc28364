-- 003: enqueueing from any language in plain SQL, inside the caller's own transaction:
--
--   BEGIN;
--   UPDATE orders SET state = 'paid' WHERE id = 42;
--   SELECT outbox_enqueue_http('0190f5c5-7b1e-7c3a-9d2e-3f4a5b6c7d8e',
--                              'https://example.com/hooks/order-paid', '{"order":42}',
--                              headers => '{"Content-Type":"application/json"}');
--   COMMIT;
--
-- The rows are exactly what outbox-pattern-processor 0.3.6 and liboutbox write. Each helper
-- checks its input and raises a clear error, because a row the relay cannot decode would be
-- parked as malformed only later, far from the code that wrote it. Everything is CREATE OR
-- REPLACE: running this file twice is harmless. It neither touches the tables nor the trigger.

-- A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, version 7, the next 12 bits the sub-millisecond
-- fraction of clock_timestamp() (RFC 9562 method 3, so keys made in one session sort in call
-- order unless two fall in one microsecond), variant 0b10 and 62 random bits from
-- gen_random_uuid(). clock_timestamp(), not now(): now() is fixed for the whole transaction.
CREATE OR REPLACE FUNCTION outbox_uuid7() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT encode(
               substring(int8send(us / 1000) FROM 3)                      -- 6 bytes of milliseconds
            || int2send((28672 | (us % 1000) * 4096 / 1000)::int2)        -- 0x7000 | 12-bit fraction
            || set_byte(substring(r FROM 9), 0, (get_byte(r, 8) & 63) | 128), -- variant + random
           'hex')::uuid
    FROM (SELECT floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS us,
                 uuid_send(gen_random_uuid()) AS r) AS s
$$;

-- The URL rule the relay applies (and liboutbox): http:// or https://, a host, printable ASCII
-- only, and no user:password@ (a secret would sit in the table in clear). NULL for NULL.
CREATE OR REPLACE FUNCTION outbox_http_url_ok(url text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT url ~* '^https?://[^/?#:@][^/?#@]*([/?#].*)?$' AND url ~ '^[!-~]+$' AND length(url) <= 8192
$$;

-- The HTTP destination {"url": ..., "headers": ..., "method": ...}. Like the crate's helpers,
-- POST is stored as null and PUT/PATCH as "put"/"patch". GET, DELETE and the like are refused:
-- the relay would silently send them as POST. Unlike the crate's http_*_json helpers no
-- Content-Type is added, since the payload need not be JSON: pass it in headers.
CREATE OR REPLACE FUNCTION outbox_http_destination(url text, method text DEFAULT 'POST',
                                                   headers jsonb DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    m text := upper(coalesce(method, 'POST'));
BEGIN
    IF NOT coalesce(outbox_http_url_ok(url), false) THEN
        RAISE EXCEPTION 'outbox_http_destination: url must be an http:// or https:// URL with a host, printable ASCII, no user@, got %',
            coalesce(quote_literal(url), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF m NOT IN ('POST', 'PUT', 'PATCH') THEN
        RAISE EXCEPTION 'outbox_http_destination: method must be POST, PUT or PATCH, got %',
            quote_literal(method)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF headers IS NOT NULL AND jsonb_typeof(headers) <> 'null' THEN
        IF jsonb_typeof(headers) <> 'object' THEN
            RAISE EXCEPTION 'outbox_http_destination: headers must be a JSON object, got %',
                jsonb_typeof(headers)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        -- The relay decodes headers as a map of strings; any other value poisons the row.
        IF EXISTS (SELECT 1 FROM jsonb_each(headers) AS h WHERE jsonb_typeof(h.value) <> 'string') THEN
            RAISE EXCEPTION 'outbox_http_destination: every header value must be a JSON string'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF (SELECT count(*) FROM jsonb_object_keys(headers)) > 64 THEN
            RAISE EXCEPTION 'outbox_http_destination: more than 64 headers'
                USING ERRCODE = 'program_limit_exceeded';
        END IF;
    ELSE
        headers := NULL;
    END IF;
    RETURN jsonb_build_object('url', url, 'headers', headers,
                              'method', CASE m WHEN 'POST' THEN NULL ELSE lower(m) END);
END
$$;

-- The SQS destination {"queue_url": ...}: the queue's URL, as SQS (or an emulator) gives it.
CREATE OR REPLACE FUNCTION outbox_sqs_destination(queue_url text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF NOT coalesce(outbox_http_url_ok(queue_url), false) THEN
        RAISE EXCEPTION 'outbox_sqs_destination: queue_url must be an http:// or https:// queue URL, got %',
            coalesce(quote_literal(queue_url), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN jsonb_build_object('queue_url', queue_url);
END
$$;

-- The SNS destination {"topic_arn": ...}: arn:PARTITION:sns:REGION:ACCOUNT:NAME.
CREATE OR REPLACE FUNCTION outbox_sns_destination(topic_arn text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF topic_arn IS NULL OR topic_arn !~ '^arn:[^:[:space:][:cntrl:]]+:sns:[^:[:space:][:cntrl:]]+:[^:[:space:][:cntrl:]]+:[^:[:space:][:cntrl:]]+$' THEN
        RAISE EXCEPTION 'outbox_sns_destination: topic_arn must look like arn:aws:sns:REGION:ACCOUNT:NAME, got %',
            coalesce(quote_literal(topic_arn), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN jsonb_build_object('topic_arn', topic_arn);
END
$$;

-- Inserts one row and returns its idempotent key. destinations is a non-empty JSON array of
-- destination objects (build them with the three functions above); headers, the row's own
-- headers (HTTP headers after the destination's, SQS/SNS message attributes), is NULL or an
-- object of strings. created_at is clock_timestamp(), not now(): rows enqueued in one
-- transaction then keep their call order in a partition, as the crate's client-side timestamps
-- do. process_after defaults to created_at (the crate's rule), i.e. due at once.
CREATE OR REPLACE FUNCTION outbox_enqueue(partition_key uuid, destinations jsonb, payload text,
                                          headers jsonb DEFAULT NULL,
                                          process_after timestamptz DEFAULT NULL,
                                          idempotent_key uuid DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    k  uuid := coalesce(outbox_enqueue.idempotent_key, outbox_uuid7());
    t  timestamptz := clock_timestamp();
    d  jsonb;
    i  int := 0;
BEGIN
    IF outbox_enqueue.partition_key IS NULL THEN
        RAISE EXCEPTION 'outbox_enqueue: partition_key must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF outbox_enqueue.payload IS NULL THEN
        RAISE EXCEPTION 'outbox_enqueue: payload must not be NULL (use an empty string)'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF outbox_enqueue.destinations IS NULL OR jsonb_typeof(outbox_enqueue.destinations) <> 'array'
       OR jsonb_array_length(outbox_enqueue.destinations) = 0 THEN
        RAISE EXCEPTION 'outbox_enqueue: destinations must be a non-empty JSON array, got %',
            coalesce(left(outbox_enqueue.destinations::text, 200), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'build it with jsonb_build_array(outbox_http_destination(...), ...)';
    END IF;
    IF jsonb_array_length(outbox_enqueue.destinations) > 64 THEN
        RAISE EXCEPTION 'outbox_enqueue: more than 64 destinations in one row'
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    -- Each element must decode as one of the crate's three shapes, or the row is poison.
    FOR d IN SELECT value FROM jsonb_array_elements(outbox_enqueue.destinations) LOOP
        IF jsonb_typeof(d) <> 'object'
           OR (SELECT count(*) FROM jsonb_object_keys(d) AS key
               WHERE key IN ('queue_url', 'topic_arn', 'url')) <> 1
           OR jsonb_typeof(coalesce(d->'queue_url', d->'topic_arn', d->'url')) <> 'string' THEN
            RAISE EXCEPTION 'outbox_enqueue: destinations[%] must be an object with exactly one string "queue_url", "topic_arn" or "url", got %',
                i, left(d::text, 200)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        i := i + 1;
    END LOOP;
    IF outbox_enqueue.headers IS NOT NULL AND jsonb_typeof(outbox_enqueue.headers) <> 'null' THEN
        IF jsonb_typeof(outbox_enqueue.headers) <> 'object' THEN
            RAISE EXCEPTION 'outbox_enqueue: headers must be a JSON object, got %',
                jsonb_typeof(outbox_enqueue.headers)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF EXISTS (SELECT 1 FROM jsonb_each(outbox_enqueue.headers) AS h
                   WHERE jsonb_typeof(h.value) <> 'string') THEN
            RAISE EXCEPTION 'outbox_enqueue: every header value must be a JSON string'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF (SELECT count(*) FROM jsonb_object_keys(outbox_enqueue.headers)) > 64 THEN
            RAISE EXCEPTION 'outbox_enqueue: more than 64 headers'
                USING ERRCODE = 'program_limit_exceeded';
        END IF;
    END IF;

    INSERT INTO outbox (idempotent_key, partition_key, destinations, headers, payload,
                        created_at, process_after)
    VALUES (k, outbox_enqueue.partition_key, outbox_enqueue.destinations,
            nullif(outbox_enqueue.headers, 'null'::jsonb), outbox_enqueue.payload,
            t, coalesce(outbox_enqueue.process_after, t));
    RETURN k;
END
$$;

-- Convenience wrappers for one destination. As with the crate's helpers, HTTP headers go to the
-- destination, while SQS/SNS headers go to the row (they become message attributes).
CREATE OR REPLACE FUNCTION outbox_enqueue_http(partition_key uuid, url text, payload text,
                                               method text DEFAULT 'POST',
                                               headers jsonb DEFAULT NULL,
                                               process_after timestamptz DEFAULT NULL)
RETURNS uuid
LANGUAGE sql VOLATILE AS $$
    SELECT outbox_enqueue($1, jsonb_build_array(outbox_http_destination($2, $4, $5)), $3,
                          NULL, $6)
$$;

CREATE OR REPLACE FUNCTION outbox_enqueue_sqs(partition_key uuid, queue_url text, payload text,
                                              headers jsonb DEFAULT NULL,
                                              process_after timestamptz DEFAULT NULL)
RETURNS uuid
LANGUAGE sql VOLATILE AS $$
    SELECT outbox_enqueue($1, jsonb_build_array(outbox_sqs_destination($2)), $3, $4, $5)
$$;

CREATE OR REPLACE FUNCTION outbox_enqueue_sns(partition_key uuid, topic_arn text, payload text,
                                              headers jsonb DEFAULT NULL,
                                              process_after timestamptz DEFAULT NULL)
RETURNS uuid
LANGUAGE sql VOLATILE AS $$
    SELECT outbox_enqueue($1, jsonb_build_array(outbox_sns_destination($2)), $3, $4, $5)
$$;
