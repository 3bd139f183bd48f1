'use strict';
// Proves from a real strace of each backend that every operation syncs
// in the order durability needs: tmp data synced before its link or
// rename, that name's directory synced after it, and all of it before
// the promise resolves. The checker is tested first on hand-made traces,
// so that a trace missing any step, or with two steps swapped, fails it.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

const { BACKENDS, useTempDir } = require('../helpers');
const { checkOrder } = require('./lib/order');
const { parseTrace, runTraced, straceAvailable } = require('./lib/strace');
const { record } = require('./lib/summary');

const SCRIPT = path.join(__dirname, 'fixtures', 'ops-in-order.js');

const ID = '0123456789abcdef0123456789abcdef';
const DIRS = { envDir: '/q/env', metaDir: '/q/meta', tmpDir: '/q/tmp' };
const ENV_TMP = `/q/tmp/${ID}.env.7.aaaaaaaa.tmp`;
const META_TMP = `/q/tmp/${ID}.meta.7.bbbbbbbb.tmp`;
const UPD_TMP = `/q/tmp/${ID}.meta.7.cccccccc.tmp`;
const CREATE = 'O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC, 0600';
const DIR = 'O_RDONLY|O_CLOEXEC|O_DIRECTORY';
const NOWHERE = '-1 ENOENT (No such file or directory)';

// One write, one update and one remove, as the native backend does them:
// calls spread over threads, fd 18 reused for every file, one call split
// in an unfinished and a resumed line. Each entry: [step name, line].
const GOOD = [
  [null, `1 openat(AT_FDCWD, "/nonexistent/slimta-marker/start", O_RDONLY) = ${NOWHERE}`],
  ['open env tmp', `2 openat(AT_FDCWD, "${ENV_TMP}", ${CREATE}) = 18`],
  ['write env tmp', `3 pwritev(18, [{iov_base="\\211SQENV\\r\\n", iov_len=56}], 1, 0) = 56`],
  ['fdatasync env tmp', `4 fdatasync(18 <unfinished ...>`],
  [null, `1 write(17, "\\1\\0\\0\\0\\0\\0\\0\\0", 8) = 8`],
  ['fdatasync env tmp', `4 <... fdatasync resumed>)     = 0`],
  [null, `5 close(18)                 = 0`],
  ['open meta tmp', `2 openat(AT_FDCWD, "${META_TMP}", ${CREATE}) = 18`],
  ['write meta tmp', `3 pwrite64(18, "\\211SQMET\\r\\n"..., 60, 0) = 60`],
  ['fdatasync meta tmp', `4 fdatasync(18)             = 0`],
  [null, `5 close(18)                 = 0`],
  ['link env', `2 link("${ENV_TMP}", "/q/env/${ID}.env") = 0`],
  ['unlink env tmp', `3 unlink("${ENV_TMP}")    = 0`],
  ['open env dir', `2 openat(AT_FDCWD, "/q/env", ${DIR}) = 18`],
  ['fsync env dir', `3 fsync(18)                 = 0`],
  [null, `4 close(18)                 = 0`],
  ['link meta', `4 link("${META_TMP}", "/q/meta/${ID}.meta") = 0`],
  ['unlink meta tmp', `5 unlink("${META_TMP}")   = 0`],
  ['open meta dir', `5 openat(AT_FDCWD, "/q/meta", ${DIR}) = 18`],
  ['fsync meta dir', `2 fsync(18)                 = 0`],
  [null, `3 close(18)                 = 0`],
  ['marker write', `1 openat(AT_FDCWD, "/nonexistent/slimta-marker/write:${ID}", O_RDONLY) = ${NOWHERE}`],
  [null, `2 openat(AT_FDCWD, "/q/meta/${ID}.meta", O_RDONLY|O_CLOEXEC) = 18`],
  [null, `3 close(18)                 = 0`],
  ['open update tmp', `4 openat(AT_FDCWD, "${UPD_TMP}", ${CREATE}) = 18`],
  ['write update tmp', `5 pwrite64(18, "\\211SQMET\\r\\n"..., 60, 0) = 60`],
  ['fdatasync update tmp', `2 fdatasync(18)             = 0`],
  [null, `3 close(18)                 = 0`],
  ['rename', `4 rename("${UPD_TMP}", "/q/meta/${ID}.meta") = 0`],
  ['open meta dir (update)', `5 openat(AT_FDCWD, "/q/meta", ${DIR}) = 18`],
  ['fsync meta dir (update)', `2 fsync(18)                 = 0`],
  [null, `3 close(18)                 = 0`],
  ['marker update', `1 openat(AT_FDCWD, "/nonexistent/slimta-marker/setTimestamp:${ID}", O_RDONLY) = ${NOWHERE}`],
  ['unlink meta', `2 unlinkat(AT_FDCWD, "/q/meta/${ID}.meta", 0) = 0`],
  ['open meta dir (remove)', `3 openat(AT_FDCWD, "/q/meta", ${DIR}) = 18`],
  ['fsync meta dir (remove)', `4 fsync(18)                 = 0`],
  [null, `5 close(18)                 = 0`],
  ['unlink env', `3 unlink("/q/env/${ID}.env") = 0`],
  ['open env dir (remove)', `4 openat(AT_FDCWD, "/q/env", ${DIR}) = 18`],
  ['fsync env dir (remove)', `5 fsync(18)                 = 0`],
  [null, `2 close(18)                 = 0`],
  ['marker remove', `1 openat(AT_FDCWD, "/nonexistent/slimta-marker/remove:${ID}", O_RDONLY) = ${NOWHERE}`],
];

const OPS = [
  { kind: 'write', id: ID, label: `write:${ID}` },
  { kind: 'update', id: ID, label: `setTimestamp:${ID}` },
  { kind: 'remove', id: ID, label: `remove:${ID}` },
];

function traceOf(entries) {
  return entries
    .map(([, line], i) => {
      const [pid, ...rest] = line.split(' ');
      const us = String(100000 + i).padStart(6, '0');
      return `${pid} 12:00:00.${us} ${rest.join(' ')}`;
    })
    .join('\n');
}

function check(entries) {
  return checkOrder(parseTrace(traceOf(entries)), OPS, DIRS);
}

/** Moves the entry named `which` to just after the one named `after`. */
function moveAfter(entries, which, after) {
  const moved = entries.filter(([name]) => name === which);
  const rest = entries.filter(([name]) => name !== which);
  const at = rest.findLastIndex(([name]) => name === after);
  return [...rest.slice(0, at + 1), ...moved, ...rest.slice(at + 1)];
}

describe('strace trace parsing', function () {
  it('joins an unfinished call with its resumed line', function () {
    const events = parseTrace(traceOf(GOOD));
    const sync = events.find((e) => e.name === 'fdatasync');
    assert.equal(sync.path, ENV_TMP);
    assert.equal(sync.ok, true);
    assert.ok(sync.end > sync.start);
  });

  it('resolves a reused fd to the file open at the time of the call', function () {
    const events = parseTrace(traceOf(GOOD));
    const syncs = events.filter((e) => e.kind === 'sync').map((e) => e.path);
    assert.deepEqual(syncs, [
      ENV_TMP, META_TMP, '/q/env', '/q/meta', UPD_TMP, '/q/meta', '/q/meta',
      '/q/env',
    ]);
  });

  it('reads a line without a pid, as strace writes for one thread', function () {
    const [e] = parseTrace('12:00:00.000001 fsync(18)  = 0');
    assert.deepEqual([e.pid, e.name, e.ok], [0, 'fsync', true]);
  });

  it('reads an injected error', function () {
    const [e] = parseTrace(
      '9 12:00:00.000001 fdatasync(18) = -1 EIO (Input/output error) (INJECTED)',
    );
    assert.deepEqual([e.ok, e.errno, e.injected], [false, 'EIO', true]);
  });
});

describe('checkOrder()', function () {
  it('passes the hand-made trace of a correct write, update and remove', function () {
    assert.deepEqual(check(GOOD), []);
  });

  for (const name of new Set(GOOD.map(([n]) => n).filter(Boolean))) {
    it(`fails when the trace lacks "${name}"`, function () {
      const problems = check(GOOD.filter(([n]) => n !== name));
      assert.notDeepEqual(problems, [], `${name} removed, no problem found`);
    });
  }

  const swaps = [
    ['fdatasync env tmp', 'link env', 'the env data synced after its link'],
    ['fdatasync meta tmp', 'link meta', 'the meta data synced after its link'],
    ['fdatasync update tmp', 'rename', 'the update data synced after its rename'],
    ['write env tmp', 'fdatasync env tmp', 'the env written after its sync'],
    ['link env', 'link meta', 'the meta linked before the env'],
    ['rename', 'fsync meta dir (update)', 'the directory synced before the rename'],
    ['link meta', 'fsync meta dir', 'the directory synced before the link'],
    ['unlink meta', 'unlink env', 'the env unlinked before the meta'],
    ['unlink env', 'fsync env dir (remove)', 'the directory synced before the unlink'],
    ['marker write', 'open meta dir', 'the write resolved before its directory sync'],
    ['link meta', 'link env', 'the meta linked before the env directory was synced'],
    ['unlink env', 'unlink meta', 'the env unlinked before the meta directory was synced'],
    ['marker update', 'rename', 'the update resolved before its rename'],
    ['marker remove', 'unlink env', 'the remove resolved before its unlink'],
  ];
  for (const [which, after, what] of swaps) {
    it(`fails when ${what}`, function () {
      assert.notDeepEqual(check(moveAfter(GOOD, which, after)), []);
    });
  }

  // Traces right in every other respect, so that the rule about the two
  // directories is the only thing the checker can object to.
  it('fails a write that links the meta before the env directory is synced', function () {
    let bad = moveAfter(GOOD, 'link meta', 'unlink env tmp');
    bad = moveAfter(bad, 'unlink meta tmp', 'link meta');
    assert.deepEqual(check(bad), [
      `write:${ID}: the meta is linked before the env directory is synced`,
    ]);
    // With one directory for both, one sync at the end is enough.
    const one = { envDir: '/q/env', metaDir: '/q/env', tmpDir: '/q/tmp' };
    const sameDir = (entries) => entries.map(([n, l]) => [n, l.replaceAll('/q/meta', '/q/env')]);
    const problems = checkOrder(parseTrace(traceOf(sameDir(bad))), OPS, one);
    assert.ok(!problems.some((p) => p.includes('before the env directory')), problems.join('\n'));
  });

  it('fails a remove that unlinks the env before the meta directory is synced', function () {
    const bad = moveAfter(GOOD, 'unlink env', 'unlink meta');
    assert.deepEqual(check(bad), [
      `remove:${ID}: the env is unlinked before the meta directory is synced`,
    ]);
  });

  it('fails when the fd synced was reused for another file', function () {
    // The env tmp is closed unsynced; fd 18 then names another file,
    // and that file's sync must not count for the env tmp.
    const entries = GOOD.filter(([n]) => n !== 'fdatasync env tmp');
    const at = entries.findIndex(([n]) => n === 'open meta tmp');
    entries.splice(at, 0,
      [null, `2 openat(AT_FDCWD, "/q/other", O_RDONLY) = 18`],
      [null, `3 fdatasync(18) = 0`],
      [null, `4 close(18) = 0`]);
    assert.notDeepEqual(check(entries), []);
  });

  it('fails when the sync ends after the link started', function () {
    const entries = GOOD.map(([n, line]) =>
      n === 'fdatasync env tmp' ? [null, line] : [n, line],
    );
    // Resumed line of the data sync moved past the link.
    const resumed = entries.findIndex(([, l]) => l.includes('fdatasync resumed'));
    const [r] = entries.splice(resumed, 1);
    const link = entries.findIndex(([n]) => n === 'link env');
    entries.splice(link + 1, 0, r);
    assert.notDeepEqual(check(entries), []);
  });

  it('fails when the sync failed', function () {
    const entries = GOOD.map(([n, line]) =>
      n === 'fdatasync meta tmp'
        ? [n, `4 fdatasync(18) = -1 EIO (Input/output error)`]
        : [n, line],
    );
    assert.notDeepEqual(check(entries), []);
  });
});

for (const io of BACKENDS) {
  describe(`durability order in a strace of the ${io} backend`, function () {
    this.timeout(60000);
    const tmp = useTempDir('slimta-strace-');

    before(function () {
      if (!straceAvailable()) {
        console.log('    strace is not installed: skipping the strace proofs');
        this.skip();
      }
    });

    it('syncs before every publish and resolve, for every operation', async function () {
      const root = path.join(tmp(), 'q');
      const traceFile = path.join(tmp(), 'trace');
      const r = await runTraced(SCRIPT, [root, io], { traceFile });
      assert.equal(r.status, 0, r.stderr);
      const id = r.stdout.trim();
      const dirs = {
        envDir: path.join(root, 'env'),
        metaDir: path.join(root, 'meta'),
        tmpDir: path.join(root, 'tmp'),
      };
      const ops = [
        ['write', 'write'],
        ['setTimestamp', 'update'],
        ['incrementAttempts', 'update'],
        ['setRecipientsDelivered', 'update'],
        ['remove', 'remove'],
      ].map(([name, kind]) => ({ kind, id, label: `${name}:${id}` }));

      const problems = checkOrder(r.events, ops, dirs);
      assert.deepEqual(problems, []);

      // The same trace with its data syncs, or its directory syncs, taken
      // out must fail: the proof above rests on those lines.
      const lines = r.text.split('\n');
      for (const call of [/ fdatasync\(/, / fsync\(/]) {
        const cut = lines.filter((l) => !call.test(l)).join('\n');
        assert.notDeepEqual(checkOrder(parseTrace(cut), ops, dirs), []);
      }

      record(`strace-order/${io}`, {
        trials: 1,
        operationsAcknowledged: ops.length,
      });
      fs.rmSync(traceFile);
    });
  });
}
