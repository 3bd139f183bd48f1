// Whole-file reads or lstats of many paths as one thread-pool job: the
// calls run one after another on a single pool thread, so a batch costs
// one trip through the pool, not four per file, and holds at most one
// thread: one slot of the batch's gate. A path that fails carries its
// own error; the others go on.
//
// A scan batch does for each message id what load() asks of it: reads
// <dir>/<id>.meta whole and lstats <env_dir>/<id>.env, both by name
// relative to a descriptor of their directory opened once per batch.

#ifndef SLIMTA_FS_BATCH_H
#define SLIMTA_FS_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include <atomic>
#include <string>
#include <vector>

#include <uv.h>

#include "fs_gate.h"
#include "fs_result.h"

enum fs_batch_op {
  FS_BATCH_READ,
  FS_BATCH_LSTAT,
  FS_BATCH_SCAN_META,
};

struct fs_batch_file {
  // read, lstat: the path. scan: the message id.
  std::string path;

  // read: the contents, from malloc(), and their length; whoever takes
  // them sets data to null.
  char* data = nullptr;
  size_t len = 0;

  // scan: the offset in the batch's arena at which the meta file's bytes
  // end; they start where the previous file's end, or at 0.
  size_t meta_end = 0;

  // lstat, scan (of the env file): the size, and the status change time
  // in milliseconds.
  uint64_t size = 0;
  double ctime_ms = 0;

  // error is 0 when the fields above are filled in. scan: result is the
  // meta file's read, env_result the env file's lstat.
  fs_result result;
  fs_result env_result;
};

struct fs_batch_t;

typedef void (*fs_batch_cb)(fs_batch_t* batch);

struct fs_batch_t {
  // Filled in by the caller before fs_batch_start().
  fs_batch_op op = FS_BATCH_READ;
  std::vector<fs_batch_file> files;
  void* data = nullptr;

  // scan: the meta and the env directory.
  std::string dir;
  std::string env_dir;

  // scan: every meta file read, back to back, from malloc().
  char* arena = nullptr;
  size_t arena_len = 0;
  size_t arena_cap = 0;

  // The gate the job passes; the caller holds it until cb has run.
  fs_gate_t* gate = nullptr;

  // Private.
  uv_work_t work;
  fs_gate_turn turn;
  uv_loop_t* loop = nullptr;
  fs_batch_cb cb = nullptr;
  std::atomic<bool> stopping{false};

  ~fs_batch_t();
};

// Runs the batch on the pool, once the gate has a slot, and then calls
// cb once, on the loop thread.
void fs_batch_start(uv_loop_t* loop, fs_batch_t* batch, fs_batch_cb cb);

// Asks a running batch to start on no further file: the file in hand is
// ended, and files not reached carry UV_ECANCELED. cb runs as usual.
// Safe from the loop thread while the batch runs on the pool.
void fs_batch_stop(fs_batch_t* batch);

#endif
