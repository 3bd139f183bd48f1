#include "fs_gate.h"

namespace {

// Hands free slots to waiting turns, oldest first. A turn's callback may
// enter or leave the gate itself (a request that cannot be submitted
// fails at once, and the caller goes on with its next request); those
// calls only queue or count, and this loop, already running below them,
// serves them, so the stack never grows with the queue. A callback may
// also end the last job that held the gate, so the loop holds it too.
void grant(fs_gate_t* g) {
  if (g->granting) return;
  g->granting = true;
  fs_gate_hold(g);

  while (g->active < g->cap && g->head != nullptr) {
    fs_gate_turn* turn = g->head;
    g->head = turn->next;
    if (g->head == nullptr) g->tail = nullptr;
    turn->next = nullptr;

    g->active++;
    turn->cb(turn);
  }

  g->granting = false;
  fs_gate_let_go(g);
}

}  // namespace

void fs_gate_enter(fs_gate_t* g, fs_gate_turn* turn, fs_gate_cb cb) {
  turn->cb = cb;
  turn->next = nullptr;
  if (g->tail == nullptr) {
    g->head = turn;
  } else {
    g->tail->next = turn;
  }
  g->tail = turn;

  grant(g);
}

void fs_gate_leave(fs_gate_t* g) {
  g->active--;
  grant(g);
}

ssize_t fs_gate_end_req(fs_gate_t* g, uv_fs_t* req) {
  ssize_t result = req->result;
  uv_fs_req_cleanup(req);
  fs_gate_leave(g);
  return result;
}

void fs_gate_hold(fs_gate_t* g) {
  g->holders++;
}

void fs_gate_let_go(fs_gate_t* g) {
  if (--g->holders == 0 && g->free_cb != nullptr) g->free_cb(g);
}
