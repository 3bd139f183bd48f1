'use strict';
// The raw binding (build first: npx node-gyp rebuild && npx tsc -p .):
// what it does when its environment goes away or its arguments change
// while it reads them, and why DiskStorage need not care what its
// callers do with their Buffers meanwhile.

const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const crypto = require('node:crypto');
const path = require('node:path');
const { BACKENDS, lib, openStore, useTempDir } = require('./helpers');

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

// The addon writes from a Buffer's memory in place and can keep the
// Buffer alive, but not its memory: an ArrayBuffer transferred away and
// collected while a raw run_plan() writes from it frees that memory. So
// DiskStorage hands the addon only copies of its own (see format.ts).
for (const io of BACKENDS) {
  describe(`DiskStorage#write() (${io}) when the caller transfers its Buffers`, () => {
    const dir = useTempDir();

    it('still stores the bytes they held when write() was called', async () => {
      const { Envelope } = lib();
      const store = openStore(dir(), io);
      try {
        // Memory of their own, not the shared pool's, so transferable.
        const text = Buffer.from('Subject: transferred\r\n\r\n', 'latin1');
        const header = Buffer.allocUnsafeSlow(text.length);
        text.copy(header);
        const body = crypto.randomBytes(4 * 1024 * 1024);
        const expected = [Buffer.from(header), Buffer.from(body)];
        const envelope = Envelope.fromParts(header, body, {
          sender: 'a@example.com',
          recipients: ['b@example.com'],
        });

        const written = store.write(envelope, 1700000000);
        for (const buf of [header, body]) {
          structuredClone(buf.buffer, { transfer: [buf.buffer] });
          assert.equal(buf.length, 0, 'the ArrayBuffer was not detached');
        }
        // Collects the transferred memory (run with --expose-gc).
        for (let i = 0; i < 10; i++) {
          global.gc?.();
          Buffer.alloc(4 * 1024 * 1024, 0xee);
        }

        const [stored] = await store.get(await written);
        assert.deepEqual(stored.flatten(), expected);
      } finally {
        await store.close();
      }
    });
  });
}
