'use strict';
// Fails each system call of each operation's chain, one at a time, with
// strace's fault injection, on both backends; then checks from another
// process that the error is reported as documented, that nothing of the
// failed operation stays, that every message stored before is intact,
// and that the next operations succeed: in the same store and process
// right after the fault (a write, a get and an update), and from a fresh
// process. The store's first call fails too, at the creation of its
// directories and the syncs of their parents, and must succeed when
// called again.
//
// How a case runs: a queue holding three messages, written without
// faults, is copied for the case. A child process (fixtures/fault-child.js,
// one per backend for all cases) opens it, takes the lock, attaches strace
// to its libuv pool thread with `inject=<syscall>:error=<errno>:when=<n>`
// and runs the one operation. A first run without injection finds n for
// each step: the how-many-th call of that name the step is in the pool
// thread, which is what strace counts. This mocha process then checks.
//
// What a failed operation leaves, by design:
//   write: nothing; names it linked are unlinked again.
//   setTimestamp: the old meta when the failing call comes before or is
//     the rename; the new meta when it comes after (the directory open,
//     fsync or close), since a rename is not undone.
//   remove: the message intact when unlinking the meta fails; no meta but
//     the env when a later call fails up to the env's unlink, which waits
//     for the meta's removal to be durable; nothing after that. A retried
//     remove finishes the job, and succeeds when there is nothing left.

const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const {
  BACKENDS, listDir, makeEnvelope, openStore, rejects,
} = require('../helpers');
const { parseTrace, straceAvailable } = require('./lib/strace');
const { record } = require('./lib/summary');

const CHILD = path.join(__dirname, 'fixtures', 'fault-child.js');
const { decodeMeta } = require('../../dist/format');

/** An update's calls: it reads the old meta, then replaces it. */
const UPDATE_CHAIN = [
  ['openat', 'meta (read)'], ['read', 'meta (read)'],
  ['openat', 'tmp meta'], ['pwrite64', 'tmp meta'],
  ['fdatasync', 'tmp meta'], ['close', 'tmp meta'],
  ['rename', 'meta'],
  ['openat', 'meta dir'], ['fsync', 'meta dir'], ['close', 'meta dir'],
];

/** Each operation's calls in the pool thread, in order: [syscall, file]. */
const CHAINS = {
  write: [
    ['openat', 'tmp env'], ['pwritev', 'tmp env'], ['fdatasync', 'tmp env'],
    ['close', 'tmp env'],
    ['openat', 'tmp meta'], ['pwrite64', 'tmp meta'],
    ['fdatasync', 'tmp meta'], ['close', 'tmp meta'],
    ['link', 'env'], ['unlink', 'tmp env'],
    ['openat', 'env dir'], ['fsync', 'env dir'], ['close', 'env dir'],
    ['link', 'meta'], ['unlink', 'tmp meta'],
    ['openat', 'meta dir'], ['fsync', 'meta dir'], ['close', 'meta dir'],
  ],
  setTimestamp: UPDATE_CHAIN,
  incrementAttempts: UPDATE_CHAIN,
  setRecipientsDelivered: UPDATE_CHAIN,
  remove: [
    ['unlink', 'meta'],
    ['openat', 'meta dir'], ['fsync', 'meta dir'], ['close', 'meta dir'],
    ['unlink', 'env'],
    ['openat', 'env dir'], ['fsync', 'env dir'], ['close', 'env dir'],
  ],
};

/**
 * Each update, what it does to seed message 0 (timestamp 1000, no
 * attempts, nothing delivered), and whether a meta shows it done.
 */
const UPDATES = {
  setTimestamp: {
    run: (store, id) => store.setTimestamp(id, 4000),
    done: (meta) => meta.timestamp === 4000,
  },
  incrementAttempts: {
    run: (store, id) => store.incrementAttempts(id),
    done: (meta) => meta.attempts === 1,
  },
  setRecipientsDelivered: {
    run: (store, id) => store.setRecipientsDelivered(id, [0]),
    done: (meta) => meta.delivered.length === 1 && meta.delivered[0] === 0,
  },
};

/** The chains every errno runs on; the others, and every read, get EIO. */
const MAIN_CHAINS = new Set(['write', 'setTimestamp', 'remove']);

const ERRNOS = ['EIO', 'ENOSPC', 'EDQUOT', 'EMFILE'];

/**
 * The store's first call: its directories are made (mkdir) and each new
 * one's parent synced (fsync). Each case fails the first call of that
 * name in the pool thread; the call must reject with that error, and
 * the next call succeed.
 */
const INIT_CASES = [
  { syscall: 'mkdir', error: 'EIO' },
  { syscall: 'mkdir', error: 'ENOSPC' },
  { syscall: 'fsync', error: 'EIO' },
];

/**
 * What a write leaves when unlink fails from a step on, the undo's
 * unlinks included. Once a name is linked and its tmp name cannot be
 * dropped, the write rejects but leaves its envelope, or the whole
 * message, which load() then yields: a message the caller was told had
 * failed may still be delivered. Every other persistent fault leaves
 * nothing.
 */
const PERSISTENT_LEFT = {
  'write unlink tmp env': 'an envelope without meta',
  'write unlink tmp meta': 'the whole message',
};

/** The `syscall` of the error each traced call is reported under. */
const REPORTED_AS = {
  openat: 'open', pwritev: 'write', pwrite64: 'write', fdatasync: 'fdatasync',
  fsync: 'fsync', close: 'close', link: 'link', rename: 'rename',
  unlink: 'unlink', read: 'read', mkdir: 'mkdir',
};

/** As in src/errors.ts: the OS codes after which a retry may succeed. */
const RETRYABLE = new Set([
  'ENOSPC', 'EDQUOT', 'EMFILE', 'ENFILE', 'EIO', 'EAGAIN', 'EBUSY', 'ENOMEM',
  'EINTR', 'ETIMEDOUT', 'ECANCELED', 'ESTALE',
]);

/**
 * Every case: one call of one chain fails with one errno; a data write
 * that makes no progress (returns 0) must fail with EIO. Persistent
 * cases fail that call and every later one of the same name (EIO), so
 * the undo of a failed write may fail too. The main chains get every
 * errno, a zero-length write and a persistent fault at each call but
 * the read of the old meta, which gets EIO as every call of the other
 * chains does.
 */
function casesFor() {
  const cases = [];
  for (const [op, chain] of Object.entries(CHAINS)) {
    chain.forEach(([syscall, file], step) => {
      const base = { op, step, syscall, file };
      if (!MAIN_CHAINS.has(op) || syscall === 'read' ||
          file === 'meta (read)') {
        cases.push({ ...base, error: 'EIO', expect: 'EIO' });
        return;
      }
      const errnos = [...ERRNOS];
      if (syscall === 'link' || syscall === 'rename') errnos.push('EXDEV');
      for (const error of errnos) {
        cases.push({ ...base, error, expect: error });
      }
      if (syscall.startsWith('pwrite')) {
        cases.push({ ...base, retval: 0, expect: 'EIO' });
      }
      cases.push({ ...base, error: 'EIO', expect: 'EIO', persistent: true });
    });
  }
  return cases;
}

// --- the queue before each case -------------------------------------------

/** The body fixtures/fault-child.js writes. */
const FAULT_RAW = Buffer.from('Subject: fault case\r\n\r\nbody\r\n');

const SEED_BODIES = [
  'Subject: one\r\n\r\nfirst\r\n',
  'Subject: two\r\nX-Lone-CR: a\rb\r\n\r\nsecond\r\n.\r\n',
  'Subject: three\r\n\r\n' + 'x'.repeat(70000) + '\r\n',
];

function dirsOf(root) {
  return {
    envDir: path.join(root, 'env'),
    metaDir: path.join(root, 'meta'),
    tmpDir: path.join(root, 'tmp'),
  };
}

function filesOf(root, id) {
  const d = dirsOf(root);
  return {
    env: path.join(d.envDir, `${id}.env`),
    meta: path.join(d.metaDir, `${id}.meta`),
  };
}

function readOrNull(file) {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    if (err.code === 'ENOENT') return null;
    throw err;
  }
}

/** Writes the three seed messages and keeps their bytes. */
async function seed(root, io) {
  const store = openStore(root, io);
  const messages = [];
  for (const [i, body] of SEED_BODIES.entries()) {
    const raw = Buffer.from(body, 'latin1');
    const rcpts = [`r${i}a@example.com`, `r${i}b@example.com`];
    const envelope = makeEnvelope({ recipients: rcpts }, raw);
    const id = await store.write(envelope, 1000 + i);
    const f = filesOf(root, id);
    messages.push({
      id, raw, rcpts,
      env: fs.readFileSync(f.env),
      meta: fs.readFileSync(f.meta),
    });
  }
  await store.close();
  return messages;
}

function copyQueue(from, to) {
  fs.cpSync(from, to, {
    recursive: true,
    filter: (src) => path.basename(src) !== '.lock',
  });
}

// --- the child --------------------------------------------------------------

function runChild(jobFile) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CHILD, jobFile], {
      env: { ...process.env, UV_THREADPOOL_SIZE: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('close', (status) => {
      if (status === 0) resolve(JSON.parse(out));
      else reject(new Error(`fault child exited ${status}: ${err}`));
    });
  });
}

/** Which queue file an event is about, in CHAINS' terms, or null. */
function fileOf(e, dirs) {
  const p = e.kind === 'link' || e.kind === 'rename' ? e.to : e.path;
  if (typeof p !== 'string') return null;
  if (p === dirs.envDir) return 'env dir';
  if (p === dirs.metaDir) return 'meta dir';
  if (path.dirname(p) === dirs.tmpDir) {
    const m = /\.(env|meta)\.\d+\.[0-9a-f]{8}\.tmp$/.exec(p);
    return m ? `tmp ${m[1]}` : null;
  }
  const isMeta = path.dirname(p) === dirs.metaDir && p.endsWith('.meta');
  // A final meta is opened and read by an update before it changes it;
  // the close of that read is not failed (its error is of no use).
  if (e.kind === 'open' || e.kind === 'read') {
    return isMeta && !e.created ? 'meta (read)' : null;
  }
  // Otherwise finals are only linked, renamed onto or unlinked.
  if (!['link', 'rename', 'unlink'].includes(e.kind)) return null;
  if (path.dirname(p) === dirs.envDir && p.endsWith('.env')) return 'env';
  if (isMeta) return 'meta';
  return null;
}

/**
 * The chain calls of a trace of the pool thread, each with `when`: its
 * number among the calls of that name in its thread, as strace counts.
 */
function chainOf(events, dirs) {
  const seen = new Map();
  const chain = [];
  for (const e of events) {
    const key = `${e.pid} ${e.name}`;
    seen.set(key, (seen.get(key) ?? 0) + 1);
    const file = fileOf(e, dirs);
    if (file === null || e.kind === 'marker' || e.kind === 'mkdir') continue;
    chain.push({ syscall: e.name, file, when: seen.get(key), event: e });
  }
  return chain;
}

// --- the checks -------------------------------------------------------------

/** The state the target message must be in after the failed case. */
function expectedState(c) {
  if (UPDATES[c.op]) {
    const rename = CHAINS[c.op].findIndex(([s]) => s === 'rename');
    return c.step <= rename ? 'old' : 'new';
  }
  if (c.op === 'remove') {
    // The meta goes first; the env stays until the meta's removal is
    // durable and its own unlink succeeds.
    const unlinkEnv = CHAINS.remove.findIndex(([, f]) => f === 'env');
    if (c.step === 0) return 'intact';
    return c.step <= unlinkEnv ? 'env only' : 'gone';
  }
  return 'intact';
}

function assertError(c, result, dirs) {
  assert.equal(result.ok, false, 'the operation resolved despite the fault');
  const e = result.error;
  assert.equal(e.notAnError, undefined);
  assert.equal(e.code, c.expect);
  assert.equal(e.errno, -os.constants.errno[c.expect]);
  assert.equal(e.syscall, REPORTED_AS[c.syscall]);
  assert.equal(e.retryable, RETRYABLE.has(c.expect));
  // Where libuv has no name for the errno (EDQUOT in Node 20), the code is
  // named by the store and the message keeps libuv's words.
  assert.ok(
    e.message.startsWith(`${c.expect}: `) ||
      e.message.startsWith(`Unknown system error ${e.errno}: `),
    e.message,
  );
  assert.ok(e.message.includes(`, ${e.syscall}`), e.message);
  // Calls on a name say which; link and rename name the source in path
  // and the final name in dest. A failed read names no path, as Node's
  // fs.readFile does not.
  const named = {
    openat: { kind: 'open', path: e.path },
    unlink: { kind: 'unlink', path: e.path },
    link: { kind: 'link', to: e.dest },
    rename: { kind: 'rename', to: e.dest },
  }[c.syscall];
  if (named) assert.equal(fileOf(named, dirs), c.file, e.message);
}

/** Exactly the target call failed, and nothing used its data afterwards. */
function assertTrace(c, events, dirs) {
  const injected = events.filter((e) => e.injected);
  const seen = injected
    .map((e) => `${e.pid} ${e.name} ${e.path ?? e.to}`)
    .join('; ');
  if (c.persistent) assert.ok(injected.length >= 1, 'no call is injected');
  else assert.equal(injected.length, 1, `injected: ${seen}`);
  const [hit] = injected;
  assert.deepEqual([hit.name, fileOf(hit, dirs)], [c.syscall, c.file]);
  const after = events.filter((e) => e.start > hit.end);
  const dataCall = hit.kind !== 'unlink' && hit.kind !== 'close';
  if (c.file.startsWith('tmp ') && dataCall) {
    // Data that never reached the disk is never given its final name.
    assert.ok(
      !after.some((e) => (e.kind === 'link' || e.kind === 'rename') &&
        e.from === hit.path && e.ok),
      `${hit.path} is published after its ${hit.name} failed`,
    );
  }
}

/** The bytes fixtures/fault-child.js writes in its same-process check. */
const AFTER_RAW = Buffer.from('Subject: same process\r\n\r\nafter\r\n');

/**
 * The same-process check right after the faulted call: its write, get
 * and update all settled in time and did what they should. Returns the
 * id it wrote.
 */
function assertSameProcess(after) {
  assert.ok(after, 'no same-process check ran');
  const stuck = after.stuck ? ' (a call never settled: a gate slot or a ' +
    'directory sync left behind?)' : '';
  assert.equal(after.ok, true,
    `in the same process, after ${after.steps.join(', ') || 'nothing'}: ` +
    `${after.error?.code ?? ''} ${after.error?.message}${stuck}`);
  assert.equal(after.bytesOk, true, 'the same-process write reads back wrong');
  assert.equal(after.attempts, 0);
  assert.equal(after.counted, 1);
  return after.id;
}

/** The message of the same-process check, read back from this process. */
async function checkAfterMessage(store, root, id, counts) {
  const f = filesOf(root, id);
  const meta = decodeMeta(fs.readFileSync(f.meta), id, f.meta);
  assert.deepEqual([meta.timestamp, meta.attempts], [4500, 1]);
  const [env, attempts] = await store.get(id);
  if (!Buffer.concat(env.flatten()).equals(AFTER_RAW)) counts.messagesLost++;
  assert.equal(attempts, 1);
}

/** Checks one case's queue from this process; returns counts. */
async function checkQueue(c, root, io, seeds, afterId) {
  const counts = {
    operationsAcknowledged: 0, messagesLost: 0, damagedDetected: 0,
  };
  const dirs = dirsOf(root);
  const target = c.op === 'write' ? null : seeds[0];

  assert.deepEqual(listDir(dirs.tmpDir), [], 'tmp files are left');

  const expected = [];
  for (const m of seeds) {
    const f = filesOf(root, m.id);
    const env = readOrNull(f.env);
    const meta = readOrNull(f.meta);
    if (m !== target) {
      const whole = env !== null && env.equals(m.env) && meta !== null &&
        meta.equals(m.meta);
      if (!whole) counts.messagesLost++;
      expected.push(m.id);
      continue;
    }
    const state = expectedState(c);
    if (state === 'env only' || state === 'gone') {
      assert.equal(meta, null, 'the meta of the removed message is back');
      assert.equal(env === null, state === 'gone');
      if (env !== null) assert.ok(env.equals(m.env));
      continue;
    }
    assert.ok(env.equals(m.env), 'the envelope changed');
    if (state === 'intact' || state === 'old') {
      assert.ok(meta.equals(m.meta), 'the meta is not the old one');
    } else {
      const decoded = decodeMeta(meta, m.id, f.meta);
      assert.ok(UPDATES[c.op].done(decoded), `the meta is not the new one`);
    }
    expected.push(m.id);
  }
  // Nothing of a failed write: only the seed names and the message of
  // the same-process check are there.
  const names = (dir, suffix) =>
    listDir(dir)
      .filter((n) => n.endsWith(suffix))
      .map((n) => n.slice(0, -suffix.length));
  assert.deepEqual(
    names(dirs.metaDir, '.meta').sort(),
    [...expected, afterId].sort(),
  );
  counts.operationsAcknowledged += 2;

  // Another process, no faults: everything reads back, the next write
  // and the retried operation succeed.
  const store = openStore(root, io);
  try {
    for (const m of seeds) {
      if (!expected.includes(m.id)) continue;
      try {
        const [env] = await store.get(m.id);
        const bytes = Buffer.concat(env.flatten());
        if (m !== target && !bytes.equals(m.raw)) counts.messagesLost++;
      } catch (err) {
        if (err.code === 'ERR_QUEUE_CORRUPT') counts.damagedDetected++;
        else if (m !== target) counts.messagesLost++;
        throw err;
      }
    }
    await checkAfterMessage(store, root, afterId, counts);

    const raw = Buffer.from('Subject: after\r\n\r\nnext\r\n');
    const next = await store.write(makeEnvelope({}, raw), 5000);
    counts.operationsAcknowledged++;
    const [back] = await store.get(next);
    if (!Buffer.concat(back.flatten()).equals(raw)) counts.messagesLost++;

    if (UPDATES[c.op]) {
      const value = await UPDATES[c.op].run(store, target.id);
      counts.operationsAcknowledged++;
      const f = filesOf(root, target.id);
      const meta = decodeMeta(fs.readFileSync(f.meta), target.id, f.meta);
      if (c.op === 'incrementAttempts') {
        // Counted again on top of a rename that was not undone.
        const want = expectedState(c) === 'new' ? 2 : 1;
        assert.deepEqual([value, meta.attempts], [want, want]);
      } else {
        assert.ok(UPDATES[c.op].done(meta), 'the retried update is not there');
      }
    } else if (c.op === 'remove') {
      // Retrying a failed remove succeeds whatever it had removed.
      await store.remove(target.id);
      counts.operationsAcknowledged++;
      const f = filesOf(root, target.id);
      assert.deepEqual([readOrNull(f.env), readOrNull(f.meta)], [null, null]);
    }

    const loaded = [];
    for await (const [, id] of store.load()) loaded.push(id);
    const live =
      c.op === 'remove' ? expected.filter((id) => id !== target.id) : expected;
    assert.deepEqual(loaded.sort(), [...live, afterId, next].sort());
  } finally {
    await store.close();
  }
  return counts;
}

/**
 * After a persistent fault the undo may have failed as well, so less is
 * promised: tmp files may stay until the next load() removes them (their
 * writer is dead); the target message is in its old state, its new one,
 * or, for a write, absent or whole; nothing is damaged; stored messages
 * are intact; the next operations succeed. Returns counts, and in `left`
 * what a failed write left behind.
 */
async function checkQueueAfterPersistent(c, root, io, seeds, afterId) {
  const counts = {
    operationsAcknowledged: 2, messagesLost: 0, damagedDetected: 0,
  };
  const dirs = dirsOf(root);
  const target = c.op === 'write' ? null : seeds[0];
  const known = [...seeds.map((m) => m.id), afterId];
  let left = 'nothing';

  for (const m of seeds) {
    const f = filesOf(root, m.id);
    const env = readOrNull(f.env);
    const meta = readOrNull(f.meta);
    if (m !== target) {
      if (!(env?.equals(m.env) && meta?.equals(m.meta))) counts.messagesLost++;
      continue;
    }
    if (meta === null) {
      assert.equal(c.op, 'remove', 'the meta is gone');
    } else if (!meta.equals(m.meta)) {
      assert.ok(UPDATES[c.op], 'the meta changed');
      assert.ok(UPDATES[c.op].done(decodeMeta(meta, m.id, f.meta)));
    }
    if (env === null) assert.equal(c.op, 'remove', 'the envelope is gone');
    else assert.ok(env.equals(m.env), 'the envelope changed');
  }

  // graceMs 0: the failed writer is gone, so its tmp files are stale now.
  const store = openStore(root, io, { graceMs: 0 });
  try {
    const newMetas = listDir(dirs.metaDir)
      .map((n) => n.slice(0, -'.meta'.length))
      .filter((id) => !known.includes(id));
    const newEnvs = listDir(dirs.envDir)
      .map((n) => n.slice(0, -'.env'.length))
      .filter((id) => !known.includes(id));
    assert.equal(c.op === 'write' || newMetas.length === 0, true);
    if (newMetas.length > 0) {
      // The failed write is on disk whole: it must read back as written.
      const [env] = await store.get(newMetas[0]);
      assert.ok(Buffer.concat(env.flatten()).equals(FAULT_RAW));
      left = 'the whole message';
    } else if (newEnvs.length > 0) {
      left = 'an envelope without meta';
    }
    await checkAfterMessage(store, root, afterId, counts);

    const loaded = [];
    for await (const [, id] of store.load()) loaded.push(id);
    assert.deepEqual(listDir(dirs.tmpDir), [], 'load() leaves tmp files');

    const raw = Buffer.from('Subject: after\r\n\r\nnext\r\n');
    const next = await store.write(makeEnvelope({}, raw), 5000);
    counts.operationsAcknowledged++;
    const [back] = await store.get(next);
    if (!Buffer.concat(back.flatten()).equals(raw)) counts.messagesLost++;

    if (UPDATES[c.op]) {
      await UPDATES[c.op].run(store, target.id);
      counts.operationsAcknowledged++;
    } else if (c.op === 'remove') {
      try {
        await store.remove(target.id);
        counts.operationsAcknowledged++;
      } catch (err) {
        assert.equal(err.code, 'ERR_QUEUE_NOT_FOUND');
      }
    }
    for (const m of seeds) {
      if (m === target) continue;
      const [env] = await store.get(m.id);
      if (!Buffer.concat(env.flatten()).equals(m.raw)) counts.messagesLost++;
    }
  } catch (err) {
    if (err.code === 'ERR_QUEUE_CORRUPT') counts.damagedDetected++;
    throw err;
  } finally {
    await store.close();
  }
  return { counts, left };
}

// --- the store's first call -------------------------------------------------

/** The queue's directories, and the directories their names are in. */
function initDirsOf(root) {
  const d = dirsOf(root);
  const made = [d.envDir, d.metaDir, d.tmpDir,
    path.join(d.metaDir, '.quarantine')];
  return { made, parents: [...new Set(made.map((p) => path.dirname(p)))] };
}

/**
 * The calls of an init trace a case may fail: each mkdir and each fsync
 * of a directory, with `when` as strace counts them.
 */
function initCallsOf(events) {
  const seen = new Map();
  const calls = [];
  for (const e of events) {
    const key = `${e.pid} ${e.name}`;
    seen.set(key, (seen.get(key) ?? 0) + 1);
    if (e.name === 'mkdir' || e.name === 'fsync') {
      calls.push({ syscall: e.name, when: seen.get(key), event: e });
    }
  }
  return calls;
}

/** A directory synced, after `from` (a line of the trace), successfully. */
function syncedAfter(events, dir, from = -1) {
  return events.some((e) => e.kind === 'sync' && e.ok && e.path === dir &&
    e.start > from);
}

// --- the suites -------------------------------------------------------------

for (const io of BACKENDS) {
  describe(`fault injection with strace (${io} backend)`, function () {
    this.timeout(180000);
    const cases = casesFor();
    const initCases = INIT_CASES.map((c) => ({ op: 'init', ...c }));
    const totals = {
      trials: 0, operationsAcknowledged: 0, messagesLost: 0,
      damagedDetected: 0, faultsInjected: 0,
    };
    let work;
    let seeds;
    let results;
    let initResults;
    let calibration;
    let initCalls;

    before(async function () {
      if (!straceAvailable()) {
        console.log('    strace is not installed: skipping fault injection');
        this.skip();
      }
      // One directory for the whole matrix, which the tests share.
      work = fs.mkdtempSync(path.join(os.tmpdir(), 'slimta-faults-'));
      const seedRoot = path.join(work, 'seed');
      seeds = await seed(seedRoot, io);
      totals.operationsAcknowledged += seeds.length;

      // Run each operation once without faults to number its calls.
      const plain = [...Object.keys(CHAINS), 'init'].map((op) => ({
        io, op, id: seeds[0].id, inject: null,
        root: path.join(work, `plain-${op}`),
        traceFile: path.join(work, `plain-${op}.trace`),
      }));
      for (const p of plain) {
        if (p.op === 'init') fs.mkdirSync(p.root);
        else copyQueue(seedRoot, p.root);
      }
      fs.writeFileSync(path.join(work, 'plain.json'), JSON.stringify(plain));
      const plainResults = await runChild(path.join(work, 'plain.json'));
      calibration = {};
      plain.forEach((p, i) => {
        assert.equal(plainResults[i].ok, true, JSON.stringify(plainResults[i]));
        assertSameProcess(plainResults[i].after);
        const events = parseTrace(fs.readFileSync(p.traceFile, 'utf8'));
        if (p.op === 'init') initCalls = { events, calls: initCallsOf(events) };
        else calibration[p.op] = chainOf(events, dirsOf(p.root));
      });

      cases.forEach((c, i) => {
        c.root = path.join(work, `case-${i}`);
        c.traceFile = `${c.root}.trace`;
        copyQueue(seedRoot, c.root);
      });
      initCases.forEach((c, i) => {
        c.root = path.join(work, `init-${i}`);
        c.traceFile = `${c.root}.trace`;
        fs.mkdirSync(c.root);
        // The first call of that name in the pool thread, on this root.
        const call = initCalls.calls.find((k) => k.syscall === c.syscall);
        c.target = call && { ...call.event, path: path.join(c.root,
          path.relative(path.join(work, 'plain-init'), call.event.path)) };
        c.inject = call ? { syscall: c.syscall, when: call.when,
          error: c.error } : null;
      });
      const job = cases.map((c) => {
          const call = calibration[c.op]?.[c.step];
          const when = c.persistent ? `${call?.when}+` : call?.when;
          const inject = call && call.syscall === c.syscall
            ? { syscall: c.syscall, when,
              ...(c.error ? { error: c.error } : { retval: c.retval }) }
            : null;
          return { io, op: c.op, id: seeds[0].id, root: c.root,
            traceFile: c.traceFile, inject };
        });
      for (const c of initCases) {
        job.push({ io, op: 'init', root: c.root, traceFile: c.traceFile,
          inject: c.inject });
      }
      fs.writeFileSync(path.join(work, 'cases.json'), JSON.stringify(job));
      const all = await runChild(path.join(work, 'cases.json'));
      results = all.slice(0, cases.length);
      initResults = all.slice(cases.length);
    });

    after(function () {
      if (work) fs.rmSync(work, { recursive: true, force: true });
      if (totals.trials > 0) record(`fault-injection/${io}`, totals);
    });

    for (const op of Object.keys(CHAINS)) {
      it(`${op} makes the calls the matrix fails, in this order`, function () {
        assert.deepEqual(
          calibration[op].map((s) => [s.syscall, s.file]),
          CHAINS[op],
        );
        // Counting a name that the pool also uses to wake the loop
        // (write on an eventfd) would not pick the same call every time.
        assert.ok(calibration[op].every((s) => s.syscall !== 'write'));
      });
    }

    it('makes the queue directories and syncs their parents on the first call', function () {
      const { made, parents } = initDirsOf(path.join(work, 'plain-init'));
      const { events, calls } = initCalls;
      for (const dir of made) {
        const mk = events.find((e) => e.kind === 'mkdir' && e.path === dir);
        assert.ok(mk?.ok, `${dir} is not made`);
        assert.ok(syncedAfter(events, path.dirname(dir), mk.end),
          `${path.dirname(dir)} is not synced after ${dir} is made`);
      }
      for (const c of initCases) {
        assert.ok(c.target, `no ${c.syscall} in the first call`);
        assert.ok(c.target.ok);
        const { made: caseMade, parents: caseParents } = initDirsOf(c.root);
        if (c.syscall === 'mkdir') assert.ok(caseMade.includes(c.target.path));
        else assert.ok(caseParents.includes(c.target.path), c.target.path);
      }
      assert.ok(parents.length > 0);
      assert.ok(calls.length > 0);
    });

    cases.forEach((c, i) => {
      if (c.persistent) return;
      const fault = c.error ?? `return ${c.retval}`;
      const what = `${c.op}: ${c.syscall} of the ${c.file} (${fault})`;
      it(`${what} fails cleanly`, async function () {
        totals.trials++;
        const dirs = dirsOf(c.root);
        const events = parseTrace(fs.readFileSync(c.traceFile, 'utf8'));
        totals.faultsInjected += events.filter((e) => e.injected).length;
        assertTrace(c, events, dirs);
        assertError(c, results[i], dirs);
        const afterId = assertSameProcess(results[i].after);
        const counts = await checkQueue(c, c.root, io, seeds, afterId);
        for (const k of Object.keys(counts)) totals[k] += counts[k];
        assert.equal(counts.messagesLost, 0, 'a stored message was lost');
      });
    });

    cases.forEach((c, i) => {
      if (!c.persistent) return;
      const what = `${c.op}: ${c.syscall} of the ${c.file}`;
      it(`${what} failing from then on (EIO) loses nothing`, async function () {
        totals.trials++;
        const dirs = dirsOf(c.root);
        const events = parseTrace(fs.readFileSync(c.traceFile, 'utf8'));
        totals.faultsInjected += events.filter((e) => e.injected).length;
        assertTrace(c, events, dirs);
        assertError(c, results[i], dirs);
        const afterId = assertSameProcess(results[i].after);
        const { counts, left } =
          await checkQueueAfterPersistent(c, c.root, io, seeds, afterId);
        for (const k of Object.keys(counts)) totals[k] += counts[k];
        assert.equal(counts.messagesLost, 0, 'a stored message was lost');
        const key = `${c.op} ${c.syscall} ${c.file}`;
        assert.equal(left, PERSISTENT_LEFT[key] ?? 'nothing');
      });
    });

    initCases.forEach((c, i) => {
      const target = c.syscall === 'mkdir'
        ? 'the mkdir of a queue directory' : 'the fsync of its parent';
      it(`the first call: ${target} (${c.error}) rejects, the next call succeeds`, async function () {
        totals.trials++;
        const r = initResults[i];
        const events = parseTrace(fs.readFileSync(c.traceFile, 'utf8'));
        const injected = events.filter((e) => e.injected);
        totals.faultsInjected += injected.length;
        assert.deepEqual(injected.map((e) => [e.name, e.path]),
          [[c.syscall, c.target.path]], 'not the call meant');

        assert.equal(r.ok, false, 'the first call resolved despite the fault');
        const e = r.error;
        assert.equal(e.code, c.error, e.message);
        assert.equal(e.errno, -os.constants.errno[c.error]);
        assert.equal(e.syscall, REPORTED_AS[c.syscall]);
        assert.equal(e.retryable, RETRYABLE.has(c.error));
        assert.equal(r.retry.ok, true,
          `the next call failed: ${r.retry.error?.message}`);

        // The retry makes what is missing, and syncs again whatever may
        // not be durable: the parent whose sync failed, or the parent of
        // the directory that was not made.
        const again = parseTrace(fs.readFileSync(`${c.traceFile}.retry`, 'utf8'));
        const { made } = initDirsOf(c.root);
        const parent = c.syscall === 'fsync'
          ? c.target.path : path.dirname(c.target.path);
        assert.ok(syncedAfter(again, parent), `${parent} is not synced again`);
        for (const dir of made) assert.ok(fs.statSync(dir).isDirectory());

        const afterId = assertSameProcess(r.after);
        totals.operationsAcknowledged += 3;
        const store = openStore(c.root, io);
        try {
          await checkAfterMessage(store, c.root, afterId, totals);
          const loaded = [];
          for await (const [, id] of store.load()) loaded.push(id);
          assert.deepEqual(loaded, [afterId]);
        } finally {
          await store.close();
        }
        assert.equal(totals.messagesLost, 0, 'a stored message was lost');
      });
    });
  });
}
