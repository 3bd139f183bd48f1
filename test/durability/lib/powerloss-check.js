'use strict';
// Puts one modelled crash state on disk, opens the stores on it the way
// a restarted process would, and checks every acknowledged call against
// what the store now says.

const fs = require('node:fs');
const path = require('node:path');

const { DiskStorage } = require('../../..');

/**
 * The stores the workload uses, as directories under its root: env,
 * meta, tmp (null: the default `<env>/.tmp`).
 */
const STORES = {
  a: ['env', 'meta', 'tmp'],
  b: ['one', 'one', null],
};

function openStores(root, io, options = {}) {
  const out = {};
  for (const [name, [env, meta, tmp]] of Object.entries(STORES)) {
    out[name] = new DiskStorage(
      path.join(root, env),
      path.join(root, meta),
      tmp === null ? null : path.join(root, tmp),
      { io, ...options },
    );
  }
  return out;
}

/** Writes a modelled tree under `dir`, which must not exist. */
function writeTree(dir, files) {
  fs.mkdirSync(dir, { mode: 0o700 });
  const placed = new Map();
  for (const [r, data, ino] of files) {
    const p = path.join(dir, r);
    if (data === null) {
      fs.mkdirSync(p, { mode: 0o700 });
    } else if (placed.has(ino)) {
      fs.linkSync(placed.get(ino), p);
    } else {
      fs.writeFileSync(p, data, { mode: 0o600 });
      placed.set(ino, p);
    }
  }
}

/**
 * What the workload promised, from its JSON log: per message id, the
 * calls on it in order, each with the version of the message after it.
 */
function expectations(log) {
  const byId = new Map();
  for (const entry of log) {
    if (!byId.has(entry.id)) byId.set(entry.id, []);
    byId.get(entry.id).push(entry);
  }
  return byId;
}

function sameVersion(found, version, envelope) {
  const recipients = envelope.recipients.filter(
    (_, i) => !version.delivered.includes(i),
  );
  return (
    Object.is(found.timestamp, version.timestamp) &&
    found.attempts === version.attempts &&
    JSON.stringify(found.recipients) === JSON.stringify(recipients)
  );
}

/**
 * Checks one crash state. `acked` holds the seq numbers (as strings) of
 * the calls acknowledged before the cut. Returns
 * `{ violations: [text], quarantined, acknowledged }`: the quarantine
 * reports of load(), and how many acknowledged calls were checked.
 */
async function checkState(dir, io, state, byId) {
  writeTree(dir, state.files);
  const violations = [];
  let quarantined = 0;
  let acknowledged = 0;
  const stores = openStores(dir, io, { graceMs: 0 });

  try {
    for (const [name, store] of Object.entries(stores)) {
      store.on('quarantine', () => quarantined++);
      const loaded = new Map();
      try {
        for await (const [timestamp, id] of store.load()) {
          loaded.set(id, timestamp);
        }
      } catch (err) {
        violations.push(`${name}: load() threw ${err.code}: ${err.message}`);
        continue;
      }

      for (const id of loaded.keys()) {
        if (!byId.has(id) || byId.get(id)[0].store !== name) {
          violations.push(`${name}: load() yielded unknown message ${id}`);
        }
      }

      for (const [id, calls] of byId) {
        if (calls[0].store !== name) continue;
        const last = calls.findLastIndex((c) => state.acked.has(String(c.seq)));
        const written = calls[0];
        if (last < 0 && !loaded.has(id)) continue;
        acknowledged += last + 1;

        // What may be found: the version of the last acknowledged call or
        // of any later one, or nothing when a later call is a removal.
        const later = calls.slice(Math.max(last, 0));
        const mayBeGone = later.some((c) => c.op === 'remove');
        const versions = later.filter((c) => c.op !== 'remove');

        if (!loaded.has(id)) {
          if (!mayBeGone) {
            const { op, seq } = calls[last];
            violations.push(
              `${name}: acknowledged ${op} ${id} (seq ${seq}) is lost: ` +
                'load() does not yield it',
            );
          }
          continue;
        }
        if (versions.length === 0) {
          violations.push(
            `${name}: removed ${id} (seq ${calls[last].seq}) is back`,
          );
          continue;
        }

        let envelope;
        let attempts;
        try {
          [envelope, attempts] = await store.get(id);
        } catch (err) {
          violations.push(
            `${name}: load() yielded ${id} but get() threw ${err.code}`,
          );
          continue;
        }
        const want = written.envelope;
        const [headers, body] = envelope.flatten();
        const raw = Buffer.concat([headers, body]).toString('base64');
        if (envelope.sender !== want.sender || raw !== want.raw) {
          violations.push(`${name}: ${id} does not read back byte for byte`);
        }
        const found = {
          timestamp: loaded.get(id),
          attempts,
          recipients: envelope.recipients,
        };
        if (!versions.some((c) => sameVersion(found, c.version, want))) {
          violations.push(
            `${name}: ${id} reads as ${JSON.stringify(found)}, older than ` +
              `acknowledged seq ${last < 0 ? '-' : calls[last].seq}`,
          );
        }
      }
    }
  } finally {
    for (const store of Object.values(stores)) {
      await store.close().catch(() => undefined);
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return { violations, quarantined, acknowledged };
}

module.exports = { STORES, checkState, expectations, openStores, writeTree };
