'use strict';

/**
 * What a run measures: every workload, and the contenders that run it.
 * A cell is one workload for one contender, run in a process of its own.
 */

const { BODY_BYTES } = require('./message');

const WRITERS = ['native', 'native-nogc', 'js', 'sqlite', 'ceiling'];
const STORES = ['native', 'native-nogc', 'js', 'sqlite'];
const READERS = ['native', 'js', 'sqlite'];

/**
 * The most messages a write cell may write, whichever of this and the
 * time box comes first: it bounds the disk space a cell takes.
 */
const MAX_OPS = { '1k': 100_000, '32k': 50_000, '1m': 500 };

const FULL = {
  writeSeconds: 3,
  lifeSeconds: 4,
  getSeconds: 3,
  loadCount: 100_000,
  getCount: 2_000,
  writes: [
    ['1k', 1],
    ['1k', 16],
    ['1k', 128],
    ['32k', 1],
    ['32k', 16],
    ['32k', 128],
    ['1m', 1],
    ['1m', 16],
    ['1m', 128],
  ],
};

const QUICK = {
  writeSeconds: 1,
  lifeSeconds: 1.5,
  getSeconds: 1,
  loadCount: 20_000,
  getCount: 500,
  writes: [
    ['32k', 1],
    ['32k', 128],
  ],
};

/**
 * load() of a million messages with 50,000 entries of junk beside them:
 * only when --workload names it (load-1m), since its queue takes minutes
 * to prepare and about 8 GB of disk (kept, like the others, until
 * --clean). The same size with --quick: the targets are for a million.
 * Native backend only: the pure-JS one takes minutes.
 */
const BIG_LOAD = { count: 1_000_000, junk: 50_000 };

/** The queues prepare.js writes before the read cells. */
function preparedQueues(mode) {
  return {
    load: { count: mode.loadCount, bodyBytes: BODY_BYTES['1k'] },
    get: { count: mode.getCount, bodyBytes: BODY_BYTES['32k'] },
    'load-junk': { ...BIG_LOAD, bodyBytes: BODY_BYTES['1k'] },
  };
}

function planCells(quick) {
  const mode = quick ? QUICK : FULL;
  const cells = [];
  const add = (workload, id, contenders, spec) => {
    for (const contender of contenders) {
      cells.push({ id, workload, contender, ...spec });
    }
  };

  for (const [size, concurrency] of mode.writes) {
    add('write', `write-${size}-c${concurrency}`, WRITERS, {
      bodyBytes: BODY_BYTES[size],
      concurrency,
      durationMs: mode.writeSeconds * 1000,
      maxOps: MAX_OPS[size],
    });
  }

  add('life', 'life-32k-c64', STORES, {
    bodyBytes: BODY_BYTES['32k'],
    concurrency: 64,
    durationMs: mode.lifeSeconds * 1000,
    maxOps: MAX_OPS['32k'],
  });

  const queues = preparedQueues(mode);
  add('load', `load-${queues.load.count / 1000}k`, READERS, {
    bodyBytes: queues.load.bodyBytes,
    prepared: 'load',
    expected: queues.load.count,
  });

  add('load', 'load-1m-junk', ['native'], {
    bodyBytes: queues['load-junk'].bodyBytes,
    prepared: 'load-junk',
    expected: BIG_LOAD.count,
    junk: BIG_LOAD.junk,
    optIn: true,
  });

  add('get', 'get-32k-c16', READERS, {
    bodyBytes: queues.get.bodyBytes,
    prepared: 'get',
    concurrency: 16,
    durationMs: mode.getSeconds * 1000,
    maxOps: 1e9,
  });

  add('big', 'write-50m-c1', ['native', 'js'], {
    bodyBytes: BODY_BYTES['50m'],
  });

  return { cells, queues };
}

module.exports = { planCells };
