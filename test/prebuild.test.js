'use strict';
// The shipped prebuilt binary: it must load on its own (node-gyp-build
// prefers build/ and would hide a broken prebuild), work, and be built
// from the sources in this commit.

const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const { useTempDir } = require('./helpers');
const { sourcesHash, stampFile } = require('../tools/prebuild-stamp');

const root = path.join(__dirname, '..');
const platformDir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);

describe('prebuilds/', function () {
  this.timeout(60000);
  const tmp = useTempDir();

  before(function () {
    if (!fs.existsSync(platformDir)) {
      console.log(`    (skipped: no prebuild for ${process.platform}-${process.arch})`);
      this.skip();
    }
  });

  it('was built from the native sources of this commit', function () {
    const stamped = fs.readFileSync(stampFile, 'utf8').trim();
    assert.equal(stamped, sourcesHash(), 'prebuilds/ is stale: run `npm run prebuild`');
  });

  it('loads without build/ and stores and reads a message', function () {
    const script = `
      const path = require('node:path');
      const { DiskStorage, Envelope } = require(${JSON.stringify(root)});
      const q = process.argv[1];
      process.on('warning', (w) => { console.error(w.message); process.exit(3); });
      (async () => {
        const s = new DiskStorage(path.join(q, 'env'), path.join(q, 'meta'), path.join(q, 'tmp'));
        const e = new Envelope({ sender: 'a@x', recipients: ['b@y'] });
        e.parse(Buffer.from('Subject: hi\\r\\n\\r\\nbody\\r\\n'));
        const id = await s.write(e, 7);
        const [back] = await s.get(id);
        await s.remove(id);
        await s.close();
        console.log(s.io, Buffer.concat(back.flatten()).toString('base64'));
      })().catch((err) => { console.error(err); process.exit(1); });
    `;
    const r = spawnSync(process.execPath, ['-e', script, tmp()], {
      env: { ...process.env, PREBUILDS_ONLY: '1' },
      encoding: 'utf8',
    });
    assert.equal(r.status, 0, r.stderr);
    const [io, b64] = r.stdout.trim().split(' ');
    assert.equal(io, 'native');
    assert.equal(Buffer.from(b64, 'base64').toString(), 'Subject: hi\r\n\r\nbody\r\n');
  });
});
