#include "fs_read.h"

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

#ifdef O_CLOEXEC
constexpr int kReadFlags = UV_FS_O_RDONLY | O_CLOEXEC;
#else
constexpr int kReadFlags = UV_FS_O_RDONLY;
#endif

void open_next(fs_read_t* rd);
void read_some(fs_read_t* rd);

uv_fs_t* req_of(fs_read_t* rd) {
  rd->req.data = rd;
  return &rd->req;
}

fs_read_t* read_of(uv_fs_t* req) {
  return static_cast<fs_read_t*>(req->data);
}

fs_read_file& current(fs_read_t* rd) {
  return rd->files[rd->index];
}

ssize_t end_req(uv_fs_t* req) {
  ssize_t result = req->result;
  uv_fs_req_cleanup(req);
  return result;
}

// Calls on a descriptor name no path, as in Node's fs errors.
void set_error(fs_read_file& f, int err, const char* syscall, bool path) {
  free(f.data);
  f.data = nullptr;
  f.len = 0;
  f.result.error = err;
  f.result.syscall = syscall;
  if (path) f.result.path = f.path;
}

void next_file(fs_read_t* rd) {
  rd->index++;
  open_next(rd);
}

// Close, 2: a close error matters only when the read itself went well.
void on_close(uv_fs_t* req) {
  fs_read_t* rd = read_of(req);
  ssize_t r = end_req(req);
  fs_read_file& f = current(rd);
  if (r < 0 && f.result.error == 0) set_error(f, r, "close", false);

  next_file(rd);
}

// Close, 1: every file opened is closed, whatever happened after open.
void close_file(fs_read_t* rd) {
  uv_file fd = rd->fd;
  rd->fd = -1;
  int r = uv_fs_close(rd->loop, req_of(rd), fd, on_close);
  if (r == 0) return;

  uv_fs_req_cleanup(&rd->req);
  fs_read_file& f = current(rd);
  if (f.result.error == 0) set_error(f, r, "close", false);
  next_file(rd);
}

void file_failed(fs_read_t* rd, int err, const char* syscall, bool path) {
  set_error(current(rd), err, syscall, path);
  if (rd->fd >= 0) return close_file(rd);

  next_file(rd);
}

void on_read(uv_fs_t* req) {
  fs_read_t* rd = read_of(req);
  ssize_t r = end_req(req);
  if (r < 0) return file_failed(rd, r, "read", false);
  if (r == 0) return close_file(rd);

  current(rd).len += static_cast<size_t>(r);
  if (rd->stopping) return file_failed(rd, UV_ECANCELED, "read", false);

  read_some(rd);
}

// Read: a regular file is read up to the size fstat gave; anything else
// (a directory, a pipe, a /proc file) until read returns nothing, with
// a buffer that doubles as it fills.
void read_some(fs_read_t* rd) {
  fs_read_file& f = current(rd);
  if (rd->size > 0 && f.len == rd->size) return close_file(rd);

  if (f.len == rd->cap) {
    if (rd->cap == kMaxFileBytes) {
      return file_failed(rd, UV_EFBIG, "read", false);
    }
    size_t cap = rd->cap == 0 ? kFirstChunk : rd->cap * 2;
    cap = std::min(cap, kMaxFileBytes);
    char* data = static_cast<char*>(realloc(f.data, cap));
    if (data == nullptr) return file_failed(rd, UV_ENOMEM, "read", false);
    f.data = data;
    rd->cap = cap;
  }

  size_t want = std::min(rd->cap - f.len, kMaxReadBytes);
  rd->buf = uv_buf_init(f.data + f.len, static_cast<unsigned>(want));
  int r = uv_fs_read(rd->loop, req_of(rd), rd->fd, &rd->buf, 1, -1,
                     on_read);
  if (r < 0) {
    uv_fs_req_cleanup(&rd->req);
    file_failed(rd, r, "read", false);
  }
}

// fstat: size the buffer once for a regular file.
void on_fstat(uv_fs_t* req) {
  fs_read_t* rd = read_of(req);
  bool regular = S_ISREG(req->statbuf.st_mode);
  uint64_t size = req->statbuf.st_size;
  ssize_t r = end_req(req);
  if (r < 0) return file_failed(rd, r, "fstat", false);

  rd->size = regular ? static_cast<size_t>(size) : 0;
  rd->cap = 0;
  if (regular && size > kMaxFileBytes) {
    return file_failed(rd, UV_EFBIG, "read", false);
  }
  if (rd->size > 0) {
    fs_read_file& f = current(rd);
    f.data = static_cast<char*>(malloc(rd->size));
    if (f.data == nullptr) return file_failed(rd, UV_ENOMEM, "read", false);
    rd->cap = rd->size;
  }

  read_some(rd);
}

void on_open(uv_fs_t* req) {
  fs_read_t* rd = read_of(req);
  ssize_t r = end_req(req);
  if (r < 0) return file_failed(rd, r, "open", true);

  rd->fd = static_cast<uv_file>(r);
  r = uv_fs_fstat(rd->loop, req_of(rd), rd->fd, on_fstat);
  if (r < 0) {
    uv_fs_req_cleanup(&rd->req);
    file_failed(rd, r, "fstat", false);
  }
}

// Open: the next file, unless a stop came; files left carry ECANCELED.
void open_next(fs_read_t* rd) {
  for (; rd->index < rd->files.size(); rd->index++) {
    fs_read_file& f = current(rd);
    if (rd->stopping) {
      f.result.error = UV_ECANCELED;
      continue;
    }

    int r = uv_fs_open(rd->loop, req_of(rd), f.path.c_str(), kReadFlags, 0,
                       on_open);
    if (r == 0) return;

    uv_fs_req_cleanup(&rd->req);
    set_error(f, r, "open", true);
  }

  rd->cb(rd);
}

}  // namespace

fs_read_t::~fs_read_t() {
  for (fs_read_file& f : files) free(f.data);
}

void fs_read_start(uv_loop_t* loop, fs_read_t* rd, fs_read_cb cb) {
  rd->loop = loop;
  rd->cb = cb;
  rd->index = 0;
  open_next(rd);
}

void fs_read_stop(fs_read_t* rd) {
  rd->stopping = true;
}
