#include "fs_batch.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <algorithm>

namespace {

// Reads, like writes, stay below 1 GiB per call.
constexpr size_t kMaxReadBytes = (size_t(1) << 30) - 4096;

// The largest file read whole; Node's own readFile stops at 2 GiB too.
// TODO: past it this reports EFBIG where the js backend reports Node's
// ERR_FS_FILE_TOO_LARGE; the facade should map both to one error.
constexpr size_t kMaxFileBytes = 0x7fffffff;

// First buffer for a file whose size fstat does not tell.
constexpr size_t kFirstChunk = 64 * 1024;

// Queue files are read without following a planted symlink, and without
// blocking on a planted FIFO.
#ifdef O_CLOEXEC
constexpr int kReadFlags =
    UV_FS_O_RDONLY | UV_FS_O_NOFOLLOW | UV_FS_O_NONBLOCK | O_CLOEXEC;
#else
constexpr int kReadFlags =
    UV_FS_O_RDONLY | UV_FS_O_NOFOLLOW | UV_FS_O_NONBLOCK;
#endif

// The calls below run on a pool thread and block it: libuv runs a
// uv_fs_* call in place when it is given no callback. The loop is only
// recorded in the request, never used.

// Calls on a descriptor name no path, as in Node's fs errors.
void set_error(fs_batch_file& f, int err, const char* syscall, bool path) {
  free(f.data);
  f.data = nullptr;
  f.len = 0;
  f.result.error = err;
  f.result.syscall = syscall;
  if (path) f.result.path = f.path;
}

// Read: a regular file up to the size fstat gave, or, when fstat gives
// no size (a /proc file), until read returns nothing, with a buffer that
// doubles as it fills. A directory fails at read with EISDIR; anything
// else that is not a regular file (a FIFO, a device) with EINVAL, so a
// planted one cannot stall or flood a read of the queue. Returns 0 or
// the error, already set.
int read_all(fs_batch_t* b, fs_batch_file& f, uv_file fd) {
  uv_fs_t req;
  int r = uv_fs_fstat(b->loop, &req, fd, nullptr);
  uint64_t mode = req.statbuf.st_mode;
  bool regular = S_ISREG(mode);
  uint64_t size = req.statbuf.st_size;
  uv_fs_req_cleanup(&req);
  if (r < 0) {
    set_error(f, r, "fstat", false);
    return r;
  }

  if (!regular && !S_ISDIR(mode)) {
    set_error(f, UV_EINVAL, "read", false);
    return UV_EINVAL;
  }

  if (regular && size > kMaxFileBytes) {
    set_error(f, UV_EFBIG, "read", false);
    return UV_EFBIG;
  }

  size_t want_all = regular ? static_cast<size_t>(size) : 0;
  size_t cap = 0;
  if (want_all > 0) {
    f.data = static_cast<char*>(malloc(want_all));
    if (f.data == nullptr) {
      set_error(f, UV_ENOMEM, "read", false);
      return UV_ENOMEM;
    }
    cap = want_all;
  }

  for (;;) {
    if (want_all > 0 && f.len == want_all) return 0;

    if (f.len == cap) {
      if (cap == kMaxFileBytes) {
        set_error(f, UV_EFBIG, "read", false);
        return UV_EFBIG;
      }
      size_t grown = cap == 0 ? kFirstChunk : cap * 2;
      grown = std::min(grown, kMaxFileBytes);
      char* data = static_cast<char*>(realloc(f.data, grown));
      if (data == nullptr) {
        set_error(f, UV_ENOMEM, "read", false);
        return UV_ENOMEM;
      }
      f.data = data;
      cap = grown;
    }

    size_t want = std::min(cap - f.len, kMaxReadBytes);
    uv_buf_t buf = uv_buf_init(f.data + f.len, static_cast<unsigned>(want));
    r = uv_fs_read(b->loop, &req, fd, &buf, 1, -1, nullptr);
    uv_fs_req_cleanup(&req);
    if (r < 0) {
      set_error(f, r, "read", false);
      return r;
    }
    if (r == 0) return 0;

    f.len += static_cast<size_t>(r);
  }
}

// Open, read, close. Every file opened is closed, and a close error
// matters only when the read itself went well.
void read_file(fs_batch_t* b, fs_batch_file& f) {
  uv_fs_t req;
  int fd = uv_fs_open(b->loop, &req, f.path.c_str(), kReadFlags, 0, nullptr);
  uv_fs_req_cleanup(&req);
  if (fd < 0) return set_error(f, fd, "open", true);

  int err = read_all(b, f, fd);

  int r = uv_fs_close(b->loop, &req, fd, nullptr);
  uv_fs_req_cleanup(&req);
  if (r < 0 && err == 0) set_error(f, r, "close", false);
}

void lstat_file(fs_batch_t* b, fs_batch_file& f) {
  uv_fs_t req;
  int r = uv_fs_lstat(b->loop, &req, f.path.c_str(), nullptr);
  if (r == 0) {
    const uv_timespec_t& t = req.statbuf.st_ctim;
    f.size = req.statbuf.st_size;
    f.ctime_ms = t.tv_sec * 1e3 + t.tv_nsec / 1e6;
  }
  uv_fs_req_cleanup(&req);
  if (r < 0) set_error(f, r, "lstat", true);
}

void work(uv_work_t* req) {
  fs_batch_t* b = static_cast<fs_batch_t*>(req->data);
  for (fs_batch_file& f : b->files) {
    if (b->stopping.load(std::memory_order_relaxed)) {
      f.result.error = UV_ECANCELED;
      continue;
    }

    if (b->op == FS_BATCH_READ) {
      read_file(b, f);
    } else {
      lstat_file(b, f);
    }
  }
}

void after_work(uv_work_t* req, int status) {
  fs_batch_t* b = static_cast<fs_batch_t*>(req->data);
  fs_gate_leave(b->gate);
  if (status < 0) {
    for (fs_batch_file& f : b->files) {
      if (f.result.error == 0) set_error(f, status, nullptr, false);
    }
  }

  b->cb(b);
}

// A batch stopped while it waited for its turn needs no pool thread to
// find out that it reads nothing.
void queue_work(fs_gate_turn* turn) {
  fs_batch_t* b = static_cast<fs_batch_t*>(turn->data);
  if (b->stopping.load(std::memory_order_relaxed)) {
    return after_work(&b->work, UV_ECANCELED);
  }

  int r = uv_queue_work(b->loop, &b->work, work, after_work);
  if (r < 0) after_work(&b->work, r);
}

}  // namespace

fs_batch_t::~fs_batch_t() {
  for (fs_batch_file& f : files) free(f.data);
}

void fs_batch_start(uv_loop_t* loop, fs_batch_t* b, fs_batch_cb cb) {
  b->loop = loop;
  b->cb = cb;
  b->work.data = b;
  b->turn.data = b;
  fs_gate_enter(b->gate, &b->turn, queue_work);
}

void fs_batch_stop(fs_batch_t* b) {
  b->stopping.store(true, std::memory_order_relaxed);
}
