import * as path from 'node:path';
import type { Backend, BackendOptions, FileStat, Step } from './plan';

/** What the addon exports; never public. */
export interface RawBinding {
  run_plan(steps: Step[], groupCommit: boolean): Promise<void>;
  read_files(
    paths: string[],
  ): Promise<(Buffer | NodeJS.ErrnoException)[]>;
  stat_files(
    paths: string[],
  ): Promise<(FileStat | NodeJS.ErrnoException)[]>;
  /**
   * The shared directory sync alone; resolves with the generation of the
   * last sync started when called and of the sync that covered the call.
   */
  sync_dir(path: string): Promise<[number, number]>;
}

let binding: RawBinding | null = null;
let loadError: Error | null = null;

/**
 * Runs plans as one chain of libuv requests in the addon, returning to
 * JavaScript once per plan. The Buffers of a plan are written from in
 * place, not copied: changing one before the promise settles changes
 * what is written.
 *
 * With group commit, the directory syncs of concurrent plans are shared
 * in the addon, per thread: see {@link BackendOptions.groupCommit}.
 */
export class NativeBackend implements Backend {
  readonly name = 'native' as const;
  private readonly groupCommit: boolean;

  constructor(
    private readonly raw: RawBinding,
    options: BackendOptions = {},
  ) {
    this.groupCommit = options.groupCommit ?? true;
  }

  async run(steps: Step[]): Promise<void> {
    return this.raw.run_plan(steps, this.groupCommit);
  }

  async readFiles(
    paths: string[],
  ): Promise<(Buffer | NodeJS.ErrnoException)[]> {
    return this.raw.read_files(paths);
  }

  async statFiles(
    paths: string[],
  ): Promise<(FileStat | NodeJS.ErrnoException)[]> {
    return this.raw.stat_files(paths);
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
