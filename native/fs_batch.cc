#include "fs_batch.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>

#ifndef _WIN32
#include <unistd.h>
#endif

#include <algorithm>

#include "fs_flags.h"

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
constexpr int kReadFlags =
    UV_FS_O_RDONLY | UV_FS_O_NOFOLLOW | UV_FS_O_NONBLOCK | kCloexec;

// The calls below run on a pool thread and block it: libuv runs a
// uv_fs_* call in place when it is given no callback. The loop is only
// recorded in the request, never used.

// Calls on a descriptor name no path, as in Node's fs errors.
void fill_error(fs_result& result, int err, const char* syscall,
                const std::string* path) {
  result.error = err;
  result.syscall = syscall;
  if (path != nullptr) result.path = *path;
}

// A read that failed hands over no bytes: they are freed here.
void fail_read(fs_batch_file& f, int err, const char* syscall) {
  free(f.data);
  f.data = nullptr;
  f.len = 0;
  fill_error(f.result, err, syscall, nullptr);
}

// A buffer from malloc() that a read appends to: a file's own, or the
// arena a scan batch reads every meta file into.
struct byte_buf {
  char* data = nullptr;
  size_t len = 0;
  size_t cap = 0;
};

// Grows geometrically, so that an arena filled file by file reallocates
// only a few times per batch; a buffer of its own first gets exactly
// what it asks for.
bool reserve(byte_buf* out, size_t need) {
  if (need <= out->cap) return true;

  size_t cap = std::max(need, out->cap * 2);
  char* data = static_cast<char*>(realloc(out->data, cap));
  if (data == nullptr) return false;

  out->data = data;
  out->cap = cap;
  return true;
}

// Read: a regular file up to the size fstat gave, or, when fstat gives
// no size (a /proc file), until read returns nothing, in chunks that
// double. A directory fails at read with EISDIR; anything else that is
// not a regular file (a FIFO, a device) with EINVAL, so a planted one
// cannot stall or flood a read of the queue. Appends to `out` and
// returns 0, or returns the error and the call that failed; what was
// appended is then for the caller to drop.
int read_all(fs_batch_t* b, uv_file fd, byte_buf* out, const char** syscall) {
  uv_fs_t req;
  int r = uv_fs_fstat(b->loop, &req, fd, nullptr);
  if (r < 0) {
    uv_fs_req_cleanup(&req);
    *syscall = "fstat";
    return r;
  }

  // statbuf is filled in only when fstat succeeded.
  uint64_t mode = req.statbuf.st_mode;
  bool regular = S_ISREG(mode);
  uint64_t size = req.statbuf.st_size;
  uv_fs_req_cleanup(&req);

  *syscall = "read";
  if (!regular && !S_ISDIR(mode)) return UV_EINVAL;
  if (regular && size > kMaxFileBytes) return UV_EFBIG;

  size_t start = out->len;
  size_t want_all = regular ? static_cast<size_t>(size) : 0;
  if (want_all > 0 && !reserve(out, start + want_all)) return UV_ENOMEM;

  for (;;) {
    size_t got = out->len - start;
    if (want_all > 0 && got == want_all) return 0;

    size_t room = want_all - got;
    if (want_all == 0) {
      if (got == kMaxFileBytes) return UV_EFBIG;
      if (out->len == out->cap) {
        size_t grown = got == 0 ? kFirstChunk : got * 2;
        grown = std::min(grown, kMaxFileBytes);
        if (!reserve(out, start + grown)) return UV_ENOMEM;
      }
      room = std::min(out->cap - out->len, kMaxFileBytes - got);
    }

    size_t want = std::min(room, kMaxReadBytes);
    char* end = out->data + out->len;
    uv_buf_t buf = uv_buf_init(end, static_cast<unsigned>(want));
    r = uv_fs_read(b->loop, &req, fd, &buf, 1, -1, nullptr);
    uv_fs_req_cleanup(&req);
    if (r < 0) return r;
    if (r == 0) return 0;

    out->len += static_cast<size_t>(r);
  }
}

// Open, read, close. Every file opened is closed, and a close error
// matters only when the read itself went well.
void read_file(fs_batch_t* b, fs_batch_file& f) {
  uv_fs_t req;
  int fd = uv_fs_open(b->loop, &req, f.path.c_str(), kReadFlags, 0, nullptr);
  uv_fs_req_cleanup(&req);
  if (fd < 0) return fill_error(f.result, fd, "open", &f.path);

  byte_buf buf;
  const char* syscall = nullptr;
  int err = read_all(b, fd, &buf, &syscall);
  f.data = buf.data;
  f.len = buf.len;
  if (err < 0) fail_read(f, err, syscall);

  int r = uv_fs_close(b->loop, &req, fd, nullptr);
  uv_fs_req_cleanup(&req);
  if (r < 0 && err == 0) fail_read(f, r, "close");
}

int lstat_path(fs_batch_t* b, const char* path, fs_batch_file& f) {
  uv_fs_t req;
  int r = uv_fs_lstat(b->loop, &req, path, nullptr);
  if (r == 0) {
    const uv_timespec_t& t = req.statbuf.st_ctim;
    f.size = req.statbuf.st_size;
    f.ctime_ms = t.tv_sec * 1e3 + t.tv_nsec / 1e6;
  }
  uv_fs_req_cleanup(&req);
  return r;
}

void lstat_file(fs_batch_t* b, fs_batch_file& f) {
  int r = lstat_path(b, f.path.c_str(), f);
  if (r < 0) fill_error(f.result, r, "lstat", &f.path);
}

// A scan names files relative to a descriptor of their directory, which
// saves resolving the directory's path twice per message. Where that
// is not possible (Windows, or the directory would not open: then each
// file fails the way its own path does) it falls back to whole paths.
#ifdef _WIN32
constexpr char kSep = '\\';

int open_dir(const std::string&) {
  return -1;
}

void close_dir(int) {}
#else
constexpr char kSep = '/';

int open_dir(const std::string& path) {
  int fd;
  do {
    fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | kCloexec);
  } while (fd < 0 && errno == EINTR);
  return fd;
}

void close_dir(int fd) {
  if (fd >= 0) close(fd);
}
#endif

std::string join(const std::string& dir, const std::string& name) {
  return dir + kSep + name;
}

int open_meta(fs_batch_t* b, int dir_fd, const std::string& name) {
#ifndef _WIN32
  if (dir_fd >= 0) {
    int fd;
    do {
      fd = openat(dir_fd, name.c_str(), kReadFlags);
    } while (fd < 0 && errno == EINTR);
    return fd < 0 ? uv_translate_sys_error(errno) : fd;
  }
#endif
  uv_fs_t req;
  std::string path = join(b->dir, name);
  int fd = uv_fs_open(b->loop, &req, path.c_str(), kReadFlags, 0, nullptr);
  uv_fs_req_cleanup(&req);
  return fd;
}

int lstat_env(fs_batch_t* b, int dir_fd, const std::string& name,
              fs_batch_file& f) {
#ifndef _WIN32
  if (dir_fd >= 0) {
    struct stat st;
    if (fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0) {
      return uv_translate_sys_error(errno);
    }
#ifdef __APPLE__
    const struct timespec& t = st.st_ctimespec;
#else
    const struct timespec& t = st.st_ctim;
#endif
    f.size = st.st_size;
    f.ctime_ms = t.tv_sec * 1e3 + t.tv_nsec / 1e6;
    return 0;
  }
#endif
  return lstat_path(b, join(b->env_dir, name).c_str(), f);
}

// One message of a scan: its meta file appended to the arena, and its
// env file's lstat. Each carries its own error, named by whole path as
// a call by path would be.
void scan_one(fs_batch_t* b, fs_batch_file& f, int meta_fd, int env_fd,
              std::string& name) {
  name.assign(f.path).append(".meta");
  size_t start = b->arena_len;
  int fd = open_meta(b, meta_fd, name);
  if (fd < 0) {
    std::string path = join(b->dir, name);
    fill_error(f.result, fd, "open", &path);
  } else {
    byte_buf arena{b->arena, b->arena_len, b->arena_cap};
    const char* syscall = nullptr;
    int err = read_all(b, fd, &arena, &syscall);
    b->arena = arena.data;
    b->arena_cap = arena.cap;
    b->arena_len = err < 0 ? start : arena.len;
    if (err < 0) fill_error(f.result, err, syscall, nullptr);

    uv_fs_t req;
    int r = uv_fs_close(b->loop, &req, fd, nullptr);
    uv_fs_req_cleanup(&req);
    if (r < 0 && err == 0) {
      b->arena_len = start;
      fill_error(f.result, r, "close", nullptr);
    }
  }
  f.meta_end = b->arena_len;

  name.assign(f.path).append(".env");
  int r = lstat_env(b, env_fd, name, f);
  if (r < 0) {
    std::string path = join(b->env_dir, name);
    fill_error(f.env_result, r, "lstat", &path);
  }
}

void scan_meta(fs_batch_t* b) {
  int meta_fd = open_dir(b->dir);
  int env_fd = open_dir(b->env_dir);
  std::string name;
  for (fs_batch_file& f : b->files) {
    if (b->stopping.load(std::memory_order_relaxed)) {
      f.result.error = UV_ECANCELED;
      f.env_result.error = UV_ECANCELED;
      f.meta_end = b->arena_len;
      continue;
    }
    scan_one(b, f, meta_fd, env_fd, name);
  }
  close_dir(meta_fd);
  close_dir(env_fd);
}

void work(uv_work_t* req) {
  fs_batch_t* b = static_cast<fs_batch_t*>(req->data);
  if (b->op == FS_BATCH_SCAN_META) return scan_meta(b);

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
      if (f.result.error == 0) fail_read(f, status, nullptr);
      if (f.env_result.error == 0) {
        fill_error(f.env_result, status, nullptr, nullptr);
      }
    }
    b->arena_len = 0;
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
  free(arena);
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
