/**
 * The queue lock: one process at a time may change existing messages.
 *
 * Two processes updating one message would each read the meta, change it
 * and rename their version into place, and one update would be lost. So a
 * store takes `<metaDir>/.lock` before its first update, removal or
 * recovery scan, and a second process fails fast with ERR_QUEUE_LOCKED.
 * Adding new messages and read-only inspection take no lock.
 *
 * The lock is a file holding the owner's identity: pid, boot id and the
 * process start time, so a lock left by a crash is recognised as stale even
 * after a reboot has handed its pid to another process. It is created by
 * linking a finished file into place, so nobody ever reads a lock whose
 * owner has not been written yet.
 *
 * Stores of one process share the lock; the last one to close in the main
 * thread removes it. Worker threads cannot count each other's stores, so a
 * store closed in a worker leaves the lock for the process's end, when it
 * becomes stale.
 */

import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { isMainThread } from 'node:worker_threads';

import { LockedError } from './errors';

const LOCK_NAME = '.lock';
const TAKEOVER_NAME = '.lock.takeover';
const ATTEMPTS = 3;

/** Lock files held by stores of this thread, with how many hold each. */
const holders = new Map<string, number>();

/** The identity of process `pid`, or null where /proc cannot tell. */
function identity(pid: number): string | null {
  const boot = readOr('/proc/sys/kernel/random/boot_id');
  const stat = readOr(`/proc/${pid}/stat`);
  if (boot === null || stat === null) return null;
  // Field 22 of /proc/<pid>/stat, the start time; the command name (field
  // 2) may hold spaces, so count from its closing parenthesis.
  const start = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  return `${pid} ${boot.trim()} ${start}`;
}

function readOr(file: string): string | null {
  try {
    return readFileSync(file, 'latin1');
  } catch {
    return null;
  }
}

function mine(): string {
  return identity(process.pid) ?? `${process.pid}`;
}

/** Whether the process named in a lock file still runs. */
function ownerAlive(owner: string): boolean {
  const pid = Number(owner.split(' ')[0]);
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  const now = identity(pid);
  if (now !== null) return now === owner;
  // No /proc (not Linux): fall back to asking whether the pid exists.
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Takes the lock in `dir`; resolves with the lock file's path. */
export async function acquireLock(dir: string): Promise<string> {
  const file = path.join(dir, LOCK_NAME);
  const me = mine();
  for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
    if (await createWith(file, me)) return hold(file);

    const owner = await readOwner(file);
    if (owner === null) continue; // released meanwhile
    if (owner === me) return hold(file);
    if (ownerAlive(owner)) {
      throw new LockedError(
        `queue '${dir}' is in use by process ${owner.split(' ')[0]}`,
      );
    }
    await takeOver(dir, file, owner);
  }
  throw new LockedError(`queue '${dir}' lock is contended; try again`);
}

/** Gives the lock back once no store of this thread holds it. */
export async function releaseLock(file: string): Promise<void> {
  const count = (holders.get(file) ?? 1) - 1;
  if (count > 0) {
    holders.set(file, count);
    return;
  }
  holders.delete(file);
  if (!isMainThread) return;
  if ((await readOwner(file)) === mine()) {
    await fs.unlink(file).catch(() => undefined);
  }
}

function hold(file: string): string {
  holders.set(file, (holders.get(file) ?? 0) + 1);
  return file;
}

/**
 * Removes a stale lock. Only one process may do so at a time, or two could
 * each remove the other's fresh lock: creating the takeover file elects
 * that one. A takeover file whose creator died is cleared for the next
 * attempt.
 */
async function takeOver(
  dir: string,
  file: string,
  staleOwner: string,
): Promise<void> {
  const marker = path.join(dir, TAKEOVER_NAME);
  if (!(await createWith(marker, mine()))) {
    const taker = await readOwner(marker);
    if (taker !== null && ownerAlive(taker)) {
      throw new LockedError(`queue '${dir}' is being taken over; try again`);
    }
    await fs.unlink(marker).catch(() => undefined);
    return;
  }
  try {
    if ((await readOwner(file)) === staleOwner) await fs.unlink(file);
  } finally {
    await fs.unlink(marker).catch(() => undefined);
  }
}

/** The identity in a lock file; null when there is no such file. */
async function readOwner(file: string): Promise<string | null> {
  try {
    return (await fs.readFile(file, 'latin1')).trim();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

/**
 * Creates `file` holding `content`, or returns false when it exists. The
 * content is written under a private name first and then linked into
 * place, which never replaces a file and never shows a half-written one.
 */
async function createWith(file: string, content: string): Promise<boolean> {
  const draft = `${file}.${process.pid}.${randomBytes(4).toString('hex')}`;
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
