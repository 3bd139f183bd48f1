/**
 * The queue lock: one owner at a time may change existing messages.
 *
 * An update reads a meta file, changes it and renames a new one over it,
 * so two owners interleaving would lose updates. A store takes
 * `<metaDir>/.lock` before its first update, removal or recovery; writers
 * of new messages and read-only stores take none. An owner is one
 * instance of this module in one thread: its stores of a queue share the
 * lock; another thread, process or copy of the module is another owner
 * and fails with ERR_QUEUE_LOCKED.
 *
 * The owner listens on a Unix socket `<metaDir>/.lock.d/<hex>.sock`, then
 * links a complete draft into place as the lock: one line `slimta-lock 1
 * pid=<pid> thread=<threadId> sock=<hex>.sock` (pid and thread for
 * messages only). It removes the lock, then closes the socket. A taker
 * connects to the socket a lock names: accepted, or EAGAIN (the full
 * backlog of a stopped owner), means the owner lives; ECONNREFUSED or
 * ENOENT means the kernel or Node closed it (killed, exited, zombie,
 * ended worker, restarted container or host): the lock is stale. So is a
 * lock that does not parse, debris of a crash or power cut. Any other
 * error is refused until someone removes the lock by hand. A stale lock
 * is removed only by the taker that creates its claim n (`.lock.d/take.
 * <hash of the lock>.<n>`), having judged the takers of claims 0..n-1
 * dead by their sockets: two takers never act on one stale lock at once.
 * One window: worker.terminate() closes a worker's socket before a rename
 * that worker started has ended; close() its stores before terminating.
 * A queue must not be shared between machines.
 */

import { createHash, randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as net from 'node:net';
import * as path from 'node:path';
import { threadId } from 'node:worker_threads';

import { LockedError } from './errors';
import { syncDir } from './sync-dir';

const LINE = new RegExp(
  String.raw`^slimta-lock 1 pid=(\d{1,10}) thread=(\d{1,16}) ` +
    String.raw`sock=([0-9a-f]{32}\.sock)\n$`,
);
const SOCK = /^[0-9a-f]{32}\.sock$/;
/** Bytes of path a socket address holds; libuv cuts longer ones silently. */
const SUN_PATH_MAX = 107;
/** Listen errors saying that the directory cannot hold the socket. */
const NO_SOCKET = new Set(['EPERM', 'EOPNOTSUPP', 'EACCES', 'ENAMETOOLONG']);
/** A draft lives for a few file operations: one older is debris. */
const DEBRIS_AGE_MS = 60_000;
const ATTEMPTS = 5;

/** A lock or claim: who wrote it, and the socket (in .lock.d) it listens on. */
type Owner = { pid: string; thread: string; sock: string };

function parse(text: string | undefined): Owner | null {
  const m = LINE.exec(text ?? '');
  return m && { pid: m[1], thread: m[2], sock: m[3] };
}

type Listener = { name: string; file: string; server: net.Server };
/** `count` stores hold it; 0 once a release could not remove the lock. */
type Held = Listener & { count: number; text: string };

/** The locks this module instance holds, by the queue directory's identity. */
const held = new Map<string, Held>();
/** That identity for each lock file path handed out. */
const keys = new Map<string, string>();

/** One acquire(): the queue, its lock, our text, sockets of the dead. */
type Taking = {
  dir: string;
  file: string;
  lockDir: string;
  text: string;
  named: Set<string>;
};

/** Lock calls of this instance run one at a time. */
let queue: Promise<unknown> = Promise.resolve();
function serially<T>(fn: () => Promise<T>): Promise<T> {
  const run = queue.then(fn, fn);
  queue = run.catch(() => undefined);
  return run;
}

/** Takes the lock in `dir`; resolves with the lock file's path. */
export function acquireLock(dir: string): Promise<string> {
  return serially(() => acquire(dir));
}

/** Gives the lock back once no store of this instance holds it. */
export function releaseLock(file: string): Promise<void> {
  return serially(() => release(file));
}

async function acquire(dir: string): Promise<string> {
  const file = path.join(dir, '.lock');
  const st = await fs.stat(dir, { bigint: true });
  const key = `${st.dev}:${st.ino}`;
  const mine = held.get(key);
  if (mine) {
    mine.count++;
    keys.set(file, key);
    return file;
  }
  const lockDir = await makeLockDir(dir);
  // Listening first: a lock in place always has its owner's socket behind it.
  const me = await listen(lockDir, dir);
  const text =
    `slimta-lock 1 pid=${process.pid} thread=${threadId} ` +
    `sock=${me.name}\n`;
  const q: Taking = { dir, file, lockDir, text, named: new Set() };
  let kept = false;
  try {
    for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
      if (await create(file, text, lockDir)) {
        held.set(key, { ...me, count: 1, text });
        keys.set(file, key);
        kept = true;
        await sweep(lockDir, me.name, q.named);
        return file;
      }
      const seen = await readLock(file);
      if (seen === null) continue; // released meanwhile
      const owner = parse(seen.text);
      if (owner) await judge(q, owner, file, 'is in use by', '');
      await takeOver(q, seen);
    }
    throw new LockedError(`queue '${dir}' lock is contended; try again`);
  } finally {
    if (!kept) await unlisten(me);
  }
}

async function release(file: string): Promise<void> {
  const key = keys.get(file);
  const h = key === undefined ? undefined : held.get(key);
  if (key === undefined || !h || h.count === 0 || --h.count > 0) return;
  // Nobody else removes the lock while its socket listens, and the socket
  // closes only once the lock is gone. A lock that cannot be removed keeps
  // its socket (count 0) until a store takes it again or the thread ends.
  try {
    if ((await readLock(file))?.text === h.text) await unlinkOr(file);
  } catch {
    return;
  }
  held.delete(key);
  for (const [f, k] of keys) if (k === key) keys.delete(f);
  await unlisten(h);
}

/**
 * Returns if the owner or taker `o` is gone; else throws that it is
 * `doing` (and `then` if it lives). `file` names it, to remove by hand.
 */
async function judge(
  q: Taking,
  o: Owner,
  file: string,
  doing: string,
  then: string,
) {
  q.named.add(o.sock); // swept if it refuses
  const code = await probe(q.lockDir, o.sock);
  if (gone(code)) return;
  const who = `queue '${q.dir}' ${doing} process ${o.pid} (thread ${o.thread})`;
  if (code === null || code === 'EAGAIN') throw new LockedError(who + then);
  throw new LockedError(
    `${who}, which cannot be checked: connecting to its socket failed ` +
      `(${code}); once it is known to be gone, remove '${file}' by hand`,
    { retryable: false },
  );
}

const gone = (code: string | null) =>
  code === 'ECONNREFUSED' || code === 'ENOENT';

/**
 * Removes the stale lock `seen` if it is still in place. Only the taker
 * that creates claim n of it may, once it judged the takers of claims
 * 0..n-1 dead (a claim names its taker's socket, which listens before
 * the claim exists). No claim of a stale lock in place is removed, so no
 * two live takers hold one; once it is gone none can harm, as it never
 * comes back: claims are named after its inode and its unique content.
 */
async function takeOver(
  q: Taking,
  seen: { ino: bigint; text: string },
): Promise<void> {
  const hash = createHash('sha256')
    .update(`${seen.ino}\n${seen.text}`)
    .digest('hex');
  const claim = (n: number) =>
    path.join(q.lockDir, `take.${hash.slice(0, 16)}.${n}`);
  for (let n = 0; ; n++) {
    if (await create(claim(n), q.text, q.lockDir)) {
      let removed = false;
      try {
        const now = await readLock(q.file);
        if (now?.ino === seen.ino && now.text === seen.text)
          await unlinkOr(q.file);
        removed = true;
      } finally {
        // Its own claim; once the stale lock is gone, the older ones too.
        for (let m = removed ? 0 : n; m <= n; m++)
          await unlinkOr(claim(m)).catch(() => {});
      }
      return;
    }
    const other = await readLock(claim(n));
    if (other === null) return; // its taker is done: look again
    const taker = parse(other.text);
    if (taker)
      await judge(q, taker, claim(n), 'is being taken over by', '; try again');
  }
}

/**
 * Removes what dead owners and takers left in `lockDir`, listing only it,
 * never the meta directory: drafts and claims whose socket is gone (one
 * cut short once a minute old: a live taker may be writing it), and
 * sockets that refuse if something named them (written once they
 * listened) or once a minute old (a live one refuses between its bind
 * and its listen). Called holding the lock, so the stale locks that the
 * claims were about are gone.
 */
async function sweep(
  lockDir: string,
  mine: string,
  named: Set<string>,
): Promise<void> {
  const isOld = async (file: string) =>
    Date.now() -
      ((await fs.lstat(file).catch(() => null))?.mtimeMs ?? Infinity) >
    DEBRIS_AGE_MS;
  try {
    const sockets: string[] = [];
    for (const name of await fs.readdir(lockDir)) {
      const file = path.join(lockDir, name);
      if (SOCK.test(name)) {
        if (name !== mine) sockets.push(name);
      } else if (name.startsWith('draft.') || name.startsWith('take.')) {
        const o = parse((await readLock(file))?.text);
        if (o) named.add(o.sock);
        if (o ? gone(await probe(lockDir, o.sock)) : await isOld(file))
          await unlinkOr(file);
      }
    }
    for (const name of sockets) {
      const file = path.join(lockDir, name);
      if (
        (named.has(name) || (await isOld(file))) &&
        gone(await probe(lockDir, name))
      ) {
        await unlinkOr(file);
      }
    }
  } catch {
    // Tidying only: the lock is taken all the same.
  }
}

// --- the socket ------------------------------------------------------------

/**
 * Listens on a fresh socket in `lockDir`. Fails, not retryable, where the
 * directory cannot hold one: a lock would have nothing to be checked by.
 */
async function listen(lockDir: string, dir: string): Promise<Listener> {
  const name = `${randomBytes(16).toString('hex')}.sock`;
  const file = path.join(lockDir, name);
  let server: net.Server | null = null;
  try {
    server = await withAddress(lockDir, name, bind);
    await fs.chmod(file, 0o600);
    return { name, file, server };
  } catch (err) {
    if (server) await unlisten({ name, file, server });
    else await unlinkOr(file).catch(() => {});
    const code = (err as NodeJS.ErrnoException).code ?? '';
    if (!NO_SOCKET.has(code)) throw err;
    const why =
      code === 'ENAMETOOLONG'
        ? `over the ${SUN_PATH_MAX} bytes of a socket address, and no ` +
          '/proc/self/fd'
        : 'its filesystem may hold no sockets';
    throw new LockedError(
      `queue '${dir}' cannot be locked: its meta directory cannot hold ` +
        `the lock's socket '${file}' (${code}: ${why})`,
      { cause: err, retryable: false },
    );
  }
}

function bind(address: string): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    // A connection only tells that we live; nothing is read from it.
    const server = net.createServer({ pauseOnConnect: true }, (c) =>
      c.destroy(),
    );
    server.once('error', reject);
    server.listen(address, () => {
      server.removeListener('error', reject);
      server.on('error', () => undefined);
      resolve(server);
    });
    // It keeps no process or worker alive; it closes with them.
    server.unref();
  });
}

async function unlisten({ server, file }: Listener): Promise<void> {
  await new Promise((resolve) => server.close(resolve));
  await unlinkOr(file).catch(() => {});
}

/** Connects to socket `name` in `lockDir`: null if accepted, else the code. */
async function probe(lockDir: string, name: string): Promise<string | null> {
  const connect = (address: string) =>
    new Promise<string | null>((resolve) => {
      const socket = net.connect({ path: address });
      const done = (code: string | null) => (socket.destroy(), resolve(code));
      socket.once('connect', () => done(null));
      socket.once('error', (err: NodeJS.ErrnoException) =>
        done(err.code ?? 'EIO'),
      );
    });
  try {
    return await withAddress(lockDir, name, connect);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? 'EIO';
  }
}

/**
 * Runs `fn` with an address of `name` in `dir` that fits a socket
 * address: the path itself, or /proc/self/fd/<fd>/<name> while an fd of
 * `dir` is open, once /proc/self/fd/<fd> is checked to be that
 * directory. Rejects with ENAMETOOLONG when neither will do.
 */
async function withAddress<T>(
  dir: string,
  name: string,
  fn: (at: string) => Promise<T>,
) {
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

// --- files -----------------------------------------------------------------

/**
 * `<dir>/.lock.d`, made if missing, as open as `dir` and, when made by
 * root, owned by the owner of `dir`, so that its owner can take the lock.
 */
async function makeLockDir(dir: string): Promise<string> {
  const lockDir = path.join(path.resolve(dir), '.lock.d');
  const st = await fs.stat(dir);
  try {
    await fs.mkdir(lockDir, { mode: st.mode & 0o777 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return lockDir;
    throw err;
  }
  if (process.getuid?.() === 0 && (st.uid !== 0 || st.gid !== 0)) {
    await fs.chown(lockDir, st.uid, st.gid).catch(() => {});
  }
  return lockDir;
}

/**
 * Creates `file` holding `text`, or returns false when it exists: a draft
 * in `lockDir` is written, then linked into place, which never replaces a
 * file nor shows one half written.
 */
async function create(
  file: string,
  text: string,
  lockDir: string,
): Promise<boolean> {
  const draft = path.join(lockDir, `draft.${randomBytes(8).toString('hex')}`);
  await fs.writeFile(draft, text, { flag: 'wx', mode: 0o600 });
  try {
    await fs.link(draft, file);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  } finally {
    await unlinkOr(draft).catch(() => {});
    // Best effort, so that a power cut leaves no draft behind: the lock
    // itself needs no durability (a lost or cut-short one is stale).
    await syncDir(lockDir).catch(() => {});
  }
}

/** A lock or claim file's inode and content; null when there is none. */
async function readLock(
  file: string,
): Promise<{ ino: bigint; text: string } | null> {
  let handle: fs.FileHandle;
  try {
    // Non-blocking, so that a FIFO planted there cannot hang the open.
    handle = await fs.open(file, constants.O_RDONLY | constants.O_NONBLOCK);
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

async function unlinkOr(file: string): Promise<void> {
  await fs.unlink(file).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
}
