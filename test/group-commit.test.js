'use strict';
// Group commit: concurrent writes share directory fsyncs, and a write
// never counts a sync that was already running when it asked.

const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { BACKENDS, useTempDir } = require('./helpers');

const root = path.join(__dirname, '..');
const WRITER = path.join(__dirname, 'fixtures', 'group-commit-writer.js');
const WRITES = 200;

const hasStrace = spawnSync('strace', ['-V']).status === 0;

function rawBinding() {
  return require('node-gyp-build')(root);
}

// Runs the writer under strace and counts the fsyncs of each queue
// directory: `-y` names the directory behind each descriptor.
function traceWrites(dir, io, group, maxInFlight) {
  for (const sub of ['env', 'meta', 'tmp', 'meta/.quarantine']) {
    fs.mkdirSync(path.join(dir, sub), { recursive: true, mode: 0o700 });
  }
  const trace = path.join(dir, 'trace');
  const r = spawnSync(
    'strace',
    ['-f', '-qq', '-y', '-e', 'trace=fsync', '-o', trace,
      process.execPath, WRITER, dir, io, group, String(WRITES),
      String(maxInFlight)],
    { encoding: 'utf8', timeout: 120000 },
  );
  assert.equal(r.status, 0, r.stderr);
  const lines = fs.readFileSync(trace, 'utf8').split('\n');
  // A call another thread interrupts is split over two lines, of which
  // only the first names the descriptor.
  const count = (sub) =>
    lines.filter((l) => /fsync\(\d+</.test(l) &&
      l.includes(`<${path.join(dir, sub)}>`)).length;
  return {
    result: JSON.parse(r.stdout),
    env: count('env'),
    meta: count('meta'),
    stored: fs.readdirSync(path.join(dir, 'meta')).filter((n) =>
      n.endsWith('.meta'),
    ).length,
  };
}

describe('group commit', () => {
  describe('raw sync_dir()', () => {
    const dir = useTempDir();

    it('covers every call by a sync that started after it', async () => {
      const { sync_dir } = rawBinding();
      const calls = [];
      for (let i = 0; i < 10; i++) calls.push(sync_dir(dir()));
      const results = await Promise.all(calls);

      const [after, first] = results[0];
      assert.equal(first, after + 1);
      // The nine others asked while the first sync ran: none of them may
      // count it, and all of them share the one that starts next.
      for (const [a, g] of results.slice(1)) {
        assert.equal(a, first);
        assert.equal(g, first + 1);
      }
    });

    it('starts a sync at once when none of that directory runs', async () => {
      const { sync_dir } = rawBinding();
      const other = path.join(dir(), 'other');
      fs.mkdirSync(other);
      const [[a1, g1], [a2, g2]] = await Promise.all([
        sync_dir(dir()),
        sync_dir(other),
      ]);
      assert.equal(g1, a1 + 1);
      assert.equal(g2, a2 + 1);
      assert.equal(g2, g1 + 1);
    });

    it('fails every call it covers with the fs error', async () => {
      const { sync_dir } = rawBinding();
      const missing = path.join(dir(), 'missing');
      const errors = await Promise.all(
        [1, 2, 3].map(() => sync_dir(missing).catch((err) => err)),
      );
      for (const err of errors) {
        assert.equal(err.code, 'ENOENT');
        assert.equal(err.syscall, 'open');
        assert.equal(err.path, missing);
      }
    });
  });

  for (const io of BACKENDS) {
    describe(`DiskStorage#write() (${io}) under strace`, function () {
      this.timeout(120000);
      const dir = useTempDir();

      before(function () {
        if (!hasStrace) {
          console.log('    (skipped: strace is not installed)');
          this.skip();
        }
      });

      it(`syncs each directory fewer times than ${WRITES} writes`, () => {
        const t = traceWrites(dir(), io, 'on', 64);
        assert.deepEqual(t.result, { resolved: WRITES, io });
        assert.equal(t.stored, WRITES);
        assert.ok(t.env >= 1 && t.env < WRITES, `env dir: ${t.env} fsyncs`);
        assert.ok(t.meta >= 1 && t.meta < WRITES, `meta dir: ${t.meta}`);
      });

      it('syncs each directory once per write when off', () => {
        const t = traceWrites(dir(), io, 'off', 64);
        assert.deepEqual(t.result, { resolved: WRITES, io });
        assert.equal(t.stored, WRITES);
        assert.equal(t.env, WRITES);
        assert.equal(t.meta, WRITES);
      });
    });
  }
});
