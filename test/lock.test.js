'use strict';
// The queue lock: shared by the stores of one thread, refused to another
// live process or thread, taken over from a dead one (even after pid
// reuse, and across PID namespaces through the owner's socket), won by
// exactly one of several processes racing for a stale lock, leaving no
// debris, and sweeping its own directory only.

const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const { createHash } = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { Worker } = require('node:worker_threads');

const { useTempDir, rejects } = require('./helpers');
const { acquireLock, releaseLock } = require('../dist/lock.js');

const DIST_LOCK = path.resolve(__dirname, '..', 'dist', 'lock.js');
const OWNER = path.join(__dirname, 'fixtures', 'lock-owner.js');
const THREAD = path.join(__dirname, 'fixtures', 'lock-thread.js');
const WORKER_OWNER = path.join(__dirname, 'fixtures', 'lock-worker-owner.js');
const JITTER = path.join(__dirname, 'fixtures', 'fs-jitter.js');

const BOOT = fs.readFileSync('/proc/sys/kernel/random/boot_id', 'latin1').trim();
const nsOf = (type) => fs.readlinkSync(`/proc/self/ns/${type}`).replace(/^\w+:\[(\d+)\]$/, '$1');
const PIDNS = nsOf('pid');
const TIMENS = nsOf('time');

/** Field 22 of a thread's stat, its start time in clock ticks. */
function startOf(pid, tid = pid) {
  const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'latin1');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
}

/** A lock naming the main thread of process `pid`, as this version writes it. */
function identityOf(pid, fields = {}) {
  const f = { pid, tid: pid, start: startOf(pid), boot: BOOT, pidns: PIDNS, timens: TIMENS, thread: 0, ...fields };
  return (
    `v2 pid=${f.pid} tid=${f.tid} start=${f.start} boot=${f.boot}` +
    ` pidns=${f.pidns} timens=${f.timens} thread=${f.thread}`
  );
}

/** A lock naming process `pid` as the previous version wrote it. */
function oldIdentityOf(pid, start = startOf(pid)) {
  return `${pid} ${BOOT} ${start}`;
}

/** The fields of a lock file this version wrote. */
function ownerOf(file) {
  const [version, ...rest] = fs.readFileSync(file, 'latin1').trim().split(' ');
  assert.equal(version, 'v2');
  return Object.fromEntries(rest.map((kv) => kv.split('=')));
}

function assertMine(file) {
  const o = ownerOf(file);
  assert.equal(o.pid, String(process.pid));
  assert.equal(o.tid, String(process.pid));
  assert.equal(o.start, startOf(process.pid));
  assert.equal(o.boot, BOOT);
  assert.equal(o.pidns, PIDNS);
  assert.equal(o.timens, TIMENS);
  assert.equal(o.thread, '0');
  assert.match(o.sock, /^[0-9a-f]{32}\.sock$/);
  assert.ok(fs.lstatSync(path.join(path.dirname(file), '.lock.d', o.sock)).isSocket());
}

/** The outcome of connecting to socket `file`: null or the error code. */
function connectCode(file) {
  return new Promise((resolve) => {
    const c = require('node:net').connect(file);
    c.once('connect', () => (c.destroy(), resolve(null)));
    c.once('error', (err) => resolve(err.code));
  });
}

/** A socket file in `dir` whose process was killed: it refuses connections. */
function deadSocket(dir, name = `${createHash('md5').update(String(Math.random())).digest('hex')}.sock`) {
  const file = path.join(dir, name);
  spawnSync(process.execPath, [
    '-e',
    "require('node:net').createServer().listen(process.argv[1], () => process.kill(process.pid, 'SIGKILL'))",
    file,
  ]);
  assert.ok(fs.lstatSync(file).isSocket());
  return name;
}

function sleeper() {
  return spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)']);
}

/** Runs a process to its end and gives its pid; a pid that is now free. */
function deadPid() {
  const r = spawnSync(process.execPath, ['-e', 'console.log(process.pid)'], { encoding: 'utf8' });
  return Number(r.stdout.trim());
}

/** The first JSON line a child prints. */
function firstLine(child) {
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    child.stdout.on('data', (d) => {
      out += d;
      const nl = out.indexOf('\n');
      if (nl >= 0) resolve(JSON.parse(out.slice(0, nl)));
    });
    child.once('exit', (code, signal) => reject(new Error(`child ended (${code ?? signal}) first: ${err}`)));
  });
}

/** Gives the JSON lines a child prints, one per `next()`. */
function linesOf(child) {
  const queue = [];
  const waiting = [];
  let out = '';
  let err = '';
  const put = (m) => (waiting.length ? waiting.shift()(m) : queue.push(m));
  child.stderr.on('data', (d) => (err += d));
  child.stdout.on('data', (d) => {
    out += d;
    let nl;
    while ((nl = out.indexOf('\n')) >= 0) {
      put(JSON.parse(out.slice(0, nl)));
      out = out.slice(nl + 1);
    }
  });
  child.once('exit', (code, signal) => put({ error: `child ended (${code ?? signal}): ${err}` }));
  return { next: () => (queue.length ? Promise.resolve(queue.shift()) : new Promise((r) => waiting.push(r))) };
}

/**
 * Kills a process started by `unshare --pid --fork` the way a container
 * is killed: SIGKILL to the first process of the namespace, which ends
 * every process in it; resolves once unshare has reaped it.
 */
function killNamespace(child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  const done = new Promise((r) => child.once('exit', r));
  const [init] = fs.readFileSync(`/proc/${child.pid}/task/${child.pid}/children`, 'latin1').trim().split(/\s+/);
  process.kill(Number(init), 'SIGKILL');
  return done;
}

function killed(child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  const done = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  return done;
}

/** A worker running fixtures/lock-thread.js; `next()` gives its next message. */
function lockThread(workerData) {
  const worker = new Worker(THREAD, { workerData });
  const queue = [];
  const waiting = [];
  worker.on('message', (m) => (waiting.length ? waiting.shift()(m) : queue.push(m)));
  worker.on('error', (err) => {
    const m = { error: String(err.stack) };
    if (waiting.length) waiting.shift()(m);
    else queue.push(m);
  });
  const exited = new Promise((r) => worker.once('exit', r));
  return {
    worker,
    exited,
    next: () => (queue.length ? Promise.resolve(queue.shift()) : new Promise((r) => waiting.push(r))),
  };
}

describe('the queue lock', function () {
  this.timeout(60000);
  const tmp = useTempDir();
  const lockFile = () => path.join(tmp(), '.lock');

  it('is shared by stores of one thread and removed when the last releases it', async function () {
    const a = await acquireLock(tmp());
    const b = await acquireLock(tmp());
    assert.equal(a, lockFile());
    assertMine(a);
    await releaseLock(a);
    assert.ok(fs.existsSync(lockFile()), 'released while another store holds it');
    await releaseLock(b);
    assert.ok(!fs.existsSync(lockFile()));
    // Its socket is closed and gone; the lock's directory stays.
    assert.deepEqual(fs.readdirSync(tmp()), ['.lock.d']);
    assert.deepEqual(fs.readdirSync(path.join(tmp(), '.lock.d')), []);
  });

  it('counts the stores of one queue however its path is spelt', async function () {
    fs.symlinkSync(tmp(), path.join(tmp(), 'link'));
    const a = await acquireLock(tmp());
    const b = await acquireLock(path.relative(process.cwd(), path.join(tmp(), 'link')));
    await releaseLock(a);
    assert.ok(fs.existsSync(lockFile()), 'released while another store holds it');
    await releaseLock(b);
    assert.ok(!fs.existsSync(lockFile()));
  });

  it('keeps the lock for a store that takes it while another store of the thread releases it', async function () {
    const { jitter } = require('./fixtures/fs-jitter');
    const undo = jitter(2);
    try {
      await releaseWhileAcquiring();
    } finally {
      undo();
    }
  });

  async function releaseWhileAcquiring() {
    for (let round = 0; round < 40; round++) {
      const a = await acquireLock(tmp());
      // The release starts at once or up to 10 ms after the acquisition.
      const later = new Promise((r) => setTimeout(r, round % 11));
      const [b] = await Promise.all([acquireLock(tmp()), later.then(() => releaseLock(a))]);
      assert.ok(fs.existsSync(lockFile()), `round ${round}: a store holds the lock but its file is gone`);
      await releaseLock(b);
      assert.ok(!fs.existsSync(lockFile()));
    }
  }

  it('refuses a lock held by another live process, naming it', async function () {
    const child = sleeper();
    try {
      await new Promise((r) => child.once('spawn', r));
      fs.writeFileSync(lockFile(), identityOf(child.pid) + '\n');
      const err = await rejects(acquireLock(tmp()));
      assert.equal(err.code, 'ERR_QUEUE_LOCKED');
      assert.equal(err.retryable, true);
      assert.equal(err.message, `queue '${tmp()}' is in use by process ${child.pid}`);
    } finally {
      await killed(child);
    }
  });

  it('honours a lock the previous version wrote ("pid boot start") while its process runs', async function () {
    const child = sleeper();
    try {
      await new Promise((r) => child.once('spawn', r));
      fs.writeFileSync(lockFile(), oldIdentityOf(child.pid) + '\n');
      const err = await rejects(acquireLock(tmp()));
      assert.equal(err.code, 'ERR_QUEUE_LOCKED');
      assert.equal(err.message, `queue '${tmp()}' is in use by process ${child.pid}`);
      assert.equal(fs.readFileSync(lockFile(), 'latin1').trim(), oldIdentityOf(child.pid));
    } finally {
      await killed(child);
    }
  });

  it('takes over a lock the previous version wrote before the last boot', async function () {
    fs.writeFileSync(lockFile(), `${process.pid} 00000000-0000-0000-0000-000000000000 1\n`);
    await acquireLock(tmp());
    assertMine(lockFile());
    await releaseLock(lockFile());
  });

  it('does not take over a lock of the previous version whose process may run in another PID namespace', async function () {
    // The previous version did not record the namespace: a dead pid here
    // may be a live owner there, so the lock is left for a person to clear.
    const pid = deadPid();
    fs.writeFileSync(lockFile(), oldIdentityOf(pid, '1') + '\n');
    const err = await rejects(acquireLock(tmp()));
    assert.equal(err.code, 'ERR_QUEUE_LOCKED');
    assert.match(err.message, new RegExp(`process ${pid}\\b.*older version.*PID namespace`));
    assert.ok(err.message.includes(`remove '${lockFile()}'`), err.message);
    assert.equal(fs.readFileSync(lockFile(), 'latin1').trim(), oldIdentityOf(pid, '1'));
  });

  it('takes over a lock whose pid now belongs to another process (pid reuse)', async function () {
    const child = sleeper();
    try {
      await new Promise((r) => child.once('spawn', r));
      fs.writeFileSync(lockFile(), identityOf(child.pid, { start: '1' }) + '\n');
      await acquireLock(tmp());
      assertMine(lockFile());
      await releaseLock(lockFile());
    } finally {
      await killed(child);
    }
  });

  it('takes over a lock from before the last boot, whatever its PID namespace', async function () {
    fs.writeFileSync(lockFile(), identityOf(process.pid, { boot: 'another-boot', pidns: '1' }) + '\n');
    await acquireLock(tmp());
    assertMine(lockFile());
    await releaseLock(lockFile());
  });

  it('takes over an empty lock and one left by a dead taker; leaves alone what the oldest version left beside it', async function () {
    fs.writeFileSync(lockFile(), '');
    fs.mkdirSync(path.join(tmp(), '.lock.d'));
    fs.writeFileSync(claimOf(0), '999999999 x 1\n');
    // The oldest version's takeover file, in the meta directory itself,
    // which is no longer listed.
    fs.writeFileSync(path.join(tmp(), '.lock.takeover'), '999999999 x 1\n');
    await acquireLock(tmp());
    assertMine(lockFile());
    assert.ok(!fs.existsSync(claimOf(0)));
    assert.ok(fs.existsSync(path.join(tmp(), '.lock.takeover')));
    await releaseLock(lockFile());
  });

  it('lets exactly one of twelve processes racing for a stale lock win, and keep it', async function () {
    // Each round starts with a stale lock and a takeover left by a dead
    // taker, so the racers also race to clear that. The racers start
    // together; a winner checks, after the others are done, that the lock
    // still names it. Any other error (ENOENT) fails the test.
    const racers = 12;
    for (let round = 0; round < 8; round++) {
      fs.writeFileSync(lockFile(), `999999999 dead 1\n`);
      fs.mkdirSync(path.join(tmp(), '.lock.d'), { recursive: true });
      fs.writeFileSync(claimOf(0), `999999999 dead 1\n`);
      const at = Date.now() + 1200;
      const script = `
        const fs = require('node:fs');
        const { acquireLock } = require(${JSON.stringify(DIST_LOCK)});
        const [dir, at] = [process.argv[1], Number(process.argv[2])];
        while (Date.now() < at);
        acquireLock(dir).then(
          (file) => setTimeout(() => {
            let owner = '';
            try { owner = fs.readFileSync(file, 'latin1'); } catch {}
            const mine = new RegExp('(^|pid=)' + process.pid + ' ').test(owner);
            console.log(mine ? 'won' : 'won, then lost the lock');
          }, 2000),
          (err) => console.log(err.code === 'ERR_QUEUE_LOCKED' ? err.code : String(err.stack)),
        );
      `;
      // Every other round, each file operation of the racers waits a
      // little, so that their steps interleave in more orders.
      const env = { ...process.env, SLIMTA_FS_JITTER: round % 2 ? '4' : '' };
      const children = Array.from({ length: racers }, () =>
        spawn(process.execPath, ['-r', JITTER, '-e', script, tmp(), String(at)], { env }),
      );
      const outcomes = await Promise.all(
        children.map(
          (c) =>
            new Promise((resolve) => {
              let out = '';
              c.stdout.on('data', (d) => (out += d));
              c.on('close', () => resolve(out.trim()));
            }),
        ),
      );
      const winners = outcomes.filter((o) => o === 'won').length;
      assert.ok(outcomes.every((o) => o === 'won' || o === 'ERR_QUEUE_LOCKED'), `round ${round}: ${outcomes.join(', ')}`);
      assert.equal(winners, 1, `round ${round}: ${outcomes.join(', ')}`);
      fs.rmSync(lockFile());
      assert.deepEqual(fs.readdirSync(tmp()), ['.lock.d'], `round ${round}: debris left`);
      // The sockets of the winners, which they left when they exited; no
      // lock names them (the test removed it), so they are swept only once
      // old. Nothing else: the claim and the others' drafts and sockets.
      const left = fs.readdirSync(path.join(tmp(), '.lock.d'));
      assert.ok(left.length <= round + 1, `round ${round}: debris left: ${left}`);
      for (const name of left) {
        assert.match(name, /^[0-9a-f]{32}\.sock$/, `round ${round}: debris left: ${left}`);
        assert.equal(await connectCode(path.join(tmp(), '.lock.d', name)), 'ECONNREFUSED');
      }
    }
  });

  /** The claim file of generation n for taking over the lock now in place. */
  function claimOf(n) {
    const ino = fs.statSync(lockFile(), { bigint: true }).ino;
    const text = fs.readFileSync(lockFile(), 'latin1');
    const key = createHash('sha256').update(`${ino}\n${text}`).digest('hex').slice(0, 16);
    return path.join(tmp(), '.lock.d', `take.${key}.${n}`);
  }

  it('takes over a stale lock whose first taker died midway', async function () {
    const dead = deadPid();
    fs.writeFileSync(lockFile(), identityOf(process.pid, { pid: dead, tid: dead }) + '\n');
    fs.mkdirSync(path.join(tmp(), '.lock.d'));
    fs.writeFileSync(claimOf(0), identityOf(process.pid, { pid: dead, tid: dead, start: '1' }) + '\n');
    await acquireLock(tmp());
    assertMine(lockFile());
    assert.deepEqual(fs.readdirSync(tmp()).sort(), ['.lock', '.lock.d']);
    assert.deepEqual(fs.readdirSync(path.join(tmp(), '.lock.d')), [ownerOf(lockFile()).sock]);
    await releaseLock(lockFile());
  });

  it('leaves a stale lock to the live process that is taking it over', async function () {
    const dead = deadPid();
    const child = sleeper();
    try {
      await new Promise((r) => child.once('spawn', r));
      const stale = identityOf(process.pid, { pid: dead, tid: dead });
      fs.writeFileSync(lockFile(), stale + '\n');
      fs.mkdirSync(path.join(tmp(), '.lock.d'));
      fs.writeFileSync(claimOf(0), identityOf(process.pid, { pid: dead, tid: dead, start: '1' }) + '\n');
      fs.writeFileSync(claimOf(1), identityOf(child.pid) + '\n');
      const err = await rejects(acquireLock(tmp()));
      assert.equal(err.code, 'ERR_QUEUE_LOCKED');
      assert.equal(err.message, `queue '${tmp()}' is being taken over by process ${child.pid}; try again`);
      assert.equal(fs.readFileSync(lockFile(), 'latin1').trim(), stale);
      // The two claims; the socket of the refused taker is gone.
      assert.deepEqual(fs.readdirSync(path.join(tmp(), '.lock.d')).sort(), [claimOf(0), claimOf(1)].map((f) => path.basename(f)).sort());
    } finally {
      await killed(child);
    }
  });

  it('clears drafts, claims and sockets left by dead processes in its directory when it takes the lock, not those of live ones', async function () {
    const dead = deadPid();
    const child = sleeper();
    const lockDir = path.join(tmp(), '.lock.d');
    fs.mkdirSync(lockDir);
    const live = require('node:net').createServer();
    const liveSock = 'f'.repeat(32) + '.sock';
    try {
      await new Promise((r) => child.once('spawn', r));
      await new Promise((r) => live.listen(path.join(lockDir, liveSock), r));
      const deadSock = deadSocket(lockDir);
      const deadOwner = identityOf(process.pid, { pid: dead, tid: dead });
      const otherNs = identityOf(process.pid, { pid: 1, tid: 1, pidns: '1' });
      // Debris whose owner is provably dead goes at once.
      const deadNow = {
        // Killed between writing a draft and linking it into place.
        [`lock.${dead}.0123abcd`]: deadOwner,
        // A taker killed midway, of a lock long gone.
        [`take.0123456789abcdef.0`]: deadOwner,
        [`take.0123456789abcdef.0.${dead}.01234567`]: deadOwner,
        // The oldest version's identity, from an earlier boot.
        [`lock.${dead}.aaaa0000`]: `${dead} 00000000-0000-0000-0000-000000000000 1`,
        // From another PID namespace, whose socket refuses.
        [`lock.1.bbbb0000`]: `${otherNs} sock=${deadSock}`,
      };
      // Debris that cannot be judged goes once it is older than any of
      // the few file operations a live process keeps it for.
      const judgedByAge = {
        // Killed before the identity was written.
        [`lock.${dead}.4567cdef`]: '',
        // The oldest version's identity: no namespace.
        [`lock.${dead}.89abcdef`]: oldIdentityOf(dead, '1'),
        [`take.0123456789abcdef.1.${dead}.fedcba98`]: oldIdentityOf(dead, '1'),
        // From another PID namespace, naming no socket.
        [`lock.${dead}.76543210`]: otherNs,
      };
      const kept = {
        [`lock.${child.pid}.fedcba98`]: identityOf(child.pid),
        [`take.fedcba9876543210.0`]: identityOf(child.pid),
        [`lock.${child.pid}.00000000`]: '',
        [`lock.1.11111111`]: otherNs,
        // From another PID namespace, whose socket accepts.
        [`lock.1.22222222`]: `${otherNs} sock=${liveSock}`,
        unrelated: '',
      };
      for (const [name, content] of Object.entries({ ...deadNow, ...judgedByAge, ...kept })) {
        fs.writeFileSync(path.join(lockDir, name), content ? content + '\n' : '');
      }
      // Sockets that refuse: named by a lock, claim or draft (deadSock),
      // which was written once they listened, they never listen again;
      // named by none, one may be between its bind and its listen, so it
      // goes only once old.
      const oldSock = deadSocket(lockDir);
      const youngSock = deadSocket(lockDir);
      const old = new Date(Date.now() - 120000);
      for (const name of [...Object.keys(judgedByAge), oldSock]) fs.utimesSync(path.join(lockDir, name), old, old);
      // What the previous releases left in the meta directory itself stays.
      const legacy = { [`.lock.${dead}.0123abcd`]: deadOwner, '.lock.takeover': deadOwner };
      for (const [name, content] of Object.entries(legacy)) fs.writeFileSync(path.join(tmp(), name), content + '\n');

      await acquireLock(tmp());
      const mine = ownerOf(lockFile()).sock;
      assert.deepEqual(
        fs.readdirSync(lockDir).sort(),
        [...Object.keys(kept), liveSock, youngSock, mine].sort(),
      );
      assert.deepEqual(fs.readdirSync(tmp()).sort(), ['.lock', '.lock.d', ...Object.keys(legacy)].sort());
      await releaseLock(lockFile());
    } finally {
      live.close();
      await killed(child);
    }
  });

  it('reads no entries of the meta directory when it takes the lock in a queue of 5,000 messages', async function () {
    if (spawnSync('strace', ['-V']).status !== 0) {
      console.log('    (skipped: no strace)');
      this.skip();
    }
    for (let i = 0; i < 5000; i++) {
      fs.writeFileSync(path.join(tmp(), createHash('md5').update(String(i)).digest('hex') + '.meta'), '');
    }
    // Something to sweep, so that the sweep has work to do.
    fs.mkdirSync(path.join(tmp(), '.lock.d'), { recursive: true });
    fs.writeFileSync(path.join(tmp(), '.lock.d', `lock.${deadPid()}.0123abcd`), '');
    fs.writeFileSync(lockFile(), `${deadPid()} 00000000-0000-0000-0000-000000000000 1\n`);
    const trace = path.join(tmp(), '.trace');
    const script = `require(${JSON.stringify(DIST_LOCK)}).acquireLock(process.argv[1]).then(() => console.log('ok'))`;
    const r = spawnSync('strace', ['-f', '-qq', '-y', '-e', 'trace=getdents64', '-o', trace, process.execPath, '-e', script, tmp()], {
      encoding: 'utf8',
    });
    assert.equal(r.stdout.trim(), 'ok', r.stderr);
    const calls = fs.readFileSync(trace, 'latin1').split('\n').filter((l) => l.includes('getdents64('));
    const of = (dir) => calls.filter((l) => l.includes(`<${dir}>`));
    assert.deepEqual(of(tmp()), [], 'the meta directory was listed');
    assert.ok(of(path.join(tmp(), '.lock.d')).length > 0, `the lock's own directory was not swept:\n${calls.join('\n')}`);
  });

  describe('across PID namespaces', function () {
    before(function () {
      const why =
        typeof process.getuid === 'function' && process.getuid() !== 0
          ? 'not root'
          : spawnSync('unshare', ['--pid', '--fork', '--mount-proc', '--kill-child', 'true']).status !== 0
            ? 'unshare --pid --fork --mount-proc --kill-child is missing or refused'
            : null;
      if (why) {
        console.log(`    (skipped: ${why}; these tests start an owner in a PID namespace of its own)`);
        this.skip();
      }
    });

    const inNamespace = (...args) =>
      spawn('unshare', ['--pid', '--fork', '--mount-proc', '--kill-child', process.execPath, ...args]);

    it('refuses a lock whose owner lives in another PID namespace while it runs', async function () {
      const owner = inNamespace(OWNER, tmp());
      try {
        assert.deepEqual(await firstLine(owner), { owned: 1 });
        const o = ownerOf(lockFile());
        assert.equal(o.pid, '1');
        assert.notEqual(o.pidns, PIDNS);
        assert.ok(fs.lstatSync(path.join(tmp(), '.lock.d', o.sock)).isSocket());
        // Whatever runs as pid 1 here is another process: the socket tells.
        for (let i = 0; i < 3; i++) {
          const err = await rejects(acquireLock(tmp()));
          assert.equal(err.code, 'ERR_QUEUE_LOCKED');
          assert.equal(err.message, `queue '${tmp()}' is in use by process 1 of another PID namespace (pid:[${o.pidns}])`);
        }
        assert.equal(fs.readFileSync(lockFile(), 'latin1').trim().split(' ').at(-1), `sock=${o.sock}`);
      } finally {
        await killNamespace(owner);
      }
    });

    it('is refused, in a PID namespace of its own, the lock of an owner outside it', async function () {
      await acquireLock(tmp());
      const other = inNamespace(OWNER, tmp());
      try {
        const r = await firstLine(other);
        assert.equal(r.code, 'ERR_QUEUE_LOCKED');
        assert.match(r.message, new RegExp(`in use by process ${process.pid} of another PID namespace`));
        assertMine(lockFile());
      } finally {
        await killed(other);
        await releaseLock(lockFile());
      }
    });

    it('takes over the lock of an owner in another PID namespace that was killed (a container restart), from a new namespace and from this one', async function () {
      const first = inNamespace(OWNER, tmp());
      try {
        assert.deepEqual(await firstLine(first), { owned: 1 });
        const err = await rejects(acquireLock(tmp()));
        assert.equal(err.code, 'ERR_QUEUE_LOCKED');
        assert.match(err.message, /in use by process 1 of another PID namespace/);
      } finally {
        await killNamespace(first);
      }
      const oldNs = ownerOf(lockFile()).pidns;
      // The restarted container: a new PID namespace, no manual step.
      const second = inNamespace(OWNER, tmp());
      try {
        assert.deepEqual(await firstLine(second), { owned: 1 });
        const o = ownerOf(lockFile());
        assert.notEqual(o.pidns, oldNs);
        assert.notEqual(o.pidns, PIDNS);
      } finally {
        await killNamespace(second);
      }
      // And from the root namespace, which sweeps the socket of the lock
      // it took over, as the second one did the first one's.
      await acquireLock(tmp());
      assertMine(lockFile());
      assert.deepEqual(fs.readdirSync(path.join(tmp(), '.lock.d')), [ownerOf(lockFile()).sock]);
      await releaseLock(lockFile());
    });

    it('takes over the lock of an owner in another PID namespace that ended with process.exit() holding it', async function () {
      const script = `require(${JSON.stringify(DIST_LOCK)}).acquireLock(process.argv[1]).then(() => process.exit(0))`;
      const r = spawnSync('unshare', ['--pid', '--fork', '--mount-proc', '--kill-child', process.execPath, '-e', script, tmp()], {
        encoding: 'utf8',
      });
      assert.equal(r.status, 0, r.stderr);
      const o = ownerOf(lockFile());
      assert.notEqual(o.pidns, PIDNS);
      // Its socket is left behind, closed by the kernel.
      assert.ok(fs.lstatSync(path.join(tmp(), '.lock.d', o.sock)).isSocket());
      await acquireLock(tmp());
      assertMine(lockFile());
      assert.deepEqual(fs.readdirSync(path.join(tmp(), '.lock.d')), [ownerOf(lockFile()).sock]);
      await releaseLock(lockFile());
    });

    it('judges a worker owner in another PID namespace by its socket: alive while it runs, taken over once it ended', async function () {
      const owner = spawn('unshare', ['--pid', '--fork', '--mount-proc', '--kill-child', process.execPath, WORKER_OWNER, tmp()]);
      const lines = linesOf(owner);
      try {
        const r = await lines.next();
        assert.ok(r.owned > 0, JSON.stringify(r));
        const err = await rejects(acquireLock(tmp()));
        assert.equal(err.code, 'ERR_QUEUE_LOCKED');
        assert.match(err.message, /in use by process 1 of another PID namespace/);
        owner.stdin.write('end\n');
        assert.deepEqual(await lines.next(), { ended: 1 });
        // Its process still runs; the thread that owned the queue is gone.
        await acquireLock(tmp());
        assertMine(lockFile());
        await releaseLock(lockFile());
      } finally {
        await killNamespace(owner);
      }
    });

    it('judges an owner in another PID namespace by its socket with a meta path longer than a socket address holds', async function () {
      const dir = path.join(tmp(), 'q'.repeat(100), 'meta');
      fs.mkdirSync(dir, { recursive: true });
      assert.ok(Buffer.byteLength(path.join(dir, '.lock.d', '0'.repeat(32) + '.sock')) > 108);
      const owner = inNamespace(OWNER, dir);
      try {
        assert.deepEqual(await firstLine(owner), { owned: 1 });
        const err = await rejects(acquireLock(dir));
        assert.equal(err.code, 'ERR_QUEUE_LOCKED');
        assert.match(err.message, /in use by process 1 of another PID namespace \(pid:\[\d+\]\)$/);
      } finally {
        await killNamespace(owner);
      }
      await acquireLock(dir);
      const o = ownerOf(path.join(dir, '.lock'));
      assert.equal(o.pid, String(process.pid));
      assert.ok(fs.lstatSync(path.join(dir, '.lock.d', o.sock)).isSocket());
      await releaseLock(path.join(dir, '.lock'));
      assert.deepEqual(fs.readdirSync(path.join(dir, '.lock.d')), []);
    });

    it('falls back, for a meta path too long for a socket address and no /proc to shorten it, to refusing the lock until it is removed by hand', async function () {
      const dir = path.join(tmp(), 'q'.repeat(100), 'meta');
      fs.mkdirSync(dir, { recursive: true });
      // A mount namespace of its own, with /proc unmounted in it only.
      const owner = spawn('unshare', [
        '--mount', '--pid', '--fork', '--kill-child', 'sh', '-c', 'umount -l /proc && exec "$0" "$@"', process.execPath, OWNER, dir,
      ]);
      const file = path.join(dir, '.lock');
      try {
        const r = await firstLine(owner);
        assert.ok(r.owned > 0, JSON.stringify(r));
        assert.match(fs.readFileSync(file, 'latin1'), / sock=!ENAMETOOLONG\n$/);
      } finally {
        await killNamespace(owner);
      }
      const err = await rejects(acquireLock(dir));
      assert.equal(err.code, 'ERR_QUEUE_LOCKED');
      assert.match(err.message, /could not listen on a socket: its path is longer than the 107 bytes a socket address holds/);
      assert.ok(err.message.includes(`remove '${file}' by hand`), err.message);
      fs.rmSync(file);
      await acquireLock(dir);
      assert.equal(ownerOf(file).pid, String(process.pid));
      await releaseLock(file);
    });

    it('refuses, until it is removed by hand, a lock of another PID namespace whose owner could not listen on a socket', async function () {
      const cases = [
        ['', /names no socket/],
        [' sock=!ENAMETOOLONG', /could not listen on a socket: its path is longer than the 107 bytes/],
        [' sock=!EPERM', /could not listen on a socket \(EPERM: its filesystem may not hold sockets\)/],
      ];
      for (const [sock, why] of cases) {
        const text = identityOf(process.pid, { pid: 1, tid: 1, pidns: '1' }) + sock;
        fs.writeFileSync(lockFile(), text + '\n');
        const err = await rejects(acquireLock(tmp()));
        assert.equal(err.code, 'ERR_QUEUE_LOCKED');
        assert.match(err.message, /in use by process 1 of another PID namespace \(pid:\[1\]\), which cannot be checked from this one/);
        assert.match(err.message, why);
        assert.ok(err.message.includes(`remove '${lockFile()}'`), err.message);
        assert.equal(fs.readFileSync(lockFile(), 'latin1').trim(), text);
      }
    });
  });

  describe('across time namespaces', function () {
    before(function () {
      const why =
        typeof process.getuid === 'function' && process.getuid() !== 0
          ? 'not root'
          : !fs.existsSync('/proc/self/ns/time') ||
              spawnSync('unshare', ['--time', '--fork', '--boottime', '100000', '--kill-child', 'true']).status !== 0
            ? 'no time namespaces, or unshare --time is missing or refused'
            : null;
      if (why) {
        console.log(`    (skipped: ${why}; this test starts an owner in a time namespace of its own)`);
        this.skip();
      }
    });

    it('refuses a lock whose owner reads start times shifted by another time namespace', async function () {
      // Same PID namespace: the owner's pid is valid here, but the start
      // time it recorded is 100000 s off the one this process reads.
      const owner = spawn('unshare', [
        '--time', '--fork', '--boottime', '100000', '--kill-child', process.execPath, OWNER, tmp(),
      ]);
      try {
        const { owned } = await firstLine(owner);
        assert.notEqual(ownerOf(lockFile()).start, startOf(owned));
        const err = await rejects(acquireLock(tmp()));
        assert.equal(err.code, 'ERR_QUEUE_LOCKED');
        assert.match(err.message, new RegExp(`in use by process ${owned} \\(of another time namespace`));
        await killed(owner);
        // --kill-child ends it once unshare has ended; then it is reaped.
        for (let i = 0; i < 100 && fs.existsSync(`/proc/${owned}`); i++) await new Promise((r) => setTimeout(r, 50));
      } finally {
        await killed(owner);
      }
      // Gone, it is taken over as any other.
      await acquireLock(tmp());
      assertMine(lockFile());
      await releaseLock(lockFile());
    });
  });

  describe('between threads', function () {
    it('refuses a second thread of the process while the owner thread holds it', async function () {
      const file = await acquireLock(tmp());
      const t = lockThread({ dir: tmp(), then: 'release' });
      try {
        const r = await t.next();
        assert.equal(r.code, 'ERR_QUEUE_LOCKED', JSON.stringify(r));
        assert.match(r.message, /in use by thread 0 of this process/);
      } finally {
        await t.worker.terminate();
        await releaseLock(file);
      }
    });

    it('lets another thread take it once the owner thread has released it', async function () {
      const t = lockThread({ dir: tmp(), then: 'release' });
      const r = await t.next();
      assert.ok(r.owned > 0, JSON.stringify(r));
      assert.equal(ownerOf(lockFile()).thread, String(r.owned));
      assert.equal(await t.next(), 'released');
      assert.ok(!fs.existsSync(lockFile()), 'the owner thread released, but the lock file stays');
      await t.exited;
      await acquireLock(tmp());
      assertMine(lockFile());
      await releaseLock(lockFile());
    });

    it('takes over the lock of an owner thread that ended, also where /proc cannot tell (a PID namespace without its own /proc)', async function () {
      if (spawnSync('unshare', ['--pid', '--fork', '--kill-child', 'true']).status !== 0) {
        console.log('      (skipped: unshare --pid --fork is missing or refused)');
        this.skip();
      }
      // /proc is this namespace's parent's: the process cannot look up its
      // own threads there, so only the owner's socket tells.
      const p = spawn('unshare', ['--pid', '--fork', '--kill-child', process.execPath, WORKER_OWNER, tmp()]);
      const lines = linesOf(p);
      try {
        const r = await lines.next();
        assert.ok(r.owned > 0, JSON.stringify(r));
        p.stdin.write('take\n');
        const refused = await lines.next();
        assert.equal(refused.code, 'ERR_QUEUE_LOCKED', JSON.stringify(refused));
        assert.match(refused.message, new RegExp(`in use by thread ${r.owned} of this process`));
        p.stdin.write('end\n');
        assert.deepEqual(await lines.next(), { ended: 1 });
        p.stdin.write('take\n');
        assert.deepEqual(await lines.next(), { taken: true });
        assert.equal(ownerOf(lockFile()).thread, '0');
      } finally {
        await killNamespace(p);
      }
    });

    it('takes over the lock of an owner thread that ended without releasing it', async function () {
      const t = lockThread({ dir: tmp(), then: 'hold' });
      const r = await t.next();
      assert.ok(r.owned > 0, JSON.stringify(r));
      const err = await rejects(acquireLock(tmp()));
      assert.equal(err.code, 'ERR_QUEUE_LOCKED');
      assert.match(err.message, new RegExp(`in use by thread ${r.owned} of this process`));
      await t.worker.terminate();
      await acquireLock(tmp());
      assertMine(lockFile());
      await releaseLock(lockFile());
    });
  });
});
