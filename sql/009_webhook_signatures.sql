-- 009: Standard Webhooks signatures (OUTBOX_WEBHOOK_SECRET). The relay sets webhook-id,
-- webhook-timestamp and webhook-signature on signed HTTP deliveries, so a row may not set them
-- (it could pass off its own id, time or signature as the relay's): the SQL helpers now refuse
-- them as liboutbox does (src/lib/rowformat.c), in a destination's headers and in the row's.
-- An HTTP destination may carry "signing": false (opting out of the signatures), true or null;
-- anything else is refused. outbox_http_destination keeps its signature; to opt out:
--   outbox_http_destination('https://example.com/hook') || '{"signing": false}'
--
-- Only the helper functions change (CREATE OR REPLACE, 006's signatures): old rows are never
-- read or rewritten, so a table the crate filled migrates at once. An old pending row that sets
-- one of these headers is parked by the relay with the reason, like any row it cannot send.

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
        IF d ? 'signing' AND jsonb_typeof(d->'signing') NOT IN ('boolean', 'null') THEN
            RAISE EXCEPTION 'outbox_enqueue: %.signing is not true, false or null but %', what,
                jsonb_typeof(d->'signing')
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        PERFORM outbox_http_destination(d->>'url', d->>'method', d->'headers');
    END IF;
END
$$;
