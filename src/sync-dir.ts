import * as fs from 'node:fs/promises';

/**
 * fsyncs a directory through node:fs, so that the names made or removed
 * in it are durable. For the store's own bookkeeping (parent directories,
 * quarantine, the lock); the message chains sync theirs in a backend.
 */
export async function syncDir(dir: string): Promise<void> {
  const handle = await fs.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
