'use strict';

/**
 * Reads a prepared queue into the page cache right before a cell reads
 * it: the write cells before it push it out, and every contender of a
 * cell should meet the same warm cache. Kept apart from prepare.js, whose
 * text stamps the prepared queues, since this changes no file.
 *
 * Usage: node bench/warm.js DIR WORKLOAD
 *   Every file of DIR/meta is read, and DIR/queue.sqlite when there; the
 *   files of DIR/env are read too, or, for a load cell (which lstats the
 *   envelope files and never reads them), lstat'ed only.
 */

const fs = require('node:fs');
const path = require('node:path');

const { queueDirs } = require('./contenders');

const [dir, workload] = process.argv.slice(2);
const [envDir, metaDir] = queueDirs(dir);

function warm() {
  let files = 0;
  for (const sub of [envDir, metaDir]) {
    const touch =
      sub === envDir && workload === 'load'
        ? (file) => fs.lstatSync(file)
        : (file) => fs.readFileSync(file);
    // The stores that read the queue leave their .tmp directory there.
    for (const entry of fs.readdirSync(sub, { withFileTypes: true })) {
      if (!entry.isFile()) continue;
      touch(path.join(sub, entry.name));
      files++;
    }
  }
  const sqlite = path.join(dir, 'queue.sqlite');
  if (fs.existsSync(sqlite)) {
    // Read in pieces: the database may be larger than one Buffer.
    const fd = fs.openSync(sqlite, 'r');
    const buf = Buffer.allocUnsafe(1 << 20);
    while (fs.readSync(fd, buf, 0, buf.length, null) > 0);
    fs.closeSync(fd);
    files++;
  }
  return files;
}

process.send?.({ type: 'result', result: { warmed: warm() } });
