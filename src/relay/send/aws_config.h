/*
 * aws_config.h - where SQS/SNS requests go: configuration from the environment, regions,
 * endpoint URLs, and the hosts signed requests may go to. Pure (no I/O), unit-tested.
 */
#ifndef OBR_AWS_CONFIG_H
#define OBR_AWS_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "send/destination.h"

#define OBR_AWS_REGION_MAX 64

/* The environment as the AWS SDKs read it (plus the crate's LOCAL_ENDPOINT / LOCAL_REGION).
 * Strings are NULL when unset or empty. */
struct obr_aws_config {
	char *region;                   /* AWS_REGION, else AWS_DEFAULT_REGION */
	char *local_region;             /* LOCAL_REGION: the last resort */
	char *endpoint_sqs;             /* AWS_ENDPOINT_URL_SQS, AWS_ENDPOINT_URL, LOCAL_ENDPOINT */
	char *endpoint_sns;             /* AWS_ENDPOINT_URL_SNS, AWS_ENDPOINT_URL, LOCAL_ENDPOINT */
	char *endpoint_sts;             /* AWS_ENDPOINT_URL_STS, AWS_ENDPOINT_URL */
	/* credential sources */
	char *access_key;               /* AWS_ACCESS_KEY_ID */
	char *secret_key;               /* AWS_SECRET_ACCESS_KEY */
	char *session_token;            /* AWS_SESSION_TOKEN */
	char *web_identity_token_file;  /* AWS_WEB_IDENTITY_TOKEN_FILE */
	char *role_arn;                 /* AWS_ROLE_ARN */
	char *role_session_name;        /* AWS_ROLE_SESSION_NAME */
	char *container_relative_uri;   /* AWS_CONTAINER_CREDENTIALS_RELATIVE_URI */
	char *container_full_uri;       /* AWS_CONTAINER_CREDENTIALS_FULL_URI */
	char *container_token;          /* AWS_CONTAINER_AUTHORIZATION_TOKEN */
	char *container_token_file;     /* AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE */
	char *imds_endpoint;            /* AWS_EC2_METADATA_SERVICE_ENDPOINT (or the IPv6/IPv4 default) */
	bool imds_disabled;             /* AWS_EC2_METADATA_DISABLED=true */
};

/* Reads the environment through getenv_fn (NULL = getenv). Returns 0, or -1 with a message
 * (an endpoint override that is not an http(s) URL, out of memory). */
int obr_aws_config_load(struct obr_aws_config *cfg, const char *(*getenv_fn)(const char *), char *err,
                        size_t errlen);
void obr_aws_config_clear(struct obr_aws_config *cfg);

/* sqs.<region>.amazonaws.com[.cn], <region>.queue.amazonaws.com, queue.amazonaws.com
 * (us-east-1), vpce-....sqs.<region>.vpce.amazonaws.com. False when the host names none. */
bool obr_aws_region_from_queue_url(const char *url, char *out, size_t cap);
/* arn:<partition>:sns:<region>:<account>:<name> */
bool obr_aws_region_from_topic_arn(const char *arn, char *out, size_t cap);
/* The region for a target: cfg->region, else from the URL/ARN, else cfg->local_region. */
bool obr_aws_target_region(const struct obr_aws_config *cfg, enum obr_dest_kind kind, const char *target, char *out,
                           size_t cap);
/* A queue URL whose last path segment, or a topic ARN whose name, ends in ".fifo". */
bool obr_aws_target_is_fifo(enum obr_dest_kind kind, const char *target);
/* The URL a request for the target is sent to: the override (with "/" added when it has no
 * path), else for SQS the queue URL's scheme and host (legacy queue.amazonaws.com hosts map to
 * sqs.<region>.amazonaws.com), for SNS https://sns.<region>.amazonaws.com/. Returns 0 or -1. */
int obr_aws_request_url(const struct obr_aws_config *cfg, enum obr_dest_kind kind, const char *target,
                        const char *region, char *out, size_t cap);
/* https://sts.<region>.amazonaws.com/ (the global endpoint without a region), or the override. */
int obr_aws_sts_url(const struct obr_aws_config *cfg, char *out, size_t cap);

/* Whether a request URL built without an endpoint override may carry signed requests:
 * https:// and a host under amazonaws.com or amazonaws.com.cn (a row's queue URL names the
 * host; the signature carries the access key id and session token). */
bool obr_aws_trusted_url(const char *url);

#endif
