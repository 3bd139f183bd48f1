'use strict';
// Records a program's file system calls with strace and parses them.
//
// strace runs with -f (every thread: libuv's pool does the file work),
// -xx (every string in hex, so paths and written bytes come back exact)
// and -s large enough that no written buffer is cut short. A call that
// another thread interrupts shows as "<unfinished ...>" and later
// "<... name resumed>"; the two halves are joined, and the call keeps
// both positions: where it started (entry) and where it returned (exit).

const { spawnSync } = require('node:child_process');
const fs = require('node:fs');

const TRACED = [
  'open',
  'openat',
  'write',
  'pwrite64',
  'writev',
  'pwritev',
  'pwritev2',
  'ftruncate',
  'fdatasync',
  'fsync',
  'close',
  'rename',
  'renameat',
  'renameat2',
  'link',
  'linkat',
  'unlink',
  'unlinkat',
  'mkdir',
  'mkdirat',
];

// Bigger than any buffer the workloads write in one call.
const STRING_LIMIT = 1 << 20;

/** Whether strace can be run here; the error when it cannot. */
function straceMissing() {
  const r = spawnSync('strace', ['-V'], { encoding: 'utf8' });
  if (r.error) return r.error;
  if (r.status !== 0) return new Error(`strace -V: ${r.stderr.trim()}`);
  return null;
}

/**
 * Runs `argv` under strace, writing the trace to `traceFile`; returns
 * the program's stdout. Throws when the program or strace fails.
 */
function runTraced(argv, traceFile, options = {}) {
  const args = [
    '-f',
    '-qq',
    '-e',
    `trace=${TRACED.join(',')}`,
    '-e',
    'signal=none',
    '-xx',
    '-s',
    String(STRING_LIMIT),
    '-o',
    traceFile,
    '--',
    ...argv,
  ];
  const r = spawnSync('strace', args, {
    encoding: 'utf8',
    maxBuffer: 64 << 20,
    timeout: options.timeout ?? 60000,
    env: options.env ?? process.env,
  });
  if (r.error) throw r.error;
  if (r.status !== 0) {
    throw new Error(
      `traced program exited with ${r.status ?? r.signal}: ${r.stderr}`,
    );
  }
  return r.stdout;
}

// --- argument text -------------------------------------------------------

/**
 * Parses strace's rendering of one argument list. Values come back as
 * Buffers (strings), numbers, symbols (as strings: flag sets such as
 * "O_WRONLY|O_CREAT", AT_FDCWD), arrays, and objects for structs.
 */
function parseArgs(text) {
  let i = 0;

  const fail = (what) => {
    throw new Error(`strace arguments: ${what} at ${i} in: ${text}`);
  };
  const skipSpace = () => {
    while (text[i] === ' ') i++;
  };

  function value() {
    skipSpace();
    const c = text[i];
    if (c === '"') return string();
    if (c === '[') return list(']', false);
    if (c === '{') return list('}', true);
    return atom();
  }

  function string() {
    i++;
    const start = i;
    while (text[i] !== '"') {
      if (i >= text.length) fail('unterminated string');
      i++;
    }
    const hex = text.slice(start, i);
    i++;
    // A string strace cut short ends in "..." after the quote.
    if (text.startsWith('...', i)) fail('string cut short (raise -s)');
    if (!/^(\\x[0-9a-f]{2})*$/.test(hex)) fail('string not in -xx form');
    return Buffer.from(hex.replace(/\\x/g, ''), 'hex');
  }

  function list(close, struct) {
    i++;
    const out = struct ? {} : [];
    skipSpace();
    if (text[i] === close) {
      i++;
      return out;
    }
    for (;;) {
      skipSpace();
      if (text.startsWith('...', i)) fail('list cut short');
      if (struct) {
        const m = /^([a-z_0-9]+)=/.exec(text.slice(i));
        if (!m) fail('struct field expected');
        i += m[0].length;
        out[m[1]] = value();
      } else {
        out.push(value());
      }
      skipSpace();
      if (text[i] === ',') {
        i++;
        continue;
      }
      if (text[i] === close) {
        i++;
        return out;
      }
      fail(`',' or '${close}' expected`);
    }
  }

  function atom() {
    const start = i;
    let depth = 0;
    while (i < text.length) {
      const c = text[i];
      if (c === '(' || c === '[' || c === '{') depth++;
      else if (c === ')' || c === ']' || c === '}') {
        if (depth === 0) break;
        depth--;
      } else if (c === ',' && depth === 0) break;
      i++;
    }
    const word = text.slice(start, i).trim();
    if (word === '') fail('value expected');
    return /^-?\d+$/.test(word) ? Number(word) : word;
  }

  const args = [];
  skipSpace();
  if (i === text.length) return args;
  for (;;) {
    args.push(value());
    skipSpace();
    if (i === text.length) return args;
    if (text[i] !== ',') fail("',' expected");
    i++;
  }
}

// --- lines ---------------------------------------------------------------

const LINE = /^(\d+) +(.*)$/;
const CALL = /^([a-z_0-9]+)\((.*)$/;
const RESUMED = /^<\.\.\. ([a-z_0-9]+) resumed>(.*)$/;
const RESULT =
  /^(.*)\) += (-?\d+|0x[0-9a-f]+|\?)(?: ([A-Z0-9_]+) \(.*\))?(?: <[\d.]+>)?$/;

/**
 * Parses a trace into calls in the order they returned:
 * `{ pid, name, args, ret, errno, entry, exit }`, where entry and exit are
 * line numbers. Calls that never returned (the process ended inside them)
 * are left out.
 */
function parseTrace(text) {
  const pending = new Map();
  const calls = [];
  const lines = text.split('\n');

  for (let n = 0; n < lines.length; n++) {
    const line = lines[n];
    if (line === '') continue;
    const m = LINE.exec(line);
    if (!m) throw new Error(`trace line ${n + 1}: no pid: ${line}`);
    const pid = Number(m[1]);
    let rest = m[2];
    let name;
    let entry = n;

    const resumed = RESUMED.exec(rest);
    if (resumed) {
      const start = pending.get(pid);
      if (!start || start.name !== resumed[1]) {
        throw new Error(`trace line ${n + 1}: resumes nothing: ${line}`);
      }
      pending.delete(pid);
      name = start.name;
      entry = start.entry;
      rest = start.text + resumed[2];
    } else {
      const call = CALL.exec(rest);
      // "+++ exited" and "--- SIG" lines are suppressed by -qq and
      // -e signal=none; anything else unknown is an error.
      if (!call) throw new Error(`trace line ${n + 1}: ${line}`);
      name = call[1];
      rest = call[2];
      if (rest.endsWith(' <unfinished ...>')) {
        pending.set(pid, {
          name,
          entry: n,
          text: rest.slice(0, -' <unfinished ...>'.length),
        });
        continue;
      }
    }

    const r = RESULT.exec(rest);
    if (!r) throw new Error(`trace line ${n + 1}: no result: ${line}`);
    calls.push({
      pid,
      name,
      args: parseArgs(r[1]),
      ret: r[2] === '?' ? null : Number(r[2]),
      errno: r[3] ?? null,
      entry,
      exit: n,
    });
  }
  return calls;
}

/** Reads and parses a trace file. */
function readTrace(file) {
  return parseTrace(fs.readFileSync(file, 'latin1'));
}

module.exports = {
  TRACED,
  parseArgs,
  parseTrace,
  readTrace,
  runTraced,
  straceMissing,
};
