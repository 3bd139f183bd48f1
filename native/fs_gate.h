// A gate in front of libuv's thread pool. The pool is small and shared
// with dns.lookup, fs and crypto, so the stores of a thread must not
// fill it: every request or job they make passes a gate (by default one
// that the thread's stores share), which lets at most `cap` of them run
// at once and queues the rest in order of arrival. A caller holds a
// slot only while its request or job runs; waiting for its turn, or for
// a directory sync shared with others, it holds none.
//
// A gate belongs to one loop: it is only ever touched on that loop's
// thread, so it needs no lock. It counts its holders, and the last one
// to let go frees it through free_cb, never while its own code runs.

#ifndef SLIMTA_FS_GATE_H
#define SLIMTA_FS_GATE_H

#include <stddef.h>

#include <uv.h>

struct fs_gate_turn;

typedef void (*fs_gate_cb)(fs_gate_turn* turn);

struct fs_gate_turn {
  void* data = nullptr;

  // Private.
  fs_gate_cb cb = nullptr;
  fs_gate_turn* next = nullptr;
};

struct fs_gate_t;

typedef void (*fs_gate_free_cb)(fs_gate_t* gate);

struct fs_gate_t {
  // At least 1; set before the first fs_gate_enter().
  size_t cap = 1;

  // Called once the last holder lets go; may free the gate.
  fs_gate_free_cb free_cb = nullptr;
  void* data = nullptr;

  // Private. Whoever made the gate holds it once.
  size_t holders = 1;
  size_t active = 0;
  fs_gate_turn* head = nullptr;
  fs_gate_turn* tail = nullptr;
  bool granting = false;
};

// Calls cb once the caller holds a slot: at once when one is free and
// no one waits, else when the turns queued before it have had theirs.
// The caller then submits exactly one request or job, and calls
// fs_gate_leave when it has ended or could not be submitted.
void fs_gate_enter(fs_gate_t* gate, fs_gate_turn* turn, fs_gate_cb cb);

// Gives the caller's slot to the first turn waiting, if any.
void fs_gate_leave(fs_gate_t* gate);

// Ends a file-system request made in a slot: returns its result, cleans
// it up and gives the slot back. For a request that has called back, and
// for one that could not be submitted, which never will.
ssize_t fs_gate_end_req(fs_gate_t* gate, uv_fs_t* req);

// Holding keeps the gate alive: every job that may still enter it holds
// it until the job has ended.
void fs_gate_hold(fs_gate_t* gate);
void fs_gate_let_go(fs_gate_t* gate);

#endif
