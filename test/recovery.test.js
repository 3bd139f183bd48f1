'use strict';
// load() after damage: damaged messages are quarantined and reported,
// never yielded and never thrown; young unpaired files and files the
// library did not name are left alone; stale tmp files are cleaned.

const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const {
  BACKENDS,
  useTempDir,
  makeEnvelope,
  listDir,
  openStore,
  rejects,
} = require('./helpers');

async function loadAll(store) {
  const seen = [];
  for await (const [, id] of store.load()) seen.push(id);
  return seen.sort();
}

function collectReports(store) {
  const reports = [];
  store.on('quarantine', (r) => reports.push(r));
  return reports;
}

for (const io of BACKENDS) {
  describe(`DiskStorage#load() recovery (${io} backend)`, function () {
    const tmp = useTempDir();
    const dir = (name) => path.join(tmp(), name);
    const envFile = (id) => path.join(dir('env'), `${id}.env`);
    const metaFile = (id) => path.join(dir('meta'), `${id}.meta`);
    let store;
    let good;
    let victim;
    beforeEach(async () => {
      store = openStore(tmp(), io, { graceMs: 0 });
      good = await store.write(makeEnvelope(), 1);
      victim = await store.write(makeEnvelope(), 2);
    });
    afterEach(() => store.close());

    const damage = {
      'a truncated meta file': (id) => fs.truncateSync(metaFile(id), 20),
      'an empty meta file': (id) => fs.truncateSync(metaFile(id), 0),
      'a flipped bit in the meta file': (id) => flip(metaFile(id), 33),
      'a truncated env file': (id) => fs.truncateSync(envFile(id), 100),
      'a zero-byte env file': (id) => fs.truncateSync(envFile(id), 0),
      'a missing env file': (id) => fs.unlinkSync(envFile(id)),
      "another message's meta under its name": (id) =>
        fs.copyFileSync(metaFile(good), metaFile(id)),
    };

    for (const [what, harm] of Object.entries(damage)) {
      it(`quarantines ${what}, reports it and yields the rest`, async function () {
        harm(victim);
        const reports = collectReports(store);
        assert.deepEqual(await loadAll(store), [good]);
        assert.equal(reports.length, 1);
        assert.equal(reports[0].id, victim);
        assert.ok(reports[0].reason.length > 0);
        assert.ok(reports[0].moved.length >= 1);
        for (const [from, to] of reports[0].moved) {
          assert.ok(!fs.existsSync(from), `${from} still there`);
          assert.ok(fs.existsSync(to), `${to} was not kept`);
        }
        // Nothing left behind to trip the next scan.
        assert.deepEqual(await loadAll(store), [good]);
        assert.equal(reports.length, 1);
      });
    }

    it('quarantines an env file whose meta is gone, once past the grace period', async function () {
      fs.unlinkSync(metaFile(victim));
      const reports = collectReports(store);
      assert.deepEqual(await loadAll(store), [good]);
      assert.equal(reports.length, 1);
      assert.equal(reports[0].reason, 'meta file is missing');
      assert.deepEqual(listDir(dir('env')), [`${good}.env`]);
    });

    it('leaves a young unpaired env file alone: it may be a write in flight', async function () {
      const patient = openStore(tmp(), io, { graceMs: 60_000 });
      fs.unlinkSync(metaFile(victim));
      const reports = collectReports(patient);
      assert.deepEqual(await loadAll(patient), [good]);
      assert.equal(reports.length, 0);
      assert.ok(fs.existsSync(envFile(victim)));
      await patient.close();
    });

    it('rejects get() of a damaged message with ERR_QUEUE_CORRUPT and sets it aside', async function () {
      flip(envFile(victim), 200);
      const damaged = fs.readFileSync(envFile(victim));
      const reports = collectReports(store);
      // Bit rot that keeps the size passes load(), which reads no envelope.
      assert.deepEqual(await loadAll(store), [good, victim].sort());
      const err = await rejects(store.get(victim));
      assert.equal(err.code, 'ERR_QUEUE_CORRUPT');
      assert.equal(err.retryable, false);
      assert.equal(err.path, envFile(victim));
      assert.equal(reports.length, 1);
      assert.equal(reports[0].id, victim);
      const kept = reports[0].moved.find(([from]) => from === envFile(victim));
      assert.ok(kept && fs.readFileSync(kept[1]).equals(damaged), 'envelope not kept');
      assert.deepEqual(await loadAll(store), [good]);
      assert.equal((await rejects(store.get(victim))).code, 'ERR_QUEUE_NOT_FOUND');
      await store.remove(victim);
    });

    it('leaves a damaged message in place when get() is called by a store that does not own the queue', async function () {
      flip(envFile(victim), 200);
      const writer = openStore(tmp(), io); // writes only: no lock
      const reports = collectReports(writer);
      assert.equal((await rejects(writer.get(victim))).code, 'ERR_QUEUE_CORRUPT');
      assert.equal(reports.length, 0);
      assert.ok(fs.existsSync(envFile(victim)) && fs.existsSync(metaFile(victim)));
      // The owner can still take the queue.
      assert.deepEqual(await loadAll(store), [good, victim].sort());
      await writer.close();
    });

    it('leaves a damaged message in place when get() is called on a read-only store', async function () {
      flip(envFile(victim), 200);
      const ro = openStore(tmp(), io, { readOnly: true });
      const reports = collectReports(ro);
      assert.equal((await rejects(ro.get(victim))).code, 'ERR_QUEUE_CORRUPT');
      await ro.close();
      assert.equal(reports.length, 0);
      assert.ok(fs.existsSync(envFile(victim)) && fs.existsSync(metaFile(victim)));
    });

    it('rejects get() of an env file copied under another id with ERR_QUEUE_CORRUPT', async function () {
      fs.copyFileSync(envFile(good), envFile(victim));
      const err = await rejects(store.get(victim));
      assert.equal(err.code, 'ERR_QUEUE_CORRUPT');
      assert.match(err.message, new RegExp(good));
    });

    it('ignores dot-files, .nfs leftovers, subdirectories and foreign names', async function () {
      const junk = ['.hidden', '.nfs0000000012345', 'README', `${good}.env.bak`, 'ABCDEF.meta'];
      for (const name of junk) {
        fs.writeFileSync(path.join(dir('meta'), name), 'junk');
        fs.writeFileSync(path.join(dir('env'), name), 'junk');
      }
      fs.mkdirSync(path.join(dir('meta'), 'subdir'));
      fs.mkdirSync(path.join(dir('env'), `${'a'.repeat(32)}.env`));
      const reports = collectReports(store);
      assert.deepEqual(await loadAll(store), [good, victim].sort());
      assert.equal(reports.length, 0);
      for (const name of junk) {
        assert.ok(fs.existsSync(path.join(dir('meta'), name)), name);
      }
    });

    it('removes stale tmp files of dead writers and spares those of live ones', async function () {
      const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)']);
      try {
        const dead = await deadPid();
        const id = 'c'.repeat(32);
        const staleName = `${id}.env.${dead}.0123abcd.tmp`;
        const liveName = `${id}.meta.${child.pid}.0123abcd.tmp`;
        fs.writeFileSync(path.join(dir('tmp'), staleName), 'partial');
        fs.writeFileSync(path.join(dir('tmp'), liveName), 'partial');
        fs.writeFileSync(path.join(dir('tmp'), 'unrelated'), 'x');
        await loadAll(store);
        assert.deepEqual(listDir(dir('tmp')), [liveName, 'unrelated'].sort());
      } finally {
        child.kill();
      }
    });

    it('spares a young tmp file whatever its pid says: the writer may live in another PID namespace', async function () {
      const dead = await deadPid();
      const name = `${'d'.repeat(32)}.env.${dead}.0123abcd.tmp`;
      fs.writeFileSync(path.join(dir('tmp'), name), 'partial');
      const patient = openStore(tmp(), io, { graceMs: 60_000 });
      await loadAll(patient);
      await patient.close();
      assert.deepEqual(listDir(dir('tmp')), [name]);
      await loadAll(store); // graceMs: 0
      assert.deepEqual(listDir(dir('tmp')), []);
    });

    it('never quarantines a message whose write() then resolves, with scans running beside the writes', async function () {
      const owner = openStore(tmp(), io); // default grace period
      const writer = openStore(tmp(), io);
      const reports = collectReports(owner);
      let writing = true;
      const scans = (async () => {
        let n = 0;
        while (writing) {
          await loadAll(owner);
          n++;
        }
        return n;
      })();
      const ids = await Promise.all(
        Array.from({ length: 300 }, (_, i) => writer.write(makeEnvelope(), i)),
      );
      writing = false;
      assert.ok((await scans) >= 1);
      assert.equal(reports.length, 0);
      const loaded = await loadAll(owner);
      for (const id of ids) {
        assert.ok(loaded.includes(id), id);
        await writer.get(id);
      }
      await writer.close();
      await owner.close();
    });

    it('never quarantines anything in read-only mode', async function () {
      fs.truncateSync(metaFile(victim), 10);
      const ro = openStore(tmp(), io, { readOnly: true, graceMs: 0 });
      const reports = collectReports(ro);
      assert.deepEqual(await loadAll(ro), [good]);
      assert.equal(reports.length, 1);
      assert.deepEqual(reports[0].moved, []);
      assert.ok(fs.existsSync(metaFile(victim)));
      await ro.close();
    });
  });
}

function flip(file, offset) {
  const bytes = fs.readFileSync(file);
  bytes[offset % bytes.length] ^= 0x10;
  fs.writeFileSync(file, bytes);
}

/** The pid of a process that has exited (and was reaped). */
function deadPid() {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['-e', '0']);
    child.on('exit', () => resolve(child.pid));
  });
}
