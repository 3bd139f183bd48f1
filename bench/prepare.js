'use strict';

/**
 * Writes the queues that the load() and get() cells read, in a process of
 * its own: env and meta files made directly with the on-disk format (no
 * sync per file; one `sync` at the end), and a SQLite database with the
 * same messages. run.js keeps them between runs (they are read, never
 * changed, by the cells), so this runs once per queue and format.
 *
 * Usage: node bench/prepare.js DIR COUNT BODY_BYTES PARTS [JUNK]
 *   PARTS: comma-separated, of
 *     files   DIR/env, DIR/meta and DIR/ids.json, then DIR/files.done;
 *             with JUNK, that many entries that are not the queue's
 *             beside them, named in DIR/junk.json (see writeJunk)
 *     sqlite  DIR/queue.sqlite, then DIR/sqlite.done; made from the files
 *             when these are already there
 * bench/warm.js reads a queue back into the page cache before a cell.
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

const [dir, countArg, bytesArg, partsArg = 'files,sqlite', junkArg = '0'] =
  process.argv.slice(2);
const count = Number(countArg);
const bodyBytes = Number(bytesArg);
const junk = Number(junkArg);
const parts = new Set(partsArg.split(','));

const FILES_DONE = path.join(dir, 'files.done');
const SQLITE_DONE = path.join(dir, 'sqlite.done');
const SQLITE_FILE = path.join(dir, 'queue.sqlite');
const [envDir, metaDir] = queueDirs(dir);

/** Rows go in one transaction: the database is built, not measured. */
function openDb() {
  for (const suffix of ['', '-wal', '-shm']) {
    fs.rmSync(SQLITE_FILE + suffix, { force: true });
  }
  const db = openSqliteDb(SQLITE_FILE);
  const insert = db.prepare("INSERT INTO messages VALUES (?, ?, ?, 0, '[]')");
  db.exec('BEGIN');
  return {
    insert: (id, file, ts) => insert.run(id, file, ts),
    finish() {
      db.exec('COMMIT');
      db.close();
    },
  };
}

function timestampOf(now, i) {
  return now + (i % 3600);
}

function writeFiles(withSqlite) {
  const { Envelope } = loadLibrary();
  const { encodeEnvelope, encodeMeta, sizeOf } = loadFormat();
  const env = makeEnvelope(Envelope, bodyBytes);
  fs.mkdirSync(envDir, { recursive: true, mode: 0o700 });
  fs.mkdirSync(metaDir, { recursive: true, mode: 0o700 });
  const db = withSqlite ? openDb() : null;

  const ids = [];
  const now = Date.now() / 1000;
  for (let i = 0; i < count; i++) {
    const id = randomBytes(16).toString('hex');
    const bufs = encodeEnvelope(id, env);
    const timestamp = timestampOf(now, i);
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
    db?.insert(id, file, timestamp);
    ids.push(id);
  }
  db?.finish();
  fs.writeFileSync(path.join(dir, 'ids.json'), JSON.stringify(ids));
  if (junk > 0) writeJunk(ids);
  // Write back now, so that the cells measured next do not pay for it;
  // the markers go last, so that a run stopped halfway is seen as such.
  execFileSync('sync');
  fs.writeFileSync(FILES_DONE, JSON.stringify({ count, bodyBytes, now }));
  if (db) fs.writeFileSync(SQLITE_DONE, '');
}

/**
 * `junk` entries in the env and meta directories that load() must pass
 * over without yielding, moving or reading them: dot-files, stray tmp
 * names, names one character off the queue's own, and subdirectories
 * named as messages are. Their paths, relative to DIR, go in junk.json.
 */
function writeJunk(ids) {
  if (junk < 2) throw new Error('JUNK counts two subdirectories: at least 2');
  const hex = () => randomBytes(16).toString('hex');
  const kinds = [
    (i) => `.junk-${i}`,
    () => `${hex()}.meta.tmp`,
    () => `${hex()}.env.4242.0123abcd.tmp`,
    () => `${hex().toUpperCase()}.meta`,
    () => `${hex().slice(1)}.env`,
    (i) => `${ids[i % ids.length]}.meta.bak`,
    (i) => `${ids[i % ids.length]}.env~`,
  ];
  const names = [];
  // Two subdirectories with the names of messages, one in each directory.
  for (const [sub, suffix] of [
    [metaDir, '.meta'],
    [envDir, '.env'],
  ]) {
    const name = path.join(path.basename(sub), hex() + suffix);
    fs.mkdirSync(path.join(dir, name));
    names.push(name);
  }
  for (let i = names.length; i < junk; i++) {
    const sub = i % 2 ? envDir : metaDir;
    const name = path.join(path.basename(sub), kinds[i % kinds.length](i));
    fs.writeFileSync(path.join(dir, name), 'not a queue file\n');
    names.push(name);
  }
  fs.writeFileSync(path.join(dir, 'junk.json'), JSON.stringify(names));
}

/** The same rows as writeFiles() would have inserted, from its files. */
function writeSqliteFromFiles() {
  const { now } = JSON.parse(fs.readFileSync(FILES_DONE, 'utf8'));
  const ids = JSON.parse(fs.readFileSync(path.join(dir, 'ids.json'), 'utf8'));
  const db = openDb();
  ids.forEach((id, i) => {
    const file = fs.readFileSync(path.join(envDir, `${id}.env`));
    db.insert(id, file, timestampOf(now, i));
  });
  db.finish();
  execFileSync('sync');
  fs.writeFileSync(SQLITE_DONE, '');
}

const filesReady = fs.existsSync(FILES_DONE);
const sqliteReady = fs.existsSync(SQLITE_DONE);
const report = {};
if (parts.has('files') && !filesReady) {
  writeFiles(parts.has('sqlite'));
  report.wrote = count;
} else if (parts.has('sqlite') && !sqliteReady) {
  if (!filesReady) throw new Error(`${dir}: no files to make SQLite from`);
  writeSqliteFromFiles();
  report.wroteSqlite = count;
}
process.send?.({ type: 'result', result: report });
