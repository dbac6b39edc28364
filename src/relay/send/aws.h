/*
 * aws.h - SQS and SNS destinations: SendMessageBatch (AWS JSON 1.0) and PublishBatch (Query
 * protocol), signed with SigV4 by libcurl, on the relay's curl multi.
 *
 * Messages submitted in one loop turn are grouped per queue or topic into batches of up to 10
 * (and within the request size limit). The relay sends at most one row per partition at a
 * time, so a batch never holds two rows of one partition. Each message's callback reports its
 * own entry's result: a batch answered 200 can still fail some entries. A batch refused as a
 * whole (a client error) is sent again one message per request, so one bad message never fails
 * its neighbours.
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
struct obr_sender;

/* The SQS/SNS sender (sender.h) on the shared curl multi. A message's destination is an SQS
 * queue (kind OBR_DEST_SQS, target = queue URL) or an SNS topic (OBR_DEST_SNS, target = topic
 * ARN); the row's headers become String message attributes next to x-idempotent-key.
 * allowed_hosts (OUTBOX_ALLOWED_HOSTS, copied) applies to queue URLs. Without an endpoint
 * override, requests are signed only for https:// AWS hosts. Returns NULL with a message in
 * err when the environment is unusable. */
struct obr_sender *obr_aws_sender_new(struct event_base *base, struct obr_http *http, const char *allowed_hosts,
                                      char *err, size_t errlen);

#endif
