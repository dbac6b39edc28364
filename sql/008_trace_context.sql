-- 008: W3C Trace Context through the outbox. A transaction that sets outbox.traceparent (and
-- optionally outbox.tracestate) with SET LOCAL gets them as headers on every outbox row it
-- writes, by plain INSERT or the SQL helpers, unless the row sets them itself. The relay sends
-- row headers as HTTP headers and as SQS/SNS message attributes, so the consumer continues the
-- writer's trace.
--
-- Writers that do not trace pay for one current_setting() per row: the trigger's WHEN clause
-- is evaluated without entering PL/pgSQL. A malformed traceparent is ignored (tracing must
-- never fail a business transaction); a tracestate goes only with a traceparent.
CREATE OR REPLACE FUNCTION outbox_trace_context() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    tp text := current_setting('outbox.traceparent', true);
    ts text := current_setting('outbox.tracestate', true);
    h jsonb := coalesce(NEW.headers, '{}'::jsonb);
BEGIN
    IF jsonb_typeof(h) <> 'object'
       OR tp !~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
       OR tp ~ '^ff-' OR tp ~ '^[0-9a-f]{2}-0{32}-' OR tp ~ '-0{16}-[0-9a-f]{2}$'
       OR EXISTS (SELECT 1 FROM jsonb_object_keys(h) k WHERE lower(k) IN ('traceparent', 'tracestate')) THEN
        RETURN NEW;
    END IF;
    h := h || jsonb_build_object('traceparent', tp);
    IF ts IS NOT NULL AND ts <> '' AND length(ts) <= 512 AND ts !~ '[^\x20-\x7e]' THEN
        h := h || jsonb_build_object('tracestate', ts);
    END IF;
    NEW.headers := h;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER outbox_trace_context BEFORE INSERT ON outbox
    FOR EACH ROW WHEN (coalesce(current_setting('outbox.traceparent', true), '') <> '')
    EXECUTE FUNCTION outbox_trace_context();
