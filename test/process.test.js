'use strict';
// Cases that need another process: a writer killed with SIGKILL, exit
// and worker termination with writes in flight, worker threads writing
// at once, Buffers reused right after write(), and the fallback to the
// pure-JS backend when no native binary loads.

const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const { BACKENDS, useTempDir, listDir, openStore, rejects, makeEnvelope } = require('./helpers');
const { bodyFor } = require('./fixtures/writer-body');

const FIXTURES = path.join(__dirname, 'fixtures');

function runCase(root, io, which, extraArgs = []) {
  const r = spawnSync(
    process.execPath,
    [...extraArgs, path.join(FIXTURES, 'exit-cases.js'), root, io, which],
    { encoding: 'utf8', timeout: 60000 },
  );
  return r;
}

/** runCase without blocking, so that several can run at once. */
function runCaseAsync(root, io, which) {
  return new Promise((resolve) => {
    const child = spawn(
      process.execPath,
      [path.join(FIXTURES, 'exit-cases.js'), root, io, which],
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (status, signal) => resolve({ status, signal, stdout, stderr }));
  });
}

/** Reads every message; each must be whole. Returns the ids. */
async function checkAllWhole(root, io) {
  const store = openStore(root, io, { graceMs: 0 });
  const ids = [];
  for await (const [, id] of store.load()) {
    const [env] = await store.get(id);
    assert.match(env.headers.get('T') ?? env.headers.get('N') ?? env.headers.get('A'), /\S/);
    ids.push(id);
  }
  await store.close();
  return ids;
}

for (const io of BACKENDS) {
  describe(`DiskStorage across processes (${io} backend)`, function () {
    this.timeout(120000);
    const tmp = useTempDir();

    it('keeps every write a SIGKILLed writer had reported, intact', async function () {
      const child = spawn(process.execPath, [path.join(FIXTURES, 'writer.js'), tmp(), io, '', '16']);
      let out = '';
      child.stdout.on('data', (d) => (out += d));
      await new Promise((resolve) => {
        const poll = setInterval(() => {
          if (out.split('\n').length > 150) {
            clearInterval(poll);
            child.kill('SIGKILL');
            resolve();
          }
        }, 5);
      });
      await new Promise((resolve) => child.on('exit', resolve));
      const reported = out.split('\n').filter((l) => /^[0-9a-f]{32} \d+$/.test(l));
      assert.ok(reported.length >= 150);
      const store = openStore(tmp(), io, { graceMs: 0 });
      const loaded = new Set();
      for await (const [, id] of store.load()) loaded.add(id);
      for (const line of reported) {
        const [id, n] = line.split(' ');
        assert.ok(loaded.has(id), `acknowledged ${id} is missing`);
        const [env] = await store.get(id);
        assert.ok(env.message.equals(bodyFor(Number(n))), `${id} differs`);
        assert.deepEqual(env.recipients, [`r${n}@x`]);
      }
      // Every message load() yields reads back whole, acknowledged or not.
      for (const id of loaded) await store.get(id);
      await store.close();
    });

    it('does not crash on process.exit() with 200 writes in flight; each message is whole or absent', async function () {
      const r = runCase(tmp(), io, 'exit');
      assert.equal(r.signal, null, r.stderr);
      assert.equal(r.status, 7, r.stderr);
      await checkAllWhole(tmp(), io);
    });

    it('does not crash when a worker with 200 writes in flight is terminated (16 runs, 8 at a time)', async function () {
      // Teardown races are timing-dependent: one run alone rarely loses.
      for (let round = 0; round < 2; round++) {
        const roots = Array.from({ length: 8 }, (_, i) => path.join(tmp(), `r${round}-${i}`));
        const results = await Promise.all(roots.map((root) => runCaseAsync(root, io, 'terminate')));
        for (const [i, r] of results.entries()) {
          assert.equal(r.signal, null, r.stderr);
          assert.equal(r.status, 0, r.stderr);
          assert.match(r.stdout, /terminated/);
          await checkAllWhole(roots[i], io);
        }
      }
    });

    it('gives a JS error, not a fatal one, for write() in an exit handler', function () {
      const r = runCase(tmp(), io, 'on-exit');
      assert.equal(r.signal, null, r.stderr);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, /no throw/);
      assert.match(r.stdout, /rejected ERR_QUEUE_EXITING/);
      assert.equal(listDir(path.join(tmp(), 'env')).length, 0);
    });

    it('writes from the main thread and four workers at once', async function () {
      const r = runCase(tmp(), io, 'workers');
      assert.equal(r.status, 0, r.stderr);
      const ids = JSON.parse(r.stdout);
      assert.equal(ids.length, 250);
      assert.equal(new Set(ids).size, 250);
      const loaded = await checkAllWhole(tmp(), io);
      assert.deepEqual(loaded.sort(), [...ids].sort());
    });

    it('stores the bytes a Buffer held at the call, even if it is overwritten and collected', async function () {
      const r = runCase(tmp(), io, 'gc', ['--expose-gc']);
      assert.equal(r.status, 0, r.stderr);
      const ids = JSON.parse(r.stdout);
      const store = openStore(tmp(), io);
      for (let i = 0; i < ids.length; i++) {
        const [env] = await store.get(ids[i]);
        assert.equal(env.headers.get('A'), 'b');
        assert.ok(env.message.equals(Buffer.alloc(64 * 1024, 0x41 + (i % 26))), `message ${i}`);
      }
      await store.close();
    });
  });
}

describe('the native fallback', function () {
  it('uses the pure-JS backend with a process warning when no native binary loads', function () {
    const script = `
      const Module = require('node:module');
      const load = Module._load;
      Module._load = function (request, ...rest) {
        if (request === 'node-gyp-build') return () => { throw new Error('no binary for this platform'); };
        return load.call(this, request, ...rest);
      };
      process.on('warning', (w) => console.log('warning', w.code, w.message));
      const { DiskStorage } = require(${JSON.stringify(path.resolve(__dirname, '..'))});
      const s = new DiskStorage('/nonexistent/e', '/nonexistent/m');
      setImmediate(() => console.log('io', s.io));
    `;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /warning SLIMTA_NATIVE_FALLBACK .*no binary for this platform/);
    assert.match(r.stdout, /io js/);
  });
});

for (const io of BACKENDS) {
  describe(`the queue lock (${io} backend)`, function () {
    this.timeout(60000);
    const tmp = useTempDir();

    /** A child that writes one message, prints its id and keeps the queue open. */
    function startOwner(root) {
      const script = `
        const path = require('node:path');
        const { DiskStorage, Envelope } = require(${JSON.stringify(path.resolve(__dirname, '..'))});
        const root = process.argv[1];
        const s = new DiskStorage(path.join(root, 'env'), path.join(root, 'meta'), path.join(root, 'tmp'), { io: ${JSON.stringify(io)} });
        const e = new Envelope({ sender: 'a@b', recipients: ['c@d'] });
        e.parse(Buffer.from('A: b\\r\\n\\r\\nbody'));
        s.write(e, 1).then(async (id) => {
          await s.incrementAttempts(id);
          console.log(id);
        });
        setInterval(() => {}, 1000);
      `;
      const child = spawn(process.execPath, ['-e', script, root]);
      const id = new Promise((resolve) => child.stdout.once('data', (d) => resolve(d.toString().trim())));
      return { child, id };
    }

    it('lets a second process add messages but not update, remove or recover them; read-only inspection works', async function () {
      const { child, id } = startOwner(tmp());
      let added;
      try {
        const owned = await id;
        const second = openStore(tmp(), io);
        added = await second.write(makeEnvelope(), 1);
        for (const call of [
          () => second.incrementAttempts(owned),
          () => second.setTimestamp(owned, 5),
          () => second.setRecipientsDelivered(owned, [0]),
          () => second.remove(owned),
          () => second.load().next(),
        ]) {
          const err = await rejects(call());
          assert.equal(err.code, 'ERR_QUEUE_LOCKED');
          assert.equal(err.retryable, true);
          assert.match(err.message, new RegExp(`in use by process ${child.pid} \\(thread 0\\)$`));
        }
        await second.close();

        const reader = openStore(tmp(), io, { readOnly: true });
        const seen = [];
        for await (const [, i] of reader.load()) seen.push(i);
        assert.deepEqual(seen.sort(), [owned, added].sort());
        assert.equal((await reader.inspect(owned)).attempts, 1);
        assert.equal((await reader.get(owned))[1], 1);
        await reader.close();
      } finally {
        child.kill('SIGKILL');
        await new Promise((r) => child.on('exit', r));
      }
      // The owner died without releasing: its lock is stale and taken over.
      const next = openStore(tmp(), io);
      assert.equal(await next.incrementAttempts(added), 1);
      assert.equal((await next.getInfo()).size, 2);
      await next.close();
    });

    it('refuses updates from a second copy of the package in this thread, so that no update is lost', async function () {
      // A duplicated node_modules, or a cleared require cache: a second
      // copy of the module, with state of its own, is another owner.
      const dist = path.resolve(__dirname, '..', 'dist') + path.sep;
      const saved = { ...require.cache };
      for (const k of Object.keys(require.cache)) if (k.startsWith(dist)) delete require.cache[k];
      let copy;
      try {
        copy = require('..');
      } finally {
        for (const k of Object.keys(require.cache)) if (k.startsWith(dist)) delete require.cache[k];
        Object.assign(require.cache, saved);
      }
      assert.notEqual(copy.DiskStorage, require('..').DiskStorage);
      const a = openStore(tmp(), io);
      const b = new copy.DiskStorage(path.join(tmp(), 'env'), path.join(tmp(), 'meta'), path.join(tmp(), 'tmp'), { io });
      const id = await a.write(makeEnvelope(), 1);
      const results = await Promise.allSettled(Array.from({ length: 80 }, (_, i) => (i % 2 ? b : a).incrementAttempts(id)));
      const done = results.filter((r) => r.status === 'fulfilled').length;
      const refused = results.filter((r) => r.status === 'rejected').map((r) => r.reason);
      for (const err of refused) assert.equal(err.code, 'ERR_QUEUE_LOCKED', err.stack);
      await a.close();
      await b.close();
      const reader = openStore(tmp(), io, { readOnly: true });
      assert.equal((await reader.inspect(id)).attempts, done, `${done} increments resolved`);
      await reader.close();
      assert.equal(refused.length, 40);
    });

    it('refuses updates beside an owner in another PID namespace', async function () {
      const why =
        typeof process.getuid === 'function' && process.getuid() !== 0
          ? 'not root'
          : spawnSync('unshare', ['--pid', '--fork', '--mount-proc', '--kill-child', 'true']).status !== 0
            ? 'unshare --pid --fork --mount-proc --kill-child is missing or refused'
            : null;
      if (why) {
        console.log(`      (skipped: ${why}; the owner needs a PID namespace of its own)`);
        this.skip();
      }
      // The owner is pid 1 in its namespace; whatever runs as pid 1 here is
      // another process, which must not make the owner look stale.
      const child = spawn('unshare', [
        '--pid', '--fork', '--mount-proc', '--kill-child',
        process.execPath, path.join(FIXTURES, 'lock-owner.js'), tmp(), 'store', io,
      ]);
      try {
        const line = await new Promise((resolve, reject) => {
          child.stdout.once('data', (d) => resolve(JSON.parse(d.toString())));
          child.once('exit', (code) => reject(new Error(`owner exited ${code}`)));
        });
        assert.equal(line.owned, 1, JSON.stringify(line));
        const second = openStore(tmp(), io);
        const err = await rejects(second.incrementAttempts(line.id));
        assert.equal(err.code, 'ERR_QUEUE_LOCKED');
        assert.match(err.message, /in use by process 1 \(thread 0\)$/);
        await second.close();
      } finally {
        child.kill('SIGKILL');
        await new Promise((r) => (child.exitCode === null && child.signalCode === null ? child.on('exit', r) : r()));
      }
    });

    it('takes over, for its updates, the queue of an owner in another PID namespace that was killed (a container restart)', async function () {
      if (spawnSync('unshare', ['--pid', '--fork', '--mount-proc', '--kill-child', 'true']).status !== 0) {
        console.log('      (skipped: unshare --pid --fork --mount-proc --kill-child is missing or refused)');
        this.skip();
      }
      const container = () =>
        spawn('unshare', [
          '--pid', '--fork', '--mount-proc', '--kill-child',
          process.execPath, path.join(FIXTURES, 'lock-owner.js'), tmp(), 'store', io,
        ]);
      const started = (child) =>
        new Promise((resolve, reject) => {
          let err = '';
          child.stderr.on('data', (d) => (err += d));
          child.stdout.once('data', (d) => resolve(JSON.parse(d.toString())));
          child.once('exit', (code) => reject(new Error(`owner exited ${code}: ${err}`)));
        });
      /** SIGKILL to the namespace's first process, as when a container is killed. */
      const killContainer = (child) => {
        const done = new Promise((r) => child.once('exit', r));
        const [init] = fs.readFileSync(`/proc/${child.pid}/task/${child.pid}/children`, 'latin1').trim().split(/\s+/);
        process.kill(Number(init), 'SIGKILL');
        return done;
      };
      const ids = [];
      for (let run = 0; run < 2; run++) {
        const child = container();
        try {
          const line = await started(child);
          // The second one could update only by taking over the first one's lock.
          assert.equal(line.owned, 1, JSON.stringify(line));
          ids.push(line.id);
        } finally {
          await killContainer(child);
        }
      }
      const next = openStore(tmp(), io);
      assert.equal(await next.incrementAttempts(ids[0]), 2);
      assert.equal(await next.incrementAttempts(ids[1]), 2);
      assert.equal((await next.getInfo()).size, 2);
      await next.close();
    });

    it('refuses updates from a second thread; the owner thread closing lets it in', async function () {
      const { Worker } = require('node:worker_threads');
      const owner = openStore(tmp(), io);
      const id = await owner.write(makeEnvelope(), 1);
      assert.equal(await owner.incrementAttempts(id), 1);

      const inWorker = async () => {
        const w = new Worker(path.join(FIXTURES, 'lock-thread.js'), {
          workerData: { dir: tmp(), then: 'release', store: { io, id } },
        });
        const got = [];
        await new Promise((resolve, reject) => {
          w.on('message', (m) => {
            got.push(m);
            if (m === 'released') resolve();
          });
          w.on('error', reject);
        });
        await w.terminate();
        return got[0];
      };
      const refused = await inWorker();
      assert.equal(refused.code, 'ERR_QUEUE_LOCKED', JSON.stringify(refused));
      assert.match(refused.message, new RegExp(`in use by process ${process.pid} \\(thread 0\\)$`));
      await owner.close();

      assert.deepEqual(await inWorker(), { attempts: 2 });
      // That worker's store closed and gave the lock back: the main thread
      // may own the queue again.
      const again = openStore(tmp(), io);
      assert.equal(await again.incrementAttempts(id), 3);
      await again.close();
    });
  });
}
