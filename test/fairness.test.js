'use strict';
// The store shares libuv's thread pool with dns.lookup, fs and crypto.
// With every fdatasync slowed to 300 ms and 64 writes under way at once,
// a lookup and a file read started meanwhile still finish at once when
// the library holds at most its default share of pool threads (pool
// size - 1), however many stores the writes are spread over, and wait
// for the backlog when a store may take them all.

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

function latencies(dir, io, stores, maxInFlight) {
  const args = [dir, io, String(stores)];
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
      const capped = latencies(path.join(dir(), 'capped'), io, 1);
      const two = latencies(path.join(dir(), 'two'), io, 2);
      const uncapped = latencies(path.join(dir(), 'uncapped'), io, 1, 64);
      const worst = (t) => Math.max(t.lookup, t.readFile);
      console.log(
        `      capped ${JSON.stringify(capped)}, ` +
          `two stores ${JSON.stringify(two)}, ` +
          `uncapped ${JSON.stringify(uncapped)}`,
      );

      // At the default share, 3 of the pool's 4 threads, the fourth
      // stays free: both finish within two sync delays, in practice in
      // a few milliseconds. Stores that keep the default share one cap,
      // so 32 writes on each of two stores leave the fourth free too.
      assert.ok(worst(capped) < 2 * DELAY_MS, JSON.stringify(capped));
      assert.ok(worst(two) < 2 * DELAY_MS, JSON.stringify(two));

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
