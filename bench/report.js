'use strict';

/** The table, the targets and the machine line, as text for people. */

const BASE = 'native';

function fixed(value, digits) {
  if (value == null || !Number.isFinite(value)) return '-';
  return value.toFixed(digits);
}

/** Three significant figures or so, without exponent notation. */
function sig(value) {
  if (value == null || !Number.isFinite(value)) return '-';
  if (value >= 100) return value.toFixed(0);
  if (value >= 10) return value.toFixed(1);
  if (value >= 1) return value.toFixed(2);
  return value.toFixed(3);
}

function find(cells, id, contender) {
  return cells.find((c) => c.id === id && c.contender === contender && c.ok);
}

/** Each cell's msgs/s over the native backend's in the same cell. */
function addRatios(cells) {
  for (const cell of cells) {
    const base = find(cells, cell.id, BASE);
    cell.ratioToNative =
      cell.ok && base && base.msgsPerSec > 0
        ? cell.msgsPerSec / base.msgsPerSec
        : null;
  }
}

function noteOf(cell) {
  if (cell.skipped) return 'SKIPPED: no better-sqlite3 (see below)';
  if (!cell.ok) return `FAILED: ${cell.error.split('\n')[0]}`.slice(0, 40);
  const notes = [];
  if (cell.msgsPerSecMin != null) {
    notes.push(`${sig(cell.msgsPerSecMin)}-${sig(cell.msgsPerSecMax)}`);
  }
  if (cell.failedRuns) {
    notes.push(`${cell.failedRuns} of ${cell.repeats} runs FAILED`);
  }
  if (cell.io && cell.contender !== 'sqlite' && cell.contender !== 'ceiling') {
    const wanted = cell.contender === 'js' ? 'js' : 'native';
    if (cell.io !== wanted) notes.push(`ran on ${cell.io}!`);
  }
  if (cell.workload === 'load') notes.push(`all in ${fixed(cell.seconds, 2)} s`);
  if (cell.junk) {
    notes.push(
      `+${fixed(cell.rssGrowthMb, 0)} MB, ELD max ` +
        `${sig(cell.eldMaxMs)} ms, ${cell.junk} junk left`,
    );
  }
  if (cell.workload === 'big') {
    notes.push(
      `+${fixed(cell.aboveBaselineMb, 0)} MB in write(), ` +
        `${fixed(cell.cpuSeconds, 2)} CPU s`,
    );
  }
  return notes.join(', ');
}

const COLUMNS = [
  ['cell', 'l', (c) => c.id],
  ['contender', 'l', (c) => c.contender],
  ['msgs/s', 'r', (c) => (c.ok ? sig(c.msgsPerSec) : '-')],
  ['x nat', 'r', (c) => fixed(c.ratioToNative, 2)],
  ['p50 ms', 'r', (c) => sig(c.p50Ms)],
  ['p99 ms', 'r', (c) => sig(c.p99Ms)],
  ['ELD p99', 'r', (c) => sig(c.eldP99Ms)],
  ['CPU s/1k', 'r', (c) => sig(c.cpuPer1kS)],
  ['RSS MB', 'r', (c) => fixed(c.maxRssMb, 0)],
  ['notes', 'l', noteOf],
];

function formatTable(cells) {
  const rows = cells.map((c) => COLUMNS.map(([, , get]) => get(c)));
  const widths = COLUMNS.map(([name], i) =>
    Math.max(name.length, ...rows.map((r) => r[i].length)),
  );
  const line = (values) =>
    '| ' +
    values
      .map((v, i) =>
        COLUMNS[i][1] === 'r' ? v.padStart(widths[i]) : v.padEnd(widths[i]),
      )
      .join(' | ') +
    ' |';
  const rule =
    '|' +
    widths
      .map((w, i) =>
        COLUMNS[i][1] === 'r' ? '-'.repeat(w + 1) + ':' : '-'.repeat(w + 2),
      )
      .join('|') +
    '|';
  return [line(COLUMNS.map(([name]) => name)), rule, ...rows.map(line)].join(
    '\n',
  );
}

const NOTES = [
  'msgs/s: calls completed per second (life: whole lives per second; ' +
    'load: messages yielded per second).',
  'x nat: msgs/s over the native backend with groupCommit: true in the ' +
    'same cell.',
  'p50/p99 ms: latency of one call from issue to settle, including any ' +
    'wait inside the store: behind the 128 writes, updates and removals ' +
    'it runs at once, for a thread-pool slot, and for a directory sync ' +
    "shared with other calls (maxInFlight caps the store's concurrent " +
    'thread-pool requests, not calls: a call waiting for a slot or for a ' +
    'shared sync holds none); life: the six calls of one message together.',
  'ELD p99: event-loop delay p99 in ms over the measured part, from ' +
    'perf_hooks.monitorEventLoopDelay({ resolution: 1 }) less the 1 ms ' +
    'timer interval.',
  'CPU s/1k: user + system CPU seconds of the whole process (libuv pool ' +
    'threads included) per 1,000 messages, measured part only.',
  'RSS MB: peak RSS of the process over its whole life ' +
    '(process.resourceUsage().maxRSS; getrusage for the C program).',
  'sqlite: better-sqlite3 is synchronous: concurrency N is N logical ' +
    'clients interleaved on the one main thread, one statement per ' +
    'event-loop turn, each call its own transaction (nothing batched).',
  'ceiling: a C program doing the same system calls per message, one ' +
    'pthread per client, no JavaScript; no event loop, so no ELD.',
  'load: a fresh process opens the queue and iterates load() over ' +
    'messages prepared beforehand (warm page cache); sqlite: SELECT id, ts ' +
    'of every row. The load and get queues are kept in bench/.scratch ' +
    'between runs and reused while the format and prepare.js are unchanged ' +
    '(`--clean` removes them); right before each cell that reads a queue, ' +
    'its files are read through (for load, its meta files read and its ' +
    'envelope files lstat\'ed), to warm the page cache. load-1m-junk ' +
    '(opt-in): RSS growth is the peak during load() less the RSS before.',
  'write-50m-c1: one 50 MiB message; p50 = p99 = its write() time; ' +
    '"in write()" is the peak RSS during write() less the RSS right before ' +
    "it, with the caller's message already built and its garbage collected: " +
    "the library's own memory. The peak is the higher of the kernel's " +
    'high-water mark (VmHWM, reset through /proc/self/clear_refs at the ' +
    'baseline, where Linux allows it) and RSS sampled every millisecond ' +
    'during the call. RSS MB is still the whole life of the process.',
];

/** The line that says how --repeat N was summed up. */
function repeatNote(n) {
  return (
    `- repeats: every cell ran ${n} times, each workload's contenders in ` +
    'turn, round after round; msgs/s is the median over the runs (their ' +
    'range in notes), the other figures those of the median run.'
  );
}

/** The targets, measured: never asserted anywhere, only reported. */
function evaluateTargets(cells) {
  const msgs = (id, who) => find(cells, id, who)?.msgsPerSec;
  const ratio = (a, b) => (a != null && b != null && b > 0 ? a / b : null);
  const targets = [];
  const add = (name, measured, goal, higherIsBetter, unit) => {
    let met = null;
    if (measured != null && Number.isFinite(measured)) {
      met = higherIsBetter ? measured >= goal : measured <= goal;
    }
    targets.push({ name, measured, goal, higherIsBetter, unit, met });
  };

  add(
    'native >= 2x js msgs/s, 32 KB writes, c128',
    ratio(msgs('write-32k-c128', 'native'), msgs('write-32k-c128', 'js')),
    2,
    true,
    'x',
  );
  add(
    'native >= 1.3x js msgs/s, 32 KB writes, c1',
    ratio(msgs('write-32k-c1', 'native'), msgs('write-32k-c1', 'js')),
    1.3,
    true,
    'x',
  );
  add(
    'native >= 1.5x sqlite, life of a message, c64',
    ratio(msgs('life-32k-c64', 'native'), msgs('life-32k-c64', 'sqlite')),
    1.5,
    true,
    'x',
  );
  add(
    'native >= 80% of the C ceiling, 32 KB writes, c128',
    ratio(
      msgs('write-32k-c128', 'native'),
      msgs('write-32k-c128', 'ceiling'),
    ),
    0.8,
    true,
    'x',
  );
  const c128 = cells.filter(
    (c) => c.ok && c.contender === 'native' && /^write-.*-c128$/.test(c.id),
  );
  add(
    'native ELD p99 <= 5 ms with 128 writes in flight (worst size)',
    c128.length ? Math.max(...c128.map((c) => c.eldP99Ms)) : null,
    5,
    false,
    'ms',
  );
  const loadId = cells.find((c) => c.workload === 'load' && !c.junk)?.id;
  const loadNative = find(cells, loadId, 'native');
  add(
    `native ${loadId ?? 'load'}: load() <= 1 s` +
      (loadNative && loadNative.messages !== 100_000
        ? ` (${loadNative.messages} messages, not 100,000)`
        : ''),
    loadNative?.seconds,
    1,
    false,
    's',
  );
  add(
    'native load() >= 5x js msgs/s',
    ratio(msgs(loadId, 'native'), msgs(loadId, 'js')),
    5,
    true,
    'x',
  );
  // Opt-in (--workload load-1m): "not run" unless asked for.
  const junkLoad = find(cells, 'load-1m-junk', 'native');
  add(
    'native load-1m-junk: load() <= 10 s',
    junkLoad?.seconds,
    10,
    false,
    's',
  );
  add(
    'native load-1m-junk: RSS growth < 300 MB',
    junkLoad?.rssGrowthMb,
    300,
    false,
    'MB',
  );
  add(
    'native load-1m-junk: event loop never blocked > 100 ms',
    junkLoad?.eldMaxMs,
    100,
    false,
    'ms',
  );
  const big = find(cells, 'write-50m-c1', 'native');
  add(
    'native 50 MiB write: peak RSS in write() <= 2x message size',
    big ? big.aboveBaselineMb / big.messageMb : null,
    2,
    false,
    'x',
  );
  return targets;
}

function formatTargets(targets) {
  const rows = targets.map((t) => {
    const measured =
      t.measured == null ? 'not run' : `${sig(t.measured)} ${t.unit}`;
    let verdict = 'not run';
    if (t.met === true) verdict = 'met';
    if (t.met === false) {
      const off = Math.abs(t.measured / t.goal - 1) * 100;
      const how = t.higherIsBetter ? 'short' : 'over';
      verdict = `MISSED (${how} by ${fixed(off, 0)}%)`;
    }
    return [t.name, measured, verdict];
  });
  const head = ['target', 'measured', 'target met?'];
  const widths = head.map((h, i) =>
    Math.max(h.length, ...rows.map((r) => r[i].length)),
  );
  const line = (r) =>
    '| ' + r.map((v, i) => v.padEnd(widths[i])).join(' | ') + ' |';
  return [
    line(head),
    '|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|',
    ...rows.map(line),
  ].join('\n');
}

function formatMachine(m) {
  return (
    `${m.cpu}, ${m.cores} cores, ${m.memoryGb} GB RAM; Linux ${m.kernel}; ` +
    `Node ${m.node}; scratch on ${m.filesystem}; ` +
    `UV_THREADPOOL_SIZE ${m.threadpool}; ` +
    `load average ${fixed(m.loadAverage, 2)} at start, ` +
    `${fixed(m.loadAverageAtEnd, 2)} at end; SQLite ${m.sqlite ?? '-'} ` +
    `(better-sqlite3 ${m.betterSqlite3 ?? '-'}); ${m.cc ?? 'no C compiler'}; ` +
    `commit ${m.commit}${m.dirty ? ' + uncommitted changes' : ''}; ` +
    `groupCommit option in the build: ${m.groupCommitInBuild ? 'yes' : 'no'}`
  );
}

module.exports = {
  NOTES,
  repeatNote,
  addRatios,
  evaluateTargets,
  formatMachine,
  formatTable,
  formatTargets,
};
