'use strict';
// Damage on disk: env and meta files truncated to random lengths, zeroed
// in ranges, flipped, extended or deleted, with junk files and
// directories beside them; and both decoders fuzzed with fast-check.
// SLIMTA_DAMAGE_SEED replays the damage and the fuzz cases.

const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const { BACKENDS, useTempDir, openStore, rejects, lib } = require('../helpers');
const { Rng, seedFrom } = require('./lib/trial-rng');
const { envelopeFor, rawFor, sha256 } = require('./lib/trial-message');
const { deadPid } = require('./lib/trial-fs');
const summary = require('./lib/summary');

const SEED = seedFrom('SLIMTA_DAMAGE_SEED');
const ROUNDS = 6;
const MESSAGES = 24;
const FUZZ_RUNS = 10_000;

console.log(`damage: SLIMTA_DAMAGE_SEED=${SEED}`);

const totals = summary.zeroCounts();
after(() => summary.record('damage', totals));

/** Ways to damage one file; each returns the new bytes or null (deleted). */
const HARM = {
  truncate: (b, rng) => b.subarray(0, rng.int(b.length)),
  zero: (b, rng) => {
    const out = Buffer.from(b);
    const from = rng.int(b.length);
    return out.fill(0, from, Math.min(b.length, from + rng.range(1, 64)));
  },
  flip: (b, rng) => {
    const out = Buffer.from(b);
    for (let k = rng.range(1, 4); k > 0; k--) out[rng.int(b.length)] ^= rng.range(1, 255);
    return out;
  },
  extend: (b, rng) => Buffer.concat([b, Buffer.alloc(rng.range(1, 300), rng.int(256))]),
  delete: () => null,
};

/** Which files a damaged message gets harmed in: env, meta or both. */
const TARGETS = [['env'], ['meta'], ['env', 'meta']];

function describeFiles(files) {
  const state = {};
  for (const kind of ['env', 'meta']) {
    const { before, now } = files[kind];
    state[kind] =
      now === null ? 'missing' : now.equals(before) ? 'same' : now.length === before.length ? 'sameSize' : 'resized';
  }
  return state;
}

for (const [b, io] of BACKENDS.entries()) {
  describe(`a queue with damaged files (${io} backend)`, function () {
    this.timeout(60_000);
    const tmp = useTempDir('slimta-damage-');

    for (let round = 0; round < ROUNDS; round++) {
      it(`loads only intact messages, rejects get() of damaged ones and keeps what it quarantines (round ${round})`, async function () {
        const rng = new Rng(SEED + 1000 * b + round);
        const root = tmp();
        const dir = (name) => path.join(root, name);
        const store = openStore(root, io, { graceMs: 0 });
        const ids = [];
        const nOf = new Map();
        for (let i = 0; i < MESSAGES; i++) {
          const n = 1000 * round + i;
          const id = await store.write(envelopeFor(lib().Envelope, n), n);
          ids.push(id);
          nOf.set(id, n);
        }

        // The store owns the queue (as an MTA's does once it loaded it),
        // so that get() may set damaged messages aside.
        for await (const entry of store.load()) assert.ok(entry);

        // Damage about half of the messages, one or both files each.
        const files = new Map();
        for (const id of ids) {
          const paths = { env: path.join(dir('env'), `${id}.env`), meta: path.join(dir('meta'), `${id}.meta`) };
          const entry = {};
          for (const kind of ['env', 'meta']) {
            const before = fs.readFileSync(paths[kind]);
            entry[kind] = { path: paths[kind], before, now: before };
          }
          if (rng.chance(0.5)) {
            for (const kind of rng.pick(TARGETS)) {
              const how = rng.pick(Object.keys(HARM));
              const now = HARM[how](entry[kind].before, rng);
              entry[kind].how = how;
              entry[kind].now = now;
              if (now === null) fs.unlinkSync(entry[kind].path);
              else fs.writeFileSync(entry[kind].path, now);
              totals.faultsInjected++;
            }
          }
          files.set(id, entry);
        }

        // Junk that is not the queue's: load() leaves all of it alone.
        const dead = await deadPid();
        const stranger = 'f'.repeat(32);
        const junkFiles = [
          ['meta/README', 'not a message'],
          [`meta/${ids[0].toUpperCase()}.meta`, String(rng.seed())],
          [`env/${ids[1]}.env~`, 'editor backup'],
          [`env/${ids[2]}.meta`, 'a meta name in the env dir'],
          [`tmp/${stranger}.env.${dead}.0123abcd.tmp.keep`, 'not a tmp name'],
          [`meta/subdir/${ids[3]}.meta`, 'in a subdirectory'],
        ];
        const junkDirs = [`meta/${stranger}.meta`, `env/${stranger}.env`, `tmp/${stranger}.env.${dead}.0123abcd.tmp`, 'meta/subdir'];
        for (const rel of junkDirs) fs.mkdirSync(path.join(root, rel));
        for (const [rel, text] of junkFiles) fs.writeFileSync(path.join(root, rel), text);
        const junkNow = () =>
          [...junkDirs, ...junkFiles.map(([rel]) => rel)].map((rel) => {
            const st = fs.lstatSync(path.join(root, rel));
            return [rel, st.ino, st.isDirectory() ? 'dir' : fs.readFileSync(path.join(root, rel), 'utf8')];
          });
        const junk = junkNow();

        // get() before load(): exact bytes, or the error the damage calls
        // for; a damaged message it finds is set aside, as load() would.
        const reports = [];
        store.on('quarantine', (r) => reports.push(r));
        const expected = new Map();
        for (const id of ids) {
          const state = describeFiles(files.get(id));
          const intact = state.env === 'same' && state.meta === 'same';
          expected.set(id, { state, intact });
          if (intact) {
            const [env] = await store.get(id);
            assert.equal(sha256(Buffer.concat(env.flatten())), sha256(rawFor(nOf.get(id))));
            continue;
          }
          const err = await rejects(store.get(id));
          const want = state.meta === 'missing' ? 'ERR_QUEUE_NOT_FOUND' : 'ERR_QUEUE_CORRUPT';
          assert.equal(err.code, want, `${JSON.stringify(state)}: ${err.message}`);
          totals.damagedDetected++;
        }

        const loaded = [];
        for await (const [, id] of store.load()) loaded.push(id);

        // load() checks metas and envelope sizes, get() the rest: between
        // them, only the intact messages are left to yield.
        const yielded = ids.filter((id) => expected.get(id).intact);
        assert.deepEqual(loaded.sort(), yielded.sort());

        // Every other message with a file left is reported once, and its
        // files are moved aside with the bytes they had, not deleted.
        const reported = reports.map((r) => r.id).sort();
        const gone = (id) => files.get(id).env.now === null && files.get(id).meta.now === null;
        assert.deepEqual(
          reported,
          ids.filter((id) => !yielded.includes(id) && !gone(id)).sort(),
          JSON.stringify(reports.map((r) => [r.id, r.reason, expected.get(r.id).state])),
        );
        for (const r of reports) {
          const entry = files.get(r.id);
          const present = ['env', 'meta'].filter((k) => entry[k].now !== null);
          assert.deepEqual(r.moved.map(([from]) => from).sort(), present.map((k) => entry[k].path).sort(), r.reason);
          for (const [from, to] of r.moved) {
            const kind = from.endsWith('.env') ? 'env' : 'meta';
            assert.ok(fs.readFileSync(to).equals(entry[kind].now), `${to} is not the file that was there`);
            assert.ok(!fs.existsSync(from));
          }
        }
        const moved = reports.reduce((k, r) => k + r.moved.length, 0);
        assert.equal((await store.getInfo()).quarantined, moved);

        // The junk is untouched.
        assert.deepEqual(junkNow(), junk);

        // A second load finds nothing more; quarantined ids are gone.
        const again = [];
        for await (const [, id] of store.load()) again.push(id);
        assert.deepEqual(again.sort(), yielded.sort());
        assert.equal(reports.length, reported.length);
        for (const id of reported) {
          assert.equal((await rejects(store.get(id))).code, 'ERR_QUEUE_NOT_FOUND');
        }
        await store.close();
        totals.trials++;
      });
    }
  });
}

describe('the decoders under fuzzing', function () {
  this.timeout(180_000);

  it('decodeEnvelope() rejects a sealed file whose JSON fields have the wrong shape with CorruptError', function () {
    const { encodeEnvelope, decodeEnvelope } = require('../../dist/format');
    const { mutate } = require('./lib/fuzz-format');
    const id = 'a'.repeat(32);
    const file = Buffer.concat(encodeEnvelope(id, envelopeFor(lib().Envelope, 1)));
    const client = { ip: null, host: null, name: null, protocol: null, auth: null };
    const fields = { sender: 's@x', recipients: ['r@x'], client, receiver: null };
    const wrong = [
      null,
      [],
      'text',
      { ...fields, sender: 1 },
      { ...fields, sender: undefined },
      { ...fields, sender: 'a\r\nRCPT TO:<x>' },
      { ...fields, sender: '\ud800' },
      { ...fields, recipients: 'abc' },
      { ...fields, recipients: [null] },
      { ...fields, recipients: ['ok', 'b\0'] },
      { ...fields, client: null },
      { ...fields, client: { ...client, ip: 7 } },
      { ...fields, client: { ip: null } },
      { ...fields, receiver: {} },
    ];
    for (const json of wrong) {
      const sealed = mutate(file, { change: { op: 'json', json }, reseal: true });
      assert.throws(() => decodeEnvelope(sealed, id, 'p'), { code: 'ERR_QUEUE_CORRUPT', name: 'CorruptError' }, JSON.stringify(json));
    }
    const ok = mutate(file, { change: { op: 'json', json: fields }, reseal: true });
    assert.deepEqual(decodeEnvelope(ok, id, 'p').recipients, ['r@x']);
  });

  for (const which of ['env', 'meta']) {
    const decoder = which === 'env' ? 'decodeEnvelope' : 'decodeMeta';
    it(`${decoder}() returns a well-formed value or throws CorruptError for damaged and hostile bytes, and never hangs`, function () {
      const seed = (SEED + (which === 'env' ? 7 : 8)) >>> 0;
      const r = spawnSync(
        process.execPath,
        [path.join(__dirname, 'fixtures', 'hostile-decode.js'), which, String(seed), String(FUZZ_RUNS)],
        { encoding: 'utf8', timeout: 150_000 },
      );
      assert.equal(r.signal, null, `the fuzz run hung and was killed (seed ${seed})`);
      assert.equal(r.status, 0, `seed ${seed}:\n${r.stderr}`);
      const counts = JSON.parse(r.stdout);
      console.log(
        `      ${decoder}: seed ${seed}, ${counts.runs} cases: ${counts.corrupt} CorruptError, ` +
          `${counts.damagedDecoded} damaged but still valid, slowest ${counts.slowestMs.toFixed(1)} ms`,
      );
      assert.equal(counts.runs, 2 * FUZZ_RUNS);
      totals.trials += counts.runs;
      totals.faultsInjected += counts.runs - counts.originals;
      totals.damagedDetected += counts.corrupt;
    });
  }
});
