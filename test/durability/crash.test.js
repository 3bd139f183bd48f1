'use strict';
// Crash trials: a child process runs a mixed workload (32 calls at once:
// writes, setTimestamp, incrementAttempts, setRecipientsDelivered,
// removes) and is killed with SIGKILL at a random moment; the queue it
// leaves is then checked in this process. One queue per backend is kept
// across all its trials, so every trial starts on the history of the
// ones before. SLIMTA_CRASH_SEED replays the kill delays and workloads;
// SLIMTA_CRASH_TRIALS sets the number of trials per backend.

const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const { BACKENDS, openStore } = require('../helpers');
const { Rng, seedFrom } = require('./lib/trial-rng');
const { checkTrial } = require('./lib/trial-check');
const { bigRaw, sha256 } = require('./lib/trial-message');
const summary = require('./lib/summary');

const FIXTURES = path.join(__dirname, 'fixtures');
const SEED = seedFrom('SLIMTA_CRASH_SEED');
const TRIALS = Number(process.env.SLIMTA_CRASH_TRIALS || 100);
const BIG = 50 * 1024 * 1024;

console.log(`crash trials: SLIMTA_CRASH_SEED=${SEED}`);

const totals = {
  trials: 0,
  operationsAcknowledged: 0,
  messagesLost: 0,
  damagedDetected: 0,
  faultsInjected: 0,
};

function waitExit(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      resolve([child.exitCode, child.signalCode]);
    } else {
      child.on('exit', (code, signal) => resolve([code, signal]));
    }
  });
}

/**
 * Runs `script` and kills it `delay` ms after it printed `ready` (or after
 * its start, when `fromSpawn`). Resolves once it is dead and reaped.
 */
async function runAndKill(args, delay, fromSpawn) {
  const child = spawn(process.execPath, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const exited = waitExit(child);
  const started = fromSpawn
    ? Promise.resolve()
    : new Promise((resolve) => {
        child.stdout.on('data', (d) => {
          if (String(d).includes('ready')) resolve();
        });
        exited.then(resolve);
      });
  await started;
  await new Promise((resolve) => setTimeout(resolve, delay));
  child.kill('SIGKILL');
  const [code, signal] = await exited;
  return { code, signal, stderr };
}

after(() => summary.record('crash', totals));

/** Runs a child to its end; `ms` is the time from its `ready` to its exit. */
async function runToEnd(args) {
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  let readyAt = Date.now();
  child.stderr.on('data', (d) => (stderr += d));
  child.stdout.on('data', (d) => {
    if (String(d).includes('ready')) readyAt = Date.now();
  });
  const [code] = await waitExit(child);
  return { code, stderr, ms: Date.now() - readyAt };
}

/**
 * Opens the big message's queue after a kill: no message or one whole
 * one (which it must be once acknowledged), nothing left in tmp.
 */
async function checkBig(dir, io, want, mustExist) {
  const tmpLeft = fs.readdirSync(path.join(dir, 'tmp')).length;
  const store = openStore(dir, io, { graceMs: 0 });
  const reports = [];
  store.on('quarantine', (r) => reports.push(r));
  const ids = [];
  for await (const [, id] of store.load()) ids.push(id);
  assert.ok(ids.length <= 1, `${ids.length} messages`);
  if (mustExist) assert.equal(ids.length, 1, 'the acknowledged message is gone');
  if (ids.length === 1) {
    const [env] = await store.get(ids[0]);
    assert.equal(sha256(Buffer.concat(env.flatten())), want, 'the message is not whole');
  }
  // An envelope linked before its meta is the only thing a kill may leave.
  for (const r of reports) {
    assert.equal(r.reason, 'meta file is missing');
    const [[, to]] = r.moved;
    assert.equal(fs.statSync(to).size > BIG, true, 'a quarantined envelope is short');
  }
  assert.deepEqual(fs.readdirSync(path.join(dir, 'tmp')), []);
  await store.close();
  return { present: ids.length === 1, tmpLeft };
}

for (const [b, io] of BACKENDS.entries()) {
  describe(`a queue killed with SIGKILL during a mixed workload (${io} backend)`, function () {
    this.timeout(300_000);
    let root;
    before(() => {
      root = fs.mkdtempSync(path.join(os.tmpdir(), 'slimta-crash-'));
    });
    after(() => fs.rmSync(root, { recursive: true, force: true }));

    it(`keeps every acknowledged call and nothing partial through ${TRIALS} kills`, async function () {
      const rng = new Rng(SEED + b);
      const queue = path.join(root, 'queue');
      let state = new Map();
      let nextN = 0;
      const seen = { acked: 0, landed: 0, orphans: 0, tmp: 0, idle: 0, begun: 0 };
      for (let trial = 0; trial < TRIALS; trial++) {
        const logFile = path.join(root, `trial-${trial}.log`);
        const stateFile = path.join(root, 'state.json');
        fs.writeFileSync(
          stateFile,
          JSON.stringify({ nextN, live: [...state].map(([id, s]) => [id, s.n]) }),
        );
        fs.writeFileSync(logFile, '');
        // Most kills land in the workload; some during start-up, while
        // the store creates its directories and takes the lock.
        const fromSpawn = rng.chance(0.1);
        const delay = fromSpawn ? rng.range(0, 150) : rng.range(0, 300);
        const childSeed = rng.seed();
        const r = await runAndKill(
          [path.join(FIXTURES, 'crash-workload.js'), queue, io, String(childSeed), logFile, stateFile],
          delay,
          fromSpawn,
        );
        const replay = `trial ${trial}, SLIMTA_CRASH_SEED=${SEED}, child seed ${childSeed}, delay ${delay} ms`;
        assert.equal(r.signal, 'SIGKILL', `${replay}: the child ended on its own (${r.code}): ${r.stderr}`);

        const logText = fs.readFileSync(logFile, 'utf8');
        const result = await checkTrial({ root: queue, io, before: state, logText });
        totals.trials++;
        totals.faultsInjected++;
        totals.operationsAcknowledged += result.counts.acknowledged;
        totals.messagesLost += result.counts.lost;
        totals.damagedDetected += result.counts.orphansQuarantined;
        assert.deepEqual(result.violations, [], `${replay}:\n${result.violations.join('\n')}`);

        seen.acked += result.counts.acknowledged;
        seen.landed += result.counts.landedInFlight;
        seen.orphans += result.counts.orphansQuarantined;
        seen.tmp += result.counts.tmpLeftovers;
        seen.begun += result.begun;
        if (!result.ready) seen.idle++;
        for (const [, s] of result.after) nextN = Math.max(nextN, s.n + 1);
        for (const line of logText.split('\n')) {
          const m = /^B \d+ W (\d+)$/.exec(line);
          if (m) nextN = Math.max(nextN, Number(m[1]) + 1);
        }
        state = result.after;
        fs.rmSync(logFile);
      }
      console.log(
        `      ${io}: ${TRIALS} kills, ${seen.begun} calls begun, ${seen.acked} acknowledged, ` +
          `${seen.landed} unacknowledged writes landed, ${seen.orphans} orphan envelopes ` +
          `quarantined, ${seen.tmp} tmp leftovers cleaned, ${seen.idle} killed before ready, ` +
          `${state.size} messages at the end, 0 lost`,
      );
      // The workload must have done real work, not died at start-up.
      assert.ok(seen.acked > TRIALS * 5, `only ${seen.acked} calls acknowledged`);
    });

    it('leaves a 50 MB message being written either absent or whole, at every kill point', async function () {
      const want = sha256(bigRaw(BIG));
      const script = path.join(FIXTURES, 'crash-big.js');
      // One run to the end measures how long the write takes; the kill
      // points are spread over that time.
      const timedLog = path.join(root, 'big-timed.log');
      fs.writeFileSync(timedLog, '');
      const timed = await runToEnd([script, path.join(root, 'big-timed'), io, String(BIG), timedLog]);
      assert.equal(timed.code, 0, timed.stderr);
      await checkBig(path.join(root, 'big-timed'), io, want, true);

      const outcomes = [];
      for (const [k, fraction] of [0, 0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 1, 1.2].entries()) {
        const dir = path.join(root, `big-${k}`);
        const logFile = path.join(root, `big-${k}.log`);
        fs.writeFileSync(logFile, '');
        const delay = Math.round(timed.ms * fraction);
        const r = await runAndKill([script, dir, io, String(BIG), logFile, 'stay'], delay, false);
        assert.equal(r.signal, 'SIGKILL', `ended before the kill: ${r.stderr}`);
        const acked = fs.readFileSync(logFile, 'utf8').includes('\nA ');
        const { present, tmpLeft } = await checkBig(dir, io, want, acked);
        outcomes.push(`${delay} ms: ${present ? 'whole' : 'absent'}${tmpLeft ? `, ${tmpLeft} tmp cleaned` : ''}`);
        totals.trials++;
        totals.faultsInjected++;
        if (acked) totals.operationsAcknowledged++;
        fs.rmSync(dir, { recursive: true, force: true });
      }
      console.log(`      ${io}: write took ${timed.ms} ms; killed at ${outcomes.join('; ')}`);
    });
  });
}
