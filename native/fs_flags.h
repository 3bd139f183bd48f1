// Open flags the native core shares.

#ifndef SLIMTA_FS_FLAGS_H
#define SLIMTA_FS_FLAGS_H

#include <fcntl.h>

// Close-on-exec for every descriptor the core opens, so that a child
// spawned meanwhile never inherits one. uv_fs_open adds it on its own
// where it can; it is named anyway, and the direct open and openat
// calls of fs_batch need it. 0 where the platform has no such flag.
#ifdef O_CLOEXEC
constexpr int kCloexec = O_CLOEXEC;
#else
constexpr int kCloexec = 0;
#endif

#endif
