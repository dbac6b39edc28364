/*
 * aws_protocol.c - SQS/SNS messages: limits and checks, request bodies, per-entry results and
 * error classification, the XML scanner. (Configuration and endpoints: aws_config.c.)
 */
#include "send/aws_protocol.h"

#include <ctype.h>
#include <json-c/json.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *kind_service(enum obr_dest_kind kind)
{
	return kind == OBR_DEST_SNS ? "SNS" : "SQS";
}

/* ---- messages ---- */

size_t obr_aws_max_message(enum obr_dest_kind kind)
{
	return kind == OBR_DEST_SNS ? OBR_SNS_MAX_MESSAGE : OBR_SQS_MAX_MESSAGE;
}

size_t obr_aws_max_batch_bytes(enum obr_dest_kind kind)
{
	return kind == OBR_DEST_SNS ? OBR_SNS_MAX_BATCH_BYTES : OBR_SQS_MAX_BATCH_BYTES;
}

#define IDEMPOTENT_ATTR "x-idempotent-key"
#define STRING_TYPE "String"

size_t obr_aws_entry_size(const struct obr_aws_entry *e)
{
	size_t size = e->body_len;
	size += strlen(IDEMPOTENT_ATTR) + strlen(STRING_TYPE) + strlen(e->key);
	for (int i = 0; i < e->nattrs; i++)
		size += strlen(e->attrs[i].name) + strlen(STRING_TYPE) + strlen(e->attrs[i].value);
	return size;
}

/* SQS and SNS attribute names: [A-Za-z0-9_.-], at most 256, no "AWS." / "Amazon." prefix, no
 * leading, trailing or doubled period. */
static bool valid_attr_name(const char *name)
{
	size_t n = strlen(name);
	if (n == 0 || n > 256 || name[0] == '.' || name[n - 1] == '.')
		return false;
	if (!strncasecmp(name, "AWS.", 4) || !strncasecmp(name, "Amazon.", 7))
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		if (!(isalnum((unsigned char)c) || c == '_' || c == '-' || c == '.'))
			return false;
		if (c == '.' && name[i + 1] == '.')
			return false;
	}
	return true;
}

int obr_aws_entry_check(enum obr_dest_kind kind, const struct obr_aws_entry *e, size_t *size, char *err,
                        size_t errlen)
{
	const char *svc = kind_service(kind);
	if (e->body_len == 0) {
		snprintf(err, errlen, "%s cannot carry an empty message: the payload is empty", svc);
		return -1;
	}
	if (!obr_utf8_valid(e->body, e->body_len)) {
		snprintf(err, errlen, "%s messages must be UTF-8 text: the payload is not valid UTF-8", svc);
		return -1;
	}
	if (e->nattrs > OBR_AWS_MAX_ATTRIBUTES - 1) {
		snprintf(err, errlen,
		         "%s allows at most %d message attributes (x-idempotent-key and %d headers); the row has %d headers",
		         svc, OBR_AWS_MAX_ATTRIBUTES, OBR_AWS_MAX_ATTRIBUTES - 1, e->nattrs);
		return -1;
	}
	for (int i = 0; i < e->nattrs; i++) {
		const char *name = e->attrs[i].name, *value = e->attrs[i].value;
		if (!valid_attr_name(name)) {
			snprintf(err, errlen,
			         "header \"%.100s\" is not a valid %s message attribute name (letters, digits, '_', '-', '.'; "
			         "no AWS. or Amazon. prefix)",
			         name, svc);
			return -1;
		}
		size_t vl = strlen(value);
		if (vl == 0) {
			snprintf(err, errlen, "header \"%.100s\" is empty: %s message attributes must have a value", name, svc);
			return -1;
		}
		if (!obr_utf8_valid(value, vl) || !obr_aws_chars_valid(value, vl)) {
			snprintf(err, errlen, "header \"%.100s\" has characters %s does not accept", name, svc);
			return -1;
		}
	}
	size_t s = obr_aws_entry_size(e);
	if (s > obr_aws_max_message(kind)) {
		snprintf(err, errlen, "message of %zu bytes (body and attributes) is over the %s limit of %zu bytes", s, svc,
		         obr_aws_max_message(kind));
		return -1;
	}
	*size = s;
	return 0;
}

/* ---- encoding ---- */

bool obr_aws_chars_valid(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;
	for (size_t i = 0; i < len;) {
		uint32_t c;
		size_t n = obr_utf8_decode(p + i, len - i, &c);
		if (!n)
			return false;
		if (!(c == 0x9 || c == 0xA || c == 0xD || (c >= 0x20 && c <= 0xD7FF) || (c >= 0xE000 && c <= 0xFFFD) ||
		      c >= 0x10000))
			return false;
		i += n;
	}
	return true;
}

void obr_json_string(struct obr_strbuf *b, const char *s, size_t len)
{
	obr_strbuf_append(b, "\"", 1);
	size_t run = 0; /* bytes copied as they are, appended in one go */
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c >= 0x20 && c != '"' && c != '\\') {
			run++;
			continue;
		}
		obr_strbuf_append(b, s + i - run, run);
		run = 0;
		char esc[8];
		if (c == '"' || c == '\\')
			snprintf(esc, sizeof(esc), "\\%c", c);
		else
			snprintf(esc, sizeof(esc), "\\u%04x", c);
		obr_strbuf_puts(b, esc);
	}
	obr_strbuf_append(b, s + len - run, run);
	obr_strbuf_append(b, "\"", 1);
}

void obr_form_encode(struct obr_strbuf *b, const char *s, size_t len)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t run = 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
			run++;
			continue;
		}
		obr_strbuf_append(b, s + i - run, run);
		run = 0;
		char esc[3] = { '%', hex[c >> 4], hex[c & 15] };
		obr_strbuf_append(b, esc, 3);
	}
	obr_strbuf_append(b, s + len - run, run);
}

/* ---- request bodies ---- */

static void json_attr(struct obr_strbuf *b, const char *name, const char *value)
{
	obr_json_string(b, name, strlen(name));
	obr_strbuf_puts(b, ":{\"DataType\":\"String\",\"StringValue\":");
	obr_json_string(b, value, strlen(value));
	obr_strbuf_puts(b, "}");
}

int obr_aws_build_sqs_batch(struct obr_strbuf *b, const char *queue_url, bool fifo,
                            const struct obr_aws_entry *const *entries, int n)
{
	obr_strbuf_puts(b, "{\"QueueUrl\":");
	obr_json_string(b, queue_url, strlen(queue_url));
	obr_strbuf_puts(b, ",\"Entries\":[");
	for (int i = 0; i < n; i++) {
		const struct obr_aws_entry *e = entries[i];
		obr_strbuf_printf(b, "%s{\"Id\":\"%d\",\"MessageBody\":", i ? "," : "", i);
		obr_json_string(b, e->body, e->body_len);
		obr_strbuf_puts(b, ",\"MessageAttributes\":{");
		json_attr(b, IDEMPOTENT_ATTR, e->key);
		for (int a = 0; a < e->nattrs; a++) {
			obr_strbuf_puts(b, ",");
			json_attr(b, e->attrs[a].name, e->attrs[a].value);
		}
		obr_strbuf_puts(b, "}");
		if (fifo) {
			obr_strbuf_puts(b, ",\"MessageGroupId\":");
			obr_json_string(b, e->group, strlen(e->group));
			obr_strbuf_puts(b, ",\"MessageDeduplicationId\":");
			obr_json_string(b, e->key, strlen(e->key));
		}
		obr_strbuf_puts(b, "}");
	}
	obr_strbuf_puts(b, "]}");
	return b->failed ? -1 : 0;
}

static void form_param(struct obr_strbuf *b, const char *name, const char *value, size_t len)
{
	obr_strbuf_puts(b, "&");
	obr_strbuf_puts(b, name);
	obr_strbuf_puts(b, "=");
	obr_form_encode(b, value, len);
}

int obr_aws_build_sns_batch(struct obr_strbuf *b, const char *topic_arn, bool fifo,
                            const struct obr_aws_entry *const *entries, int n)
{
	char name[160], id[16];
	obr_strbuf_puts(b, "Action=PublishBatch&Version=2010-03-31");
	form_param(b, "TopicArn", topic_arn, strlen(topic_arn));
	for (int i = 0; i < n; i++) {
		const struct obr_aws_entry *e = entries[i];
		char m[64];
		snprintf(m, sizeof(m), "PublishBatchRequestEntries.member.%d", i + 1);
		snprintf(id, sizeof(id), "%d", i);
		snprintf(name, sizeof(name), "%s.Id", m);
		form_param(b, name, id, strlen(id));
		snprintf(name, sizeof(name), "%s.Message", m);
		form_param(b, name, e->body, e->body_len);
		for (int a = 0; a <= e->nattrs; a++) {
			const char *an = a == 0 ? IDEMPOTENT_ATTR : e->attrs[a - 1].name;
			const char *av = a == 0 ? e->key : e->attrs[a - 1].value;
			snprintf(name, sizeof(name), "%s.MessageAttributes.entry.%d.Name", m, a + 1);
			form_param(b, name, an, strlen(an));
			snprintf(name, sizeof(name), "%s.MessageAttributes.entry.%d.Value.DataType", m, a + 1);
			form_param(b, name, STRING_TYPE, strlen(STRING_TYPE));
			snprintf(name, sizeof(name), "%s.MessageAttributes.entry.%d.Value.StringValue", m, a + 1);
			form_param(b, name, av, strlen(av));
		}
		if (fifo) {
			snprintf(name, sizeof(name), "%s.MessageGroupId", m);
			form_param(b, name, e->group, strlen(e->group));
			snprintf(name, sizeof(name), "%s.MessageDeduplicationId", m);
			form_param(b, name, e->key, strlen(e->key));
		}
	}
	return b->failed ? -1 : 0;
}

/* ---- error codes ---- */

static bool code_in(const char *code, const char *const *list)
{
	for (; *list; list++)
		if (!strcmp(code, *list))
			return true;
	return false;
}

static const char *const permanent_codes[] = {
	"QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue", "NonExistentQueue", "NotFound",
	"NotFoundException", "ResourceNotFoundException", "InvalidParameter", "InvalidParameterException",
	"InvalidParameterValue", "InvalidParameterValueException", "InvalidParameterCombination",
	"InvalidMessageContents", "MissingParameter", "MissingRequiredParameter", "BatchRequestTooLong",
	"BatchEntryIdsNotDistinct", "InvalidBatchEntryId", "TooManyEntriesInBatchRequest", "EmptyBatchRequest",
	"UnsupportedOperation", "InvalidAddress", "InvalidSecurity", "InvalidAttributeName", "InvalidAttributeValue",
	"ValidationError", "ValidationException", "RequestEntityTooLarge", "MessageTooLong", "SerializationException",
	"InvalidAction", "OptInRequired", "EndpointDisabled", NULL,
};

/* Permissions and keys: IAM and KMS changes take a while to propagate, so these are retried
 * with the normal backoff until the failure limit, whatever the fault says. */
static const char *const propagating_codes[] = {
	"AccessDenied", "AccessDeniedException", "AuthorizationError", "AuthorizationErrorException", "KmsDisabled",
	"KmsNotFound", "KmsInvalidState", "KmsAccessDenied", "KmsInvalidKeyUsage", "KmsThrottled", NULL,
};

static bool propagating(const char *code)
{
	return code_in(code, propagating_codes) || !strncmp(code, "KMS", 3);
}

static const char *const credential_codes[] = {
	"ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId", "UnrecognizedClientException",
	"SignatureDoesNotMatch", "InvalidSignatureException", "IncompleteSignature", "IncompleteSignatureException",
	"RequestExpired", "MissingAuthenticationToken", "MissingAuthenticationTokenException", "InvalidAccessKeyId",
	"AuthFailure", "InvalidToken", NULL,
};

static const char *const retryable_codes[] = {
	"Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled", "RequestThrottledException",
	"TooManyRequestsException", "RequestLimitExceeded", "KMS.ThrottlingException", "KmsThrottled",
	"KMSThrottlingException", "ServiceUnavailable", "ServiceUnavailableException", "InternalError",
	"InternalFailure", "InternalServerError", "RequestTimeout", "RequestTimeoutException", NULL,
};

bool obr_aws_code_is_permanent(const char *code)
{
	return code && !propagating(code) && code_in(code, permanent_codes);
}

bool obr_aws_code_is_credential(const char *code)
{
	return code && code_in(code, credential_codes);
}

/* An entry's failure: retryable codes, credential, permission and key problems are retried
 * whatever the fault; listed permanent codes are not; otherwise SenderFault decides. */
static bool entry_permanent(const char *code, bool sender_fault)
{
	if (code_in(code, retryable_codes) || code_in(code, credential_codes) || propagating(code))
		return false;
	if (code_in(code, permanent_codes))
		return true;
	return sender_fault;
}

/* Printable, single-line copy (control characters become spaces). */
static void clean_copy(char *out, size_t cap, const char *s, size_t len)
{
	size_t n = len < cap - 1 ? len : cap - 1;
	for (size_t i = 0; i < n; i++)
		out[i] = (unsigned char)s[i] < 32 || s[i] == 127 ? ' ' : s[i];
	out[n] = '\0';
}

static void set_entry_error(struct obr_aws_entry_result *r, enum obr_dest_kind kind, const char *code,
                            const char *message, bool permanent)
{
	r->ok = false;
	r->permanent = permanent;
	clean_copy(r->code, sizeof(r->code), code, strlen(code));
	char msg[OBR_AWS_ERROR_MAX];
	clean_copy(msg, sizeof(msg), message, strlen(message));
	snprintf(r->error, sizeof(r->error), "%s %s%s%s", kind_service(kind), r->code, msg[0] ? ": " : "", msg);
}

/* "0".."n-1" -> index; -1 otherwise */
static int entry_index(const char *id, size_t len, int n)
{
	if (len == 0 || len > 3)
		return -1;
	int v = 0;
	for (size_t i = 0; i < len; i++) {
		if (id[i] < '0' || id[i] > '9')
			return -1;
		v = v * 10 + (id[i] - '0');
	}
	if (len > 1 && id[0] == '0')
		return -1;
	return v < n ? v : -1;
}

static void init_results(enum obr_dest_kind kind, int n, struct obr_aws_entry_result *out)
{
	for (int i = 0; i < n; i++) {
		memset(&out[i], 0, sizeof(out[i]));
		snprintf(out[i].error, sizeof(out[i].error), "%s answered without a result for this message",
		         kind_service(kind));
	}
}

static const char *json_str(struct json_object *obj, const char *key)
{
	struct json_object *v;
	if (!json_object_object_get_ex(obj, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

static struct json_object *parse_json(const char *body, size_t len)
{
	if (len > (size_t)0x7fffffff)
		return NULL;
	struct json_tokener *tok = json_tokener_new();
	if (!tok)
		return NULL;
	struct json_object *obj = json_tokener_parse_ex(tok, body, (int)len);
	if (obj && tok->char_offset < (int)len) {
		/* trailing garbage (whitespace is fine) */
		for (size_t i = (size_t)tok->char_offset; i < len; i++) {
			if (!isspace((unsigned char)body[i])) {
				json_object_put(obj);
				obj = NULL;
				break;
			}
		}
	}
	json_tokener_free(tok);
	return obj;
}

int obr_aws_parse_sqs_batch(const char *body, size_t len, int n, struct obr_aws_entry_result *out)
{
	init_results(OBR_DEST_SQS, n, out);
	struct json_object *obj = parse_json(body, len);
	if (!obj || !json_object_is_type(obj, json_type_object) || json_str(obj, "__type")) {
		json_object_put(obj);
		return -1;
	}
	struct json_object *ok = NULL, *failed = NULL;
	json_object_object_get_ex(obj, "Successful", &ok);
	json_object_object_get_ex(obj, "Failed", &failed);
	if ((ok && !json_object_is_type(ok, json_type_array)) || (failed && !json_object_is_type(failed, json_type_array)) ||
	    (!ok && !failed)) {
		json_object_put(obj);
		return -1;
	}
	for (size_t i = 0; ok && i < json_object_array_length(ok); i++) {
		struct json_object *e = json_object_array_get_idx(ok, i);
		const char *id = json_object_is_type(e, json_type_object) ? json_str(e, "Id") : NULL;
		int idx = id ? entry_index(id, strlen(id), n) : -1;
		if (idx < 0)
			continue;
		memset(&out[idx], 0, sizeof(out[idx]));
		out[idx].ok = true;
	}
	for (size_t i = 0; failed && i < json_object_array_length(failed); i++) {
		struct json_object *e = json_object_array_get_idx(failed, i);
		const char *id = json_object_is_type(e, json_type_object) ? json_str(e, "Id") : NULL;
		int idx = id ? entry_index(id, strlen(id), n) : -1;
		if (idx < 0)
			continue;
		const char *code = json_str(e, "Code");
		const char *msg = json_str(e, "Message");
		struct json_object *sf;
		bool sender = json_object_object_get_ex(e, "SenderFault", &sf) && json_object_get_boolean(sf);
		code = code && *code ? code : "UnknownError";
		set_entry_error(&out[idx], OBR_DEST_SQS, code, msg ? msg : "", entry_permanent(code, sender));
	}
	json_object_put(obj);
	return 0;
}

int obr_aws_parse_sns_batch(const char *body, size_t len, int n, struct obr_aws_entry_result *out)
{
	init_results(OBR_DEST_SNS, n, out);
	const char *result;
	size_t rlen, end;
	if (!obr_xml_element(body, len, "PublishBatchResult", &result, &rlen, &end))
		return -1;
	const char *sect;
	size_t slen;
	if (obr_xml_element(result, rlen, "Successful", &sect, &slen, &end)) {
		const char *m;
		size_t mlen, off = 0;
		while (off < slen && obr_xml_element(sect + off, slen - off, "member", &m, &mlen, &end)) {
			off += end;
			char id[16];
			if (!obr_xml_text(m, mlen, "Id", id, sizeof(id)))
				continue;
			int idx = entry_index(id, strlen(id), n);
			if (idx < 0)
				continue;
			memset(&out[idx], 0, sizeof(out[idx]));
			out[idx].ok = true;
		}
	}
	if (obr_xml_element(result, rlen, "Failed", &sect, &slen, &end)) {
		const char *m;
		size_t mlen, off = 0;
		while (off < slen && obr_xml_element(sect + off, slen - off, "member", &m, &mlen, &end)) {
			off += end;
			char id[16], code[64], msg[OBR_AWS_ERROR_MAX], sender[16];
			if (!obr_xml_text(m, mlen, "Id", id, sizeof(id)))
				continue;
			int idx = entry_index(id, strlen(id), n);
			if (idx < 0)
				continue;
			if (!obr_xml_text(m, mlen, "Code", code, sizeof(code)) || !code[0])
				snprintf(code, sizeof(code), "UnknownError");
			if (!obr_xml_text(m, mlen, "Message", msg, sizeof(msg)))
				msg[0] = '\0';
			bool sf = obr_xml_text(m, mlen, "SenderFault", sender, sizeof(sender)) && !strcasecmp(sender, "true");
			set_entry_error(&out[idx], OBR_DEST_SNS, code, msg, entry_permanent(code, sf));
		}
	}
	return 0;
}

/* The error code and message of an AWS error body: JSON (__type "ns#Code" or code, message)
 * or XML (<Error><Code>, <Message>). */
static bool error_from_body(const char *body, size_t len, char *code, size_t ccap, char *msg, size_t mcap)
{
	size_t i = 0;
	while (i < len && isspace((unsigned char)body[i]))
		i++;
	code[0] = msg[0] = '\0';
	if (i < len && body[i] == '{') {
		struct json_object *obj = parse_json(body, len);
		if (!obj || !json_object_is_type(obj, json_type_object)) {
			json_object_put(obj);
			return false;
		}
		const char *c = json_str(obj, "__type");
		if (!c)
			c = json_str(obj, "code");
		if (!c)
			c = json_str(obj, "Code");
		const char *m = json_str(obj, "message");
		if (!m)
			m = json_str(obj, "Message");
		if (c) {
			const char *hash = strrchr(c, '#');
			c = hash ? hash + 1 : c;
			/* "Code:http://internal.amazon.com/..." carries a URL after a colon */
			clean_copy(code, ccap, c, strcspn(c, ":"));
		}
		if (m)
			clean_copy(msg, mcap, m, strlen(m));
		json_object_put(obj);
		return code[0] != '\0';
	}
	const char *err;
	size_t elen, end;
	if (!obr_xml_element(body, len, "Error", &err, &elen, &end))
		return false;
	if (!obr_xml_text(err, elen, "Code", code, ccap) || !code[0])
		return false;
	if (!obr_xml_text(err, elen, "Message", msg, mcap))
		msg[0] = '\0';
	return true;
}

void obr_aws_request_failure(enum obr_dest_kind kind, long status, const char *body, size_t len, const char *why,
                             struct obr_aws_entry_result *out)
{
	const char *svc = kind_service(kind);
	memset(out, 0, sizeof(*out));
	char code[64], msg[OBR_AWS_ERROR_MAX];
	if (status == 0) {
		snprintf(out->error, sizeof(out->error), "%s request failed: %s", svc, why && *why ? why : "no answer");
		return;
	}
	if (body && len && error_from_body(body, len, code, sizeof(code), msg, sizeof(msg))) {
		set_entry_error(out, kind, code, msg, obr_aws_code_is_permanent(code));
		return;
	}
	char shown[200];
	clean_copy(shown, sizeof(shown), body ? body : "", body ? len : 0);
	snprintf(out->error, sizeof(out->error), "%s HTTP %ld%s%s", svc, status, shown[0] ? ": " : "", shown);
	out->permanent = status == 413;
}

/* About the queue or topic itself: every entry would get the same answer alone. */
static const char *const target_codes[] = {
	"QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue", "NonExistentQueue", "NotFound",
	"NotFoundException", "ResourceNotFoundException", "InvalidAddress", "InvalidSecurity", "OptInRequired",
	"EndpointDisabled", "UnsupportedOperation", "InvalidAction", NULL,
};

bool obr_aws_failure_may_be_one_entry(long status, const char *code)
{
	if (status < 400 || status >= 500 || status == 404 || status == 429)
		return false; /* no answer, no such target, throttled or the service's fault */
	if (code && (code_in(code, retryable_codes) || code_in(code, credential_codes) || propagating(code) ||
	             code_in(code, target_codes)))
		return false; /* about the request, the caller or the target: the same for every entry */
	return true;
}

/* ---- XML ---- */

bool obr_xml_element(const char *s, size_t len, const char *name, const char **content, size_t *clen, size_t *end)
{
	size_t nl = strlen(name);
	for (size_t i = 0; i + nl + 2 <= len; i++) {
		if (s[i] != '<' || memcmp(s + i + 1, name, nl) != 0)
			continue;
		size_t j = i + 1 + nl;
		char c = s[j];
		if (c != '>' && c != '/' && c != ' ' && c != '\t' && c != '\r' && c != '\n')
			continue;
		/* end of the start tag */
		const char *gt = memchr(s + j, '>', len - j);
		if (!gt)
			return false;
		size_t after = (size_t)(gt - s) + 1;
		if (gt[-1] == '/') {
			*content = s + after;
			*clen = 0;
			*end = after;
			return true;
		}
		/* the matching end tag (AWS responses do not nest an element in itself) */
		for (size_t k = after; k + nl + 3 <= len; k++) {
			if (s[k] == '<' && s[k + 1] == '/' && !memcmp(s + k + 2, name, nl) && s[k + 2 + nl] == '>') {
				*content = s + after;
				*clen = k - after;
				*end = k + nl + 3;
				return true;
			}
		}
		return false;
	}
	return false;
}

static size_t put_utf8(char *out, size_t o, size_t cap, uint32_t c)
{
	char buf[4];
	size_t n;
	if (c < 0x80) {
		buf[0] = (char)c;
		n = 1;
	} else if (c < 0x800) {
		buf[0] = (char)(0xC0 | (c >> 6));
		buf[1] = (char)(0x80 | (c & 0x3F));
		n = 2;
	} else if (c < 0x10000) {
		buf[0] = (char)(0xE0 | (c >> 12));
		buf[1] = (char)(0x80 | ((c >> 6) & 0x3F));
		buf[2] = (char)(0x80 | (c & 0x3F));
		n = 3;
	} else {
		buf[0] = (char)(0xF0 | (c >> 18));
		buf[1] = (char)(0x80 | ((c >> 12) & 0x3F));
		buf[2] = (char)(0x80 | ((c >> 6) & 0x3F));
		buf[3] = (char)(0x80 | (c & 0x3F));
		n = 4;
	}
	if (o + n >= cap)
		return o;
	memcpy(out + o, buf, n);
	return o + n;
}

size_t obr_xml_unescape(const char *s, size_t len, char *out, size_t cap)
{
	size_t o = 0;
	if (cap == 0)
		return 0;
	for (size_t i = 0; i < len && o + 1 < cap;) {
		if (s[i] == '<' && len - i >= 12 && !memcmp(s + i, "<![CDATA[", 9)) {
			size_t j = i + 9;
			while (j + 3 <= len && memcmp(s + j, "]]>", 3))
				j++;
			size_t n = (j + 3 <= len ? j : len) - (i + 9);
			if (n > cap - 1 - o)
				n = cap - 1 - o;
			memcpy(out + o, s + i + 9, n);
			o += n;
			i = j + 3 <= len ? j + 3 : len;
			continue;
		}
		if (s[i] != '&') {
			out[o++] = s[i++];
			continue;
		}
		const char *semi = memchr(s + i, ';', len - i < 12 ? len - i : 12);
		if (!semi) {
			out[o++] = s[i++];
			continue;
		}
		size_t n = (size_t)(semi - (s + i)) + 1;
		static const struct {
			const char *ent;
			char c;
		} named[] = { { "&lt;", '<' }, { "&gt;", '>' }, { "&amp;", '&' }, { "&quot;", '"' }, { "&apos;", '\'' } };
		bool done = false;
		for (size_t k = 0; k < sizeof(named) / sizeof(named[0]); k++) {
			if (n == strlen(named[k].ent) && !memcmp(s + i, named[k].ent, n)) {
				out[o++] = named[k].c;
				done = true;
				break;
			}
		}
		if (!done && n > 3 && s[i + 1] == '#') {
			char num[12];
			bool hexnum = s[i + 2] == 'x' || s[i + 2] == 'X';
			size_t start = hexnum ? 3 : 2;
			size_t dl = n - 1 - start;
			if (dl > 0 && dl < sizeof(num)) {
				memcpy(num, s + i + start, dl);
				num[dl] = '\0';
				char *endp;
				unsigned long v = strtoul(num, &endp, hexnum ? 16 : 10);
				if (*endp == '\0' && v > 0 && v <= 0x10FFFF && !(v >= 0xD800 && v <= 0xDFFF)) {
					o = put_utf8(out, o, cap, (uint32_t)v);
					done = true;
				}
			}
		}
		if (done)
			i += n;
		else
			out[o++] = s[i++];
	}
	out[o] = '\0';
	return o;
}

bool obr_xml_text(const char *s, size_t len, const char *name, char *out, size_t cap)
{
	const char *c;
	size_t cl, end;
	if (cap == 0)
		return false;
	if (!obr_xml_element(s, len, name, &c, &cl, &end)) {
		out[0] = '\0';
		return false;
	}
	size_t n = obr_xml_unescape(c, cl, out, cap);
	/* trim surrounding white space */
	size_t b = 0;
	while (b < n && isspace((unsigned char)out[b]))
		b++;
	while (n > b && isspace((unsigned char)out[n - 1]))
		n--;
	memmove(out, out + b, n - b);
	out[n - b] = '\0';
	return true;
}
