'use strict';

/**
 * The stores under test behind one small interface, so that a workload
 * runs the same calls on each. Every method returns a promise.
 */

const fs = require('node:fs');
const path = require('node:path');
const { randomBytes } = require('node:crypto');

const dist = path.join(__dirname, '..', 'dist');

/** What each contender is, as the table and the JSON name it. */
const CONTENDERS = {
  native: {
    title: 'this library, native addon, groupCommit: true',
    options: { io: 'native', groupCommit: true },
  },
  'native-nogc': {
    title: 'this library, native addon, groupCommit: false',
    options: { io: 'native', groupCommit: false },
  },
  js: {
    title: "this library, pure-JS backend (io: 'js')",
    options: { io: 'js' },
  },
  sqlite: {
    title:
      'better-sqlite3, WAL, synchronous=FULL, one transaction per call',
  },
  ceiling: {
    title: 'C program, the same system calls, one pthread per client',
  },
};

function loadLibrary() {
  try {
    return require(path.join(dist, 'index.js'));
  } catch (err) {
    throw new Error(
      `cannot load the built library (${err.message}); ` +
        'run `npm run build` first',
    );
  }
}

function loadFormat() {
  return require(path.join(dist, 'format.js'));
}

/** The queue layout of every library cell: env/ and meta/ side by side. */
function queueDirs(dir) {
  return [path.join(dir, 'env'), path.join(dir, 'meta')];
}

function openLibrary(name, dir) {
  const { DiskStorage } = loadLibrary();
  const [envDir, metaDir] = queueDirs(dir);
  const store = new DiskStorage(
    envDir,
    metaDir,
    null,
    CONTENDERS[name].options,
  );
  return {
    io: store.io,
    write: (env, ts) => store.write(env, ts),
    setTimestamp: (id, ts) => store.setTimestamp(id, ts),
    incrementAttempts: (id) => store.incrementAttempts(id),
    setRecipientsDelivered: (id, rcpts) =>
      store.setRecipientsDelivered(id, rcpts),
    get: (id) => store.get(id),
    remove: (id) => store.remove(id),
    async load(onEach) {
      for await (const [ts, id] of store.load()) onEach(ts, id);
    },
    close: () => store.close(),
  };
}

const SCHEMA =
  'CREATE TABLE IF NOT EXISTS messages (' +
  'id TEXT PRIMARY KEY, env BLOB, ts REAL, attempts INT, delivered TEXT)';

function openSqliteDb(file) {
  const Database = require('better-sqlite3');
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.exec(SCHEMA);
  return db;
}

/**
 * better-sqlite3 runs each statement synchronously on the main thread.
 * Each call first gives the event loop a turn, so that N clients
 * interleave one statement at a time, as N connections to a server
 * would be served by one thread; nothing is batched across calls.
 */
function turn() {
  return new Promise((resolve) => setImmediate(resolve));
}

function openSqlite(dir) {
  const { encodeEnvelope, decodeEnvelope } = loadFormat();
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const db = openSqliteDb(path.join(dir, 'queue.sqlite'));

  const insert = db.prepare(
    "INSERT INTO messages VALUES (?, ?, ?, 0, '[]')",
  );
  const setTs = db.prepare('UPDATE messages SET ts = ? WHERE id = ?');
  const bump = db.prepare(
    'UPDATE messages SET attempts = attempts + 1 WHERE id = ? ' +
      'RETURNING attempts',
  );
  const readDelivered = db.prepare(
    'SELECT delivered FROM messages WHERE id = ?',
  );
  const setDelivered = db.prepare(
    'UPDATE messages SET delivered = ? WHERE id = ?',
  );
  const select = db.prepare(
    'SELECT env, attempts, delivered FROM messages WHERE id = ?',
  );
  const del = db.prepare('DELETE FROM messages WHERE id = ?');
  const all = db.prepare('SELECT id, ts FROM messages');

  const markDelivered = db.transaction((id, rcpts) => {
    const row = readDelivered.get(id);
    if (!row) throw new Error(`no message ${id}`);
    const set = new Set(JSON.parse(row.delivered));
    for (const i of rcpts) set.add(i);
    const list = [...set].sort((a, b) => a - b);
    setDelivered.run(JSON.stringify(list), id);
  });

  return {
    io: 'sqlite',
    async write(env, ts) {
      await turn();
      // The same bytes as an env file: encoding costs the same here.
      const id = randomBytes(16).toString('hex');
      insert.run(id, Buffer.concat(encodeEnvelope(id, env)), ts);
      return id;
    },
    async setTimestamp(id, ts) {
      await turn();
      setTs.run(ts, id);
    },
    async incrementAttempts(id) {
      await turn();
      return bump.get(id).attempts;
    },
    async setRecipientsDelivered(id, rcpts) {
      await turn();
      markDelivered(id, rcpts);
    },
    async get(id) {
      await turn();
      const row = select.get(id);
      if (!row) throw new Error(`no message ${id}`);
      const env = decodeEnvelope(row.env, id, 'queue.sqlite');
      const delivered = new Set(JSON.parse(row.delivered));
      env.recipients = env.recipients.filter((_, i) => !delivered.has(i));
      return [env, row.attempts];
    },
    async remove(id) {
      await turn();
      del.run(id);
    },
    async load(onEach) {
      for (const row of all.iterate()) onEach(row.ts, row.id);
    },
    async close() {
      db.close();
    },
  };
}

function openStore(name, dir) {
  if (name === 'sqlite') return openSqlite(dir);
  if (CONTENDERS[name]?.options) return openLibrary(name, dir);
  throw new Error(`no store for contender ${name}`);
}

module.exports = {
  CONTENDERS,
  SCHEMA,
  loadLibrary,
  loadFormat,
  openSqliteDb,
  openStore,
  queueDirs,
};
