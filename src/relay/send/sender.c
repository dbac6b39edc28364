/*
 * sender.c - what every sender shares: filling a neutral result.
 */
#include "send/sender.h"

#include <stdarg.h>
#include <stdio.h>

void obr_send_result_set(struct obr_send_result *res, enum obr_send_status status, const char *fmt, ...)
{
	res->status = status;
	res->retry_after_ms = -1;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(res->message, sizeof(res->message), fmt, ap);
	va_end(ap);
}
