/*
 * fuzz_util.c - input splitting shared by the fuzz targets.
 */
#include "fuzz.h"

#include <string.h>

int fuzz_split(struct fuzz_fields *f, const uint8_t *data, size_t size, size_t max)
{
	memset(f, 0, sizeof(*f));
	if (max == 0 || max > FUZZ_MAX_FIELDS)
		max = FUZZ_MAX_FIELDS;
	f->buf = malloc(size + 1);
	if (!f->buf)
		return -1;
	if (size)
		memcpy(f->buf, data, size);
	if (size && f->buf[size - 1] == '\n')
		size--;
	f->buf[size] = '\0';

	const size_t seplen = strlen(FUZZ_SEPARATOR);
	char *p = f->buf, *end = f->buf + size;
	for (;;) {
		f->field[f->n] = p;
		char *sep = f->n + 1 < max ? memmem(p, (size_t)(end - p), FUZZ_SEPARATOR, seplen) : NULL;
		if (!sep) {
			f->len[f->n++] = (size_t)(end - p);
			break;
		}
		*sep = '\0';
		f->len[f->n++] = (size_t)(sep - p);
		p = sep + seplen;
	}
	return 0;
}

void fuzz_fields_free(struct fuzz_fields *f)
{
	free(f->buf);
	memset(f, 0, sizeof(*f));
}

const char *fuzz_field(const struct fuzz_fields *f, size_t i, const char *def)
{
	if (i >= f->n)
		return def;
	return strcmp(f->field[i], "NULL") ? f->field[i] : NULL;
}

size_t fuzz_lines(char *s, char **lines, size_t max)
{
	size_t n = 0;
	if (!*s)
		return 0;
	while (n < max) {
		lines[n++] = s;
		char *nl = strchr(s, '\n');
		if (!nl)
			break;
		*nl = '\0';
		s = nl + 1;
	}
	return n;
}
