'use strict';
// A file system model built from a trace, and the states a power cut
// could leave it in. docs/DURABILITY-MODEL.md states the model; in short:
//
// - A directory's changes (create, link, unlink, rename, mkdir) form a
//   log in the order the calls returned. An fsync of the directory makes
//   every change that returned before the fsync started durable. At a
//   cut, a directory keeps its durable changes plus any prefix of the
//   rest. Directories are independent: no change in one is assumed to
//   order a change in another. A rename between two directories is two
//   changes, the new name in one and the removal in the other.
// - A file's data is the bytes written to it. fsync or fdatasync makes
//   everything written before it started durable. At a cut, a file holds
//   its durable bytes plus a prefix of the rest: none, half or all.
// - What a fd refers to, and what has been synced, follows the calls as
//   they returned; a sync covers only what returned before it started.

const crypto = require('node:crypto');
const path = require('node:path');

const ACK_DIR = '/nonexistent/slimta-ack/';

// --- replaying the calls -------------------------------------------------

/**
 * Replays parsed calls (see powerloss-trace.js) on a model of the tree
 * under `root`, which must exist and be empty when the trace starts.
 * Returns the effects in the order they took place:
 *
 *   { kind: 'dir', ino, changes: [[name, ino | null], ...], exit }
 *   { kind: 'data', ino, write: { offset, bytes } | truncate: size, exit }
 *   { kind: 'sync', ino, path, call, entry, exit }
 *   { kind: 'ack', name, exit }
 *
 * and `inodes`: ino -> { type: 'file' | 'dir' }. Inode 1 is `root`.
 */
function replay(calls, root) {
  root = path.resolve(root);
  const inodes = new Map([[1, { type: 'dir', entries: new Map() }]]);
  const fds = new Map();
  const effects = [];
  let nextIno = 2;

  // The inode of a path under root, or undefined; null when outside.
  const rel = (p) => {
    const abs = path.resolve(p);
    if (abs === root) return '';
    if (!abs.startsWith(root + path.sep)) return null;
    return abs.slice(root.length + 1);
  };
  const lookup = (r) => {
    let ino = 1;
    for (const part of r === '' ? [] : r.split(path.sep)) {
      const node = inodes.get(ino);
      if (node.type !== 'dir') return undefined;
      ino = node.entries.get(part);
      if (ino === undefined) return undefined;
    }
    return ino;
  };
  const parentOf = (r) => {
    const ino = lookup(path.dirname(r) === '.' ? '' : path.dirname(r));
    if (ino === undefined || inodes.get(ino).type !== 'dir') {
      throw new Error(`model: no directory above '${r}'`);
    }
    return ino;
  };
  const dirChange = (dir, changes, call) => {
    const entries = inodes.get(dir).entries;
    for (const [name, ino] of changes) {
      if (ino === null) entries.delete(name);
      else entries.set(name, ino);
    }
    effects.push({ kind: 'dir', ino: dir, changes, exit: call.exit });
  };
  const str = (b) => b.toString('latin1');
  const atCwd = (dirfd) => {
    if (dirfd !== 'AT_FDCWD') {
      throw new Error(`model: only AT_FDCWD is modelled, got ${dirfd}`);
    }
  };

  for (const call of calls) {
    const a = call.args;
    const ok = call.ret !== null && call.ret >= 0;
    switch (call.name) {
      case 'open':
      case 'openat': {
        const [p, flags] =
          call.name === 'open' ? [a[0], a[1]] : (atCwd(a[0]), [a[1], a[2]]);
        const ps = str(p);
        if (ps.startsWith(ACK_DIR)) {
          effects.push({
            kind: 'ack',
            name: ps.slice(ACK_DIR.length),
            exit: call.exit,
          });
          continue;
        }
        if (!ok) continue;
        const r = rel(ps);
        fds.delete(call.ret);
        if (r === null) continue;
        const flagSet = new Set(String(flags).split('|'));
        let ino = lookup(r);
        if (ino === undefined) {
          if (!flagSet.has('O_CREAT')) {
            throw new Error(`model: opened '${r}', which it lacks`);
          }
          ino = nextIno++;
          inodes.set(ino, { type: 'file', data: Buffer.alloc(0) });
          dirChange(parentOf(r), [[path.basename(r), ino]], call);
        } else if (flagSet.has('O_TRUNC') && inodes.get(ino).type === 'file') {
          inodes.get(ino).data = Buffer.alloc(0);
          effects.push({ kind: 'data', ino, truncate: 0, exit: call.exit });
        }
        fds.set(call.ret, { ino, pos: 0, path: r });
        continue;
      }

      case 'close':
        fds.delete(a[0]);
        continue;

      case 'write':
      case 'pwrite64':
      case 'writev':
      case 'pwritev':
      case 'pwritev2': {
        const fd = fds.get(a[0]);
        if (!fd || !ok || call.ret === 0) continue;
        const vector = call.name.includes('writev');
        const data = vector
          ? Buffer.concat(a[1].map((iov) => iov.iov_base))
          : a[1];
        const positioned = call.name.startsWith('p');
        const offset = positioned ? a[3] : fd.pos;
        const bytes = data.subarray(0, call.ret);
        if (bytes.length !== call.ret) {
          throw new Error(`model: ${call.name} wrote more than traced`);
        }
        const node = inodes.get(fd.ino);
        node.data = writeAt(node.data, offset, bytes);
        if (!positioned) fd.pos += bytes.length;
        effects.push({
          kind: 'data',
          ino: fd.ino,
          write: { offset, bytes },
          exit: call.exit,
        });
        continue;
      }

      case 'ftruncate': {
        const fd = fds.get(a[0]);
        if (!fd || !ok) continue;
        const node = inodes.get(fd.ino);
        node.data = resize(node.data, a[1]);
        effects.push({
          kind: 'data',
          ino: fd.ino,
          truncate: a[1],
          exit: call.exit,
        });
        continue;
      }

      case 'fsync':
      case 'fdatasync': {
        const fd = fds.get(a[0]);
        if (!fd || !ok) continue;
        effects.push({
          kind: 'sync',
          ino: fd.ino,
          path: fd.path,
          call: call.name,
          entry: call.entry,
          exit: call.exit,
        });
        continue;
      }

      case 'mkdir':
      case 'mkdirat': {
        if (call.name === 'mkdirat') atCwd(a[0]);
        const r = rel(str(call.name === 'mkdir' ? a[0] : a[1]));
        if (r === null || !ok) continue;
        const ino = nextIno++;
        inodes.set(ino, { type: 'dir', entries: new Map() });
        dirChange(parentOf(r), [[path.basename(r), ino]], call);
        continue;
      }

      case 'link':
      case 'linkat': {
        if (call.name === 'linkat') atCwd(a[0]), atCwd(a[2]);
        const [from, to] =
          call.name === 'link' ? [a[0], a[1]] : [a[1], a[3]];
        const rf = rel(str(from));
        const rt = rel(str(to));
        if (rt === null || !ok) continue;
        const ino = lookup(rf);
        dirChange(parentOf(rt), [[path.basename(rt), ino]], call);
        continue;
      }

      case 'unlink':
      case 'unlinkat': {
        if (call.name === 'unlinkat') atCwd(a[0]);
        const r = rel(str(call.name === 'unlink' ? a[0] : a[1]));
        if (r === null || !ok) continue;
        dirChange(parentOf(r), [[path.basename(r), null]], call);
        continue;
      }

      case 'rename':
      case 'renameat':
      case 'renameat2': {
        if (call.name !== 'rename') atCwd(a[0]), atCwd(a[2]);
        const [from, to] =
          call.name === 'rename' ? [a[0], a[1]] : [a[1], a[3]];
        const rf = rel(str(from));
        const rt = rel(str(to));
        if (rt === null || rf === null || !ok) continue;
        const ino = lookup(rf);
        const src = parentOf(rf);
        const dst = parentOf(rt);
        if (src === dst) {
          dirChange(
            src,
            [
              [path.basename(rt), ino],
              [path.basename(rf), null],
            ],
            call,
          );
        } else {
          dirChange(dst, [[path.basename(rt), ino]], call);
          dirChange(src, [[path.basename(rf), null]], call);
        }
        continue;
      }
    }
  }

  const kinds = new Map([...inodes].map(([ino, n]) => [ino, { type: n.type }]));
  return { effects, inodes: kinds, live: inodes };
}

function resize(buf, size) {
  if (size <= buf.length) return buf.subarray(0, size);
  return Buffer.concat([buf, Buffer.alloc(size - buf.length)]);
}

function writeAt(buf, offset, bytes) {
  const out = resize(buf, Math.max(buf.length, offset + bytes.length));
  const copy = Buffer.from(out);
  bytes.copy(copy, offset);
  return copy;
}

// --- the states a cut can leave --------------------------------------------

/** Bounds on the enumeration; see docs/DURABILITY-MODEL.md. */
const DEFAULT_BOUNDS = {
  // Per directory, the prefixes of its undurable changes tried: none of
  // them, and each of the longest `recentPrefixes` (all of them when
  // there are no more than that).
  recentPrefixes: 3,
  // Files with undurable data: the `recentFiles` written last each keep
  // none, half or all of it; the older ones together keep none or all.
  recentFiles: 2,
};

/** Prefix lengths of `n` undurable changes to try. */
function prefixChoices(n, bounds) {
  const out = [0];
  for (let p = Math.max(1, n + 1 - bounds.recentPrefixes); p <= n; p++) {
    out.push(p);
  }
  return out;
}

/**
 * Yields every distinct state a power cut could leave after each effect,
 * from the start of the trace, when the root was empty and durable:
 * `{ cut, effect, acked: Set of ack names, files: [[relpath, Buffer |
 * null (a directory), ino], ...] }`; only those at effect `options.at`
 * when it is given. `counts` (if given) is filled in
 * as it goes: cuts, candidates (states before merging equal ones),
 * states.
 */
function* crashStates(model, options = {}, counts = {}) {
  const bounds = { ...DEFAULT_BOUNDS, ...options.bounds };
  const { effects } = model;

  // Per inode: its log of changes and how many of them are durable.
  const dirs = new Map();
  const files = new Map();
  for (const [ino, node] of model.inodes) {
    if (node.type === 'dir') dirs.set(ino, { log: [], durable: 0 });
    else files.set(ino, { log: [], durable: 0 });
  }
  const acked = new Set();
  const seen = new Set();
  Object.assign(counts, { cuts: 0, candidates: 0, states: 0 });

  for (let i = 0; i < effects.length; i++) {
    const e = effects[i];
    if (e.kind === 'dir') dirs.get(e.ino).log.push(e);
    else if (e.kind === 'data') files.get(e.ino).log.push(e);
    else if (e.kind === 'ack') acked.add(e.name);
    else if (e.kind === 'sync') {
      const target = dirs.get(e.ino) ?? files.get(e.ino);
      let covered = 0;
      while (
        covered < target.log.length &&
        target.log[covered].exit < e.entry
      ) {
        covered++;
      }
      target.durable = Math.max(target.durable, covered);
    }
    if (options.at !== undefined && i !== options.at) continue;
    counts.cuts++;
    for (const state of statesAt(dirs, files, bounds)) {
      counts.candidates++;
      const key = stateKey(state, acked);
      if (seen.has(key)) continue;
      seen.add(key);
      counts.states++;
      yield { cut: i, effect: e, acked: new Set(acked), files: state };
    }
  }
}

// Every combination of per-directory prefixes and file data choices.
function* statesAt(dirs, files, bounds) {
  const axes = [];
  for (const [ino, d] of dirs) {
    const n = d.log.length - d.durable;
    const keep = prefixChoices(n, bounds).map((p) => d.durable + p);
    axes.push(keep.map((k) => ({ dir: [[ino, k]] })));
  }
  const undurable = [...files]
    .filter(([, f]) => f.durable < f.log.length)
    .sort((x, y) => x[1].log.at(-1).exit - y[1].log.at(-1).exit);
  const older = undurable.slice(0, -bounds.recentFiles || undefined);
  const recent = undurable.slice(older.length);
  for (const [ino, f] of recent) {
    axes.push(dataChoices(f).map((buf) => ({ data: [[ino, buf]] })));
  }
  if (older.length > 0) {
    const ends = [0, -1].map((end) => ({
      data: older.map(([ino, f]) => [ino, dataChoices(f).at(end)]),
    }));
    axes.push(ends);
  }

  const pick = new Array(axes.length).fill(0);
  for (;;) {
    const keep = new Map();
    const data = new Map();
    for (const [ino, f] of files) {
      if (f.durable === f.log.length) data.set(ino, dataChoices(f)[0]);
    }
    axes.forEach((options, k) => {
      const choice = options[pick[k]];
      for (const [ino, n] of choice.dir ?? []) keep.set(ino, n);
      for (const [ino, buf] of choice.data ?? []) data.set(ino, buf);
    });
    yield materialise(dirs, keep, data);

    let k = 0;
    while (k < axes.length && pick[k] === axes[k].length - 1) {
      pick[k] = 0;
      k++;
    }
    if (k === axes.length) return;
    pick[k]++;
  }
}

// A file's possible contents at the cut: its durable image, and when
// more was written since, half of the rest and all of it.
function dataChoices(f) {
  const c = f.choices;
  if (c && c.length === f.log.length && c.durable === f.durable) {
    return c.value;
  }
  const image = (n) => {
    let buf = Buffer.alloc(0);
    for (const e of f.log.slice(0, n)) {
      buf = e.write
        ? writeAt(buf, e.write.offset, e.write.bytes)
        : resize(buf, e.truncate);
    }
    return buf;
  };
  const durable = image(f.durable);
  const out = [durable];
  if (f.durable < f.log.length) {
    const all = image(f.log.length);
    const isPrefix =
      durable.length < all.length &&
      all.subarray(0, durable.length).equals(durable);
    if (isPrefix) {
      const half =
        durable.length + Math.floor((all.length - durable.length) / 2);
      if (half > durable.length) out.push(all.subarray(0, half));
    }
    out.push(all);
  }
  f.choices = { length: f.log.length, durable: f.durable, value: out };
  return out;
}

// The tree with each directory's first `keep` changes applied.
function materialise(dirs, keep, data) {
  const entriesOf = (ino) => {
    const entries = new Map();
    for (const e of dirs.get(ino).log.slice(0, keep.get(ino))) {
      for (const [name, target] of e.changes) {
        if (target === null) entries.delete(name);
        else entries.set(name, target);
      }
    }
    return entries;
  };
  const out = [];
  const walk = (ino, prefix) => {
    for (const [name, target] of [...entriesOf(ino)].sort()) {
      const r = prefix === '' ? name : path.join(prefix, name);
      if (dirs.has(target)) {
        out.push([r, null, target]);
        walk(target, r);
      } else {
        out.push([r, data.get(target), target]);
      }
    }
  };
  walk(1, '');
  return out;
}

function stateKey(files, acked) {
  const h = crypto.createHash('sha1');
  for (const [r, buf] of files) {
    h.update(r);
    h.update(buf === null ? 'D' : sha1(buf));
    h.update('\0');
  }
  h.update([...acked].sort().join(','));
  return h.digest('hex');
}

function sha1(buf) {
  return crypto.createHash('sha1').update(buf).digest('hex');
}

/** The tree with every effect applied, to compare with the real disk. */
function finalTree(model) {
  const out = [];
  const walk = (ino, prefix) => {
    for (const [name, target] of [...model.live.get(ino).entries].sort()) {
      const r = prefix === '' ? name : path.join(prefix, name);
      const node = model.live.get(target);
      if (node.type === 'dir') {
        out.push([r, null]);
        walk(target, r);
      } else {
        out.push([r, node.data]);
      }
    }
  };
  walk(1, '');
  return out;
}

// --- broken protocols, for the negative controls ---------------------------

/** The effects without the syncs `drop(effect)` selects. */
function withoutSyncs(model, drop) {
  return {
    ...model,
    effects: model.effects.filter((e) => !(e.kind === 'sync' && drop(e))),
  };
}

/**
 * The syncs made for the calls whose acks are named in `names`: those
 * after the ack before each one, up to it. (Two calls in flight at once
 * share a window, so the later one's takes in the syncs of both.)
 */
function syncsOf(model, names) {
  const out = new Set();
  let window = [];
  for (const e of model.effects) {
    if (e.kind === 'sync') window.push(e);
    if (e.kind !== 'ack') continue;
    if (names.has(e.name)) for (const sync of window) out.add(sync);
    window = [];
  }
  return out;
}

module.exports = {
  DEFAULT_BOUNDS,
  crashStates,
  finalTree,
  prefixChoices,
  replay,
  syncsOf,
  withoutSyncs,
};
