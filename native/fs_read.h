// Whole-file reads as one chain of libuv requests: open, fstat, read
// until done, close, then the next file. A file that fails carries its
// own error; the others are still read.

#ifndef SLIMTA_FS_READ_H
#define SLIMTA_FS_READ_H

#include <stddef.h>

#include <string>
#include <vector>

#include <uv.h>

#include "fs_chain.h"

struct fs_read_file {
  std::string path;

  // The contents, from malloc(); whoever takes them sets data to null.
  char* data = nullptr;
  size_t len = 0;

  // error is 0 when data and len hold the whole file.
  fs_result result;
};

struct fs_read_t;

typedef void (*fs_read_cb)(fs_read_t* read);

struct fs_read_t {
  // Filled in by the caller before fs_read_start().
  std::vector<fs_read_file> files;
  void* data = nullptr;

  // Private.
  uv_fs_t req;
  uv_loop_t* loop = nullptr;
  fs_read_cb cb = nullptr;
  size_t index = 0;
  uv_file fd = -1;
  size_t size = 0;
  size_t cap = 0;
  uv_buf_t buf;
  bool stopping = false;

  ~fs_read_t();
};

// Reads every file in order and then calls cb once, on the loop thread.
void fs_read_start(uv_loop_t* loop, fs_read_t* read, fs_read_cb cb);

// Asks a running read to open no further file: the request in flight
// ends, an open file is closed, and cb runs as usual. Files not read
// carry UV_ECANCELED.
void fs_read_stop(fs_read_t* read);

#endif
