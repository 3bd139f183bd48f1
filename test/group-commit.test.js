'use strict';
// Group commit: concurrent writes share directory fsyncs, at the default
// share of the thread pool, and a write never counts an fsync that had
// started before its own link. A failed directory fsync fails every plan
// it covered, and every plan that changed a name before it ended, even
// when that plan's own later sync succeeds.

const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { BACKENDS, useTempDir } = require('./helpers');

const root = path.join(__dirname, '..');
const WRITER = path.join(__dirname, 'fixtures', 'group-commit-writer.js');
const PLANS = path.join(__dirname, 'fixtures', 'group-commit-plans.js');
const FAILED_WRITE = path.join(__dirname, 'fixtures', 'failed-write-plan.js');
const FAULT_WRITER = path.join(
  __dirname, 'fixtures', 'group-commit-fault-writer.js',
);
const WRITES = 200;

const hasStrace = spawnSync('strace', ['-V']).status === 0;

/** A mocha before() hook: the suite skips, saying why, without strace. */
function skipWithoutStrace() {
  if (!hasStrace) {
    console.log('    (skipped: strace is not installed)');
    this.skip();
  }
}

function rawBinding() {
  return require('node-gyp-build')(root);
}

// Turns a `strace -f` trace into calls numbered by line: a call that
// blocks is split in an unfinished and a resumed line, so it starts at
// the first and ends at the second. A before B means A.end < B.start.
function parseCalls(text) {
  const calls = [];
  const pending = new Map();
  text.split('\n').forEach((line, i) => {
    const resumed = /^(\d+)\s+<\.\.\. (\w+) resumed>(.*)$/.exec(line);
    if (resumed) {
      const call = pending.get(resumed[1]);
      if (!call) return;
      pending.delete(resumed[1]);
      call.end = i;
      call.ok = /\)\s+= 0\b/.test(resumed[3]);
      calls.push(call);
      return;
    }
    const started = /^(\d+)\s+(\w+)\((.*)$/.exec(line);
    if (!started) return;
    const call = { name: started[2], args: started[3], start: i, end: i };
    if (started[3].endsWith('<unfinished ...>')) {
      pending.set(started[1], call);
    } else {
      call.ok = /\)\s+= 0\b/.test(started[3]);
      calls.push(call);
    }
  });
  return calls;
}

// Runs the writer under strace: `-y` names the directory behind each
// fsync'ed descriptor, and the writer marks each resolved write.
function traceWrites(dir, io, group, maxInFlight) {
  for (const sub of ['env', 'meta', 'tmp', 'meta/.quarantine']) {
    fs.mkdirSync(path.join(dir, sub), { recursive: true, mode: 0o700 });
  }
  const trace = path.join(dir, 'trace');
  const args = [dir, io, group, String(WRITES)];
  if (maxInFlight !== undefined) args.push(String(maxInFlight));
  const r = spawnSync(
    'strace',
    ['-f', '-qq', '-y', '-e', 'trace=fsync,link,openat',
      '-e', 'inject=fsync:delay_enter=20000', '-o', trace,
      process.execPath, WRITER, ...args],
    { encoding: 'utf8', timeout: 120000 },
  );
  assert.equal(r.status, 0, r.stderr);
  const calls = parseCalls(fs.readFileSync(trace, 'utf8'));
  // The writes' syncs: those the store's first call makes of the queue's
  // parent directories (meta/ is that of .quarantine) come before any link.
  const firstLink = calls.find((c) => c.name === 'link');
  const syncs = (sub) => {
    const want = `<${path.join(dir, sub)}>`;
    return calls.filter(
      (c) => c.name === 'fsync' && /^\d+</.test(c.args) &&
        c.args.includes(want) && c.start > firstLink.start,
    );
  };
  return {
    result: JSON.parse(r.stdout),
    calls,
    env: syncs('env').length,
    meta: syncs('meta').length,
    envSyncs: syncs('env'),
    metaSyncs: syncs('meta'),
    stored: fs.readdirSync(path.join(dir, 'meta')).filter((n) =>
      n.endsWith('.meta'),
    ).length,
  };
}

// Each write resolved only after each of its names was linked, then an
// fsync of that name's directory started, then ended.
function checkCovered(t) {
  const links = new Map();
  const marks = new Map();
  for (const c of t.calls) {
    const link = /^"[^"]+", "([^"]+)"/.exec(c.args);
    if (c.name === 'link' && link && c.ok) links.set(link[1], c);
    const mark = /"\/nonexistent\/slimta-marker\/write:([0-9a-f]{32})"/
      .exec(c.args);
    if (c.name === 'openat' && mark) marks.set(mark[1], c);
  }
  assert.equal(marks.size, WRITES);
  const uncovered = [];
  for (const [id, mark] of marks) {
    for (const [name, syncs] of [
      [`env/${id}.env`, t.envSyncs],
      [`meta/${id}.meta`, t.metaSyncs],
    ]) {
      const link = [...links].find(([to]) => to.endsWith(name))?.[1];
      const ok =
        link !== undefined &&
        syncs.some(
          (s) => s.ok && s.start > link.end && s.end < mark.start,
        );
      if (!ok) uncovered.push(name);
    }
  }
  assert.deepEqual(uncovered, []);
}

// Runs `args` under strace with one pool thread, the `when`-th fsync
// failing with EIO; returns the child's output and the calls traced.
function traceFault(dir, when, syscalls, args) {
  const trace = path.join(dir, 'trace');
  const r = spawnSync(
    'strace',
    ['-f', '-qq', '-y', '-e', `trace=${syscalls}`,
      '-e', `inject=fsync:error=EIO:when=${when}`, '-o', trace,
      process.execPath, ...args],
    {
      encoding: 'utf8',
      timeout: 120000,
      env: { ...process.env, UV_THREADPOOL_SIZE: '1' },
    },
  );
  assert.equal(r.status, 0, r.stderr);
  return {
    out: JSON.parse(r.stdout),
    calls: parseCalls(fs.readFileSync(trace, 'utf8')),
  };
}

// The fsyncs of `dir`'s descriptor. A call that strace split has only
// "fd</dir> <unfinished ...>" on its first line, so no ")" is required.
function fsyncsOf(calls, dir) {
  return calls.filter(
    (c) => c.name === 'fsync' && c.args.includes(`<${dir}>`),
  );
}

// The names of a resolved write that were not durable when it resolved:
// the first fsync of the name's directory to start after its link must
// succeed and end before the write's mark. When that fsync fails, a
// later one proves nothing: after a failure Linux may drop the
// directory's dirty state and report the error only once.
function notDurable(t, dir, id) {
  const mark = t.calls.find(
    (c) => c.name === 'openat' && c.args.includes(`/write:${id}"`),
  );
  assert.ok(mark, `no mark for ${id}`);
  const names = [];
  for (const [sub, ext] of [['env', 'env'], ['meta', 'meta']]) {
    const final = path.join(dir, sub, `${id}.${ext}`);
    const link = t.calls.find(
      (c) => c.name === 'link' && c.ok && c.args.includes(`"${final}"`),
    );
    const first = link && fsyncsOf(t.calls, path.join(dir, sub)).find(
      (c) => c.start > link.end,
    );
    if (!first?.ok || first.end > mark.start) names.push(`${sub}/${id}.${ext}`);
  }
  return names;
}

describe('group commit', () => {
  describe('raw sync_dir()', () => {
    const dir = useTempDir();

    it('lets every call join a sync until its fsync is submitted', async () => {
      const { create_gate, sync_dir } = rawBinding();
      const gate = create_gate(1);
      const calls = [];
      for (let i = 0; i < 10; i++) calls.push(sync_dir(gate, dir()));
      // The first call's open runs; the fsync is not yet submitted, so
      // the nine others are covered by the same one.
      for (const pair of await Promise.all(calls)) {
        assert.deepEqual(pair, [0, 1]);
      }
    });

    it('makes a call after the fsync was submitted wait for the next', async () => {
      const { create_gate, read_files, sync_dir } = rawBinding();
      const gate = create_gate(1);
      const first = sync_dir(gate, dir());
      // The read is queued behind the directory's open, the fsync behind
      // the read; the read's promise settles after the fsync's turn.
      const second = read_files(gate, [__filename]).then(() =>
        sync_dir(gate, dir()),
      );
      assert.deepEqual(await first, [0, 1]);
      assert.deepEqual(await second, [1, 2]);
    });

    it('syncs two directories side by side', async () => {
      const { create_gate, sync_dir } = rawBinding();
      const gate = create_gate(2);
      const other = path.join(dir(), 'other');
      fs.mkdirSync(other);
      const pairs = await Promise.all([
        sync_dir(gate, dir()),
        sync_dir(gate, other),
      ]);
      assert.deepEqual(pairs.map(([a]) => a), [0, 0]);
      assert.deepEqual(pairs.map(([, g]) => g).sort(), [1, 2]);
    });

    it('fails every call it covers with the fs error', async () => {
      const { create_gate, sync_dir } = rawBinding();
      const gate = create_gate(3);
      const missing = path.join(dir(), 'missing');
      const errors = await Promise.all(
        [1, 2, 3].map(() => sync_dir(gate, missing).catch((err) => err)),
      );
      for (const err of errors) {
        assert.equal(err.code, 'ENOENT');
        assert.equal(err.syscall, 'open');
        assert.equal(err.path, missing);
      }
    });

    it('takes only a gate from create_gate()', () => {
      const { create_gate, run_plan, sync_dir } = rawBinding();
      for (const bad of [{}, null, 3, Buffer.alloc(8)]) {
        assert.throws(() => run_plan(bad, [], true), {
          code: 'ERR_INVALID_ARG_VALUE',
          message: 'gate must come from create_gate()',
        });
        assert.throws(() => sync_dir(bad, dir()), {
          code: 'ERR_INVALID_ARG_VALUE',
        });
      }
      for (const bad of [0, 1.5, -1, '3', undefined]) {
        assert.throws(() => create_gate(bad), {
          code: 'ERR_INVALID_ARG_VALUE',
        });
      }
    });
  });

  for (const io of BACKENDS) {
    describe(`DiskStorage#write() (${io})`, function () {
      this.timeout(120000);
      const dir = useTempDir();

      it('resolves 200 writes at once with one pool thread', async () => {
        const { DiskStorage, Envelope } = require('..');
        const store = new DiskStorage(
          path.join(dir(), 'env'),
          path.join(dir(), 'meta'),
          null,
          { io, maxInFlight: 1 },
        );
        const writes = [];
        for (let i = 0; i < WRITES; i++) {
          const env = new Envelope({ sender: 'a@x', recipients: ['b@x'] });
          env.parse(Buffer.from(`Subject: ${i}\r\n\r\nbody\r\n`));
          writes.push(store.write(env, i));
        }
        assert.equal(new Set(await Promise.all(writes)).size, WRITES);
        await store.close();
      });
    });

    describe(`DiskStorage#write() (${io}) under strace`, function () {
      this.timeout(120000);
      const dir = useTempDir();

      before(skipWithoutStrace);

      it(`syncs each directory fewer than ${WRITES / 4} times for ${WRITES} writes at the default options`, () => {
        const t = traceWrites(dir(), io, 'on');
        assert.deepEqual(t.result, { resolved: WRITES, io });
        assert.equal(t.stored, WRITES);
        assert.ok(t.env >= 1 && t.env < WRITES / 4, `env dir: ${t.env}`);
        assert.ok(t.meta >= 1 && t.meta < WRITES / 4, `meta dir: ${t.meta}`);
        checkCovered(t);
      });

      it('shares syncs with one pool thread too', () => {
        const t = traceWrites(dir(), io, 'on', 1);
        assert.deepEqual(t.result, { resolved: WRITES, io });
        assert.ok(t.env >= 1 && t.env < WRITES / 4, `env dir: ${t.env}`);
        assert.ok(t.meta >= 1 && t.meta < WRITES / 4, `meta dir: ${t.meta}`);
        checkCovered(t);
      });

      it('syncs each directory once per write when off', () => {
        const t = traceWrites(dir(), io, 'off');
        assert.deepEqual(t.result, { resolved: WRITES, io });
        assert.equal(t.stored, WRITES);
        assert.equal(t.env, WRITES);
        assert.equal(t.meta, WRITES);
        checkCovered(t);
      });
    });

    describe(`a failed directory fsync (${io})`, function () {
      this.timeout(120000);
      const dir = useTempDir();

      before(skipWithoutStrace);

      for (const group of ['on', 'off']) {
        it(`fails the plans it covered and a plan that unlinked before it (group commit ${group})`, () => {
          const d = path.join(dir(), 'd');
          fs.mkdirSync(d);
          fs.mkdirSync(path.join(dir(), 't'));
          fs.writeFileSync(path.join(d, 'x'), '');
          fs.writeFileSync(path.join(dir(), 't', 'y'), '');
          const t = traceFault(dir(), 1, 'fsync,unlink,openat',
            [PLANS, dir(), io, group]);

          // The scenario: the unlink in d ends before the failing fsync
          // starts; the last plan's own sync is a later, good fsync.
          const syncs = fsyncsOf(t.calls, d);
          const unlink = t.calls.find(
            (c) => c.name === 'unlink' && c.ok &&
              c.args.startsWith(`"${path.join(d, 'x')}"`),
          );
          assert.equal(syncs[0].ok, false);
          assert.ok(unlink.end < syncs[0].start);
          assert.ok(syncs.at(-1).ok && syncs.at(-1).start > syncs[0].end);

          const eio = { ok: false, code: 'EIO', syscall: 'fsync', path: d };
          // Alone, the two other sync-only plans sync for themselves and
          // changed no name: their good fsyncs are enough.
          const others = group === 'on' ? [eio, eio] : [{ ok: true }, { ok: true }];
          assert.deepEqual(t.out, [eio, ...others, eio]);
        });
      }
    });

    describe(`DiskStorage#write() (${io}) with a directory fsync failing`, function () {
      this.timeout(120000);
      const dir = useTempDir();

      before(skipWithoutStrace);

      // The first three fsyncs are the store's start and a first write
      // alone; the fourth and the sixth fall among staggered writes.
      for (const group of ['on', 'off']) {
        // The store's first call syncs the queue's parent directories
        // (the root, and meta/ for .quarantine) before its write's
        // syncs; the fsync counted is the 4th or 6th after those.
        const INIT_FSYNCS = 2;
        for (const after of [4, 6]) {
          const when = INIT_FSYNCS + after;
          it(`resolves no write whose name it may have lost (group commit ${group}, fsync ${after} after the store's first fails)`, () => {
            for (const sub of ['env', 'meta', 'tmp']) {
              fs.mkdirSync(path.join(dir(), sub));
            }
            const t = traceFault(dir(), when, 'fsync,link,openat',
              [FAULT_WRITER, dir(), io, group, String(WRITES), '2']);
            assert.equal(t.out.io, io);

            const failed = t.calls.filter((c) => c.name === 'fsync' && !c.ok);
            assert.equal(failed.length, 1);
            const resolved = t.out.results.filter((r) => r.ok).map((r) => r.id);
            const lost = resolved.flatMap((id) => notDurable(t, dir(), id));
            assert.deepEqual(lost, []);

            const rejected = t.out.results.filter((r) => !r.ok);
            assert.ok(rejected.length >= 1, 'no write failed');
            const dirs = ['env', 'meta'].map((sub) => path.join(dir(), sub));
            for (const r of rejected) {
              assert.deepEqual([r.code, r.syscall], ['EIO', 'fsync']);
              assert.ok(dirs.includes(r.path), r.path);
            }

            // A failed write leaves nothing; every resolved one is there.
            const ids = [t.out.first, ...resolved].sort();
            for (const sub of ['env', 'meta']) {
              const names = fs.readdirSync(path.join(dir(), sub))
                .filter((n) => n.endsWith(`.${sub}`));
              assert.deepEqual(names.sort(), ids.map((id) => `${id}.${sub}`));
            }
          });
        }
      }
    });

    describe(`the undo of a plan (${io})`, function () {
      this.timeout(120000);
      const dir = useTempDir();

      before(skipWithoutStrace);

      // As a write's: a kill between the two unlinks must not leave a
      // meta without its env.
      it('unlinks the name published last first when the last sync fails', () => {
        for (const sub of ['env', 'meta', 'tmp']) {
          fs.mkdirSync(path.join(dir(), sub));
        }
        const t = traceFault(dir(), 2, 'fsync,unlink,openat',
          [FAILED_WRITE, dir(), io]);
        assert.deepEqual(t.out, { ok: false, code: 'EIO', syscall: 'fsync' });

        const failed = t.calls.find((c) => c.name === 'fsync' && !c.ok);
        assert.ok(failed.args.includes(`<${path.join(dir(), 'meta')}>)`));
        const undone = t.calls
          .filter((c) => c.name === 'unlink' && c.start > failed.end)
          .map((c) => path.relative(dir(), /^"([^"]+)"/.exec(c.args)[1]));
        assert.deepEqual(undone, ['meta/m', 'env/e']);
        for (const sub of ['env', 'meta', 'tmp']) {
          assert.deepEqual(fs.readdirSync(path.join(dir(), sub)), []);
        }
      });
    });
  }
});
