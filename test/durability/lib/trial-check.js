'use strict';
// What a crash trial may leave behind, and the check of a queue against
// it. The workload child logs each call before making it (B) and once it
// resolved (A). Calls on one id run in call order, one after the other,
// so after a kill the state of a message is that of some prefix of its
// calls: at least every call up to the last acknowledged one, at most
// every call begun.
//
// The check either recovers the queue in place (load() with no grace
// period: tmp files removed, envelopes without a meta quarantined) and
// then requires it clean, or reads it with a read-only store and leaves
// what the kill left for the next trial's child to recover. Envelopes
// without a meta that earlier trials left (`carried`) may then still be
// there, or have been quarantined by the child.

const fs = require('node:fs');
const path = require('node:path');

const { openStore } = require('../../helpers');
const { namesIn } = require('./trial-fs');
const {
  rawFor,
  recipientsFor,
  timestampFor,
  numberOf,
  sha256,
} = require('./trial-message');

const ID = /^[0-9a-f]{32}$/;

function parseLog(text) {
  const lines = text.split('\n');
  lines.pop(); // the part after the last newline is not a whole line
  const begun = new Map();
  const acked = new Map();
  const failed = new Map();
  const quarantined = [];
  let ready = false;
  for (const line of lines) {
    const [tag, seqText, ...rest] = line.split(' ');
    const seq = Number(seqText);
    if (tag === 'ready') ready = true;
    else if (tag === 'B') begun.set(seq, parseCall(rest));
    else if (tag === 'A') acked.set(seq, rest[0]);
    else if (tag === 'E') failed.set(seq, rest.join(' '));
    else if (tag === 'Q') quarantined.push({ id: seqText, reason: rest.join(' ') });
    else throw new Error(`bad log line ${JSON.stringify(line)}`);
  }
  return { ready, begun, acked, failed, quarantined };
}

function parseCall([kind, a, b]) {
  switch (kind) {
    case 'W':
      return { kind, n: Number(a) };
    case 'T':
      return { kind, id: a, timestamp: Number(b) };
    case 'D':
      return { kind, id: a, indexes: b.split(',').map(Number) };
    default:
      return { kind, id: a };
  }
}

/** The state after `call`, or null once removed. */
function apply(state, call) {
  if (state === null) return null;
  switch (call.kind) {
    case 'T':
      return { ...state, timestamp: call.timestamp };
    case 'I':
      return { ...state, attempts: state.attempts + 1 };
    case 'D': {
      const delivered = new Set([...state.delivered, ...call.indexes]);
      return { ...state, delivered: [...delivered].sort((x, y) => x - y) };
    }
    case 'R':
      return null;
  }
  throw new Error(`unknown call ${call.kind}`);
}

function sameState(a, b) {
  return (
    Object.is(a.timestamp, b.timestamp) &&
    a.attempts === b.attempts &&
    a.delivered.length === b.delivered.length &&
    a.delivered.every((x, i) => x === b.delivered[i])
  );
}

function show(state) {
  return state === null
    ? 'removed'
    : `ts=${state.timestamp} attempts=${state.attempts} ` +
        `delivered=[${state.delivered}]`;
}

const shaOf = new Map();
function expectedSha(n) {
  if (!shaOf.has(n)) shaOf.set(n, sha256(rawFor(n)));
  return shaOf.get(n);
}

function initialState(n) {
  return { n, timestamp: timestampFor(n), attempts: 0, delivered: [] };
}

/**
 * Checks a queue after a trial. `before` maps id to the state every
 * message had at the start (with its n); `carried` holds the ids of the
 * envelopes without a meta that earlier trials left; `inPlace` recovers
 * the queue (else it is only read). Returns the violations found, counts,
 * the state the queue is in now, and the envelopes without a meta it
 * still holds, for the next trial.
 */
async function checkTrial({ root, io, before, logText, inPlace = true, carried = new Set() }) {
  const { decodeMeta, decodeEnvelope } = require('../../../dist/format');
  const violations = [];
  const counts = {
    acknowledged: 0,
    lost: 0,
    landedInFlight: 0,
    tmpLeftovers: 0,
    orphansQuarantined: 0,
    recoveredByChild: 0,
    loads: 0,
    spuriousQuarantines: 0,
  };
  const log = parseLog(logText);
  for (const [seq, why] of log.failed) {
    violations.push(`call ${seq} ${JSON.stringify(log.begun.get(seq))} failed: ${why}`);
  }
  counts.acknowledged = log.acked.size;

  // Known messages: the ones at the start and acknowledged writes.
  const known = new Map(before);
  const inFlightWrites = new Set();
  const calls = new Map();
  for (const [seq, call] of log.begun) {
    if (call.kind === 'L') {
      if (log.acked.has(seq)) counts.loads++;
      continue;
    }
    if (call.kind === 'W') {
      if (log.acked.has(seq)) {
        const id = log.acked.get(seq);
        known.set(id, initialState(call.n));
      } else {
        inFlightWrites.add(call.n);
      }
      continue;
    }
    if (!calls.has(call.id)) calls.set(call.id, []);
    calls.get(call.id).push({ seq, ...call });
  }
  for (const list of calls.values()) list.sort((a, b) => a.seq - b.seq);

  // No partial file outside tmp: every env and meta file decodes.
  const dir = (name) => path.join(root, name);
  for (const [sub, suffix, decode] of [
    ['meta', '.meta', decodeMeta],
    ['env', '.env', decodeEnvelope],
  ]) {
    for (const name of namesIn(dir(sub))) {
      if (!name.endsWith(suffix)) continue;
      const id = name.slice(0, -suffix.length);
      const file = path.join(dir(sub), name);
      try {
        decode(fs.readFileSync(file), id, file);
      } catch (err) {
        violations.push(`${sub}/${name} does not decode: ${err.message}`);
      }
    }
  }
  counts.tmpLeftovers = namesIn(dir('tmp')).length;

  const store = openStore(root, io, { graceMs: 0, readOnly: !inPlace });
  const reports = [];
  store.on('quarantine', (r) => reports.push(r));
  const loaded = new Map();
  try {
    for await (const [timestamp, id] of store.load()) {
      if (loaded.has(id)) violations.push(`load() yielded ${id} twice`);
      loaded.set(id, timestamp);
    }
  } catch (err) {
    violations.push(`load() threw ${err.stack}`);
  }

  const after = new Map();
  const readState = async (id, n) => {
    const metaPath = path.join(dir('meta'), `${id}.meta`);
    const meta = decodeMeta(fs.readFileSync(metaPath), id, metaPath);
    const [envelope, attempts] = await store.get(id);
    const raw = Buffer.concat(envelope.flatten());
    if (n === undefined) n = numberOf(envelope);
    if (n === null || sha256(raw) !== expectedSha(n)) {
      violations.push(`${id}: stored bytes are not those of message ${n}`);
    }
    const want = recipientsFor(n).filter((_, i) => !meta.delivered.includes(i));
    if (JSON.stringify(envelope.recipients) !== JSON.stringify(want)) {
      violations.push(`${id}: recipients ${envelope.recipients} != ${want}`);
    }
    if (attempts !== meta.attempts) {
      violations.push(`${id}: get() attempts ${attempts} != meta ${meta.attempts}`);
    }
    if (!Object.is(loaded.get(id), meta.timestamp)) {
      violations.push(`${id}: load() timestamp ${loaded.get(id)} != meta ${meta.timestamp}`);
    }
    return { n, timestamp: meta.timestamp, attempts: meta.attempts, delivered: meta.delivered };
  };

  for (const [id, base] of known) {
    const list = calls.get(id) ?? [];
    let lastAck = -1;
    list.forEach((c, i) => {
      if (log.acked.has(c.seq)) lastAck = i;
    });
    // Every prefix from the last acknowledged call to the last begun one.
    const possible = [];
    let state = base;
    for (let i = 0; i <= list.length; i++) {
      if (i > lastAck) possible.push(state);
      if (i < list.length) {
        state = apply(state, list[i]);
        if (list[i].kind === 'I' && log.acked.has(list[i].seq) && state) {
          const said = Number(log.acked.get(list[i].seq));
          if (said !== state.attempts) {
            violations.push(`${id}: incrementAttempts() said ${said}, expected ${state.attempts}`);
          }
        }
      }
    }
    if (!loaded.has(id)) {
      if (!possible.includes(null)) {
        counts.lost++;
        violations.push(`${id} (message ${base.n}) is gone; it may only be ${possible.map(show).join(' | ')}`);
      }
      continue;
    }
    const seen = await readState(id, base.n);
    after.set(id, seen);
    if (!possible.some((p) => p !== null && sameState(p, seen))) {
      counts.lost++;
      violations.push(`${id} (message ${base.n}) is ${show(seen)}; it may only be ${possible.map(show).join(' | ')}`);
    }
  }

  // Messages nobody acknowledged: writes in flight at the kill.
  const landed = new Set();
  for (const id of loaded.keys()) {
    if (known.has(id)) continue;
    const seen = await readState(id, undefined);
    after.set(id, seen);
    counts.landedInFlight++;
    if (!inFlightWrites.has(seen.n) || landed.has(seen.n)) {
      violations.push(`${id} holds message ${seen.n}, which no write in flight was writing`);
    }
    landed.add(seen.n);
    if (!sameState(seen, initialState(seen.n))) {
      violations.push(`${id}: unacknowledged write is ${show(seen)}, not as written`);
    }
  }

  // The only damage a kill may leave is an envelope without its meta:
  // a write stopped between its two links, or a remove between its two
  // unlinks.
  const removing = new Set(
    [...log.begun].filter(([seq, c]) => c.kind === 'R' && !log.acked.has(seq)).map(([, c]) => c.id),
  );
  const orphans = new Set();
  for (const r of reports) {
    // In place the envelope was moved; a read-only store moves nothing.
    const moved = r.moved.map(([from]) => path.basename(from));
    const where = inPlace ? r.moved[0]?.[1] : path.join(dir('env'), `${r.id}.env`);
    const orphan = r.reason === 'meta file is missing' &&
      (inPlace ? moved.length === 1 && moved[0] === `${r.id}.env` : moved.length === 0);
    let fromWrite = false;
    if (orphan && !known.has(r.id) && !carried.has(r.id)) {
      const n = numberOf(decodeEnvelope(fs.readFileSync(where), r.id, where));
      fromWrite = inFlightWrites.has(n) && !landed.has(n);
    }
    if (orphan && (removing.has(r.id) || fromWrite || carried.has(r.id))) {
      if (!carried.has(r.id)) counts.orphansQuarantined++;
      orphans.add(r.id);
    } else {
      violations.push(`unexpected quarantine of ${r.id}: ${r.reason}`);
    }
  }

  // What the child's load() set aside: only envelopes without a meta
  // that earlier kills left. One of a message this child was removing
  // is not damage but a race of load() with remove() in one store (a
  // library bug, counted apart; nothing acknowledged is lost by it).
  const removedHere = new Set(
    [...log.begun.values()].filter((c) => c.kind === 'R').map((c) => c.id),
  );
  for (const q of log.quarantined) {
    if (q.reason === 'meta file is missing' && carried.has(q.id)) {
      counts.recoveredByChild++;
    } else if (q.reason === 'meta file is missing' && removedHere.has(q.id)) {
      counts.spuriousQuarantines++;
    } else {
      violations.push(`the child's load() quarantined ${q.id}: ${q.reason}`);
    }
  }

  // Nothing is left over after recovery: no tmp file, no file without its
  // partner. Read-only, the envelopes without a meta stay (for the next
  // child's load()), and so do tmp files.
  const tmpLeft = namesIn(dir('tmp'));
  if (inPlace && tmpLeft.length) violations.push(`tmp files left after load(): ${tmpLeft}`);
  const envNames = namesIn(dir('env')).filter((n) => ID.test(n.slice(0, -4)));
  const metaNames = namesIn(dir('meta')).filter((n) => ID.test(n.slice(0, -5)));
  const want = [...loaded.keys()].sort();
  const wantEnvs = inPlace ? want : [...want, ...orphans].sort();
  if (JSON.stringify(envNames.map((n) => n.slice(0, 32))) !== JSON.stringify(wantEnvs)) {
    violations.push(`env files ${envNames.length} != loaded messages ${want.length}` +
      (inPlace ? '' : ` and envelopes without a meta ${orphans.size}`));
  }
  if (JSON.stringify(metaNames.map((n) => n.slice(0, 32))) !== JSON.stringify(want)) {
    violations.push(`meta files ${metaNames.length} != loaded messages ${want.length}`);
  }

  await store.close();
  return {
    violations, counts, after, orphans: inPlace ? new Set() : orphans,
    ready: log.ready, begun: log.begun.size,
  };
}

module.exports = { checkTrial, parseLog, initialState };
