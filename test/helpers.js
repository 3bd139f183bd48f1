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
