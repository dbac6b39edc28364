/*
 * harness.h: a tiny header-only test harness for the unit tests.
 *
 *     static void test_something(void) { CHECK(1 + 1 == 2); CHECK_STR_EQ(s, "x"); }
 *     int main(int argc, char **argv) {
 *         static const struct test tests[] = { TEST(test_something), TEST_END };
 *         return run_tests(tests, argc, argv);
 *     }
 *
 * A failed check prints file:line and the values, and ends the current test (the function
 * returns); the other tests still run. run_tests prints "N passed, N failed" and returns the
 * process exit status: 1 when anything failed. An optional argument runs only the tests whose
 * name contains it.
 */
#ifndef OUTBOX_TEST_HARNESS_H
#define OUTBOX_TEST_HARNESS_H

#include <stdio.h>
#include <string.h>

struct test {
	const char *name;
	void (*fn)(void);
};

#define TEST(fn) { #fn, fn }
#define TEST_END { NULL, NULL }

/* Set by a failing check, read by run_tests; one per test executable. */
static int harness_failed;

#define CHECK(cond)                                                                     \
	do {                                                                            \
		if (!(cond)) {                                                          \
			fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, \
				#cond);                                                 \
			harness_failed = 1;                                             \
			return;                                                         \
		}                                                                       \
	} while (0)

#define CHECK_INT_EQ(a, b)                                                                \
	do {                                                                              \
		long long harness_a_ = (long long)(a);                                    \
		long long harness_b_ = (long long)(b);                                    \
		if (harness_a_ != harness_b_) {                                           \
			fprintf(stderr, "%s:%d: CHECK_INT_EQ(%s, %s) failed: %lld != %lld\n", \
				__FILE__, __LINE__, #a, #b, harness_a_, harness_b_);      \
			harness_failed = 1;                                               \
			return;                                                           \
		}                                                                         \
	} while (0)

/* NULL equals only NULL. */
#define CHECK_STR_EQ(a, b)                                                                \
	do {                                                                              \
		const char *harness_a_ = (a);                                             \
		const char *harness_b_ = (b);                                             \
		if (!harness_str_eq(harness_a_, harness_b_)) {                            \
			fprintf(stderr,                                                   \
				"%s:%d: CHECK_STR_EQ(%s, %s) failed:\n  got:      %s%s%s\n"   \
				"  expected: %s%s%s\n",                                   \
				__FILE__, __LINE__, #a, #b, harness_a_ ? "\"" : "",       \
				harness_a_ ? harness_a_ : "NULL", harness_a_ ? "\"" : "", \
				harness_b_ ? "\"" : "", harness_b_ ? harness_b_ : "NULL", \
				harness_b_ ? "\"" : "");                                  \
			harness_failed = 1;                                               \
			return;                                                           \
		}                                                                         \
	} while (0)

static inline int
harness_str_eq(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

static inline int
run_tests(const struct test *tests, int argc, char **argv)
{
	const char *filter = argc > 1 ? argv[1] : NULL;
	int passed = 0;
	int failed = 0;

	for (const struct test *t = tests; t->name != NULL; t++) {
		if (filter != NULL && strstr(t->name, filter) == NULL)
			continue;
		harness_failed = 0;
		t->fn();
		if (harness_failed) {
			printf("FAIL %s\n", t->name);
			failed++;
		} else {
			printf("ok   %s\n", t->name);
			passed++;
		}
		fflush(stdout);
	}
	printf("%d passed, %d failed\n", passed, failed);
	return failed > 0 ? 1 : 0;
}

#endif /* OUTBOX_TEST_HARNESS_H */
