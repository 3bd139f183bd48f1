import * as path from 'node:path';
import type { Backend, Step } from './plan';

/** What the addon exports; never public. */
interface RawBinding {
  run_plan(steps: Step[]): Promise<void>;
  read_files(
    paths: string[],
  ): Promise<(Buffer | NodeJS.ErrnoException)[]>;
}

let binding: RawBinding | null = null;
let loadError: Error | null = null;

/**
 * Runs plans as one chain of libuv requests in the addon, returning to
 * JavaScript once per plan. The Buffers of a plan are written from in
 * place, not copied: changing one before the promise settles changes
 * what is written.
 */
export class NativeBackend implements Backend {
  readonly name = 'native' as const;

  constructor(private readonly raw: RawBinding) {}

  async run(steps: Step[]): Promise<void> {
    return this.raw.run_plan(steps);
  }

  async readFiles(
    paths: string[],
  ): Promise<(Buffer | NodeJS.ErrnoException)[]> {
    return this.raw.read_files(paths);
  }
}

/**
 * Loads the addon from the package root (a build, else a prebuild).
 * Returns null when it cannot be loaded; {@link nativeLoadError} then
 * says why.
 */
export function loadNative(): Backend | null {
  if (binding === null && loadError === null) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-var-requires
      const load = require('node-gyp-build') as (dir: string) => unknown;
      binding = load(path.join(__dirname, '..')) as RawBinding;
    } catch (err) {
      loadError = err instanceof Error ? err : new Error(String(err));
    }
  }
  return binding === null ? null : new NativeBackend(binding);
}

/** Why {@link loadNative} returned null, or null if it did not. */
export function nativeLoadError(): Error | null {
  return loadError;
}
