'use strict';
// Hostile input: fuzzed ids, symlinks planted where the store writes,
// file modes, addresses that would inject SMTP commands, a huge
// recipient list, a descriptor limit far below the load, and Buffers
// reused right after the call. SLIMTA_HOSTILE_SEED replays the fuzzing.

const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const fc = require('fast-check');

const { BACKENDS, useTempDir, openStore, rejects, lib, makeEnvelope } = require('../helpers');
const { seedFrom, Rng } = require('./lib/trial-rng');
const { snapshot, wrongModes, fdCount } = require('./lib/trial-fs');
const { hostileId } = require('./lib/fuzz-ids');
const summary = require('./lib/summary');

const SEED = seedFrom('SLIMTA_HOSTILE_SEED');
const FIXTURES = path.join(__dirname, 'fixtures');
const EMFILE = 'EMFILE retryable=true';

console.log(`hostile: SLIMTA_HOSTILE_SEED=${SEED}`);

const totals = summary.zeroCounts();
after(() => summary.record('hostile', totals));

/** Every call that takes an id. */
const ID_CALLS = {
  get: (s, id) => s.get(id),
  remove: (s, id) => s.remove(id),
  setTimestamp: (s, id) => s.setTimestamp(id, 1),
  incrementAttempts: (s, id) => s.incrementAttempts(id),
  setRecipientsDelivered: (s, id) => s.setRecipientsDelivered(id, [0]),
};

function envelope(fields, raw) {
  return makeEnvelope(fields, raw);
}

/** Runs `fn` with crypto.randomBytes returning `byte` repeated. */
async function withPredictableRandom(byte, fn) {
  const real = crypto.randomBytes;
  crypto.randomBytes = (n, cb) => {
    const b = Buffer.alloc(n, byte);
    return cb ? cb(null, b) : b;
  };
  try {
    return await fn();
  } finally {
    crypto.randomBytes = real;
  }
}

function backendOf(io) {
  if (io === 'js') return new (require('../../dist/js-backend').JsBackend)();
  const backend = require('../../dist/native').loadNative();
  assert.ok(backend, 'the native addon did not load');
  return backend;
}

for (const [b, io] of BACKENDS.entries()) {
  describe(`DiskStorage under hostile input (${io} backend)`, function () {
    this.timeout(120_000);
    const tmp = useTempDir('slimta-hostile-');

    it('rejects every fuzzed id with ERR_QUEUE_INVALID_ID and touches no file, in the queue or outside it', async function () {
      const root = tmp();
      const store = openStore(path.join(root, 'q'), io);
      const real = await store.write(envelope(), 1);
      // Files a traversal would reach: a copy of a real meta and env
      // beside the queue, and the queue's own dot-files.
      fs.mkdirSync(path.join(root, 'outside'));
      fs.copyFileSync(path.join(root, 'q', 'meta', `${real}.meta`), path.join(root, 'outside', 'victim.meta'));
      fs.copyFileSync(path.join(root, 'q', 'env', `${real}.env`), path.join(root, 'outside', 'victim.env'));
      const before = snapshot(root);
      let calls = 0;
      await fc.assert(
        fc.asyncProperty(hostileId, async (id) => {
          for (const [name, call] of Object.entries(ID_CALLS)) {
            const err = await rejects(call(store, id));
            calls++;
            if (err.code !== 'ERR_QUEUE_INVALID_ID') {
              throw new Error(`${name}(${String(id).slice(0, 80)}) failed with ${err.code}: ${err.message}`);
            }
          }
        }),
        { seed: SEED + b, numRuns: 1500 },
      );
      assert.deepEqual(snapshot(root), before);
      assert.equal((await store.get(real))[1], 0);
      await store.close();
      totals.trials++;
      totals.faultsInjected += calls;
    });

    it('refuses to read through a symlink planted at a meta file, and never writes through it', async function () {
      const root = tmp();
      const outside = path.join(root, 'outside');
      fs.mkdirSync(outside);
      const store = openStore(path.join(root, 'q'), io);
      const id = await store.write(envelope(), 1);
      const metaPath = path.join(root, 'q', 'meta', `${id}.meta`);
      // Even a link to this message's own meta is not followed: reads
      // open queue files with O_NOFOLLOW, so every update fails with
      // ELOOP and nothing outside changes.
      fs.renameSync(metaPath, path.join(outside, 'target.meta'));
      fs.symlinkSync(path.join(outside, 'target.meta'), metaPath);
      fs.writeFileSync(path.join(outside, 'other'), 'not a meta file');
      const before2 = snapshot(outside);
      for (const call of [
        () => store.setTimestamp(id, 42),
        () => store.incrementAttempts(id),
        () => store.setRecipientsDelivered(id, [0]),
        () => store.get(id),
      ]) {
        const err = await rejects(call());
        assert.equal(err.code, 'ELOOP');
        assert.equal(err.path, metaPath);
      }
      assert.deepEqual(snapshot(outside), before2);
      assert.ok(fs.lstatSync(metaPath).isSymbolicLink(), 'the symlink was replaced');
      fs.rmSync(metaPath);
      fs.symlinkSync(path.join(outside, 'other'), metaPath);

      // remove() unlinks the link, not what it points to.
      fs.symlinkSync(path.join(outside, 'other'), path.join(root, 'q', 'env', `${'e'.repeat(32)}.env`));
      await store.remove(id);
      await store.remove('e'.repeat(32));
      assert.deepEqual(snapshot(outside), before2);
      assert.deepEqual(fs.readdirSync(path.join(root, 'q', 'env')), []);
      await store.close();
      totals.trials++;
      totals.faultsInjected += 3;
    });

    it('never yields, moves or deletes a symlink planted as a message or a stale tmp file', async function () {
      const root = tmp();
      const outside = path.join(root, 'outside');
      fs.mkdirSync(outside);
      const store = openStore(path.join(root, 'q'), io, { graceMs: 0 });
      const id = await store.write(envelope(), 1);
      fs.copyFileSync(path.join(root, 'q', 'meta', `${id}.meta`), path.join(outside, 'm'));
      fs.copyFileSync(path.join(root, 'q', 'env', `${id}.env`), path.join(outside, 'e'));
      const planted = [
        [path.join(root, 'q', 'meta', `${'1'.repeat(32)}.meta`), path.join(outside, 'm')],
        [path.join(root, 'q', 'env', `${'2'.repeat(32)}.env`), path.join(outside, 'e')],
        [path.join(root, 'q', 'tmp', `${'3'.repeat(32)}.env.999999999.0123abcd.tmp`), path.join(outside, 'e')],
      ];
      for (const [link, target] of planted) fs.symlinkSync(target, link);
      const before = snapshot(outside);
      const seen = [];
      for await (const [, found] of store.load()) seen.push(found);
      assert.deepEqual(seen, [id]);
      for (const [link] of planted) assert.ok(fs.lstatSync(link).isSymbolicLink(), link);
      assert.deepEqual(snapshot(outside), before);
      await store.close();
      totals.trials++;
      totals.faultsInjected += planted.length;
    });

    it('fails a write or update whose tmp name is a planted symlink, writing nothing through it', async function () {
      const root = tmp();
      const outside = path.join(root, 'outside');
      fs.mkdirSync(outside);
      fs.writeFileSync(path.join(outside, 'target'), 'precious');
      const store = openStore(path.join(root, 'q'), io);
      await store.getInfo();
      const tmpDir = path.join(root, 'q', 'tmp');
      const id = 'ab'.repeat(16);
      const tmpName = (kind) => path.join(tmpDir, `${id}.${kind}.${process.pid}.abababab.tmp`);

      // With randomBytes predictable, the tmp names are known in advance.
      fs.symlinkSync(path.join(outside, 'target'), tmpName('env'));
      fs.symlinkSync(path.join(outside, 'absent'), tmpName('meta'));
      const before = snapshot(outside);
      const err = await withPredictableRandom(0xab, () => rejects(store.write(envelope(), 1)));
      assert.equal(err.code, 'EEXIST', err.message);
      assert.deepEqual(snapshot(outside), before);
      assert.deepEqual(fs.readdirSync(path.join(root, 'q', 'env')), []);

      // The same for the meta file an update writes.
      fs.rmSync(tmpName('env'));
      fs.rmSync(tmpName('meta'));
      const written = await withPredictableRandom(0xab, () => store.write(envelope(), 1));
      assert.equal(written, id);
      fs.symlinkSync(path.join(outside, 'absent'), tmpName('meta'));
      const err2 = await withPredictableRandom(0xab, () => rejects(store.setTimestamp(id, 99)));
      assert.equal(err2.code, 'EEXIST', err2.message);
      assert.deepEqual(snapshot(outside), before);
      assert.ok(!fs.existsSync(path.join(outside, 'absent')));
      fs.rmSync(tmpName('meta'));
      await store.setTimestamp(id, 99);
      await store.close();
      totals.trials++;
      totals.faultsInjected += 3;
    });

    it('runs no plan step through a symlink: write_tmp and publish fail with EEXIST, replace and unlink act on the link', async function () {
      const root = tmp();
      const outside = path.join(root, 'outside');
      const dir = path.join(root, 'dir');
      fs.mkdirSync(outside);
      fs.mkdirSync(dir);
      fs.writeFileSync(path.join(outside, 'target'), 'precious');
      const backend = backendOf(io);
      const at = (name) => path.join(dir, name);
      const link = (name, target) => fs.symlinkSync(path.join(outside, target), at(name));
      const before = snapshot(outside);
      const bufs = [Buffer.from('new bytes')];

      link('a.tmp', 'target');
      link('b.tmp', 'missing');
      for (const name of ['a.tmp', 'b.tmp']) {
        const err = await rejects(backend.run([{ op: 'write_tmp', path: at(name), bufs }]));
        assert.equal(err.code, 'EEXIST', name);
      }

      link('final', 'target');
      const err = await rejects(
        backend.run([
          { op: 'write_tmp', path: at('c.tmp'), bufs },
          { op: 'publish', from: at('c.tmp'), to: at('final') },
        ]),
      );
      assert.equal(err.code, 'EEXIST');
      assert.ok(!fs.existsSync(at('c.tmp')), 'the failed plan left its tmp file');

      link('replaced', 'target');
      await backend.run([
        { op: 'write_tmp', path: at('d.tmp'), bufs },
        { op: 'replace', from: at('d.tmp'), to: at('replaced') },
        { op: 'unlink', path: at('final'), missingOk: false },
        { op: 'sync_dir', path: dir },
      ]);
      assert.ok(fs.lstatSync(at('replaced')).isFile());
      assert.equal(fs.readFileSync(at('replaced'), 'utf8'), 'new bytes');
      assert.ok(!fs.existsSync(at('final')));
      assert.deepEqual(snapshot(outside), before);
      assert.ok(!fs.existsSync(path.join(outside, 'missing')));
      totals.trials++;
      totals.faultsInjected += 4;
    });

    for (const mask of [0o000, 0o022]) {
      it(`keeps files 0600 and directories 0700 after every call, under umask ${mask.toString(8).padStart(3, '0')}`, async function () {
        const root = tmp();
        const queue = path.join(root, 'q');
        const old = process.umask(mask);
        try {
          const store = openStore(queue, io, { graceMs: 0 });
          const check = (what) => assert.deepEqual(wrongModes(queue), [], `after ${what}`);
          const rng = new Rng(SEED + mask + b);
          const ids = [];
          for (let step = 0; step < 60; step++) {
            const roll = rng.int(10);
            if (ids.length === 0 || roll < 4) {
              ids.push(await store.write(envelope(), step));
              check('write');
            } else if (roll < 8) {
              const id = rng.pick(ids);
              await [
                () => store.setTimestamp(id, step),
                () => store.incrementAttempts(id),
                () => store.setRecipientsDelivered(id, [rng.int(2)]),
                () => store.get(id),
              ][roll - 4]();
              check('an update');
            } else {
              await store.remove(ids.splice(rng.int(ids.length), 1)[0]);
              check('remove');
            }
          }
          // Quarantine moves a file; it must stay private where it lands.
          fs.truncateSync(path.join(queue, 'meta', `${ids[0]}.meta`), 9);
          for await (const _ of store.load());
          check('load() with quarantine');
          assert.equal((await store.getInfo()).quarantined, 2);
          await store.close();
          check('close');
        } finally {
          process.umask(old);
        }
        totals.trials++;
      });
    }

    it('refuses addresses with CR, LF or NUL anywhere and writes nothing', async function () {
      const root = tmp();
      const store = openStore(path.join(root, 'q'), io);
      await store.getInfo();
      let cases = 0;
      await fc.assert(
        fc.asyncProperty(
          fc.string({ unit: 'grapheme', maxLength: 40 }),
          fc.nat(),
          fc.constantFrom('\r', '\n', '\0', '\r\n', '\r\nRCPT TO:<x@evil>\r\n'),
          fc.nat({ max: 4 }),
          fc.nat({ max: 3 }),
          async (address, at, bad, where, extra) => {
            const pos = at % (address.length + 1);
            const hostile = address.slice(0, pos) + bad + address.slice(pos);
            const recipients = Array.from({ length: extra + 1 }, (_, i) => `r${i}@x`);
            const fields =
              where === 0 ? { sender: hostile, recipients } : { recipients: recipients.map((r, i) => (i === where % recipients.length ? hostile : r)) };
            if (where !== 0 && !fields.recipients.includes(hostile)) fields.recipients.push(hostile);
            const err = await rejects(store.write(envelope(fields), 1));
            cases++;
            assert.equal(err.code, 'ERR_QUEUE_INVALID_ENVELOPE', err.message);
          },
        ),
        { seed: SEED + 10 + b, numRuns: 300 },
      );
      // The 100,000th of 100,000 recipients is checked as well as the first.
      const many = Array.from({ length: 100_000 }, (_, i) => `r${i}@x`);
      many[99_999] = 'last@x\r\nDATA';
      assert.equal((await rejects(store.write(envelope({ recipients: many }), 1))).code, 'ERR_QUEUE_INVALID_ENVELOPE');
      for (const sub of ['env', 'meta', 'tmp']) {
        assert.deepEqual(fs.readdirSync(path.join(root, 'q', sub)).filter((n) => !n.startsWith('.')), [], sub);
      }
      await store.close();
      totals.trials++;
      totals.faultsInjected += cases + 1;
    });

    it('stores 100,000 recipients and reads them back exactly; delivering index 99,999 works', async function () {
      const root = tmp();
      const store = openStore(path.join(root, 'q'), io);
      const recipients = Array.from({ length: 100_000 }, (_, i) => `rcpt-${i}-${'é'.repeat(i % 3)}@example.com`);
      const id = await store.write(envelope({ recipients }), 1);
      let [env] = await store.get(id);
      assert.deepEqual(env.recipients, recipients);
      await store.setRecipientsDelivered(id, [99_999]);
      [env] = await store.get(id);
      assert.deepEqual(env.recipients, recipients.slice(0, 99_999));
      await store.setRecipientsDelivered(id, [0, 50_000]);
      [env] = await store.get(id);
      assert.equal(env.recipients.length, 99_997);
      assert.equal(env.recipients[0], recipients[1]);
      const err = await rejects(store.setRecipientsDelivered(id, [100_000]));
      assert.equal(err.code, 'ERR_QUEUE_INVALID_ARGUMENT');
      await store.close();
      totals.trials++;
      totals.operationsAcknowledged += 3;
    });

    for (const [count, label, maxInFlight] of [
      [2_000, 'the default limit on plans in flight: all resolve', undefined],
      [10_000, '10,000 plans in flight: each resolves or fails with EMFILE (retryable)', 10_000],
    ]) {
      it(`takes ${count} concurrent writes, then reads and updates, under ulimit -n 256 with ${label}; no descriptor leaks and the store still works`, function () {
        const root = tmp();
        const script = path.join(FIXTURES, 'hostile-fdlimit.js');
        const args = [root, io, String(count), String(maxInFlight ?? 0)].map((a) => `'${a}'`).join(' ');
        const r = spawnSync(
          'bash',
          ['-c', `ulimit -n 256 && exec '${process.execPath}' '${script}' ${args}`],
          { encoding: 'utf8', timeout: 110_000 },
        );
        assert.equal(r.status, 0, r.stderr);
        const out = JSON.parse(r.stdout);
        const { writes, reads, updates } = out.failures;
        console.log(
          `      ${io}: writes ${out.resolved} resolved, ${writes[EMFILE] ?? 0} EMFILE; ` +
            `then ${out.retried} written again; reads ${reads[EMFILE] ?? 0} EMFILE, ` +
            `updates ${updates[EMFILE] ?? 0} EMFILE; fds ${out.baseline} -> ${out.after}`,
        );
        for (const kind of [writes, reads, updates]) {
          for (const key of Object.keys(kind)) assert.equal(key, EMFILE);
        }
        if (maxInFlight === undefined) assert.deepEqual(out.failures, { writes: {}, reads: {}, updates: {} });
        assert.equal(out.resolved + (writes[EMFILE] ?? 0), count);
        assert.equal(out.afterWrites, out.baseline, 'descriptors leaked by the writes');
        assert.equal(out.after, out.baseline, 'descriptors leaked by the reads or updates');
        assert.deepEqual(
          {
            missing: out.missing,
            extra: out.extra,
            unreadable: out.unreadable,
            wrongAttempts: out.wrongAttempts,
            failedButApplied: out.failedButApplied,
            tmpLeft: out.tmpLeft,
          },
          { missing: 0, extra: 0, unreadable: 0, wrongAttempts: 0, failedButApplied: 0, tmpLeft: 0 },
        );
        totals.trials++;
        totals.operationsAcknowledged += out.resolved + out.retried;
        totals.faultsInjected += (writes[EMFILE] ?? 0) + (reads[EMFILE] ?? 0) + (updates[EMFILE] ?? 0);
      });
    }

    it('stores the bytes each call was given although one Buffer is rewritten right after every write()', async function () {
      const root = tmp();
      // One plan at a time: most writes wait in the queue while the
      // Buffer they came from is rewritten for the next ones.
      const store = openStore(path.join(root, 'q'), io, { maxInFlight: 1 });
      const { Envelope } = lib();
      const shared = Buffer.alloc(70_000);
      const rng = new Rng(SEED + 20 + b);
      const expected = [];
      const pending = [];
      const fdsBefore = fdCount();
      for (let i = 0; i < 200; i++) {
        const head = Buffer.from(`Message: ${i}\r\n\r\n`);
        const length = head.length + rng.int(shared.length - head.length);
        head.copy(shared);
        crypto.randomFillSync(shared, head.length, length - head.length);
        const view = shared.subarray(0, length);
        expected.push(Buffer.from(view));
        const recipients = [`r${i}@x`];
        const env = new Envelope({ sender: `s${i}@x`, recipients });
        env.parse(i % 2 ? view : new Uint8Array(shared.buffer, shared.byteOffset, length));
        pending.push(store.write(env, i));
        shared.fill(0xee);
        recipients.push('late@x');
        env.recipients.push('later@x');
        env.sender = 'changed@x';
      }
      const ids = await Promise.all(pending);
      for (let i = 0; i < ids.length; i++) {
        const [env] = await store.get(ids[i]);
        assert.ok(Buffer.concat(env.flatten()).equals(expected[i]), `message ${i} differs`);
        assert.deepEqual(env.recipients, [`r${i}@x`]);
        assert.equal(env.sender, `s${i}@x`);
      }
      await store.close();
      assert.equal(fdCount(), fdsBefore);
      totals.trials++;
      totals.operationsAcknowledged += ids.length;
    });
  });
}
