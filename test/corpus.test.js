'use strict';
// Every message of the shared corpus goes into the queue and comes back,
// in a fresh process, with the same bytes, length and SHA-256.

const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const { BACKENDS, useTempDir, corpusDir, lib, openStore } = require('./helpers');

function readManifest() {
  const lines = fs
    .readFileSync(path.join(corpusDir, 'MANIFEST.tsv'), 'utf8')
    .split('\n')
    .filter(Boolean);
  const columns = lines.shift().split('\t');
  return lines.map((line) => {
    const cells = line.split('\t');
    return Object.fromEntries(columns.map((c, i) => [c, cells[i]]));
  });
}

for (const io of BACKENDS) {
  describe(`the shared corpus (${io} backend)`, function () {
    const tmp = useTempDir();

    before(function () {
      if (!corpusDir) {
        console.log('    (skipped: ../shared/corpus is not beside the repository)');
        this.skip();
      }
    });

    it('reads back all 50 messages byte for byte in a new process', async function () {
      const manifest = readManifest();
      assert.equal(manifest.length, 50);
      const { Envelope } = lib();
      const store = openStore(tmp(), io);
      const written = new Map();
      for (const entry of manifest) {
        const raw = fs.readFileSync(path.join(corpusDir, entry.file));
        const env = new Envelope({
          sender: 'sender@example.com',
          recipients: [`${entry.file}@example.com`, 'second@example.com'],
        });
        env.parse(raw);
        const id = await store.write(env, 1700000000);
        written.set(id, entry);
      }
      await store.close();

      const out = execFileSync(
        process.execPath,
        [path.join(__dirname, 'fixtures', 'read-back.js'), tmp(), io],
        { input: [...written.keys()].join('\n') },
      );
      const results = out.toString().trim().split('\n').map((l) => JSON.parse(l));
      assert.equal(results.length, 50);
      for (const r of results) {
        const entry = written.get(r.id);
        assert.equal(r.bytes, Number(entry.bytes), entry.file);
        assert.equal(r.sha256, entry.sha256, entry.file);
        assert.deepEqual(r.recipients, [`${entry.file}@example.com`, 'second@example.com']);
        assert.equal(r.attempts, 0);
      }
    });
  });
}
