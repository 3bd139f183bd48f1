'use strict';
// Shared test fixtures: a fresh temp directory per test, the list of
// backends every suite runs against, and the shared corpus location.

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

/** Both I/O backends; every storage test runs once per entry. */
const BACKENDS = ['native', 'js'];

/** The real-message corpus beside the repository, or null when absent. */
const CORPUS_DIR = path.resolve(__dirname, '..', '..', 'shared', 'corpus');
const corpusDir = fs.existsSync(path.join(CORPUS_DIR, 'MANIFEST.tsv'))
  ? CORPUS_DIR
  : null;

/**
 * Registers beforeEach/afterEach hooks in the calling describe() that give
 * each test its own empty directory; returns a function reading its path.
 */
function useTempDir(prefix = 'slimta-test-') {
  let dir = null;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  });
  afterEach(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
    dir = null;
  });
  return () => dir;
}

module.exports = { BACKENDS, corpusDir, useTempDir };

/** Loads the compiled package (run `npm run prepare` or `npx tsc` first). */
function lib() {
  return require('..');
}

/** An envelope with a small message and the given fields. */
function makeEnvelope(fields = {}, raw) {
  const { Envelope } = lib();
  const env = new Envelope({
    sender: 'sender@example.com',
    recipients: ['rcpt1@example.com', 'rcpt2@example.com'],
    ...fields,
  });
  env.parse(raw ?? Buffer.from('Subject: test\r\n\r\nhello\r\n'));
  return env;
}

/**
 * Names in a directory, sorted, without dot-files (the default tmp and
 * quarantine directories); [] when it does not exist.
 */
function listDir(dir) {
  try {
    return fs
      .readdirSync(dir)
      .filter((name) => !name.startsWith('.'))
      .sort();
  } catch (err) {
    if (err.code === 'ENOENT') return [];
    throw err;
  }
}

/** The standard layout the CLI uses: <root>/env, <root>/meta, <root>/tmp. */
function openStore(root, io, options = {}) {
  const { DiskStorage } = lib();
  return new DiskStorage(
    path.join(root, 'env'),
    path.join(root, 'meta'),
    path.join(root, 'tmp'),
    { io, ...options },
  );
}

/** Expects `promise` to reject; returns the error. */
async function rejects(promise) {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  throw new Error('expected the promise to reject, it resolved');
}

module.exports.lib = lib;
module.exports.makeEnvelope = makeEnvelope;
module.exports.listDir = listDir;
module.exports.openStore = openStore;
module.exports.rejects = rejects;
