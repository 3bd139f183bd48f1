/*
 * The ceiling: the system calls of one durable DiskStorage write() and
 * nothing else. No JavaScript, no encoding, no thread pool queue: each of
 * N pthreads runs the protocol on its own messages, back to back.
 *
 * Per message, in the library's order:
 *   open tmp env (O_EXCL), write, fdatasync, close
 *   open tmp meta (O_EXCL), write, fdatasync, close
 *   link tmp env into env/, unlink the tmp name; open env/, fsync, close
 *   link tmp meta into meta/, unlink the tmp name; open meta/, fsync, close
 *
 * No group commit: each message syncs both directories itself, so at high
 * concurrency this ceiling falls below what shared syncs can reach.
 *
 * Usage: ceiling DIR THREADS ENV_BYTES META_BYTES SECONDS MAX_MESSAGES
 * Prints one JSON object on stdout.
 */

#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define WARMUP 8

static char env_dir[4096];
static char meta_dir[4096];
static char tmp_dir[4096];

static unsigned char *payload;
static size_t env_bytes;
static size_t meta_bytes;

static double deadline;
static long max_messages;
static atomic_long next_slot;
static double *latencies;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what, const char *path) {
  fprintf(stderr, "ceiling: %s %s: %s\n", what, path, strerror(errno));
  exit(1);
}

static void write_tmp(const char *path, size_t size) {
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                0600);
  if (fd < 0) die("open", path);

  size_t done = 0;
  while (done < size) {
    ssize_t n = write(fd, payload + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) die("write", path);
    done += (size_t)n;
  }

  if (fdatasync(fd) != 0) die("fdatasync", path);

  if (close(fd) != 0) die("close", path);
}

static void publish(const char *from, const char *to) {
  if (link(from, to) != 0) die("link", to);

  if (unlink(from) != 0) die("unlink", from);
}

static void sync_dir(const char *path) {
  int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) die("open", path);

  if (fsync(fd) != 0) die("fsync", path);

  if (close(fd) != 0) die("close", path);
}

static void one_message(long thread, long n) {
  char id[33];
  char env_tmp[4200], meta_tmp[4200], env_path[4200], meta_path[4200];

  snprintf(id, sizeof id, "%016lx%016lx", (unsigned long)thread,
           (unsigned long)n);
  snprintf(env_tmp, sizeof env_tmp, "%s/%s.env.tmp", tmp_dir, id);
  snprintf(meta_tmp, sizeof meta_tmp, "%s/%s.meta.tmp", tmp_dir, id);
  snprintf(env_path, sizeof env_path, "%s/%s.env", env_dir, id);
  snprintf(meta_path, sizeof meta_path, "%s/%s.meta", meta_dir, id);

  write_tmp(env_tmp, env_bytes);
  write_tmp(meta_tmp, meta_bytes);
  /* The library's order: the env name is durable before the meta name
     exists, so a meta file never points at a missing envelope. */
  publish(env_tmp, env_path);
  sync_dir(env_dir);
  publish(meta_tmp, meta_path);
  sync_dir(meta_dir);
}

static void *client(void *arg) {
  long thread = (long)arg;
  long n = 0;

  while (now() < deadline) {
    long slot = atomic_fetch_add(&next_slot, 1);
    if (slot >= max_messages) break;

    double t0 = now();
    one_message(thread, n++);
    latencies[slot] = (now() - t0) * 1e3;
  }
  return NULL;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double percentile(const double *sorted, long n, double p) {
  if (n == 0) return 0;
  /* Nearest rank, as bench/stats.js computes it. */
  long i = (long)ceil(p / 100.0 * n) - 1;
  if (i < 0) i = 0;
  return sorted[i];
}

static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
         ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void make_dir(const char *path) {
  if (mkdir(path, 0700) != 0 && errno != EEXIST) die("mkdir", path);
}

int main(int argc, char **argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: ceiling DIR THREADS ENV_BYTES META_BYTES "
                    "SECONDS MAX_MESSAGES\n");
    return 2;
  }
  long threads = atol(argv[2]);
  env_bytes = (size_t)atol(argv[3]);
  meta_bytes = (size_t)atol(argv[4]);
  double seconds = atof(argv[5]);
  max_messages = atol(argv[6]);
  if (threads < 1 || max_messages < 1) return 2;

  snprintf(env_dir, sizeof env_dir, "%s/env", argv[1]);
  snprintf(meta_dir, sizeof meta_dir, "%s/meta", argv[1]);
  snprintf(tmp_dir, sizeof tmp_dir, "%s/env/.tmp", argv[1]);
  make_dir(argv[1]);
  make_dir(env_dir);
  make_dir(meta_dir);
  make_dir(tmp_dir);

  size_t size = env_bytes > meta_bytes ? env_bytes : meta_bytes;
  payload = malloc(size);
  latencies = calloc((size_t)max_messages, sizeof *latencies);
  if (!payload || !latencies) return 1;
  for (size_t i = 0; i < size; i++) payload[i] = "queued mail\r\n"[i % 13];

  for (long i = 0; i < WARMUP; i++) one_message(-1, i);

  pthread_t *tids = calloc((size_t)threads, sizeof *tids);
  double cpu0 = cpu_seconds();
  double t0 = now();
  deadline = t0 + seconds;
  for (long i = 0; i < threads; i++) {
    if (pthread_create(&tids[i], NULL, client, (void *)i) != 0) return 1;
  }
  for (long i = 0; i < threads; i++) pthread_join(tids[i], NULL);
  double elapsed = now() - t0;
  double cpu = cpu_seconds() - cpu0;

  long done = atomic_load(&next_slot);
  if (done > max_messages) done = max_messages;
  qsort(latencies, (size_t)done, sizeof *latencies, by_value);

  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  printf("{\"messages\":%ld,\"seconds\":%.6f,\"cpuSeconds\":%.6f,"
         "\"p50Ms\":%.4f,\"p99Ms\":%.4f,\"maxRssKb\":%ld}\n",
         done, elapsed, cpu, percentile(latencies, done, 50),
         percentile(latencies, done, 99), ru.ru_maxrss);
  return 0;
}
