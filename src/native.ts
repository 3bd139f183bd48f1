import * as path from 'node:path';
import { defaultMaxInFlight } from './limiter';
import type { Backend, BackendOptions, FileStat, Step } from './plan';

/**
 * A gate of the addon: every request of the calls given it waits for one
 * of its slots. Opaque; it also holds the directory syncs those calls
 * share.
 */
export type RawGate = object & { readonly __gate: unique symbol };

/** What the addon exports; never public. */
export interface RawBinding {
  create_gate(maxInFlight: number): RawGate;
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
   * The shared directory sync alone; resolves with the generation of the
   * last fsync submitted when called and of the one that covered it.
   */
  sync_dir(gate: RawGate, path: string): Promise<[number, number]>;
}

let binding: RawBinding | null = null;
let loadError: Error | null = null;

/**
 * Runs plans as one chain of libuv requests in the addon, returning to
 * JavaScript once per plan. The Buffers of a plan are written from in
 * place, not copied: changing one before the promise settles changes
 * what is written.
 *
 * Every request passes the backend's gate in the addon, which keeps the
 * backend within {@link BackendOptions.maxInFlight} pool threads; with
 * group commit, the directory syncs of its concurrent plans are shared
 * there too: see {@link BackendOptions.groupCommit}.
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
    this.gate = raw.create_gate(options.maxInFlight ?? defaultMaxInFlight());
  }

  async run(steps: Step[]): Promise<void> {
    return this.raw.run_plan(this.gate, steps, this.groupCommit);
  }

  async readFiles(
    paths: string[],
  ): Promise<(Buffer | NodeJS.ErrnoException)[]> {
    return this.raw.read_files(this.gate, paths);
  }

  async statFiles(
    paths: string[],
  ): Promise<(FileStat | NodeJS.ErrnoException)[]> {
    return this.raw.stat_files(this.gate, paths);
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
