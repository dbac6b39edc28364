/*
 * usage.h - the command's documentation: --help text and the outbox-relay(1) man page, from one
 * description of the commands and the settings table.
 */
#ifndef OBR_CLI_USAGE_H
#define OBR_CLI_USAGE_H

#include <stdio.h>

/* What `outbox-relay --help` prints: commands, every setting with its default, operations. */
void obr_usage_print(FILE *out);
/* The same as a roff man page (section 1), for `--man` and the build. */
void obr_usage_print_man(FILE *out);

#endif
