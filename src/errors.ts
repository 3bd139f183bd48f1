/**
 * Errors a DiskStorage call can reject with.
 *
 * Two families, both carrying `retryable`, which tells an SMTP server
 * whether to answer 4xx (trying again later may succeed) or 5xx:
 *
 * - OS errors are Node's own fs errors (`code`, `errno`, `syscall`, `path`,
 *   `dest`), passed through unchanged apart from the added `retryable` and
 *   a `code` named from `errno` where libuv has no name for it.
 * - Queue errors are `QueueError`s with a stable `code` from
 *   `QueueErrorCode`; an OS error behind one is on `cause`.
 */

import { constants as osConstants } from 'node:os';

/** The stable codes of library errors. */
export type QueueErrorCode =
  | 'ERR_QUEUE_INVALID_ARGUMENT'
  | 'ERR_QUEUE_INVALID_ENVELOPE'
  | 'ERR_QUEUE_TOO_LARGE'
  | 'ERR_QUEUE_INVALID_ID'
  | 'ERR_QUEUE_NOT_FOUND'
  | 'ERR_QUEUE_CORRUPT'
  | 'ERR_QUEUE_CROSS_DEVICE'
  | 'ERR_QUEUE_LOCKED'
  | 'ERR_QUEUE_CLOSED'
  | 'ERR_QUEUE_EXITING';

const brand = Symbol('slimta.QueueError');

/** Base class of every library error; `instanceof` works for all of them. */
export class QueueError extends Error {
  declare readonly code: QueueErrorCode;
  /** True when the same call may succeed if tried again later. */
  declare readonly retryable: boolean;

  constructor(
    code: QueueErrorCode,
    message: string,
    options?: { cause?: unknown; retryable?: boolean },
  ) {
    super(message, options);
    brandError(this, code, options?.retryable ?? false);
  }

  // Argument errors must also be TypeErrors, and a class has one parent, so
  // `instanceof QueueError` is decided by a brand rather than by the
  // prototype chain. Subclasses inherit this method and must keep the
  // ordinary test, or every queue error would pass for every subclass.
  static override [Symbol.hasInstance](value: unknown): boolean {
    if (this !== QueueError) {
      return Function.prototype[Symbol.hasInstance].call(this, value);
    }
    return typeof value === 'object' && value !== null && brand in value;
  }
}

function brandError(
  err: Error,
  code: QueueErrorCode,
  retryable: boolean,
): void {
  Object.defineProperty(err, brand, { value: true });
  Object.defineProperty(err, 'code', {
    value: code,
    enumerable: true,
  });
  Object.defineProperty(err, 'retryable', {
    value: retryable,
    enumerable: true,
  });
  err.name = err.constructor.name;
}

/** A bad argument: wrong type, NaN timestamp, index out of range. */
export class InvalidArgumentError extends TypeError {
  declare readonly code: 'ERR_QUEUE_INVALID_ARGUMENT';
  declare readonly retryable: false;

  constructor(message: string) {
    super(message);
    brandError(this, 'ERR_QUEUE_INVALID_ARGUMENT', false);
  }
}

/** An envelope the store refuses to write rather than change silently. */
export class InvalidEnvelopeError extends QueueError {
  constructor(message: string) {
    super('ERR_QUEUE_INVALID_ENVELOPE', message);
  }
}

/** A message larger than the store can write and read back. */
export class TooLargeError extends QueueError {
  constructor(message: string) {
    super('ERR_QUEUE_TOO_LARGE', message);
  }
}

/** Not a queue id: anything but 32 lowercase hexadecimal characters. */
export class InvalidIdError extends QueueError {
  constructor(id: unknown) {
    super('ERR_QUEUE_INVALID_ID', `invalid queue id ${describe(id)}`);
  }
}

/** No message with that id (slimta's KeyError). */
export class NotFoundError extends QueueError {
  readonly id: string;

  constructor(id: string, cause?: unknown) {
    super('ERR_QUEUE_NOT_FOUND', `no message ${id} in the queue`, {
      cause,
    });
    this.id = id;
  }
}

/** A file that exists but fails its checks; `path` names it. */
export class CorruptError extends QueueError {
  readonly path: string;

  constructor(path: string, reason: string, cause?: unknown) {
    super('ERR_QUEUE_CORRUPT', `corrupt queue file '${path}': ${reason}`, {
      cause,
    });
    this.path = path;
  }
}

/** tmpDir, envDir and metaDir are not on one filesystem. */
export class CrossDeviceError extends QueueError {
  constructor(message: string) {
    super('ERR_QUEUE_CROSS_DEVICE', message);
  }
}

/**
 * The queue lock cannot be taken: another owner holds it (retryable, as
 * that owner may end), or only someone removing it by hand, or changing
 * the setup, can help (not retryable).
 */
export class LockedError extends QueueError {
  constructor(
    message: string,
    options?: { cause?: unknown; retryable?: boolean },
  ) {
    super('ERR_QUEUE_LOCKED', message, {
      cause: options?.cause,
      retryable: options?.retryable ?? true,
    });
  }
}

/** The store was closed. */
export class ClosedError extends QueueError {
  constructor() {
    super('ERR_QUEUE_CLOSED', 'the queue storage is closed');
  }
}

/** Called while the process exits: no I/O can complete any more. */
export class ExitingError extends QueueError {
  constructor() {
    super(
      'ERR_QUEUE_EXITING',
      'the process is exiting: queue I/O can no longer complete',
    );
  }
}

/**
 * OS error codes after which trying again later may succeed: the disk
 * fills and empties, descriptors are freed, a flaky device recovers.
 * Everything else (EACCES, ENOENT, ENOTDIR, EROFS, ...) needs someone to
 * change the configuration first.
 */
const RETRYABLE_OS_CODES = new Set([
  'ENOSPC',
  'EDQUOT',
  'EMFILE',
  'ENFILE',
  'EIO',
  'EAGAIN',
  'EBUSY',
  'ENOMEM',
  'EINTR',
  'ETIMEDOUT',
  'ECANCELED',
  'ESTALE',
]);

// The libuv of Node 20 has no name for some errnos, EDQUOT among them, and
// gives `code` as 'Unknown system error -122': the code a caller tests
// for, and the retryable decision, would miss them.
function osCode(e: NodeJS.ErrnoException): string | undefined {
  const { code, errno } = e;
  if (typeof code !== 'string' || !code.startsWith('Unknown system error')) {
    return code;
  }
  const named = Object.entries(osConstants.errno).find(
    ([, n]) => typeof errno === 'number' && n === -errno,
  );
  return named?.[0] ?? code;
}

/** Adds `retryable` to an OS error (or to anything thrown) and returns it. */
export function classifyOsError(err: unknown): Error {
  const e = err instanceof Error ? err : new Error(String(err));
  if (!('retryable' in e)) {
    const code = osCode(e);
    if (code !== (e as NodeJS.ErrnoException).code) {
      (e as NodeJS.ErrnoException).code = code;
    }
    Object.defineProperty(e, 'retryable', {
      value: typeof code === 'string' && RETRYABLE_OS_CODES.has(code),
      enumerable: true,
    });
  }
  return e;
}

function describe(value: unknown): string {
  if (typeof value !== 'string') return `of type ${typeof value}`;
  const shown = JSON.stringify(value);
  return shown.length > 80 ? `${shown.slice(0, 77)}...` : shown;
}
