/*
 * bench-hammer: the sink's ceiling, measured the way the relay talks to it: libcurl multi,
 * HTTP/1.1 keep-alive, N requests in flight on N connections, POST bodies of the benchmark's
 * shape. Each easy handle is reused (one per connection), so what is measured is requests,
 * not connection set-up.
 *
 *   bench-hammer --url URL [--conns 64] [--seconds 5] [--warmup 0.5] [--fresh]
 *
 * --fresh: a new easy handle per request (curl_easy_init, setopt, cleanup), as the relay does;
 * connections are still reused from the multi handle's cache.
 *
 * Prints one line: "requests=N errors=N seconds=S rps=R".
 */
#define _GNU_SOURCE
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

static double mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static size_t discard(char *ptr, size_t size, size_t nmemb, void *userdata);
static struct curl_slist *headers;
static const char body[] = "{\"p\":1,\"s\":1,\"t\":1}";

static CURL *new_easy(const char *url)
{
	CURL *e = curl_easy_init();
	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)(sizeof(body) - 1));
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 5000L);
	curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
	return e;
}

static size_t discard(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	(void)ptr;
	(void)userdata;
	return size * nmemb;
}

int main(int argc, char **argv)
{
	const char *url = NULL;
	int conns = 64;
	double seconds = 5, warmup = 0.5;
	bool fresh = false;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--url") && i + 1 < argc)
			url = argv[++i];
		else if (!strcmp(argv[i], "--conns") && i + 1 < argc)
			conns = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
			seconds = atof(argv[++i]);
		else if (!strcmp(argv[i], "--warmup") && i + 1 < argc)
			warmup = atof(argv[++i]);
		else if (!strcmp(argv[i], "--fresh"))
			fresh = true;
		else {
			fprintf(stderr, "usage: bench-hammer --url URL [--conns N] [--seconds S] [--warmup S]\n");
			return 2;
		}
	}
	if (!url || conns < 1) {
		fprintf(stderr, "bench-hammer: --url is required\n");
		return 2;
	}
	curl_global_init(CURL_GLOBAL_DEFAULT);
	CURLM *multi = curl_multi_init();
	CURL **easy = calloc((size_t)conns, sizeof(*easy));
	headers = curl_slist_append(headers, "Content-Type: application/json");
	headers = curl_slist_append(headers, "x-idempotent-key: 0190f5a2-7c1e-7a55-b3a5-3a9c1f0c2e11");
	headers = curl_slist_append(headers, "Expect:");
	for (int i = 0; i < conns; i++) {
		easy[i] = new_easy(url);
		curl_easy_setopt(easy[i], CURLOPT_PRIVATE, (void *)(intptr_t)i);
		curl_multi_add_handle(multi, easy[i]);
	}
	long long done = 0, errors = 0, counted = 0, counted_err = 0;
	double t0 = mono(), t_start = t0 + warmup, t_end = t_start + seconds;
	bool measuring = false;
	for (;;) {
		int running = 0;
		curl_multi_perform(multi, &running);
		CURLMsg *m;
		int left;
		while ((m = curl_multi_info_read(multi, &left)) != NULL) {
			if (m->msg != CURLMSG_DONE)
				continue;
			long status = 0;
			CURL *e = m->easy_handle;
			curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
			bool ok = m->data.result == CURLE_OK && status == 200;
			curl_multi_remove_handle(multi, e);
			done++;
			if (!ok)
				errors++;
			if (measuring) {
				counted++;
				if (!ok)
					counted_err++;
			}
			if (fresh) {
				/* the relay's pattern: a new handle per request, the old one cleaned up */
				char *slot = NULL;
				curl_easy_getinfo(e, CURLINFO_PRIVATE, &slot);
				int i = (int)(intptr_t)slot;
				curl_easy_cleanup(e);
				e = easy[i] = new_easy(url);
				curl_easy_setopt(e, CURLOPT_PRIVATE, (void *)(intptr_t)i);
			}
			curl_multi_add_handle(multi, e);
		}
		double now = mono();
		if (!measuring && now >= t_start)
			measuring = true;
		if (now >= t_end)
			break;
		curl_multi_poll(multi, NULL, 0, 100, NULL);
	}
	double elapsed = mono() - t_start;
	printf("requests=%lld errors=%lld seconds=%.3f rps=%.0f\n", counted, counted_err, elapsed,
	       (double)(counted - counted_err) / elapsed);
	for (int i = 0; i < conns; i++) {
		curl_multi_remove_handle(multi, easy[i]);
		curl_easy_cleanup(easy[i]);
	}
	free(easy);
	curl_slist_free_all(headers);
	curl_multi_cleanup(multi);
	curl_global_cleanup();
	return errors && !done ? 1 : 0;
}
