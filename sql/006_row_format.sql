-- 006: the SQL helpers apply the relay's row format, the one liboutbox applies (src/lib/rowformat.c):
-- whatever the relay would park, they refuse, with the reason, in the writer's transaction.
-- 003's helpers checked a row's shape only; outbox_enqueue with a hand-built destinations array
-- let through what the relay then parked (a URL that is no URL, GET, a header named Host or
-- Content-Length, an SNS "ARN" of any form). Now:
--   - every destination is checked as outbox_http/sqs/sns_destination check theirs;
--   - header names are RFC 9110 tokens of at most 256 bytes, values at most 8192 bytes without
--     control characters but TAB; Content-Length, Host, Transfer-Encoding and Connection are the
--     relay's; no name twice ignoring case; at most 64 per object, and at most 64 per HTTP request
--     once the destination's, the row's and x-idempotent-key are merged;
--   - an HTTP destination's header value {{NAME}} may not name the relay's own settings and
--     credentials (outbox_header_env_refused): the relay would send them to the row's URL;
--   - topic_arn is arn:PARTITION:sns:REGION:ACCOUNT:NAME, printable ASCII, at most 1024 bytes;
--   - destinations and headers nest at most 32 arrays and objects (what the relay parses);
--   - destinations = '[]' stays refused: a row that goes nowhere is a writer's bug (the relay
--     parks one found in the table).
-- Everything is CREATE OR REPLACE with 003's signatures: running this file twice is harmless.

-- The variables a {{NAME}} placeholder may never name (rowformat.c, refused_prefixes and
-- refused_names). Only names of A-Z and _ are placeholders.
CREATE OR REPLACE FUNCTION outbox_header_env_refused(name text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT name ~ '^(PG|AWS_|OUTBOX_|CURL_|SSL_CERT_|OPENSSL_)'
        OR name IN ('DATABASE_URL', 'LOCAL_ENDPOINT', 'LOCAL_REGION', 'NOTIFY_SOCKET', 'WATCHDOG_PID',
                    'WATCHDOG_USEC', 'HTTP_PROXY', 'HTTPS_PROXY', 'ALL_PROXY', 'NO_PROXY', 'SSLKEYLOGFILE')
$$;

CREATE OR REPLACE FUNCTION outbox_sns_arn_ok(arn text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT arn ~ '^arn:[^:]+:sns:[^:]+:[^:]+:[^:]+$' AND arn ~ '^[!-~]+$' AND octet_length(arn) <= 1024
$$;

-- How many arrays and objects nest in j (a scalar: 0), as json-c counts against its limit.
CREATE OR REPLACE FUNCTION outbox_jsonb_depth(j jsonb) RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(j)
           WHEN 'object' THEN 1 + coalesce((SELECT max(outbox_jsonb_depth(e.value)) FROM jsonb_each(j) AS e), 0)
           WHEN 'array' THEN 1 + coalesce((SELECT max(outbox_jsonb_depth(e.value))
                                           FROM jsonb_array_elements(j) AS e), 0)
           ELSE 0 END
$$;

-- Raises unless headers is a headers object the relay sends as is. what names it in the
-- message; placeholders: an HTTP destination's headers, whose {{NAME}} values the relay fills.
CREATE OR REPLACE FUNCTION outbox_check_headers(headers jsonb, what text, placeholders boolean)
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    h record;
    v text;
BEGIN
    IF jsonb_typeof(headers) <> 'object' THEN
        RAISE EXCEPTION '%: must be a JSON object of strings, got %', what, jsonb_typeof(headers)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (SELECT count(*) FROM jsonb_object_keys(headers)) > 64 THEN
        RAISE EXCEPTION '%: more than 64 headers', what
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    FOR h IN SELECT key, value FROM jsonb_each(headers) LOOP
        IF h.key !~ '^[-!#$%&''*+.^_`|~0-9A-Za-z]+$' OR octet_length(h.key) > 256 THEN
            RAISE EXCEPTION '%: header name % is not an RFC 9110 token of at most 256 bytes', what,
                quote_literal(left(h.key, 60))
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF lower(h.key) IN ('content-length', 'host', 'transfer-encoding', 'connection') THEN
            RAISE EXCEPTION '%: header "%" is set by the relay, not by rows', what, h.key
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF jsonb_typeof(h.value) <> 'string' THEN
            RAISE EXCEPTION '%: value of "%" is not a string', what, h.key
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        v := h.value #>> '{}';
        IF octet_length(v) > 8192 OR v ~ '[\u0001-\u0008\u000a-\u001f\u007f]' THEN
            RAISE EXCEPTION '%: value of header "%" is over 8192 bytes or has a control character', what, h.key
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF placeholders AND v ~ '^\{\{[A-Z_]+\}\}$' AND length(v) <= 131
           AND outbox_header_env_refused(substr(v, 3, length(v) - 4)) THEN
            RAISE EXCEPTION '%: header "%" asks for %, one of the relay''s own settings and credentials, which are never sent',
                what, h.key, v
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END LOOP;
    IF EXISTS (SELECT 1 FROM jsonb_object_keys(headers) AS k GROUP BY lower(k) HAVING count(*) > 1) THEN
        RAISE EXCEPTION '%: a header appears twice (names ignore case)', what
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

-- Raises unless d is a destination the relay delivers (d is destinations[i]).
CREATE OR REPLACE FUNCTION outbox_check_destination(d jsonb, i int) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    what text := format('destinations[%s]', i);
BEGIN
    -- two IFs: jsonb_object_keys fails on a scalar, and OR does not promise an order
    IF jsonb_typeof(d) <> 'object' THEN
        RAISE EXCEPTION 'outbox_enqueue: % is not a JSON object, got %', what, left(d::text, 200)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (SELECT count(*) FROM jsonb_object_keys(d) AS key WHERE key IN ('queue_url', 'topic_arn', 'url')) <> 1 THEN
        RAISE EXCEPTION 'outbox_enqueue: % must have exactly one of "queue_url" (SQS), "topic_arn" (SNS) or "url" (HTTP), got %',
            what, left(d::text, 200)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF jsonb_typeof(coalesce(d->'queue_url', d->'topic_arn', d->'url')) <> 'string' THEN
        RAISE EXCEPTION 'outbox_enqueue: %: queue_url, topic_arn or url must be a string, got %', what, left(d::text, 200)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF d ? 'queue_url' THEN
        PERFORM outbox_sqs_destination(d->>'queue_url');
    ELSIF d ? 'topic_arn' THEN
        PERFORM outbox_sns_destination(d->>'topic_arn');
    ELSE
        IF d ? 'method' AND jsonb_typeof(d->'method') NOT IN ('string', 'null') THEN
            RAISE EXCEPTION 'outbox_enqueue: %.method must be a string or null', what
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        PERFORM outbox_http_destination(d->>'url', d->>'method', d->'headers');
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION outbox_http_destination(url text, method text DEFAULT 'POST',
                                                   headers jsonb DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    m text := upper(coalesce(method, 'POST'));
BEGIN
    IF NOT coalesce(outbox_http_url_ok(url), false) THEN
        RAISE EXCEPTION 'outbox_http_destination: url must be an http:// or https:// URL with a host, printable ASCII, no user@, got %',
            coalesce(quote_literal(left(url, 200)), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF m NOT IN ('POST', 'PUT', 'PATCH') THEN
        RAISE EXCEPTION 'outbox_http_destination: method must be POST, PUT or PATCH, got %',
            quote_literal(left(method, 60))
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF headers IS NOT NULL AND jsonb_typeof(headers) <> 'null' THEN
        PERFORM outbox_check_headers(headers, 'outbox_http_destination: headers', true);
    ELSE
        headers := NULL;
    END IF;
    RETURN jsonb_build_object('url', url, 'headers', headers,
                              'method', CASE m WHEN 'POST' THEN NULL ELSE lower(m) END);
END
$$;

CREATE OR REPLACE FUNCTION outbox_sns_destination(topic_arn text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF NOT coalesce(outbox_sns_arn_ok(topic_arn), false) THEN
        RAISE EXCEPTION 'outbox_sns_destination: topic_arn must be arn:PARTITION:sns:REGION:ACCOUNT:NAME (printable ASCII, at most 1024 bytes), got %',
            coalesce(quote_literal(left(topic_arn, 200)), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN jsonb_build_object('topic_arn', topic_arn);
END
$$;

CREATE OR REPLACE FUNCTION outbox_enqueue(partition_key uuid, destinations jsonb, payload text,
                                          headers jsonb DEFAULT NULL,
                                          process_after timestamptz DEFAULT NULL,
                                          idempotent_key uuid DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    k  uuid := coalesce(outbox_enqueue.idempotent_key, outbox_uuid7());
    t  timestamptz := clock_timestamp();
    h  jsonb := nullif(outbox_enqueue.headers, 'null'::jsonb);
    d  jsonb;
    i  int := 0;
    n  bigint;
BEGIN
    IF outbox_enqueue.partition_key IS NULL THEN
        RAISE EXCEPTION 'outbox_enqueue: partition_key must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF outbox_enqueue.payload IS NULL THEN
        RAISE EXCEPTION 'outbox_enqueue: payload must not be NULL (use an empty string)'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- '[]' is refused: the crate would mark such a row delivered without a request, the relay parks it.
    IF outbox_enqueue.destinations IS NULL OR jsonb_typeof(outbox_enqueue.destinations) <> 'array'
       OR jsonb_array_length(outbox_enqueue.destinations) = 0 THEN
        RAISE EXCEPTION 'outbox_enqueue: destinations must be a non-empty JSON array, got %',
            coalesce(left(outbox_enqueue.destinations::text, 200), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'build it with jsonb_build_array(outbox_http_destination(...), ...)';
    END IF;
    IF outbox_jsonb_depth(outbox_enqueue.destinations) > 32 OR outbox_jsonb_depth(h) > 32 THEN
        RAISE EXCEPTION 'outbox_enqueue: destinations or headers nest more than 32 arrays and objects (nesting too deep)'
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    IF jsonb_array_length(outbox_enqueue.destinations) > 64 THEN
        RAISE EXCEPTION 'outbox_enqueue: more than 64 destinations in one row'
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    IF h IS NOT NULL THEN
        PERFORM outbox_check_headers(h, 'outbox_enqueue: headers', false);
    END IF;
    FOR d IN SELECT value FROM jsonb_array_elements(outbox_enqueue.destinations) LOOP
        PERFORM outbox_check_destination(d, i);
        -- What the relay sends to an HTTP destination: its headers, the row's, x-idempotent-key.
        IF d ? 'url' THEN
            SELECT count(DISTINCT lower(key)) + 1 INTO n
              FROM (SELECT jsonb_object_keys(CASE jsonb_typeof(d->'headers') WHEN 'object'
                                                  THEN d->'headers' ELSE '{}' END) AS key
                    UNION ALL
                    SELECT jsonb_object_keys(coalesce(h, '{}'))) AS names
             WHERE lower(key) <> 'x-idempotent-key';
            IF n > 64 THEN
                RAISE EXCEPTION 'outbox_enqueue: destinations[%] would be sent % headers (its own, the row''s and x-idempotent-key), over the limit of 64',
                    i, n
                    USING ERRCODE = 'program_limit_exceeded';
            END IF;
        END IF;
        i := i + 1;
    END LOOP;

    INSERT INTO outbox (idempotent_key, partition_key, destinations, headers, payload,
                        created_at, process_after)
    VALUES (k, outbox_enqueue.partition_key, outbox_enqueue.destinations,
            h, outbox_enqueue.payload,
            t, coalesce(outbox_enqueue.process_after, t));
    RETURN k;
END
$$;
