/**
 * The queue lock: one process at a time may change a queue.
 *
 * Two processes updating one message would each read the meta, change it
 * and rename their version into place, and one update would be lost. So a
 * store that may write takes `<metaDir>/.lock` first, and a second process
 * fails fast with ERR_QUEUE_LOCKED. Read-only stores take no lock.
 *
 * The lock is a file holding the owner's identity: pid, boot id and the
 * process start time, so a lock left by a crash is recognised as stale even
 * after a reboot has handed its pid to another process. Threads of one
 * process share the lock.
 */

import { readFileSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';

import { LockedError } from './errors';

const LOCK_NAME = '.lock';
const TAKEOVER_NAME = '.lock.takeover';

/** This process, as written into the lock file. */
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

/** Whether the process named in a lock file still runs. */
function ownerAlive(content: string): boolean {
  const pid = Number(content.split(' ')[0]);
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  const now = identity(pid);
  if (now !== null) return now === content.trim();
  // No /proc (not Linux): fall back to asking whether the pid exists.
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function mine(): string {
  return identity(process.pid) ?? `${process.pid}`;
}

/** Takes the lock in `dir`; resolves with its path. */
export async function acquireLock(dir: string): Promise<string> {
  const file = path.join(dir, LOCK_NAME);
  const me = mine();
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await writeExclusive(file, me);
      return file;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const owner = await fs.readFile(file, 'latin1').catch(() => '');
    if (owner.trim() === me) return file;
    if (owner !== '' && ownerAlive(owner)) {
      throw new LockedError(
        `queue '${dir}' is in use by process ${owner.split(' ')[0]}`,
      );
    }
    await takeOver(dir, file, owner);
  }
  throw new LockedError(`queue '${dir}' lock is contended; try again`);
}

/**
 * Removes a stale lock. Only one process may do so at a time, or two could
 * each remove the other's fresh lock: the takeover file, created with
 * O_EXCL, elects that one.
 */
async function takeOver(
  dir: string,
  file: string,
  staleOwner: string,
): Promise<void> {
  const marker = path.join(dir, TAKEOVER_NAME);
  try {
    await writeExclusive(marker, mine());
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    const taker = await fs.readFile(marker, 'latin1').catch(() => '');
    if (taker !== '' && ownerAlive(taker)) {
      throw new LockedError(`queue '${dir}' is being taken over; try again`);
    }
    // A taker that died half-way: clear its marker for the next attempt.
    await fs.unlink(marker).catch(() => undefined);
    throw new LockedError(`queue '${dir}' lock is contended; try again`);
  }
  try {
    const now = await fs.readFile(file, 'latin1').catch(() => '');
    if (now === staleOwner) await fs.unlink(file).catch(() => undefined);
  } finally {
    await fs.unlink(marker).catch(() => undefined);
  }
}

/** Gives the lock back, if this process still holds it. */
export async function releaseLock(file: string): Promise<void> {
  const owner = await fs.readFile(file, 'latin1').catch(() => '');
  if (owner.trim() === mine()) await fs.unlink(file).catch(() => undefined);
}

async function writeExclusive(file: string, content: string): Promise<void> {
  const handle = await fs.open(file, 'wx', 0o600);
  try {
    await handle.writeFile(content + '\n', 'latin1');
  } finally {
    await handle.close();
  }
}
