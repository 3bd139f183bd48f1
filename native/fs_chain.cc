#include "fs_chain.h"

#include <algorithm>

#include "fs_flags.h"

namespace {

// One write call carries less than 1 GiB: Linux stops a call near 2 GiB
// and other systems lower, so a larger body goes out in several calls.
constexpr size_t kMaxWriteBytes = (size_t(1) << 30) - 4096;

// Buffers per write call; libuv splits larger arrays itself, a bound
// keeps each call's copy of the array small.
constexpr size_t kMaxWriteBufs = 1024;

constexpr int kTmpFlags = UV_FS_O_WRONLY | UV_FS_O_CREAT | UV_FS_O_EXCL |
                          UV_FS_O_NOFOLLOW | kCloexec;

// The steps, in the order a plan runs them. A write_tmp or publish step
// is one job on a pool thread, which makes the step's calls one after
// another; replace and unlink are one request each, and sync_dir waits
// for dir_sync. Each job's, request's or sync's callback starts the
// next.
void run_step(fs_chain_t* c);
void replace(fs_chain_t* c);
void unlink_step(fs_chain_t* c);
void sync_dir(fs_chain_t* c);
void next_step(fs_chain_t* c);
void write_tmp_work(fs_chain_t* c);
void write_tmp_done(fs_chain_t* c, int status);
void start_publish(fs_chain_t* c);
void publish_work(fs_chain_t* c);
void publish_done(fs_chain_t* c, int status);

// The way out: on failure, undo; then report.
void fail(fs_chain_t* c, int err, const char* syscall,
          const std::string* path, const std::string* dest = nullptr);
void start_undo(fs_chain_t* c);
void undo_next(fs_chain_t* c);
void done(fs_chain_t* c);

uv_fs_t* req_of(fs_chain_t* c) {
  c->req.data = c;
  return &c->req;
}

fs_chain_t* chain_of(uv_fs_t* req) {
  return static_cast<fs_chain_t*>(req->data);
}

fs_chain_t* chain_of(uv_work_t* work) {
  return static_cast<fs_chain_t*>(work->data);
}

fs_chain_step& current(fs_chain_t* c) {
  return c->steps[c->step];
}

// Every request ends here, so every uv_fs_t is cleaned up exactly once
// and its slot of the gate given back; so does one that could not even
// be queued, which never calls back.
ssize_t end_req(uv_fs_t* req) {
  return fs_gate_end_req(chain_of(req)->gate, req);
}

// A step whose request could not be queued fails with its error.
void not_queued(fs_chain_t* c, int err, const char* syscall,
                const std::string* path,
                const std::string* dest = nullptr) {
  end_req(&c->req);
  fail(c, err, syscall, path, dest);
}

// The chain's turn at the gate. A chain stopped while it waited starts
// nothing more of the plan, only its undo.
void on_turn(fs_gate_turn* turn) {
  fs_chain_t* c = static_cast<fs_chain_t*>(turn->data);
  if (c->stopping && !c->failed) {
    fs_gate_leave(c->gate);
    return fail(c, UV_ECANCELED, nullptr, nullptr);
  }

  c->submit(c);
}

// Calls `submit`, which starts one request or job, once the gate has a
// slot.
void in_turn(fs_chain_t* c, void (*submit)(fs_chain_t*)) {
  c->submit = submit;
  c->turn.data = c;
  fs_gate_enter(c->gate, &c->turn, on_turn);
}

// Between two requests or jobs: once stopped, start nothing more of the
// plan.
bool go_on(fs_chain_t* c) {
  if (!c->stopping) return true;
  fail(c, UV_ECANCELED, nullptr, nullptr);
  return false;
}

// Called as a link, rename or unlink, or the job making one, is
// submitted: from the first one on, a failed fsync of the group may
// cost the chain a name.
void changing_names(fs_chain_t* c) {
  if (c->changed_names) return;
  c->changed_names = true;
  c->failed_fsyncs_seen = c->group->failed_fsyncs;
}

void forget_tmp(fs_chain_t* c, const std::string& name) {
  auto& names = c->tmp_names;
  names.erase(std::remove(names.begin(), names.end(), name), names.end());
}

// Jobs. The work runs on a pool thread, holding one slot of the gate,
// and touches only the step and c->job; the loop thread leaves both
// alone until `job_done` runs on it. A job that could not run (status
// < 0) made no call: it fails as its first call would.
void job_work(uv_work_t* work) {
  fs_chain_t* c = chain_of(work);
  c->job_work(c);
}

void job_after(uv_work_t* work, int status) {
  fs_chain_t* c = chain_of(work);
  fs_gate_leave(c->gate);
  c->job_done(c, status);
}

void start_job(fs_chain_t* c) {
  c->job = fs_chain_job();
  c->work.data = c;
  int r = uv_queue_work(c->loop, &c->work, job_work, job_after);
  if (r < 0) job_after(&c->work, r);
}

void job_error(fs_chain_t* c, int err, const char* syscall,
               const std::string* path = nullptr,
               const std::string* dest = nullptr) {
  c->job.error = err;
  c->job.syscall = syscall;
  c->job.path = path;
  c->job.dest = dest;
}

void fail_job(fs_chain_t* c) {
  const fs_chain_job& j = c->job;
  fail(c, j.error, j.syscall, j.path, j.dest);
}

// In a job, libuv makes each uv_fs_* call in place, blocking the pool
// thread, as it does when given no callback; the loop is only recorded
// in the request. Makes `call` with `args`, cleans up and returns its
// result: for write, the count written, which fits an int since a call
// carries less than 1 GiB.
template <typename Call, typename... Args>
int now(fs_chain_t* c, Call call, Args... args) {
  uv_fs_t req;
  int r = call(c->loop, &req, args..., nullptr);
  uv_fs_req_cleanup(&req);
  return r;
}

void run_step(fs_chain_t* c) {
  if (c->step == c->steps.size()) return done(c);

  switch (current(c).op) {
    case FS_CHAIN_WRITE_TMP:
      c->job_work = write_tmp_work;
      c->job_done = write_tmp_done;
      return in_turn(c, start_job);
    case FS_CHAIN_PUBLISH:
      c->job_work = publish_work;
      c->job_done = publish_done;
      return in_turn(c, start_publish);
    case FS_CHAIN_REPLACE:
      return in_turn(c, replace);
    case FS_CHAIN_UNLINK:
      return in_turn(c, unlink_step);
    case FS_CHAIN_SYNC_DIR:
      return sync_dir(c);
  }
}

// A stop after the last step changes nothing: the plan is complete.
void next_step(fs_chain_t* c) {
  c->step++;
  if (c->step == c->steps.size()) return done(c);
  if (go_on(c)) run_step(c);
}

// write_tmp, as one job: open, write, fdatasync, close.
//
// Writes the whole body. A call may take fewer bytes than it was
// offered, so each call starts where the last one stopped, and no call
// carries 1 GiB or more, nor more than kMaxWriteBufs buffers. The bytes
// are the caller's own memory, which it keeps alive until the chain
// reports.
void write_body(fs_chain_t* c, uv_file fd) {
  const std::vector<uv_buf_t>& bufs = current(c).bufs;
  std::vector<uv_buf_t> iov;
  size_t index = 0;
  size_t offset = 0;
  int64_t file_offset = 0;
  for (;;) {
    while (index < bufs.size() && offset == bufs[index].len) {
      index++;
      offset = 0;
    }
    if (index == bufs.size()) return;

    iov.clear();
    size_t room = kMaxWriteBytes;
    size_t skip = offset;
    for (size_t i = index; i < bufs.size(); i++) {
      if (room == 0 || iov.size() == kMaxWriteBufs) break;
      size_t len = std::min(bufs[i].len - skip, room);
      if (len > 0) {
        char* base = bufs[i].base + skip;
        iov.push_back(uv_buf_init(base, static_cast<unsigned>(len)));
      }
      room -= len;
      skip = 0;
    }

    unsigned n = static_cast<unsigned>(iov.size());
    int r = now(c, uv_fs_write, fd, iov.data(), n, file_offset);
    if (r < 0) return job_error(c, r, "write");

    // A regular file that takes no byte at all will not take the next
    // ones either: fail rather than spin.
    if (r == 0) return job_error(c, UV_EIO, "write");

    file_offset += r;
    size_t left = static_cast<size_t>(r);
    while (left > 0) {
      size_t rest = bufs[index].len - offset;
      if (left < rest) {
        offset += left;
        break;
      }
      left -= rest;
      index++;
      offset = 0;
    }
  }
}

// O_EXCL makes a leftover or planted file an error instead of something
// to write through, and O_NOFOLLOW keeps a symlink at the name from
// sending the body elsewhere. The fdatasync puts the body on the disk
// before any name points at it, so a crash after the publish can never
// expose a short file; it covers the size too, and the name is made
// durable later by the sync_dir step. The file is closed whatever
// failed; a failed close still releases the fd, and its error counts
// only when all else went well.
void write_tmp_work(fs_chain_t* c) {
  fs_chain_step& s = current(c);
  int fd = now(c, uv_fs_open, s.path.c_str(), kTmpFlags, 0600);
  if (fd < 0) return job_error(c, fd, "open", &s.path);

  c->job.made = true;
  write_body(c, fd);
  if (c->job.error == 0) {
    int r = now(c, uv_fs_fdatasync, fd);
    if (r < 0) job_error(c, r, "fdatasync");
  }

  int r = now(c, uv_fs_close, fd);
  if (r < 0 && c->job.error == 0) job_error(c, r, "close");
}

void write_tmp_done(fs_chain_t* c, int status) {
  fs_chain_step& s = current(c);
  if (status < 0) return fail(c, status, "open", &s.path);

  if (c->job.made) c->tmp_names.push_back(s.path);
  if (c->job.error < 0) return fail_job(c);

  next_step(c);
}

// publish, as one job: link the file under its final name, then drop
// the tmp name; the file lives on under the new one. Unlike rename,
// link never replaces: an existing name fails with EEXIST, so one
// message is never written over another.
void publish_work(fs_chain_t* c) {
  fs_chain_step& s = current(c);
  int r = now(c, uv_fs_link, s.path.c_str(), s.dest.c_str());
  if (r < 0) return job_error(c, r, "link", &s.path, &s.dest);

  c->job.made = true;
  r = now(c, uv_fs_unlink, s.path.c_str());
  if (r < 0) job_error(c, r, "unlink", &s.path);
}

void start_publish(fs_chain_t* c) {
  changing_names(c);
  start_job(c);
}

void publish_done(fs_chain_t* c, int status) {
  fs_chain_step& s = current(c);
  if (status < 0) return fail(c, status, "link", &s.path, &s.dest);

  if (c->job.made) c->published.push_back(s.dest);
  if (c->job.error < 0) return fail_job(c);

  forget_tmp(c, s.path);
  next_step(c);
}

// replace: rename swaps the name over in one go; a reader sees the old
// file or the new one, never a mix. Never undone: once it succeeds the
// old file is gone, and the new one is the best that is left.
void on_replace(uv_fs_t* req) {
  fs_chain_t* c = chain_of(req);
  fs_chain_step& s = current(c);
  ssize_t r = end_req(req);
  if (r < 0) return fail(c, r, "rename", &s.path, &s.dest);

  forget_tmp(c, s.path);
  next_step(c);
}

void replace(fs_chain_t* c) {
  fs_chain_step& s = current(c);
  changing_names(c);
  int r = uv_fs_rename(c->loop, req_of(c), s.path.c_str(), s.dest.c_str(),
                       on_replace);
  if (r < 0) not_queued(c, r, "rename", &s.path, &s.dest);
}

// unlink: a file already gone is what the step wants when missing_ok.
void on_unlink(uv_fs_t* req) {
  fs_chain_t* c = chain_of(req);
  fs_chain_step& s = current(c);
  ssize_t r = end_req(req);
  bool gone = r == UV_ENOENT && s.missing_ok;
  if (r < 0 && !gone) return fail(c, r, "unlink", &s.path);

  forget_tmp(c, s.path);
  next_step(c);
}

void unlink_step(fs_chain_t* c) {
  fs_chain_step& s = current(c);
  changing_names(c);
  int r = uv_fs_unlink(c->loop, req_of(c), s.path.c_str(), on_unlink);
  if (r < 0) not_queued(c, r, "unlink", &s.path);
}

// Fails the chain with a sync's result; a close error names no path.
void fail_with(fs_chain_t* c, const fs_result& r) {
  const std::string* path = r.path.empty() ? nullptr : &r.path;
  fail(c, r.error, r.syscall, path);
}

// A failed fsync of the group since the chain's first name change may
// have dropped that change unwritten while a later fsync, this one too,
// succeeds (see dir_sync.h): the step then fails with the group's last
// failure, which is surely one of those.
void on_dir_synced(dir_sync_wait* w) {
  fs_chain_t* c = static_cast<fs_chain_t*>(w->data);
  if (w->result.error < 0) return fail_with(c, w->result);

  const dir_sync_group_t* g = c->group;
  if (c->changed_names && g->failed_fsyncs > c->failed_fsyncs_seen) {
    return fail_with(c, g->last_failure);
  }

  next_step(c);
}

// sync_dir: wait for an fsync of the directory that starts after this
// point, which every link and rename of the plan precedes. A name
// created, removed or renamed is durable only once its directory is
// synced, so before it a crash could lose a publish whose file data
// was already safe. The open, fsync and close are dir_sync's, shared
// with other chains under group commit, else one sync per step.
// Waiting holds no slot of the gate: the sync takes one for everyone
// it covers.
// TODO: Windows cannot open or fsync a directory; this step fails there
// until a platform file decides what sync_dir means on it.
void sync_dir(fs_chain_t* c) {
  fs_chain_step& s = current(c);
  c->dir_wait.data = c;
  if (c->group_commit) {
    return dir_sync_request(c->group, s.path, &c->dir_wait, on_dir_synced);
  }

  dir_sync_alone(c->group, s.path, &c->dir_wait, on_dir_synced);
}

// On failure: record the first error, then undo. A job has closed its
// file by then, whatever failed.
void fail(fs_chain_t* c, int err, const char* syscall,
          const std::string* path, const std::string* dest) {
  c->failed = true;
  c->result.error = err;
  c->result.syscall = syscall;
  if (path != nullptr) c->result.path = *path;
  if (dest != nullptr) c->result.dest = *dest;

  start_undo(c);
}

// Undo: unlink what the plan made. The operation is reported as
// failed, so nothing of it may stay: tmp files still under their tmp
// name, and names it published. They go from the back of the list, the
// name published last first, so that a kill half-way never leaves a
// meta without its env. Errors are ignored; undo is best effort and the
// first error is the one the caller must see.
void start_undo(fs_chain_t* c) {
  c->undo = c->tmp_names;
  c->undo.insert(c->undo.end(), c->published.begin(), c->published.end());
  c->tmp_names.clear();
  c->published.clear();
  undo_next(c);
}

void on_undo(uv_fs_t* req) {
  fs_chain_t* c = chain_of(req);
  end_req(req);
  c->undo.pop_back();
  undo_next(c);
}

void unlink_undo(fs_chain_t* c) {
  const char* name = c->undo.back().c_str();
  int r = uv_fs_unlink(c->loop, req_of(c), name, on_undo);
  if (r == 0) return;

  end_req(&c->req);
  c->undo.pop_back();
  undo_next(c);
}

void undo_next(fs_chain_t* c) {
  if (c->undo.empty()) return done(c);

  in_turn(c, unlink_undo);
}

// The end, on success or after undo: report once. The callback may free
// the chain, so nothing touches it afterwards.
void done(fs_chain_t* c) {
  c->cb(c);
}

}  // namespace

void fs_chain_start(uv_loop_t* loop, fs_chain_t* c, fs_chain_cb cb) {
  c->loop = loop;
  c->cb = cb;
  run_step(c);
}

void fs_chain_stop(fs_chain_t* c) {
  c->stopping = true;
}
