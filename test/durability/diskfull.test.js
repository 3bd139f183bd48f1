'use strict';
// A full disk, for real: a small tmpfs mounted for the test (root only;
// skipped with a message otherwise). The queue is filled by writes, big
// bodies first and small ones at the end, until they fail; then a filler
// file beside the queue sets the free space to the page: none left, so
// that a write fails while writing its envelope data, and one page, so
// that the envelope fits and the write fails while writing its meta.
// Updates on the full disk fail while writing their new meta. Each
// failure must reject with ENOSPC (retryable), give no id, leave no file
// (nothing in tmp, no new env or meta) and keep every stored message as
// it was; once space is freed, writes and updates succeed.

const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const { BACKENDS, listDir, makeEnvelope, openStore } = require('../helpers');
const { attachToThreads, otherThreads, straceAvailable } = require('./lib/strace');
const summary = require('./lib/summary');

const isRoot = process.getuid?.() === 0;
const PAGE = 4096;
const SIZE = '2m';
/** Pages the filler holds at first, so that it can give space back. */
const RESERVE = 64;

const totals = summary.zeroCounts();
after(() => {
  if (totals.trials > 0) summary.record('diskfull', totals);
});

/** A fresh tmpfs of SIZE; skips the test when mounting is not allowed. */
function mountTmpfs(test) {
  if (!isRoot) {
    console.log('    (skipped: mounting a tmpfs to fill needs root)');
    test.skip();
  }
  const mnt = fs.mkdtempSync(path.join(os.tmpdir(), 'slimta-full-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${SIZE},mode=0700`, 'tmpfs', mnt], {
      stdio: 'pipe',
    });
  } catch (err) {
    fs.rmdirSync(mnt);
    console.log(`    (skipped: cannot mount a tmpfs here: ${String(err.stderr || err.message).trim()})`);
    test.skip();
  }
  return mnt;
}

function freePages(mnt) {
  const st = fs.statfsSync(mnt);
  assert.equal(st.bsize, PAGE);
  return st.bavail;
}

/** Every name in the queue's env, meta and tmp directories. */
function names(root) {
  return ['env', 'meta', 'tmp'].map((d) => listDir(path.join(root, d)));
}

/** The tmp file an ENOSPC came from, read from a trace of this process. */
function failedTmpKind(events) {
  const failed = events.filter((e) => e.errno === 'ENOSPC');
  assert.equal(failed.length, 1, `ENOSPC calls: ${failed.map((e) => e.name)}`);
  const m = /\.(env|meta)\.\d+\.[0-9a-f]{8}\.tmp$/.exec(failed[0].path ?? '');
  assert.ok(m, `ENOSPC from ${failed[0].name} on ${failed[0].path}`);
  return m[1];
}

for (const io of BACKENDS) {
  describe(`a full disk (${io} backend)`, function () {
    this.timeout(60_000);
    let mnt;
    let store;
    let root;
    let filler;
    const stored = new Map(); // id -> raw bytes
    let fillerPages = 0;

    /** Resizes the filler so that exactly `n` pages are free. */
    function setFree(n) {
      const pages = fillerPages + freePages(mnt) - n;
      assert.ok(pages >= 0, 'the filler cannot give back enough space');
      fs.truncateSync(filler, Math.min(pages, fillerPages) * PAGE);
      if (pages > fillerPages) {
        fs.appendFileSync(filler, Buffer.alloc((pages - fillerPages) * PAGE, 0x66));
      }
      fillerPages = pages;
      assert.equal(freePages(mnt), n);
    }

    /** Checks a rejection for ENOSPC on a full disk. */
    function assertFull(err, what) {
      assert.ok(err, `${what} resolved on a full disk`);
      assert.equal(err.code, 'ENOSPC', `${what}: ${err.message}`);
      assert.equal(err.retryable, true);
      assert.equal(err.syscall, 'write');
      totals.trials++;
      totals.faultsInjected++;
    }

    /** A write that must fail: no id, no file, nothing else changed. */
    async function failingWrite(raw, ts) {
      const before = names(root);
      let id;
      let err;
      try {
        id = await store.write(makeEnvelope({}, raw), ts);
      } catch (e) {
        err = e;
      }
      assert.equal(id, undefined, 'a write on a full disk gave an id');
      assertFull(err, 'write');
      assert.deepEqual(names(root), before, 'the failed write left a file');
      return err;
    }

    /** Every stored message reads back as written. */
    async function checkStored() {
      for (const [id, raw] of stored) {
        const [env] = await store.get(id);
        if (!Buffer.concat(env.flatten()).equals(raw)) totals.messagesLost++;
      }
    }

    before(function () {
      mnt = mountTmpfs(this);
      root = path.join(mnt, 'q');
      filler = path.join(mnt, 'filler');
      fs.writeFileSync(filler, Buffer.alloc(RESERVE * PAGE, 0x66));
      fillerPages = RESERVE;
      store = openStore(root, io);
    });

    after(async function () {
      if (!mnt) return;
      await store?.close();
      execFileSync('umount', [mnt]);
      fs.rmdirSync(mnt);
    });

    it('rejects writes with ENOSPC once big, then small bodies fill it, and keeps what was stored', async function () {
      for (const [size, many] of [[256 * 1024, 20], [1000, 2000]]) {
        let err;
        for (let i = 0; i < many && !err; i++) {
          const raw = Buffer.concat([
            Buffer.from(`N: ${stored.size}\r\n\r\n`),
            Buffer.alloc(size, 0x61 + (stored.size % 26)),
          ]);
          try {
            stored.set(await store.write(makeEnvelope({}, raw), stored.size), raw);
            totals.operationsAcknowledged++;
          } catch (e) {
            err = e;
          }
        }
        assertFull(err, `a write of ${size} bytes`);
        assert.deepEqual(listDir(path.join(root, 'tmp')), []);
        assert.equal(listDir(path.join(root, 'env')).length, stored.size);
        assert.equal(listDir(path.join(root, 'meta')).length, stored.size);
      }
      assert.ok(freePages(mnt) <= 1, `${freePages(mnt)} pages still free`);
      await checkStored();
      assert.equal(totals.messagesLost, 0);
    });

    it('rejects a write that fails in its envelope data, and one that fails in its meta, leaving nothing', async function () {
      const raw = Buffer.from('Subject: small\r\n\r\nsmall body\r\n');
      const traced = async (free) => {
        setFree(free);
        if (!straceAvailable()) {
          await failingWrite(raw, 7);
          return null;
        }
        // Which file ran out of space, from a trace of this process.
        const traceFile = path.join(os.tmpdir(), `slimta-full-${process.pid}.trace`);
        const tracer = attachToThreads(otherThreads(), { traceFile });
        await tracer.ready;
        let traced;
        try {
          await failingWrite(raw, 7);
        } finally {
          traced = await tracer.detach();
          fs.rmSync(traceFile, { force: true });
        }
        return failedTmpKind(traced.events);
      };
      // No page free: the envelope's data cannot be written.
      const none = await traced(0);
      if (none !== null) assert.equal(none, 'env');
      // One page: the small envelope takes it, its meta finds none.
      const one = await traced(1);
      if (one !== null) assert.equal(one, 'meta');
      else console.log('      (strace is not installed: which file failed is not checked)');
      assert.equal(freePages(mnt), 1, 'the failed write did not give its page back');
      await checkStored();
      assert.equal(totals.messagesLost, 0);
    });

    it('an update on a full disk rejects with ENOSPC and leaves the old meta readable', async function () {
      setFree(0);
      const [id] = stored.keys();
      const metaFile = path.join(root, 'meta', `${id}.meta`);
      const old = fs.readFileSync(metaFile);
      const info = await store.inspect(id);
      const updates = {
        setTimestamp: () => store.setTimestamp(id, 9999),
        incrementAttempts: () => store.incrementAttempts(id),
        setRecipientsDelivered: () => store.setRecipientsDelivered(id, [1]),
      };
      for (const [name, update] of Object.entries(updates)) {
        const before = names(root);
        let err;
        try {
          await update();
        } catch (e) {
          err = e;
        }
        assertFull(err, name);
        assert.deepEqual(names(root), before, `${name} left a file`);
        assert.ok(fs.readFileSync(metaFile).equals(old), `${name} changed the meta`);
        assert.deepEqual(await store.inspect(id), info, `${name}: the old meta does not read back`);
        const [env, attempts] = await store.get(id);
        assert.equal(attempts, 0);
        assert.deepEqual(env.recipients, makeEnvelope().recipients);
      }
    });

    it('writes and updates again once space is freed', async function () {
      fs.rmSync(filler);
      fillerPages = 0;
      const [id] = stored.keys();
      await store.setTimestamp(id, 9999);
      assert.equal(await store.incrementAttempts(id), 1);
      await store.setRecipientsDelivered(id, [1]);
      totals.operationsAcknowledged += 3;
      const info = await store.inspect(id);
      assert.deepEqual([info.timestamp, info.attempts, info.delivered], [9999, 1, [1]]);

      const raw = Buffer.from('Subject: after\r\n\r\nroom again\r\n');
      const next = await store.write(makeEnvelope({}, raw), 1);
      totals.operationsAcknowledged++;
      stored.set(next, raw);
      await checkStored();
      const loaded = [];
      for await (const [, loadedId] of store.load()) loaded.push(loadedId);
      assert.deepEqual(loaded.sort(), [...stored.keys()].sort());
      assert.deepEqual(listDir(path.join(root, 'tmp')), []);
      assert.equal(totals.messagesLost, 0);
    });
  });
}
