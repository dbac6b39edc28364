-- 011: the SQL helpers cost about what a plain INSERT of the same row costs (issue 14). They
-- apply the same row format as before (006, 009), with the same messages; only the way the
-- common case is checked changes. Measured per call, before this file: outbox_enqueue() about
-- 630 us more than the INSERT, mostly outbox_jsonb_depth() (a recursive SQL function, planned
-- anew at every level of every call: 350 us for one destination) and queries run per header and
-- per destination (jsonb_each, jsonb_object_keys, count(*)), each a trip through the executor.
--   - nesting depth: one jsonpath test (outbox_jsonb_too_deep), which PostgreSQL inlines;
--   - headers: an object of plain headers passes a few jsonpath tests in one expression; only
--     when one of them fails (a header that may be wrong, or a {{NAME}} value) do the old
--     checks run, to name the problem;
--   - destinations: no query per destination, and the merged-header count only when the two
--     objects together could pass the limit;
--   - outbox_uuid7: PL/pgSQL expressions instead of an SQL function with a FROM clause (which
--     is planned at every call);
--   - a destination, and a whole row's destinations and headers, are checked once per session:
--     the md5 of what passed (and of this file's version, so a later file's rules apply at
--     once) is remembered in the session setting outbox.checked (the 16 latest), and the
--     same arguments again skip the checks. An application writes to a few
--     endpoints over and over. The setting is the session's own: a writer who sets it can only
--     skip checks it could skip anyway with a plain INSERT, and the relay parks what it cannot
--     send, as it always does. Setting it (set_config) is not allowed in parallel workers, so
--     the functions that do are PARALLEL RESTRICTED now.
-- CREATE OR REPLACE with the signatures of 003/006/009: running this file twice is harmless.

-- Whether j nests more than 32 arrays and objects (outbox_jsonb_depth(j) > 32). A container
-- at level 32 or deeper (the top is level 0) is the 33rd. NULL: false.
CREATE OR REPLACE FUNCTION outbox_jsonb_too_deep(j jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT coalesce(jsonb_path_exists(j, 'strict $.**{32 to last} ? (@.type() == "object" || @.type() == "array")'), false)
$fn$;

-- The number of members of a JSON object; 0 for anything else.
CREATE OR REPLACE FUNCTION outbox_jsonb_members(j jsonb) RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT CASE WHEN jsonb_typeof(j) = 'object' THEN jsonb_array_length(jsonb_path_query_array(j, 'strict $.*')) ELSE 0 END
$fn$;

-- 003's UUIDv7 of the time ts and the random bits of g (a version 4 UUID): an expression
-- PostgreSQL inlines where ts and g are columns or variables (STABLE as extract() is: an
-- IMMUTABLE function of STABLE parts is not inlined). Milliseconds and fraction both come from
-- the one microsecond count, as in 003, so they never disagree at a millisecond's edge.
CREATE OR REPLACE FUNCTION outbox_uuid7_from(ts timestamptz, g uuid) RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT encode(
               substring(int8send(floor(extract(epoch FROM ts) * 1000000)::bigint / 1000) FROM 3) -- 6 bytes of milliseconds
            || int2send((28672 | (floor(extract(epoch FROM ts) * 1000000)::bigint % 1000) * 4096 / 1000)::int2) -- 0x7000 | 12-bit fraction
            || set_byte(substring(uuid_send(g) FROM 9), 0, (get_byte(uuid_send(g), 8) & 63) | 128), -- variant + random
           'hex')::uuid
$fn$;

CREATE OR REPLACE FUNCTION outbox_uuid7() RETURNS uuid
LANGUAGE plpgsql VOLATILE PARALLEL SAFE AS $fn$
DECLARE
    ts timestamptz := clock_timestamp();
    g  uuid := gen_random_uuid();
BEGIN
    RETURN outbox_uuid7_from(ts, g);
END
$fn$;

-- 009's rules. The first test is the common case, a sufficient condition checked without a
-- query: an object of at most 64 members, its text at most 8192 bytes (so is every value), its
-- names at most 256 bytes together, every name a token and none of the relay's, every value a string
-- without control characters (TAB allowed) and not starting with "{{", and no name twice
-- ignoring case (lower-casing the text merges such names). Anything else is checked one header
-- at a time, as 009 did, so the message names the header.
CREATE OR REPLACE FUNCTION outbox_check_headers(headers jsonb, what text, placeholders boolean)
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
    h record;
    v text;
    n int := outbox_jsonb_members(headers);
    names text;
BEGIN
    IF n BETWEEN 1 AND 64 AND octet_length(headers::text) <= 8192 THEN
        names := jsonb_path_query_array(headers, 'strict $.keyvalue().key')::text;
        IF octet_length(names) <= 256
           AND NOT jsonb_path_exists(headers,
               'strict $.keyvalue() ? (!(@.key like_regex "^[-!#$%&''*+.^_`|~0-9A-Za-z]+$")'
               ' || @.key like_regex "^(content-length|host|transfer-encoding|connection|webhook-id|webhook-timestamp|webhook-signature)$" flag "i"'
               ' || @.value.type() != "string" || @.value like_regex "[\u0001-\u0008\u000a-\u001f\u007f]"'
               ' || @.value starts with "{{")')
           -- no name twice ignoring case: nothing to merge, or lower-casing merges none
           AND (names = lower(names) OR outbox_jsonb_members(lower(headers::text)::jsonb) = n) THEN
            RETURN;
        END IF;
    END IF;
    IF jsonb_typeof(headers) <> 'object' THEN
        RAISE EXCEPTION '%: must be a JSON object of strings, got %', what, jsonb_typeof(headers)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF n > 64 THEN
        RAISE EXCEPTION '%: more than 64 headers', what
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    FOR h IN SELECT key, value FROM jsonb_each(headers) LOOP
        IF h.key !~ '^[-!#$%&''*+.^_`|~0-9A-Za-z]+$' OR octet_length(h.key) > 256 THEN
            RAISE EXCEPTION '%: header name % is not an RFC 9110 token of at most 256 bytes', what,
                quote_literal(left(h.key, 60))
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF lower(h.key) IN ('content-length', 'host', 'transfer-encoding', 'connection',
                            'webhook-id', 'webhook-timestamp', 'webhook-signature') THEN
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
$fn$;

-- 009's rules; the "exactly one of" test without a query.
CREATE OR REPLACE FUNCTION outbox_check_destination(d jsonb, i int) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL RESTRICTED AS $fn$
BEGIN
    -- two IFs: the ? operator is meaningless on a scalar, and OR does not promise an order
    IF jsonb_typeof(d) <> 'object' THEN
        RAISE EXCEPTION 'outbox_enqueue: % is not a JSON object, got %', format('destinations[%s]', i), left(d::text, 200)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (d ? 'queue_url')::int + (d ? 'topic_arn')::int + (d ? 'url')::int <> 1 THEN
        RAISE EXCEPTION 'outbox_enqueue: % must have exactly one of "queue_url" (SQS), "topic_arn" (SNS) or "url" (HTTP), got %',
            format('destinations[%s]', i), left(d::text, 200)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF jsonb_typeof(coalesce(d->'queue_url', d->'topic_arn', d->'url')) <> 'string' THEN
        RAISE EXCEPTION 'outbox_enqueue: %: queue_url, topic_arn or url must be a string, got %',
            format('destinations[%s]', i), left(d::text, 200)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF d ? 'queue_url' THEN
        PERFORM outbox_sqs_destination(d->>'queue_url');
    ELSIF d ? 'topic_arn' THEN
        PERFORM outbox_sns_destination(d->>'topic_arn');
    ELSE
        IF d ? 'method' AND jsonb_typeof(d->'method') NOT IN ('string', 'null') THEN
            RAISE EXCEPTION 'outbox_enqueue: %.method must be a string or null', format('destinations[%s]', i)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF d ? 'signing' AND jsonb_typeof(d->'signing') NOT IN ('boolean', 'null') THEN
            RAISE EXCEPTION 'outbox_enqueue: %.signing is not true, false or null but %', format('destinations[%s]', i),
                jsonb_typeof(d->'signing')
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        PERFORM outbox_http_destination(d->>'url', d->>'method', d->'headers');
    END IF;
END
$fn$;

-- What outbox_enqueue checks of a row's destinations (a non-empty array) and headers h (not
-- 'null'), beyond their presence: 006's rules and messages.
CREATE OR REPLACE FUNCTION outbox_check_row(destinations jsonb, h jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL RESTRICTED AS $fn$
DECLARE
    d  jsonb;
    n  bigint;
BEGIN
    IF outbox_jsonb_too_deep(destinations) OR outbox_jsonb_too_deep(h) THEN
        RAISE EXCEPTION 'outbox_enqueue: destinations or headers nest more than 32 arrays and objects (nesting too deep)'
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    IF jsonb_array_length(destinations) > 64 THEN
        RAISE EXCEPTION 'outbox_enqueue: more than 64 destinations in one row'
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    IF h IS NOT NULL THEN
        PERFORM outbox_check_headers(h, 'outbox_enqueue: headers', false);
    END IF;
    FOR i IN 0 .. jsonb_array_length(destinations) - 1 LOOP
        d := destinations -> i;
        PERFORM outbox_check_destination(d, i);
        -- What the relay sends to an HTTP destination: its headers, the row's, x-idempotent-key;
        -- counted exactly only when the two objects together could exceed the limit.
        IF d ? 'url' AND outbox_jsonb_members(d->'headers') + outbox_jsonb_members(h) >= 64 THEN
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
    END LOOP;
END
$fn$;

-- 006's rules and messages.
CREATE OR REPLACE FUNCTION outbox_enqueue(partition_key uuid, destinations jsonb, payload text,
                                          headers jsonb DEFAULT NULL,
                                          process_after timestamptz DEFAULT NULL,
                                          idempotent_key uuid DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    k  uuid := coalesce(outbox_enqueue.idempotent_key, outbox_uuid7());
    t  timestamptz := clock_timestamp();
    h  jsonb := nullif(outbox_enqueue.headers, 'null'::jsonb);
    seen text := coalesce(current_setting('outbox.checked', true), '');
    memo text;
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
    memo := md5(concat_ws(',', 'v11 row', outbox_enqueue.destinations::text, quote_nullable(h::text)));
    IF strpos(seen, memo) = 0 THEN
        PERFORM outbox_check_row(outbox_enqueue.destinations, h);
        PERFORM set_config('outbox.checked', left(memo || ',' || seen, 33 * 16), false);
    END IF;

    INSERT INTO outbox (idempotent_key, partition_key, destinations, headers, payload,
                        created_at, process_after)
    VALUES (k, outbox_enqueue.partition_key, outbox_enqueue.destinations,
            h, outbox_enqueue.payload,
            t, coalesce(outbox_enqueue.process_after, t));
    RETURN k;
END
$fn$;

-- 006's rules and messages; checked once per session for the same arguments.
CREATE OR REPLACE FUNCTION outbox_http_destination(url text, method text DEFAULT 'POST',
                                                   headers jsonb DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL RESTRICTED AS $fn$
DECLARE
    m    text := upper(coalesce(method, 'POST'));
    seen text := coalesce(current_setting('outbox.checked', true), '');
    memo text := md5(concat_ws(',', 'v11 http', quote_nullable(url), quote_nullable(method), quote_nullable(headers::text)));
BEGIN
    IF strpos(seen, memo) = 0 THEN
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
        END IF;
        PERFORM set_config('outbox.checked', left(memo || ',' || seen, 33 * 16), false);
    END IF;
    IF headers IS NULL OR jsonb_typeof(headers) = 'null' THEN
        headers := NULL;
    END IF;
    RETURN jsonb_build_object('url', url, 'headers', headers,
                              'method', CASE m WHEN 'POST' THEN NULL ELSE lower(m) END);
END
$fn$;

-- One HTTP destination, checked by outbox_http_destination and outbox_enqueue the first time
-- in a session; after that (the same URL, method and headers), the row goes straight in with
-- one statement.
CREATE OR REPLACE FUNCTION outbox_enqueue_http(partition_key uuid, url text, payload text,
                                               method text DEFAULT 'POST',
                                               headers jsonb DEFAULT NULL,
                                               process_after timestamptz DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    memo text := md5(concat_ws(',', 'v11 enqueue_http', quote_nullable(url), quote_nullable(method),
                               quote_nullable(headers::text)));
    k    uuid;
BEGIN
    IF outbox_enqueue_http.partition_key IS NULL OR outbox_enqueue_http.payload IS NULL
       OR strpos(coalesce(current_setting('outbox.checked', true), ''), memo) = 0 THEN
        k := outbox_enqueue(outbox_enqueue_http.partition_key,
                            jsonb_build_array(outbox_http_destination(url, method, headers)),
                            outbox_enqueue_http.payload, NULL, outbox_enqueue_http.process_after);
        PERFORM set_config('outbox.checked',
                           left(memo || ',' || coalesce(current_setting('outbox.checked', true), ''), 33 * 16), false);
        RETURN k;
    END IF;
    -- what outbox_http_destination returns for these arguments
    INSERT INTO outbox (idempotent_key, partition_key, destinations, payload, created_at, process_after)
    SELECT outbox_uuid7_from(s.t, s.g), outbox_enqueue_http.partition_key,
           jsonb_build_array(jsonb_build_object(
               'url', url, 'headers', CASE WHEN jsonb_typeof(headers) <> 'null' THEN headers END,
               'method', CASE upper(coalesce(method, 'POST')) WHEN 'POST' THEN NULL ELSE lower(method) END)),
           outbox_enqueue_http.payload, s.t, coalesce(outbox_enqueue_http.process_after, s.t)
      FROM (SELECT clock_timestamp() AS t, gen_random_uuid() AS g) s
    RETURNING idempotent_key INTO k;
    RETURN k;
END
$fn$;
