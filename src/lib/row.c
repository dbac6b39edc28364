/*
 * row.c: building outbox rows in the crate's format (see outbox.h and row.h).
 *
 * json-c ownership rule of the project: whoever holds a reference (from json_object_new_* or
 * json_object_get) puts it, or hands it to a container. json-c leaves the value with the
 * caller when json_object_object_add / json_object_array_add fail, so the helpers below put it
 * then: after calling one, the value is never the caller's any more.
 */
#include "row.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "error.h"
#include "pgarray.h"
#include "uuid7.h"
#include "rowformat.h"

/* Takes val (may be NULL: JSON null) in every case. */
static enum outbox_rc
obj_add(json_object *obj, const char *key, json_object *val)
{
	if (json_object_object_add(obj, key, val) != 0) {
		json_object_put(val);
		return OUTBOX_E_NOMEM;
	}
	return OUTBOX_OK;
}

/* Adds a string member. A NULL from json_object_new_string_len is out of memory, never null. */
static enum outbox_rc
obj_add_string(json_object *obj, const char *key, const char *s, size_t len)
{
	json_object *val;

	if (len > INT_MAX)
		return OUTBOX_E_TOO_BIG; /* callers bound their strings far below this */
	val = json_object_new_string_len(s, (int)len);
	if (val == NULL)
		return OUTBOX_E_NOMEM;
	return obj_add(obj, key, val);
}

/* Takes val in every case. */
static enum outbox_rc
arr_add(json_object *arr, json_object *val)
{
	if (json_object_array_add(arr, val) != 0) {
		json_object_put(val);
		return OUTBOX_E_NOMEM;
	}
	return OUTBOX_OK;
}

/* The message for a json-c step that failed: out of memory, or a string json-c cannot hold. */
static enum outbox_rc
nomem(struct outbox_error *err, enum outbox_rc rc, const char *doing)
{
	if (rc == OUTBOX_E_TOO_BIG)
		return outbox__fail(err, rc, "%s: a value is too large", doing);
	return outbox__fail(err, OUTBOX_E_NOMEM, "out of memory %s", doing);
}

static enum outbox_rc
room_for_destination(const struct outbox_row *row, struct outbox_error *err)
{
	if (json_object_array_length(row->destinations) >= OUTBOX_MAX_DESTINATIONS)
		return outbox__fail(err, OUTBOX_E_TOO_BIG,
				    "the row already has %d destinations, the limit",
				    OUTBOX_MAX_DESTINATIONS);
	return OUTBOX_OK;
}

/*
 * Checks a caller's name/value array and, unless it is empty and no Content-Type is wanted,
 * turns it into a JSON object. *out is NULL (SQL or JSON null) for an empty array. dest: an
 * HTTP destination's headers, whose {{NAME}} values the relay fills.
 */
static enum outbox_rc
headers_from_array(const struct outbox_header *headers, size_t n, int dest, int add_json_type,
		   json_object **out, struct outbox_error *err)
{
	json_object *obj;
	int has_type = 0;
	enum outbox_rc rc;

	if (n > 0 && headers == NULL)
		return outbox__fail(err, OUTBOX_E_INVALID, "headers is NULL but n_headers is %zu", n);
	if (n > OUTBOX_MAX_HEADERS)
		return outbox__fail(err, OUTBOX_E_TOO_BIG, "%zu headers, over the limit of %d", n,
				    OUTBOX_MAX_HEADERS);
	for (size_t i = 0; i < n; i++) {
		const char *name = headers[i].name;

		if (name == NULL)
			return outbox__fail(err, OUTBOX_E_INVALID, "headers[%zu].name is NULL", i);
		if ((rc = outbox__check_header_name(name, strlen(name), err)) != OUTBOX_OK)
			return rc;
		if (headers[i].value == NULL)
			return outbox__fail(err, OUTBOX_E_INVALID, "headers[%zu].value is NULL", i);
		rc = outbox__check_header_value(name, headers[i].value, strlen(headers[i].value),
						err);
		if (rc != OUTBOX_OK)
			return rc;
		if (dest && (rc = outbox__check_placeholder("headers", name, headers[i].value, err)) !=
				    OUTBOX_OK)
			return rc;
		/* A JSON object holds one value per name, and HTTP names ignore case. */
		for (size_t j = 0; j < i; j++)
			if (strcasecmp(headers[j].name, name) == 0)
				return outbox__fail(err, OUTBOX_E_INVALID,
						    "header \"%s\" appears twice (names ignore case)",
						    name);
		if (strcasecmp(name, "Content-Type") == 0)
			has_type = 1;
	}
	if (n == 0 && !add_json_type) {
		*out = NULL;
		return OUTBOX_OK;
	}

	obj = json_object_new_object();
	if (obj == NULL)
		return nomem(err, OUTBOX_E_NOMEM, "building headers");
	for (size_t i = 0; i < n; i++) {
		rc = obj_add_string(obj, headers[i].name, headers[i].value, strlen(headers[i].value));
		if (rc != OUTBOX_OK)
			goto fail;
	}
	/* What the crate's http_*_json add; a Content-Type of the caller's own wins. */
	if (add_json_type && !has_type) {
		rc = obj_add_string(obj, "Content-Type", "application/json", 16);
		if (rc != OUTBOX_OK)
			goto fail;
	}
	*out = obj;
	return OUTBOX_OK;
fail:
	json_object_put(obj);
	return nomem(err, rc, "building headers");
}

/* {"url": url, "headers": {...} | null, "method": null | "put" | "patch"}, the crate's field order. */
static enum outbox_rc
http_destination(const char *url, enum outbox_http_method method,
		 const struct outbox_header *headers, size_t n_headers, int add_json_type,
		 json_object **out, struct outbox_error *err)
{
	json_object *dest = NULL;
	json_object *hdrs = NULL;
	const char *m;
	enum outbox_rc rc;

	if ((rc = outbox__check_http_url("url", url, url == NULL ? 0 : strlen(url), err)) != OUTBOX_OK)
		return rc;
	switch (method) {
	case OUTBOX_HTTP_POST:
		m = NULL; /* the crate writes null for POST */
		break;
	case OUTBOX_HTTP_PUT:
		m = "put";
		break;
	case OUTBOX_HTTP_PATCH:
		m = "patch";
		break;
	default:
		return outbox__fail(err, OUTBOX_E_INVALID, "unknown HTTP method %d", (int)method);
	}
	if ((rc = headers_from_array(headers, n_headers, 1, add_json_type, &hdrs, err)) != OUTBOX_OK)
		return rc;

	dest = json_object_new_object();
	if (dest == NULL) {
		json_object_put(hdrs);
		return nomem(err, OUTBOX_E_NOMEM, "building an HTTP destination");
	}
	if ((rc = obj_add_string(dest, "url", url, strlen(url))) != OUTBOX_OK)
		goto fail_hdrs;
	if ((rc = obj_add(dest, "headers", hdrs)) != OUTBOX_OK)
		goto fail;
	if (m == NULL)
		rc = obj_add(dest, "method", NULL);
	else
		rc = obj_add_string(dest, "method", m, strlen(m));
	if (rc != OUTBOX_OK)
		goto fail;
	*out = dest;
	return OUTBOX_OK;
fail_hdrs:
	json_object_put(hdrs);
fail:
	json_object_put(dest);
	return nomem(err, rc, "building an HTTP destination");
}

/* {key: value}: the SQS and SNS shapes. */
static enum outbox_rc
single_member_destination(const char *key, const char *value, json_object **out,
			  struct outbox_error *err)
{
	json_object *dest = json_object_new_object();
	enum outbox_rc rc;

	if (dest == NULL)
		return nomem(err, OUTBOX_E_NOMEM, "building a destination");
	if ((rc = obj_add_string(dest, key, value, strlen(value))) != OUTBOX_OK) {
		json_object_put(dest);
		return nomem(err, rc, "building a destination");
	}
	*out = dest;
	return OUTBOX_OK;
}

/* A row with no destination yet: keys, payload copy, created_at. */
static enum outbox_rc
row_begin(struct outbox_row **out, const char *partition_key, const char *payload,
	  struct outbox_error *err)
{
	unsigned char pk[16];
	unsigned char key[16];
	struct outbox_row *row;
	size_t len;

	if (partition_key == NULL)
		return outbox__fail(err, OUTBOX_E_INVALID, "partition_key is NULL");
	if (outbox_uuid_parse(partition_key, pk, NULL) != OUTBOX_OK)
		return outbox__fail(err, OUTBOX_E_INVALID,
				    "partition_key is not a UUID (8-4-4-4-12 hex digits)");
	if (payload == NULL)
		return outbox__fail(err, OUTBOX_E_INVALID, "payload is NULL");
	len = strlen(payload);
	if (len >= OUTBOX_MAX_BATCH_BYTES)
		return outbox__fail(err, OUTBOX_E_TOO_BIG,
				    "payload is %zu bytes long, more than one insert can carry", len);

	row = calloc(1, sizeof(*row));
	if (row == NULL)
		return nomem(err, OUTBOX_E_NOMEM, "allocating a row");
	row->payload = malloc(len + 1);
	row->destinations = json_object_new_array();
	if (row->payload == NULL || row->destinations == NULL) {
		outbox_row_free(row);
		return nomem(err, OUTBOX_E_NOMEM, "allocating a row");
	}
	memcpy(row->payload, payload, len + 1);
	row->payload_len = len;
	outbox_uuid_format(pk, row->partition_key);
	outbox_uuid7(key);
	outbox_uuid_format(key, row->idempotent_key);
	row->created_at_us = outbox__now_us();
	row->process_after_us = row->created_at_us;
	*out = row;
	return OUTBOX_OK;
}

static enum outbox_rc
add_http(struct outbox_row *row, const char *url, enum outbox_http_method method,
	 const struct outbox_header *headers, size_t n_headers, int add_json_type,
	 struct outbox_error *err)
{
	json_object *dest = NULL;
	enum outbox_rc rc;

	if (row == NULL)
		return outbox__fail(err, OUTBOX_E_INVALID, "row is NULL");
	if ((rc = room_for_destination(row, err)) != OUTBOX_OK)
		return rc;
	rc = http_destination(url, method, headers, n_headers, add_json_type, &dest, err);
	if (rc != OUTBOX_OK)
		return rc;
	if ((rc = arr_add(row->destinations, dest)) != OUTBOX_OK)
		return nomem(err, rc, "adding a destination");
	return OUTBOX_OK;
}

enum outbox_rc
outbox_row_add_http(struct outbox_row *row, const char *url, enum outbox_http_method method,
		    const struct outbox_header *headers, size_t n_headers, struct outbox_error *err)
{
	return add_http(row, url, method, headers, n_headers, 0, err);
}

enum outbox_rc
outbox_row_add_sqs(struct outbox_row *row, const char *queue_url, struct outbox_error *err)
{
	json_object *dest = NULL;
	enum outbox_rc rc;

	if (row == NULL)
		return outbox__fail(err, OUTBOX_E_INVALID, "row is NULL");
	if ((rc = room_for_destination(row, err)) != OUTBOX_OK)
		return rc;
	rc = outbox__check_http_url("queue_url", queue_url,
				    queue_url == NULL ? 0 : strlen(queue_url), err);
	if (rc != OUTBOX_OK)
		return rc;
	if ((rc = single_member_destination("queue_url", queue_url, &dest, err)) != OUTBOX_OK)
		return rc;
	if ((rc = arr_add(row->destinations, dest)) != OUTBOX_OK)
		return nomem(err, rc, "adding a destination");
	return OUTBOX_OK;
}

enum outbox_rc
outbox_row_add_sns(struct outbox_row *row, const char *topic_arn, struct outbox_error *err)
{
	json_object *dest = NULL;
	enum outbox_rc rc;

	if (row == NULL)
		return outbox__fail(err, OUTBOX_E_INVALID, "row is NULL");
	if ((rc = room_for_destination(row, err)) != OUTBOX_OK)
		return rc;
	rc = outbox__check_topic_arn("topic_arn", topic_arn,
				     topic_arn == NULL ? 0 : strlen(topic_arn), err);
	if (rc != OUTBOX_OK)
		return rc;
	if ((rc = single_member_destination("topic_arn", topic_arn, &dest, err)) != OUTBOX_OK)
		return rc;
	if ((rc = arr_add(row->destinations, dest)) != OUTBOX_OK)
		return nomem(err, rc, "adding a destination");
	return OUTBOX_OK;
}

enum extra_kind { EXTRA_NONE, EXTRA_SQS, EXTRA_SNS };

/* The crate's Outbox::http: an optional SQS/SNS destination first, then the HTTP one. */
static enum outbox_rc
http_json_row(struct outbox_row **out, const char *partition_key, const char *url,
	      enum outbox_http_method method, enum extra_kind extra, const char *extra_target,
	      const struct outbox_header *headers, size_t n_headers, const char *json_payload,
	      struct outbox_error *err)
{
	struct outbox_row *row = NULL;
	json_object *parsed = NULL;
	enum outbox_rc rc;

	if (out == NULL)
		return outbox__fail(err, OUTBOX_E_INVALID, "out is NULL");
	/* The crate takes a serde_json::Value, so its payload is always JSON; check ours is. */
	if ((rc = outbox__parse_json("json_payload", json_payload, OUTBOX_MAX_JSON_DEPTH, &parsed, err)) != OUTBOX_OK)
		return rc;
	json_object_put(parsed);
	if ((rc = row_begin(&row, partition_key, json_payload, err)) != OUTBOX_OK)
		return rc;
	if (extra == EXTRA_SQS)
		rc = outbox_row_add_sqs(row, extra_target, err);
	else if (extra == EXTRA_SNS)
		rc = outbox_row_add_sns(row, extra_target, err);
	if (rc == OUTBOX_OK)
		rc = add_http(row, url, method, headers, n_headers, 1, err);
	if (rc != OUTBOX_OK) {
		outbox_row_free(row);
		return rc;
	}
	*out = row;
	return OUTBOX_OK;
}

enum outbox_rc
outbox_row_http_post_json(struct outbox_row **out, const char *partition_key, const char *url,
			  const struct outbox_header *headers, size_t n_headers,
			  const char *json_payload, struct outbox_error *err)
{
	return http_json_row(out, partition_key, url, OUTBOX_HTTP_POST, EXTRA_NONE, NULL, headers,
			     n_headers, json_payload, err);
}

enum outbox_rc
outbox_row_http_put_json(struct outbox_row **out, const char *partition_key, const char *url,
			 const struct outbox_header *headers, size_t n_headers,
			 const char *json_payload, struct outbox_error *err)
{
	return http_json_row(out, partition_key, url, OUTBOX_HTTP_PUT, EXTRA_NONE, NULL, headers,
			     n_headers, json_payload, err);
}

enum outbox_rc
outbox_row_http_patch_json(struct outbox_row **out, const char *partition_key, const char *url,
			   const struct outbox_header *headers, size_t n_headers,
			   const char *json_payload, struct outbox_error *err)
{
	return http_json_row(out, partition_key, url, OUTBOX_HTTP_PATCH, EXTRA_NONE, NULL, headers,
			     n_headers, json_payload, err);
}

enum outbox_rc
outbox_row_http_and_sqs(struct outbox_row **out, const char *partition_key, const char *url,
			const char *queue_url, const struct outbox_header *headers,
			size_t n_headers, const char *json_payload, struct outbox_error *err)
{
	return http_json_row(out, partition_key, url, OUTBOX_HTTP_POST, EXTRA_SQS, queue_url,
			     headers, n_headers, json_payload, err);
}

enum outbox_rc
outbox_row_http_and_sns(struct outbox_row **out, const char *partition_key, const char *url,
			const char *topic_arn, const struct outbox_header *headers,
			size_t n_headers, const char *json_payload, struct outbox_error *err)
{
	return http_json_row(out, partition_key, url, OUTBOX_HTTP_POST, EXTRA_SNS, topic_arn,
			     headers, n_headers, json_payload, err);
}

/* Outbox::sqs / Outbox::sns: the headers become the row's headers column. */
static enum outbox_rc
queue_row(struct outbox_row **out, const char *partition_key, enum extra_kind kind,
	  const char *target, const struct outbox_header *headers, size_t n_headers,
	  const char *payload, struct outbox_error *err)
{
	struct outbox_row *row = NULL;
	json_object *hdrs = NULL;
	enum outbox_rc rc;

	if (out == NULL)
		return outbox__fail(err, OUTBOX_E_INVALID, "out is NULL");
	if ((rc = row_begin(&row, partition_key, payload, err)) != OUTBOX_OK)
		return rc;
	if (kind == EXTRA_SQS)
		rc = outbox_row_add_sqs(row, target, err);
	else
		rc = outbox_row_add_sns(row, target, err);
	if (rc == OUTBOX_OK)
		rc = headers_from_array(headers, n_headers, 0, 0, &hdrs, err);
	if (rc != OUTBOX_OK) {
		outbox_row_free(row);
		return rc;
	}
	row->headers = hdrs;
	*out = row;
	return OUTBOX_OK;
}

enum outbox_rc
outbox_row_sqs(struct outbox_row **out, const char *partition_key, const char *queue_url,
	       const struct outbox_header *headers, size_t n_headers, const char *payload,
	       struct outbox_error *err)
{
	return queue_row(out, partition_key, EXTRA_SQS, queue_url, headers, n_headers, payload,
			 err);
}

enum outbox_rc
outbox_row_sns(struct outbox_row **out, const char *partition_key, const char *topic_arn,
	       const struct outbox_header *headers, size_t n_headers, const char *payload,
	       struct outbox_error *err)
{
	return queue_row(out, partition_key, EXTRA_SNS, topic_arn, headers, n_headers, payload,
			 err);
}

enum outbox_rc
outbox_row_new(struct outbox_row **out, const char *partition_key, const char *destinations_json,
	       const char *headers_json, const char *payload, struct outbox_error *err)
{
	struct outbox_row *row = NULL;
	json_object *dests = NULL;
	json_object *hdrs = NULL;
	enum outbox_rc rc;

	if (out == NULL)
		return outbox__fail(err, OUTBOX_E_INVALID, "out is NULL");
	if (destinations_json != NULL) {
		rc = outbox__parse_json("destinations_json", destinations_json, OUTBOX__ROW_JSON_DEPTH,
					&dests, err);
		if (rc != OUTBOX_OK)
			return rc;
		if (!json_object_is_type(dests, json_type_array)) {
			rc = outbox__fail(err, OUTBOX_E_INVALID, "destinations_json is not a JSON array");
			goto fail;
		}
		if (json_object_array_length(dests) > OUTBOX_MAX_DESTINATIONS) {
			rc = outbox__fail(err, OUTBOX_E_TOO_BIG,
					  "destinations_json has %zu destinations, over the limit of %d",
					  json_object_array_length(dests), OUTBOX_MAX_DESTINATIONS);
			goto fail;
		}
		for (size_t i = 0; i < json_object_array_length(dests); i++) {
			rc = outbox__check_destination(json_object_array_get_idx(dests, i), i,
						       OUTBOX__RF_WRITE, NULL, err);
			if (rc != OUTBOX_OK)
				goto fail;
		}
	}
	if (headers_json != NULL) {
		/* JSON null is accepted as "no headers", like the column's SQL NULL. */
		rc = outbox__parse_json("headers_json", headers_json, OUTBOX__ROW_JSON_DEPTH, &hdrs,
					err);
		if (rc != OUTBOX_OK)
			goto fail;
		if (hdrs != NULL &&
		    (rc = outbox__check_headers_object("headers_json", hdrs, false, OUTBOX__RF_WRITE,
						       err)) != OUTBOX_OK)
			goto fail;
	}
	if ((rc = row_begin(&row, partition_key, payload, err)) != OUTBOX_OK)
		goto fail;
	if (dests != NULL) {
		json_object_put(row->destinations);
		row->destinations = dests;
	}
	row->headers = hdrs;
	*out = row;
	return OUTBOX_OK;
fail:
	json_object_put(dests);
	json_object_put(hdrs);
	return rc;
}

/* Finds name in obj ignoring case; returns the stored spelling or NULL. */
static const char *
find_header(json_object *obj, const char *name)
{
	struct json_object_iterator it = json_object_iter_begin(obj);
	struct json_object_iterator end = json_object_iter_end(obj);

	for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it))
		if (strcasecmp(json_object_iter_peek_name(&it), name) == 0)
			return json_object_iter_peek_name(&it);
	return NULL;
}

enum outbox_rc
outbox_row_set_header(struct outbox_row *row, const char *name, const char *value,
		      struct outbox_error *err)
{
	char old_name[OUTBOX_MAX_HEADER_NAME + 1];
	const char *found;
	int created = 0;
	enum outbox_rc rc;

	if (row == NULL)
		return outbox__fail(err, OUTBOX_E_INVALID, "row is NULL");
	if (name == NULL)
		return outbox__fail(err, OUTBOX_E_INVALID, "header name is NULL");
	if ((rc = outbox__check_header_name(name, strlen(name), err)) != OUTBOX_OK)
		return rc;
	if (value == NULL)
		return outbox__fail(err, OUTBOX_E_INVALID, "value of header \"%s\" is NULL", name);
	if ((rc = outbox__check_header_value(name, value, strlen(value), err)) != OUTBOX_OK)
		return rc;

	if (row->headers == NULL) {
		row->headers = json_object_new_object();
		if (row->headers == NULL)
			return nomem(err, OUTBOX_E_NOMEM, "setting a header");
		created = 1;
	}
	found = find_header(row->headers, name);
	if (found == NULL && json_object_object_length(row->headers) >= OUTBOX_MAX_HEADERS)
		return outbox__fail(err, OUTBOX_E_TOO_BIG, "the row already has %d headers, the limit",
				    OUTBOX_MAX_HEADERS);
	old_name[0] = '\0';
	if (found != NULL && strcmp(found, name) != 0) {
		/* Copied: deleting the entry frees the stored name. Bounded by the name check. */
		size_t len = strlen(found);

		memcpy(old_name, found, len + 1);
	}
	/* Add first, then drop the other spelling: on failure the row is as it was. */
	rc = obj_add_string(row->headers, name, value, strlen(value));
	if (rc != OUTBOX_OK) {
		if (created) {
			json_object_put(row->headers);
			row->headers = NULL;
		}
		return nomem(err, rc, "setting a header");
	}
	if (old_name[0] != '\0')
		json_object_object_del(row->headers, old_name);
	return OUTBOX_OK;
}

#define TRACESTATE_MAX 512

static int
all_lower_hex(const char *s, size_t n, int *all_zero)
{
	*all_zero = 1;
	for (size_t i = 0; i < n; i++) {
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return 0;
		if (s[i] != '0')
			*all_zero = 0;
	}
	return 1;
}

/* vv-<trace id 32>-<parent id 16>-<flags 2>: what 008's trigger accepts. */
static int
traceparent_valid(const char *tp)
{
	int zero;

	if (strlen(tp) != 55 || tp[2] != '-' || tp[35] != '-' || tp[52] != '-')
		return 0;
	if (!all_lower_hex(tp, 2, &zero) || (tp[0] == 'f' && tp[1] == 'f'))
		return 0;
	if (!all_lower_hex(tp + 3, 32, &zero) || zero)
		return 0;
	if (!all_lower_hex(tp + 36, 16, &zero) || zero)
		return 0;
	return all_lower_hex(tp + 53, 2, &zero);
}

enum outbox_rc
outbox_row_set_trace_context(struct outbox_row *row, const char *traceparent, const char *tracestate,
			     struct outbox_error *err)
{
	struct json_object *backup = NULL;
	enum outbox_rc rc;

	if (row == NULL)
		return outbox__fail(err, OUTBOX_E_INVALID, "row is NULL");
	if (traceparent == NULL)
		return outbox__fail(err, OUTBOX_E_INVALID, "traceparent is NULL");
	if (!traceparent_valid(traceparent))
		return outbox__fail(err, OUTBOX_E_INVALID,
				    "traceparent is not a W3C trace context (vv-<32 hex>-<16 hex>-<2 hex>, lowercase, "
				    "ids not all zeros)");
	if (tracestate != NULL) {
		size_t len = strlen(tracestate);

		if (len > TRACESTATE_MAX)
			return outbox__fail(err, OUTBOX_E_TOO_BIG, "tracestate is %zu bytes, more than %d", len,
					    TRACESTATE_MAX);
		for (size_t i = 0; i < len; i++)
			if ((unsigned char)tracestate[i] < 0x20 || (unsigned char)tracestate[i] > 0x7e)
				return outbox__fail(err, OUTBOX_E_INVALID,
						    "tracestate has a byte outside printable ASCII at offset %zu", i);
	}
	/* Two headers: a failure of the second puts the first one back. */
	if (row->headers != NULL && json_object_deep_copy(row->headers, &backup, NULL) != 0)
		return nomem(err, OUTBOX_E_NOMEM, "setting the trace context");
	rc = outbox_row_set_header(row, "traceparent", traceparent, err);
	if (rc == OUTBOX_OK && tracestate != NULL && tracestate[0] != '\0')
		rc = outbox_row_set_header(row, "tracestate", tracestate, err);
	if (rc != OUTBOX_OK) {
		json_object_put(row->headers);
		row->headers = backup;
		return rc;
	}
	json_object_put(backup);
	return OUTBOX_OK;
}

enum outbox_rc
outbox__row_check(const struct outbox_row *row, size_t index, struct outbox_error *err)
{
	struct outbox_error why;
	enum outbox_rc rc;

	/* The relay's rules, which the SQL helpers apply too: a row that breaks them is parked. */
	rc = outbox__check_row(row->destinations, row->headers, OUTBOX__RF_WRITE, NULL, &why);
	if (rc != OUTBOX_OK)
		return outbox__fail(err, rc, "rows[%zu]: %s", index, why.message);
	return OUTBOX_OK;
}

enum outbox_rc
outbox_row_set_idempotent_key(struct outbox_row *row, const char *idempotent_key,
			      struct outbox_error *err)
{
	unsigned char key[16];

	if (row == NULL)
		return outbox__fail(err, OUTBOX_E_INVALID, "row is NULL");
	if (idempotent_key == NULL)
		return outbox__fail(err, OUTBOX_E_INVALID, "idempotent_key is NULL");
	if (outbox_uuid_parse(idempotent_key, key, NULL) != OUTBOX_OK)
		return outbox__fail(err, OUTBOX_E_INVALID,
				    "idempotent_key is not a UUID (8-4-4-4-12 hex digits)");
	outbox_uuid_format(key, row->idempotent_key);
	return OUTBOX_OK;
}

enum outbox_rc
outbox_row_delay(struct outbox_row *row, int64_t unix_ms, struct outbox_error *err)
{
	if (row == NULL)
		return outbox__fail(err, OUTBOX_E_INVALID, "row is NULL");
	if (unix_ms < 0 || unix_ms > OUTBOX__MAX_UNIX_US / 1000)
		return outbox__fail(err, OUTBOX_E_INVALID,
				    "delay %lld ms is not between 1970 and the end of 9999",
				    (long long)unix_ms);
	row->process_after_us = unix_ms * 1000;
	return OUTBOX_OK;
}

enum outbox_rc
outbox_row_delay_by(struct outbox_row *row, int64_t delay_ms, struct outbox_error *err)
{
	if (row == NULL)
		return outbox__fail(err, OUTBOX_E_INVALID, "row is NULL");
	if (delay_ms < 0)
		return outbox__fail(err, OUTBOX_E_INVALID, "delay of %lld ms is negative",
				    (long long)delay_ms);
	if (delay_ms > (OUTBOX__MAX_UNIX_US - row->created_at_us) / 1000)
		return outbox__fail(err, OUTBOX_E_INVALID,
				    "delay of %lld ms ends after the year 9999", (long long)delay_ms);
	row->process_after_us = row->created_at_us + delay_ms * 1000;
	return OUTBOX_OK;
}

const char *
outbox_row_idempotent_key(const struct outbox_row *row)
{
	return row == NULL ? NULL : row->idempotent_key;
}

const char *
outbox_row_partition_key(const struct outbox_row *row)
{
	return row == NULL ? NULL : row->partition_key;
}

const char *
outbox_row_payload(const struct outbox_row *row)
{
	return row == NULL ? NULL : row->payload;
}

int64_t
outbox_row_created_at_us(const struct outbox_row *row)
{
	return row == NULL ? 0 : row->created_at_us;
}

int64_t
outbox_row_process_after_us(const struct outbox_row *row)
{
	return row == NULL ? 0 : row->process_after_us;
}

size_t
outbox_row_destination_count(const struct outbox_row *row)
{
	return row == NULL ? 0 : json_object_array_length(row->destinations);
}

const char *
outbox_row_destinations_json(const struct outbox_row *row)
{
	if (row == NULL)
		return NULL;
	return json_object_to_json_string_ext(row->destinations, OUTBOX__JSON_FLAGS);
}

const char *
outbox_row_headers_json(const struct outbox_row *row)
{
	if (row == NULL || row->headers == NULL)
		return NULL;
	return json_object_to_json_string_ext(row->headers, OUTBOX__JSON_FLAGS);
}

void
outbox_row_free(struct outbox_row *row)
{
	if (row == NULL)
		return;
	json_object_put(row->destinations);
	json_object_put(row->headers);
	free(row->payload);
	free(row);
}
