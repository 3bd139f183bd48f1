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
 *      timens=<inode> thread=<n> sock=<name>
 *
 * pid and tid are the process and the kernel thread as numbered in the
 * owner's PID namespace, start the thread's start time (field 22 of its
 * /proc stat), boot the kernel's boot id, pidns and timens the inodes of
 * the owner's /proc/self/ns/pid and ns/time (start times read in another
 * time namespace are shifted), thread its worker_threads threadId (0 in
 * the main thread); "-" where /proc could not tell. sock names the Unix
 * socket the owner thread listens on, `<32 hex digits>.sock` in
 * `<metaDir>/.lock.d/`, or is `!<error code>` when it could not listen
 * (see below). A lock without sock, as the previous version wrote it, is
 * read as one that listens on none. The version before that wrote
 * "<pid> <boot id> <start>" (or "<pid>" without /proc); such a lock is
 * still read and honoured.
 *
 * A lock is stale, and taken over, only when its owner provably ended:
 * it ran in an earlier boot; or it ran in this PID namespace and its
 * thread (pid, tid and start time, so pid reuse is seen) is gone; or,
 * where /proc cannot tell (another PID namespace, another time namespace,
 * no /proc of this namespace), the socket it names refuses a connection
 * (ECONNREFUSED) or is gone (ENOENT in a directory that is there). The
 * owner listens (net.Server, unref'd, in its own event loop) before its
 * lock is linked into place and closes the server only once its lock is
 * gone, so a lock in place whose socket refuses has no owner left: the
 * kernel closed the socket because the process ended (SIGKILL and
 * process.exit() included: that happens once all its threads are gone) or
 * the worker's loop was torn down. An accepted connection means the owner
 * lives; it is closed at once on both sides. Any other outcome (a
 * timeout, EACCES) is not taken for an ending, and neither is a lock
 * whose owner listens on no socket: such a lock is refused, with a
 * message saying why and how to remove the lock by hand. A lock of the
 * oldest format is stale only after a reboot or if its process is gone
 * from this namespace; otherwise it is refused the same way. A reboot
 * ends every owner, whatever its namespace. (A queue shared between two
 * machines is not supported: the other machine's boot id looks like an
 * earlier boot, and its sockets like closed ones.)
 *
 * A socket address holds 107 bytes of path. A longer one is bound and
 * connected to as /proc/self/fd/<fd of .lock.d>/<name>, once /proc/self/fd
 * is checked to name that directory; where it does not (no /proc of this
 * process), the owner listens on no socket and writes sock=!ENAMETOOLONG,
 * and a taker that cannot reach a socket so says. A filesystem that holds
 * no sockets (EPERM or EOPNOTSUPP on listen) gives sock=!<that code>.
 *
 * Stores of one thread share the lock; the last one of them to close
 * removes it, then closes its socket. A store in another thread of the
 * process is refused: each thread orders the updates of its own stores
 * only. A worker that ends without closing its stores leaves the lock
 * stale: its kernel thread is gone, which is only so once the thread's
 * file operations in flight have ended, so the lock is then taken over.
 * (Removing it in an 'exit' handler instead would let another owner in
 * while those still run.) Where only the socket tells, it tells a little
 * sooner: a worker's handles are closed when its loop is torn down, before
 * Node waits there for the file operations it started to end; so a taker
 * that /proc cannot serve may take the queue of a worker stopped by
 * terminate() while a rename of that worker is still under way.
 *
 * A lock is created by linking a finished file into place, so nobody ever
 * reads a lock whose owner has not been written yet. A stale lock is
 * removed by the one process that claims it: claims are files named after
 * the stale lock (its inode and content) and a generation, created the
 * same way; a claim whose taker died is followed by one of the next
 * generation, never removed while the stale lock is there, so two takers
 * never act at once, and the taker removes the lock only if it still is
 * the one it judged. Drafts, claims and sockets live in `<metaDir>/.lock.d/`
 * (kept, not removed, once made; do not remove it while the queue is in
 * use), and those left by killed processes are cleared by the next
 * process that takes the lock, which lists that directory only, never
 * the meta directory with its messages. A socket that refuses goes at
 * once if a lock, claim or draft names it (each is written after its
 * socket listens), else once a minute old: a socket refuses for a moment
 * between its bind and its listen. (Drafts and claims that the previous
 * version left in the meta directory itself are no longer cleared; they
 * are dot-files, which nothing reads.) Processes of earlier versions,
 * which claim elsewhere, must not run beside this one.
 */

import { createHash, randomBytes } from 'node:crypto';
import { constants, readFileSync, readlinkSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as net from 'node:net';
import * as path from 'node:path';
import { threadId } from 'node:worker_threads';

import { LockedError } from './errors';

const LOCK_NAME = '.lock';
/** Every file of the lock but the lock itself: drafts, claims, sockets. */
const LOCK_DIR = '.lock.d';
/** In LOCK_DIR: `lock.<pid>.<random>`, drafts of the lock. */
const DRAFT_BASE = 'lock';
/** In LOCK_DIR: `take.<key of the stale lock>.<generation>`, and drafts. */
const CLAIM_PREFIX = 'take.';
/** In LOCK_DIR: a socket of an owner or a taker. */
const SOCK_PATTERN = /^[0-9a-f]{32}\.sock$/;
/** Bytes of path a socket address holds, with the final NUL not counted. */
const SUN_PATH_MAX = 107;
/** A Unix socket answers at once; this is only a bound on a stuck call. */
const CONNECT_TIMEOUT_MS = 5_000;
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
  /** The socket it listens on, a name in LOCK_DIR. */
  sock: string | null;
  /** Why it listens on none, an error code, when it said. */
  nosock: string | null;
  /** Written by the oldest version: no namespace, no thread. */
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
  /** The lock line up to its sock field. */
  identity: string;
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
    sock: null,
    nosock: null,
    old: false,
  };
  me = { ...owner, procIsOurs, identity: formatOwner(owner) };
  return me;
}

function formatOwner(o: Owner): string {
  const v = (x: string | number | null) => (x === null ? '-' : String(x));
  return (
    `v2 pid=${o.pid} tid=${v(o.tid)} start=${v(o.start)} boot=${v(o.boot)}` +
    ` pidns=${v(o.pidns)} timens=${v(o.timens)} thread=${v(o.thread)}`
  );
}

/** The line of a lock (or claim) of this thread that `l` answers for. */
function lineOf(l: Listener): string {
  return `${self().identity} sock=${l.name ?? `!${l.why}`}`;
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
    const sock = str('sock') ?? '';
    return {
      pid,
      tid: num('tid'),
      start: str('start'),
      boot: str('boot'),
      pidns: str('pidns'),
      timens: str('timens'),
      thread: num('thread'),
      // Only a name of ours: never a path to connect to elsewhere.
      sock: SOCK_PATTERN.test(sock) ? sock : null,
      nosock: /^![A-Z0-9_]{1,32}$/.test(sock) ? sock.slice(1) : null,
      old: false,
    };
  }
  // The oldest version: "<pid> <boot id> <start>", or "<pid>".
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
      sock: null,
      nosock: null,
      old: true,
    };
  }
  return null;
}

// --- is it alive -----------------------------------------------------------

/**
 * Whether owner `o` of `file` may still run; `lockDir` holds the socket
 * it names. Only 'dead' lets anyone remove what it left; 'alive' also
 * covers owners this thread cannot check, with a note on how to clear
 * them by hand.
 */
async function verdict(
  o: Owner,
  file: string,
  lockDir: string,
): Promise<Verdict> {
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
    // Its pid means another process here, or none: only its socket tells.
    const who = `process ${o.pid} of another PID namespace (pid:[${o.pidns ?? '?'}])`;
    return bySocket(o, lockDir, who, '', clearIt);
  }

  const thread = `thread ${o.thread ?? '?'} of this process`;
  if (o.pid !== i.pid && o.timens !== i.timens) {
    // Start times are shown shifted by the reader's time namespace, so
    // one taken in another cannot be compared: the pid and the socket
    // are all there is.
    if (!exists(o.pid)) return DEAD;
    const who = `process ${o.pid}`;
    if (o.sock !== null) {
      return bySocket(o, lockDir, who, ' (of another time namespace)', clearIt);
    }
    return {
      kind: 'alive',
      who,
      note:
        ' (of another time namespace, so a pid reused since looks ' +
        'alive too)',
    };
  }
  if (!i.procIsOurs || o.tid === null || o.start === null) {
    // No /proc of this namespace to look the thread up in.
    if (o.pid === i.pid) {
      if (o.sock !== null) {
        return bySocket(
          o,
          lockDir,
          thread,
          ': one thread owns a queue at a time, until its last store ' +
            'closes or the thread ends',
          clearIt,
        );
      }
      return {
        kind: 'alive',
        who: thread,
        note:
          ': one thread owns a queue at a time, and without a /proc of ' +
          'this PID namespace the lock stays until that thread closes ' +
          'its stores or the process exits',
      };
    }
    if (!exists(o.pid)) return DEAD;
    const who = `process ${o.pid}`;
    return o.sock !== null
      ? bySocket(o, lockDir, who, '', clearIt)
      : { kind: 'alive', who, note: '' };
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

/** The verdict of the socket `o` names: `aliveNote` goes with a live one. */
async function bySocket(
  o: Owner,
  lockDir: string,
  who: string,
  aliveNote: string,
  clearIt: string,
): Promise<Verdict> {
  const cannot = (why: string): Verdict => ({
    kind: 'alive',
    who,
    note: `, which cannot be checked from this one: ${why}; ${clearIt}`,
    byHand: true,
  });
  if (o.sock === null) {
    if (o.nosock === null) {
      return cannot('its lock names no socket (an earlier version wrote it)');
    }
    if (o.nosock === 'ENAMETOOLONG') {
      return cannot(
        `it could not listen on a socket: its path is longer than the ` +
          `${SUN_PATH_MAX} bytes a socket address holds, and /proc/self/fd, ` +
          'which shortens it, was not available to it',
      );
    }
    const fsWhy =
      o.nosock === 'EPERM' || o.nosock === 'EOPNOTSUPP'
        ? ': its filesystem may not hold sockets'
        : '';
    return cannot(`it could not listen on a socket (${o.nosock}${fsWhy})`);
  }
  const p = await probe(lockDir, o.sock);
  if (p.kind === 'gone') return DEAD;
  if (p.kind === 'alive') return { kind: 'alive', who, note: aliveNote };
  if (p.why === 'ENAMETOOLONG') {
    return cannot(
      `the path of its socket here is longer than the ${SUN_PATH_MAX} ` +
        'bytes a socket address holds, and /proc/self/fd, which shortens ' +
        'it, is not available',
    );
  }
  return cannot(`connecting to its socket failed (${p.why})`);
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

// --- the owner's socket ----------------------------------------------------

/** The socket a lock of this thread names, or why there is none. */
interface Listener {
  /** Its name in `lockDir`, while it listens; null if it never did. */
  name: string | null;
  /** The error code that kept it from listening. */
  why: string | null;
  server: net.Server | null;
  lockDir: string;
}

type Probe =
  | { kind: 'alive' }
  | { kind: 'gone' }
  | { kind: 'unknown'; why: string };

function codeOf(err: unknown): string {
  const code = (err as NodeJS.ErrnoException)?.code;
  return typeof code === 'string' && /^[A-Z0-9_]{1,32}$/.test(code)
    ? code
    : 'EIO';
}

/**
 * Runs `fn` with an address for `name` in `dir` that fits a socket
 * address: the path itself, or /proc/self/fd/<fd>/<name> while an fd of
 * `dir` is open there, once checked to be that directory. Rejects with
 * ENAMETOOLONG when neither will do.
 */
async function withAddress<T>(
  dir: string,
  name: string,
  fn: (address: string) => Promise<T>,
): Promise<T> {
  const direct = path.join(dir, name);
  if (Buffer.byteLength(direct) <= SUN_PATH_MAX) return fn(direct);
  const handle = await fs.open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    const via = `/proc/self/fd/${handle.fd}`;
    const [a, b] = await Promise.all([
      handle.stat({ bigint: true }),
      fs.stat(via, { bigint: true }).catch(() => null),
    ]);
    if (b === null || a.dev !== b.dev || a.ino !== b.ino) {
      const err: NodeJS.ErrnoException = new Error(
        `'${direct}' is too long for a socket address`,
      );
      err.code = 'ENAMETOOLONG';
      throw err;
    }
    return await fn(`${via}/${name}`);
  } finally {
    await handle.close();
  }
}

/**
 * Listens on a fresh socket in `lockDir`; on failure returns a Listener
 * without one, saying why, and the lock is taken all the same.
 */
async function listen(lockDir: string): Promise<Listener> {
  const name = `${randomBytes(16).toString('hex')}.sock`;
  const file = path.join(lockDir, name);
  let server: net.Server | null = null;
  try {
    server = await withAddress(lockDir, name, bind);
    await fs.chmod(file, 0o600);
    return { name, why: null, server, lockDir };
  } catch (err) {
    if (server) await closeServer(server);
    await fs.unlink(file).catch(() => undefined);
    return { name: null, why: codeOf(err), server: null, lockDir };
  }
}

function bind(address: string): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    // Whoever connects learns that we live; nothing is read or kept.
    const server = net.createServer({ pauseOnConnect: true }, (c) =>
      c.destroy(),
    );
    server.once('error', reject);
    server.listen(address, () => {
      server.removeListener('error', reject);
      server.on('error', () => undefined);
      resolve(server);
    });
    // It keeps no process or worker alive; the kernel closes it with them.
    server.unref();
  });
}

function closeServer(server: net.Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

/** Closes the socket of `l` and removes its file. */
async function unlisten(l: Listener | null): Promise<void> {
  if (!l?.server || l.name === null) return;
  const { server, name } = l;
  l.server = null;
  await closeServer(server);
  await fs.unlink(path.join(l.lockDir, name)).catch(() => undefined);
}

/**
 * Whether something listens on socket `name` in `lockDir`. Refused, or
 * gone from a directory that is there, it is gone for good; a full
 * backlog (EAGAIN) is a listener too.
 */
async function probe(lockDir: string, name: string): Promise<Probe> {
  try {
    return await withAddress(lockDir, name, async (address) => {
      const code = await connectTo(address);
      if (code === null || code === 'EAGAIN') return { kind: 'alive' };
      if (code === 'ECONNREFUSED') return { kind: 'gone' };
      if (code === 'ENOENT') {
        const there = await fs.stat(path.dirname(address)).then(
          (st) => st.isDirectory(),
          () => false,
        );
        if (there) return { kind: 'gone' };
      }
      return { kind: 'unknown', why: code };
    });
  } catch (err) {
    return { kind: 'unknown', why: codeOf(err) };
  }
}

/** Connects to `address` and hangs up; null if accepted, else the code. */
function connectTo(address: string): Promise<string | null> {
  return new Promise((resolve) => {
    const socket = net.connect({ path: address });
    const done = (code: string | null) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(code);
    };
    const timer = setTimeout(() => done('ETIMEDOUT'), CONNECT_TIMEOUT_MS);
    socket.once('connect', () => done(null));
    socket.once('error', (err) => done(codeOf(err)));
  });
}

// --- taking and giving back ------------------------------------------------

interface Held {
  count: number;
  /** The line of the lock file, which names `listener`'s socket. */
  line: string;
  listener: Listener | null;
}

/** Locks held by stores of this thread, by the queue directory's identity. */
const holders = new Map<string, Held>();
/** The key of each lock file path handed out by acquireLock(). */
const keys = new Map<string, string>();
/**
 * Sockets of locks this thread gave back but could not remove: they stay
 * open while such a lock may be in place, so that it does not look
 * stale, and are taken up again if this thread takes that lock.
 */
const orphans = new Map<string, Listener>();

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
  const lockDir = await makeLockDir(dir);
  // Listening before the lock names it: a lock in place always has its
  // owner's socket behind it.
  const l = await listen(lockDir);
  const line = lineOf(l);
  /** Sockets named by the stale locks removed here. */
  const named = new Set<string>();
  let kept: Listener | null = null;
  try {
    for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
      if (await createWith(file, line, path.join(lockDir, DRAFT_BASE))) {
        kept = l;
        hold(key, file, line, l);
        await clearDebris(lockDir, l, named);
        return file;
      }
      const seen = await readLock(file);
      if (seen === null) continue; // released meanwhile
      const owner = parseOwner(seen.text);
      const v = owner ? await verdict(owner, file, lockDir) : DEAD;
      if (owner && v.kind === 'mine') {
        // Left by a store of this thread whose release failed, with the
        // socket it names still open; one naming a socket this thread does
        // not listen on would look stale to some: it is replaced.
        const orphan = owner.sock === null ? null : orphans.get(owner.sock);
        if (orphan !== undefined) {
          if (owner.sock !== null) orphans.delete(owner.sock);
          kept = orphan;
          hold(key, file, seen.text.trim(), orphan);
          return file;
        }
      } else if (v.kind === 'alive') {
        throw new LockedError(`queue '${dir}' is in use by ${v.who}${v.note}`);
      }
      if (await takeOver(lockDir, file, seen, line)) {
        const sock = owner?.sock;
        if (sock) named.add(sock);
      }
    }
    throw new LockedError(`queue '${dir}' lock is contended; try again`);
  } finally {
    if (kept !== l) await unlisten(l);
  }
}

async function release(file: string): Promise<void> {
  const key = keys.get(file);
  const held = key === undefined ? undefined : holders.get(key);
  if (key === undefined || !held) return;
  if (--held.count > 0) return;
  holders.delete(key);
  for (const [f, k] of keys) if (k === key) keys.delete(f);
  // Nobody else removes a lock whose owner lives, so it is still ours.
  // Its socket closes only once it is gone: a lock in place naming a
  // closed socket would look stale.
  let gone = false;
  try {
    const now = await readLock(file);
    gone =
      now === null ||
      now.text.trim() !== held.line ||
      (await unlinkOr(file).then(
        () => true,
        () => false,
      ));
  } finally {
    if (gone) await unlisten(held.listener);
    else if (held.listener?.name) {
      // Left in place, it is stale once this thread has ended.
      orphans.set(held.listener.name, held.listener);
    }
  }
}

function hold(
  key: string,
  file: string,
  line: string,
  listener: Listener | null,
): void {
  holders.set(key, { count: 1, line, listener });
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
 * they can do no harm, since it never comes back. A claim holds `line`,
 * which names this thread and its socket. Resolves with whether this
 * call removed it.
 */
async function takeOver(
  lockDir: string,
  file: string,
  seen: { ino: bigint; text: string },
  line: string,
): Promise<boolean> {
  const dir = path.dirname(file);
  const key = createHash('sha256')
    .update(`${seen.ino}\n${seen.text}`)
    .digest('hex')
    .slice(0, 16);
  const claim = (n: number) => path.join(lockDir, `${CLAIM_PREFIX}${key}.${n}`);
  for (let n = 0; n < GENERATIONS; n++) {
    if (await createWith(claim(n), line, claim(n))) {
      let gone = false;
      let removed = false;
      try {
        const now = await readLock(file);
        if (now !== null && now.ino === seen.ino && now.text === seen.text) {
          await unlinkOr(file);
          removed = true;
        }
        gone = true;
      } finally {
        // Once the stale lock is gone the older claims go too; before,
        // only this one, which no other taker may follow while we live.
        if (gone) for (let m = 0; m < n; m++) await unlinkOr(claim(m));
        await unlinkOr(claim(n));
      }
      return removed;
    }
    const text = await readText(claim(n));
    if (text === null) return false; // that taker is done: look again
    const taker = parseOwner(text);
    const v = taker ? await verdict(taker, claim(n), lockDir) : DEAD;
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
 * Removes the drafts, claims and sockets that killed processes left in
 * `lockDir`: drafts and claims whose owner is dead, or older than a few
 * file operations could take; sockets that refuse a connection, if a
 * lock, claim or draft named them (`named`, the stale locks removed;
 * or one found here), which was written once they listened, or if they
 * are older than that. (A socket is bound, then listens: in between it
 * refuses, for a moment.) Called holding the lock, so every stale lock
 * they were about is gone. `mine` is the socket of our lock.
 */
async function clearDebris(
  lockDir: string,
  mine: Listener,
  named: Set<string>,
): Promise<void> {
  try {
    const names: string[] = [];
    for await (const entry of await fs.opendir(lockDir, { bufferSize: 128 })) {
      if (entry.name !== mine.name) names.push(entry.name);
    }
    const sockets: { name: string; old: boolean }[] = [];
    for (const name of names) {
      const file = path.join(lockDir, name);
      const st = await fs.lstat(file).catch(() => null);
      if (!st) continue;
      const old = Date.now() - st.mtimeMs > DEBRIS_AGE_MS;
      if (st.isSocket()) {
        if (SOCK_PATTERN.test(name)) sockets.push({ name, old });
        continue;
      }
      if (!st.isFile()) continue;
      if (!name.startsWith(`${DRAFT_BASE}.`) && !name.startsWith(CLAIM_PREFIX)) {
        continue;
      }
      const text = await readText(file).catch(() => null);
      if (text === null) continue;
      const owner = parseOwner(text);
      if (owner?.sock) named.add(owner.sock);
      const v = owner ? await verdict(owner, file, lockDir) : null;
      if (v?.kind === 'dead' || v?.kind === 'mine' || old) await unlinkOr(file);
    }
    for (const { name, old } of sockets) {
      if (!old && !named.has(name)) continue;
      if ((await probe(lockDir, name)).kind === 'gone') {
        await unlinkOr(path.join(lockDir, name));
      }
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
