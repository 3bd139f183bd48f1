'use strict';
// Both plan backends, native and node:fs, against the same cases. Build
// first: npx node-gyp rebuild && npx tsc -p .

const assert = require('node:assert/strict');
const { execFileSync, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { Worker } = require('node:worker_threads');
const { BACKENDS, useTempDir } = require('./helpers');
const {
  backendNamed,
  messageBytes,
  messagePlan,
} = require('./fixtures/backend-common.js');

const FIXTURES = path.join(__dirname, 'fixtures');

function allBytes() {
  const buf = Buffer.alloc(256);
  for (let i = 0; i < 256; i++) buf[i] = i;
  return buf;
}

async function rejection(promise) {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  assert.fail('expected the plan to fail');
}

// An fs error with its names made relative to dir, to compare backends.
function shape(err, dir) {
  assert.ok(err instanceof Error, `not an Error: ${err}`);
  const rel = (p) => (p === undefined ? undefined : path.relative(dir, p));
  return {
    code: err.code,
    errno: err.errno,
    syscall: err.syscall,
    path: rel(err.path),
    dest: rel(err.dest),
    message: err.message.split(dir).join('<dir>'),
  };
}

function fdCount() {
  return fs.readdirSync('/proc/self/fd').length;
}

function activeResources() {
  return process.getActiveResourcesInfo().slice().sort();
}

function runFixture(args, options = {}) {
  return spawnSync(process.execPath, args, {
    encoding: 'utf8',
    timeout: 120000,
    ...options,
  });
}

// Each final file of a batch is either absent or complete.
function checkBatch(dir, count) {
  const names = fs.readdirSync(dir);
  let complete = 0;
  for (let i = 0; i < count; i++) {
    const file = path.join(dir, `${i}.msg`);
    if (!fs.existsSync(file)) continue;
    assert.deepEqual(fs.readFileSync(file), Buffer.concat(messageBytes(i)));
    complete++;
  }
  return { names, complete };
}

/** Names the moment of a teardown fixture run (see backend-teardown.js). */
function moment(after) {
  return after === 0
    ? 'once the last of 1,000 plans is issued'
    : `once ${after} of 1,000 plans resolved`;
}

/**
 * Every plan that had resolved by the teardown is complete on disk. When
 * the teardown came as the last plan was issued, that plan had no time to
 * publish, so the batch cannot be complete.
 */
function assertTornDown(r, dir, after, complete) {
  const { resolved } = JSON.parse(r.stdout);
  for (const i of resolved) {
    assert.ok(fs.existsSync(path.join(dir, `${i}.msg`)), `plan ${i} resolved`);
  }
  if (after === 0) assert.ok(complete < 1000, 'the last plan published');
}

for (const name of BACKENDS) {
  describe(`Backend (${name})`, () => {
    const dir = useTempDir();
    const backend = backendNamed(name);

    describe('#run()', () => {
      it('writes the exact bytes of every buffer, mode 0600, tmp gone', async () => {
        const tmp = path.join(dir(), 'm.tmp');
        const final = path.join(dir(), 'm');
        const bufs = [
          Buffer.alloc(0),
          Buffer.from('Subject: x\r\n\r\n'),
          Buffer.alloc(0),
          allBytes(),
          Buffer.from('.\r\n'),
          Buffer.alloc(0),
        ];
        await backend.run([
          { op: 'write_tmp', path: tmp, bufs },
          { op: 'publish', from: tmp, to: final },
          { op: 'sync_dir', path: dir() },
        ]);
        assert.deepEqual(fs.readFileSync(final), Buffer.concat(bufs));
        assert.equal(fs.statSync(final).mode & 0o777, 0o600);
        assert.deepEqual(fs.readdirSync(dir()), ['m']);
      });

      it('writes an empty body as an empty file', async () => {
        const tmp = path.join(dir(), 'e.tmp');
        await backend.run([{ op: 'write_tmp', path: tmp, bufs: [] }]);
        assert.equal(fs.statSync(tmp).size, 0);
      });

      it('writes 2000 buffers, more than one call takes, in order', async () => {
        const bufs = [];
        for (let i = 0; i < 2000; i++) bufs.push(Buffer.from(`${i},`));
        const tmp = path.join(dir(), 'many.tmp');
        await backend.run([{ op: 'write_tmp', path: tmp, bufs }]);
        assert.deepEqual(fs.readFileSync(tmp), Buffer.concat(bufs));
      });

      // Over 2 GiB goes out in calls below 1 GiB each; 2 GiB of memory
      // and disk and several seconds, so only on request.
      it('writes a body over 2 GiB exactly (SLIMTA_BIG_TESTS=1)', async function () {
        if (!process.env.SLIMTA_BIG_TESTS) this.skip();
        this.timeout(300000);
        const big = Buffer.allocUnsafeSlow(2 ** 31 + 3 * 4096 + 5);
        for (let i = 0; i < big.length; i += 4096) big.writeUInt32LE(i, i);
        const tail = allBytes();
        const tmp = path.join(dir(), 'big.tmp');
        await backend.run([{ op: 'write_tmp', path: tmp, bufs: [big, tail] }]);
        assert.equal(fs.statSync(tmp).size, big.length + tail.length);
        const fd = fs.openSync(tmp, 'r');
        try {
          const chunk = Buffer.alloc(1 << 26);
          for (let pos = 0; pos < big.length; pos += chunk.length) {
            const want = big.subarray(pos, pos + chunk.length);
            const n = fs.readSync(fd, chunk, 0, want.length, pos);
            assert.equal(n, want.length);
            assert.ok(chunk.subarray(0, n).equals(want));
          }
          const end = Buffer.alloc(tail.length);
          fs.readSync(fd, end, 0, end.length, big.length);
          assert.deepEqual(end, tail);
        } finally {
          fs.closeSync(fd);
        }
      });

      it('resolves an empty plan', async () => {
        assert.equal(await backend.run([]), undefined);
      });

      it('refuses to publish onto an existing name and keeps its bytes', async () => {
        const final = path.join(dir(), 'm');
        const tmp = path.join(dir(), 'm.tmp');
        fs.writeFileSync(final, 'old message');
        const err = await rejection(
          backend.run([
            { op: 'write_tmp', path: tmp, bufs: [Buffer.from('new')] },
            { op: 'publish', from: tmp, to: final },
          ]),
        );
        assert.equal(err.code, 'EEXIST');
        assert.equal(err.syscall, 'link');
        assert.equal(fs.readFileSync(final, 'utf8'), 'old message');
        assert.deepEqual(fs.readdirSync(dir()), ['m']);
      });

      it('undoes published names and tmp files when a later step fails', async () => {
        const d = dir();
        const err = await rejection(
          backend.run([
            { op: 'write_tmp', path: `${d}/a.tmp`, bufs: [Buffer.from('a')] },
            { op: 'publish', from: `${d}/a.tmp`, to: `${d}/a` },
            { op: 'write_tmp', path: `${d}/b.tmp`, bufs: [Buffer.from('b')] },
            { op: 'sync_dir', path: `${d}/missing` },
          ]),
        );
        assert.equal(err.code, 'ENOENT');
        assert.equal(err.syscall, 'open');
        assert.equal(err.path, `${d}/missing`);
        assert.deepEqual(fs.readdirSync(d), []);
      });

      it('leaves a file it did not create when its own write_tmp fails', async () => {
        const d = dir();
        fs.writeFileSync(`${d}/b.tmp`, 'someone else');
        await rejection(
          backend.run([
            { op: 'write_tmp', path: `${d}/a.tmp`, bufs: [Buffer.from('a')] },
            { op: 'write_tmp', path: `${d}/b.tmp`, bufs: [Buffer.from('b')] },
          ]),
        );
        assert.deepEqual(fs.readdirSync(d), ['b.tmp']);
        assert.equal(fs.readFileSync(`${d}/b.tmp`, 'utf8'), 'someone else');
      });

      it('does not undo a replace', async () => {
        const d = dir();
        fs.writeFileSync(`${d}/m`, 'old');
        await rejection(
          backend.run([
            { op: 'write_tmp', path: `${d}/m.tmp`, bufs: [Buffer.from('new')] },
            { op: 'replace', from: `${d}/m.tmp`, to: `${d}/m` },
            { op: 'unlink', path: `${d}/gone`, missingOk: false },
          ]),
        );
        assert.deepEqual(fs.readdirSync(d), ['m']);
        assert.equal(fs.readFileSync(`${d}/m`, 'utf8'), 'new');
      });

      it('unlinks, and ignores a missing file only when missingOk', async () => {
        const d = dir();
        fs.writeFileSync(`${d}/x`, 'x');
        await backend.run([
          { op: 'unlink', path: `${d}/x`, missingOk: false },
          { op: 'unlink', path: `${d}/x`, missingOk: true },
        ]);
        assert.deepEqual(fs.readdirSync(d), []);
        const err = await rejection(
          backend.run([{ op: 'unlink', path: `${d}/x`, missingOk: false }]),
        );
        assert.equal(err.code, 'ENOENT');
        assert.equal(err.syscall, 'unlink');
      });

      it('refuses a path with a NUL byte before doing anything', async () => {
        const d = dir();
        const err = await rejection(
          backend.run([
            { op: 'write_tmp', path: `${d}/a.tmp`, bufs: [] },
            { op: 'unlink', path: `${d}/a\0b`, missingOk: true },
          ]),
        );
        assert.equal(err.code, 'ERR_INVALID_ARG_VALUE');
        assert.deepEqual(fs.readdirSync(d), []);
      });
    });

    describe('#readFiles()', () => {
      it('returns Buffers and per-file errors in place', async () => {
        const d = dir();
        fs.writeFileSync(`${d}/a`, allBytes());
        fs.writeFileSync(`${d}/empty`, '');
        const big = Buffer.alloc(300 * 1024, 'q');
        fs.writeFileSync(`${d}/big`, big);
        const files = await backend.readFiles([
          `${d}/a`,
          `${d}/missing`,
          `${d}/empty`,
          d,
          `${d}/big`,
        ]);
        assert.equal(files.length, 5);
        assert.deepEqual(files[0], allBytes());
        assert.equal(files[1].code, 'ENOENT');
        assert.equal(files[1].syscall, 'open');
        assert.equal(files[1].path, `${d}/missing`);
        assert.ok(Buffer.isBuffer(files[2]));
        assert.equal(files[2].length, 0);
        assert.equal(files[3].code, 'EISDIR');
        assert.equal(files[3].syscall, 'read');
        assert.deepEqual(files[4], big);
      });

      it('reads a /proc file whose size fstat does not give', async () => {
        const [status] = await backend.readFiles(['/proc/self/status']);
        assert.match(status.toString(), /^Name:/);
      });
    });

    describe('when the caller drops its Buffers', () => {
      it('still writes the dropped bytes and survives gc', () => {
        const r = runFixture([
          '--expose-gc',
          path.join(FIXTURES, 'backend-gc.js'),
          name,
          dir(),
        ]);
        assert.equal(r.status, 0, r.stderr);
        assert.deepEqual(JSON.parse(r.stdout), {
          droppedSame: true,
          overwrittenSize: true,
          left: ['dropped', 'overwritten'],
        });
      });
    });

    describe('with worker threads', () => {
      it('runs plans in the main thread and four workers at once', async () => {
        const d = dir();
        const workers = [];
        for (let w = 1; w <= 4; w++) {
          const worker = new Worker(path.join(FIXTURES, 'backend-worker.js'), {
            workerData: { dir: d, backend: name, count: 50, first: w * 50 },
          });
          workers.push(
            new Promise((resolve, reject) => {
              worker.on('message', (m) =>
                m === 'done' ? resolve() : reject(new Error(m.error)),
              );
              worker.on('error', reject);
            }).finally(() => worker.terminate()),
          );
        }
        const main = [];
        for (let i = 0; i < 50; i++) main.push(backend.run(messagePlan(d, i)));
        await Promise.all([...main, ...workers]);
        const { names, complete } = checkBatch(d, 250);
        assert.equal(complete, 250);
        assert.equal(names.length, 250);
      });

      for (const after of [0, 1, 500]) {
        it(`survives worker.terminate() ${moment(after)}`, () => {
          const d = dir();
          const r = runFixture([
            path.join(FIXTURES, 'backend-teardown.js'),
            'terminate',
            name,
            d,
            String(after),
          ]);
          assert.equal(r.signal, null, r.stderr);
          assert.equal(r.status, 0, r.stderr);
          const { names, complete } = checkBatch(d, 1000);
          assertTornDown(r, d, after, complete);
          if (name === 'native') {
            // The chains undo what they had not finished.
            assert.equal(names.length, complete);
          }
        });
      }
    });

    describe('when the process exits', () => {
      const cases = [];
      for (const mode of ['exit', 'exit-worker']) {
        for (const after of [0, 1, 500]) cases.push([mode, after]);
      }
      for (const [mode, after] of cases) {
        it(`survives process.exit() ${moment(after)} (${mode})`, () => {
          const d = dir();
          const r = runFixture([
            path.join(FIXTURES, 'backend-teardown.js'),
            mode,
            name,
            d,
            String(after),
          ]);
          assert.equal(r.signal, null, r.stderr);
          assert.equal(r.status, 7, r.stderr);
          const { complete } = checkBatch(d, 1000);
          assertTornDown(r, d, after, complete);
        });
      }
    });

    describe('after 10,000 failing plans', () => {
      it('has as many fds and active resources as before', async () => {
        const d = dir();
        fs.writeFileSync(`${d}/taken`, 'x');
        fs.writeFileSync(`${d}/exists.tmp`, 'x');
        const plans = [
          () => [{ op: 'write_tmp', path: `${d}/no/such.tmp`, bufs: [] }],
          () => [{ op: 'write_tmp', path: `${d}/exists.tmp`, bufs: [] }],
          (i) => [
            { op: 'write_tmp', path: `${d}/${i}.tmp`, bufs: [Buffer.from('x')] },
            { op: 'publish', from: `${d}/${i}.tmp`, to: `${d}/taken` },
          ],
          () => [{ op: 'sync_dir', path: `${d}/taken` }],
        ];
        // Warm up, so that lazily opened resources count in the baseline.
        await rejection(backend.run(plans[2](-1)));
        const fds = fdCount();
        const resources = activeResources();

        let failed = 0;
        for (let start = 0; start < 10000; start += 200) {
          const batch = [];
          for (let i = start; i < start + 200; i++) {
            batch.push(backend.run(plans[i % 4](i)).catch(() => failed++));
          }
          await Promise.all(batch);
        }
        assert.equal(failed, 10000);
        assert.equal(fdCount(), fds);
        assert.deepEqual(activeResources(), resources);
        assert.deepEqual(fs.readdirSync(d).sort(), ['exists.tmp', 'taken']);
      });
    });
  });
}

// Each failing case runs on both backends, each in its own directory;
// the errors must match each other and the expected code and syscall.
describe('Backend errors (native and js alike)', () => {
  const dir = useTempDir();

  async function bothFail(setup) {
    const shapes = {};
    for (const name of BACKENDS) {
      const d = path.join(dir(), name);
      fs.mkdirSync(d);
      const { steps, read } = setup(d);
      const backend = backendNamed(name);
      const err = read
        ? (await backend.readFiles(read))[0]
        : await rejection(backend.run(steps));
      shapes[name] = shape(err, d);
    }
    assert.deepEqual(shapes.native, shapes.js);
    return shapes.js;
  }

  function expectShape(actual, code, syscall) {
    assert.equal(actual.code, code);
    assert.equal(actual.syscall, syscall);
    assert.equal(typeof actual.errno, 'number');
    assert.ok(actual.errno < 0);
    assert.ok(actual.message.startsWith(`${code}: `), actual.message);
  }

  it('gives EEXIST from open when write_tmp finds its path taken', async () => {
    const s = await bothFail((d) => {
      fs.writeFileSync(`${d}/m.tmp`, 'x');
      return { steps: [{ op: 'write_tmp', path: `${d}/m.tmp`, bufs: [] }] };
    });
    expectShape(s, 'EEXIST', 'open');
    assert.equal(s.path, 'm.tmp');
    assert.equal(s.message, "EEXIST: file already exists, open '<dir>/m.tmp'");
  });

  it('gives ENOENT from open when the directory is missing', async () => {
    const s = await bothFail((d) => ({
      steps: [{ op: 'write_tmp', path: `${d}/no/m.tmp`, bufs: [] }],
    }));
    expectShape(s, 'ENOENT', 'open');
    assert.equal(s.path, 'no/m.tmp');
  });

  it('gives ENOTDIR from open when a path component is a file', async () => {
    const s = await bothFail((d) => {
      fs.writeFileSync(`${d}/file`, 'x');
      return { steps: [{ op: 'write_tmp', path: `${d}/file/m.tmp`, bufs: [] }] };
    });
    expectShape(s, 'ENOTDIR', 'open');
  });

  it('gives ENOTDIR from open when sync_dir is given a file', async () => {
    const s = await bothFail((d) => {
      fs.writeFileSync(`${d}/file`, 'x');
      return { steps: [{ op: 'sync_dir', path: `${d}/file` }] };
    });
    expectShape(s, 'ENOTDIR', 'open');
  });

  it('gives EEXIST from link, with path and dest, publishing onto a name', async () => {
    const s = await bothFail((d) => {
      fs.writeFileSync(`${d}/m`, 'old');
      return {
        steps: [
          { op: 'write_tmp', path: `${d}/m.tmp`, bufs: [Buffer.from('n')] },
          { op: 'publish', from: `${d}/m.tmp`, to: `${d}/m` },
        ],
      };
    });
    expectShape(s, 'EEXIST', 'link');
    assert.equal(s.path, 'm.tmp');
    assert.equal(s.dest, 'm');
    assert.equal(
      s.message,
      "EEXIST: file already exists, link '<dir>/m.tmp' -> '<dir>/m'",
    );
  });

  it('gives EEXIST from link publishing onto a directory', async () => {
    const s = await bothFail((d) => {
      fs.mkdirSync(`${d}/m`);
      return {
        steps: [
          { op: 'write_tmp', path: `${d}/m.tmp`, bufs: [] },
          { op: 'publish', from: `${d}/m.tmp`, to: `${d}/m` },
        ],
      };
    });
    expectShape(s, 'EEXIST', 'link');
  });

  it('gives EISDIR from rename replacing a directory', async () => {
    const s = await bothFail((d) => {
      fs.mkdirSync(`${d}/m`);
      return {
        steps: [
          { op: 'write_tmp', path: `${d}/m.tmp`, bufs: [] },
          { op: 'replace', from: `${d}/m.tmp`, to: `${d}/m` },
        ],
      };
    });
    expectShape(s, 'EISDIR', 'rename');
    assert.equal(s.dest, 'm');
  });

  it('gives ENAMETOOLONG from open for a 300-byte name', async () => {
    const s = await bothFail((d) => ({
      steps: [{ op: 'write_tmp', path: `${d}/${'n'.repeat(300)}`, bufs: [] }],
    }));
    expectShape(s, 'ENAMETOOLONG', 'open');
  });

  it('does not follow a symlink planted at the tmp path', async () => {
    let target;
    const s = await bothFail((d) => {
      target = `${d}/target`;
      fs.writeFileSync(target, 'victim');
      fs.symlinkSync(target, `${d}/m.tmp`);
      return {
        steps: [{ op: 'write_tmp', path: `${d}/m.tmp`, bufs: [Buffer.from('x')] }],
      };
    });
    expectShape(s, 'EEXIST', 'open');
    for (const name of BACKENDS) {
      const d = path.join(dir(), name);
      assert.equal(fs.readFileSync(`${d}/target`, 'utf8'), 'victim');
    }
  });

  it('does not follow a dangling symlink planted at the tmp path', async () => {
    const s = await bothFail((d) => {
      fs.symlinkSync(`${d}/nowhere`, `${d}/m.tmp`);
      return { steps: [{ op: 'write_tmp', path: `${d}/m.tmp`, bufs: [] }] };
    });
    expectShape(s, 'EEXIST', 'open');
    for (const name of BACKENDS) {
      assert.ok(!fs.existsSync(path.join(dir(), name, 'nowhere')));
    }
  });

  it('gives ENOENT from unlink without missingOk', async () => {
    const s = await bothFail((d) => ({
      steps: [{ op: 'unlink', path: `${d}/x`, missingOk: false }],
    }));
    expectShape(s, 'ENOENT', 'unlink');
  });

  it('gives EISDIR from read for a directory in readFiles', async () => {
    const s = await bothFail((d) => ({ read: [d] }));
    expectShape(s, 'EISDIR', 'read');
    assert.equal(s.path, undefined);
  });

  it('scans meta and env files alike, each error named by its path', async () => {
    const ids = ['a', 'b', 'c', 'd', 'e', 'f'].map((c) => c.repeat(32));
    const scans = {};
    for (const name of BACKENDS) {
      const d = path.join(dir(), name);
      const meta = path.join(d, 'meta');
      const env = path.join(d, 'env');
      fs.mkdirSync(meta, { recursive: true });
      fs.mkdirSync(env);
      const [whole, noEnv, noMeta, isDir, fifo, link] = ids;
      fs.writeFileSync(`${meta}/${whole}.meta`, 'meta of a');
      fs.writeFileSync(`${env}/${whole}.env`, 'envelope');
      fs.writeFileSync(`${meta}/${noEnv}.meta`, '');
      fs.writeFileSync(`${env}/${noMeta}.env`, 'x');
      fs.mkdirSync(`${meta}/${isDir}.meta`);
      execFileSync('mkfifo', [`${meta}/${fifo}.meta`]);
      fs.symlinkSync(`${meta}/${whole}.meta`, `${meta}/${link}.meta`);

      const backend = backendNamed(name);
      const { metas, envStats } = await backend.scanMeta(meta, env, ids);
      const gone = await backend.scanMeta(`${d}/none`, `${d}/none`, [whole]);
      scans[name] = {
        metas: [...metas, ...gone.metas].map((m) =>
          Buffer.isBuffer(m) ? m.toString() : shape(m, d),
        ),
        envSizes: [...envStats, ...gone.envStats].map((st) =>
          st instanceof Error ? shape(st, d) : st.size,
        ),
      };
      assert.equal(typeof envStats[0].ctimeMs, 'number');
      assert.ok(Math.abs(envStats[0].ctimeMs - Date.now()) < 60000);
      await assert.rejects(backend.scanMeta(meta, env, ['../x']), {
        code: 'ERR_INVALID_ARG_VALUE',
      });
    }
    assert.deepEqual(scans.native, scans.js);

    const { metas, envSizes } = scans.js;
    assert.deepEqual(metas.slice(0, 2), ['meta of a', '']);
    assert.deepEqual(
      metas.slice(2).map((m) => [m.code, m.syscall]),
      [
        ['ENOENT', 'open'],
        ['EISDIR', 'read'],
        ['EINVAL', 'read'],
        ['ELOOP', 'open'],
        ['ENOENT', 'open'],
      ],
    );
    assert.equal(metas[2].path, `meta/${ids[2]}.meta`);
    assert.equal(metas[6].path, `none/${ids[0]}.meta`);
    assert.equal(envSizes[0], 8);
    assert.equal(envSizes[1].code, 'ENOENT');
    assert.equal(envSizes[1].syscall, 'lstat');
    assert.equal(envSizes[1].path, `env/${ids[1]}.env`);
    assert.equal(envSizes[2], 1);
  });

  // The facade adds `retryable` to the error it is given: one object
  // shared by several plans would be changed for all of them at once.
  it('gives each plan that one failed sync covered an Error of its own', async () => {
    for (const name of BACKENDS) {
      const missing = path.join(dir(), `${name}-missing`);
      const backend = backendNamed(name);
      const errors = await Promise.all(
        [1, 2, 3].map(() =>
          rejection(backend.run([{ op: 'sync_dir', path: missing }])),
        ),
      );
      assert.equal(new Set(errors).size, 3, `${name}: one Error shared`);
      for (const err of errors) {
        assert.deepEqual(shape(err, dir()), shape(errors[0], dir()));
      }
      expectShape(shape(errors[0], dir()), 'ENOENT', 'open');
      assert.equal(errors[0].path, missing);
    }
  });

  // Both count a write's bytes, so both take only byte arrays.
  it('refuses bufs that are not Buffers or Uint8Arrays', async () => {
    const bad = [
      new Float64Array(2),
      new Uint16Array(3),
      new DataView(new ArrayBuffer(4)),
      new ArrayBuffer(4),
      'text',
    ];
    for (const name of BACKENDS) {
      const d = path.join(dir(), name);
      fs.mkdirSync(d);
      const backend = backendNamed(name);
      for (const buf of bad) {
        await assert.rejects(
          backend.run([{ op: 'write_tmp', path: `${d}/m.tmp`, bufs: [buf] }]),
          {
            name: 'TypeError',
            code: 'ERR_INVALID_ARG_VALUE',
            message: 'step.bufs must be an array of Buffers',
          },
          `${name}: ${Object.prototype.toString.call(buf)}`,
        );
      }
      assert.deepEqual(fs.readdirSync(d), []);
      const bytes = new Uint8Array([1, 2, 3, 4]);
      await backend.run([{ op: 'write_tmp', path: `${d}/m.tmp`, bufs: [bytes] }]);
      assert.deepEqual([...fs.readFileSync(`${d}/m.tmp`)], [1, 2, 3, 4]);
    }
  });

  it('gives EACCES from open to a user without permission', function () {
    const d = dir();
    fs.chmodSync(d, 0o755);
    fs.mkdirSync(`${d}/locked`, { mode: 0o755 });
    fs.writeFileSync(`${d}/secret`, 'x', { mode: 0o600 });
    const options = {};
    if (process.getuid() === 0) {
      options.uid = 65534;
      options.gid = 65534;
    } else {
      fs.chmodSync(`${d}/locked`, 0o555);
      fs.chmodSync(`${d}/secret`, 0o000);
    }
    const r = runFixture(
      [path.join(FIXTURES, 'backend-eacces.js'), `${d}/locked`, `${d}/secret`],
      options,
    );
    if (r.error && r.error.code === 'EPERM') {
      this.skip(); // cannot switch to an unprivileged user here
    }
    if (r.status !== 0 && /EACCES.*(dist|build)/.test(r.stderr)) {
      // The unprivileged user cannot read the package itself.
      this.skip();
    }
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout);
    assert.deepEqual(out.native, out.js);
    assert.equal(out.native.write.code, 'EACCES');
    assert.equal(out.native.write.syscall, 'open');
    assert.equal(out.native.write.path, `${d}/locked/m.tmp`);
    assert.equal(out.native.read.code, 'EACCES');
    assert.equal(out.native.read.syscall, 'open');
  });
});

// plan.ts: a call holds at most one thread of the pool at a time.
describe('JsBackend#scanMeta()', () => {
  const dir = useTempDir();

  it('holds one slot of its gate at a time', async () => {
    const { JsBackend } = require('../dist/js-backend.js');
    const backend = new JsBackend({ maxInFlight: 4 });
    const gate = backend.gate;
    const run = gate.run.bind(gate);
    let active = 0;
    let most = 0;
    gate.run = (task) =>
      run(async () => {
        most = Math.max(most, ++active);
        try {
          return await task();
        } finally {
          active--;
        }
      });

    const ids = ['1', '2', '3'].map((c) => c.repeat(32));
    fs.mkdirSync(`${dir()}/meta`);
    fs.mkdirSync(`${dir()}/env`);
    for (const id of ids) {
      fs.writeFileSync(`${dir()}/meta/${id}.meta`, id);
      fs.writeFileSync(`${dir()}/env/${id}.env`, 'env');
    }
    const { metas, envStats } = await backend.scanMeta(
      `${dir()}/meta`,
      `${dir()}/env`,
      ids,
    );
    assert.equal(most, 1);
    assert.deepEqual(metas.map(String), ids);
    assert.deepEqual(envStats.map((st) => st.size), [3, 3, 3]);
  });
});

describe('NativeBackend when the addon returns no Promise', () => {
  const { NativeBackend } = require('../dist/native.js');
  const raw = {
    create_gate: () => ({}),
    run_plan: () => undefined,
    read_files: () => undefined,
    stat_files: () => undefined,
    scan_meta: () => undefined,
  };
  const backend = new NativeBackend(raw);

  for (const [method, args] of [
    ['run', [[]]],
    ['readFiles', [[]]],
    ['statFiles', [[]]],
    ['scanMeta', ['meta', 'env', []]],
  ]) {
    it(`rejects ${method}() rather than resolve`, async () => {
      const err = await rejection(backend[method](...args));
      assert.match(err.message, /did not return a Promise/);
    });
  }
});
