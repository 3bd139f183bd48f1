#include "dir_sync.h"

#include <fcntl.h>

#include <vector>

#ifdef O_CLOEXEC
constexpr int kCloexec = O_CLOEXEC;
#else
constexpr int kCloexec = 0;
#endif

constexpr int kDirFlags = UV_FS_O_RDONLY | UV_FS_O_DIRECTORY | kCloexec;

// One directory with a sync running. It exists only while someone
// waits, so it holds a pool thread only on behalf of waiting plans,
// which hold none themselves.
struct dir_syncer {
  dir_sync_group_t* group = nullptr;
  std::string path;

  uv_fs_t req;
  uv_file fd = -1;
  uint64_t generation = 0;
  fs_result result;

  // Covered by the sync running now.
  std::vector<dir_sync_wait*> current;

  // Asked while it ran: they wait for the next sync.
  std::vector<dir_sync_wait*> next;
};

namespace {

void start_sync(dir_syncer* s);

dir_syncer* syncer_of(uv_fs_t* req) {
  return static_cast<dir_syncer*>(req->data);
}

ssize_t end_req(uv_fs_t* req) {
  ssize_t result = req->result;
  uv_fs_req_cleanup(req);
  return result;
}

void set_error(dir_syncer* s, int err, const char* syscall, bool path) {
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
    s->group->running.erase(s->path);
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

// 3: close the directory; its error counts only if the sync went well.
void on_close(uv_fs_t* req) {
  dir_syncer* s = syncer_of(req);
  ssize_t r = end_req(req);
  s->fd = -1;
  if (r < 0) set_error(s, r, "close", false);

  finish(s);
}

void close_dir(dir_syncer* s) {
  int r = uv_fs_close(s->group->loop, &s->req, s->fd, on_close);
  if (r == 0) return;

  uv_fs_req_cleanup(&s->req);
  s->fd = -1;
  set_error(s, r, "close", false);
  finish(s);
}

// 2: fsync the directory: every name made in it before this call
// started is durable once it returns.
void on_fsync(uv_fs_t* req) {
  dir_syncer* s = syncer_of(req);
  ssize_t r = end_req(req);
  if (r < 0) set_error(s, r, "fsync", false);

  close_dir(s);
}

// 1: open the directory read-only; that is all fsync needs.
void on_open(uv_fs_t* req) {
  dir_syncer* s = syncer_of(req);
  ssize_t r = end_req(req);
  if (r < 0) {
    set_error(s, r, "open", true);
    return finish(s);
  }

  s->fd = static_cast<uv_file>(r);
  r = uv_fs_fsync(s->group->loop, &s->req, s->fd, on_fsync);
  if (r == 0) return;

  uv_fs_req_cleanup(&s->req);
  set_error(s, r, "fsync", false);
  close_dir(s);
}

void start_sync(dir_syncer* s) {
  s->generation = ++s->group->started;
  s->result = fs_result();
  s->req.data = s;

  int r = uv_fs_open(s->group->loop, &s->req, s->path.c_str(), kDirFlags, 0,
                     on_open);
  if (r == 0) return;

  uv_fs_req_cleanup(&s->req);
  set_error(s, r, "open", true);
  finish(s);
}

}  // namespace

void dir_sync_request(dir_sync_group_t* group, const std::string& path,
                      dir_sync_wait* wait, dir_sync_cb cb) {
  wait->cb = cb;
  wait->after = group->started;
  wait->result = fs_result();

  auto it = group->running.find(path);
  if (it != group->running.end()) {
    it->second->next.push_back(wait);
    return;
  }

  dir_syncer* s = new dir_syncer();
  s->group = group;
  s->path = path;
  s->current.push_back(wait);
  group->running.emplace(path, s);
  start_sync(s);
}
