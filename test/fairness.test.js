'use strict';
// The store shares libuv's thread pool with dns.lookup, fs and crypto.
// With every fdatasync slowed to 300 ms and 64 writes under way at once,
// a lookup and a file read started meanwhile still finish at once when
// the store holds at most maxInFlight pool threads (default: pool size
// - 1), and wait for the backlog when it may take them all.

const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const path = require('node:path');
const { BACKENDS, useTempDir } = require('./helpers');

const CHILD = path.join(__dirname, 'fixtures', 'fairness-child.js');
const DELAY_MS = 300;

const canInject =
  spawnSync('strace', [
    '-qq', '-o', '/dev/null', '-e', 'trace=fdatasync',
    '-e', 'inject=fdatasync:delay_enter=1', 'true',
  ]).status === 0;

function latencies(dir, io, maxInFlight) {
  const args = [dir, io];
  if (maxInFlight !== undefined) args.push(String(maxInFlight));
  const r = spawnSync(
    'strace',
    ['-f', '-qq', '-o', '/dev/null', '-e', 'trace=fdatasync',
      '-e', `inject=fdatasync:delay_enter=${DELAY_MS * 1000}`,
      process.execPath, CHILD, ...args],
    {
      encoding: 'utf8',
      timeout: 120000,
      env: { ...process.env, UV_THREADPOOL_SIZE: '4' },
    },
  );
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout);
}

for (const io of BACKENDS) {
  describe(`DiskStorage fairness to the thread pool (${io})`, function () {
    this.timeout(120000);
    const dir = useTempDir();

    before(function () {
      if (!canInject) {
        console.log('    (skipped: strace cannot inject delays here)');
        this.skip();
      }
    });

    it('lets a lookup and a read pass 64 slow writes', () => {
      const capped = latencies(path.join(dir(), 'capped'), io);
      const uncapped = latencies(path.join(dir(), 'uncapped'), io, 64);
      const worst = (t) => Math.max(t.lookup, t.readFile);
      console.log(
        `      capped ${JSON.stringify(capped)}, ` +
          `uncapped ${JSON.stringify(uncapped)}`,
      );

      // At the default share, 3 of the pool's 4 threads, the fourth
      // stays free: both finish within about two sync delays at most, in
      // practice in a few milliseconds.
      assert.ok(worst(capped) < 3 * DELAY_MS, JSON.stringify(capped));

      // Uncapped, they queue behind the syncs of 64 plans. The cap, not
      // the speed of this machine, makes the difference.
      assert.ok(worst(uncapped) > 3 * DELAY_MS, JSON.stringify(uncapped));
      assert.ok(
        worst(uncapped) > 5 * worst(capped) + DELAY_MS,
        `capped ${JSON.stringify(capped)}, ` +
          `uncapped ${JSON.stringify(uncapped)}`,
      );
    });
  });
}
