#include "dir_sync.h"

#include <vector>

#include "fs_flags.h"

constexpr int kDirFlags = UV_FS_O_RDONLY | UV_FS_O_DIRECTORY | kCloexec;

// One directory with a sync running. It exists only while someone
// waits, so it takes a slot of the gate only on behalf of waiting
// plans, which hold none themselves.
struct dir_syncer {
  dir_sync_group_t* group = nullptr;
  std::string path;

  // Entered in the group's `running`, for others to join; false for a
  // sync of dir_sync_alone().
  bool shared = true;

  uv_fs_t req;
  uv_work_t work;
  fs_gate_turn turn;
  uv_file fd = -1;
  int fsync_error = 0;
  int close_error = 0;
  uint64_t generation = 0;
  fs_result result;

  // Set once the job that makes the fsync is submitted: from then on a
  // caller's name may postdate the fsync's start, so it waits for the
  // next sync.
  bool syncing = false;

  // Covered by the sync running now.
  std::vector<dir_sync_wait*> current;

  // Asked once its fsync job was submitted: they wait for the next sync.
  std::vector<dir_sync_wait*> next;
};

namespace {

void start_sync(dir_syncer* s);

dir_syncer* syncer_of(uv_fs_t* req) {
  return static_cast<dir_syncer*>(req->data);
}

dir_syncer* syncer_of(fs_gate_turn* turn) {
  return static_cast<dir_syncer*>(turn->data);
}

// Every request ends here, cleaned up and its slot given back; so does
// one that could not be submitted, which never calls back.
ssize_t end_req(dir_syncer* s) {
  return fs_gate_end_req(s->group->gate, &s->req);
}

// Keeps the sync's first error; `path` names the directory in it.
void keep_first_error(dir_syncer* s, int err, const char* syscall,
                      bool path) {
  if (s->result.error != 0) return;

  s->result.error = err;
  s->result.syscall = syscall;
  if (path) s->result.path = s->path;
}

// The sync has ended: start the next one for those who asked meanwhile,
// or forget the directory, and only then call back, since a callback
// may end the environment's last job.
void finish(dir_syncer* s) {
  std::vector<dir_sync_wait*> waits;
  waits.swap(s->current);
  fs_result result = s->result;
  uint64_t generation = s->generation;

  if (s->next.empty()) {
    if (s->shared) s->group->running.erase(s->path);
    delete s;
  } else {
    s->current.swap(s->next);
    start_sync(s);
  }

  for (dir_sync_wait* w : waits) {
    w->result = result;
    w->generation = generation;
    w->cb(w);
  }
}

// 2 and 3, as one job: fsync the directory, then close it. Every name
// made in it before the fsync started is durable once it returns. The
// close's error counts only if the sync went well. On the pool thread,
// libuv makes each call in place, as it does when given no callback;
// the job touches nothing but its own fields until it ends.
void fsync_and_close(uv_work_t* work) {
  dir_syncer* s = static_cast<dir_syncer*>(work->data);
  uv_fs_t req;
  s->fsync_error = uv_fs_fsync(s->group->loop, &req, s->fd, nullptr);
  uv_fs_req_cleanup(&req);
  s->close_error = uv_fs_close(s->group->loop, &req, s->fd, nullptr);
  uv_fs_req_cleanup(&req);
}

// A failed fsync is counted in the group before anyone hears of it, for
// chains whose names it may have cost (see dir_sync.h). A job that
// could not run made neither call: it fails the waits it covered, as
// its fsync would have, but is no failed fsync, which alone can drop a
// name unwritten. The directory is closed here, on the loop's thread.
void on_fsync_and_close(uv_work_t* work, int status) {
  dir_syncer* s = static_cast<dir_syncer*>(work->data);
  fs_gate_leave(s->group->gate);
  if (status < 0) {
    uv_fs_t req;
    uv_fs_close(s->group->loop, &req, s->fd, nullptr);
    uv_fs_req_cleanup(&req);
    s->fd = -1;
    s->generation = 0;
    keep_first_error(s, status, "fsync", true);
    return finish(s);
  }

  s->fd = -1;
  if (s->fsync_error < 0) {
    keep_first_error(s, s->fsync_error, "fsync", true);
    s->group->failed_fsyncs++;
    s->group->last_failure = s->result;
  }
  if (s->close_error < 0) keep_first_error(s, s->close_error, "close", false);

  finish(s);
}

// Everyone in `current` asked before this point, so their names were
// made before the fsync starts. From here on the job may start the
// fsync at any moment, so later callers wait for the next sync.
void fsync_now(fs_gate_turn* turn) {
  dir_syncer* s = syncer_of(turn);
  s->syncing = true;
  s->generation = ++s->group->started;

  s->work.data = s;
  int r = uv_queue_work(s->group->loop, &s->work, fsync_and_close,
                        on_fsync_and_close);
  if (r < 0) on_fsync_and_close(&s->work, r);
}

// 1: open the directory read-only; that is all fsync needs. An fd opened
// before a name was made syncs that name as well: fsync acts on the
// directory, not on what the fd saw.
void on_open(uv_fs_t* req) {
  dir_syncer* s = syncer_of(req);
  ssize_t r = end_req(s);
  if (r < 0) {
    keep_first_error(s, r, "open", true);
    return finish(s);
  }

  s->fd = static_cast<uv_file>(r);
  fs_gate_enter(s->group->gate, &s->turn, fsync_now);
}

void open_now(fs_gate_turn* turn) {
  dir_syncer* s = syncer_of(turn);
  int r = uv_fs_open(s->group->loop, &s->req, s->path.c_str(), kDirFlags, 0,
                     on_open);
  if (r == 0) return;

  end_req(s);
  keep_first_error(s, r, "open", true);
  finish(s);
}

void start_sync(dir_syncer* s) {
  s->syncing = false;
  s->generation = 0;
  s->result = fs_result();
  s->req.data = s;
  s->turn.data = s;
  fs_gate_enter(s->group->gate, &s->turn, open_now);
}

// Every wait starts here: it counts only fsyncs submitted from now on.
void begin_wait(dir_sync_group_t* group, dir_sync_wait* wait,
                dir_sync_cb cb) {
  wait->cb = cb;
  wait->after = group->started;
  wait->result = fs_result();
}

}  // namespace

void dir_sync_alone(dir_sync_group_t* group, const std::string& path,
                    dir_sync_wait* wait, dir_sync_cb cb) {
  begin_wait(group, wait, cb);

  dir_syncer* s = new dir_syncer();
  s->group = group;
  s->path = path;
  s->shared = false;
  s->current.push_back(wait);
  start_sync(s);
}

void dir_sync_request(dir_sync_group_t* group, const std::string& path,
                      dir_sync_wait* wait, dir_sync_cb cb) {
  begin_wait(group, wait, cb);

  auto it = group->running.find(path);
  if (it != group->running.end()) {
    dir_syncer* s = it->second;
    (s->syncing ? s->next : s->current).push_back(wait);
    return;
  }

  dir_syncer* s = new dir_syncer();
  s->group = group;
  s->path = path;
  s->current.push_back(wait);
  group->running.emplace(path, s);
  start_sync(s);
}
