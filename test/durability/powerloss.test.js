'use strict';
// Power-loss model check. A workload runs under strace; its calls are
// replayed on a model of the file system, and every state a power cut
// could leave after each call (docs/DURABILITY-MODEL.md says which) is
// put on disk, opened as a restarted process would, and checked: every
// call acknowledged before the cut must still hold.

const assert = require('node:assert');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const { BACKENDS } = require('../helpers');
const {
  parseTrace,
  readTrace,
  runTraced,
  straceMissing,
} = require('./lib/powerloss-trace');
const {
  crashStates,
  finalTree,
  replay,
  syncsOf,
  withoutSyncs,
} = require('./lib/powerloss-model');
const { checkState, expectations } = require('./lib/powerloss-check');
const summary = require('./lib/summary');

const WORKLOAD = path.join(__dirname, 'fixtures', 'powerloss-workload.js');

// SLIMTA_POWERLOSS_BOUNDS=all tries every prefix of every directory's
// undurable changes and every data choice of every file: about ten times
// the states, for a run by hand rather than in CI.
const BOUNDS =
  process.env.SLIMTA_POWERLOSS_BOUNDS === 'all'
    ? { recentPrefixes: Infinity, recentFiles: Infinity }
    : {};

// Every file and directory under `dir`, as finalTree() lists them.
function diskTree(dir, prefix = '') {
  const out = [];
  for (const name of fs.readdirSync(dir).sort()) {
    const r = prefix === '' ? name : path.join(prefix, name);
    const p = path.join(dir, name);
    if (fs.lstatSync(p).isDirectory()) {
      out.push([r, null]);
      out.push(...diskTree(p, r));
    } else {
      out.push([r, fs.readFileSync(p)]);
    }
  }
  return out;
}

/**
 * Enumerates a model's crash states and checks each one; with
 * `options.until`, stops at the first violation it matches.
 */
async function checkModel(model, io, work, byId, options = {}) {
  const counts = {};
  const result = {
    counts,
    checked: 0,
    acknowledged: 0,
    quarantined: 0,
    violations: [],
  };
  for (const state of crashStates(model, { bounds: BOUNDS }, counts)) {
    const dir = path.join(work, `s${result.checked}`);
    const r = await checkState(dir, io, state, byId);
    result.checked++;
    result.acknowledged += r.acknowledged;
    result.quarantined += r.quarantined;
    for (const v of r.violations) {
      const e = state.effect;
      result.violations.push(`cut after ${e.kind} (line ${e.exit + 1}): ${v}`);
    }
    if (options.until && r.violations.some((v) => options.until.test(v))) {
      break;
    }
  }
  return result;
}

// A path or data as strace -xx prints it.
function hex(text) {
  const bytes = [...Buffer.from(text)];
  const escaped = bytes.map((b) => `\\x${b.toString(16).padStart(2, '0')}`);
  return `"${escaped.join('')}"`;
}

/** The states at the last cut of a hand-written trace under /r. */
function lastStates(lines) {
  const model = replay(parseTrace(lines.join('\n') + '\n'), '/r');
  const out = [];
  for (const state of crashStates(model, { at: model.effects.length - 1 })) {
    out.push(
      state.files
        .map(([r, data]) => (data === null ? `${r}/` : `${r}=${data}`))
        .join(' '),
    );
  }
  return out.sort();
}

describe('power-loss model', () => {
  it('joins a call another thread interrupted, keeping its start', () => {
    const calls = parseTrace(
      [
        `7 fsync(5 <unfinished ...>`,
        `8 unlink(${hex('/r/x')}) = -1 ENOENT (No such file or directory)`,
        `7 <... fsync resumed>) = 0`,
      ].join('\n'),
    );
    assert.deepStrictEqual(
      calls.map((c) => [c.name, c.ret, c.errno, c.entry, c.exit]),
      [
        ['unlink', -1, 'ENOENT', 1, 1],
        ['fsync', 0, null, 0, 2],
      ],
    );
    assert.strictEqual(calls[0].args[0].toString(), '/r/x');
  });

  it('makes durable only what returned before a sync started', () => {
    const states = lastStates([
      `1 mkdir(${hex('/r/d')}, 0700) = 0`,
      `1 openat(AT_FDCWD, ${hex('/r')}, O_RDONLY|O_DIRECTORY) = 3`,
      `1 fsync(3) = 0`,
      `1 close(3) = 0`,
      `1 openat(AT_FDCWD, ${hex('/r/d/f')}, O_WRONLY|O_CREAT|O_EXCL, 0600) = 4`,
      `1 pwrite64(4, ${hex('abcd')}, 4, 0) = 4`,
      `2 openat(AT_FDCWD, ${hex('/r/d')}, O_RDONLY|O_DIRECTORY) = 5`,
      `2 fsync(5 <unfinished ...>`,
      `1 link(${hex('/r/d/f')}, ${hex('/r/d/g')}) = 0`,
      `2 <... fsync resumed>) = 0`,
    ]);
    // f's name is durable, g's is not; f's data never was synced.
    assert.deepStrictEqual(states, [
      'd/ d/f=',
      'd/ d/f= d/g=',
      'd/ d/f=ab',
      'd/ d/f=ab d/g=ab',
      'd/ d/f=abcd',
      'd/ d/f=abcd d/g=abcd',
    ]);
  });

  it("keeps a prefix of a directory's changes, never a later one alone", () => {
    const states = lastStates([
      `1 openat(AT_FDCWD, ${hex('/r/a')}, O_WRONLY|O_CREAT|O_EXCL, 0600) = 3`,
      `1 write(3, ${hex('x')}, 1) = 1`,
      `1 fdatasync(3) = 0`,
      `1 openat(AT_FDCWD, ${hex('/r')}, O_RDONLY|O_DIRECTORY) = 4`,
      `1 fsync(4) = 0`,
      `1 unlink(${hex('/r/a')}) = 0`,
      `1 mkdir(${hex('/r/b')}, 0700) = 0`,
    ]);
    assert.deepStrictEqual(states, ['', 'a=x', 'b/']);
  });
});

const totals = {
  trials: 0,
  operationsAcknowledged: 0,
  messagesLost: 0,
  damagedDetected: 0,
};

/** Where crash states are built: a tmpfs when there is one. */
const STATES_DIR = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();

describe('power loss after any system call of a workload', function () {
  this.timeout(BOUNDS.recentPrefixes ? 900000 : 180000);

  after(() => {
    if (totals.trials > 0) {
      summary.record('powerloss', { ...totals, faultsInjected: 0 });
    }
  });

  for (const io of BACKENDS) {
    describe(`${io} backend`, () => {
      let base;
      let root;
      let model;
      let byId;
      let acks;

      before(function () {
        const missing = straceMissing();
        if (missing) {
          // CI installs strace; elsewhere the check cannot run.
          console.log(`      skipped: strace unavailable (${missing.message})`);
          this.skip();
        }
        base = fs.mkdtempSync(path.join(os.tmpdir(), 'slimta-powerloss-'));
        root = path.join(base, 'root');
        fs.mkdirSync(root);
        const traceFile = path.join(base, 'trace');
        const out = runTraced(
          [process.execPath, WORKLOAD, root, io],
          traceFile,
        );
        acks = JSON.parse(out);
        byId = expectations(acks);
        model = replay(readTrace(traceFile), root);
      });

      after(() => {
        if (base) fs.rmSync(base, { recursive: true, force: true });
      });

      it('replays the trace to exactly the files left on disk', () => {
        const modelled = finalTree(model).map(([r, d]) => [
          r,
          d && d.toString('hex'),
        ]);
        const disk = diskTree(root).map(([r, d]) => [
          r,
          d && d.toString('hex'),
        ]);
        assert.deepStrictEqual(modelled, disk);
        const names = model.effects
          .filter((e) => e.kind === 'ack')
          .map((e) => e.name);
        assert.deepStrictEqual(names, [
          'begin',
          ...acks.map((a) => String(a.seq)),
          'end',
        ]);
      });

      it('keeps every acknowledged call in every crash state', async () => {
        // The states are built from the model, so any filesystem will do;
        // on a tmpfs the stores' fsyncs cost nothing.
        const work = fs.mkdtempSync(path.join(STATES_DIR, 'slimta-states-'));
        let r;
        try {
          r = await checkModel(model, io, work, byId);
        } finally {
          fs.rmSync(work, { recursive: true, force: true });
        }
        totals.trials += r.checked;
        totals.operationsAcknowledged += r.acknowledged;
        totals.messagesLost += r.violations.length;
        totals.damagedDetected += r.quarantined;
        console.log(
          `      ${r.counts.cuts} cuts, ${r.checked} states checked ` +
            `(${r.counts.candidates} before merging equal ones), ` +
            `${r.acknowledged} acknowledged calls checked, ` +
            `${r.quarantined} quarantine reports, ` +
            `${r.violations.length} violations`,
        );
        assert.deepStrictEqual(r.violations.slice(0, 10), []);
        // All 14 calls of the workload were acknowledged.
        assert.strictEqual(acks.length, 14);
        assert.ok(r.checked > 1000, `only ${r.checked} states`);
      });

      // Negative controls: the same trace with syncs taken out must fail
      // the check, each in the way the missing sync predicts.
      const controls = [
        {
          title: 'loses an acknowledged write without its directory syncs',
          drop: () => dirSyncsOf(['write']),
          until: /acknowledged write \S+ \(seq \d+\) is lost/,
        },
        {
          title: 'loses an acknowledged write without file data syncs',
          drop: () => (e) => e.call === 'fdatasync',
          until: /acknowledged write \S+ \(seq \d+\) is lost/,
        },
        {
          title: 'reverts an acknowledged update without its directory sync',
          drop: () => dirSyncsOf(['setTimestamp', 'incrementAttempts']),
          until: /older than acknowledged/,
        },
        {
          title: 'brings back a removed message without its directory syncs',
          drop: () => dirSyncsOf(['remove']),
          until: /is back/,
        },
      ];

      // The directory syncs of the workload's calls of these kinds.
      function dirSyncsOf(ops) {
        const names = acks
          .filter((a) => ops.includes(a.op))
          .map((a) => String(a.seq));
        const syncs = syncsOf(model, new Set(names));
        return (e) => syncs.has(e) && model.inodes.get(e.ino).type === 'dir';
      }

      for (const control of controls) {
        it(`${control.title} (negative control)`, async () => {
          const broken = withoutSyncs(model, control.drop());
          const work = fs.mkdtempSync(path.join(base, 'control-'));
          const r = await checkModel(broken, io, work, byId, {
            until: control.until,
          });
          const hit = r.violations.find((v) => control.until.test(v));
          console.log(
            `      found after ${r.checked} states: ${hit ?? 'nothing'}`,
          );
          assert.ok(hit, `no violation matches ${control.until}`);
        });
      }
    });
  }
});
