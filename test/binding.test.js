'use strict';
// The raw binding (build first: npx node-gyp rebuild && npx tsc -p .):
// what it does when its environment goes away or its arguments change
// while it reads them.

const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const path = require('node:path');
const { useTempDir } = require('./helpers');

const FIXTURES = path.join(__dirname, 'fixtures');

function runFixture(args) {
  return spawnSync(process.execPath, args, {
    encoding: 'utf8',
    timeout: 120000,
  });
}

describe('raw binding', () => {
  const dir = useTempDir();

  // The loop goes on running after worker.terminate(), and calls end in
  // it with JavaScript already stopped: their results must not be built.
  it('survives worker.terminate() at random moments, 20 times, while scans are in flight', () => {
    const r = runFixture([path.join(FIXTURES, 'scan-terminate.js'), dir(), '20']);
    assert.equal(r.signal, null, r.stderr);
    assert.equal(r.status, 0, r.stderr);
  });

  // Each array was copied into one sized for its length as first read,
  // then read up to its length as read again: out of bounds.
  it('reads each array only up to the length it had before a getter grew it', () => {
    const r = runFixture([path.join(FIXTURES, 'binding-growing.js'), dir()]);
    assert.equal(r.signal, null, r.stderr);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), {
      steps: 'step',
      bufs: 'first',
      read: ['contents'],
      stat: [8],
      scan: 3,
    });
  });
});
