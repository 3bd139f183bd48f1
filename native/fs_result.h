// What a file-system call ended with, in the shape of Node's fs errors.

#ifndef SLIMTA_FS_RESULT_H
#define SLIMTA_FS_RESULT_H

#include <string>

// error is 0 or a negative uv error code, and the rest says which call
// failed on which names, as Node's fs errors do.
struct fs_result {
  int error = 0;
  const char* syscall = nullptr;
  std::string path;
  std::string dest;
};

#endif
