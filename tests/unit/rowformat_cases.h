/*
 * rowformat_cases.h: the one table of row-format cases (tests/cases/rowformat_cases.json),
 * run by test_row.c against liboutbox, by test_destination.c against the relay's parser and
 * by tests/integration/test_row_format.py against the SQL helpers and the running relay.
 *
 * Each case: destinations and headers as the row's JSON text (headers may be null), refused
 * (null, or the words every writer's refusal holds) and relay ("sends" or "parks"). A row the
 * relay parks is one every writer refuses; "sends" with a refusal is a row the crate's own
 * writers may produce, which the relay still reads.
 */
#ifndef OBR_ROWFORMAT_CASES_H
#define OBR_ROWFORMAT_CASES_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

struct rf_case {
	const char *name;
	const char *destinations;
	const char *headers;  /* NULL: SQL NULL */
	const char *refused;  /* NULL: every writer accepts it */
	bool parked;          /* the relay parks it */
};

static const char *rf_string(json_object *obj, const char *key)
{
	json_object *v = NULL;
	json_object_object_get_ex(obj, key, &v);
	return json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

/* The table (an owned JSON array; put it when done), or NULL with a message on stderr. */
static json_object *rf_cases_load(void)
{
	json_object *cases = json_object_from_file(OBR_ROWFORMAT_CASES);
	if (!json_object_is_type(cases, json_type_array) || json_object_array_length(cases) == 0) {
		fprintf(stderr, "cannot read the cases in %s\n", OBR_ROWFORMAT_CASES);
		json_object_put(cases);
		return NULL;
	}
	return cases;
}

/* Case i of the table; false (with a message) when it is malformed. */
static bool rf_case_get(json_object *cases, size_t i, struct rf_case *c)
{
	json_object *obj = json_object_array_get_idx(cases, i);
	const char *relay = rf_string(obj, "relay");

	c->name = rf_string(obj, "case");
	c->destinations = rf_string(obj, "destinations");
	c->headers = rf_string(obj, "headers");
	c->refused = rf_string(obj, "refused");
	c->parked = relay && !strcmp(relay, "parks");
	if (!c->name || !c->destinations || !relay || (strcmp(relay, "parks") && strcmp(relay, "sends"))) {
		fprintf(stderr, "case %zu of %s is malformed\n", i, OBR_ROWFORMAT_CASES);
		return false;
	}
	return true;
}

#endif
