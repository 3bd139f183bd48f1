'use strict';
// Crash trials: a child process runs a mixed workload (32 calls at once:
// writes, setTimestamp, incrementAttempts, setRecipientsDelivered,
// removes, and now and then a load(), the first call of every child) and
// is killed with SIGKILL at a random moment; the queue it leaves is then
// checked in this process. One queue per backend is kept across all its
// trials, so every trial starts on the history of the ones before.
//
// Most checks only read the queue and leave what the kill left (tmp
// files, envelopes without a meta) for the next children's load() to
// recover, so that kills also land in the middle of recovery; the last
// IN_PLACE of every BLOCK trials, and the last trial, recover the queue
// in the check itself and require it clean. An envelope without a meta
// is only quarantined by a child once past its grace period (10 s), so
// the blocks are long enough for some to get there.
//
// The seed is fixed (DEFAULT_SEED), so every run tries the same kills;
// SLIMTA_CRASH_SEED replays another run's kill delays and workloads, and
// SLIMTA_CRASH_TRIALS sets the number of trials per backend. Children
// are started one trial ahead, while the trial before is checked, and
// wait for their job on stdin.

const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const { BACKENDS, openStore, makeEnvelope } = require('../helpers');
const { Rng, seedFrom } = require('./lib/trial-rng');
const { checkTrial } = require('./lib/trial-check');
const { namesIn } = require('./lib/trial-fs');
const { bigRaw, sha256 } = require('./lib/trial-message');
const summary = require('./lib/summary');

const FIXTURES = path.join(__dirname, 'fixtures');
const WORKLOAD = path.join(FIXTURES, 'crash-workload.js');
const DEFAULT_SEED = 20_251_203;
const SEED = seedFrom('SLIMTA_CRASH_SEED', DEFAULT_SEED);
const TRIALS = Number(process.env.SLIMTA_CRASH_TRIALS || 200);
const BLOCK = 100;
const IN_PLACE = 10;
const BIG = 50 * 1024 * 1024;
const BIG_KILLS = 9;

console.log(`crash trials: SLIMTA_CRASH_SEED=${SEED}, ${TRIALS} per backend`);

const totals = summary.zeroCounts();

function waitExit(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      resolve([child.exitCode, child.signalCode]);
    } else {
      child.on('exit', (code, signal) => resolve([code, signal]));
    }
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Starts `node script ...args` with a pipe on stdin; `ready` resolves
 * once it printed `ready` (or ended).
 */
function start(args) {
  const child = spawn(process.execPath, args, {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  child.stdin.on('error', () => undefined); // it may die before reading
  const exited = waitExit(child);
  const ready = new Promise((resolve) => {
    child.stdout.on('data', (d) => {
      if (String(d).includes('ready')) resolve();
    });
    exited.then(resolve);
  });
  return { child, exited, ready, stderr: () => stderr };
}

/**
 * Kills a started child `delay` ms after it printed `ready` (or after it
 * was given its job, when `fromJob`). Resolves once it is dead and reaped.
 */
async function kill(w, delay, fromJob) {
  if (!fromJob) await w.ready;
  await sleep(delay);
  w.child.kill('SIGKILL');
  const [code, signal] = await w.exited;
  return { code, signal, stderr: w.stderr() };
}

after(() => summary.record('crash', totals));

/** Whether a trial's log shows a load() begun and never settled. */
function killedInLoad(logText) {
  for (const [, seq] of logText.matchAll(/^B (\d+) L$/gm)) {
    if (!new RegExp(`^[AE] ${seq}( |$)`, 'm').test(logText)) return true;
  }
  return false;
}

/** Runs a child to its end; `ms` is the time from its `ready` to its exit. */
async function runToEnd(args) {
  const w = start(args);
  w.child.stdin.end();
  let readyAt = Date.now();
  w.ready.then(() => (readyAt = Date.now()));
  const [code] = await w.exited;
  return { code, stderr: w.stderr(), ms: Date.now() - readyAt };
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
    // The child started for the next trial; a failed trial leaves it
    // waiting for its job.
    let warm = null;
    afterEach(() => {
      warm?.child.kill('SIGKILL');
      warm = null;
    });

    it(`keeps every acknowledged call and nothing partial through ${TRIALS} kills`, async function () {
      const rng = new Rng(SEED + b);
      const queue = path.join(root, 'queue');
      const stateFile = path.join(root, 'state.json');
      let state = new Map();
      let carried = new Set();
      let tmpBefore = [];
      let nextN = 0;
      const seen = {
        acked: 0, landed: 0, orphans: 0, tmp: 0, idle: 0, begun: 0, loads: 0,
        duringLoad: 0, childTmp: 0, childOrphans: 0, spurious: 0, inPlace: 0,
        startMs: 0, checkMs: 0,
      };
      warm = start([WORKLOAD, queue, io]);
      for (let trial = 0; trial < TRIALS; trial++) {
        const logFile = path.join(root, `trial-${trial}.log`);
        fs.writeFileSync(
          stateFile,
          JSON.stringify({ nextN, live: [...state].map(([id, s]) => [id, s.n]) }),
        );
        fs.writeFileSync(logFile, '');
        // Most kills land in the workload; some during start-up, while
        // the store creates its directories, takes the lock and loads.
        const fromJob = rng.chance(0.1);
        const delay = fromJob ? rng.range(0, 100) : rng.range(0, 200);
        const childSeed = rng.seed();
        let inPlace = trial % BLOCK >= BLOCK - IN_PLACE || trial === TRIALS - 1;

        const w = warm;
        const given = Date.now();
        w.child.stdin.end(JSON.stringify({ seed: childSeed, logFile, stateFile }) + '\n');
        w.ready.then(() => (seen.startMs += Date.now() - given));
        const r = await kill(w, delay, fromJob);
        // The next child starts up while this trial is checked.
        warm = trial + 1 < TRIALS ? start([WORKLOAD, queue, io]) : null;
        const replay = `trial ${trial}, SLIMTA_CRASH_SEED=${SEED}, child seed ${childSeed}, ` +
          `delay ${delay} ms${fromJob ? ' from its start' : ''}`;
        assert.equal(r.signal, 'SIGKILL', `${replay}: the child ended on its own (${r.code}): ${r.stderr}`);

        const checkStart = Date.now();
        const logText = fs.readFileSync(logFile, 'utf8');
        // A read-only store needs the directories; a kill may have come
        // before they were all made.
        const dirs = ['env', 'meta', 'tmp', 'meta/.quarantine'];
        if (!dirs.every((d) => fs.existsSync(path.join(queue, d)))) inPlace = true;
        // Tmp files a dead child left, gone now: its successor's load()
        // removed them.
        const tmpNow = new Set(namesIn(path.join(queue, 'tmp')));
        seen.childTmp += tmpBefore.filter((n) => !tmpNow.has(n)).length;
        const result = await checkTrial({ root: queue, io, before: state, logText, inPlace, carried });
        seen.checkMs += Date.now() - checkStart;
        totals.trials++;
        totals.faultsInjected++;
        totals.operationsAcknowledged += result.counts.acknowledged;
        totals.messagesLost += result.counts.lost;
        totals.damagedDetected += result.counts.orphansQuarantined + result.counts.recoveredByChild;
        assert.deepEqual(result.violations, [], `${replay}:\n${result.violations.join('\n')}`);

        seen.acked += result.counts.acknowledged;
        seen.landed += result.counts.landedInFlight;
        seen.orphans += result.counts.orphansQuarantined;
        seen.tmp += inPlace ? result.counts.tmpLeftovers : 0;
        seen.loads += result.counts.loads;
        seen.childOrphans += result.counts.recoveredByChild;
        seen.spurious += result.counts.spuriousQuarantines;
        seen.begun += result.begun;
        if (inPlace) seen.inPlace++;
        if (!result.ready) seen.idle++;
        if (killedInLoad(logText)) seen.duringLoad++;
        for (const [, s] of result.after) nextN = Math.max(nextN, s.n + 1);
        for (const line of logText.split('\n')) {
          const m = /^B \d+ W (\d+)$/.exec(line);
          if (m) nextN = Math.max(nextN, Number(m[1]) + 1);
        }
        state = result.after;
        carried = result.orphans;
        tmpBefore = inPlace ? [] : namesIn(path.join(queue, 'tmp'));
        fs.rmSync(logFile);
      }
      console.log(
        `      ${io}: ${TRIALS} kills, ${seen.begun} calls begun, ${seen.acked} acknowledged, ` +
          `${seen.landed} unacknowledged writes landed, ${seen.orphans} orphan envelopes left, ` +
          `${seen.idle} killed before ready, ${seen.duringLoad} during a load(); ` +
          `${seen.loads} load()s finished in children, which removed ${seen.childTmp} tmp files ` +
          `and quarantined ${seen.childOrphans} orphan envelopes of earlier kills; ` +
          `${seen.inPlace} checks recovered in place (${seen.tmp} tmp files); ` +
          `${state.size} messages at the end, 0 lost; ` +
          `${Math.round(seen.startMs / TRIALS)} ms to ready, ${Math.round(seen.checkMs / TRIALS)} ms per check`,
      );
      if (seen.spurious > 0) {
        console.log(`      ${io}: ${seen.spurious} envelopes of messages being removed were quarantined ` +
          `by a load() beside the remove (library bug, see the skipped test below)`);
      }
      // The workload must have done real work, not died at start-up, and
      // the children must have recovered what kills left.
      assert.ok(seen.acked > TRIALS * 5, `only ${seen.acked} calls acknowledged`);
      if (TRIALS >= 100) {
        assert.ok(seen.loads > 0 && seen.duringLoad > 0, 'no load() finished, or none was killed');
        assert.ok(seen.childTmp > 0, 'no child removed a dead writer\'s tmp file');
      }
      if (TRIALS >= BLOCK) {
        assert.ok(seen.childOrphans > 0, 'no child quarantined an envelope an earlier kill left');
      }
    });

    it('leaves a 50 MB message being written either absent or whole, at random kill points', async function () {
      const want = sha256(bigRaw(BIG));
      const script = path.join(FIXTURES, 'crash-big.js');
      // One run to the end measures how long the write takes; the kill
      // points are drawn over that time and a bit past it.
      const timedLog = path.join(root, 'big-timed.log');
      fs.writeFileSync(timedLog, '');
      const timed = await runToEnd([script, path.join(root, 'big-timed'), io, String(BIG), timedLog]);
      assert.equal(timed.code, 0, timed.stderr);
      await checkBig(path.join(root, 'big-timed'), io, want, true);

      const rng = new Rng((SEED ^ 0xb16) + b);
      const fractions = Array.from({ length: BIG_KILLS }, () => rng.next() * 1.2).sort((x, y) => x - y);
      const outcomes = [];
      for (const [k, fraction] of fractions.entries()) {
        const dir = path.join(root, `big-${k}`);
        const logFile = path.join(root, `big-${k}.log`);
        fs.writeFileSync(logFile, '');
        const delay = Math.round(timed.ms * fraction);
        const w = start([script, dir, io, String(BIG), logFile, 'stay']);
        w.child.stdin.end();
        const r = await kill(w, delay, false);
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

    it('load() beside removes under way in the same store quarantines nothing', async function () {
      const dir = path.join(root, 'beside');
      const grace = 100;
      const store = openStore(dir, io, { graceMs: grace });
      const reports = [];
      store.on('quarantine', (r) => reports.push(r));
      try {
        for (let round = 0; round < 10 && reports.length === 0; round++) {
          const ids = [];
          for (let i = 0; i < 200; i++) ids.push(await store.write(makeEnvelope(), i));
          await sleep(grace * 2); // every envelope is past the grace period
          const removes = Promise.all(ids.map((id) => store.remove(id)));
          await new Promise((resolve) => setImmediate(resolve));
          for await (const entry of store.load()) assert.ok(entry);
          await removes;
        }
      } finally {
        await store.close();
      }
      assert.deepEqual(reports.map((r) => `${r.id}: ${r.reason}`), []);
    });
  });
}
