/** A counting semaphore that hands out slots in call order. */
export class Limiter {
  private active = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(private readonly limit: number) {}

  /** Runs `task` once a slot is free and holds the slot until it settles. */
  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.active >= this.limit) {
      // The slot is handed over, not freed and taken: no caller arriving
      // meanwhile can overtake one that waits.
      await new Promise<void>((resolve) => this.waiting.push(resolve));
    } else {
      this.active++;
    }
    try {
      return await task();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.active--;
    }
  }
}

/**
 * The default share of libuv's thread pool, held together by the
 * backends of one thread that leave maxInFlight unset: the pool size
 * (UV_THREADPOOL_SIZE, 4 unless set) less one, at least 1, so that one
 * thread stays free for dns.lookup, fs and crypto.
 */
export function defaultMaxInFlight(): number {
  const pool = Number(process.env.UV_THREADPOOL_SIZE) || 4;
  return Math.max(1, pool - 1);
}
