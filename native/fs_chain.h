// A plan of file-system steps run as one chain of trips through libuv's
// pool: a write_tmp or a publish step is one job, whose pool thread
// makes the step's uv_fs calls one after another; a replace or an
// unlink step is one uv_fs request; a sync_dir step waits for a
// directory sync, an open request then an fsync and close job (see
// dir_sync.h). Each trip's callback starts the next, so the caller
// hears back once per plan. Every trip waits for a slot of the chain's
// gate, and gives it back when it ends, so a chain holds no slot between
// two trips, nor while it waits for a shared directory sync. Knows
// nothing of JavaScript; the caller owns the memory behind every
// uv_buf_t until the chain's callback has run.

#ifndef SLIMTA_FS_CHAIN_H
#define SLIMTA_FS_CHAIN_H

#include <stddef.h>
#include <stdint.h>

#include <string>
#include <vector>

#include <uv.h>

#include "dir_sync.h"
#include "fs_gate.h"
#include "fs_result.h"

enum fs_chain_op {
  FS_CHAIN_WRITE_TMP,
  FS_CHAIN_PUBLISH,
  FS_CHAIN_REPLACE,
  FS_CHAIN_UNLINK,
  FS_CHAIN_SYNC_DIR,
};

struct fs_chain_step {
  fs_chain_op op;

  // write_tmp, unlink, sync_dir: the file; publish, replace: the source.
  std::string path;

  // publish, replace: the new name.
  std::string dest;

  // write_tmp: the body, in order; empty entries are allowed.
  std::vector<uv_buf_t> bufs;

  // unlink: a missing file is success.
  bool missing_ok = false;
};

struct fs_chain_t;

typedef void (*fs_chain_cb)(fs_chain_t* chain);

// Private: how a job of the chain ended. `made`: write_tmp, the tmp
// file was created; publish, the new name was linked.
struct fs_chain_job {
  int error = 0;
  const char* syscall = nullptr;
  const std::string* path = nullptr;
  const std::string* dest = nullptr;
  bool made = false;
};

struct fs_chain_t {
  // Filled in by the caller before fs_chain_start().
  std::vector<fs_chain_step> steps;
  void* data = nullptr;

  // The gate every request and job of the chain passes; the caller holds it
  // until the chain's callback has run.
  fs_gate_t* gate = nullptr;

  // The directory syncs of the chain's gate (see dir_sync.h); required.
  // With group_commit, sync_dir steps share syncs with the other chains
  // of the group; without, each step syncs alone. Either way a sync_dir
  // step fails when any fsync of the group failed after the chain
  // submitted its first link, rename or unlink, even if the step's own
  // sync succeeded: that fsync may have cost the chain's names.
  dir_sync_group_t* group = nullptr;
  bool group_commit = false;

  // Set when the chain has ended; valid in the callback.
  fs_result result;

  // Private.
  uv_fs_t req;
  uv_work_t work;
  fs_chain_job job;
  void (*job_work)(fs_chain_t* chain) = nullptr;
  void (*job_done)(fs_chain_t* chain, int status) = nullptr;
  fs_gate_turn turn;
  void (*submit)(fs_chain_t* chain) = nullptr;
  dir_sync_wait dir_wait;
  uv_loop_t* loop = nullptr;
  fs_chain_cb cb = nullptr;
  size_t step = 0;
  std::vector<std::string> tmp_names;
  std::vector<std::string> published;
  std::vector<std::string> undo;
  bool changed_names = false;
  uint64_t failed_fsyncs_seen = 0;
  bool stopping = false;
  bool failed = false;
};

// Runs every step in order and then calls cb once, on the loop's thread.
// On the first failure the chain unlinks the tmp files and published
// names it created, and reports the failing call. A job closes the
// files it opens, on failure too.
// A chain runs once: start a fresh fs_chain_t, never one that has run.
void fs_chain_start(uv_loop_t* loop, fs_chain_t* chain, fs_chain_cb cb);

// Asks a running chain to start no further trip. What is under way ends
// first: the job or request in flight (a write_tmp job writes and syncs
// the whole file), or the directory sync the chain waits for, none of
// which can be cut short. If that completed the plan (it was the last
// trip or sync, and it succeeded), the chain reports success; else it
// undoes its work as on failure, with that trip's error or
// UV_ECANCELED, and calls cb as usual. A chain stopped while it waits
// for its turn at the gate starts only its undo when the turn comes.
void fs_chain_stop(fs_chain_t* chain);

#endif
