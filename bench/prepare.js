'use strict';

/**
 * Writes the queues that the load() and get() cells read, once per run,
 * in a process of its own: env and meta files made directly with the
 * on-disk format (no sync per file; one `sync` at the end), and a SQLite
 * database with the same messages.
 *
 * Usage: node bench/prepare.js DIR COUNT BODY_BYTES
 * Leaves DIR/env, DIR/meta, DIR/ids.json and DIR/queue.sqlite.
 */

const fs = require('node:fs');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { randomBytes } = require('node:crypto');

const {
  loadFormat,
  loadLibrary,
  openSqliteDb,
  queueDirs,
} = require('./contenders');
const { makeEnvelope } = require('./message');

const [dir, countArg, bytesArg] = process.argv.slice(2);
const count = Number(countArg);
const bodyBytes = Number(bytesArg);

const { Envelope } = loadLibrary();
const { encodeEnvelope, encodeMeta, sizeOf } = loadFormat();
const env = makeEnvelope(Envelope, bodyBytes);
const [envDir, metaDir] = queueDirs(dir);
fs.mkdirSync(envDir, { recursive: true, mode: 0o700 });
fs.mkdirSync(metaDir, { recursive: true, mode: 0o700 });

let db = null;
try {
  db = openSqliteDb(path.join(dir, 'queue.sqlite'));
} catch (err) {
  process.stderr.write(`prepare: no SQLite queue: ${err.message}\n`);
}
const insert = db?.prepare("INSERT INTO messages VALUES (?, ?, ?, 0, '[]')");

const ids = [];
const now = Date.now() / 1000;
db?.exec('BEGIN');
for (let i = 0; i < count; i++) {
  const id = randomBytes(16).toString('hex');
  const bufs = encodeEnvelope(id, env);
  const timestamp = now + (i % 3600);
  const meta = encodeMeta({
    id,
    timestamp,
    attempts: 0,
    recipientCount: env.recipients.length,
    delivered: [],
    envSize: sizeOf(bufs),
  });
  const file = Buffer.concat(bufs);
  fs.writeFileSync(path.join(envDir, `${id}.env`), file);
  fs.writeFileSync(path.join(metaDir, `${id}.meta`), meta);
  insert?.run(id, file, timestamp);
  ids.push(id);
}
db?.exec('COMMIT');
db?.close();

fs.writeFileSync(path.join(dir, 'ids.json'), JSON.stringify(ids));

// Write back now, so that the cells measured next do not pay for it.
execFileSync('sync');
process.send?.({ type: 'result', result: { count } });
