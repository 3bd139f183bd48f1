'use strict';

/**
 * One cell of the benchmark in a process of its own, so that its CPU time
 * and peak RSS are its own. Started by run.js with the cell as JSON in
 * argv[2]; reports progress and the result over the IPC channel.
 */

const fs = require('node:fs');
const path = require('node:path');
const { monitorEventLoopDelay, performance } = require('node:perf_hooks');

const { loadLibrary, openStore } = require('./contenders');
const { makeEnvelope } = require('./message');
const { latencySummary } = require('./stats');

/**
 * The event-loop delay timer fires every millisecond; a reading is the
 * time between two firings, so the resolution is taken off to leave the
 * lateness alone.
 */
const ELD_RESOLUTION_MS = 1;
const WARMUP_OPS = 8;

const cell = JSON.parse(process.argv[2]);
let done = 0;

const ticker = setInterval(() => {
  process.send({ type: 'progress', done });
}, 250);
ticker.unref();

/**
 * CPU, event-loop delay and wall time over the measured part only. The
 * time and CPU are taken when the work ends; the delay histogram one
 * timer tick later, so that a block that lasted to the very end (a
 * synchronous loop, say) is recorded too.
 */
async function startMeasure() {
  const eld = monitorEventLoopDelay({ resolution: ELD_RESOLUTION_MS });
  eld.enable();
  // The histogram's first tick only sets its clock: let it pass first.
  await new Promise((resolve) => setTimeout(resolve, 3));
  const cpu = process.cpuUsage();
  const t0 = performance.now();
  return async () => {
    const seconds = (performance.now() - t0) / 1000;
    const used = process.cpuUsage(cpu);
    await new Promise((resolve) => setTimeout(resolve, 2));
    eld.disable();
    const eldP99 = eld.count > 0 ? eld.percentile(99) / 1e6 : null;
    return {
      seconds,
      cpuSeconds: (used.user + used.system) / 1e6,
      eldP99Ms:
        eldP99 === null ? null : Math.max(0, eldP99 - ELD_RESOLUTION_MS),
      eldMaxMs:
        eld.count > 0 ? Math.max(0, eld.max / 1e6 - ELD_RESOLUTION_MS) : null,
    };
  };
}

function maxRssMb() {
  return process.resourceUsage().maxRSS / 1024;
}

/**
 * A closed loop: `concurrency` clients, each starting its next call as
 * soon as its last one settled, until the time box or the message budget
 * runs out. Calls in flight at the deadline are waited for and counted.
 */
async function closedLoop(op) {
  const latencies = [];
  let issued = 0;
  const end = performance.now() + cell.durationMs;
  const client = async () => {
    while (issued < cell.maxOps && performance.now() < end) {
      issued++;
      const t0 = performance.now();
      await op(issued);
      latencies.push(performance.now() - t0);
      done++;
    }
  };
  const stop = await startMeasure();
  await Promise.all(Array.from({ length: cell.concurrency }, client));
  const measured = await stop();
  return { messages: latencies.length, ...measured, latencies };
}

async function warmUp(op) {
  for (let i = 0; i < WARMUP_OPS; i++) await op(i);
}

function result(run, extra = {}) {
  const { latencies, ...rest } = run;
  return {
    ...rest,
    ...(latencies ? latencySummary(latencies) : {}),
    maxRssMb: maxRssMb(),
    ...extra,
  };
}

const workloads = {
  async write(store, env) {
    const op = () => store.write(env, Date.now() / 1000);
    await warmUp(op);
    return result(await closedLoop(op));
  },

  /** Latency here is the whole life, write to remove. */
  async life(store, env) {
    const op = async () => {
      const now = Date.now() / 1000;
      const id = await store.write(env, now);
      await store.setTimestamp(id, now + 60);
      await store.incrementAttempts(id);
      await store.setRecipientsDelivered(id, [0]);
      const [got, attempts] = await store.get(id);
      if (got.recipients.length !== 1 || attempts !== 1) {
        throw new Error(`read back a wrong message ${id}`);
      }
      await store.remove(id);
    };
    await warmUp(op);
    return result(await closedLoop(op));
  },

  async get(store) {
    const ids = JSON.parse(
      fs.readFileSync(path.join(cell.queueDir, 'ids.json'), 'utf8'),
    );
    let next = 0;
    // A fixed stride through the ids: every client reads other messages,
    // and the order is the same for every contender.
    const op = async () => {
      const id = ids[(next++ * 7919) % ids.length];
      const [env] = await store.get(id);
      if (env.message.length !== cell.bodyBytes) {
        throw new Error(`read back a wrong body for ${id}`);
      }
    };
    await warmUp(op);
    return result(await closedLoop(op));
  },

  /**
   * The queue was written by prepare.js; only opening and load() count.
   * The junk cell also reports RSS growth: the peak during load() less
   * the RSS right before it (watched only there, since the sampler's
   * timer costs the other cells time).
   */
  async load(store) {
    const stop = await startMeasure();
    const peak = cell.junk ? watchPeakRss() : null;
    await store.load(() => done++);
    const rss = peak?.stop();
    const measured = await stop();
    if (done !== cell.expected) {
      throw new Error(`load() yielded ${done} of ${cell.expected} messages`);
    }
    if (cell.junk) checkJunk();
    return result({
      messages: done,
      ...measured,
      ...(rss ? { rssGrowthMb: rss.peakMb - rss.baselineMb } : {}),
    });
  },
};

function rssMb() {
  return process.memoryUsage.rss() / 2 ** 20;
}

/**
 * Resets the kernel's RSS high-water mark (VmHWM) to the RSS of now;
 * false where that cannot be done (not Linux, or /proc not writable).
 */
function resetPeakRss() {
  try {
    fs.writeFileSync('/proc/self/clear_refs', '5');
    return readPeakRssMb() !== null;
  } catch {
    return false;
  }
}

function readPeakRssMb() {
  try {
    const status = fs.readFileSync('/proc/self/status', 'latin1');
    const kb = /^VmHWM:\s+(\d+) kB/m.exec(status);
    return kb ? Number(kb[1]) / 1024 : null;
  } catch {
    return null;
  }
}

/**
 * Watches the RSS from now: the baseline is the RSS of now, the peak the
 * higher of the kernel's high-water mark (VmHWM, reset here where Linux
 * allows it) and the RSS sampled every millisecond until stop().
 */
function watchPeakRss() {
  const kernelPeak = resetPeakRss();
  const baselineMb = rssMb();
  let sampledPeakMb = baselineMb;
  const sampler = setInterval(() => {
    sampledPeakMb = Math.max(sampledPeakMb, rssMb());
  }, 1);
  return {
    stop() {
      clearInterval(sampler);
      sampledPeakMb = Math.max(sampledPeakMb, rssMb());
      const kernelPeakMb = kernelPeak ? readPeakRssMb() : null;
      return {
        baselineMb,
        sampledPeakMb,
        kernelPeakMb,
        peakMb: Math.max(sampledPeakMb, kernelPeakMb ?? 0),
        method: kernelPeak ? 'VmHWM reset at baseline' : 'sampled every 1 ms',
      };
    },
  };
}

/** Every junk entry prepare.js made is still there, and nothing moved. */
function checkJunk() {
  const names = JSON.parse(
    fs.readFileSync(path.join(cell.queueDir, 'junk.json'), 'utf8'),
  );
  if (names.length !== cell.junk) {
    throw new Error(`junk.json names ${names.length} of ${cell.junk} entries`);
  }
  for (const name of names) fs.lstatSync(path.join(cell.queueDir, name));
  for (const sub of ['env', 'meta']) {
    const quarantine = path.join(cell.queueDir, sub, '.quarantine');
    if (fs.existsSync(quarantine) && fs.readdirSync(quarantine).length) {
      throw new Error(`load() quarantined files in ${quarantine}`);
    }
  }
}

/**
 * One message of 50 MiB, to see what write() itself holds. The caller's
 * message is built first and the garbage of building it collected; the
 * baseline is the RSS right before write() is called, and the peak is the
 * highest RSS during the call: the kernel's high-water mark, reset at the
 * baseline, and RSS sampled every millisecond besides (all there is where
 * the reset is not available).
 */
async function big() {
  const { Envelope } = loadLibrary();
  const store = openStore(cell.contender, cell.dir);
  const small = makeEnvelope(Envelope, 1024);
  await warmUp(() => store.write(small, Date.now() / 1000));
  const storeRssMb = rssMb();
  const env = makeEnvelope(Envelope, cell.bodyBytes);
  if (global.gc) {
    global.gc();
    global.gc();
  }
  const stop = await startMeasure();
  const peak = watchPeakRss();
  const t0 = performance.now();
  await store.write(env, Date.now() / 1000);
  const ms = performance.now() - t0;
  const { baselineMb, sampledPeakMb, kernelPeakMb, peakMb, method } =
    peak.stop();
  const measured = await stop();
  done = 1;
  await store.close();
  return {
    messages: 1,
    ...measured,
    p50Ms: ms,
    p99Ms: ms,
    maxRssMb: maxRssMb(),
    storeRssMb,
    baselineRssMb: baselineMb,
    peakInWriteMb: peakMb,
    sampledPeakMb,
    kernelPeakMb,
    peakMethod: method,
    aboveBaselineMb: peakMb - baselineMb,
    messageMb: cell.bodyBytes / 2 ** 20,
  };
}

async function main() {
  if (cell.workload === 'big') return big();
  const { Envelope } = loadLibrary();
  const dir = cell.queueDir ?? cell.dir;
  const store = openStore(cell.contender, dir);
  const env = makeEnvelope(Envelope, cell.bodyBytes);
  const out = await workloads[cell.workload](store, env);
  await store.close();
  return { ...out, io: store.io };
}

main().then(
  (out) => {
    process.send({ type: 'result', result: out }, () => process.exit(0));
  },
  (err) => {
    process.send(
      { type: 'error', message: String(err?.stack ?? err) },
      () => process.exit(1),
    );
  },
);
