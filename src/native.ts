import * as path from 'node:path';
import { defaultMaxInFlight } from './limiter';
import type {
  Backend,
  BackendOptions,
  FileStat,
  MetaScan,
  Step,
} from './plan';

/**
 * A gate of the addon: every request and job of the calls given it waits
 * for one of its slots. Opaque; it also holds the directory syncs those
 * calls share.
 */
export type RawGate = object & { readonly __gate: unique symbol };

/** What the addon exports; never public. */
export interface RawBinding {
  create_gate(maxInFlight: number): RawGate;
  /**
   * Writes from each step's Buffers in place, on a pool thread, until the
   * promise settles. The addon keeps the Buffers alive, but not their
   * memory: N-API offers no hold on an ArrayBuffer's backing store. So
   * until then the caller must not transfer any of their ArrayBuffers
   * (postMessage or structuredClone with a transfer list,
   * ArrayBuffer.prototype.transfer where it exists) nor detach them: that
   * hands their memory to another owner, which may free it while it is
   * written from.
   * DiskStorage passes only Buffers it made and holds alone.
   */
  run_plan(gate: RawGate, steps: Step[], groupCommit: boolean): Promise<void>;
  read_files(
    gate: RawGate,
    paths: string[],
  ): Promise<(Buffer | NodeJS.ErrnoException)[]>;
  stat_files(
    gate: RawGate,
    paths: string[],
  ): Promise<(FileStat | NodeJS.ErrnoException)[]>;
  /**
   * scanMeta() in a few values per batch: every meta file's bytes back
   * to back; per id, where its bytes end, its env file's size and ctime
   * in ms; null, or the meta error of id i at 2i and its env error at
   * 2i + 1.
   */
  scan_meta(
    gate: RawGate,
    metaDir: string,
    envDir: string,
    ids: string[],
  ): Promise<
    [Buffer, Float64Array, (NodeJS.ErrnoException | undefined)[] | null]
  >;
  /**
   * The shared directory sync alone; resolves with the generation of the
   * last fsync submitted when called and of the one that covered it.
   */
  sync_dir(gate: RawGate, path: string): Promise<[number, number]>;
}

// The addon returns a Promise, or throws. Anything else would let a
// caller take a write that never happened for done, so it becomes an
// error here as well.
function started<T>(value: Promise<T>, call: string): Promise<T> {
  if (value instanceof Promise) return value;
  return Promise.reject(new Error(`${call}() did not return a Promise`));
}

let binding: RawBinding | null = null;
let loadError: Error | null = null;

// The gate of the backends that keep the default maxInFlight, one per
// binding. This module is loaded once per thread, as the addon's state
// is made once per thread, so each thread has its own.
const sharedGates = new WeakMap<RawBinding, RawGate>();

function sharedGate(raw: RawBinding): RawGate {
  let gate = sharedGates.get(raw);
  if (gate === undefined) {
    gate = raw.create_gate(defaultMaxInFlight());
    sharedGates.set(raw, gate);
  }
  return gate;
}

/**
 * Runs each plan in the addon as one chain of trips through libuv's
 * pool, jobs and requests, returning to JavaScript once per plan. The
 * Buffers of a plan are written from in place, not copied: changing one
 * before the promise settles changes what is written, and transferring
 * or detaching its ArrayBuffer before then may have freed memory
 * written (see {@link RawBinding.run_plan}).
 *
 * Every request and job passes the backend's gate in the addon, which
 * keeps it within {@link BackendOptions.maxInFlight} pool threads: a
 * gate of its own when maxInFlight is given, else the one the thread's
 * other such backends share. With group commit, the directory syncs of
 * the plans of one gate are shared there too: see
 * {@link BackendOptions.groupCommit}.
 */
export class NativeBackend implements Backend {
  readonly name = 'native' as const;
  private readonly groupCommit: boolean;
  private readonly gate: RawGate;

  constructor(
    private readonly raw: RawBinding,
    options: BackendOptions = {},
  ) {
    this.groupCommit = options.groupCommit ?? true;
    this.gate =
      options.maxInFlight === undefined
        ? sharedGate(raw)
        : raw.create_gate(options.maxInFlight);
  }

  async run(steps: Step[]): Promise<void> {
    return started(
      this.raw.run_plan(this.gate, steps, this.groupCommit),
      'run_plan',
    );
  }

  async readFiles(
    paths: string[],
  ): Promise<(Buffer | NodeJS.ErrnoException)[]> {
    return started(this.raw.read_files(this.gate, paths), 'read_files');
  }

  async statFiles(
    paths: string[],
  ): Promise<(FileStat | NodeJS.ErrnoException)[]> {
    return started(this.raw.stat_files(this.gate, paths), 'stat_files');
  }

  // Each meta file is a view of the batch's one Buffer: a scan of a
  // million makes a million views but only one backing store per batch.
  async scanMeta(
    metaDir: string,
    envDir: string,
    ids: string[],
  ): Promise<MetaScan> {
    const [bytes, info, errors] = await started(
      this.raw.scan_meta(this.gate, metaDir, envDir, ids),
      'scan_meta',
    );
    const metas: MetaScan['metas'] = new Array(ids.length);
    const envStats: MetaScan['envStats'] = new Array(ids.length);
    let start = 0;
    for (let i = 0; i < ids.length; i++) {
      const end = info[3 * i];
      metas[i] = errors?.[2 * i] ?? bytes.subarray(start, end);
      envStats[i] = errors?.[2 * i + 1] ?? {
        size: info[3 * i + 1],
        ctimeMs: info[3 * i + 2],
      };
      start = end;
    }
    return { metas, envStats };
  }
}

/**
 * Loads the addon from the package root (a build, else a prebuild).
 * Returns null when it cannot be loaded; {@link nativeLoadError} then
 * says why.
 */
export function loadNative(options: BackendOptions = {}): Backend | null {
  if (binding === null && loadError === null) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-var-requires
      const load = require('node-gyp-build') as (dir: string) => unknown;
      binding = load(path.join(__dirname, '..')) as RawBinding;
    } catch (err) {
      loadError = err instanceof Error ? err : new Error(String(err));
    }
  }
  return binding === null ? null : new NativeBackend(binding, options);
}

/** Why {@link loadNative} returned null, or null if it did not. */
export function nativeLoadError(): Error | null {
  return loadError;
}
