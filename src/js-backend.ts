import { constants } from 'node:fs';
import * as fs from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { types } from 'node:util';
import { ID_PATTERN } from './format';
import { Limiter, defaultMaxInFlight } from './limiter';
import type {
  Backend,
  BackendOptions,
  FileStat,
  MetaScan,
  Step,
  SyncDirStep,
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

// Queue files are read without following a planted symlink, and without
// blocking on a planted FIFO (see readQueueFile).
const READ_FLAGS =
  constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK | O_CLOEXEC;

/** What a plan has made so far, to be undone if a later step fails. */
interface Made {
  tmpNames: string[];
  published: string[];
}

interface Waiter {
  resolve: () => void;
  reject: (err: unknown) => void;
}

/** The shared sync of one directory while anyone waits for it. */
interface DirSync {
  /** Covered by the sync under way. */
  covered: Waiter[];
  /** Asked once its fsync had started: they wait for the next one. */
  next: Waiter[];
  syncing: boolean;
}

/**
 * A share of the pool, as a gate of the addon is: its slots, the
 * directory syncs of the plans that pass them, and the failed fsyncs
 * among those, shared or alone.
 */
interface Share {
  slots: Limiter;
  dirSyncs: Map<string, DirSync>;
  failedFsyncs: number;
  lastFailure: NodeJS.ErrnoException | null;
}

function newShare(maxInFlight: number): Share {
  return {
    slots: new Limiter(maxInFlight),
    dirSyncs: new Map(),
    failedFsyncs: 0,
    lastFailure: null,
  };
}

// The share of the backends that keep the default maxInFlight; each
// thread loads this module, and so has its own.
let defaultShare: Share | null = null;

/**
 * Runs plans with node:fs/promises: the same steps, failure and undo
 * rules, and error codes as the native backend, for where the addon
 * cannot load. Each awaited fs call, and each whole-file read (see
 * readQueueFile), takes a slot of the backend's gate, as each request
 * or job does in the addon: a gate of its own when maxInFlight is
 * given, else the one the thread's other such backends share. Group
 * commit works as there: directory syncs are shared by the plans of one
 * gate.
 *
 * As there, a failed directory fsync counts for every plan that had
 * changed a name before it ended: after a failure Linux may drop the
 * directory's dirty state and report the error only once, so a later
 * fsync may succeed without having written that name. A plan's sync_dir
 * step fails when any fsync of its gate failed after the plan's first
 * link, rename or unlink was made, even if its own sync succeeded.
 */
export class JsBackend implements Backend {
  readonly name = 'js' as const;
  private readonly groupCommit: boolean;
  private readonly share: Share;
  private readonly gate: Limiter;

  constructor(options: BackendOptions = {}) {
    this.groupCommit = options.groupCommit ?? true;
    if (options.maxInFlight !== undefined) {
      this.share = newShare(options.maxInFlight);
    } else {
      defaultShare ??= newShare(defaultMaxInFlight());
      this.share = defaultShare;
    }
    this.gate = this.share.slots;
  }

  // TODO: a worker terminated or a process exiting mid-plan never
  // resumes the awaits, so the undo of the native chain does not happen
  // here: tmp files, and names a publish step made, may stay. load()
  // later removes the stale tmp files and quarantines an env file left
  // without its meta.
  async run(steps: Step[]): Promise<void> {
    const plan = copySteps(steps);
    const made: Made = { tmpNames: [], published: [] };
    // The failed fsyncs counted when the first link, rename or unlink
    // of the plan was made: any failed after may have cost its names.
    const share = this.share;
    let seen: number | null = null;
    const changing = () => {
      seen ??= share.failedFsyncs;
    };
    try {
      for (const step of plan) {
        if (step.op !== 'sync_dir') {
          await runStep(this.gate, step, made, changing);
          continue;
        }
        // A new or removed name is durable only once its directory is
        // synced, hence this comes after the link or rename it covers.
        if (this.groupCommit) await this.sharedSyncDir(step.path);
        else await this.syncDir(step.path);
        if (seen !== null && share.failedFsyncs > seen) {
          throw copyError(share.lastFailure as NodeJS.ErrnoException);
        }
      }
    } catch (err) {
      await undo(this.gate, made);
      throw err;
    }
  }

  async readFiles(
    paths: string[],
  ): Promise<(Buffer | NodeJS.ErrnoException)[]> {
    if (!Array.isArray(paths)) invalid('paths must be an array');
    for (const p of paths) checkPath(p, 'path');
    const files: (Buffer | NodeJS.ErrnoException)[] = [];
    for (const p of paths) files.push(await this.readOne(p));
    return files;
  }

  async statFiles(
    paths: string[],
  ): Promise<(FileStat | NodeJS.ErrnoException)[]> {
    if (!Array.isArray(paths)) invalid('paths must be an array');
    for (const p of paths) checkPath(p, 'path');
    const stats: (FileStat | NodeJS.ErrnoException)[] = [];
    for (const p of paths) stats.push(await this.lstatOne(p));
    return stats;
  }

  // Each id's read, then its lstat, one slot at a time, as the native
  // scan does in its one job.
  async scanMeta(
    metaDir: string,
    envDir: string,
    ids: string[],
  ): Promise<MetaScan> {
    checkPath(metaDir, 'metaDir');
    checkPath(envDir, 'envDir');
    if (!Array.isArray(ids)) invalid('ids must be an array');
    for (const id of ids) {
      if (typeof id !== 'string' || !ID_PATTERN.test(id)) {
        invalid('an id must be 32 lowercase hex digits');
      }
    }
    const metas: MetaScan['metas'] = [];
    const envStats: MetaScan['envStats'] = [];
    for (const id of ids) {
      metas.push(await this.readOne(path.join(metaDir, `${id}.meta`)));
      envStats.push(await this.lstatOne(path.join(envDir, `${id}.env`)));
    }
    return { metas, envStats };
  }

  // A file's bytes, or the error that stopped its read.
  private async readOne(
    file: string,
  ): Promise<Buffer | NodeJS.ErrnoException> {
    try {
      return await this.gate.run(() => readQueueFile(file));
    } catch (err) {
      return err as NodeJS.ErrnoException;
    }
  }

  private async lstatOne(
    file: string,
  ): Promise<FileStat | NodeJS.ErrnoException> {
    try {
      const st = await this.gate.run(() => fs.lstat(file));
      return { size: st.size, ctimeMs: st.ctimeMs };
    } catch (err) {
      return err as NodeJS.ErrnoException;
    }
  }

  /**
   * Resolves once a sync of `dir` whose fsync started after this call
   * has ended. One whose fsync already started may predate the caller's
   * link or rename and does not count: whoever asks then waits for the
   * next sync, which starts when it ends and covers all of them. Until
   * its fsync starts, a sync covers everyone who asks.
   */
  private sharedSyncDir(dir: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject };
      const { dirSyncs } = this.share;
      const running = dirSyncs.get(dir);
      if (running) {
        (running.syncing ? running.next : running.covered).push(waiter);
        return;
      }
      const sync: DirSync = {
        covered: [waiter],
        next: [],
        syncing: false,
      };
      dirSyncs.set(dir, sync);
      void this.syncInTurns(dir, sync);
    });
  }

  private async syncInTurns(dir: string, sync: DirSync): Promise<void> {
    while (sync.covered.length > 0) {
      try {
        await this.syncDir(dir, () => {
          sync.syncing = true;
        });
        for (const w of sync.covered) w.resolve();
      } catch (err) {
        // Each waiter's own copy: a caller may add to the error it gets.
        const failure = err as NodeJS.ErrnoException;
        for (const w of sync.covered) w.reject(copyError(failure));
      }
      sync.covered = sync.next;
      sync.next = [];
      sync.syncing = false;
    }
    this.share.dirSyncs.delete(dir);
  }

  // `starting` runs right before the fsync is submitted, in the same
  // turn, so that whoever asked before it is covered. A failed fsync
  // names the directory, as in the native backend, and is counted
  // before anyone hears of it.
  private async syncDir(dir: string, starting?: () => void): Promise<void> {
    const { gate } = this;
    const fh = await gate.run(() => fs.open(dir, DIR_FLAGS));
    return withHandle(gate, fh, () =>
      gate.run(async () => {
        starting?.();
        try {
          await fh.sync();
        } catch (err) {
          const failure = withPath(err as NodeJS.ErrnoException, dir);
          this.share.failedFsyncs++;
          this.share.lastFailure = failure;
          throw failure;
        }
      }),
    );
  }
}

// An fs error of a call on an fd, named by the file's path as Node names
// the errors of calls on a path.
function withPath(
  err: NodeJS.ErrnoException,
  file: string,
): NodeJS.ErrnoException {
  const named = copyError(err, `${err.message} '${file}'`);
  named.path = file;
  return named;
}

// A fresh Error for each plan that one failure fails.
function copyError(
  err: NodeJS.ErrnoException,
  message = err.message,
): NodeJS.ErrnoException {
  const copy = new Error(message) as NodeJS.ErrnoException;
  copy.errno = err.errno;
  copy.code = err.code;
  copy.syscall = err.syscall;
  if (err.path !== undefined) copy.path = err.path;
  return copy;
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
// Buffers themselves are not copied, in either backend. Both take only
// Uint8Arrays (Buffers among them), whose length counts bytes.
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
          !step.bufs.every((b) => types.isUint8Array(b))
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

// `changing` runs right before each link, rename or unlink is made.
// sync_dir steps are the backend's own, which counts failed fsyncs.
async function runStep(
  gate: Limiter,
  step: Exclude<Step, SyncDirStep>,
  made: Made,
  changing: () => void,
): Promise<void> {
  switch (step.op) {
    case 'write_tmp':
      return writeTmp(gate, step, made);

    // Link, unlike rename, never replaces: an existing name fails with
    // EEXIST, so one message is never written over another.
    case 'publish':
      await gate.run(() => {
        changing();
        return fs.link(step.from, step.to);
      });
      made.published.push(step.to);
      await gate.run(() => fs.unlink(step.from));
      forget(made.tmpNames, step.from);
      return;

    // Not undone: once the rename succeeds the old file is gone.
    case 'replace':
      await gate.run(() => {
        changing();
        return fs.rename(step.from, step.to);
      });
      forget(made.tmpNames, step.from);
      return;

    case 'unlink':
      try {
        await gate.run(() => {
          changing();
          return fs.unlink(step.path);
        });
      } catch (err) {
        const gone = (err as NodeJS.ErrnoException).code === 'ENOENT';
        if (!(gone && step.missingOk)) throw err;
      }
      forget(made.tmpNames, step.path);
      return;
  }
}

// O_EXCL makes a leftover or planted file an error, O_NOFOLLOW keeps a
// symlink from sending the body elsewhere, and datasync puts the body on
// the disk before any name points at it.
async function writeTmp(
  gate: Limiter,
  step: WriteTmpStep,
  made: Made,
): Promise<void> {
  const fh = await gate.run(() => fs.open(step.path, TMP_FLAGS, 0o600));
  made.tmpNames.push(step.path);
  await withHandle(gate, fh, async () => {
    await writeAll(gate, fh, step.bufs);
    await gate.run(() => fh.datasync());
  });
}

// Runs work on an open handle and closes it; when the work fails the
// close error is dropped, since the first error is the one to report.
async function withHandle(
  gate: Limiter,
  fh: FileHandle,
  work: () => Promise<void>,
): Promise<void> {
  try {
    await work();
  } catch (err) {
    await gate.run(() => fh.close()).catch(() => undefined);
    throw err;
  }
  await gate.run(() => fh.close());
}

// A write may take fewer bytes than offered, so each call starts where
// the last one stopped.
async function writeAll(
  gate: Limiter,
  fh: FileHandle,
  bufs: Buffer[],
): Promise<void> {
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

    const { bytesWritten } = await gate.run(() => fh.writev(iov, position));
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
// name and names it published are unlinked, errors ignored. As in the
// native chain, the name published last goes first, so that a kill
// half-way never leaves a meta without its env.
async function undo(gate: Limiter, made: Made): Promise<void> {
  for (const name of [...made.tmpNames, ...made.published].reverse()) {
    await gate.run(() => fs.unlink(name)).catch(() => undefined);
  }
}

/**
 * Reads a whole file as the native backend does: a directory fails at
 * read with EISDIR, and anything else that is not a regular file (a FIFO,
 * a device) with EINVAL, so that a planted one cannot stall or flood a
 * read of the queue. Its caller runs it in one slot of the gate: open,
 * fstat, read and close, as in the one job of a native batch.
 */
async function readQueueFile(file: string): Promise<Buffer> {
  const handle = await fs.open(file, READ_FLAGS);
  try {
    const st = await handle.stat();
    if (!st.isFile() && !st.isDirectory()) {
      const err: NodeJS.ErrnoException = new Error(
        'EINVAL: invalid argument, read',
      );
      err.errno = -os.constants.errno.EINVAL;
      err.code = 'EINVAL';
      err.syscall = 'read';
      throw err;
    }
    return await handle.readFile();
  } finally {
    await handle.close();
  }
}
