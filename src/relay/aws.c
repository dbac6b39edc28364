/*
 * aws.c - placeholder until SQS/SNS delivery lands: every message fails, so such rows are
 * retried and parked with a clear reason instead of being lost.
 */
#include "aws.h"

#include <stdlib.h>
#include <string.h>

struct obr_aws {
	int unused;
};

struct obr_aws *obr_aws_new(struct event_base *base, struct obr_http *http, char *err, size_t errlen)
{
	return calloc(1, sizeof(struct obr_aws));
}

int obr_aws_submit(struct obr_aws *aws, enum obr_dest_kind kind, const char *target, const char *idempotent_key,
                   const char *partition_key, const struct obr_header *attrs, int nattrs, const char *payload,
                   size_t payload_len, obr_http_done_fn done, void *arg)
{
	return -1;
}

int obr_aws_in_flight(const struct obr_aws *aws)
{
	return 0;
}

void obr_aws_abort_all(struct obr_aws *aws)
{
}

void obr_aws_free(struct obr_aws *aws)
{
	free(aws);
}
