/*
 * test_log.c - the log lines (src/relay/util/log.c): one event per line, and in JSON format the
 * event's facts as fields next to the message, escaped so any value parses.
 */
#include "harness.h"
#include "util/log.h"

#include <json-c/json.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Runs fn with stderr sent to a temporary file; returns what it wrote (static buffer). */
static const char *captured(void (*fn)(void))
{
	static char out[32768];
	FILE *tmp = tmpfile();
	int saved = dup(STDERR_FILENO);
	if (!tmp || saved < 0)
		return "";
	dup2(fileno(tmp), STDERR_FILENO);
	fn();
	dup2(saved, STDERR_FILENO);
	close(saved);
	rewind(tmp);
	size_t n = fread(out, 1, sizeof(out) - 1, tmp);
	out[n] = '\0';
	fclose(tmp);
	return out;
}

static void log_delivery_failure(void)
{
	obr_log_event(OBR_LOG_WARN,
	              OBR_LOGF(OBR_LOGF_S("row", "0190a1b2-0000-7000-8000-000000000001"),
	                       OBR_LOGF_S("partition", "p\"1\n"), OBR_LOGF_I("attempt", 3),
	                       OBR_LOGF_S("dest_kind", "http"), OBR_LOGF_S("host", NULL),
	                       OBR_LOGF_I("status", 503), OBR_LOGF_S("msg", "a field may not replace msg")),
	              "delivery failed for row %s: %s", "0190a1b2-0000-7000-8000-000000000001", "HTTP 503");
}

static void test_json_fields(void)
{
	obr_log_configure(OBR_LOG_INFO, OBR_LOG_JSON);
	const char *line = captured(log_delivery_failure);
	CHECK(strchr(line, '\n') == line + strlen(line) - 1);   /* one line */
	struct json_object *o = json_tokener_parse(line);
	CHECK(o != NULL);
	struct json_object *v;
	CHECK(json_object_object_get_ex(o, "msg", &v));
	CHECK_STR_EQ(json_object_get_string(v), "delivery failed for row 0190a1b2-0000-7000-8000-000000000001: HTTP 503");
	CHECK(json_object_object_get_ex(o, "row", &v));
	CHECK_STR_EQ(json_object_get_string(v), "0190a1b2-0000-7000-8000-000000000001");
	CHECK(json_object_object_get_ex(o, "partition", &v));
	CHECK_STR_EQ(json_object_get_string(v), "p\"1\n");
	CHECK(json_object_object_get_ex(o, "attempt", &v) && json_object_is_type(v, json_type_int));
	CHECK_INT_EQ(json_object_get_int(v), 3);
	CHECK(json_object_object_get_ex(o, "status", &v));
	CHECK_INT_EQ(json_object_get_int(v), 503);
	CHECK(!json_object_object_get_ex(o, "host", &v));        /* NULL values are left out */
	CHECK(json_object_object_get_ex(o, "level", &v));
	CHECK_STR_EQ(json_object_get_string(v), "warning");
	json_object_put(o);
}

static void test_text_unchanged(void)
{
	obr_log_configure(OBR_LOG_INFO, OBR_LOG_TEXT);
	const char *line = captured(log_delivery_failure);
	CHECK(strstr(line, " warning: delivery failed for row 0190a1b2-0000-7000-8000-000000000001: HTTP 503\n") != NULL);
	CHECK(strstr(line, "attempt") == NULL);
}

static void log_huge(void)
{
	static char big[20000];
	memset(big, 'x', sizeof(big) - 1);
	obr_log_event(OBR_LOG_ERROR, OBR_LOGF(OBR_LOGF_S("error", big), OBR_LOGF_S("body", big)), "%s", big);
}

static void test_json_line_cut_short_still_parses(void)
{
	obr_log_configure(OBR_LOG_INFO, OBR_LOG_JSON);
	const char *line = captured(log_huge);
	struct json_object *o = json_tokener_parse(line);
	CHECK(o != NULL);
	json_object_put(o);
}

static void log_debug_line(void)
{
	obr_log_event(OBR_LOG_DEBUG, OBR_LOGF(OBR_LOGF_I("n", 1)), "not shown");
}

static void test_level_filters_before_formatting(void)
{
	obr_log_configure(OBR_LOG_INFO, OBR_LOG_JSON);
	CHECK_STR_EQ(captured(log_debug_line), "");
}

int main(int argc, char **argv)
{
	static const struct test tests[] = {
		TEST(test_json_fields),
		TEST(test_text_unchanged),
		TEST(test_json_line_cut_short_still_parses),
		TEST(test_level_filters_before_formatting),
		TEST_END,
	};
	return run_tests(tests, argc, argv);
}
