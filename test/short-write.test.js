'use strict';
// A write call that takes fewer bytes than offered must be followed by
// one for the rest. A preloaded shim (fixtures/short-write-shim.c,
// compiled here) makes the first write to the message file take 15 bytes
// and libuv's own retry fail with EAGAIN, so the 15 reach the backend,
// which has to go on from byte 15 itself.

const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { BACKENDS, useTempDir } = require('./helpers');
const { messageBytes } = require('./fixtures/backend-common.js');

const FIXTURES = path.join(__dirname, 'fixtures');

describe('Backend#run() after a short write', () => {
  const dir = useTempDir();
  let shim = null;

  beforeEach(function () {
    if (process.platform !== 'linux') this.skip(); // the shim reads /proc
    shim = path.join(dir(), 'short-write-shim.so');
    const cc = spawnSync(
      'cc',
      [
        '-shared',
        '-fPIC',
        '-o',
        shim,
        path.join(FIXTURES, 'short-write-shim.c'),
        '-ldl',
      ],
      { encoding: 'utf8' },
    );
    if (cc.error && cc.error.code === 'ENOENT') {
      console.log('      (skipped: no C compiler `cc` to build the shim)');
      this.skip();
    }
    assert.equal(cc.status, 0, cc.stderr);
  });

  for (const name of BACKENDS) {
    it(`writes the rest after 15 bytes and EAGAIN (${name})`, () => {
      const spool = path.join(dir(), 'spool');
      fs.mkdirSync(spool);
      const r = spawnSync(
        process.execPath,
        [path.join(FIXTURES, 'short-write-child.js'), name, dir()],
        {
          encoding: 'utf8',
          timeout: 60000,
          env: { ...process.env, LD_PRELOAD: shim, SHORT_WRITE_DIR: spool },
        },
      );
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, /short-write shim: wrote 15\n/);
      assert.match(r.stderr, /short-write shim: EAGAIN\n/);
      assert.deepEqual(fs.readdirSync(spool), ['0.msg']);
      assert.deepEqual(
        fs.readFileSync(path.join(spool, '0.msg')),
        Buffer.concat(messageBytes(0)),
      );
    });
  }
});
