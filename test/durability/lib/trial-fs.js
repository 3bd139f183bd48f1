'use strict';
// File-system views the durability tests compare: a snapshot of a tree,
// the modes in a queue, open descriptors, a dead pid.

const { spawn } = require('node:child_process');
const { createHash } = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

/**
 * Every entry under `root`, with what would show that it was touched:
 * type, mode, size, inode, mtime, link target and a hash of the bytes.
 */
function snapshot(root) {
  const out = {};
  const walk = (dir) => {
    for (const name of fs.readdirSync(dir).sort()) {
      const p = path.join(dir, name);
      const st = fs.lstatSync(p);
      const rel = path.relative(root, p);
      const entry = {
        mode: st.mode,
        size: st.size,
        ino: st.ino,
        mtimeMs: st.mtimeMs,
      };
      if (st.isSymbolicLink()) entry.link = fs.readlinkSync(p);
      if (st.isFile()) {
        entry.sha = createHash('sha256').update(fs.readFileSync(p)).digest('hex');
      }
      out[rel] = entry;
      if (st.isDirectory()) walk(p);
    }
  };
  walk(root);
  return out;
}

/** Entries under `root` whose permission bits are not 0600 / 0700. */
function wrongModes(root) {
  const wrong = [];
  const walk = (dir) => {
    for (const name of fs.readdirSync(dir)) {
      const p = path.join(dir, name);
      const st = fs.lstatSync(p);
      const want = st.isDirectory() ? 0o700 : 0o600;
      if ((st.mode & 0o7777) !== want) {
        wrong.push(`${p}: ${(st.mode & 0o7777).toString(8)}`);
      }
      if (st.isDirectory()) walk(p);
    }
  };
  walk(root);
  return wrong;
}

/** Open descriptors of this process. */
function fdCount() {
  return fs.readdirSync('/proc/self/fd').length;
}

/** The pid of a process that has exited and been reaped. */
function deadPid() {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['-e', '0']);
    child.on('exit', () => resolve(child.pid));
  });
}

/** Names in `dir`, dot-files included; [] when it does not exist. */
function namesIn(dir) {
  try {
    return fs.readdirSync(dir).sort();
  } catch (err) {
    if (err.code === 'ENOENT') return [];
    throw err;
  }
}

module.exports = { snapshot, wrongModes, fdCount, deadPid, namesIn };
