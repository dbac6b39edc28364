/*
 * fuzz.h - what the fuzz targets share: the libFuzzer entry point, splitting an input into
 * text fields, and a check that aborts (libFuzzer and the corpus tests report an abort).
 *
 * Each target is built twice: with standalone_main.c, so the seed corpus runs as an ordinary
 * test (under ASan/UBSan or valgrind), and, with -Dfuzz=true under clang, with libFuzzer.
 */
#ifndef OBR_FUZZ_H
#define OBR_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* The separator of an input's fields: a line holding only "%%". */
#define FUZZ_SEPARATOR "\n%%\n"
#define FUZZ_MAX_FIELDS 8

/* The libFuzzer entry point every target defines. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Something that must hold for every input: a failure is a finding. */
#define FUZZ_CHECK(cond)                                                                       \
	do {                                                                                   \
		if (!(cond)) {                                                                 \
			fprintf(stderr, "%s:%d: fuzz check failed: %s\n", __FILE__, __LINE__, #cond); \
			abort();                                                               \
		}                                                                              \
	} while (0)

struct fuzz_fields {
	char *buf;                      /* one NUL-terminated copy of the input, cut in place */
	char *field[FUZZ_MAX_FIELDS];   /* the fields, NULL past n */
	size_t len[FUZZ_MAX_FIELDS];    /* their lengths (a field may hold NUL bytes) */
	size_t n;
};

/* Copies data, drops one trailing newline, and cuts it at each separator into at most max
 * fields (the last one keeps any further separators). Returns 0, or -1 when out of memory. */
int fuzz_split(struct fuzz_fields *f, const uint8_t *data, size_t size, size_t max);
void fuzz_fields_free(struct fuzz_fields *f);

/* The field, or def when the input has fewer fields; NULL when the field is exactly "NULL"
 * (SQL NULL). */
const char *fuzz_field(const struct fuzz_fields *f, size_t i, const char *def);

/* Cuts s (NUL-terminated, modified in place) into lines; returns how many (at most max). */
size_t fuzz_lines(char *s, char **lines, size_t max);

#endif
