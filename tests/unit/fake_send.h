/*
 * fake_send.h - a stand-in for send/http.c and send/aws.c: requests are recorded, in the order
 * they were started, and answered when the test says.
 */
#ifndef OBR_FAKE_SEND_H
#define OBR_FAKE_SEND_H

#include <stdbool.h>
#include <stddef.h>

struct fake_request {
	char *target;               /* URL, queue URL or topic ARN */
	char *body;
	int id;                     /* order of starting, from 1 */
};

int fake_send_count(void);              /* requests in flight */
int fake_send_started(void);            /* requests ever started */
int fake_send_aborted(void);            /* requests dropped by abort_all */
const struct fake_request *fake_send_get(int i);   /* in flight, oldest first */
/* Answers request i (ok: 2xx, else a failure with this status). */
void fake_send_answer(int i, bool ok);
void fake_send_reset(void);

#endif
