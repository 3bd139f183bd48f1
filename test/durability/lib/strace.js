'use strict';
// Runs node scripts under strace and turns the trace into events: which
// file each call touched (fds resolved through the fd table as it was at
// that moment), when it started and when it ended.
//
// Ordering uses the line numbers of the trace. With -f a call that blocks
// is split in an "<unfinished ...>" line and a "<... resumed>" line; a
// call A is before a call B when A's last line precedes B's first line.

const fs = require('node:fs');
const { spawn, spawnSync } = require('node:child_process');

/** The calls the durability protocol is made of, under their Linux names. */
const FILE_SYSCALLS = [
  'openat', 'open', 'write', 'pwrite64', 'writev', 'pwritev', 'pwritev2',
  'fdatasync', 'fsync', 'close', 'rename', 'renameat', 'renameat2',
  'link', 'linkat', 'unlink', 'unlinkat', 'mkdir', 'mkdirat',
];

/** Opening a path under here fails, and marks a point in the trace. */
const MARKER_DIR = '/nonexistent/slimta-marker/';

let available = null;

/** Whether a working strace is on PATH. */
function straceAvailable() {
  if (available === null) {
    const r = spawnSync('strace', ['-V'], { encoding: 'utf8' });
    available = r.status === 0 && /strace/.test(r.stdout);
  }
  return available;
}

/** Puts a marker for `name` into the trace of this process. */
function mark(name) {
  try {
    fs.closeSync(fs.openSync(MARKER_DIR + name, 'r'));
  } catch {
    // The open is meant to fail: the call itself is the marker.
  }
}

// --- parsing -------------------------------------------------------------

// strace leaves out the pid when it traces one thread only.
const LINE = /^(?:(\d+)\s+)?(\d\d:\d\d:\d\d\.\d+)\s+(.*)$/;

/** Splits an argument list at top-level commas. */
function splitArgs(text) {
  const args = [];
  let depth = 0;
  let quoted = false;
  let cur = '';
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (quoted) {
      cur += ch;
      if (ch === '\\') cur += text[++i] ?? '';
      else if (ch === '"') quoted = false;
      continue;
    }
    if (ch === '"') quoted = true;
    else if ('[{('.includes(ch)) depth++;
    else if (']})'.includes(ch)) depth--;
    else if (ch === ',' && depth === 0) {
      args.push(cur.trim());
      cur = '';
      continue;
    }
    cur += ch;
  }
  if (cur.trim() !== '') args.push(cur.trim());
  return args;
}

/** The string a quoted strace argument stands for, or null. */
function unquote(arg) {
  if (arg === undefined) return null;
  const m = /^"((?:[^"\\]|\\.)*)"(\.\.\.)?$/s.exec(arg);
  if (!m) return null;
  return m[1].replace(
    /\\(x[0-9a-fA-F]{2}|[0-7]{1,3}|.)/g,
    (_, e) => {
      if (e[0] === 'x') return String.fromCharCode(parseInt(e.slice(1), 16));
      if (/^[0-7]+$/.test(e)) return String.fromCharCode(parseInt(e, 8));
      return { n: '\n', t: '\t', r: '\r', v: '\v', f: '\f' }[e] ?? e;
    },
  );
}

/** Splits "args) = result" at the last ") = ", strace pads with spaces. */
function splitResult(text) {
  let at = -1;
  let len = 0;
  for (const m of text.matchAll(/\)\s+= /g)) {
    at = m.index;
    len = m[0].length;
  }
  if (at === -1) return null;
  return [text.slice(0, at), text.slice(at + len)];
}

function parseResult(text) {
  const m = /^(-?\d+|0x[0-9a-f]+|\?)(?:\s+(E[A-Z0-9]+)\b)?/.exec(text.trim());
  return {
    ret: m && m[1] !== '?' ? Number(m[1]) : null,
    errno: m && m[2] ? m[2] : null,
    injected: /\(INJECTED\)/.test(text),
  };
}

/**
 * Turns strace output into raw calls: {pid, name, args, ret, errno,
 * injected, start, end}, where start and end are line numbers.
 */
function parseLines(text) {
  const calls = [];
  const pending = new Map(); // pid -> unfinished call
  const lines = text.split('\n');
  for (let n = 0; n < lines.length; n++) {
    const m = LINE.exec(lines[n]);
    if (!m) continue;
    const pid = Number(m[1] ?? 0);
    const body = m[3];
    if (body.startsWith('+++') || body.startsWith('---')) continue;

    const resumed = /^<\.\.\. (\w+) resumed>(.*)$/.exec(body);
    if (resumed) {
      const call = pending.get(pid);
      if (!call || call.name !== resumed[1]) continue;
      pending.delete(pid);
      const [more, result] = splitResult(resumed[2]) ?? [resumed[2], '?'];
      call.argText += more.replace(/^,?\s*/, call.argText ? ', ' : '');
      Object.assign(call, parseResult(result));
      call.end = n;
      call.args = splitArgs(call.argText);
      calls.push(call);
      continue;
    }

    const unfinished = /^(\w+)\((.*?)\s*<unfinished \.\.\.>$/.exec(body);
    if (unfinished) {
      pending.set(pid, {
        pid,
        time: m[2],
        name: unfinished[1],
        argText: unfinished[2].replace(/,\s*$/, ''),
        start: n,
      });
      continue;
    }

    const full = /^(\w+)\((.*)$/.exec(body);
    if (!full) continue;
    const split = splitResult(full[2]);
    if (!split) continue;
    const [argText, result] = split;
    calls.push({
      pid,
      time: m[2],
      name: full[1],
      argText,
      args: splitArgs(argText),
      ...parseResult(result),
      start: n,
      end: n,
    });
  }
  return calls.sort((a, b) => a.start - b.start);
}

const FD_CALLS = new Set([
  'write', 'pwrite64', 'writev', 'pwritev', 'pwritev2', 'fdatasync',
  'fsync', 'close', 'read', 'pread64',
]);

/** The event kind of a call on an fd. */
function fdKind(name) {
  if (name === 'close') return 'close';
  if (name === 'read' || name === 'pread64') return 'read';
  return /sync/.test(name) ? 'sync' : 'write';
}

/**
 * Events with paths resolved. Every event has `kind`:
 *   open    {path, fd, flags, dir, created}
 *   write   {fd, path}       data written to fd (any of the write calls)
 *   read    {fd, path}       read or pread64, when traced (not by default)
 *   sync    {fd, path, data} fsync or fdatasync (data: fdatasync)
 *   close   {fd, path}
 *   rename / link {from, to}
 *   unlink / mkdir {path}
 *   marker  {label}          an open under MARKER_DIR
 * plus ok (the call succeeded), name, errno, injected, start, end, pid.
 *
 * A node process's threads share one fd table, so one table serves the
 * whole trace: a trace of one process with its threads. The table is
 * updated when an open or close ends, and an fd is looked up when the
 * call using it starts.
 */
function parseTrace(text) {
  const calls = parseLines(text);
  const table = new Map();
  // Replay the table changes in the order they ended, and the lookups in
  // the order they started.
  const points = [];
  for (const c of calls) {
    points.push({ at: c.start, phase: 1, c });
    points.push({ at: c.end, phase: 0, c });
  }
  // A line is one call's start or its end, or both for a one-line call,
  // which starts first.
  points.sort((a, b) => a.at - b.at || b.phase - a.phase);

  const events = new Map();
  for (const { phase, c } of points) {
    if (phase === 1) {
      events.set(c, toEvent(c, table));
      continue;
    }
    const ev = events.get(c);
    if (ev.kind === 'open' && ev.ok) table.set(c.ret, ev.path);
    if (ev.kind === 'close' && !c.injected) table.delete(ev.fd);
  }
  return calls.map((c) => events.get(c));
}

function atPath(dirArg, pathArg, table) {
  const p = unquote(pathArg);
  if (p === null || p.startsWith('/') || dirArg === undefined) return p;
  if (dirArg === 'AT_FDCWD') return p;
  const dir = table.get(Number(dirArg));
  return dir ? `${dir}/${p}` : p;
}

function toEvent(c, table) {
  const a = c.args;
  const base = {
    pid: c.pid,
    time: c.time,
    name: c.name,
    ok: c.ret !== null && c.ret >= 0 && !c.errno,
    ret: c.ret,
    errno: c.errno,
    injected: c.injected,
    start: c.start,
    end: c.end,
  };
  if (c.name === 'open' || c.name === 'openat') {
    const p = c.name === 'open' ? unquote(a[0]) : atPath(a[0], a[1], table);
    const flags = (c.name === 'open' ? a[1] : a[2]) ?? '';
    if (p !== null && p.startsWith(MARKER_DIR)) {
      return { ...base, kind: 'marker', label: p.slice(MARKER_DIR.length) };
    }
    return {
      ...base,
      kind: 'open',
      path: p,
      fd: base.ok ? c.ret : null,
      flags,
      dir: flags.includes('O_DIRECTORY'),
      created: flags.includes('O_CREAT'),
    };
  }
  if (FD_CALLS.has(c.name)) {
    const fd = Number(a[0]);
    const kind = fdKind(c.name);
    return {
      ...base,
      kind,
      fd,
      path: table.get(fd) ?? null,
      data: c.name === 'fdatasync',
    };
  }
  if (c.name === 'rename' || c.name === 'link') {
    return { ...base, kind: c.name, from: unquote(a[0]), to: unquote(a[1]) };
  }
  if (c.name === 'renameat' || c.name === 'renameat2' || c.name === 'linkat') {
    return {
      ...base,
      kind: c.name.startsWith('link') ? 'link' : 'rename',
      from: atPath(a[0], a[1], table),
      to: atPath(a[2], a[3], table),
    };
  }
  if (c.name === 'unlink' || c.name === 'mkdir') {
    return { ...base, kind: c.name, path: unquote(a[0]) };
  }
  if (c.name === 'unlinkat' || c.name === 'mkdirat') {
    return {
      ...base,
      kind: c.name.slice(0, -2),
      path: atPath(a[0], a[1], table),
    };
  }
  return { ...base, kind: 'other' };
}

// --- running -------------------------------------------------------------

function traceArgs(syscalls) {
  return ['-tt', '-e', `trace=${syscalls.join(',')}`, '-e', 'signal=none'];
}

/**
 * Runs `node script ...args` under `strace -f` and resolves with the exit
 * status, output and parsed events.
 */
function runTraced(script, args, options = {}) {
  const { traceFile, env, syscalls = FILE_SYSCALLS } = options;
  return new Promise((resolve, reject) => {
    const child = spawn(
      'strace',
      ['-f', ...traceArgs(syscalls), '-o', traceFile,
        process.execPath, script, ...args],
      { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (status) => {
      const text = fs.readFileSync(traceFile, 'utf8');
      resolve({ status, stdout, stderr, text, events: parseTrace(text) });
    });
  });
}

/** `{syscall, error | retval, when}` as strace's inject expression. */
function injectSpec({ syscall, error, retval, when }) {
  const what = error !== undefined ? `error=${error}` : `retval=${retval}`;
  return `${syscall}:${what}${when ? `:when=${when}` : ''}`;
}

/**
 * Attaches strace to threads of this process (never the calling thread,
 * which would stop itself) and resolves once every one is traced. With
 * `inject` ({syscall, error or retval, when}) the when-th call of that
 * syscall in each thread does not run and returns the error (or retval);
 * strace counts per thread. detach() ends tracing and resolves with the
 * parsed trace.
 */
function attachToThreads(tids, options = {}) {
  const { traceFile, syscalls = FILE_SYSCALLS, inject } = options;
  const args = [...traceArgs(syscalls), '-o', traceFile];
  if (inject) args.push('-e', `inject=${injectSpec(inject)}`);
  for (const tid of tids) args.push('-p', String(tid));

  const child = spawn('strace', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  const exited = new Promise((resolve) => child.on('close', resolve));
  const ready = new Promise((resolve, reject) => {
    const seen = new Set();
    child.stderr.on('data', (d) => {
      stderr += d;
      for (const m of stderr.matchAll(/Process (\d+) attached/g)) {
        seen.add(Number(m[1]));
      }
      if (tids.every((t) => seen.has(t))) resolve();
    });
    child.on('error', reject);
    exited.then((status) => {
      const why = `strace exited (${status}) before attaching: ${stderr}`;
      reject(new Error(why));
    });
  });
  return {
    ready,
    async detach() {
      child.kill('SIGINT');
      await exited;
      const text = fs.readFileSync(traceFile, 'utf8');
      return { text, events: parseTrace(text), stderr };
    },
  };
}

/**
 * The id of the libuv pool thread that runs this process's file calls,
 * found by tracing an open that only the pool makes. Attaching to that
 * thread alone keeps other threads (V8's, which may read /proc) out of
 * strace's per-thread counts. Use with UV_THREADPOOL_SIZE=1.
 */
async function findPoolThread(traceFile) {
  // libuv starts its pool on the first request.
  await fs.promises.stat('/');
  const tracer = attachToThreads(otherThreads(), {
    traceFile,
    syscalls: ['openat', 'open'],
  });
  await tracer.ready;
  await fs.promises.open(`${MARKER_DIR}pool-probe`).catch(() => undefined);
  const { events } = await tracer.detach();
  const probe = events.find((e) => e.label === 'pool-probe');
  if (!probe) throw new Error('no pool thread made the probe call');
  return probe.pid;
}

/** The ids of this process's threads other than the main one. */
function otherThreads() {
  return fs
    .readdirSync('/proc/self/task')
    .map(Number)
    .filter((tid) => tid !== process.pid);
}

module.exports = {
  FILE_SYSCALLS,
  MARKER_DIR,
  attachToThreads,
  findPoolThread,
  injectSpec,
  mark,
  otherThreads,
  parseTrace,
  runTraced,
  straceAvailable,
  splitArgs,
  unquote,
};
