#!/usr/bin/env node
'use strict';

/**
 * `npm run bench`: every contender on every workload, in turn, each cell
 * in a fresh child process on a fresh queue directory. Prints a table and
 * the machine, and writes bench/results/<date>.json and latest.json.
 */

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync, fork, spawn } = require('node:child_process');
const { Command, InvalidArgumentError } = require('commander');

const { planCells } = require('./cells');
const { CONTENDERS, loadFormat, loadLibrary } = require('./contenders');
const { makeEnvelope } = require('./message');
const {
  NOTES,
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
  .option('--quick', 'a short run of the main cells (about 1-2 minutes)')
  .option(
    '--only <contenders>',
    `comma-separated contenders: ${Object.keys(CONTENDERS).join(', ')}`,
    list(Object.keys(CONTENDERS)),
  )
  .option(
    '--workload <names>',
    'comma-separated workloads, cell ids or their leading parts: ' +
      'write, life, load, get, write-32k, write-32k-c128, ...',
    list(),
  )
  .option(
    '--scratch <dir>',
    'where queues are made; must be a real disk, not tmpfs',
    path.join('bench', '.scratch'),
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

function selectCells(cells) {
  return cells.filter(
    (c) =>
      (!opts.only || opts.only.includes(c.contender)) &&
      (!opts.workload ||
        opts.workload.some(
          (w) => c.workload === w || c.id === w || c.id.startsWith(`${w}-`),
        )),
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
    // Reported as missing; the sqlite cells then fail with the reason.
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

function progress(text, final = false) {
  const line = `bench ${clock(Date.now() - started)} ${text}`;
  if (tty) {
    process.stderr.write(`\r\x1b[K${line}${final ? '\n' : ''}`);
  } else if (final) {
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
      if (cell.prepared) spec.queueDir = ctx.prepared[cell.prepared];
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

async function prepare(ctx, queues, needed) {
  for (const [name, q] of Object.entries(queues)) {
    if (!needed.has(name)) continue;
    const dir = path.join(ctx.scratch, `prepared-${name}`);
    progress(`preparing ${q.count} messages for the ${name} cells`);
    await runChild(
      path.join(__dirname, 'prepare.js'),
      [dir, String(q.count), String(q.bodyBytes)],
      `preparing ${name}`,
    );
    ctx.prepared[name] = dir;
  }
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

  const machine = describeMachine(scratch);
  if (machine.filesystem === 'tmpfs') {
    process.stderr.write(
      'bench: warning: the scratch directory is on tmpfs; fsync costs ' +
        'nothing there\n',
    );
  }

  const ctx = { scratch, prepared: {}, ceiling: null };
  const results = [];
  try {
    if (cells.some((c) => c.contender === 'ceiling')) {
      ctx.ceiling = buildCeiling(scratch);
    }
    await prepare(ctx, queues, new Set(cells.map((c) => c.prepared)));
    for (const [i, cell] of cells.entries()) {
      const label = `[${i + 1}/${cells.length}] ${cell.id} ${cell.contender}`;
      progress(label);
      const r = await runCell(cell, ctx, label);
      results.push(r);
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
