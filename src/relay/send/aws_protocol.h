/*
 * aws_protocol.h - the pure parts of SQS and SNS delivery (configuration and endpoints are in
 * aws_config.h): message checks and sizes, request bodies (SQS SendMessageBatch in the
 * AWS JSON 1.0 protocol, SNS PublishBatch in the Query protocol), per-entry results and error
 * classification, and a small bounded XML scanner. No I/O, so all of it is unit-tested.
 */
#ifndef OBR_AWS_PROTOCOL_H
#define OBR_AWS_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>

#include "send/aws_config.h"
#include "send/destination.h"
#include "util/strbuf.h"

#define OBR_AWS_MAX_BATCH 10                  /* entries per SendMessageBatch / PublishBatch */
#define OBR_AWS_MAX_ATTRIBUTES 10             /* message attributes: x-idempotent-key + 9 headers */
#define OBR_SQS_MAX_MESSAGE (1024 * 1024)     /* one SQS message, body + attributes (SQS's maximum) */
#define OBR_SQS_MAX_BATCH_BYTES (256 * 1024)  /* messages grouped into one request; a larger one goes alone */
#define OBR_SNS_MAX_MESSAGE (256 * 1024)      /* one SNS message, body + attributes */
#define OBR_SNS_MAX_BATCH_BYTES (256 * 1024)  /* a whole PublishBatch */
#define OBR_AWS_MAX_BODY (8u * 1024 * 1024)   /* cap of a request body we build */
#define OBR_AWS_RESPONSE_KEEP (64 * 1024)     /* response bytes parsed for per-entry results */
#define OBR_AWS_ERROR_MAX 400

/* One message of a batch. */
struct obr_aws_entry {
	const char *body;
	size_t body_len;
	const char *key;                /* idempotent key: x-idempotent-key, FIFO deduplication id */
	const char *group;              /* partition key: FIFO message group id */
	const struct obr_header *attrs; /* the row's headers: String attributes */
	int nattrs;
};

/* The size SQS and SNS count: body bytes, and for each attribute its name, "String" and value. */
size_t obr_aws_entry_size(const struct obr_aws_entry *e);
/* Checks what the service would refuse for this message alone, so a bad row never fails its
 * batch neighbours: empty or non-UTF-8 body, more than 10 attributes, attribute names SQS/SNS
 * reject, empty or invalid attribute values, size over the per-message limit. Returns 0 (size
 * in *size), or -1 with the reason (a permanent error). Invalid characters in the body are left
 * to the service, which reports them per entry. */
int obr_aws_entry_check(enum obr_dest_kind kind, const struct obr_aws_entry *e, size_t *size, char *err,
                        size_t errlen);
size_t obr_aws_max_message(enum obr_dest_kind kind);
size_t obr_aws_max_batch_bytes(enum obr_dest_kind kind);

/* Request bodies; entry Ids are the positions "0".."n-1". Return 0, or -1 when the body would
 * exceed the buffer's cap or memory ran out. */
int obr_aws_build_sqs_batch(struct obr_strbuf *b, const char *queue_url, bool fifo,
                            const struct obr_aws_entry *const *entries, int n);
int obr_aws_build_sns_batch(struct obr_strbuf *b, const char *topic_arn, bool fifo,
                            const struct obr_aws_entry *const *entries, int n);

struct obr_aws_entry_result {
	bool ok;
	bool permanent;
	char code[64];
	char error[OBR_AWS_ERROR_MAX];
};

/* A 2xx answer's per-entry results for entries "0".."n-1"; an entry the answer does not
 * mention fails (retryable). Returns 0, or -1 when the body is not a batch result. */
int obr_aws_parse_sqs_batch(const char *body, size_t len, int n, struct obr_aws_entry_result *out);
int obr_aws_parse_sns_batch(const char *body, size_t len, int n, struct obr_aws_entry_result *out);

/* A whole request that failed: status (0 = no answer), the response body and curl's or
 * obr_http's message. Fills out (ok = false) with "SQS <Code>: <Message>" when the body carries
 * an AWS error (JSON __type/message, or XML <Error><Code>), else "SQS HTTP <status>..." or
 * "SQS request failed: <why>", and whether it is permanent. */
void obr_aws_request_failure(enum obr_dest_kind kind, long status, const char *body, size_t len, const char *why,
                             struct obr_aws_entry_result *out);

/* Error codes: permanent (retrying cannot help: the row is parked), and credential problems
 * (temporary credentials are fetched again). Anything else is retried; so are AccessDenied,
 * AuthorizationError and KMS errors (IAM and KMS changes take a while to propagate). */
bool obr_aws_code_is_permanent(const char *code);
bool obr_aws_code_is_credential(const char *code);
/* Whether a batch request refused as a whole (status, the error code or "") may be the fault
 * of one entry: a client error that is not about throttling, credentials, permissions or the
 * queue or topic itself (one that does not exist, say). The batch's messages are then sent
 * again one per request before any of them is blamed. */
bool obr_aws_failure_may_be_one_entry(long status, const char *code);

/* ---- encoding helpers (obr_utf8_valid is in strbuf.h) ---- */
/* SQS's character set (XML 1.0): #x9 #xA #xD #x20-#xD7FF #xE000-#xFFFD #x10000-#x10FFFF. */
bool obr_aws_chars_valid(const char *s, size_t len);
void obr_json_string(struct obr_strbuf *b, const char *s, size_t len);
/* application/x-www-form-urlencoded value: unreserved characters kept, the rest %XX. */
void obr_form_encode(struct obr_strbuf *b, const char *s, size_t len);

/* ---- a small XML scanner (no DTDs, no namespaces prefixes, bounded by len) ---- */
/* Finds the first element <name ...>...</name> (or <name/>) in s[0..len); content and clen are
 * its inner text, *end the offset just after it. Returns false when there is none. */
bool obr_xml_element(const char *s, size_t len, const char *name, const char **content, size_t *clen, size_t *end);
/* The text of the first <name> element, entities decoded, into out (cap > 0). */
bool obr_xml_text(const char *s, size_t len, const char *name, char *out, size_t cap);
/* Decodes &lt; &gt; &amp; &quot; &apos; &#N; &#xN; and CDATA into out; returns the length. */
size_t obr_xml_unescape(const char *s, size_t len, char *out, size_t cap);

#endif
