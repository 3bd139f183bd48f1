// Group commit for directory syncs. A name made by link or rename is
// durable once its directory is fsynced by a sync that starts after the
// name was made; a sync already running may have started before and
// does not count. So a caller either starts the sync of its directory,
// when none runs, or waits for the next one, which starts as soon as the
// running one ends and covers everyone who asked in between. Many
// concurrent plans then share a few fsyncs instead of one each.
//
// A group belongs to one loop (one environment): its callbacks run on
// that loop's thread and it is never touched from another.

#ifndef SLIMTA_DIR_SYNC_H
#define SLIMTA_DIR_SYNC_H

#include <stdint.h>

#include <map>
#include <string>

#include <uv.h>

#include "fs_result.h"

struct dir_syncer;
struct dir_sync_wait;

typedef void (*dir_sync_cb)(dir_sync_wait* wait);

struct dir_sync_group_t {
  uv_loop_t* loop = nullptr;

  // Private: the directories with a sync running, and the number of
  // syncs started so far, which names each sync (its generation).
  std::map<std::string, dir_syncer*> running;
  uint64_t started = 0;
};

struct dir_sync_wait {
  void* data = nullptr;

  // Valid in the callback: how the covering sync ended, the generation
  // of the last sync started when the wait began, and the generation of
  // the sync that covered it, always greater.
  fs_result result;
  uint64_t after = 0;
  uint64_t generation = 0;

  // Private.
  dir_sync_cb cb = nullptr;
};

// Calls cb on the loop's thread once a sync of `path` that started after
// this call has ended. A failed sync fails every wait it covered.
void dir_sync_request(dir_sync_group_t* group, const std::string& path,
                      dir_sync_wait* wait, dir_sync_cb cb);

#endif
