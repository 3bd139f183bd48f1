'use strict';
// Writes prebuilds/SOURCES.sha256: the hash of the sources every binary in
// prebuilds/ was built from. test/prebuild.test.js recomputes it, so a
// change to native/ without `npm run prebuild` fails the tests instead of
// shipping a stale binary. Usage: node tools/prebuild-stamp.js [--check]

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const stampFile = path.join(root, 'prebuilds', 'SOURCES.sha256');

function sourcesHash() {
  const files = [
    'binding.gyp',
    ...fs
      .readdirSync(path.join(root, 'native'))
      .filter((f) => /\.(cc|h)$/.test(f))
      .sort()
      .map((f) => `native/${f}`),
  ];
  const hash = crypto.createHash('sha256');
  for (const file of files) {
    hash.update(`${file}\0`);
    hash.update(fs.readFileSync(path.join(root, file)));
    hash.update('\0');
  }
  return hash.digest('hex');
}

if (require.main === module) {
  if (process.argv.includes('--check')) {
    const stamped = fs.readFileSync(stampFile, 'utf8').trim();
    if (stamped !== sourcesHash()) {
      console.error('prebuilds/ is stale: run `npm run prebuild`');
      process.exit(1);
    }
  } else {
    fs.writeFileSync(stampFile, sourcesHash() + '\n');
  }
}

module.exports = { sourcesHash, stampFile };
