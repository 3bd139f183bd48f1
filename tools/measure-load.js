'use strict';
// Times load() of a large queue in a fresh process, per backend: the
// wall time, the growth of RSS, and the longest the event loop was held.
// The queue is written straight to disk with the format encoders, into a
// scratch directory beside the sources that is kept between runs (one per
// size), and read once before timing so the page cache is warm.
//
// Usage: node tools/measure-load.js [--messages N] [--junk N]
//          [--io native,js] [--runs N] [--lib DIR] [--json]
// Needs a build (npx tsc -p .). --lib times another copy of the package
// (a directory with its dist/ and build/) against the same queue. Remove
// .scratch-load/ when done.

const { fork } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { monitorEventLoopDelay } = require('node:perf_hooks');

const root = path.join(__dirname, '..');

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i === -1 ? fallback : process.argv[i + 1];
}

// --- the queue ---------------------------------------------------------

function envelope() {
  const { Envelope } = require(path.join(root, 'dist', 'envelope.js'));
  const env = new Envelope({
    sender: 'sender@example.com',
    recipients: ['rcpt1@example.com', 'rcpt2@example.com'],
  });
  env.parse(Buffer.from('Subject: measure\r\n\r\nhello\r\n'));
  return env;
}

/**
 * Writes `messages` intact messages and `junk` names the queue must skip:
 * dot-files, names like tmp files, and subdirectories, split between the
 * env and the meta directory. Not synced: only the page cache matters.
 */
function makeQueue(dir, messages, junk) {
  const { encodeEnvelope, encodeMeta, sizeOf } = require(
    path.join(root, 'dist', 'format.js'),
  );
  const envDir = path.join(dir, 'env');
  const metaDir = path.join(dir, 'meta');
  fs.mkdirSync(envDir, { recursive: true, mode: 0o700 });
  fs.mkdirSync(metaDir, { recursive: true, mode: 0o700 });

  const template = envelope();
  const now = Math.floor(Date.now() / 1000);
  for (let i = 0; i < messages; i++) {
    const id = crypto.randomBytes(16).toString('hex');
    const bufs = encodeEnvelope(id, template);
    const meta = encodeMeta({
      id,
      timestamp: now + (i % 3600),
      attempts: i % 5,
      recipientCount: 2,
      delivered: i % 7 === 0 ? [1] : [],
      envSize: sizeOf(bufs),
    });
    fs.writeFileSync(path.join(envDir, `${id}.env`), Buffer.concat(bufs));
    fs.writeFileSync(path.join(metaDir, `${id}.meta`), meta);
    if (i > 0 && i % 100000 === 0) progress(`wrote ${i} messages`);
  }

  for (let i = 0; i < junk; i++) {
    const id = crypto.randomBytes(16).toString('hex');
    const into = i % 2 === 0 ? metaDir : envDir;
    const kind = into === metaDir ? 'meta' : 'env';
    const name = [
      `.${id}.${kind}`,
      `${id}.${kind}.4242.0badf00d.tmp`,
      `${id}.${kind}~`,
      `.nfs${id}`,
    ][i % 4];
    if (i % 1000 === 999) {
      // A directory, some of them with a queue file's name.
      const sub = i % 2000 === 1999 ? `${id}.${kind}` : `sub-${id}`;
      fs.mkdirSync(path.join(into, sub));
    } else {
      fs.writeFileSync(path.join(into, name), 'junk');
    }
  }
}

function progress(line) {
  if (!process.argv.includes('--json')) console.error(line);
}

function scratchFor(messages, junk) {
  const dir = path.join(root, '.scratch-load', `${messages}-${junk}`);
  const done = path.join(dir, 'complete');
  if (!fs.existsSync(done)) {
    fs.rmSync(dir, { recursive: true, force: true });
    progress(`writing ${messages} messages and ${junk} junk entries`);
    makeQueue(dir, messages, junk);
    fs.writeFileSync(done, '');
  }
  return dir;
}

// --- one timed load(), in a child --------------------------------------

// KiB read from disk by the whole system so far (Linux), to show when
// the page cache did not hold the queue after all; null elsewhere.
function pagedIn() {
  try {
    const line = fs
      .readFileSync('/proc/vmstat', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('pgpgin '));
    return line ? Number(line.split(' ')[1]) : null;
  } catch {
    return null;
  }
}

async function child(dir, io, lib) {
  const { DiskStorage } = require(lib);
  const histogram = monitorEventLoopDelay({ resolution: 10 });

  // A second probe that needs no histogram: how late a 10 ms timer fires.
  let maxDrift = 0;
  let peakRss = process.memoryUsage.rss();
  let last = performance.now();
  const probe = setInterval(() => {
    const now = performance.now();
    maxDrift = Math.max(maxDrift, now - last - 10);
    last = now;
    peakRss = Math.max(peakRss, process.memoryUsage.rss());
  }, 10);

  const store = new DiskStorage(
    path.join(dir, 'env'),
    path.join(dir, 'meta'),
    path.join(dir, 'tmp'),
    { io, quarantineDir: path.join(dir, 'quarantine') },
  );
  const quarantined = [];
  store.on('quarantine', (report) => quarantined.push(report.id));

  const rssBefore = process.memoryUsage.rss();
  const inBefore = pagedIn();
  histogram.enable();
  const start = performance.now();
  let count = 0;
  for await (const entry of store.load()) {
    if (entry) count++;
  }
  const ms = performance.now() - start;
  const inAfter = pagedIn();
  histogram.disable();
  clearInterval(probe);
  peakRss = Math.max(peakRss, process.memoryUsage.rss());
  await store.close();

  process.send({
    io: store.io,
    count,
    quarantined: quarantined.length,
    ms,
    rssGrowthMb: (peakRss - rssBefore) / 2 ** 20,
    maxDelayMs: histogram.max / 1e6,
    maxDriftMs: maxDrift,
    diskReadMb: inBefore === null ? null : (inAfter - inBefore) / 1024,
  });
}

function runChild(dir, io, lib) {
  return new Promise((resolve, reject) => {
    const proc = fork(__filename, ['--child', dir, io, lib], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    let result = null;
    proc.on('message', (m) => {
      result = m;
    });
    proc.on('error', reject);
    proc.on('exit', (code) => {
      if (code === 0 && result) resolve(result);
      else reject(new Error(`child for ${io} exited with ${code}`));
    });
  });
}

// What load() touches, touched once, so the timed runs find it cached:
// both listings, every meta file's bytes and every env file's inode.
// Env bodies are left out; load() never reads them.
function warm(dir) {
  for (const sub of ['env', 'meta']) {
    const d = path.join(dir, sub);
    for (const name of fs.readdirSync(d)) {
      const file = path.join(d, name);
      if (sub === 'env') fs.lstatSync(file);
      else if (fs.lstatSync(file).isFile()) fs.readFileSync(file);
    }
  }
}

async function main() {
  const messages = Number(option('messages', 100000));
  const junk = Number(option('junk', 0));
  const backends = option('io', 'native,js').split(',');
  const runs = Number(option('runs', 3));
  const lib = path.resolve(option('lib', root));

  const dir = scratchFor(messages, junk);
  warm(dir);

  const results = [];
  for (const io of backends) {
    for (let i = 0; i < runs; i++) {
      const r = await runChild(dir, io, lib);
      if (r.count !== messages || r.quarantined !== 0) {
        throw new Error(
          `${io}: load() yielded ${r.count} of ${messages}, ` +
            `quarantined ${r.quarantined}`,
        );
      }
      results.push(r);
      progress(
        `${io.padEnd(6)} ${(r.ms / 1000).toFixed(3)} s  ` +
          `rss +${r.rssGrowthMb.toFixed(0)} MB  ` +
          `loop max ${r.maxDelayMs.toFixed(1)} ms ` +
          `(timer drift ${r.maxDriftMs.toFixed(1)} ms)` +
          (r.diskReadMb === null
            ? ''
            : `  read from disk ${r.diskReadMb.toFixed(0)} MB`),
      );
    }
  }

  const summary = {};
  for (const io of backends) {
    const mine = results.filter((r) => r.io === io);
    const ms = mine.map((r) => r.ms).sort((a, b) => a - b);
    summary[io] = {
      messages,
      junk,
      medianMs: Math.round(ms[Math.floor(ms.length / 2)]),
      minMs: Math.round(ms[0]),
      maxRssGrowthMb: Math.round(Math.max(...mine.map((r) => r.rssGrowthMb))),
      maxLoopDelayMs: +Math.max(...mine.map((r) => r.maxDelayMs)).toFixed(1),
    };
  }
  if (process.argv.includes('--json')) {
    console.log(JSON.stringify(summary));
  } else {
    for (const [io, s] of Object.entries(summary)) {
      console.log(
        `${io}: ${messages} messages, ${junk} junk: median ` +
          `${(s.medianMs / 1000).toFixed(2)} s, rss +${s.maxRssGrowthMb} MB, ` +
          `event loop max ${s.maxLoopDelayMs} ms`,
      );
    }
    if (summary.native && summary.js) {
      const x = summary.js.medianMs / summary.native.medianMs;
      console.log(`native is ${x.toFixed(1)}x the js backend`);
    }
  }
}

if (process.argv[2] === '--child') {
  child(process.argv[3], process.argv[4], process.argv[5]).catch((err) => {
    console.error(err);
    process.exit(1);
  });
} else {
  main().catch((err) => {
    console.error(err.message);
    process.exit(1);
  });
}
