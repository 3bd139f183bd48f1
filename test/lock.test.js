'use strict';
// The queue lock: shared by the stores of one module instance in one
// thread, refused to any other owner whose socket accepts (another
// process, thread, copy of the module, PID namespace; a stopped owner),
// taken over once that socket refuses or is gone (killed, exited, ended
// worker, zombie, restarted container) or the lock does not parse, won by
// exactly one of several racers, leaving no debris, and sweeping its own
// directory only.

const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const { createHash } = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');
const { Worker } = require('node:worker_threads');

const { useTempDir, rejects } = require('./helpers');
const { acquireLock, releaseLock } = require('../dist/lock.js');

const DIST = path.resolve(__dirname, '..', 'dist');
const DIST_LOCK = path.join(DIST, 'lock.js');
const OWNER = path.join(__dirname, 'fixtures', 'lock-owner.js');
const THREAD = path.join(__dirname, 'fixtures', 'lock-thread.js');
const WORKER_OWNER = path.join(__dirname, 'fixtures', 'lock-worker-owner.js');
const JITTER = path.join(__dirname, 'fixtures', 'fs-jitter.js');
const DIE_ON_CLAIM = path.join(__dirname, 'fixtures', 'lock-die-on-claim.js');

const LINE = /^slimta-lock 1 pid=(\d+) thread=(\d+) sock=([0-9a-f]{32}\.sock)\n$/;

/** The owner a lock file names: its pid, thread and socket. */
function ownerOf(file) {
  const text = fs.readFileSync(file, 'latin1');
  const f = Object.fromEntries([...text.matchAll(/(\w+)=(\S+)/g)].map((m) => [m[1], m[2]]));
  assert.ok(f.pid && f.thread && f.sock, `not a lock: ${JSON.stringify(text)}`);
  return { pid: Number(f.pid), thread: Number(f.thread), sock: f.sock };
}

/** Asserts that `file` is a lock of this thread, whose socket listens. */
function assertMine(file) {
  const o = ownerOf(file);
  assert.equal(o.pid, process.pid);
  assert.equal(o.thread, 0);
  assert.ok(fs.lstatSync(path.join(path.dirname(file), '.lock.d', o.sock)).isSocket());
}

/** The lock text naming socket `sock`, as owner `pid` (thread 0) writes it. */
const lockText = (pid, sock) => `slimta-lock 1 pid=${pid} thread=0 sock=${sock}\n`;

const randomSock = () => `${createHash('md5').update(String(Math.random())).digest('hex')}.sock`;

/** A socket file in `dir` whose process was killed: it refuses connections. */
function deadSocket(dir, name = randomSock()) {
  const file = path.join(dir, name);
  spawnSync(process.execPath, [
    '-e',
    "require('node:net').createServer().listen(process.argv[1], () => process.kill(process.pid, 'SIGKILL'))",
    file,
  ]);
  assert.ok(fs.lstatSync(file).isSocket());
  return name;
}

/** The outcome of connecting to socket `file`: null or the error code. */
function connectCode(file) {
  return new Promise((resolve) => {
    const c = net.connect(file);
    c.once('connect', () => (c.destroy(), resolve(null)));
    c.once('error', (err) => resolve(err.code));
  });
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

/** Starts fixtures/lock-owner.js on `dir`; resolves once it holds the lock. */
async function startOwner(dir) {
  const child = spawn(process.execPath, [OWNER, dir]);
  const line = await firstLine(child);
  assert.equal(line.owned, child.pid, JSON.stringify(line));
  return child;
}

function killed(child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  const done = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  return done;
}

/** A stale lock in `dir`: its owner was killed holding it. */
async function staleLock(dir) {
  await killed(await startOwner(dir));
  return ownerOf(path.join(dir, '.lock'));
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

/** A worker running fixtures/lock-thread.js; `next()` gives its next message. */
function lockThread(workerData) {
  const worker = new Worker(THREAD, { workerData });
  const queue = [];
  const waiting = [];
  const put = (m) => (waiting.length ? waiting.shift()(m) : queue.push(m));
  worker.on('message', put);
  worker.on('error', (err) => put({ error: String(err.stack) }));
  const exited = new Promise((r) => worker.once('exit', r));
  return { worker, exited, next: () => (queue.length ? Promise.resolve(queue.shift()) : new Promise((r) => waiting.push(r))) };
}

/** A second copy of dist/lock.js, as a duplicated node_modules would load. */
function lockCopy() {
  const saved = { ...require.cache };
  for (const k of Object.keys(require.cache)) if (k.startsWith(DIST + path.sep)) delete require.cache[k];
  try {
    return require(DIST_LOCK);
  } finally {
    for (const k of Object.keys(require.cache)) if (k.startsWith(DIST + path.sep)) delete require.cache[k];
    Object.assign(require.cache, saved);
  }
}

const rootWhy = () =>
  typeof process.getuid === 'function' && process.getuid() !== 0
    ? 'not root'
    : spawnSync('unshare', ['--pid', '--fork', '--mount-proc', '--kill-child', 'true']).status !== 0
      ? 'unshare --pid --fork --mount-proc --kill-child is missing or refused'
      : null;

describe('the queue lock', function () {
  this.timeout(60000);
  const tmp = useTempDir();
  const lockFile = () => path.join(tmp(), '.lock');
  const lockDir = () => path.join(tmp(), '.lock.d');

  it('is shared by stores of one thread and removed when the last releases it', async function () {
    const a = await acquireLock(tmp());
    const b = await acquireLock(tmp());
    assert.equal(a, lockFile());
    assertMine(a);
    assert.match(fs.readFileSync(a, 'latin1'), LINE);
    await releaseLock(a);
    assert.ok(fs.existsSync(lockFile()), 'released while another store holds it');
    await releaseLock(b);
    assert.ok(!fs.existsSync(lockFile()));
    // Its socket is closed and gone; the lock's directory stays.
    assert.deepEqual(fs.readdirSync(tmp()), ['.lock.d']);
    assert.deepEqual(fs.readdirSync(lockDir()), []);
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
    const undo = require('./fixtures/fs-jitter').jitter(2);
    try {
      for (let round = 0; round < 40; round++) {
        const a = await acquireLock(tmp());
        // The release starts at once or up to 10 ms after the acquisition.
        const later = new Promise((r) => setTimeout(r, round % 11));
        const [b] = await Promise.all([acquireLock(tmp()), later.then(() => releaseLock(a))]);
        assert.ok(fs.existsSync(lockFile()), `round ${round}: a store holds the lock but its file is gone`);
        await releaseLock(b);
        assert.ok(!fs.existsSync(lockFile()));
      }
    } finally {
      undo();
    }
  });

  it('refuses a lock held by another live process, naming it; retryable', async function () {
    const child = await startOwner(tmp());
    try {
      const err = await rejects(acquireLock(tmp()));
      assert.equal(err.code, 'ERR_QUEUE_LOCKED');
      assert.equal(err.retryable, true);
      assert.equal(err.message, `queue '${tmp()}' is in use by process ${child.pid} (thread 0)`);
      assert.equal(ownerOf(lockFile()).pid, child.pid);
    } finally {
      await killed(child);
    }
  });

  it('takes over the lock of a killed owner and sweeps its socket', async function () {
    const dead = await staleLock(tmp());
    assert.equal(await connectCode(path.join(lockDir(), dead.sock)), 'ECONNREFUSED');
    await acquireLock(tmp());
    assertMine(lockFile());
    assert.deepEqual(fs.readdirSync(lockDir()), [ownerOf(lockFile()).sock]);
    await releaseLock(lockFile());
  });

  it('takes over a lock whose socket file is gone', async function () {
    const dead = await staleLock(tmp());
    fs.rmSync(path.join(lockDir(), dead.sock));
    await acquireLock(tmp());
    assertMine(lockFile());
    await releaseLock(lockFile());
  });

  it('takes over a lock cut short to any prefix of its content, as a power cut leaves it', async function () {
    await staleLock(tmp());
    const text = fs.readFileSync(lockFile(), 'latin1');
    for (let len = 0; len < text.length; len++) {
      fs.writeFileSync(lockFile(), text.slice(0, len));
      const file = await acquireLock(tmp()).catch((err) => assert.fail(`${len} bytes: ${err.message}`));
      assertMine(file);
      await releaseLock(file);
    }
  });

  it('refuses a stopped (SIGSTOP) owner, also once its backlog is full, and takes over once it is killed', async function () {
    const child = await startOwner(tmp());
    try {
      process.kill(child.pid, 'SIGSTOP');
      // It accepts nothing while stopped: past its backlog of 511 a
      // connection fails with EAGAIN, which still means alive.
      const { sock } = ownerOf(lockFile());
      const pending = [];
      for (let i = 0; i < 600; i++) pending.push(connectCode(path.join(lockDir(), sock)));
      const codes = await Promise.all(pending);
      assert.ok(codes.includes('EAGAIN'), `no full backlog: ${[...new Set(codes)]}`);
      for (let i = 0; i < 3; i++) {
        const err = await rejects(acquireLock(tmp()));
        assert.equal(err.code, 'ERR_QUEUE_LOCKED');
        assert.equal(err.retryable, true);
        assert.equal(err.message, `queue '${tmp()}' is in use by process ${child.pid} (thread 0)`);
      }
    } finally {
      await killed(child);
    }
    await acquireLock(tmp());
    assertMine(lockFile());
    await releaseLock(lockFile());
  });

  it('takes over the lock of a zombie owner (killed, not reaped by its parent)', async function () {
    // sh starts the owner, then becomes `sleep`, which never reaps it.
    const parent = spawn('sh', ['-c', '"$0" "$@" & exec sleep 1000', process.execPath, OWNER, tmp()]);
    try {
      const { owned } = await firstLine(parent);
      process.kill(owned, 'SIGKILL');
      let state = '';
      for (let i = 0; i < 200 && state !== 'Z'; i++) {
        await new Promise((r) => setTimeout(r, 10));
        const stat = fs.readFileSync(`/proc/${owned}/stat`, 'latin1');
        state = stat.slice(stat.lastIndexOf(')') + 2)[0];
      }
      assert.equal(state, 'Z', 'the owner is not a zombie');
      await acquireLock(tmp());
      assertMine(lockFile());
      await releaseLock(lockFile());
    } finally {
      await killed(parent);
    }
  });

  it('refuses, until it is removed by hand, a lock whose socket cannot be connected to for another reason; not retryable', async function () {
    fs.mkdirSync(lockDir());
    const sock = randomSock();
    // A symbolic link to itself: connecting fails with ELOOP.
    fs.symlinkSync(sock, path.join(lockDir(), sock));
    fs.writeFileSync(lockFile(), lockText(12345, sock));
    const err = await rejects(acquireLock(tmp()));
    assert.equal(err.code, 'ERR_QUEUE_LOCKED');
    assert.equal(err.retryable, false);
    assert.match(err.message, /process 12345 \(thread 0\).*\(ELOOP\)/);
    assert.ok(err.message.includes(`remove '${lockFile()}' by hand`), err.message);
    assert.equal(fs.readFileSync(lockFile(), 'latin1'), lockText(12345, sock));
  });

  /** The claim file of generation n for taking over the lock now in place. */
  function claimOf(n) {
    const ino = fs.statSync(lockFile(), { bigint: true }).ino;
    const text = fs.readFileSync(lockFile(), 'latin1');
    const key = createHash('sha256').update(`${ino}\n${text}`).digest('hex').slice(0, 16);
    return path.join(lockDir(), `take.${key}.${n}`);
  }

  it('leaves a stale lock to the live process that is taking it over', async function () {
    await staleLock(tmp());
    const stale = fs.readFileSync(lockFile(), 'latin1');
    const live = net.createServer();
    const liveSock = randomSock();
    await new Promise((r) => live.listen(path.join(lockDir(), liveSock), r));
    try {
      fs.writeFileSync(claimOf(0), lockText(4242, deadSocket(lockDir())));
      fs.writeFileSync(claimOf(1), lockText(4343, liveSock));
      const err = await rejects(acquireLock(tmp()));
      assert.equal(err.code, 'ERR_QUEUE_LOCKED');
      assert.equal(err.retryable, true);
      assert.equal(err.message, `queue '${tmp()}' is being taken over by process 4343 (thread 0); try again`);
      assert.equal(fs.readFileSync(lockFile(), 'latin1'), stale);
      assert.ok(fs.existsSync(claimOf(0)) && fs.existsSync(claimOf(1)));
    } finally {
      live.close();
    }
  });

  // 70: more than the 64 claims an earlier design stopped at.
  it('takes over a stale lock after 70 takers died holding their claims', async function () {
    await staleLock(tmp());
    const script = `require(${JSON.stringify(DIST_LOCK)}).acquireLock(process.argv[1]).then(() => console.log('took it'), (e) => console.log(e.message))`;
    for (let i = 0; i < 70; i++) {
      const r = spawnSync(process.execPath, ['-r', DIE_ON_CLAIM, '-e', script, tmp()], { encoding: 'utf8' });
      assert.equal(r.signal, 'SIGKILL', `taker ${i}: ${r.stdout}${r.stderr}`);
    }
    await acquireLock(tmp());
    assertMine(lockFile());
    // The claims, their drafts and the sockets of the dead takers: swept.
    assert.deepEqual(fs.readdirSync(lockDir()), [ownerOf(lockFile()).sock]);
    await releaseLock(lockFile());
  });

  it('lets exactly one of twelve processes racing for a stale lock win, and keep it', async function () {
    // Each round starts with a stale lock and a claim left by a dead
    // taker. The racers start together; a winner checks, after the others
    // are done, that the lock still names it. Any other error fails.
    const racers = 12;
    for (let round = 0; round < 6; round++) {
      await staleLock(tmp());
      fs.writeFileSync(claimOf(0), lockText(4242, deadSocket(lockDir())));
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
            console.log(owner.includes(' pid=' + process.pid + ' ') ? 'won' : 'won, then lost the lock');
          }, 800),
          (err) => console.log(err.code === 'ERR_QUEUE_LOCKED' && err.retryable ? err.code : String(err.stack)),
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
      assert.ok(outcomes.every((o) => o === 'won' || o === 'ERR_QUEUE_LOCKED'), `round ${round}: ${outcomes.join(', ')}`);
      assert.equal(outcomes.filter((o) => o === 'won').length, 1, `round ${round}: ${outcomes.join(', ')}`);
      // The winner exited holding it: stale, taken over by the next round.
    }
    await acquireLock(tmp());
    assert.deepEqual(fs.readdirSync(tmp()).sort(), ['.lock', '.lock.d']);
    await releaseLock(lockFile());
  });

  it('clears drafts, claims and sockets left by dead processes in its directory when it takes the lock, not those of live ones', async function () {
    fs.mkdirSync(lockDir());
    const live = net.createServer();
    const liveSock = randomSock();
    await new Promise((r) => live.listen(path.join(lockDir(), liveSock), r));
    try {
      const deadSock = deadSocket(lockDir());
      const debris = {
        // Drafts and claims naming a socket that refuses (its socket
        // listened before they were written) or that is gone.
        'draft.0123456789abcdef': lockText(4242, deadSock),
        'take.0123456789abcdef.0': lockText(4242, deadSock),
        'take.0123456789abcdef.1': lockText(4242, randomSock()),
        // One cut short, older than a live draft could be.
        'draft.aaaaaaaaaaaaaaaa': 'slimta-lock 1 pid=4',
      };
      const kept = {
        'draft.1111111111111111': lockText(4343, liveSock),
        'take.fedcba9876543210.0': lockText(4343, liveSock),
        // One cut short but young: a live taker may be writing it.
        'draft.bbbbbbbbbbbbbbbb': '',
        unrelated: '',
      };
      for (const [name, content] of Object.entries({ ...debris, ...kept })) {
        fs.writeFileSync(path.join(lockDir(), name), content);
      }
      // Sockets that refuse: named by a draft or claim (deadSock), which
      // was written once they listened, they never listen again; named by
      // none, one may be between its bind and its listen, so it goes only
      // once old.
      const oldSock = deadSocket(lockDir());
      const youngSock = deadSocket(lockDir());
      const old = new Date(Date.now() - 120000);
      for (const name of ['draft.aaaaaaaaaaaaaaaa', oldSock]) fs.utimesSync(path.join(lockDir(), name), old, old);
      // Beside the lock in the meta directory: not the lock's business.
      fs.writeFileSync(path.join(tmp(), '.lock.takeover'), '');

      await acquireLock(tmp());
      const mine = ownerOf(lockFile()).sock;
      assert.deepEqual(fs.readdirSync(lockDir()).sort(), [...Object.keys(kept), liveSock, youngSock, mine].sort());
      assert.deepEqual(fs.readdirSync(tmp()).sort(), ['.lock', '.lock.d', '.lock.takeover']);
      await releaseLock(lockFile());
    } finally {
      live.close();
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
    // A stale lock and something to sweep.
    await staleLock(tmp());
    fs.writeFileSync(path.join(lockDir(), 'draft.0123456789abcdef'), lockText(4242, deadSocket(lockDir())));
    const trace = path.join(tmp(), '.trace');
    const script = `require(${JSON.stringify(DIST_LOCK)}).acquireLock(process.argv[1]).then(() => console.log('ok'))`;
    const r = spawnSync('strace', ['-f', '-qq', '-y', '-e', 'trace=getdents64', '-o', trace, process.execPath, '-e', script, tmp()], {
      encoding: 'utf8',
    });
    assert.equal(r.stdout.trim(), 'ok', r.stderr);
    const calls = fs.readFileSync(trace, 'latin1').split('\n').filter((l) => l.includes('getdents64('));
    const of = (dir) => calls.filter((l) => l.includes(`<${dir}>`));
    assert.deepEqual(of(tmp()), [], 'the meta directory was listed');
    assert.ok(of(lockDir()).length > 0, `the lock's own directory was not swept:\n${calls.join('\n')}`);
    // Nothing but the socket of its lock, which Node removed as it exited.
    assert.deepEqual(fs.readdirSync(lockDir()).filter((n) => n !== ownerOf(lockFile()).sock), []);
  });

  describe('with a meta path longer than a socket address holds', function () {
    const longDir = () => path.join(tmp(), 'q'.repeat(100), 'meta');
    beforeEach(() => fs.mkdirSync(longDir(), { recursive: true }));

    it('refuses a live owner and takes over a killed one, through /proc/self/fd', async function () {
      const dir = longDir();
      assert.ok(Buffer.byteLength(path.join(dir, '.lock.d', randomSock())) > 108);
      const child = await startOwner(dir);
      try {
        const o = ownerOf(path.join(dir, '.lock'));
        assert.ok(fs.lstatSync(path.join(dir, '.lock.d', o.sock)).isSocket());
        const err = await rejects(acquireLock(dir));
        assert.equal(err.code, 'ERR_QUEUE_LOCKED');
        assert.equal(err.message, `queue '${dir}' is in use by process ${child.pid} (thread 0)`);
      } finally {
        await killed(child);
      }
      const file = await acquireLock(dir);
      assertMine(file);
      assert.deepEqual(fs.readdirSync(path.join(dir, '.lock.d')), [ownerOf(file).sock]);
      await releaseLock(file);
      assert.deepEqual(fs.readdirSync(path.join(dir, '.lock.d')), []);
    });

    it('fails, where no /proc can shorten the path, saying the meta directory cannot hold the socket; not retryable', async function () {
      if (rootWhy()) {
        console.log(`      (skipped: ${rootWhy()})`);
        this.skip();
      }
      // A mount namespace of its own, with /proc unmounted in it only.
      const r = spawnSync(
        'unshare',
        ['--mount', '--pid', '--fork', '--kill-child', 'sh', '-c', 'umount -l /proc && exec "$0" "$@"', process.execPath, OWNER, longDir()],
        { encoding: 'utf8', timeout: 20000 },
      );
      const line = JSON.parse(r.stdout.split('\n')[0]);
      assert.equal(line.code, 'ERR_QUEUE_LOCKED', r.stdout + r.stderr);
      assert.match(line.message, /meta directory cannot hold the lock's socket/);
      assert.match(line.message, /ENAMETOOLONG/);
      assert.equal(line.retryable, false);
      assert.ok(!fs.existsSync(path.join(longDir(), '.lock')), 'it took the lock with nothing to check it by');
    });
  });

  describe('between two copies of the module in one thread', function () {
    it('refuses the second copy while the first holds the lock, and lets it in once released', async function () {
      const copy = lockCopy();
      assert.notEqual(copy.acquireLock, acquireLock);
      const file = await acquireLock(tmp());
      const err = await rejects(copy.acquireLock(tmp()));
      assert.equal(err.code, 'ERR_QUEUE_LOCKED');
      assert.equal(err.retryable, true);
      assert.match(err.message, new RegExp(`in use by process ${process.pid} \\(thread 0\\)`));
      assertMine(file);
      await releaseLock(file);
      const theirs = await copy.acquireLock(tmp());
      assert.equal((await rejects(acquireLock(tmp()))).code, 'ERR_QUEUE_LOCKED');
      await copy.releaseLock(theirs);
      assert.ok(!fs.existsSync(lockFile()));
    });
  });

  describe('across PID namespaces', function () {
    before(function () {
      if (rootWhy()) {
        console.log(`    (skipped: ${rootWhy()}; these tests start an owner in a PID namespace of its own)`);
        this.skip();
      }
    });

    const inNamespace = (...args) => spawn('unshare', ['--pid', '--fork', '--mount-proc', '--kill-child', process.execPath, ...args]);

    it('refuses a lock whose owner lives in another PID namespace while it runs', async function () {
      const owner = inNamespace(OWNER, tmp());
      try {
        assert.deepEqual(await firstLine(owner), { owned: 1 });
        assert.equal(ownerOf(lockFile()).pid, 1);
        // Whatever runs as pid 1 here is another process: the socket tells.
        for (let i = 0; i < 3; i++) {
          const err = await rejects(acquireLock(tmp()));
          assert.equal(err.code, 'ERR_QUEUE_LOCKED');
          assert.equal(err.message, `queue '${tmp()}' is in use by process 1 (thread 0)`);
        }
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
        assert.equal(r.message, `queue '${tmp()}' is in use by process ${process.pid} (thread 0)`);
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
        assert.equal((await rejects(acquireLock(tmp()))).code, 'ERR_QUEUE_LOCKED');
      } finally {
        await killNamespace(first);
      }
      const firstSock = ownerOf(lockFile()).sock;
      // The restarted container: a new PID namespace, no manual step.
      const second = inNamespace(OWNER, tmp());
      try {
        assert.deepEqual(await firstLine(second), { owned: 1 });
        assert.notEqual(ownerOf(lockFile()).sock, firstSock);
      } finally {
        await killNamespace(second);
      }
      // And from the root namespace, which sweeps the socket of the lock
      // it took over, as the second one did the first one's.
      await acquireLock(tmp());
      assertMine(lockFile());
      assert.deepEqual(fs.readdirSync(lockDir()), [ownerOf(lockFile()).sock]);
      await releaseLock(lockFile());
    });

    it('takes over the lock of an owner in another PID namespace that ended with process.exit() holding it', async function () {
      const script = `require(${JSON.stringify(DIST_LOCK)}).acquireLock(process.argv[1]).then(() => process.exit(0))`;
      const r = spawnSync('unshare', ['--pid', '--fork', '--mount-proc', '--kill-child', process.execPath, '-e', script, tmp()], {
        encoding: 'utf8',
      });
      assert.equal(r.status, 0, r.stderr);
      assert.equal(ownerOf(lockFile()).pid, 1);
      await acquireLock(tmp());
      assertMine(lockFile());
      assert.deepEqual(fs.readdirSync(lockDir()), [ownerOf(lockFile()).sock]);
      await releaseLock(lockFile());
    });

    it('judges a worker owner in another PID namespace by its socket: alive while it runs, taken over once it ended', async function () {
      const owner = inNamespace(WORKER_OWNER, tmp());
      const lines = linesOf(owner);
      try {
        const r = await lines.next();
        assert.ok(r.owned > 0, JSON.stringify(r));
        const err = await rejects(acquireLock(tmp()));
        assert.equal(err.code, 'ERR_QUEUE_LOCKED');
        assert.equal(err.message, `queue '${tmp()}' is in use by process 1 (thread ${r.owned})`);
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

    it('judges an owner in another PID namespace with a meta path longer than a socket address holds', async function () {
      const dir = path.join(tmp(), 'q'.repeat(100), 'meta');
      fs.mkdirSync(dir, { recursive: true });
      const owner = inNamespace(OWNER, dir);
      try {
        assert.deepEqual(await firstLine(owner), { owned: 1 });
        const err = await rejects(acquireLock(dir));
        assert.equal(err.code, 'ERR_QUEUE_LOCKED');
        assert.equal(err.message, `queue '${dir}' is in use by process 1 (thread 0)`);
      } finally {
        await killNamespace(owner);
      }
      const file = await acquireLock(dir);
      assertMine(file);
      await releaseLock(file);
      assert.deepEqual(fs.readdirSync(path.join(dir, '.lock.d')), []);
    });

    it('refuses a live owner that sees another boot id (as in a systemd-nspawn container)', async function () {
      if (spawnSync('unshare', ['--mount', 'true']).status !== 0) this.skip();
      fs.mkdirSync(path.join(tmp(), 'meta'));
      // Its own boot id, as a container manager gives it: it still runs.
      const owner = spawn('unshare', [
        '--mount', '--pid', '--fork', '--mount-proc', '--kill-child', 'sh', '-c',
        'cat /proc/sys/kernel/random/uuid > "$1/boot_id" && mount --bind "$1/boot_id" /proc/sys/kernel/random/boot_id && shift && exec "$@"',
        'sh', tmp(), process.execPath, OWNER, path.join(tmp(), 'meta'),
      ]);
      try {
        assert.deepEqual(await firstLine(owner), { owned: 1 });
        const err = await rejects(acquireLock(path.join(tmp(), 'meta')));
        assert.equal(err.code, 'ERR_QUEUE_LOCKED');
      } finally {
        await killNamespace(owner);
      }
    });
  });

  describe('between threads', function () {
    it('refuses a second thread of the process while the owner thread holds it', async function () {
      const file = await acquireLock(tmp());
      const t = lockThread({ dir: tmp(), then: 'release' });
      try {
        const r = await t.next();
        assert.equal(r.code, 'ERR_QUEUE_LOCKED', JSON.stringify(r));
        assert.equal(r.message, `queue '${tmp()}' is in use by process ${process.pid} (thread 0)`);
      } finally {
        await t.worker.terminate();
        await releaseLock(file);
      }
    });

    it('lets another thread take it once the owner thread has released it', async function () {
      const t = lockThread({ dir: tmp(), then: 'release' });
      const r = await t.next();
      assert.ok(r.owned > 0, JSON.stringify(r));
      assert.equal(await t.next(), 'released');
      assert.ok(!fs.existsSync(lockFile()), 'the owner thread released, but the lock file stays');
      await t.exited;
      await acquireLock(tmp());
      assertMine(lockFile());
      await releaseLock(lockFile());
    });

    it('takes over the lock of an owner thread that ended without releasing it', async function () {
      const t = lockThread({ dir: tmp(), then: 'hold' });
      const r = await t.next();
      assert.ok(r.owned > 0, JSON.stringify(r));
      assert.equal(ownerOf(lockFile()).thread, r.owned);
      const err = await rejects(acquireLock(tmp()));
      assert.equal(err.code, 'ERR_QUEUE_LOCKED');
      assert.equal(err.message, `queue '${tmp()}' is in use by process ${process.pid} (thread ${r.owned})`);
      await t.worker.terminate();
      await acquireLock(tmp());
      assertMine(lockFile());
      await releaseLock(lockFile());
    });

    it('takes over, from the main thread, the lock of a worker of its process that ended', async function () {
      const p = spawn(process.execPath, [WORKER_OWNER, tmp()]);
      const lines = linesOf(p);
      try {
        const r = await lines.next();
        assert.ok(r.owned > 0, JSON.stringify(r));
        p.stdin.write('take\n');
        const refused = await lines.next();
        assert.equal(refused.code, 'ERR_QUEUE_LOCKED', JSON.stringify(refused));
        assert.equal(refused.message, `queue '${tmp()}' is in use by process ${p.pid} (thread ${r.owned})`);
        p.stdin.write('end\n');
        assert.deepEqual(await lines.next(), { ended: 1 });
        p.stdin.write('take\n');
        assert.deepEqual(await lines.next(), { taken: true });
        assert.equal(ownerOf(lockFile()).thread, 0);
      } finally {
        await killed(p);
      }
    });
  });
});
