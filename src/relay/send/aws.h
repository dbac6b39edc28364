/*
 * aws.h - SQS and SNS destinations: SendMessageBatch (AWS JSON 1.0) and PublishBatch (Query
 * protocol), signed with SigV4 by libcurl, on the relay's curl multi.
 *
 * Messages submitted in one loop turn are grouped per queue or topic into batches of up to 10
 * (and within the request size limit). The relay sends at most one row per partition at a
 * time, so a batch never holds two rows of one partition. Each message's callback reports its
 * own entry's result: a batch answered 200 can still fail some entries.
 *
 * Configuration comes from the environment, as the AWS SDKs read it: region (AWS_REGION,
 * AWS_DEFAULT_REGION, else from the queue URL or topic ARN), endpoint overrides
 * (AWS_ENDPOINT_URL_SQS, AWS_ENDPOINT_URL_SNS, AWS_ENDPOINT_URL; the crate's LOCAL_ENDPOINT and
 * LOCAL_REGION), and credentials (environment, web identity, container, instance metadata).
 */
#ifndef OBR_AWS_H
#define OBR_AWS_H

#include <stddef.h>

#include "send/destination.h"
#include "send/http.h"

struct event_base;
struct obr_aws;

/* Returns NULL with a message in err when the environment is unusable. */
struct obr_aws *obr_aws_new(struct event_base *base, struct obr_http *http, char *err, size_t errlen);

/* Queues one message for an SQS queue (kind OBR_DEST_SQS, target = queue URL) or an SNS topic
 * (OBR_DEST_SNS, target = topic ARN). attrs become String message attributes, next to
 * x-idempotent-key. done is called exactly once, unless obr_aws_abort_all runs first.
 * Returns 0, or -1 when it could not be queued (done is not called). */
int obr_aws_submit(struct obr_aws *aws, enum obr_dest_kind kind, const char *target, const char *idempotent_key,
                   const char *partition_key, const struct obr_header *attrs, int nattrs, const char *payload,
                   size_t payload_len, obr_http_done_fn done, void *arg);

/* Messages queued or in flight. */
int obr_aws_in_flight(const struct obr_aws *aws);
/* Drops every queued message; callbacks are not called. (Requests already on the wire belong to
 * obr_http and are cancelled by obr_http_abort_all.) */
void obr_aws_abort_all(struct obr_aws *aws);
void obr_aws_free(struct obr_aws *aws);

#endif
