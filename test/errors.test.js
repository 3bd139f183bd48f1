'use strict';
// Every error path rejects promptly with a Node-style error (code, syscall,
// path) or a QueueError, carries `retryable`, gives the same code from both
// backends, and leaves nothing behind. A full disk is in
// durability/diskfull.test.js.

const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const {
  BACKENDS,
  useTempDir,
  lib,
  makeEnvelope,
  listDir,
  openStore,
  rejects,
} = require('./helpers');

const isRoot = process.getuid && process.getuid() === 0;

const BAD_IDS = [
  '../x',
  '../../etc/passwd',
  'a/b',
  '/'.repeat(32),
  'a'.repeat(31) + '/',
  'a'.repeat(31) + '\0',
  '',
  'A'.repeat(32),
  'a'.repeat(33),
  'a'.repeat(31),
  'g'.repeat(32),
  'é'.repeat(32),
  '0'.repeat(32) + '.env',
  ' ' + '0'.repeat(31),
  42,
  null,
  undefined,
  {},
];

/** Describes an OS error by what must match across backends. */
function osShape(err) {
  return { code: err.code, syscall: err.syscall, retryable: err.retryable };
}

const seen = new Map();
function sameAcrossBackends(name, io, err) {
  const shape = osShape(err);
  if (seen.has(name)) assert.deepEqual(shape, seen.get(name), `${name}: backends differ`);
  else seen.set(name, shape);
}

describe('QueueError classes', function () {
  it('match their own class and QueueError, never a sibling', function () {
    const errors = lib();
    const made = {
      NotFoundError: new errors.NotFoundError('0'.repeat(32)),
      CorruptError: new errors.CorruptError('/q/x.env', 'bad'),
      InvalidIdError: new errors.InvalidIdError('../x'),
      LockedError: new errors.LockedError('busy'),
      InvalidArgumentError: new errors.InvalidArgumentError('bad'),
    };
    for (const [name, err] of Object.entries(made)) {
      assert.ok(err instanceof errors.QueueError, name);
      assert.ok(err instanceof Error, name);
      for (const other of Object.keys(made)) {
        assert.equal(err instanceof errors[other], name === other, `${name} instanceof ${other}`);
      }
    }
    assert.ok(made.InvalidArgumentError instanceof TypeError);
    assert.ok(!(new Error('x') instanceof errors.QueueError));
    assert.ok(!(new TypeError('x') instanceof errors.InvalidArgumentError));
  });
});

for (const io of BACKENDS) {
  describe(`DiskStorage errors (${io} backend)`, function () {
    const tmp = useTempDir();
    const dir = (name) => path.join(tmp(), name);
    let store;
    beforeEach(() => {
      store = openStore(tmp(), io);
    });
    afterEach(() => store.close());

    it('rejects invalid ids with ERR_QUEUE_INVALID_ID before touching a file', async function () {
      await store.write(makeEnvelope(), 1);
      const before = snapshot(tmp());
      for (const id of BAD_IDS) {
        for (const call of [
          () => store.get(id),
          () => store.remove(id),
          () => store.setTimestamp(id, 1),
          () => store.incrementAttempts(id),
          () => store.setRecipientsDelivered(id, [0]),
        ]) {
          const err = await rejects(call());
          assert.equal(err.code, 'ERR_QUEUE_INVALID_ID', JSON.stringify(id));
          assert.ok(err instanceof lib().InvalidIdError);
          assert.equal(err.retryable, false);
        }
      }
      assert.deepEqual(snapshot(tmp()), before);
    });

    it('rejects with ENOENT when the queue directories were removed', async function () {
      await store.write(makeEnvelope(), 1);
      fs.rmSync(tmp(), { recursive: true });
      const err = await rejects(store.write(makeEnvelope(), 1));
      assert.equal(err.code, 'ENOENT');
      assert.equal(typeof err.errno, 'number');
      assert.equal(err.syscall, 'open');
      assert.ok(err.path.startsWith(dir('tmp')), err.path);
      assert.equal(err.retryable, false);
      assert.match(err.message, /^ENOENT: no such file or directory, open '/);
      sameAcrossBackends('ENOENT', io, err);
    });

    it('rejects every operation on a removed queue promptly, each with its code and retryable', async function () {
      const id = await store.write(makeEnvelope(), 1);
      for await (const entry of store.load()) assert.ok(entry); // takes the lock
      fs.rmSync(tmp(), { recursive: true });
      const expect = {
        write: ['ENOENT', () => store.write(makeEnvelope(), 1)],
        // A broken queue, not a missing message: the OS error says so.
        setTimestamp: ['ENOENT', () => store.setTimestamp(id, 2)],
        incrementAttempts: ['ENOENT', () => store.incrementAttempts(id)],
        setRecipientsDelivered: ['ENOENT', () => store.setRecipientsDelivered(id, [0])],
        get: ['ENOENT', () => store.get(id)],
        inspect: ['ENOENT', () => store.inspect(id)],
        remove: ['ENOENT', () => store.remove(id)],
        load: ['ENOENT', () => store.load().next()],
        getInfo: ['ENOENT', () => store.getInfo()],
      };
      for (const [op, [code, call]] of Object.entries(expect)) {
        const err = await rejects(call());
        assert.equal(err.code, code, op);
        assert.equal(typeof err.retryable, 'boolean', `${op} has no retryable`);
        if (!code.startsWith('ERR_')) {
          assert.equal(typeof err.syscall, 'string', op);
          assert.ok(err.path.startsWith(tmp()), `${op}: ${err.path}`);
          assert.equal(typeof err.errno, 'number', op);
          assert.equal(err.retryable, false, op);
        }
      }
      assert.ok(!fs.existsSync(tmp()), 'an operation recreated the queue');
    });

    it('does not block on a FIFO or follow a symlink planted at a message path', async function () {
      const id = await store.write(makeEnvelope(), 1);
      const env = path.join(dir('env'), `${id}.env`);
      const meta = path.join(dir('meta'), `${id}.meta`);
      const outside = path.join(tmp(), 'outside');
      fs.writeFileSync(outside, fs.readFileSync(meta));

      fs.rmSync(env);
      execFileSync('mkfifo', [env]);
      const fifo = await rejects(store.get(id));
      assert.equal(fifo.code, 'EINVAL');
      assert.equal(fifo.syscall, 'read');
      sameAcrossBackends('FIFO', io, fifo);

      fs.rmSync(meta);
      fs.symlinkSync(outside, meta);
      const link = await rejects(store.inspect(id));
      assert.equal(link.code, 'ELOOP');
      assert.equal(link.path, meta);
      sameAcrossBackends('symlink', io, link);
    });

    it('rejects with ENOTDIR when a queue directory is a file', async function () {
      const file = path.join(tmp(), 'file');
      fs.writeFileSync(file, 'x');
      const s = openStore(file, io);
      const err = await rejects(s.write(makeEnvelope(), 1));
      assert.equal(err.code, 'ENOTDIR');
      assert.equal(err.retryable, false);
      // Found by the stat that looks for the nearest existing parent.
      assert.equal(err.syscall, 'stat');
      assert.equal(err.path, path.join(file, 'env'));
      sameAcrossBackends('ENOTDIR', io, err);
    });

    it('rejects with ENOTDIR, not EEXIST, when envDir and metaDir are a file', async function () {
      const { DiskStorage } = lib();
      const file = path.join(tmp(), 'file');
      fs.writeFileSync(file, 'x');
      const s = new DiskStorage(file, file, null, { io });
      for (const call of [
        () => s.write(makeEnvelope(), 1),
        () => s.get('a'.repeat(32)),
        () => s.load().next(),
      ]) {
        const err = await rejects(call());
        assert.equal(err.code, 'ENOTDIR');
        assert.equal(err.errno, -20);
        assert.equal(err.syscall, 'mkdir');
        assert.equal(err.path, file);
        assert.equal(err.retryable, false);
      }
      assert.equal(fs.readFileSync(file, 'utf8'), 'x');
    });

    it('rejects an update with EISDIR when a directory stands at the final path', async function () {
      const id = await store.write(makeEnvelope(), 1);
      const meta = path.join(dir('meta'), `${id}.meta`);
      const saved = fs.readFileSync(meta);
      fs.unlinkSync(meta);
      fs.mkdirSync(meta);
      fs.writeFileSync(path.join(meta, 'x'), '');
      // Reading the meta hits the directory first.
      const err = await rejects(store.incrementAttempts(id));
      assert.equal(err.code, 'EISDIR');
      assert.equal(err.syscall, 'read');
      assert.equal(err.retryable, false);
      sameAcrossBackends('EISDIR', io, err);
      fs.rmSync(meta, { recursive: true });
      fs.writeFileSync(meta, saved);
      assert.equal(await store.incrementAttempts(id), 1);
      assert.deepEqual(listDir(dir('tmp')), []);
    });

    it('rejects with ENAMETOOLONG for a directory name over the limit', async function () {
      const s = openStore(path.join(tmp(), 'x'.repeat(300)), io);
      const err = await rejects(s.write(makeEnvelope(), 1));
      assert.equal(err.code, 'ENAMETOOLONG');
      assert.equal(err.syscall, 'stat');
      assert.ok(err.path.startsWith(path.join(tmp(), 'x')), err.path);
      assert.equal(err.retryable, false);
      sameAcrossBackends('ENAMETOOLONG', io, err);
    });

    it('rejects with EACCES for a user without permission (child as nobody)', async function () {
      if (!isRoot) this.skip();
      const root = dir('q');
      const owner = openStore(root, io);
      await owner.write(makeEnvelope(), 1);
      await owner.close();
      // Readable and searchable by everyone, writable by root only.
      for (const d of [tmp(), root, ...['env', 'meta', 'tmp'].map((n) => path.join(root, n))]) {
        fs.chmodSync(d, 0o755);
      }
      const out = execFileSync(process.execPath, [
        '-e',
        `
        process.setgid(65534); process.setuid(65534);
        const { DiskStorage, Envelope } = require(${JSON.stringify(path.resolve(__dirname, '..'))});
        const q = ${JSON.stringify(root)};
        const s = new DiskStorage(q + '/env', q + '/meta', q + '/tmp', { io: ${JSON.stringify(io)} });
        const e = new Envelope({ sender: 'a@b', recipients: ['c@d'] });
        e.parse(Buffer.from('A: b\\r\\n\\r\\nc'));
        s.write(e, 1).then(
          () => console.log('{"resolved":true}'),
          (err) => console.log(JSON.stringify({ code: err.code, syscall: err.syscall, path: err.path, retryable: err.retryable })),
        );
        `,
      ]);
      const err = JSON.parse(out.toString());
      assert.equal(err.code, 'EACCES');
      assert.equal(err.retryable, false);
      assert.equal(err.syscall, 'open');
      assert.ok(err.path.startsWith(path.join(root, 'tmp')), err.path);
      sameAcrossBackends('EACCES', io, err);
    });

    it('rejects with ERR_QUEUE_CROSS_DEVICE when tmpDir is on another filesystem', async function () {
      const other = fs.mkdtempSync('/dev/shm/slimta-test-');
      try {
        if (fs.statSync(other).dev === fs.statSync(tmp()).dev) this.skip();
        const { DiskStorage } = lib();
        const s = new DiskStorage(dir('env'), dir('meta'), other, { io });
        const err = await rejects(s.write(makeEnvelope(), 1));
        assert.equal(err.code, 'ERR_QUEUE_CROSS_DEVICE');
        assert.deepEqual(listDir(dir('env')), []);
        assert.deepEqual(listDir(other), []);
      } finally {
        fs.rmSync(other, { recursive: true, force: true });
      }
    });

    it('leaves memory, fds and active handles at baseline after 10,000 failing writes', async function () {
      this.timeout(120000);
      await store.write(makeEnvelope(), 1);
      fs.rmSync(dir('tmp'), { recursive: true });
      await failingWritesLeaveNothing(store, makeEnvelope(), {
        warmUp: 10, rounds: 100, code: 'ENOENT', syscall: 'open',
      });
    });

    it('leaves memory, fds and active handles at baseline after 2,000 writes that fail after their env was linked', async function () {
      this.timeout(120000);
      await store.write(makeEnvelope(), 1);
      // The meta's link fails (ENOTDIR) after both tmp files were written
      // and synced and the env linked: every write has something to undo.
      fs.rmSync(dir('meta'), { recursive: true });
      fs.writeFileSync(dir('meta'), 'not a directory');
      const env = makeEnvelope({}, Buffer.alloc(64 * 1024, 'x'));
      // 2,000 bodies of 64 KiB go through: 128 MiB if any were kept.
      await failingWritesLeaveNothing(store, env, {
        warmUp: 2, rounds: 20, code: 'ENOTDIR', syscall: 'link',
        maxRss: 48 * 1024 * 1024,
      });
      assert.deepEqual(listDir(dir('env')).length, 1, 'an undo left an env');
      assert.deepEqual(listDir(dir('tmp')), []);
    });
  });
}

/**
 * Runs `rounds` batches of 100 writes of `env` that must all fail with
 * `code` from `syscall`, after `warmUp` batches, and checks that they
 * leave no fd, no active handle, no unhandled rejection and no growth of
 * the heap (or of the RSS, when `maxRss` is given) behind.
 */
async function failingWritesLeaveNothing(store, env, { warmUp, rounds, code, syscall, maxRss }) {
  let unhandled = 0;
  const onUnhandled = () => unhandled++;
  process.on('unhandledRejection', onUnhandled);
  const fail = async () => {
    const results = await Promise.allSettled(
      Array.from({ length: 100 }, () => store.write(env, 1)),
    );
    for (const r of results) {
      assert.equal(r.status, 'rejected');
      assert.equal(r.reason.code, code);
      assert.equal(r.reason.syscall, syscall);
    }
  };
  try {
    for (let i = 0; i < warmUp; i++) await fail();
    global.gc?.();
    const fds0 = fs.readdirSync('/proc/self/fd').length;
    const handles0 = process.getActiveResourcesInfo().length;
    const { heapUsed: heap0, rss: rss0 } = process.memoryUsage();
    for (let i = 0; i < rounds; i++) await fail();
    await new Promise((r) => setImmediate(r));
    global.gc?.();
    assert.equal(fs.readdirSync('/proc/self/fd').length, fds0);
    assert.ok(process.getActiveResourcesInfo().length <= handles0);
    const { heapUsed, rss } = process.memoryUsage();
    assert.ok(heapUsed - heap0 < 16 * 1024 * 1024, `heap grew by ${heapUsed - heap0} bytes`);
    if (maxRss) assert.ok(rss - rss0 < maxRss, `RSS grew by ${rss - rss0} bytes`);
  } finally {
    process.off('unhandledRejection', onUnhandled);
  }
  assert.equal(unhandled, 0);
}

/** Every file under `root` with its size and mtime. */
function snapshot(root) {
  const out = {};
  const walk = (d) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else {
        const st = fs.statSync(p);
        out[p] = `${st.size}:${st.mtimeMs}`;
      }
    }
  };
  walk(root);
  return out;
}
