// Glue between JavaScript and the request chains: converts arguments,
// keeps the written Buffers and the call's gate alive, settles one
// promise per call, and stops the chains when the environment (main
// thread or worker) ends.

#include <napi.h>
#include <uv.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "dir_sync.h"
#include "fs_batch.h"
#include "fs_chain.h"
#include "fs_gate.h"

namespace {

struct Job;

// State of one environment; the main thread and each worker have their
// own, so no JavaScript value is ever shared between threads.
struct Addon {
  napi_env env = nullptr;
  napi_async_cleanup_hook_handle hook = nullptr;
  bool tearing_down = false;
  std::set<Job*> jobs;
};

// A share of the thread pool: the gate that every request and job of
// its stores passes (by default every store of the environment that
// leaves maxInFlight unset), and the directory syncs their plans share.
// It lives in one environment, so both are only touched on that
// environment's loop.
// Freed once the JavaScript object naming it is collected and the last
// job using it has ended, whichever comes last.
struct Gate {
  fs_gate_t gate;
  dir_sync_group_t syncs;
};

// Marks the objects create_gate() makes, so that no other object is
// ever taken for one.
constexpr napi_type_tag kGateTag = {0x736c696d74616761, 0x7465000000000001};

// One call of the binding while its requests run.
struct Job {
  Addon* addon = nullptr;
  Gate* gate = nullptr;
  napi_deferred deferred = nullptr;
  napi_async_context context = nullptr;

  // The object given to napi_async_init, kept so that the callback
  // scope that settles the promise names the same resource to
  // async_hooks.
  napi_ref resource = nullptr;

  // The Buffers written from. Referenced, not copied: the chain's
  // uv_buf_t point into their memory, so it must outlive the plan's
  // last request or job, even when JavaScript drops every Buffer. A
  // reference keeps the object, not the memory, which goes with the
  // ArrayBuffer's backing store: an ArrayBuffer transferred or detached
  // meanwhile may be freed under the chain. N-API offers no hold on the
  // backing store and no way to refuse a detachable ArrayBuffer, so that
  // is the caller's to avoid (see run_plan in src/native.ts).
  std::vector<napi_ref> refs;

  virtual ~Job();
  virtual void Stop() = 0;
};

struct PlanJob : Job {
  fs_chain_t chain;
  void Stop() override { fs_chain_stop(&chain); }
};

struct BatchJob : Job {
  fs_batch_t batch;
  void Stop() override { fs_batch_stop(&batch); }
};

// A sync cannot be stopped half-way; the job ends when the sync does.
struct SyncDirJob : Job {
  dir_sync_wait wait;
  void Stop() override {}
};

// Lets teardown go on, once. Node releases the environment, and with it
// the Addon (its instance data), from an immediate rather than within
// this call, so the Addon outlives it; but nothing may keep a pointer to
// it past the callback that called this.
void RemoveHook(Addon* addon) {
  napi_async_cleanup_hook_handle hook = addon->hook;
  if (hook == nullptr) return;

  addon->hook = nullptr;
  napi_remove_async_cleanup_hook(hook);
}

// Runs only once every request of the job has ended. Deleting a
// reference or an async context calls no JavaScript, so this is safe
// during teardown too; were one to fail, it would only leak.
Job::~Job() {
  napi_env env = addon->env;
  for (napi_ref ref : refs) napi_delete_reference(env, ref);
  if (context != nullptr) napi_async_destroy(env, context);
  if (resource != nullptr) napi_delete_reference(env, resource);

  if (gate != nullptr) fs_gate_let_go(&gate->gate);

  // The last job to end in a teardown lets it go on.
  addon->jobs.erase(this);
  if (addon->tearing_down && addon->jobs.empty()) RemoveHook(addon);
}

// The environment is going away. Its chains finish the request in
// flight and undo their work, but start no further step; once the last
// one has ended the hook is removed and teardown goes on. No promise is
// settled from here on: JavaScript may not run any more.
void OnTeardown(napi_async_cleanup_hook_handle hook, void* arg) {
  Addon* addon = static_cast<Addon*>(arg);
  addon->tearing_down = true;
  addon->hook = hook;
  if (addon->jobs.empty()) return RemoveHook(addon);

  for (Job* job : addon->jobs) job->Stop();
}

// The result builders below return false as soon as an N-API call fails,
// leaving *out unset; see Settle for when that happens.
#define TRY_NAPI(call)                   \
  do {                                   \
    if ((call) != napi_ok) return false; \
  } while (0)

bool SetString(napi_env env, napi_value obj, const char* key,
               const std::string& value) {
  napi_value v = nullptr;
  TRY_NAPI(napi_create_string_utf8(env, value.data(), value.size(), &v));
  TRY_NAPI(napi_set_named_property(env, obj, key, v));
  return true;
}

// An Error shaped like Node's fs errors: the same message, and code,
// errno, syscall, path and dest properties. The _r forms write into the
// buffers given: the plain ones allocate, and never free, a string for
// each errno libuv has no name for. errors.ts names those from errno.
bool MakeFsError(napi_env env, const fs_result& r, napi_value* out) {
  char name[64];
  char text[256];
  uv_err_name_r(r.error, name, sizeof name);
  uv_strerror_r(r.error, text, sizeof text);
  std::string code = name;
  std::string message = code + ": " + text;
  if (r.syscall != nullptr) message += std::string(", ") + r.syscall;
  if (!r.path.empty()) message += " '" + r.path + "'";
  if (!r.dest.empty()) message += " -> '" + r.dest + "'";

  napi_value msg = nullptr;
  napi_value err = nullptr;
  napi_value errno_value = nullptr;
  TRY_NAPI(napi_create_string_utf8(env, message.data(), message.size(), &msg));
  TRY_NAPI(napi_create_error(env, nullptr, msg, &err));
  TRY_NAPI(napi_create_int32(env, r.error, &errno_value));
  TRY_NAPI(napi_set_named_property(env, err, "errno", errno_value));
  if (!SetString(env, err, "code", code)) return false;
  if (r.syscall != nullptr && !SetString(env, err, "syscall", r.syscall)) {
    return false;
  }
  if (!r.path.empty() && !SetString(env, err, "path", r.path)) return false;
  if (!r.dest.empty() && !SetString(env, err, "dest", r.dest)) return false;
  *out = err;
  return true;
}

constexpr size_t kCopyBelow = 4096;

bool MakeFile(napi_env env, fs_batch_file& f, napi_value* out) {
  if (f.result.error != 0) return MakeFsError(env, f.result, out);

  if (f.len == 0) return napi_create_buffer(env, 0, nullptr, out) == napi_ok;

  // A small file is cheaper copied than handed over: an external
  // Buffer costs a finalizer and a backing store of its own, which a
  // scan of a million meta files would pay a million times.
  void* copy = nullptr;
  if (f.len <= kCopyBelow) {
    return napi_create_buffer_copy(env, f.len, f.data, &copy, out) == napi_ok;
  }

  // Node takes the bytes once it has begun to make the Buffer, and frees
  // them itself even when it then fails (napi_generic_failure); before
  // that (any other status) they are still the batch's to free.
  auto release = [](napi_env, void* data, void*) { free(data); };
  napi_status s = napi_create_external_buffer(env, f.len, f.data, release,
                                              nullptr, out);
  if (s == napi_ok || s == napi_generic_failure) f.data = nullptr;
  if (s != napi_no_external_buffers_allowed) return s == napi_ok;

  // A runtime without external buffers (Electron) gets a copy.
  return napi_create_buffer_copy(env, f.len, f.data, &copy, out) == napi_ok;
}

// { size, ctimeMs }, the two fields of fs.Stats that load() needs.
bool MakeStat(napi_env env, const fs_batch_file& f, napi_value* out) {
  if (f.result.error != 0) return MakeFsError(env, f.result, out);

  napi_value obj = nullptr;
  napi_value size = nullptr;
  napi_value ctime = nullptr;
  TRY_NAPI(napi_create_object(env, &obj));
  TRY_NAPI(napi_create_double(env, static_cast<double>(f.size), &size));
  TRY_NAPI(napi_create_double(env, f.ctime_ms, &ctime));
  TRY_NAPI(napi_set_named_property(env, obj, "size", size));
  TRY_NAPI(napi_set_named_property(env, obj, "ctimeMs", ctime));
  *out = obj;
  return true;
}

// read: Array<Buffer | Error>; lstat: Array<{ size, ctimeMs } | Error>.
bool MakeList(napi_env env, fs_batch_t* b, napi_value* out) {
  napi_value list = nullptr;
  TRY_NAPI(napi_create_array_with_length(env, b->files.size(), &list));
  for (size_t i = 0; i < b->files.size(); i++) {
    fs_batch_file& f = b->files[i];
    napi_value item = nullptr;
    bool made = b->op == FS_BATCH_READ ? MakeFile(env, f, &item)
                                       : MakeStat(env, f, &item);
    if (!made) return false;
    TRY_NAPI(napi_set_element(env, list, i, item));
  }
  *out = list;
  return true;
}

// [bytes, info, errors] for a scan of n messages, in a few values for
// the whole batch rather than a few per message, which is most of what
// a scan of a million would cost here: `bytes` holds every meta file
// read, back to back; `info` holds three numbers per message, where its
// meta bytes end in `bytes`, its env file's size and its ctime in ms;
// `errors` is null, or holds the meta error of message i at 2i and its
// env error at 2i + 1.
bool MakeScan(napi_env env, const fs_batch_t* b, napi_value* out) {
  size_t n = b->files.size();
  if (n > SIZE_MAX / (3 * sizeof(double))) return false;

  napi_value bytes = nullptr;
  void* copied = nullptr;
  TRY_NAPI(napi_create_buffer_copy(env, b->arena_len,
                                   b->arena_len ? b->arena : "", &copied,
                                   &bytes));

  napi_value info_buffer = nullptr;
  void* raw = nullptr;
  TRY_NAPI(napi_create_arraybuffer(env, 3 * n * sizeof(double), &raw,
                                   &info_buffer));
  double* numbers = static_cast<double*>(raw);
  for (size_t i = 0; i < n; i++) {
    const fs_batch_file& f = b->files[i];
    numbers[3 * i] = static_cast<double>(f.meta_end);
    numbers[3 * i + 1] = static_cast<double>(f.size);
    numbers[3 * i + 2] = f.ctime_ms;
  }
  napi_value info = nullptr;
  TRY_NAPI(napi_create_typedarray(env, napi_float64_array, 3 * n,
                                  info_buffer, 0, &info));

  napi_value errors = nullptr;
  bool any_errors = false;
  TRY_NAPI(napi_get_null(env, &errors));
  for (size_t i = 0; i < n; i++) {
    const fs_batch_file& f = b->files[i];
    if (f.result.error == 0 && f.env_result.error == 0) continue;
    if (!any_errors) {
      TRY_NAPI(napi_create_array(env, &errors));
      any_errors = true;
    }
    napi_value err = nullptr;
    if (f.result.error != 0) {
      if (!MakeFsError(env, f.result, &err)) return false;
      TRY_NAPI(napi_set_element(env, errors, 2 * i, err));
    }
    if (f.env_result.error != 0) {
      if (!MakeFsError(env, f.env_result, &err)) return false;
      TRY_NAPI(napi_set_element(env, errors, 2 * i + 1, err));
    }
  }

  napi_value triple = nullptr;
  TRY_NAPI(napi_create_array_with_length(env, 3, &triple));
  TRY_NAPI(napi_set_element(env, triple, 0, bytes));
  TRY_NAPI(napi_set_element(env, triple, 1, info));
  TRY_NAPI(napi_set_element(env, triple, 2, errors));
  *out = triple;
  return true;
}

// The exception a failed call left, now cleared; null when there is none.
napi_value TakeException(napi_env env) {
  bool pending = false;
  napi_value exception = nullptr;
  if (napi_is_exception_pending(env, &pending) != napi_ok || !pending ||
      napi_get_and_clear_last_exception(env, &exception) != napi_ok) {
    return nullptr;
  }
  return exception;
}

// A plain Error, or null when even that cannot be made.
napi_value NewError(napi_env env, const char* text) {
  napi_value message = nullptr;
  napi_value err = nullptr;
  if (napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &message) !=
          napi_ok ||
      napi_create_error(env, nullptr, message, &err) != napi_ok) {
    return nullptr;
  }
  return err;
}

constexpr const char* kNotBuilt =
    "slimta-diskstorage: the result could not be built";

// Settles the job's promise with what `make` builds, inside a callback
// scope, so that promise reactions and next ticks run now rather than
// whenever the loop next enters JavaScript.
//
// Any N-API call here may fail, so every status is checked. After
// worker.terminate(), and while Node closes the handles of an ending
// environment, the loop goes on running and jobs go on ending before
// OnTeardown is called; JavaScript cannot run then, and every call that
// would enter it fails with napi_pending_exception, settling too: the
// promise stays pending where nothing can see it any more. A result
// that could not be built whole is rejected instead, with the exception
// the failed call left (out of memory, say), else with an Error, so
// that its caller is not left waiting. No exception is left pending: it
// would fail the next call.
template <typename Make>
void Settle(Job* job, Make make) {
  Addon* addon = job->addon;

  // TODO: a promise left pending by teardown keeps its napi_deferred
  // allocated: N-API frees one only by settling it, which is JavaScript.
  if (addon->tearing_down) return;

  napi_env env = addon->env;
  napi_handle_scope scope = nullptr;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;

  napi_value resource = nullptr;
  napi_callback_scope callback_scope = nullptr;
  bool in_scope =
      napi_get_reference_value(env, job->resource, &resource) == napi_ok &&
      resource != nullptr &&
      napi_open_callback_scope(env, resource, job->context,
                               &callback_scope) == napi_ok;

  napi_value value = nullptr;
  bool resolve = false;
  if (!make(env, &value, &resolve)) {
    resolve = false;
    value = TakeException(env);
    if (value == nullptr) value = NewError(env, kNotBuilt);
  }
  if (value != nullptr && resolve) {
    napi_resolve_deferred(env, job->deferred, value);
  } else if (value != nullptr) {
    napi_reject_deferred(env, job->deferred, value);
  }

  // Settling fails only when JavaScript cannot run, and may leave an
  // exception that no one is left to hear.
  TakeException(env);

  if (in_scope) napi_close_callback_scope(env, callback_scope);
  napi_close_handle_scope(env, scope);
}

void OnPlanDone(fs_chain_t* chain) {
  std::unique_ptr<PlanJob> job(static_cast<PlanJob*>(chain->data));
  Settle(job.get(), [&](napi_env env, napi_value* value, bool* resolve) {
    *resolve = chain->result.error == 0;
    if (!*resolve) return MakeFsError(env, chain->result, value);
    return napi_get_undefined(env, value) == napi_ok;
  });
}

void OnBatchDone(fs_batch_t* batch) {
  std::unique_ptr<BatchJob> job(static_cast<BatchJob*>(batch->data));
  Settle(job.get(), [&](napi_env env, napi_value* value, bool* resolve) {
    *resolve = true;
    if (batch->op == FS_BATCH_SCAN_META) return MakeScan(env, batch, value);
    return MakeList(env, batch, value);
  });
}

// [after, generation]; see SyncDir.
bool MakeSyncDirResult(napi_env env, const dir_sync_wait* wait,
                       napi_value* out) {
  napi_value pair = nullptr;
  napi_value after = nullptr;
  napi_value generation = nullptr;
  TRY_NAPI(napi_create_array_with_length(env, 2, &pair));
  TRY_NAPI(napi_create_double(env, static_cast<double>(wait->after), &after));
  TRY_NAPI(napi_create_double(env, static_cast<double>(wait->generation),
                              &generation));
  TRY_NAPI(napi_set_element(env, pair, 0, after));
  TRY_NAPI(napi_set_element(env, pair, 1, generation));
  *out = pair;
  return true;
}

void OnSyncDirDone(dir_sync_wait* wait) {
  std::unique_ptr<SyncDirJob> job(static_cast<SyncDirJob*>(wait->data));
  Settle(job.get(), [&](napi_env env, napi_value* value, bool* resolve) {
    *resolve = wait->result.error == 0;
    if (!*resolve) return MakeFsError(env, wait->result, value);
    return MakeSyncDirResult(env, wait, value);
  });
}

#undef TRY_NAPI

void ThrowInvalid(Napi::Env env, const std::string& message) {
  Napi::TypeError err = Napi::TypeError::New(env, message);
  err.Set("code", "ERR_INVALID_ARG_VALUE");
  err.ThrowAsJavaScriptException();
}

// A path goes to the OS as a C string: an embedded NUL would silently
// cut it short, so it is refused as Node's fs refuses it.
bool ToPath(Napi::Value v, const char* key, std::string* out) {
  Napi::Env env = v.Env();
  if (!v.IsString()) {
    ThrowInvalid(env, std::string(key) + " must be a string");
    return false;
  }

  *out = v.As<Napi::String>().Utf8Value();
  if (out->find('\0') != std::string::npos) {
    ThrowInvalid(env, std::string(key) + " contains a NUL byte");
    return false;
  }
  return true;
}

// Reading arguments. Once worker.terminate() has been called, N-API
// calls that would run JavaScript begin to fail, even in the middle of a
// call into the addon, and without an exception JavaScript could see;
// node-addon-api's getters then return empty values, which must not be
// used. So values are read through these, which say when a call failed:
// the caller then gives up, and the exception, if any, goes to
// JavaScript.
bool GetNamed(Napi::Object obj, const char* key, Napi::Value* out) {
  napi_value v = nullptr;
  if (napi_get_named_property(obj.Env(), obj, key, &v) != napi_ok) {
    return false;
  }
  *out = Napi::Value(obj.Env(), v);
  return true;
}

bool GetElement(Napi::Array arr, uint32_t i, Napi::Value* out) {
  napi_value v = nullptr;
  if (napi_get_element(arr.Env(), arr, i, &v) != napi_ok) return false;
  *out = Napi::Value(arr.Env(), v);
  return true;
}

// JavaScript's truthiness of `v`.
bool ToBool(Napi::Value v, bool* out) {
  napi_value b = nullptr;
  return napi_coerce_to_bool(v.Env(), v, &b) == napi_ok &&
         napi_get_value_bool(v.Env(), b, out) == napi_ok;
}

bool GetPath(Napi::Object obj, const char* key, std::string* out) {
  Napi::Value v;
  return GetNamed(obj, key, &v) && ToPath(v, key, out);
}

// Converts the array `v` into `out`, one element at a time by `convert`.
// The length is read once and `out` sized to it: a getter on an element
// may grow or shrink the array while it is read, and what lies past the
// first length is not read.
template <typename T, typename Convert>
bool GetArray(Napi::Value v, const char* not_array, std::vector<T>* out,
              Convert convert) {
  if (!v.IsArray()) {
    ThrowInvalid(v.Env(), not_array);
    return false;
  }

  Napi::Array list = v.As<Napi::Array>();
  uint32_t n = 0;
  if (napi_get_array_length(v.Env(), list, &n) != napi_ok) return false;
  out->resize(n);
  for (uint32_t i = 0; i < n; i++) {
    Napi::Value item;
    if (!GetElement(list, i, &item) || !convert(item, &(*out)[i])) {
      return false;
    }
  }
  return true;
}

// The memory of one Buffer.
struct Bytes {
  char* data = nullptr;
  size_t len = 0;
};

// uv_buf_t::len is a ULONG on Windows, so a Buffer longer than that goes
// in as several uv_buf_t. Elsewhere it is a size_t: one each.
constexpr size_t kMaxBufLen =
    std::numeric_limits<decltype(uv_buf_t::len)>::max();

// A Buffer or another Uint8Array, whose length counts bytes, as the JS
// backend takes. napi_is_buffer would take any view, a Float64Array too.
bool IsBytes(napi_env env, napi_value v) {
  bool typed = false;
  napi_typedarray_type type = napi_int8_array;
  return napi_is_typedarray(env, v, &typed) == napi_ok && typed &&
         napi_get_typedarray_info(env, v, &type, nullptr, nullptr, nullptr,
                                  nullptr) == napi_ok &&
         type == napi_uint8_array;
}

// The Buffers of a write_tmp step, each referenced by the job until it
// ends, as uv_buf_t pointing into their memory.
bool GetBufs(Napi::Object obj, Job* job, fs_chain_step* step) {
  constexpr const char* kNotBufs = "step.bufs must be an array of Buffers";
  Napi::Env env = obj.Env();
  auto to_bytes = [&](Napi::Value b, Bytes* bytes) {
    void* data = nullptr;
    napi_ref ref = nullptr;
    if (!IsBytes(env, b) ||
        napi_get_buffer_info(env, b, &data, &bytes->len) != napi_ok ||
        napi_create_reference(env, b, 1, &ref) != napi_ok) {
      ThrowInvalid(env, kNotBufs);
      return false;
    }
    job->refs.push_back(ref);
    bytes->data = static_cast<char*>(data);
    return true;
  };

  Napi::Value v;
  std::vector<Bytes> list;
  if (!GetNamed(obj, "bufs", &v) || !GetArray(v, kNotBufs, &list, to_bytes)) {
    return false;
  }

  for (const Bytes& bytes : list) {
    size_t offset = 0;
    do {
      size_t part = std::min(bytes.len - offset, kMaxBufLen);
      uv_buf_t buf;
      buf.base = bytes.data + offset;
      buf.len = static_cast<decltype(buf.len)>(part);
      step->bufs.push_back(buf);
      offset += part;
    } while (offset < bytes.len);
  }
  return true;
}

bool GetStep(Napi::Value v, Job* job, fs_chain_step* step) {
  Napi::Env env = v.Env();
  if (!v.IsObject()) {
    ThrowInvalid(env, "a step must be an object");
    return false;
  }

  Napi::Object obj = v.As<Napi::Object>();
  Napi::Value op_value;
  if (!GetNamed(obj, "op", &op_value)) return false;
  std::string op =
      op_value.IsString() ? op_value.As<Napi::String>().Utf8Value() : "";

  if (op == "write_tmp") {
    step->op = FS_CHAIN_WRITE_TMP;
    return GetPath(obj, "path", &step->path) && GetBufs(obj, job, step);
  }
  if (op == "publish" || op == "replace") {
    step->op = op == "publish" ? FS_CHAIN_PUBLISH : FS_CHAIN_REPLACE;
    return GetPath(obj, "from", &step->path) &&
           GetPath(obj, "to", &step->dest);
  }
  if (op == "unlink") {
    step->op = FS_CHAIN_UNLINK;
    Napi::Value missing_ok;
    return GetNamed(obj, "missingOk", &missing_ok) &&
           ToBool(missing_ok, &step->missing_ok) &&
           GetPath(obj, "path", &step->path);
  }
  if (op == "sync_dir") {
    step->op = FS_CHAIN_SYNC_DIR;
    return GetPath(obj, "path", &step->path);
  }

  ThrowInvalid(env, "unknown step op '" + op + "'");
  return false;
}

// Creates the promise and the async context, and registers the job so
// teardown can find it. Returns null with an exception pending: these
// calls can fail without setting one, and returning nothing then would
// look like success to JavaScript, so an Error is thrown in its place.
napi_value Begin(Napi::Env env, Job* job, const char* name) {
  Addon* addon = job->addon;
  napi_value promise = nullptr;
  napi_value resource = nullptr;
  napi_value resource_name = nullptr;
  // The promise comes last: a deferred that is never settled stays
  // allocated, while the rest is freed with the job.
  if (napi_create_object(env, &resource) != napi_ok ||
      napi_create_reference(env, resource, 1, &job->resource) != napi_ok ||
      napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH,
                              &resource_name) != napi_ok ||
      napi_async_init(env, resource, resource_name, &job->context) !=
          napi_ok ||
      napi_create_promise(env, &job->deferred, &promise) != napi_ok) {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (!pending) {
      std::string message = std::string(name) + ": could not start";
      napi_throw_error(env, nullptr, message.c_str());
    }
    return nullptr;
  }

  addon->jobs.insert(job);
  return promise;
}

// The environment's loop, or null with an exception pending.
uv_loop_t* LoopOf(Napi::Env env) {
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
    napi_throw_error(env, nullptr, "slimta-diskstorage: no event loop");
    return nullptr;
  }
  return loop;
}

// Ties a new job to its environment and to the gate named by `v`, which
// the job holds until it ends. False with an exception pending when `v`
// is not a gate.
bool Attach(Napi::Value v, Job* job) {
  Napi::Env env = v.Env();
  job->addon = env.GetInstanceData<Addon>();

  bool is_gate = false;
  if (v.IsExternal()) {
    napi_check_object_type_tag(env, v, &kGateTag, &is_gate);
  }
  if (!is_gate) {
    ThrowInvalid(env, "gate must come from create_gate()");
    return false;
  }

  job->gate = static_cast<Gate*>(v.As<Napi::External<Gate>>().Data());
  fs_gate_hold(&job->gate->gate);
  return true;
}

void FreeGate(fs_gate_t* g) {
  delete static_cast<Gate*>(g->data);
}

// create_gate(maxInFlight): an opaque object naming a new gate that
// lets at most maxInFlight requests run at once.
Napi::Value CreateGate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  double cap = info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue()
                                  : 0;
  if (!(cap >= 1 && cap <= 9007199254740991.0) || cap != std::floor(cap)) {
    ThrowInvalid(env, "maxInFlight must be a positive integer");
    return Napi::Value();
  }

  uv_loop_t* loop = LoopOf(env);
  if (loop == nullptr) return Napi::Value();

  Gate* gate = new Gate();
  gate->gate.cap = static_cast<size_t>(cap);
  gate->gate.data = gate;
  gate->gate.free_cb = FreeGate;
  gate->syncs.loop = loop;
  gate->syncs.gate = &gate->gate;

  // The object holds the gate once, from fs_gate_t's start; collecting
  // it lets go of that hold.
  auto collected = [](napi_env, void* data, void*) {
    fs_gate_let_go(&static_cast<Gate*>(data)->gate);
  };
  napi_value external = nullptr;
  if (napi_create_external(env, gate, collected, nullptr, &external) !=
      napi_ok) {
    delete gate;
    return Napi::Value();
  }
  // Untagged, the object is no gate: it is dropped, and collecting it
  // frees the gate.
  if (napi_type_tag_object(env, external, &kGateTag) != napi_ok) {
    return Napi::Value();
  }
  return Napi::Value(env, external);
}

// Starts one call of the binding as a job of type J: `setup` converts the
// call's arguments into the job (false when one is bad, with an
// exception pending), and `start` hands the job over to the native core,
// whose callback ends it. Returns the call's promise.
template <typename J, typename Setup, typename Start>
Napi::Value StartJob(const Napi::CallbackInfo& info, const char* name,
                     Setup setup, Start start) {
  Napi::Env env = info.Env();

  // Owned here until it starts; on a bad argument it is freed with every
  // reference taken so far.
  auto job = std::make_unique<J>();
  if (!Attach(info[0], job.get()) || !setup(job.get())) return Napi::Value();

  uv_loop_t* loop = LoopOf(env);
  if (loop == nullptr) return Napi::Value();
  napi_value promise = Begin(env, job.get(), name);
  if (promise == nullptr) return Napi::Value();

  start(loop, job.release());
  return Napi::Value(env, promise);
}

// A batch job of `op`, whose paths or ids `setup` fills in.
template <typename Setup>
Napi::Value StartBatch(const Napi::CallbackInfo& info, fs_batch_op op,
                       const char* name, Setup setup) {
  auto prepare = [&](BatchJob* job) {
    job->batch.op = op;
    job->batch.data = job;
    job->batch.gate = &job->gate->gate;
    return setup(&job->batch);
  };
  auto start = [](uv_loop_t* loop, BatchJob* job) {
    fs_batch_start(loop, &job->batch, OnBatchDone);
  };
  return StartJob<BatchJob>(info, name, prepare, start);
}

// run_plan(gate, steps, groupCommit): Promise<void>
Napi::Value RunPlan(const Napi::CallbackInfo& info) {
  auto prepare = [&](PlanJob* job) {
    job->chain.data = job;
    job->chain.gate = &job->gate->gate;
    job->chain.group = &job->gate->syncs;
    auto to_step = [&](Napi::Value v, fs_chain_step* step) {
      return GetStep(v, job, step);
    };
    return GetArray(info[1], "steps must be an array", &job->chain.steps,
                    to_step) &&
           ToBool(info[2], &job->chain.group_commit);
  };
  auto start = [](uv_loop_t* loop, PlanJob* job) {
    fs_chain_start(loop, &job->chain, OnPlanDone);
  };
  return StartJob<PlanJob>(info, "slimta:run_plan", prepare, start);
}

// The paths of a read or lstat batch.
bool GetPaths(Napi::Value v, fs_batch_t* batch) {
  auto to_file = [](Napi::Value path, fs_batch_file* f) {
    return ToPath(path, "path", &f->path);
  };
  return GetArray(v, "paths must be an array", &batch->files, to_file);
}

// read_files(gate, paths): Promise<Array<Buffer | Error>>
Napi::Value ReadFiles(const Napi::CallbackInfo& info) {
  return StartBatch(info, FS_BATCH_READ, "slimta:read_files",
                    [&](fs_batch_t* b) { return GetPaths(info[1], b); });
}

// stat_files(gate, paths): Promise<Array<{ size, ctimeMs } | Error>>
Napi::Value StatFiles(const Napi::CallbackInfo& info) {
  return StartBatch(info, FS_BATCH_LSTAT, "slimta:stat_files",
                    [&](fs_batch_t* b) { return GetPaths(info[1], b); });
}

// A message id as scan_meta takes it: 32 lowercase hex digits, so that
// the names made from it stay inside their directories.
bool ToId(Napi::Value v, std::string* out) {
  napi_env env = v.Env();
  char id[34];
  size_t len = 0;
  bool ok = v.IsString() &&
            napi_get_value_string_utf8(env, v, id, sizeof id, &len) ==
                napi_ok &&
            len == 32;
  for (size_t i = 0; ok && i < len; i++) {
    ok = (id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f');
  }
  if (!ok) {
    ThrowInvalid(v.Env(), "an id must be 32 lowercase hex digits");
    return false;
  }
  out->assign(id, len);
  return true;
}

// scan_meta(gate, metaDir, envDir, ids): Promise<[bytes, info, errors]>,
// the meta file of each id read and its env file lstat'ed, as one
// batch job; see MakeScan for the shape.
Napi::Value ScanMeta(const Napi::CallbackInfo& info) {
  auto to_id = [](Napi::Value v, fs_batch_file* f) {
    return ToId(v, &f->path);
  };
  auto setup = [&](fs_batch_t* b) {
    return ToPath(info[1], "metaDir", &b->dir) &&
           ToPath(info[2], "envDir", &b->env_dir) &&
           GetArray(info[3], "ids must be an array", &b->files, to_id);
  };
  return StartBatch(info, FS_BATCH_SCAN_META, "slimta:scan_meta", setup);
}

// sync_dir(gate, path): Promise<[after, generation]>, the shared
// directory sync of run_plan on its own, with the generation numbers
// that show which sync covered the call. Not used by the package: only
// the group-commit tests call it.
Napi::Value SyncDir(const Napi::CallbackInfo& info) {
  std::string path;
  auto prepare = [&](SyncDirJob* job) {
    job->wait.data = job;
    return ToPath(info[1], "path", &path);
  };
  auto start = [&](uv_loop_t*, SyncDirJob* job) {
    dir_sync_request(&job->gate->syncs, path, &job->wait, OnSyncDirDone);
  };
  return StartJob<SyncDirJob>(info, "slimta:sync_dir", prepare, start);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  Addon* addon = new Addon();
  addon->env = env;
  env.SetInstanceData<Addon>(addon);

  // Without the hook, an environment could end while its jobs still run.
  if (napi_add_async_cleanup_hook(env, OnTeardown, addon, &addon->hook) !=
      napi_ok) {
    Napi::Error::New(env, "slimta-diskstorage: no cleanup hook")
        .ThrowAsJavaScriptException();
    return exports;
  }

  exports.Set("create_gate",
              Napi::Function::New(env, CreateGate, "create_gate"));
  exports.Set("run_plan", Napi::Function::New(env, RunPlan, "run_plan"));
  exports.Set("read_files",
              Napi::Function::New(env, ReadFiles, "read_files"));
  exports.Set("stat_files",
              Napi::Function::New(env, StatFiles, "stat_files"));
  exports.Set("scan_meta",
              Napi::Function::New(env, ScanMeta, "scan_meta"));
  exports.Set("sync_dir", Napi::Function::New(env, SyncDir, "sync_dir"));
  return exports;
}

}  // namespace

NODE_API_MODULE(slimta_diskstorage, Init)
