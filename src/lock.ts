/**
 * The queue lock: one thread of one process at a time may change existing
 * messages.
 *
 * Two owners updating one message would each read the meta, change it and
 * rename their version into place, and one update would be lost. So a
 * store takes `<metaDir>/.lock` before its first update, removal or
 * recovery scan, and anyone else fails fast with ERR_QUEUE_LOCKED. Adding
 * new messages and read-only inspection take no lock.
 *
 * The lock is a file naming its owner thread, in one line (wrapped here):
 *
 *   v2 pid=<pid> tid=<tid> start=<ticks> boot=<boot id> pidns=<inode>
 *      timens=<inode> thread=<n>
 *
 * pid and tid are the process and the kernel thread as numbered in the
 * owner's PID namespace, start the thread's start time (field 22 of its
 * /proc stat), boot the kernel's boot id, pidns and timens the inodes of
 * the owner's /proc/self/ns/pid and ns/time (start times read in another
 * time namespace are shifted), thread its worker_threads threadId (0 in
 * the main thread); "-" where /proc could not tell. The previous version
 * wrote "<pid> <boot id> <start>" (or "<pid>" without /proc); such a lock
 * is still read and honoured.
 *
 * A lock is stale, and taken over, only when its owner provably ended:
 * it ran in an earlier boot, or it ran in this PID namespace and its
 * thread (pid, tid and start time, so pid reuse is seen) is gone. A lock
 * from another PID namespace of this boot cannot be checked from here (its
 * pid means another process here, or none), and neither can one of the
 * previous version, which did not record the namespace: both are refused,
 * with a message saying how to remove the lock by hand. A lock from an
 * earlier boot is taken over whatever its namespace: a reboot ends them
 * all. (A queue shared between two machines is not supported: the other
 * machine's boot id looks like an earlier boot.)
 *
 * Stores of one thread share the lock; the last one of them to close
 * removes it. A store in another thread of the process is refused: each
 * thread orders the updates of its own stores only. A worker that ends
 * without closing its stores leaves the lock stale: its kernel thread is
 * gone, which is only so once the thread's file operations in flight have
 * ended, so the lock is then taken over. (Removing it in an 'exit' handler
 * instead would let another owner in while those still run.)
 *
 * A lock is created by linking a finished file into place, so nobody ever
 * reads a lock whose owner has not been written yet. A stale lock is
 * removed by the one process that claims it: claims are files named after
 * the stale lock (its inode and content) and a generation, created the
 * same way; a claim whose taker died is followed by one of the next
 * generation, never removed while the stale lock is there, so two takers
 * never act at once, and the taker removes the lock only if it still is
 * the one it judged. Drafts and claims live in `<metaDir>/.lock.d/`
 * (kept once made), and those left by killed processes are cleared by
 * the next process that takes the lock, which lists that directory only,
 * never the meta directory with its messages. (Drafts and claims that
 * the previous release left in the meta directory itself are no longer
 * cleared; they are dot-files, which nothing reads.) Processes of earlier
 * releases, which claim elsewhere, must not run beside this one.
 */

import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, readlinkSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { threadId } from 'node:worker_threads';

import { LockedError } from './errors';

const LOCK_NAME = '.lock';
/** Every file of the lock but the lock itself: drafts and claims. */
const LOCK_DIR = '.lock.d';
/** In LOCK_DIR: `lock.<pid>.<random>`, drafts of the lock. */
const DRAFT_BASE = 'lock';
/** In LOCK_DIR: `take.<key of the stale lock>.<generation>`, and drafts. */
const CLAIM_PREFIX = 'take.';
const ATTEMPTS = 3;
const GENERATIONS = 64;
/** A draft or claim lives for a few file operations; one older is left over. */
const DEBRIS_AGE_MS = 60_000;

/** Who holds or held a lock, as read from its file. */
interface Owner {
  pid: number;
  tid: number | null;
  start: string | null;
  boot: string | null;
  pidns: string | null;
  timens: string | null;
  thread: number | null;
  /** Written by the previous version: no namespace, no thread. */
  old: boolean;
}

type Verdict =
  | { kind: 'mine' }
  | { kind: 'dead' }
  /** `note` goes after `who`; `byHand` if only a person can tell it ended. */
  | { kind: 'alive'; who: string; note: string; byHand?: boolean };

const DEAD: Verdict = { kind: 'dead' };

// --- who we are ------------------------------------------------------------

interface Self extends Owner {
  /** Whether this /proc numbers processes as our PID namespace does. */
  procIsOurs: boolean;
  line: string;
}

let me: Self | null = null;

/**
 * This thread's identity. It is read synchronously, so in the thread
 * itself: /proc/thread-self is the thread that reads it.
 */
function self(): Self {
  if (me) return me;
  const status = readOr('/proc/self/status') ?? '';
  const nspid = /^NSpid:\s*(.*)$/m.exec(status)?.[1].trim().split(/\s+/);
  // One entry: this /proc belongs to our own namespace.
  const procIsOurs = nspid?.length === 1 && Number(nspid[0]) === process.pid;
  let tid: number | null = null;
  let start: string | null = null;
  if (procIsOurs) {
    const m = /^(\d+)\/task\/(\d+)$/.exec(linkOr('/proc/thread-self') ?? '');
    if (m && Number(m[1]) === process.pid) {
      tid = Number(m[2]);
      start = startOf(process.pid, tid);
      if (start === null) tid = null;
    }
  }
  const owner: Owner = {
    pid: process.pid,
    tid,
    start,
    boot: readOr('/proc/sys/kernel/random/boot_id')?.trim() || null,
    pidns: nsOf('pid', linkOr('/proc/self/ns/pid')),
    timens: nsOf('time', linkOr('/proc/self/ns/time')),
    thread: threadId,
    old: false,
  };
  me = { ...owner, procIsOurs, line: formatOwner(owner) };
  return me;
}

function formatOwner(o: Owner): string {
  const v = (x: string | number | null) => (x === null ? '-' : String(x));
  return (
    `v2 pid=${o.pid} tid=${v(o.tid)} start=${v(o.start)} boot=${v(o.boot)}` +
    ` pidns=${v(o.pidns)} timens=${v(o.timens)} thread=${v(o.thread)}`
  );
}

/** The owner a lock file names; null for an empty or unreadable one. */
function parseOwner(text: string): Owner | null {
  const words = text.trim().split(/\s+/);
  if (/^v\d+$/.test(words[0])) {
    const f = new Map<string, string>();
    for (const w of words.slice(1)) {
      const eq = w.indexOf('=');
      if (eq > 0) f.set(w.slice(0, eq), w.slice(eq + 1));
    }
    const str = (k: string) => {
      const x = f.get(k);
      return x === undefined || x === '-' || x === '' ? null : x;
    };
    const num = (k: string) => {
      const x = str(k);
      return x !== null && /^\d+$/.test(x) ? Number(x) : null;
    };
    const pid = num('pid');
    if (pid === null || pid <= 0) return null;
    return {
      pid,
      tid: num('tid'),
      start: str('start'),
      boot: str('boot'),
      pidns: str('pidns'),
      timens: str('timens'),
      thread: num('thread'),
      old: false,
    };
  }
  // The previous version: "<pid> <boot id> <start>", or "<pid>".
  if ((words.length === 3 || words.length === 1) && /^\d+$/.test(words[0])) {
    const pid = Number(words[0]);
    if (pid <= 0) return null;
    return {
      pid,
      tid: null,
      start: words[2] ?? null,
      boot: words[1] ?? null,
      pidns: null,
      timens: null,
      thread: null,
      old: true,
    };
  }
  return null;
}

// --- is it alive -----------------------------------------------------------

/**
 * Whether owner `o` of `file` may still run. Only 'dead' lets anyone
 * remove what it left; 'alive' also covers owners this thread cannot
 * check, with a note on how to clear them by hand.
 */
function verdict(o: Owner, file: string): Verdict {
  const i = self();
  if (
    !o.old &&
    o.pid === i.pid &&
    o.tid === i.tid &&
    o.start === i.start &&
    o.boot === i.boot &&
    o.pidns === i.pidns &&
    o.timens === i.timens &&
    o.thread === i.thread
  ) {
    return { kind: 'mine' };
  }
  // Every process of an earlier boot has ended, in every namespace.
  if (o.boot !== null && i.boot !== null && o.boot !== i.boot) return DEAD;
  const clearIt = `if it is gone, remove '${file}' by hand`;

  if (o.old) {
    const runs =
      i.procIsOurs && o.start !== null
        ? startOf(o.pid, o.pid) === o.start
        : exists(o.pid);
    if (runs) return { kind: 'alive', who: `process ${o.pid}`, note: '' };
    return {
      kind: 'alive',
      who: `process ${o.pid}`,
      note:
        ', according to a lock written by an older version, which does not ' +
        'record the PID namespace: no such process runs in this ' +
        `namespace, but it may in another; ${clearIt}`,
      byHand: true,
    };
  }

  if (o.pidns !== i.pidns) {
    return {
      kind: 'alive',
      who: `process ${o.pid} of another PID namespace (pid:[${o.pidns ?? '?'}])`,
      note: `, which cannot be checked from this one; ${clearIt}`,
      byHand: true,
    };
  }

  const thread = `thread ${o.thread ?? '?'} of this process`;
  if (o.pid !== i.pid && o.timens !== i.timens) {
    // Start times are shown shifted by the reader's time namespace, so
    // one taken in another cannot be compared: the pid is all there is.
    return exists(o.pid)
      ? {
          kind: 'alive',
          who: `process ${o.pid}`,
          note:
            ' (of another time namespace, so a pid reused since looks ' +
            'alive too)',
        }
      : DEAD;
  }
  if (!i.procIsOurs || o.tid === null || o.start === null) {
    // No /proc of this namespace to look the thread up in.
    if (o.pid === i.pid) {
      return {
        kind: 'alive',
        who: thread,
        note:
          ': one thread owns a queue at a time, and without a /proc of ' +
          'this PID namespace the lock stays until that thread closes ' +
          'its stores or the process exits',
      };
    }
    return exists(o.pid)
      ? { kind: 'alive', who: `process ${o.pid}`, note: '' }
      : DEAD;
  }
  if (startOf(o.pid, o.tid) !== o.start) return DEAD;
  if (o.pid === i.pid) {
    return {
      kind: 'alive',
      who: thread,
      note:
        ': one thread owns a queue at a time, until its last store ' +
        'closes or the thread ends',
    };
  }
  return { kind: 'alive', who: `process ${o.pid}`, note: '' };
}

/** Field 22 of /proc/<pid>/task/<tid>/stat, the start time; null if gone. */
function startOf(pid: number, tid: number): string | null {
  const stat = readOr(`/proc/${pid}/task/${tid}/stat`);
  if (stat === null) return null;
  // The command name (field 2) may hold spaces: count from its end.
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
}

/** Whether pid names a process in this PID namespace. */
function exists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The inode in a /proc/<pid>/ns link such as "pid:[4026531836]". */
function nsOf(type: string, link: string | null): string | null {
  const m = /^(\w+):\[(\d+)\]$/.exec(link ?? '');
  return m && m[1] === type ? m[2] : null;
}

function readOr(file: string): string | null {
  try {
    return readFileSync(file, 'latin1');
  } catch {
    return null;
  }
}

function linkOr(file: string): string | null {
  try {
    return readlinkSync(file);
  } catch {
    return null;
  }
}

// --- taking and giving back ------------------------------------------------

/** Locks held by stores of this thread, by the queue directory's identity. */
const holders = new Map<string, { count: number }>();
/** The key of each lock file path handed out by acquireLock(). */
const keys = new Map<string, string>();

/**
 * Lock calls of this thread run one at a time: a store releasing the lock
 * while another takes it must not remove it under the second.
 */
let queue: Promise<unknown> = Promise.resolve();
function serially<T>(fn: () => Promise<T>): Promise<T> {
  const run = queue.then(fn, fn);
  queue = run.catch(() => undefined);
  return run;
}

/**
 * The identity of a queue directory, however its path is spelt: stores of
 * one thread that share its lock are counted under it.
 */
export async function lockKey(dir: string): Promise<string> {
  const st = await fs.stat(dir, { bigint: true });
  return `${st.dev}:${st.ino}`;
}

/** Takes the lock in `dir`; resolves with the lock file's path. */
export function acquireLock(dir: string): Promise<string> {
  return serially(() => acquire(dir));
}

/** Gives the lock back once no store of this thread holds it. */
export function releaseLock(file: string): Promise<void> {
  return serially(() => release(file));
}

async function acquire(dir: string): Promise<string> {
  const file = path.join(dir, LOCK_NAME);
  const key = await lockKey(dir);
  const held = holders.get(key);
  if (held) {
    held.count++;
    keys.set(file, key);
    return file;
  }
  const i = self();
  const lockDir = await makeLockDir(dir);
  for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
    if (await createWith(file, i.line, path.join(lockDir, DRAFT_BASE))) {
      hold(key, file);
      await clearDebris(lockDir);
      return file;
    }
    const seen = await readLock(file);
    if (seen === null) continue; // released meanwhile
    const owner = parseOwner(seen.text);
    const v = owner ? verdict(owner, file) : DEAD;
    if (v.kind === 'mine') {
      // Left by a store of this thread whose release failed.
      hold(key, file);
      return file;
    }
    if (v.kind === 'alive') {
      throw new LockedError(`queue '${dir}' is in use by ${v.who}${v.note}`);
    }
    await takeOver(lockDir, file, seen);
  }
  throw new LockedError(`queue '${dir}' lock is contended; try again`);
}

async function release(file: string): Promise<void> {
  const key = keys.get(file);
  const held = key === undefined ? undefined : holders.get(key);
  if (key === undefined || !held) return;
  if (--held.count > 0) return;
  holders.delete(key);
  for (const [f, k] of keys) if (k === key) keys.delete(f);
  // Nobody else removes a lock whose owner lives, so it is still ours.
  const now = await readLock(file);
  if (now !== null && now.text.trim() === self().line) {
    // Left in place, it is stale once this thread has ended.
    await fs.unlink(file).catch(() => undefined);
  }
}

function hold(key: string, file: string): void {
  holders.set(key, { count: 1 });
  keys.set(file, key);
}

/**
 * `<dir>/.lock.d`, made if missing, as open as `dir` and, when made by
 * root, owned by the owner of `dir`, so that its owner can take the lock.
 */
async function makeLockDir(dir: string): Promise<string> {
  const lockDir = path.join(path.resolve(dir), LOCK_DIR);
  const st = await fs.stat(dir);
  try {
    await fs.mkdir(lockDir, { mode: st.mode & 0o777 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return lockDir;
    throw err;
  }
  if (process.getuid?.() === 0 && (st.uid !== 0 || st.gid !== 0)) {
    await fs.chown(lockDir, st.uid, st.gid).catch(() => undefined);
  }
  return lockDir;
}

/**
 * Removes the stale lock `seen`, if it still is at `file`. Only its
 * claimer may: the one that creates claim generation n, after the
 * claimers of 0..n-1 have died. While the stale lock is there no claim
 * of it is removed, so no two live claimers act at once; once it is gone
 * they can do no harm, since it never comes back.
 */
async function takeOver(
  lockDir: string,
  file: string,
  seen: { ino: bigint; text: string },
): Promise<void> {
  const dir = path.dirname(file);
  const key = createHash('sha256')
    .update(`${seen.ino}\n${seen.text}`)
    .digest('hex')
    .slice(0, 16);
  const claim = (n: number) => path.join(lockDir, `${CLAIM_PREFIX}${key}.${n}`);
  for (let n = 0; n < GENERATIONS; n++) {
    if (await createWith(claim(n), self().line, claim(n))) {
      let gone = false;
      try {
        const now = await readLock(file);
        if (now !== null && now.ino === seen.ino && now.text === seen.text) {
          await unlinkOr(file);
        }
        gone = true;
      } finally {
        // Once the stale lock is gone the older claims go too; before,
        // only this one, which no other taker may follow while we live.
        if (gone) for (let m = 0; m < n; m++) await unlinkOr(claim(m));
        await unlinkOr(claim(n));
      }
      return;
    }
    const text = await readText(claim(n));
    if (text === null) return; // that taker is done: look again
    const taker = parseOwner(text);
    const v = taker ? verdict(taker, claim(n)) : DEAD;
    // 'mine': left by a failed attempt of this thread, whose lock calls
    // run one at a time.
    if (v.kind === 'alive') {
      throw new LockedError(
        `queue '${dir}' is being taken over by ${v.who}` +
          (v.byHand ? v.note : '; try again'),
      );
    }
  }
  throw new LockedError(`queue '${dir}' lock is contended; try again`);
}

/**
 * Removes the drafts and claims that killed processes left in `lockDir`:
 * those whose owner is dead, and any older than a few file operations
 * could take. Called holding the lock, so every stale lock they were
 * about is gone.
 */
async function clearDebris(lockDir: string): Promise<void> {
  try {
    const names: string[] = [];
    for await (const entry of await fs.opendir(lockDir, { bufferSize: 128 })) {
      names.push(entry.name);
    }
    for (const name of names) {
      if (!name.startsWith(`${DRAFT_BASE}.`) && !name.startsWith(CLAIM_PREFIX)) {
        continue;
      }
      const file = path.join(lockDir, name);
      const st = await fs.lstat(file).catch(() => null);
      if (!st || !st.isFile()) continue;
      const text = await readText(file).catch(() => null);
      if (text === null) continue;
      const owner = parseOwner(text);
      const v = owner ? verdict(owner, file) : null;
      const old = Date.now() - st.mtimeMs > DEBRIS_AGE_MS;
      if (v?.kind === 'dead' || v?.kind === 'mine' || old) await unlinkOr(file);
    }
  } catch {
    // Clearing is tidying; the lock is taken all the same.
  }
}

/** The lock file's inode and content; null when there is no such file. */
async function readLock(
  file: string,
): Promise<{ ino: bigint; text: string } | null> {
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(file, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  try {
    const st = await handle.stat({ bigint: true });
    return { ino: st.ino, text: await handle.readFile('latin1') };
  } finally {
    await handle.close();
  }
}

async function readText(file: string): Promise<string | null> {
  try {
    return await fs.readFile(file, 'latin1');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

async function unlinkOr(file: string): Promise<void> {
  try {
    await fs.unlink(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

/**
 * Creates `file` holding `content`, or returns false when it exists. The
 * content is written under a private name first (`<draftBase>.<pid>.<hex>`,
 * in the lock's directory) and then linked into place, which never
 * replaces a file and never shows a half-written one.
 */
async function createWith(
  file: string,
  content: string,
  draftBase: string,
): Promise<boolean> {
  const draft = `${draftBase}.${process.pid}.${randomBytes(4).toString('hex')}`;
  await fs.writeFile(draft, content + '\n', { flag: 'wx', mode: 0o600 });
  try {
    await fs.link(draft, file);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  } finally {
    await fs.unlink(draft).catch(() => undefined);
  }
}
