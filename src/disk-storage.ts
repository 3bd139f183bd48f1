/**
 * DiskStorage: slimta's queue storage, one envelope file written once and
 * one small meta file replaced atomically on every update.
 *
 * This module owns the protocol: which files a call writes, in which order,
 * and what it syncs before the call resolves. The backends only execute the
 * plans built here, so both make the same system calls in the same order
 * (they differ only in what a plan cut short by the end of its thread
 * leaves behind: see js-backend.ts).
 */

import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import { constants } from 'node:os';
import { realpathSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { debuglog } from 'node:util';

import type { Envelope } from './envelope';
import {
  ClosedError,
  CorruptError,
  CrossDeviceError,
  ExitingError,
  InvalidArgumentError,
  InvalidIdError,
  NotFoundError,
  QueueError,
  classifyOsError,
} from './errors';
import {
  ID_PATTERN,
  decodeEnvelope,
  decodeMeta,
  encodeEnvelope,
  encodeMeta,
  sizeOf,
  type Meta,
} from './format';
import { JsBackend } from './js-backend';
import { Limiter, defaultMaxInFlight } from './limiter';
import { loadNative, nativeLoadError } from './native';
import { acquireLock, releaseLock } from './lock';
import type { Backend, BackendOptions, FileStat, Step } from './plan';
import { syncDir } from './sync-dir';

const debug = debuglog('slimta');

export interface DiskStorageOptions {
  /**
   * `'native'` (default) runs each plan in the C++ addon; `'js'` uses
   * node:fs/promises. When the addon cannot load, `'native'` falls back to
   * `'js'` with a process warning.
   */
  io?: 'native' | 'js';
  /**
   * A file with no partner younger than this (milliseconds, default 60 s)
   * may belong to a write still in flight, in this or another process, and
   * is left alone by load(). Older ones are quarantined.
   */
  graceMs?: number;
  /** Where load() moves damaged files. Default `<metaDir>/.quarantine`. */
  quarantineDir?: string;
  /**
   * Never create, clean or quarantine anything: for inspecting a queue that
   * another process owns. Writes and updates reject.
   */
  readOnly?: boolean;
  /**
   * The most threads of libuv's thread pool the library's plans and
   * batch reads hold at once. The pool is shared with dns.lookup, fs and
   * crypto, so each pool job of a plan waits for one of these slots, first
   * come first served, and holds it only while it runs: a call waiting
   * for its turn, or for a directory sync shared with other calls, holds
   * none. (Opening the queue, recovery's own listing, cleanup and
   * quarantine use node:fs directly.) Default: the pool size less one
   * (UV_THREADPOOL_SIZE, 4 unless set), at least 1, so that one thread
   * stays free for the rest of the process; stores of one thread that
   * leave this unset share that one cap and their directory syncs, so a
   * failed directory fsync of one fails the calls under way in all of
   * them. A store given a value has a cap of its own, on top of that
   * share.
   *
   * Apart from that, at most 128 writes, updates and removals of one store
   * are under way at once; later ones wait in JavaScript, holding neither
   * a slot nor a file descriptor.
   */
  maxInFlight?: number;
  /**
   * Share directory syncs between concurrent calls (default true). A call
   * waits for the next sync of its directory that starts after its own
   * links or renames are done, so it is just as durable when it resolves,
   * while many calls in flight need far fewer fsyncs. False gives each
   * call its own directory syncs. Both backends honour it.
   */
  groupCommit?: boolean;
}

/** What load() reports when it sets a damaged message aside. */
export interface QuarantineReport {
  id: string;
  reason: string;
  /** Where each file went: [from, to]. Empty in read-only mode. */
  moved: [string, string][];
}

/** What inspect() returns about one message. */
export interface MessageInfo {
  id: string;
  /** Next delivery attempt, Unix seconds. */
  timestamp: number;
  attempts: number;
  /** Size of the envelope file in bytes. */
  size: number;
  /** Number of recipients as first written. */
  recipients: number;
  /** Indexes of the delivered recipients, ascending. */
  delivered: number[];
}

/** What getInfo() returns. */
export interface QueueInfo {
  /** Messages in the queue (meta files). */
  size: number;
  /** Files in the tmp directory: writes in flight or stale leftovers. */
  tmpFiles: number;
  /** Files set aside in the quarantine directory. */
  quarantined: number;
  /** The backend in use. */
  io: 'native' | 'js';
}

const ENV_SUFFIX = '.env';
const META_SUFFIX = '.meta';
const TMP_PATTERN = /^([0-9a-f]{32})\.(env|meta)\.(\d+)\.[0-9a-f]{8}\.tmp$/;
const LOAD_BATCH = 256;
/** Directory entries fetched per readdir while listing. */
const LIST_BUFFER = 1024;
/** Batches load() reads ahead of the one it yields from. */
const LOAD_AHEAD = 2;
const MAX_ATTEMPTS = 0xffffffff;
/** How long a tmp file named by a live pid is spared. */
const LIVE_TMP_MS = 24 * 3600 * 1000;
/** Writes, updates and removals under way at once in one store. */
const MAX_PLANS = 128;

let warnedFallback = false;

function chooseBackend(
  io: 'native' | 'js',
  options: BackendOptions,
): Backend {
  if (io === 'js') return new JsBackend(options);
  const native = loadNative(options);
  if (native) return native;
  if (!warnedFallback) {
    warnedFallback = true;
    process.emitWarning(
      'slimta-diskstorage: the native addon did not load ' +
        `(${nativeLoadError()?.message ?? 'unknown error'}); ` +
        'using the pure-JS backend',
      { code: 'SLIMTA_NATIVE_FALLBACK' },
    );
  }
  return new JsBackend(options);
}

/** Tmp files of plans running in this thread, which cleanup must spare. */
const liveTmpFiles = new Set<string>();

/**
 * The last call queued on each message of this thread, by its queue's
 * real meta directory and id, so that calls on one message run in call
 * order even when they come from two stores of one queue. (Stores of
 * another thread, process or copy of this module are other owners of
 * the queue lock, refused while these hold it: see lock.ts.)
 */
const perMessage = new Map<string, Promise<unknown>>();

/**
 * Durable queue storage in three directories on one filesystem.
 *
 * Every call resolves only once its effect would survive a crash or a
 * power cut; see the README for the exact guarantees.
 *
 * Events: `'quarantine'` with a {@link QuarantineReport} when load() sets
 * a damaged message aside.
 */
export class DiskStorage extends EventEmitter {
  readonly envDir: string;
  readonly metaDir: string;
  readonly tmpDir: string;
  readonly quarantineDir: string;
  readonly readOnly: boolean;

  private readonly backend: Backend;
  private readonly graceMs: number;
  private readonly plans = new Limiter(MAX_PLANS);
  private readonly inFlight = new Set<Promise<unknown>>();
  private ready: Promise<void> | null = null;
  private lockFile: string | null = null;
  private locking: Promise<void> | null = null;
  private closed = false;
  private closing: Promise<void> | null = null;
  /** Parents of directories made that init() has yet to sync. */
  private readonly unsyncedParents = new Set<string>();
  /** metaDir with symlinks resolved: what names the queue's messages. */
  private readonly orderKey: string;

  /**
   * @param envDir  where envelope files live (created 0700 when missing)
   * @param metaDir where meta files live; may equal envDir
   * @param tmpDir  scratch space on the same filesystem; default
   *                `<envDir>/.tmp`, never the system temp directory
   */
  constructor(
    envDir: string,
    metaDir: string,
    tmpDir?: string | null,
    options: DiskStorageOptions = {},
  ) {
    super();
    for (const [name, dir] of [
      ['envDir', envDir],
      ['metaDir', metaDir],
    ] as const) {
      if (typeof dir !== 'string' || dir === '') {
        throw new InvalidArgumentError(`${name} must be a non-empty string`);
      }
    }
    if (tmpDir != null && (typeof tmpDir !== 'string' || tmpDir === '')) {
      throw new InvalidArgumentError('tmpDir must be a non-empty string');
    }
    checkOptions(options);
    const io = options.io ?? 'native';
    if (io !== 'native' && io !== 'js') {
      throw new InvalidArgumentError("options.io must be 'native' or 'js'");
    }
    const graceMs = options.graceMs ?? 60_000;
    if (!Number.isFinite(graceMs) || graceMs < 0) {
      throw new InvalidArgumentError('options.graceMs must be >= 0');
    }
    const maxInFlight = options.maxInFlight ?? defaultMaxInFlight();
    if (!Number.isSafeInteger(maxInFlight) || maxInFlight < 1) {
      throw new InvalidArgumentError(
        'options.maxInFlight must be a positive integer',
      );
    }
    const groupCommit = options.groupCommit ?? true;
    if (typeof groupCommit !== 'boolean') {
      throw new InvalidArgumentError('options.groupCommit must be a boolean');
    }

    this.envDir = path.resolve(envDir);
    this.metaDir = path.resolve(metaDir);
    this.tmpDir = path.resolve(tmpDir ?? path.join(this.envDir, '.tmp'));
    this.quarantineDir = path.resolve(
      options.quarantineDir ?? path.join(this.metaDir, '.quarantine'),
    );
    this.readOnly = options.readOnly ?? false;
    this.graceMs = graceMs;
    this.orderKey = realDir(this.metaDir);
    this.backend = chooseBackend(io, {
      groupCommit,
      maxInFlight: options.maxInFlight,
    });
  }

  /** The backend actually in use (after any fallback). */
  get io(): 'native' | 'js' {
    return this.backend.name;
  }

  /**
   * Writes a new message and resolves with its id (32 lowercase hex
   * characters) once the envelope and its meta file are durable.
   *
   * @param timestamp next delivery attempt, Unix seconds
   */
  write(envelope: Envelope, timestamp: number): Promise<string> {
    return this.call(async () => {
      checkTimestamp(timestamp);
      this.checkWritable();
      // Encode before anything touches the disk: a refused envelope writes
      // nothing, and the copies taken here free the caller's Buffers.
      const id = newId();
      const envBufs = encodeEnvelope(id, envelope);
      const meta: Meta = {
        id,
        timestamp,
        attempts: 0,
        recipientCount: envelope.recipients.length,
        delivered: [],
        envSize: sizeOf(envBufs),
      };
      await this.init();
      await this.runPlan(this.writePlan(id, envBufs, meta));
      debug('wrote %s (%d bytes)', id, meta.envSize);
      return id;
    });
  }

  /** Sets the time of the next delivery attempt (Unix seconds). */
  setTimestamp(id: string, timestamp: number): Promise<void> {
    return this.update(id, () => checkTimestamp(timestamp), (meta) => {
      meta.timestamp = timestamp;
      return true;
    }).then(() => undefined);
  }

  /** Adds one delivery attempt and resolves with the new count. */
  incrementAttempts(id: string): Promise<number> {
    return this.update(id, null, (meta) => {
      meta.attempts = Math.min(meta.attempts + 1, MAX_ATTEMPTS);
      return true;
    }).then((meta) => meta.attempts);
  }

  /**
   * Marks recipients as delivered. Indexes are positions in the envelope's
   * recipient list as first written; repeating one changes nothing.
   */
  setRecipientsDelivered(id: string, rcptIndexes: number[]): Promise<void> {
    // The indexes are checked, and then used, as they are at the call: a
    // copy, so that the caller changing its array later changes nothing.
    const indexes: number[] = [];
    return this.update(
      id,
      () => {
        if (!Array.isArray(rcptIndexes)) {
          throw new InvalidArgumentError('rcptIndexes must be an array');
        }
        for (const i of rcptIndexes as unknown[]) {
          if (typeof i !== 'number' || !Number.isSafeInteger(i) || i < 0) {
            throw new InvalidArgumentError(
              `recipient index ${String(i)} is not a non-negative integer`,
            );
          }
          indexes.push(i);
        }
      },
      (meta) => {
        const bad = indexes.find((i) => i >= meta.recipientCount);
        if (bad !== undefined) {
          throw new InvalidArgumentError(
            `recipient index ${bad} is out of range: message ${id} has ` +
              `${meta.recipientCount} recipients`,
          );
        }
        const delivered = new Set(meta.delivered);
        const before = delivered.size;
        for (const i of indexes) delivered.add(i);
        if (delivered.size === before) return false;
        meta.delivered = [...delivered].sort((a, b) => a - b);
        return true;
      },
    ).then(() => undefined);
  }

  /**
   * Reads a message: the envelope without its delivered recipients, and
   * the number of delivery attempts so far.
   */
  get(id: string): Promise<[Envelope, number]> {
    return this.call(() => {
      checkId(id);
      return this.serial(id, async () => {
        await this.init();
        const envPath = this.envPath(id);
        const metaPath = this.metaPath(id);
        const [envFile, metaFile] = await this.backend.readFiles([
          envPath,
          metaPath,
        ]);
        const metaBytes = await this.bytesOf(id, metaFile, 'meta');
        let meta: Meta;
        let envelope: Envelope;
        try {
          meta = decodeMeta(metaBytes, id, metaPath);
          const envBytes = await this.bytesOf(id, envFile, 'env');
          envelope = decodeEnvelope(envBytes, id, envPath);
          if (envelope.recipients.length !== meta.recipientCount) {
            throw new CorruptError(
              envPath,
              `has ${envelope.recipients.length} recipients, its meta ` +
                `file says ${meta.recipientCount}`,
            );
          }
        } catch (err) {
          // load() checks the meta and the envelope's size; damage that
          // keeps the size shows here, and is set aside the same way.
          if (err instanceof CorruptError) await this.setAside(id, err);
          throw err;
        }
        const delivered = new Set(meta.delivered);
        envelope.recipients = envelope.recipients.filter(
          (_, i) => !delivered.has(i),
        );
        return [envelope, meta.attempts] as [Envelope, number];
      });
    });
  }

  /**
   * Reads a message's meta file only: when it is next due, how often it
   * was tried, its size, and which recipients are done. Cheap next to
   * get(), which reads the whole envelope.
   */
  inspect(id: string): Promise<MessageInfo> {
    return this.call(() => {
      checkId(id);
      return this.serial(id, async () => {
        await this.init();
        const metaPath = this.metaPath(id);
        const [file] = await this.backend.readFiles([metaPath]);
        const bytes = await this.bytesOf(id, file, 'meta');
        const meta = decodeMeta(bytes, id, metaPath);
        return {
          id,
          timestamp: meta.timestamp,
          attempts: meta.attempts,
          size: meta.envSize,
          recipients: meta.recipientCount,
          delivered: meta.delivered,
        };
      });
    });
  }

  /**
   * Removes a message. Like slimta's, it succeeds when the message, or
   * one of its files, is already gone, so that a remove that failed half
   * way can simply be called again; the directories are synced either way.
   */
  remove(id: string): Promise<void> {
    return this.call(() => {
      checkId(id);
      this.checkWritable();
      return this.serial(id, async () => {
        await this.own();
        // The meta goes first, and its removal is made durable before the
        // env goes: without the meta load() no longer yields the message,
        // so a crash or power cut half-way leaves an orphan env, never a
        // message that points at a missing envelope.
        await this.runPlan([
          { op: 'unlink', path: this.metaPath(id), missingOk: true },
          ...this.syncDirIfApart(this.metaDir),
          { op: 'unlink', path: this.envPath(id), missingOk: true },
          { op: 'sync_dir', path: this.envDir },
        ]);
        debug('removed %s', id);
      });
    });
  }

  /**
   * Yields `[timestamp, id]` for every intact message. A damaged message
   * is not yielded: it is moved to the quarantine directory and reported
   * with a `'quarantine'` event. Stale tmp files of dead writers are
   * removed. Never throws because one message is damaged.
   *
   * The directories are streamed in batches: for each batch of meta files
   * one backend call reads them all and lstats their env files, and the
   * next batches are fetched while the caller consumes this one. Memory
   * stays bounded by the batch size plus about 64 bytes per message.
   */
  async *load(): AsyncGenerator<[number, string]> {
    try {
      yield* this.recover();
    } catch (err) {
      throw err instanceof QueueError ? err : classifyOsError(err);
    }
  }

  /** load() but for the `retryable` of its errors. */
  private async *recover(): AsyncGenerator<[number, string]> {
    this.checkOpen();
    // Every step below is tracked, so that close() waits for the one under
    // way before it gives back the lock; a caller that resumes the
    // iteration after close() gets ERR_QUEUE_CLOSED.
    if (this.readOnly) await this.track(this.init());
    else await this.track(this.own().then(() => this.cleanTmp()));

    // Ids of the intact messages yielded, so that the pass over the env
    // directory asks the disk only about env files nobody claimed.
    const claimed = new IdSet();

    const fetch = (batch: string[]) =>
      this.track(
        Promise.all([
          batch,
          this.backend.scanMeta(this.metaDir, this.envDir, batch),
        ] as const),
      );

    // Read ahead: the next batches are listed and read while this one is
    // checked and consumed, two of them at once on the pool; the
    // backend's gate bounds the threads they take. A promise held for
    // later is marked handled now; its error, if any, comes out where it
    // is awaited.
    // TODO: listing is the largest share of the main thread's time here
    // (a Dirent per entry, twice per message; 100,000 messages load in
    // about 1.2 s, the target is 1 s); a native listing that hands over
    // only the ids would cut it, at the cost of a directory handle with
    // its own lifetime in the addon.
    const batches = this.scan(this.metaDir, META_SUFFIX);
    const queue: ReturnType<typeof fetch>[] = [];
    let listed = false;
    try {
      for (;;) {
        while (!listed && queue.length < LOAD_AHEAD) {
          const next = await this.track(batches.next());
          if (next.done) listed = true;
          else queue.push(fetch(next.value));
          queue[queue.length - 1]?.catch(() => undefined);
        }
        const current = queue.shift();
        if (current === undefined) break;

        const [ids, { metas: files, envStats }] = await current;
        for (let i = 0; i < ids.length; i++) {
          const found = this.intactMeta(ids[i], files[i], envStats[i]);
          const meta =
            found === undefined
              ? await this.track(
                  this.checkScanned(ids[i], files[i], envStats[i]),
                )
              : found;
          if (meta === null) continue;
          claimed.add(meta.id);
          yield [meta.timestamp, meta.id];
          this.checkOpen();
        }
      }
    } finally {
      // Closes the directory when the caller stops early.
      await this.track(batches.return(undefined));
    }

    const envBatches = this.scan(this.envDir, ENV_SUFFIX);
    try {
      for (;;) {
        this.checkOpen();
        const next = await this.track(envBatches.next());
        if (next.done) break;
        await this.track(this.quarantineOrphans(next.value, claimed));
      }
    } finally {
      await this.track(envBatches.return(undefined));
    }
  }

  /**
   * The env files of `batch` that no meta file claims, once past the
   * grace period, are quarantined: their meta is gone for good.
   */
  private async quarantineOrphans(
    batch: string[],
    claimed: IdSet,
  ): Promise<void> {
    const unclaimed = batch.filter((id) => !claimed.has(id));
    if (unclaimed.length === 0) return;
    const metaStats = await this.backend.statFiles(
      unclaimed.map((id) => this.metaPath(id)),
    );
    // A message being removed has no meta for a moment before its env
    // goes too; one with a call under way in this thread is no orphan.
    const orphans = unclaimed.filter(
      (id, i) => isMissing(metaStats[i]) && !perMessage.has(this.orderOf(id)),
    );
    if (orphans.length === 0) return;
    const envStats = await this.backend.statFiles(
      orphans.map((id) => this.envPath(id)),
    );
    for (let i = 0; i < orphans.length; i++) {
      const envStat = envStats[i];
      if (envStat instanceof Error || !this.pastGrace(envStat)) continue;
      await this.quarantine(orphans[i], 'meta file is missing', [
        this.envPath(orphans[i]),
      ]);
    }
  }

  /** Counts messages, tmp files and quarantined files. */
  getInfo(): Promise<QueueInfo> {
    return this.call(async () => {
      await this.init();
      let size = 0;
      for await (const batch of this.scan(this.metaDir, META_SUFFIX)) {
        size += batch.length;
      }
      return {
        size,
        tmpFiles: await countEntries(this.tmpDir),
        quarantined: await countEntries(this.quarantineDir),
        io: this.io,
      };
    });
  }

  /**
   * Refuses new calls, waits for every call in flight, then gives back the
   * queue lock.
   */
  close(): Promise<void> {
    // One closing, however often it is asked for: the lock is counted per
    // store and must be given back once.
    this.closing ??= (async () => {
      this.closed = true;
      while (this.inFlight.size > 0) {
        await Promise.allSettled([...this.inFlight]);
      }
      await this.locking?.catch(() => undefined);
      const lockFile = this.lockFile;
      this.lockFile = null;
      if (lockFile) await releaseLock(lockFile);
    })();
    return this.closing;
  }

  // --- the protocol -----------------------------------------------------

  /**
   * A new message: both files are written and synced under tmp names,
   * then linked into place (never replacing anything). The env name is
   * made durable, by a sync of its directory, before the meta name even
   * exists, so that after a crash or a power cut a meta file always has
   * its envelope; the sync of the meta directory then makes the message
   * durable. With one directory for both, one sync does, since a power cut
   * keeps a prefix of a directory's changes.
   */
  private writePlan(id: string, envBufs: Buffer[], meta: Meta): Step[] {
    const envTmp = this.tmpPath(id, 'env');
    const metaTmp = this.tmpPath(id, 'meta');
    return [
      { op: 'write_tmp', path: envTmp, bufs: envBufs },
      { op: 'write_tmp', path: metaTmp, bufs: [encodeMeta(meta)] },
      { op: 'publish', from: envTmp, to: this.envPath(id) },
      ...this.syncDirIfApart(this.envDir),
      { op: 'publish', from: metaTmp, to: this.metaPath(id) },
      { op: 'sync_dir', path: this.metaDir },
    ];
  }

  /**
   * An update reads the meta, changes it, and replaces the file: a new one
   * is written and synced under a tmp name, renamed over the old one, and
   * the directory is synced so the rename itself is durable.
   */
  private update(
    id: string,
    validate: (() => void) | null,
    change: (meta: Meta) => boolean,
  ): Promise<Meta> {
    return this.call(() => {
      checkId(id);
      validate?.();
      this.checkWritable();
      return this.serial(id, async () => {
        await this.own();
        const metaPath = this.metaPath(id);
        const [file] = await this.backend.readFiles([metaPath]);
        const bytes = await this.bytesOf(id, file, 'meta');
        const meta = decodeMeta(bytes, id, metaPath);
        if (!change(meta)) return meta;
        const tmp = this.tmpPath(id, 'meta');
        await this.runPlan([
          { op: 'write_tmp', path: tmp, bufs: [encodeMeta(meta)] },
          { op: 'replace', from: tmp, to: metaPath },
          { op: 'sync_dir', path: this.metaDir },
        ]);
        return meta;
      });
    });
  }

  /**
   * A sync of `dir` between two changes that must reach the disk in order,
   * needed only when envDir and metaDir differ: within one directory a
   * power cut keeps a prefix of its changes, and the final sync covers
   * both.
   */
  private syncDirIfApart(dir: string): Step[] {
    return this.envDir === this.metaDir ? [] : [{ op: 'sync_dir', path: dir }];
  }

  /**
   * The backend keeps the pool threads a plan takes within maxInFlight;
   * the bound here is on plans under way. Each holds at most one open
   * file, and the backend interleaves the requests of all of them, so
   * with no bound a burst of calls would open as many files at once and
   * every call would finish only near the end of the burst.
   */
  private async runPlan(steps: Step[]): Promise<void> {
    const tmps = steps.flatMap((s) => (s.op === 'write_tmp' ? [s.path] : []));
    for (const t of tmps) liveTmpFiles.add(t);
    try {
      await this.plans.run(() => this.backend.run(steps));
    } finally {
      for (const t of tmps) liveTmpFiles.delete(t);
    }
  }

  // --- recovery ---------------------------------------------------------

  /**
   * The common case of a scanned meta file without a promise: the meta
   * when file and env size say it is intact, else undefined, to be
   * decided by checkScanned().
   */
  private intactMeta(
    id: string,
    file: Buffer | NodeJS.ErrnoException,
    envStat: FileStat | NodeJS.ErrnoException,
  ): Meta | undefined {
    if (file instanceof Error || envStat instanceof Error) return undefined;
    let meta: Meta;
    try {
      meta = decodeMeta(file, id, this.metaPath(id));
    } catch {
      return undefined;
    }
    return envStat.size === meta.envSize ? meta : undefined;
  }

  /**
   * Decides what one scanned meta file is: an intact message (returned),
   * damage (quarantined), or a pair still being written (left alone).
   */
  private async checkScanned(
    id: string,
    file: Buffer | NodeJS.ErrnoException,
    envStat: FileStat | NodeJS.ErrnoException,
  ): Promise<Meta | null> {
    const metaPath = this.metaPath(id);
    const envPath = this.envPath(id);
    if (isMissing(file)) return null; // removed since the listing
    if (file instanceof Error) {
      debug('load: cannot read %s: %s', metaPath, file.message);
      return null;
    }
    let meta: Meta;
    try {
      meta = decodeMeta(file, id, metaPath);
    } catch (err) {
      await this.quarantine(id, (err as Error).message, [metaPath, envPath]);
      return null;
    }
    if (isMissing(envStat)) {
      const metaStat = await lstatOrError(metaPath);
      if (metaStat instanceof Error || !this.pastGrace(metaStat)) return null;
      await this.quarantine(id, 'envelope file is missing', [metaPath]);
      return null;
    }
    if (envStat instanceof Error) return null;
    if (envStat.size !== meta.envSize) {
      await this.quarantine(
        id,
        `envelope file has ${envStat.size} bytes, its meta says ` +
          `${meta.envSize}`,
        [metaPath, envPath],
      );
      return null;
    }
    return meta;
  }

  private pastGrace(stat: FileStat): boolean {
    // ctime, not mtime: linking a finished tmp file into place updates
    // ctime, so a write in flight always looks young.
    return Date.now() - stat.ctimeMs > this.graceMs;
  }

  private async quarantine(
    id: string,
    reason: string,
    paths: string[],
  ): Promise<void> {
    const report: QuarantineReport = { id, reason, moved: [] };
    if (!this.readOnly) {
      const stamp = Date.now();
      for (const from of paths) {
        const to = path.join(
          this.quarantineDir,
          `${path.basename(from)}.${stamp}`,
        );
        try {
          await fs.rename(from, to);
          report.moved.push([from, to]);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
            debug('quarantine: cannot move %s: %s', from, String(err));
          }
        }
      }
      await syncDirBestEffort(this.quarantineDir);
    }
    debug('quarantine %s: %s', id, reason);
    this.emit('quarantine', report);
  }

  /** Removes tmp files whose writer is gone. */
  private async cleanTmp(): Promise<void> {
    let dir: import('node:fs').Dir;
    try {
      dir = await fs.opendir(this.tmpDir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw classifyOsError(err);
    }
    for await (const entry of dir) {
      const match = TMP_PATTERN.exec(entry.name);
      if (!match || !entry.isFile()) continue;
      const file = path.join(this.tmpDir, entry.name);
      const pid = Number(match[3]);
      // A plan of this thread may be writing it.
      if (pid === process.pid && liveTmpFiles.has(file)) continue;
      // So may a worker thread of this process, or a writer in another PID
      // namespace, whose pid means nothing here: only old files go. A
      // live pid gets a day, since it may also be a reused one.
      const st = await lstatOrError(file);
      if (st instanceof Error) continue;
      const alive = pid !== process.pid && processAlive(pid);
      const age = Date.now() - st.ctimeMs;
      if (age <= (alive ? Math.max(this.graceMs, LIVE_TMP_MS) : this.graceMs)) {
        continue;
      }
      await fs.unlink(file).catch(() => undefined);
      debug('load: removed stale tmp file %s', file);
    }
  }

  /** Streams the ids of `suffix` files in `dir`, in batches. */
  private async *scan(
    dir: string,
    suffix: string,
  ): AsyncGenerator<string[]> {
    let handle: import('node:fs').Dir;
    try {
      handle = await fs.opendir(dir, { bufferSize: LIST_BUFFER });
    } catch (err) {
      throw classifyOsError(err);
    }
    let batch: string[] = [];
    for await (const entry of handle) {
      // Dot-files, .nfs leftovers, subdirectories and anything else this
      // library did not name are none of its business.
      const name = entry.name;
      if (!name.endsWith(suffix)) continue;
      const id = name.slice(0, -suffix.length);
      if (!ID_PATTERN.test(id) || !entry.isFile()) continue;
      batch.push(id);
      if (batch.length >= LOAD_BATCH) {
        yield batch;
        batch = [];
      }
    }
    if (batch.length) yield batch;
  }

  // --- plumbing ---------------------------------------------------------

  /**
   * Runs one public call: refuses it when closed or exiting, tracks it for
   * close(), and gives every OS error its `retryable` flag.
   */
  private call<T>(fn: () => Promise<T>): Promise<T> {
    let promise: Promise<T>;
    try {
      this.checkOpen();
      promise = fn();
    } catch (err) {
      return Promise.reject(err);
    }
    return this.track(
      promise.catch((err: unknown) => {
        throw err instanceof QueueError ? err : classifyOsError(err);
      }),
    );
  }

  /** Counts `promise` as work in flight, which close() waits for. */
  private track<T>(promise: Promise<T>): Promise<T> {
    this.inFlight.add(promise);
    const untrack = () => this.inFlight.delete(promise);
    promise.then(untrack, untrack);
    return promise;
  }

  /**
   * Runs `fn` after every earlier call on the same message has settled.
   * Called when the public call is made, before anything is awaited, so
   * that the queue order is the call order.
   */
  private serial<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const key = this.orderOf(id);
    const before = perMessage.get(key) ?? Promise.resolve();
    const result = before.then(fn, fn);
    const tail = result.then(
      () => undefined,
      () => undefined,
    );
    perMessage.set(key, tail);
    void tail.then(() => {
      if (perMessage.get(key) === tail) perMessage.delete(key);
    });
    return result;
  }

  /** The key of a message in {@link perMessage}. */
  private orderOf(id: string): string {
    return `${this.orderKey}/${id}`;
  }

  private checkOpen(): void {
    if (this.closed) throw new ClosedError();
    if ((process as { _exiting?: boolean })._exiting) {
      throw new ExitingError();
    }
  }

  private checkWritable(): void {
    if (this.readOnly) {
      throw new InvalidArgumentError('this DiskStorage is read-only');
    }
  }

  /**
   * The bytes of a message's file as read, or the error to reject with.
   * A missing meta file is no such message and a missing envelope is
   * damage, unless the directory itself is gone: then the OS error is the
   * answer, since that is a broken queue, not a missing message.
   */
  private async bytesOf(
    id: string,
    file: Buffer | NodeJS.ErrnoException,
    kind: 'meta' | 'env',
  ): Promise<Buffer> {
    if (!(file instanceof Error)) return file;
    if (!isMissing(file)) throw file;
    const dir = kind === 'meta' ? this.metaDir : this.envDir;
    const st = await fs.stat(dir).catch((err: unknown) => err as Error);
    if (st instanceof Error || !st.isDirectory()) throw file;
    if (kind === 'meta') throw new NotFoundError(id, file);
    throw new CorruptError(this.envPath(id), 'envelope file is missing', file);
  }

  /**
   * Moves a message get() found damaged to the quarantine directory, as
   * load() would, so it is not tried again and again. Only a store that
   * owns the queue already (it has updated, removed or loaded) moves
   * files: taking the lock here would lock out the real owner.
   */
  private async setAside(id: string, err: CorruptError): Promise<void> {
    if (this.lockFile === null) {
      debug('get: %s is damaged, left in place: %s', id, err.message);
      return;
    }
    await this.quarantine(id, err.message, [
      this.metaPath(id),
      this.envPath(id),
    ]);
  }

  /**
   * Creates missing directories (0700, parents synced so the new entries
   * are durable) and checks that all of them share one filesystem. Runs
   * once; a failure is reported to the call and tried again by the next.
   */
  private init(): Promise<void> {
    if (!this.ready) {
      this.ready = this.prepareDirs().catch((err: unknown) => {
        this.ready = null;
        throw err;
      });
    }
    return this.ready;
  }

  /**
   * Takes the queue lock before the first call that changes an existing
   * message or recovers the queue. Writing a new message needs no lock:
   * its id is fresh, so any number of processes may add messages beside
   * the one process that owns the queue.
   */
  private async own(): Promise<void> {
    await this.init();
    if (!this.locking) {
      this.locking = acquireLock(this.metaDir).then(
        (file) => {
          this.lockFile = file;
        },
        (err: unknown) => {
          this.locking = null;
          throw err;
        },
      );
    }
    return this.locking;
  }

  /**
   * Makes the directories, and their names durable: every parent of a
   * directory of the queue is synced, also when the directory was there
   * already, since a process that made it may have died before its sync.
   * A failed sync fails the call, like any other: a later success would
   * prove nothing about the names the failed one was to cover.
   */
  private async prepareDirs(): Promise<void> {
    const dirs = [this.envDir, this.metaDir, this.tmpDir];
    if (!this.readOnly) {
      // Quarantine moves files by rename, so it must be on the same
      // filesystem too, and it exists before the first damage is found.
      dirs.push(this.quarantineDir);
      const parents = this.unsyncedParents;
      for (const dir of dirs) {
        const first = await mkdirOrNotDir(dir);
        // When mkdir made `first` and everything below it, the parent of
        // each new directory is synced too, so the chain of names survives.
        for (let made = dir; ; made = path.dirname(made)) {
          parents.add(path.dirname(made));
          if (first === undefined || made.length <= first.length) break;
        }
      }
      // A parent leaves the set once synced: an init tried again after a
      // failed sync still syncs the parents of what the first try made.
      for (const parent of parents) {
        await syncDir(parent);
        parents.delete(parent);
      }
    }
    const stats = await Promise.all(dirs.map((d) => fs.stat(d)));
    stats.forEach((st, i) => {
      if (!st.isDirectory()) throw notADirectory(dirs[i], 'scandir');
    });
    if (stats.some((st) => st.dev !== stats[0].dev)) {
      throw new CrossDeviceError(
        `the queue directories must be on one filesystem (a rename ` +
          `cannot cross filesystems): ${dirs.join(', ')}`,
      );
    }
  }

  private envPath(id: string): string {
    return path.join(this.envDir, id + ENV_SUFFIX);
  }

  private metaPath(id: string): string {
    return path.join(this.metaDir, id + META_SUFFIX);
  }

  private tmpPath(id: string, kind: 'env' | 'meta'): string {
    const nonce = randomBytes(4).toString('hex');
    return path.join(this.tmpDir, `${id}.${kind}.${process.pid}.${nonce}.tmp`);
  }
}

/**
 * A set of message ids at 16 bytes each, so that load() of a million
 * messages remembers them in tens of megabytes rather than the hundred
 * or so a Set of strings takes. Ids are random, so their bytes serve as
 * the hash: the first picks one of 256 tables, the next four a slot in
 * it. Each table grows on its own, so that growing, which places every
 * id of the table again in one turn of the event loop, never holds the
 * loop long: one table of a million ids took about 100 ms to grow.
 */
class IdSet {
  private readonly tables = Array.from({ length: 256 }, () => new IdTable());
  private readonly key = Buffer.alloc(16);
  private readonly keyWords = new Uint32Array(
    this.key.buffer,
    this.key.byteOffset,
    4,
  );

  add(id: string): void {
    this.key.write(id, 0, 'hex');
    this.tables[this.key[0]].add(this.keyWords);
  }

  has(id: string): boolean {
    this.key.write(id, 0, 'hex');
    return this.tables[this.key[0]].has(this.keyWords);
  }
}

/** Open addressing, linear probing, at most half full. */
class IdTable {
  private words = new Uint32Array(4 * 16);
  private used = new Uint8Array(16);
  private count = 0;

  add(key: Uint32Array): void {
    if ((this.count + 1) * 2 > this.used.length) this.grow();
    if (this.place(key, 0)) this.count++;
  }

  has(key: Uint32Array): boolean {
    return this.slotOf(key, 0) < 0;
  }

  // The slot holding the key (as -1 - slot), or the free slot for it.
  // The first byte of the key chose the table, so the second word
  // chooses the slot.
  private slotOf(src: Uint32Array, at: number): number {
    const mask = this.used.length - 1;
    const w = this.words;
    for (let i = src[at + 1] & mask; ; i = (i + 1) & mask) {
      if (this.used[i] === 0) return i;
      const j = i * 4;
      if (
        w[j] === src[at] &&
        w[j + 1] === src[at + 1] &&
        w[j + 2] === src[at + 2] &&
        w[j + 3] === src[at + 3]
      ) {
        return -1 - i;
      }
    }
  }

  private place(src: Uint32Array, at: number): boolean {
    const i = this.slotOf(src, at);
    if (i < 0) return false;
    const w = this.words;
    const j = i * 4;
    w[j] = src[at];
    w[j + 1] = src[at + 1];
    w[j + 2] = src[at + 2];
    w[j + 3] = src[at + 3];
    this.used[i] = 1;
    return true;
  }

  private grow(): void {
    const words = this.words;
    const used = this.used;
    this.words = new Uint32Array(words.length * 2);
    this.used = new Uint8Array(used.length * 2);
    for (let i = 0; i < used.length; i++) {
      if (used[i] !== 0) this.place(words, i * 4);
    }
  }
}

const OPTION_NAMES: readonly string[] = [
  'io',
  'graceMs',
  'quarantineDir',
  'readOnly',
  'maxInFlight',
  'groupCommit',
];

/**
 * Refuses what is not an options object, an option of another name (a
 * misspelt `readonly` would otherwise open the queue as its owner), and
 * options of the wrong type; the values are checked where they are used.
 */
function checkOptions(options: unknown): void {
  if (options === null || typeof options !== 'object') {
    throw new InvalidArgumentError('options must be an object');
  }
  for (const name of Object.keys(options)) {
    if (!OPTION_NAMES.includes(name)) {
      throw new InvalidArgumentError(
        `unknown option '${name}'; the options are ${OPTION_NAMES.join(', ')}`,
      );
    }
  }
  const { readOnly, quarantineDir } = options as DiskStorageOptions;
  if (readOnly !== undefined && typeof readOnly !== 'boolean') {
    throw new InvalidArgumentError('options.readOnly must be a boolean');
  }
  if (
    quarantineDir !== undefined &&
    (typeof quarantineDir !== 'string' || quarantineDir === '')
  ) {
    throw new InvalidArgumentError(
      'options.quarantineDir must be a non-empty string',
    );
  }
}

function newId(): string {
  return randomBytes(16).toString('hex');
}

function checkId(id: unknown): asserts id is string {
  if (typeof id !== 'string' || !ID_PATTERN.test(id)) {
    throw new InvalidIdError(id);
  }
}

function checkTimestamp(timestamp: unknown): void {
  if (typeof timestamp !== 'number' || !Number.isFinite(timestamp)) {
    throw new InvalidArgumentError(
      `timestamp must be a finite number of seconds, not ${String(timestamp)}`,
    );
  }
}

function isMissing(value: unknown): value is NodeJS.ErrnoException {
  return (
    value instanceof Error &&
    (value as NodeJS.ErrnoException).code === 'ENOENT'
  );
}

async function lstatOrError(
  file: string,
): Promise<import('node:fs').Stats | NodeJS.ErrnoException> {
  try {
    return await fs.lstat(file);
  } catch (err) {
    return err as NodeJS.ErrnoException;
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function countEntries(dir: string): Promise<number> {
  let n = 0;
  try {
    for await (const entry of await fs.opendir(dir)) {
      if (!entry.name.startsWith('.')) n++;
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  return n;
}

/**
 * `dir` with every symlink on its way resolved, as far as it exists, so
 * that two spellings of one queue (a relative path, a link) name its
 * messages alike; the part not made yet is kept as it is.
 */
function realDir(dir: string): string {
  try {
    return realpathSync.native(dir);
  } catch {
    const parent = path.dirname(dir);
    if (parent === dir) return dir;
    return path.join(realDir(parent), path.basename(dir));
  }
}

/** Best effort, for quarantine: the files are kept either way. */
async function syncDirBestEffort(dir: string): Promise<void> {
  try {
    await syncDir(dir);
  } catch (err) {
    debug('cannot sync directory %s: %s', dir, String(err));
  }
}

/**
 * mkdir -p, one level at a time, resolving with the first directory it
 * made (undefined when none). Node's recursive mkdir reports an EIO or
 * ENOSPC of mkdir as the ENOENT of a later step, which would turn a
 * full disk into a permanent error; here each mkdir's own error is the
 * answer. A file where a directory should be is ENOTDIR, not EEXIST.
 */
async function mkdirOrNotDir(dir: string): Promise<string | undefined> {
  const missing: string[] = [];
  for (let d = dir; ; d = path.dirname(d)) {
    const st = await fs.stat(d).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return null;
      throw err;
    });
    if (st !== null) {
      if (!st.isDirectory()) throw notADirectory(d, 'mkdir');
      break;
    }
    missing.unshift(d);
    if (path.dirname(d) === d) break;
  }
  for (const d of missing) {
    try {
      await fs.mkdir(d, { mode: 0o700 });
    } catch (err) {
      // Made meanwhile by someone else: fine if it is a directory.
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      if (!(await fs.stat(d)).isDirectory()) throw notADirectory(d, 'mkdir');
    }
  }
  return missing[0];
}

function notADirectory(dir: string, syscall: string): NodeJS.ErrnoException {
  const err = new Error(
    `ENOTDIR: not a directory, ${syscall} '${dir}'`,
  ) as NodeJS.ErrnoException;
  Object.assign(err, {
    code: 'ENOTDIR',
    errno: -constants.errno.ENOTDIR,
    syscall,
    path: dir,
  });
  return err;
}
