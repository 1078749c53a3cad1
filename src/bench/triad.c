/*
 * STREAM-style triad for `aios bench`: a[i] = b[i] + s * c[i] over three arrays of doubles far
 * larger than the last-level cache, OpenMP threads with static scheduling, arrays first touched by
 * the threads that later use them (so pages land on those threads' NUMA nodes).
 *
 * usage: triad <elements per array> <timed repetitions>   (threads: OMP_NUM_THREADS)
 * prints one JSON object: per-repetition seconds and GB/s, counting 3 arrays x 8 bytes per
 * element per repetition as STREAM does (2 reads + 1 write; write-allocate traffic not counted).
 * One untimed warm-up repetition runs first. Exit 1 if the result check fails.
 *
 * Compiled by aios with the host's cc: cc -O2 -fopenmp triad.c -o triad
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s <elements per array> <repetitions>\n", argv[0]);
    return 2;
  }
  long n = atol(argv[1]);
  int reps = atoi(argv[2]);
  if (n < 1024 || reps < 1) {
    fprintf(stderr, "triad: need at least 1024 elements and 1 repetition\n");
    return 2;
  }
  double *a = aligned_alloc(64, ((size_t)n * sizeof(double) + 63) / 64 * 64);
  double *b = aligned_alloc(64, ((size_t)n * sizeof(double) + 63) / 64 * 64);
  double *c = aligned_alloc(64, ((size_t)n * sizeof(double) + 63) / 64 * 64);
  if (!a || !b || !c) {
    fprintf(stderr, "triad: cannot allocate 3 x %ld doubles\n", n);
    return 3;
  }
  const double s = 3.0;
  int threads = 1;
#pragma omp parallel
  {
#pragma omp single
    threads = omp_get_num_threads();
  }
#pragma omp parallel for schedule(static)
  for (long i = 0; i < n; i++) {
    a[i] = 0.0;
    b[i] = 2.0;
    c[i] = 1.0;
  }
  double *secs = calloc((size_t)reps + 1, sizeof(double));
  for (int r = 0; r <= reps; r++) { /* r == 0: warm-up, not reported */
    double t0 = now();
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) a[i] = b[i] + s * c[i];
    secs[r] = now() - t0;
    /* Feed the result back so no repetition can be elided: b = a - s*c restores b exactly. */
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) b[i] = a[i] - s * c[i];
  }
  /* Check: a = 2 + 3*1 = 5 everywhere, b back at 2. */
  long bad = 0;
#pragma omp parallel for reduction(+ : bad) schedule(static)
  for (long i = 0; i < n; i++) bad += (fabs(a[i] - 5.0) > 1e-12) || (fabs(b[i] - 2.0) > 1e-12);
  const double bytes = 3.0 * sizeof(double) * (double)n;
  printf("{\"elements\": %ld, \"bytes_per_rep\": %.0f, \"threads\": %d, \"ok\": %s, \"seconds\": [", n, bytes, threads, bad ? "false" : "true");
  for (int r = 1; r <= reps; r++) printf("%s%.9f", r > 1 ? ", " : "", secs[r]);
  printf("], \"gbps\": [");
  for (int r = 1; r <= reps; r++) printf("%s%.4f", r > 1 ? ", " : "", bytes / secs[r] / 1e9);
  printf("]}\n");
  free(secs);
  free(a);
  free(b);
  free(c);
  return bad ? 1 : 0;
}
