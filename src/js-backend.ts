import { constants } from 'node:fs';
import * as fs from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import * as os from 'node:os';
import type {
  Backend,
  BackendOptions,
  FileStat,
  Step,
  WriteTmpStep,
} from './plan';

// The same limits as the native chain: one write call carries less than
// 1 GiB and at most 1024 buffers.
const MAX_WRITE_BYTES = 2 ** 30 - 4096;
const MAX_WRITE_BUFS = 1024;

// libuv adds O_CLOEXEC to every open on its own; it is named here where
// the platform defines it, to say that the fd is never inherited.
const O_CLOEXEC = (constants as { O_CLOEXEC?: number }).O_CLOEXEC ?? 0;

const TMP_FLAGS =
  constants.O_WRONLY |
  constants.O_CREAT |
  constants.O_EXCL |
  constants.O_NOFOLLOW |
  O_CLOEXEC;

const DIR_FLAGS = constants.O_RDONLY | constants.O_DIRECTORY | O_CLOEXEC;

/** What a plan has made so far, to be undone if a later step fails. */
interface Made {
  tmpNames: string[];
  published: string[];
}

// TODO: a worker terminated or a process exiting mid-plan never resumes
// the awaits, so the undo of the native chain does not happen here and
// tmp files may stay; the store's startup sweep has to remove them.

/**
 * Runs plans with node:fs/promises, one awaited call per system call:
 * the same steps, failure and undo rules, and error codes as the native
 * backend, for where the addon cannot load. Group commit works as in
 * the addon: directory syncs are shared by the plans of this thread.
 */
export class JsBackend implements Backend {
  readonly name = 'js' as const;
  private readonly groupCommit: boolean;

  constructor(options: BackendOptions = {}) {
    this.groupCommit = options.groupCommit ?? true;
  }

  async run(steps: Step[]): Promise<void> {
    const plan = copySteps(steps);
    const made: Made = { tmpNames: [], published: [] };
    try {
      for (const step of plan) {
        if (step.op === 'sync_dir' && this.groupCommit) {
          await sharedSyncDir(step.path);
        } else {
          await runStep(step, made);
        }
      }
    } catch (err) {
      await undo(made);
      throw err;
    }
  }

  async readFiles(
    paths: string[],
  ): Promise<(Buffer | NodeJS.ErrnoException)[]> {
    if (!Array.isArray(paths)) invalid('paths must be an array');
    for (const p of paths) checkPath(p, 'path');
    const files: (Buffer | NodeJS.ErrnoException)[] = [];
    for (const p of paths) {
      try {
        files.push(await fs.readFile(p));
      } catch (err) {
        files.push(err as NodeJS.ErrnoException);
      }
    }
    return files;
  }

  async statFiles(
    paths: string[],
  ): Promise<(FileStat | NodeJS.ErrnoException)[]> {
    if (!Array.isArray(paths)) invalid('paths must be an array');
    for (const p of paths) checkPath(p, 'path');
    const stats: (FileStat | NodeJS.ErrnoException)[] = [];
    for (const p of paths) {
      try {
        const st = await fs.lstat(p);
        stats.push({ size: st.size, ctimeMs: st.ctimeMs });
      } catch (err) {
        stats.push(err as NodeJS.ErrnoException);
      }
    }
    return stats;
  }
}

interface Waiter {
  resolve: () => void;
  reject: (err: unknown) => void;
}

/** Directories with a shared sync running, and who waits for the next. */
const dirSyncs = new Map<string, Waiter[]>();

/**
 * Resolves once a sync of `dir` that started after this call has ended.
 * A sync already running may have started before the caller's link or
 * rename and does not count: whoever asks meanwhile waits for the next
 * one, which starts when it ends and covers all of them.
 */
function sharedSyncDir(dir: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const waiting = dirSyncs.get(dir);
    if (waiting) {
      waiting.push({ resolve, reject });
      return;
    }
    const first = [{ resolve, reject }];
    dirSyncs.set(dir, []);
    void syncInTurns(dir, first);
  });
}

async function syncInTurns(dir: string, first: Waiter[]): Promise<void> {
  let covered = first;
  while (covered.length > 0) {
    try {
      await syncDir(dir);
      for (const w of covered) w.resolve();
    } catch (err) {
      for (const w of covered) w.reject(err);
    }
    covered = dirSyncs.get(dir) ?? [];
    dirSyncs.set(dir, []);
  }
  dirSyncs.delete(dir);
}

async function syncDir(dir: string): Promise<void> {
  return withHandle(await fs.open(dir, DIR_FLAGS), (fh) => fh.sync());
}

function invalid(message: string): never {
  const err = new TypeError(message) as NodeJS.ErrnoException;
  err.code = 'ERR_INVALID_ARG_VALUE';
  throw err;
}

// As in the native backend, a NUL byte would cut the path short at the
// OS, so it is refused before anything runs.
function checkPath(value: unknown, key: string): void {
  if (typeof value !== 'string') invalid(`${key} must be a string`);
  if (value.includes('\0')) invalid(`${key} contains a NUL byte`);
}

// Every step is checked and copied before the first one runs, as the
// native glue does while it converts its arguments: a caller changing
// the steps or emptying a bufs array afterwards changes nothing. The
// Buffers themselves are not copied, in either backend.
function copySteps(steps: Step[]): Step[] {
  if (!Array.isArray(steps)) invalid('steps must be an array');
  return steps.map((step) => {
    if (typeof step !== 'object' || step === null) {
      invalid('a step must be an object');
    }
    switch (step.op) {
      case 'write_tmp':
        checkPath(step.path, 'path');
        if (
          !Array.isArray(step.bufs) ||
          !step.bufs.every((b) => ArrayBuffer.isView(b))
        ) {
          invalid('step.bufs must be an array of Buffers');
        }
        break;
      case 'publish':
      case 'replace':
        checkPath(step.from, 'from');
        checkPath(step.to, 'to');
        break;
      case 'unlink':
      case 'sync_dir':
        checkPath(step.path, 'path');
        break;
      default:
        invalid(`unknown step op '${(step as { op: unknown }).op}'`);
    }
    return step.op === 'write_tmp'
      ? { ...step, bufs: [...step.bufs] }
      : { ...step };
  });
}

function forget(names: string[], name: string): void {
  const i = names.indexOf(name);
  if (i !== -1) names.splice(i, 1);
}

async function runStep(step: Step, made: Made): Promise<void> {
  switch (step.op) {
    case 'write_tmp':
      return writeTmp(step, made);

    // Link, unlike rename, never replaces: an existing name fails with
    // EEXIST, so one message is never written over another.
    case 'publish':
      await fs.link(step.from, step.to);
      made.published.push(step.to);
      await fs.unlink(step.from);
      forget(made.tmpNames, step.from);
      return;

    // Not undone: once the rename succeeds the old file is gone.
    case 'replace':
      await fs.rename(step.from, step.to);
      forget(made.tmpNames, step.from);
      return;

    case 'unlink':
      try {
        await fs.unlink(step.path);
      } catch (err) {
        const gone = (err as NodeJS.ErrnoException).code === 'ENOENT';
        if (!(gone && step.missingOk)) throw err;
      }
      forget(made.tmpNames, step.path);
      return;

    // A new or removed name is durable only once its directory is
    // synced, hence this comes after the link or rename it covers.
    case 'sync_dir':
      return syncDir(step.path);
  }
}

// O_EXCL makes a leftover or planted file an error, O_NOFOLLOW keeps a
// symlink from sending the body elsewhere, and datasync puts the body on
// the disk before any name points at it.
async function writeTmp(step: WriteTmpStep, made: Made): Promise<void> {
  const fh = await fs.open(step.path, TMP_FLAGS, 0o600);
  made.tmpNames.push(step.path);
  await withHandle(fh, async () => {
    await writeAll(fh, step.bufs);
    await fh.datasync();
  });
}

// Runs work on an open handle and closes it; when the work fails the
// close error is dropped, since the first error is the one to report.
async function withHandle(
  fh: FileHandle,
  work: (fh: FileHandle) => Promise<void>,
): Promise<void> {
  try {
    await work(fh);
  } catch (err) {
    await fh.close().catch(() => undefined);
    throw err;
  }
  await fh.close();
}

// A write may take fewer bytes than offered, so each call starts where
// the last one stopped.
async function writeAll(fh: FileHandle, bufs: Buffer[]): Promise<void> {
  let index = 0;
  let offset = 0;
  let position = 0;
  for (;;) {
    while (index < bufs.length && offset === bufs[index].length) {
      index++;
      offset = 0;
    }
    if (index === bufs.length) return;

    const iov: Buffer[] = [];
    let room = MAX_WRITE_BYTES;
    for (let i = index, off = offset; i < bufs.length; i++, off = 0) {
      if (room === 0 || iov.length === MAX_WRITE_BUFS) break;
      const len = Math.min(bufs[i].length - off, room);
      if (len > 0) iov.push(bufs[i].subarray(off, off + len));
      room -= len;
    }

    const { bytesWritten } = await fh.writev(iov, position);
    if (bytesWritten === 0) throw ioError('write');
    position += bytesWritten;

    let n = bytesWritten;
    while (n > 0) {
      const left = bufs[index].length - offset;
      if (n < left) {
        offset += n;
        n = 0;
      } else {
        n -= left;
        index++;
        offset = 0;
      }
    }
  }
}

// What the native chain reports when a write makes no progress.
function ioError(syscall: string): NodeJS.ErrnoException {
  const err = new Error(`EIO: i/o error, ${syscall}`) as NodeJS.ErrnoException;
  err.errno = -os.constants.errno.EIO;
  err.code = 'EIO';
  err.syscall = syscall;
  return err;
}

// Nothing of a failed plan may stay: tmp files still under their tmp
// name and names it published are unlinked, errors ignored.
async function undo(made: Made): Promise<void> {
  for (const name of [...made.tmpNames, ...made.published]) {
    await fs.unlink(name).catch(() => undefined);
  }
}
