'use strict';
// A small seeded PRNG (mulberry32) for the durability trials, so that a
// failing run is replayed from the seed it printed.

const { randomInt } = require('node:crypto');

/**
 * The seed in env `name` when set, else `fallback` when given (a fixed
 * seed, so that every run tries the same cases), else a fresh random one.
 */
function seedFrom(name, fallback) {
  const given = process.env[name];
  if (given !== undefined && given !== '') {
    const seed = Number(given);
    if (!Number.isSafeInteger(seed)) {
      throw new Error(`${name} must be an integer, not ${given}`);
    }
    return seed >>> 0;
  }
  if (fallback !== undefined) return fallback >>> 0;
  return randomInt(2 ** 32 - 1);
}

class Rng {
  constructor(seed) {
    this.state = seed >>> 0;
  }

  /** A float in [0, 1). */
  next() {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  }

  /** An integer in [0, n). */
  int(n) {
    return Math.floor(this.next() * n);
  }

  /** An integer in [lo, hi]. */
  range(lo, hi) {
    return lo + this.int(hi - lo + 1);
  }

  chance(p) {
    return this.next() < p;
  }

  pick(list) {
    return list[this.int(list.length)];
  }

  /** A 32-bit seed for a derived generator. */
  seed() {
    return Math.floor(this.next() * 2 ** 32) >>> 0;
  }
}

module.exports = { Rng, seedFrom };
