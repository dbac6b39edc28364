/*
 * clock.c - see clock.h.
 */
#include "util/clock.h"

#include <time.h>

int64_t obr_mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t obr_mono_ms(void)
{
	return obr_mono_us() / 1000;
}

struct timeval obr_timeval_from_us(int64_t us)
{
	if (us < 0)
		us = 0;
	return (struct timeval){ (time_t)(us / 1000000), (suseconds_t)(us % 1000000) };
}

struct timeval obr_timeval_from_ms(int64_t ms)
{
	if (ms < 0)
		ms = 0;
	if (ms > INT64_MAX / 1000)
		ms = INT64_MAX / 1000;
	return obr_timeval_from_us(ms * 1000);
}
