/*
 * clock.h - the monotonic clock, and libevent's timeval from milliseconds or microseconds.
 */
#ifndef OBR_CLOCK_H
#define OBR_CLOCK_H

#include <stdint.h>
#include <sys/time.h>

/* CLOCK_MONOTONIC: for deadlines and intervals, never for wall-clock times. */
int64_t obr_mono_us(void);
int64_t obr_mono_ms(void);

/* A timer interval; a negative one is 0 (the timer fires at the next loop turn). */
struct timeval obr_timeval_from_ms(int64_t ms);
struct timeval obr_timeval_from_us(int64_t us);

#endif
