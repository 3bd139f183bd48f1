// Whole-file reads or lstats of many paths as one thread-pool job: the
// calls run one after another on a single pool thread, so a batch costs
// one trip through the pool, not four per file, and holds at most one
// thread: one slot of the batch's gate. A path that fails carries its
// own error; the others go on.

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
};

struct fs_batch_file {
  std::string path;

  // read: the contents, from malloc(); whoever takes them sets data to
  // null.
  char* data = nullptr;
  size_t len = 0;

  // lstat: the size, and the status change time in milliseconds.
  uint64_t size = 0;
  double ctime_ms = 0;

  // error is 0 when the fields above are filled in.
  fs_result result;
};

struct fs_batch_t;

typedef void (*fs_batch_cb)(fs_batch_t* batch);

struct fs_batch_t {
  // Filled in by the caller before fs_batch_start().
  fs_batch_op op = FS_BATCH_READ;
  std::vector<fs_batch_file> files;
  void* data = nullptr;

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
