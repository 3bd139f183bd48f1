#!/usr/bin/env node
'use strict';

/**
 * `npm run bench`: every contender on every workload, in turn, each cell
 * in a fresh child process; the write and life cells on a fresh queue
 * directory, the load and get cells on queues prepared once and kept in
 * the scratch directory. With --repeat N every cell runs N times and the
 * median msgs/s is reported. Prints a table and the machine, and writes
 * bench/results/<date>.json and latest.json.
 */

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { createHash } = require('node:crypto');
const {
  execFileSync,
  fork,
  spawn,
  spawnSync,
} = require('node:child_process');
const { Command, InvalidArgumentError } = require('commander');

const { planCells } = require('./cells');
const {
  CONTENDERS,
  SCHEMA,
  loadFormat,
  loadLibrary,
} = require('./contenders');
const { makeEnvelope } = require('./message');
const {
  NOTES,
  repeatNote,
  addRatios,
  evaluateTargets,
  formatMachine,
  formatTable,
  formatTargets,
} = require('./report');

const ROOT = path.join(__dirname, '..');
const RESULTS = path.join(__dirname, 'results');

const program = new Command()
  .name('npm run bench --')
  .description('Benchmark the queue store against its contenders.')
  .option('--quick', 'a short run of the main cells (about a minute)')
  .option(
    '--only <contenders>',
    `comma-separated contenders: ${Object.keys(CONTENDERS).join(', ')}`,
    list(Object.keys(CONTENDERS)),
  )
  .option(
    '--workload <names>',
    'comma-separated workloads, cell ids or their leading parts: ' +
      'write, life, load, get, write-32k, write-32k-c128, ...; ' +
      'load-1m (a million messages beside 50,000 junk entries; about 8 GB ' +
      'of disk) runs only when named',
    list(),
  )
  .option(
    '--scratch <dir>',
    'where queues are made; a real disk for write cells (on tmpfs an ' +
      'fsync costs nothing; a run of read cells only may use it)',
    path.join('bench', '.scratch'),
  )
  .option(
    '--repeat <n>',
    'run every cell n times and report the median msgs/s',
    positiveInt,
    1,
  )
  .option(
    '--clean',
    'remove the prepared queues kept in the scratch directory, and exit',
  )
  .option('--no-save', 'do not write bench/results/')
  .parse();

const opts = program.opts();

function list(allowed) {
  return (value) => {
    const names = value.split(',').map((s) => s.trim()).filter(Boolean);
    for (const name of names) {
      if (allowed && !allowed.includes(name)) {
        throw new InvalidArgumentError(`unknown contender ${name}`);
      }
    }
    return names;
  };
}

function positiveInt(value) {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 1) {
    throw new InvalidArgumentError('must be a positive integer');
  }
  return n;
}

/**
 * The cells --only and --workload pick. An opt-in cell runs only when
 * --workload names it by its id or a leading part longer than its
 * workload's name (load-1m, not load).
 */
function selectCells(cells) {
  const named = (c, w) => c.id === w || c.id.startsWith(`${w}-`);
  return cells.filter(
    (c) =>
      (!opts.only || opts.only.includes(c.contender)) &&
      (c.optIn
        ? opts.workload?.some((w) => w !== c.workload && named(c, w))
        : !opts.workload ||
          opts.workload.some((w) => c.workload === w || named(c, w))),
  );
}

function sh(cmd, args, cwd = ROOT) {
  try {
    return execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: 'pipe' })
      .trim();
  } catch {
    return null;
  }
}

// --- better-sqlite3 --------------------------------------------------------

/**
 * A binding that was never built (npm skips the install scripts of
 * dependencies it has not been told to allow) or was built for another
 * Node: both are mended by building it again.
 */
const REBUILDABLE = new RegExp(
  [
    'Could not locate the bindings file',
    'NODE_MODULE_VERSION',
    'compiled against a different Node\\.js version',
    'invalid ELF header',
  ].join('|'),
);

/** Opens a database in a child; null if that works, else the error. */
function probeSqlite() {
  const r = spawnSync(
    process.execPath,
    ['-e', "new (require('better-sqlite3'))(':memory:').close()"],
    { cwd: ROOT, encoding: 'utf8', stdio: 'pipe' },
  );
  if (r.status === 0) return null;
  const text = `${r.stderr ?? ''}${r.error?.message ?? ''}`;
  const line =
    text.split('\n').find((l) => /^\w*Error\b/.test(l)) ??
    text.trim().split('\n')[0] ??
    `exit ${r.status}`;
  // The paths it tried are this machine's: the message is enough.
  return { text, line: line.replace(/\s*Tried:.*$/, '').trim() };
}

/** Runs a build quietly; null if it worked, else a line on why not. */
function runQuiet(what, cmd, args, cwd) {
  const r = spawnSync(cmd, args, {
    cwd,
    encoding: 'utf8',
    stdio: 'pipe',
    maxBuffer: 64 * 2 ** 20,
  });
  if (r.status === 0) return null;
  if (r.error) return `${what} failed: ${r.error.code ?? r.error.message}`;
  const last = `${r.stderr ?? ''}`
    .split('\n')
    .filter((l) => /ERR!|error/i.test(l) && !/complete log|\//.test(l))
    .pop();
  return (
    `${what} failed (exit ${r.status ?? r.signal})` +
    (last ? `: ${last.replace(/^npm error\s*/, '').trim()}` : '')
  );
}

/**
 * Makes better-sqlite3 usable if it can be: returns null when it is, else
 * why the sqlite contender is skipped. Builds the binding from source
 * once when it is missing; `npm rebuild` runs the package's install
 * script, and node-gyp is called directly if npm still skipped it.
 */
function ensureSqlite() {
  let failure = probeSqlite();
  if (!failure) return null;
  if (!REBUILDABLE.test(failure.text)) {
    return `better-sqlite3 cannot be loaded: ${failure.line}`;
  }
  progress(
    'building better-sqlite3 from source, once (about 2 minutes)',
    true,
  );
  const npmCli = process.env.npm_execpath;
  const npm =
    npmCli && /\.[cm]?js$/.test(npmCli)
      ? [process.execPath, [npmCli, 'rebuild', 'better-sqlite3']]
      : ['npm', ['rebuild', 'better-sqlite3']];
  let buildError = runQuiet(
    'npm rebuild better-sqlite3',
    npm[0],
    npm[1],
    ROOT,
  );
  failure = probeSqlite();
  if (failure && !buildError) {
    // npm said it rebuilt, yet ran no install script.
    const gyp = path.join(
      ROOT,
      'node_modules',
      'node-gyp',
      'bin',
      'node-gyp.js',
    );
    buildError = runQuiet(
      'node-gyp rebuild in better-sqlite3',
      process.execPath,
      [gyp, 'rebuild', '--release'],
      path.dirname(require.resolve('better-sqlite3/package.json')),
    );
    failure = probeSqlite();
  }
  if (!failure) {
    progress('built better-sqlite3', true);
    return null;
  }
  return (
    `better-sqlite3 has no working binding (${failure.line})` +
    (buildError ? `; building it failed: ${buildError}` : '')
  );
}

function describeMachine(scratch) {
  let sqlite = null;
  let betterSqlite3 = null;
  try {
    const Database = require('better-sqlite3');
    const db = new Database(':memory:');
    sqlite = db.prepare('SELECT sqlite_version() AS v').get().v;
    db.close();
    betterSqlite3 = require('better-sqlite3/package.json').version;
  } catch {
    // Reported as missing; the sqlite cells are then skipped.
  }
  const typings = path.join(ROOT, 'dist', 'disk-storage.d.ts');
  const status = sh('git', ['status', '--porcelain', '--untracked-files=no']);
  return {
    cpu: os.cpus()[0]?.model ?? 'unknown CPU',
    cores: os.cpus().length,
    memoryGb: Math.round(os.totalmem() / 2 ** 30),
    kernel: os.release(),
    node: process.version,
    filesystem:
      sh('df', ['--output=fstype', scratch])?.split('\n')[1]?.trim() ??
      sh('stat', ['-f', '-c', '%T', scratch]) ??
      'unknown',
    threadpool: process.env.UV_THREADPOOL_SIZE ?? '4 (default)',
    // Other work on the machine during the run shows here.
    loadAverage: os.loadavg()[0],
    sqlite,
    betterSqlite3,
    cc: sh('cc', ['--version'])?.split('\n')[0] ?? null,
    commit: sh('git', ['rev-parse', '--short', 'HEAD']) ?? 'unknown',
    dirty: Boolean(status),
    groupCommitInBuild:
      fs.existsSync(typings) &&
      fs.readFileSync(typings, 'utf8').includes('groupCommit'),
  };
}

/** Compiles ceiling.c; returns the binary, or null without a compiler. */
function buildCeiling(scratch) {
  const out = path.join(scratch, 'ceiling');
  const src = path.join(__dirname, 'ceiling.c');
  try {
    execFileSync('cc', ['-O2', '-pthread', '-o', out, src, '-lm'], {
      stdio: 'pipe',
    });
    return out;
  } catch (err) {
    process.stderr.write(`bench: cannot build the ceiling: ${err.message}\n`);
    return null;
  }
}

/** The sizes of the env and meta files the library writes for a body. */
function fileSizes(bodyBytes) {
  const { Envelope } = loadLibrary();
  const { encodeEnvelope, encodeMeta, sizeOf } = loadFormat();
  const id = '0'.repeat(32);
  const env = makeEnvelope(Envelope, bodyBytes);
  const envBytes = sizeOf(encodeEnvelope(id, env));
  const metaBytes = encodeMeta({
    id,
    timestamp: 0,
    attempts: 0,
    recipientCount: env.recipients.length,
    delivered: [],
    envSize: envBytes,
  }).length;
  return { envBytes, metaBytes };
}

// --- progress on stderr ---------------------------------------------------

const tty = process.stderr.isTTY;
const started = Date.now();

function clock(ms) {
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

// Not on a terminal (a log, CI), a line every 10 s at most, so a long
// run still shows it is alive without flooding the log.
const PLAIN_EVERY_MS = 10_000;
let lastPlain = 0;

function progress(text, final = false) {
  const line = `bench ${clock(Date.now() - started)} ${text}`;
  if (tty) {
    process.stderr.write(`\r\x1b[K${line}${final ? '\n' : ''}`);
  } else if (final || Date.now() - lastPlain >= PLAIN_EVERY_MS) {
    lastPlain = Date.now();
    process.stderr.write(`${line}\n`);
  }
}

// --- running cells --------------------------------------------------------

function runChild(script, args, label, execArgv = []) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const child = fork(script, args, {
      cwd: ROOT,
      execArgv,
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
    });
    let stderr = '';
    let outcome = null;
    child.stderr.on('data', (d) => (stderr += d));
    child.on('message', (msg) => {
      if (msg.type === 'progress') {
        const s = ((Date.now() - t0) / 1000).toFixed(1);
        progress(`${label}  ${s} s  ${msg.done} done`);
      } else {
        outcome = msg;
      }
    });
    child.on('exit', (code, signal) => {
      if (outcome?.type === 'result') resolve(outcome.result);
      else if (outcome?.type === 'error') reject(new Error(outcome.message));
      else {
        reject(
          new Error(
            `${path.basename(script)} exited with ${signal ?? code}: ` +
              stderr.trim().split('\n').slice(-3).join(' '),
          ),
        );
      }
    });
  });
}

function runCeiling(binary, cell, dir) {
  const { envBytes, metaBytes } = fileSizes(cell.bodyBytes);
  const args = [
    dir,
    cell.concurrency,
    envBytes,
    metaBytes,
    cell.durationMs / 1000,
    cell.maxOps,
  ].map(String);
  return new Promise((resolve, reject) => {
    const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('exit', (code) => {
      if (code !== 0) return reject(new Error(err.trim() || `exit ${code}`));
      const r = JSON.parse(out);
      resolve({
        messages: r.messages,
        seconds: r.seconds,
        cpuSeconds: r.cpuSeconds,
        p50Ms: r.p50Ms,
        p99Ms: r.p99Ms,
        eldP99Ms: null,
        maxRssMb: r.maxRssKb / 1024,
      });
    });
  });
}

async function runCell(cell, ctx, label) {
  const dir = path.join(ctx.scratch, `${cell.id}-${cell.contender}`);
  try {
    let r;
    if (cell.contender === 'ceiling') {
      if (!ctx.ceiling) throw new Error('no C compiler: ceiling not built');
      const timer = setInterval(() => progress(label), 500);
      try {
        r = await runCeiling(ctx.ceiling, cell, dir);
      } finally {
        clearInterval(timer);
      }
    } else {
      const spec = { ...cell, dir };
      if (cell.prepared) {
        spec.queueDir = ctx.prepared[cell.prepared];
        await warmPrepared(spec.queueDir, cell.workload, label);
      }
      r = await runChild(
        path.join(__dirname, 'child.js'),
        [JSON.stringify(spec)],
        label,
        // The 50 MiB cell collects the garbage of building its message
        // before it takes its baseline.
        cell.workload === 'big' ? ['--expose-gc'] : [],
      );
    }
    // One 50 MiB message is about memory: a rate of one is no figure.
    const single = cell.workload === 'big';
    return {
      ...cell,
      ok: true,
      ...r,
      msgsPerSec: single ? null : r.messages / r.seconds,
      cpuPer1kS: single ? null : (r.cpuSeconds / r.messages) * 1000,
    };
  } catch (err) {
    return { ...cell, ok: false, error: err.message };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

// --- prepared queues -------------------------------------------------------

/**
 * What the files of a prepared queue depend on: the bytes the library
 * encodes for the bench message, how prepare.js lays them out and the
 * SQLite schema. A queue whose stamp matches is reused as it is.
 */
function preparedStamp(bodyBytes) {
  const { Envelope } = loadLibrary();
  const { encodeEnvelope, encodeMeta, sizeOf } = loadFormat();
  const id = '0'.repeat(32);
  const env = makeEnvelope(Envelope, bodyBytes);
  const bufs = encodeEnvelope(id, env);
  const hash = createHash('sha256');
  for (const b of bufs) hash.update(b);
  hash.update(
    encodeMeta({
      id,
      timestamp: 1764784800.25,
      attempts: 0,
      recipientCount: env.recipients.length,
      delivered: [],
      envSize: sizeOf(bufs),
    }),
  );
  hash.update(fs.readFileSync(path.join(__dirname, 'prepare.js')));
  hash.update(SCHEMA);
  return hash.digest('hex').slice(0, 12);
}

/**
 * The load() and get() queues are kept in <scratch>/prepared between runs
 * (the cells only read them): writing them takes seconds, but removing
 * their 200,000 files took minutes of every full run on a loaded disk.
 * Queues of an older stamp, or left half-made by an interrupted run, are
 * removed first.
 */
async function prepare(ctx, queues, cells) {
  const needed = new Set(cells.map((c) => c.prepared));
  const root = path.join(ctx.scratchRoot, 'prepared');
  fs.mkdirSync(root, { recursive: true });
  for (const [name, q] of Object.entries(queues)) {
    if (!needed.has(name)) continue;
    const prefix =
      `${name}-${q.count}-${q.bodyBytes}-` + (q.junk ? `${q.junk}-` : '');
    const dir = path.join(root, prefix + preparedStamp(q.bodyBytes));
    for (const entry of fs.readdirSync(root)) {
      const other = path.join(root, entry);
      if (!entry.startsWith(prefix)) continue;
      if (other === dir && fs.existsSync(path.join(dir, 'files.done'))) {
        continue;
      }
      progress(`removing an outdated or unfinished prepared queue ${entry}`);
      fs.rmSync(other, { recursive: true, force: true });
    }
    const sqlite = cells.some(
      (c) => c.prepared === name && c.contender === 'sqlite',
    );
    const parts = ['files', ...(sqlite && !ctx.sqliteSkipped ? ['sqlite'] : [])];
    const reused = fs.existsSync(path.join(dir, 'files.done'));
    progress(
      reused
        ? `reusing the prepared ${name} queue (${q.count} messages)`
        : `preparing ${q.count} messages for the ${name} cells`,
    );
    await runChild(
      path.join(__dirname, 'prepare.js'),
      [
        dir,
        String(q.count),
        String(q.bodyBytes),
        parts.join(','),
        String(q.junk ?? 0),
      ],
      `preparing ${name}`,
    );
    ctx.prepared[name] = dir;
  }
}

/**
 * Reads a prepared queue through right before a cell reads it: the write
 * cells before it push it out of the page cache, and a cell should meet
 * the same warm cache whichever contender it runs.
 */
async function warmPrepared(queueDir, workload, label) {
  progress(`${label}: warming the page cache`);
  await runChild(
    path.join(__dirname, 'warm.js'),
    [queueDir, workload],
    `warming ${path.basename(queueDir)}`,
  );
}

function cleanPrepared(scratchRoot) {
  const root = path.join(scratchRoot, 'prepared');
  const t0 = Date.now();
  fs.rmSync(root, { recursive: true, force: true });
  try {
    fs.rmdirSync(scratchRoot);
  } catch {
    // Not empty, or not there.
  }
  process.stderr.write(
    `bench: removed the prepared queues in ${((Date.now() - t0) / 1000)
      .toFixed(1)} s\n`,
  );
}

// --- repeats ----------------------------------------------------------------

function median(values) {
  const v = [...values].sort((a, b) => a - b);
  const mid = Math.floor(v.length / 2);
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

/**
 * One row from the runs of a cell: msgs/s is the median over the runs
 * that succeeded; every other figure is that of the median run (the
 * lower middle one for an even count), so that a row is one real run.
 * The 50 MiB cell, which has no rate, is ranked by its write() time.
 */
function combineRuns(runs) {
  const ok = runs.filter((r) => r.ok);
  const summary = runs.map((r) =>
    r.ok
      ? {
          ok: true,
          msgsPerSec: r.msgsPerSec,
          seconds: r.seconds,
          p50Ms: r.p50Ms,
          p99Ms: r.p99Ms,
          eldP99Ms: r.eldP99Ms,
          cpuPer1kS: r.cpuPer1kS,
          maxRssMb: r.maxRssMb,
          ...(r.aboveBaselineMb != null
            ? { aboveBaselineMb: r.aboveBaselineMb }
            : {}),
        }
      : { ok: false, error: r.error },
  );
  const extra = {
    repeats: runs.length,
    failedRuns: runs.length - ok.length,
    ...(runs.length > 1 ? { runs: summary } : {}),
  };
  if (ok.length === 0) return { ...runs[runs.length - 1], ...extra };
  const speed = (r) => r.msgsPerSec ?? 1 / r.seconds;
  const ranked = [...ok].sort((a, b) => speed(a) - speed(b));
  const mid = ranked[Math.floor((ranked.length - 1) / 2)];
  return {
    ...mid,
    msgsPerSec:
      mid.msgsPerSec == null ? null : median(ok.map((r) => r.msgsPerSec)),
    ...(ok.length > 1
      ? {
          msgsPerSecMin: ranked[0].msgsPerSec,
          msgsPerSecMax: ranked[ranked.length - 1].msgsPerSec,
        }
      : {}),
    ...extra,
  };
}

/**
 * The order cells run in: each workload's contenders one after another,
 * and with --repeat, that round again, so that the contenders of a row
 * meet the same spell of machine load as nearly as can be.
 */
function schedule(cells, repeat) {
  const groups = new Map();
  for (const cell of cells) {
    if (!groups.has(cell.id)) groups.set(cell.id, []);
    groups.get(cell.id).push(cell);
  }
  const order = [];
  for (const group of groups.values()) {
    for (let run = 1; run <= repeat; run++) {
      for (const cell of group) order.push({ cell, run });
    }
  }
  return order;
}

function writeResults(run) {
  fs.mkdirSync(RESULTS, { recursive: true });
  const stamp = run.date.replace(/[:]/g, '-').replace(/\.\d+Z$/, 'Z');
  const name = `${stamp}${run.quick ? '-quick' : ''}.json`;
  const text = JSON.stringify(run, null, 2) + '\n';
  // Written whole under a tmp name and renamed, as the library would.
  for (const file of [name, 'latest.json']) {
    const tmp = path.join(RESULTS, `${file}.tmp`);
    fs.writeFileSync(tmp, text);
    fs.renameSync(tmp, path.join(RESULTS, file));
  }
  return path.join('bench', 'results', name);
}

function removeScratch(scratch, scratchRoot) {
  fs.rmSync(scratch, { recursive: true, force: true });
  try {
    fs.rmdirSync(scratchRoot);
  } catch {
    // Not empty: another run is using it, or it held files before.
  }
}

async function main() {
  const scratchRoot = path.resolve(ROOT, opts.scratch);
  if (opts.clean) {
    cleanPrepared(scratchRoot);
    return;
  }
  fs.mkdirSync(scratchRoot, { recursive: true });
  // A directory of this run's own, so that nothing else is ever removed.
  const scratch = fs.mkdtempSync(path.join(scratchRoot, 'run-'));
  loadLibrary();

  const { cells: planned, queues } = planCells(Boolean(opts.quick));
  const cells = selectCells(planned);
  if (cells.length === 0) {
    process.stderr.write('bench: no cell matches --only/--workload\n');
    process.exitCode = 2;
    removeScratch(scratch, scratchRoot);
    return;
  }

  // Before anything loads better-sqlite3 in this process.
  const needsSqlite = cells.some(
    (c) => c.contender === 'sqlite' || c.prepared,
  );
  const sqliteSkipped = needsSqlite ? ensureSqlite() : null;
  if (sqliteSkipped) {
    progress(`sqlite contender skipped: ${sqliteSkipped}`, true);
  }

  const machine = describeMachine(scratch);
  if (machine.filesystem === 'tmpfs') {
    process.stderr.write(
      'bench: warning: the scratch directory is on tmpfs; fsync costs ' +
        'nothing there\n',
    );
  }

  const ctx = {
    scratch,
    scratchRoot,
    prepared: {},
    ceiling: null,
    sqliteSkipped,
  };
  const runsOf = new Map(cells.map((c) => [c, []]));
  const skipped = (c) => c.contender === 'sqlite' && sqliteSkipped;
  for (const cell of cells.filter(skipped)) {
    runsOf
      .get(cell)
      .push({ ...cell, ok: false, skipped: true, error: sqliteSkipped });
  }
  try {
    if (cells.some((c) => c.contender === 'ceiling')) {
      ctx.ceiling = buildCeiling(scratch);
    }
    await prepare(ctx, queues, cells);
    const order = schedule(
      cells.filter((c) => !skipped(c)),
      opts.repeat,
    );
    for (const [i, { cell, run }] of order.entries()) {
      const label =
        `[${i + 1}/${order.length}] ${cell.id} ${cell.contender}` +
        (opts.repeat > 1 ? ` (run ${run}/${opts.repeat})` : '');
      progress(label);
      const r = await runCell(cell, ctx, label);
      runsOf.get(cell).push(r);
      progress(
        `${label}: ` +
          (r.ok
            ? `${Math.round(r.msgsPerSec ?? 1 / r.seconds)} msgs/s`
            : `FAILED ${r.error.split('\n')[0]}`),
        !tty,
      );
    }
  } finally {
    progress('removing the scratch queues');
    removeScratch(scratch, scratchRoot);
  }
  const results = cells.map((c) => combineRuns(runsOf.get(c)));
  progress(`done, ${results.length} cells`, true);
  machine.loadAverageAtEnd = os.loadavg()[0];

  addRatios(results);
  const targets = evaluateTargets(results);
  const args = process.argv.slice(2);
  const command = ['npm run bench', ...(args.length ? ['--', ...args] : [])]
    .join(' ');
  const date = new Date().toISOString();
  const table = formatTable(results);
  const targetTable = formatTargets(targets);

  const out = [
    `Command: ${command}`,
    `Date: ${date}`,
    `Machine: ${formatMachine(machine)}`,
    '',
    table,
    '',
    ...(sqliteSkipped ? [`- sqlite SKIPPED: ${sqliteSkipped}.`] : []),
    ...(opts.repeat > 1 ? [repeatNote(opts.repeat)] : []),
    ...NOTES.map((n) => `- ${n}`),
    '',
    targetTable,
  ].join('\n');
  process.stdout.write(out + '\n');

  if (opts.save) {
    const run = {
      date,
      command,
      quick: Boolean(opts.quick),
      repeat: opts.repeat,
      sqliteSkipped,
      machine,
      contenders: Object.fromEntries(
        Object.entries(CONTENDERS).map(([k, v]) => [k, v.title]),
      ),
      notes: NOTES,
      cells: results,
      targets,
      table,
      targetTable,
    };
    const file = writeResults(run);
    process.stderr.write(`bench: wrote ${file} and bench/results/latest.json\n`);
  }
}

main().catch((err) => {
  process.stderr.write(`\nbench: ${err.stack ?? err}\n`);
  process.exitCode = 1;
});
