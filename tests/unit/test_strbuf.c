/*
 * test_strbuf.c - bounded strings, PostgreSQL array literals and UTF-8 repair
 * (src/relay/util/strbuf.c): what the relay puts in statement parameters.
 */
#include "harness.h"
#include "util/strbuf.h"

#include <string.h>

static void test_array_literal_quoting(void)
{
	struct obr_strbuf b;
	size_t n = 0;
	obr_strbuf_init(&b, 1024);
	obr_strbuf_puts(&b, "{");
	const char *elems[] = { "plain", "with \"quotes\"", "back\\slash", "{braces},comma", "", NULL };
	for (size_t i = 0; i < sizeof(elems) / sizeof(elems[0]); i++) {
		obr_strbuf_array_sep(&b, &n);
		obr_strbuf_array_elem(&b, elems[i]);
	}
	obr_strbuf_puts(&b, "}");
	CHECK(!b.failed);
	CHECK_STR_EQ(b.data, "{\"plain\",\"with \\\"quotes\\\"\",\"back\\\\slash\",\"{braces},comma\",\"\",NULL}");
	obr_strbuf_free(&b);
}

static void test_cap_fails_instead_of_growing(void)
{
	struct obr_strbuf b;
	obr_strbuf_init(&b, 8);
	obr_strbuf_puts(&b, "1234567");
	CHECK(!b.failed);
	obr_strbuf_puts(&b, "8");
	CHECK(b.failed);
	obr_strbuf_free(&b);
}

static void test_utf8_sanitize(void)
{
	static const struct {
		const char *in, *out;
	} cases[] = {
		{ "plain ascii", "plain ascii" },
		{ "caf\xc3\xa9 \xf0\x9f\x98\x80", "caf\xc3\xa9 \xf0\x9f\x98\x80" },   /* valid stays */
		{ "caf\xe9!", "caf?!" },                                          /* Latin-1 byte */
		{ "cut \xf0\x9f\x98", "cut " },                                   /* truncated at the end */
		{ "cut \xe2\x82", "cut " },
		{ "mid \xf0\x9f\x98\"x", "mid ???\"x" },                           /* truncated in the middle */
		{ "overlong \xc0\xaf", "overlong ??" },
		{ "surrogate \xed\xa0\x80", "surrogate ???" },
		{ "too big \xf4\x90\x80\x80", "too big ????" },
		{ "lone \x80 cont", "lone ? cont" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char buf[64];
		snprintf(buf, sizeof(buf), "%s", cases[i].in);
		obr_utf8_sanitize(buf);
		if (strcmp(buf, cases[i].out))
			fprintf(stderr, "case %zu: got \"%s\"\n", i, buf);
		CHECK_STR_EQ(buf, cases[i].out);
	}
}

int main(int argc, char **argv)
{
	static const struct test tests[] = {
		TEST(test_array_literal_quoting),
		TEST(test_cap_fails_instead_of_growing),
		TEST(test_utf8_sanitize),
		TEST_END,
	};
	return run_tests(tests, argc, argv);
}
