// Group commit for directory syncs. A name made by link or rename is
// durable once its directory is fsynced by an fsync that starts after
// the name was made; one already running may have started before and
// does not count. So a caller either starts the sync of its directory,
// when none runs, or joins the one being prepared, as long as its fsync
// has not been submitted, or else waits for the next one, which starts
// as soon as the running one ends and covers everyone who asked in
// between. Many concurrent plans then share a few fsyncs instead of one
// each.
//
// A sync is two trips through the pool: the open, a request of its own,
// then one job that makes the fsync and the close. Callers join until
// that job is submitted, since its pool thread may start the fsync at
// once; every name of a caller who joined was made before that, so
// before the fsync starts. Joining while the open runs is safe too: an
// fd opened before a name was made still syncs it.
//
// A failed fsync fails every caller it covered, and it also counts for
// names made before it ended by callers it did not cover: after a failed
// fsync Linux may drop the directory's dirty state and report the error
// only once, so a later fsync may succeed without having written them.
// The group counts its failed fsyncs for that; a chain compares the count
// with the one it saw when it first changed a name (see fs_chain.h). A
// job that could not run tried no fsync: it fails only the callers it
// covered, and is not counted.
//
// A group belongs to one loop (one environment): its callbacks run on
// that loop's thread and it is never touched from another. Its requests
// and jobs pass the group's gate; a sync takes one slot at a time
// however many callers it covers, and a caller waiting for it takes none.

#ifndef SLIMTA_DIR_SYNC_H
#define SLIMTA_DIR_SYNC_H

#include <stdint.h>

#include <map>
#include <string>

#include <uv.h>

#include "fs_gate.h"
#include "fs_result.h"

struct dir_syncer;
struct dir_sync_wait;

typedef void (*dir_sync_cb)(dir_sync_wait* wait);

struct dir_sync_group_t {
  uv_loop_t* loop = nullptr;
  fs_gate_t* gate = nullptr;

  // Read only: how many fsyncs of the group's syncs, shared or alone,
  // have failed, and how the last one failed (syscall "fsync", the
  // directory in path). Counted when the job that made the fsync ends,
  // before any caller hears of it.
  uint64_t failed_fsyncs = 0;
  fs_result last_failure;

  // Private: the directories with a sync running, and the number of
  // fsyncs submitted so far, which names each sync (its generation).
  std::map<std::string, dir_syncer*> running;
  uint64_t started = 0;
};

struct dir_sync_wait {
  void* data = nullptr;

  // Valid in the callback: how the covering sync ended, the generation
  // of the last fsync submitted when the wait began, and the generation
  // of the fsync that covered it: greater than `after`, or 0 when the
  // sync failed before its fsync was tried (its open failed, or its
  // job could not run).
  fs_result result;
  uint64_t after = 0;
  uint64_t generation = 0;

  // Private.
  dir_sync_cb cb = nullptr;
};

// Calls cb on the loop's thread once a sync of `path` whose fsync job was
// submitted after this call has ended. A failed sync fails every wait
// it covered.
void dir_sync_request(dir_sync_group_t* group, const std::string& path,
                      dir_sync_wait* wait, dir_sync_cb cb);

// The same, but a sync of its own that no other caller joins or waits
// for: one open, fsync and close per call, through the group's gate.
void dir_sync_alone(dir_sync_group_t* group, const std::string& path,
                    dir_sync_wait* wait, dir_sync_cb cb);

#endif
