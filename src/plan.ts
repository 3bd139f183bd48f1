/**
 * A plan is the list of file-system steps that makes one queue operation
 * durable. The facade builds it; a backend (native addon or node:fs) runs
 * it from start to end without returning to the caller between steps.
 *
 * On the first failing step the backend stops, undoes what the plan
 * created (tmp files it wrote, names it linked into place) and rejects with
 * the error of the failing step. Undo is best effort; its own errors are
 * ignored because the original error is the one the caller must see.
 */

/**
 * Create `path` (O_EXCL, O_NOFOLLOW, 0600), write every buffer, sync,
 * close.
 */
export interface WriteTmpStep {
  op: 'write_tmp';
  path: string;
  bufs: Buffer[];
}

/**
 * Give `from` the new name `to` without ever replacing an existing file
 * (link, which fails with EEXIST), then unlink `from`.
 */
export interface PublishStep {
  op: 'publish';
  from: string;
  to: string;
}

/** Atomically replace `to` with `from` (rename). */
export interface ReplaceStep {
  op: 'replace';
  from: string;
  to: string;
}

/** Unlink `path`; a missing file is not an error when `missingOk`. */
export interface UnlinkStep {
  op: 'unlink';
  path: string;
  missingOk: boolean;
}

/** Open the directory `path`, fsync it, close it. */
export interface SyncDirStep {
  op: 'sync_dir';
  path: string;
}

export type Step =
  | WriteTmpStep
  | PublishStep
  | ReplaceStep
  | UnlinkStep
  | SyncDirStep;

/** The two fields of an lstat that recovery needs. */
export interface FileStat {
  size: number;
  ctimeMs: number;
}

/**
 * What scanMeta() found, one entry per id and in their order: the meta
 * file's bytes and the env file's lstat, each or the error it gave.
 */
export interface MetaScan {
  metas: (Buffer | NodeJS.ErrnoException)[];
  envStats: (FileStat | NodeJS.ErrnoException)[];
}

/** Options common to both backends. */
export interface BackendOptions {
  /**
   * Let concurrent plans share directory syncs (default true): a plan
   * waits for a sync of its directory whose fsync starts after its own
   * links and renames, instead of running one of its own. Each plan is
   * exactly as durable when it settles; fewer fsyncs run. Syncs are
   * shared by the calls of one backend.
   */
  groupCommit?: boolean;
  /**
   * The most threads of libuv's pool the backend holds at once: every
   * file-system request or job waits for a free slot, first come first
   * served, and holds it only while it runs. A plan between two of them,
   * or waiting for a shared directory sync, holds none, so any number of
   * plans may be under way.
   *
   * Unset, the backend shares one gate with every backend of its kind in
   * its thread that leaves it unset: together they hold at most the pool
   * size less one (UV_THREADPOOL_SIZE, 4 unless set), at least 1, read
   * when the first of them is made. They share directory syncs and the
   * count of failed fsyncs too, so a failed directory fsync of one
   * backend fails the plans under way in all of them that changed a name
   * before it ended: conservative, never less durable. A backend given
   * maxInFlight has a gate of its own with that cap, which adds to the
   * shared one's.
   */
  maxInFlight?: number;
}

/**
 * What both backends provide. Each call holds at most one thread of
 * libuv's pool at a time: steps, reads and lstats run one after another;
 * all calls of one gate together hold at most `maxInFlight`.
 */
export interface Backend {
  readonly name: 'native' | 'js';
  /** Run the steps in order; see the module comment for failure rules. */
  run(steps: Step[]): Promise<void>;
  /** Read whole files; a missing file gives its error in place. */
  readFiles(paths: string[]): Promise<(Buffer | NodeJS.ErrnoException)[]>;
  /** lstat files; a missing file gives its error in place. */
  statFiles(paths: string[]): Promise<(FileStat | NodeJS.ErrnoException)[]>;
  /**
   * For each message id (32 lowercase hex digits): read
   * `<metaDir>/<id>.meta` whole, as readFiles() does, and lstat
   * `<envDir>/<id>.env`. Errors come in place, named by whole path.
   */
  scanMeta(metaDir: string, envDir: string, ids: string[]): Promise<MetaScan>;
}
