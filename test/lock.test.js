'use strict';
// The queue lock: shared by the stores of one process, refused to another
// live process, taken over from a dead one (even after pid reuse), and
// won by exactly one of several processes racing for a stale lock.

const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const { useTempDir, rejects } = require('./helpers');
const { acquireLock, releaseLock } = require('../dist/lock.js');

const DIST_LOCK = path.resolve(__dirname, '..', 'dist', 'lock.js');

function identityOf(pid) {
  const boot = fs.readFileSync('/proc/sys/kernel/random/boot_id', 'latin1').trim();
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
  const start = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  return `${pid} ${boot} ${start}`;
}

function sleeper() {
  return spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)']);
}

describe('the queue lock', function () {
  this.timeout(30000);
  const tmp = useTempDir();
  const lockFile = () => path.join(tmp(), '.lock');

  it('is shared by stores of one process and removed when the last releases it', async function () {
    const a = await acquireLock(tmp());
    const b = await acquireLock(tmp());
    assert.equal(a, lockFile());
    assert.equal(fs.readFileSync(a, 'latin1').trim(), identityOf(process.pid));
    await releaseLock(a);
    assert.ok(fs.existsSync(lockFile()), 'released while another store holds it');
    await releaseLock(b);
    assert.ok(!fs.existsSync(lockFile()));
    assert.deepEqual(fs.readdirSync(tmp()), []);
  });

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
      child.kill();
    }
  });

  it('takes over a lock whose pid now belongs to another process (pid reuse)', async function () {
    const child = sleeper();
    try {
      await new Promise((r) => child.once('spawn', r));
      const reused = identityOf(child.pid).replace(/ \d+$/, ' 1');
      fs.writeFileSync(lockFile(), reused + '\n');
      await acquireLock(tmp());
      assert.equal(fs.readFileSync(lockFile(), 'latin1').trim(), identityOf(process.pid));
      await releaseLock(lockFile());
    } finally {
      child.kill();
    }
  });

  it('takes over an empty lock and one left by a dead taker', async function () {
    fs.writeFileSync(lockFile(), '');
    fs.writeFileSync(path.join(tmp(), '.lock.takeover'), '999999999 x 1\n');
    await acquireLock(tmp());
    assert.equal(fs.readFileSync(lockFile(), 'latin1').trim(), identityOf(process.pid));
    assert.ok(!fs.existsSync(path.join(tmp(), '.lock.takeover')));
    await releaseLock(lockFile());
  });

  it('lets exactly one of eight processes racing for a stale lock win', async function () {
    for (let round = 0; round < 5; round++) {
      fs.writeFileSync(lockFile(), '999999999 dead 1\n');
      const script = `
        require(${JSON.stringify(DIST_LOCK)}).acquireLock(process.argv[1]).then(
          () => { console.log('won'); setTimeout(() => {}, 1500); },
          (err) => console.log(err.code),
        );
      `;
      const children = Array.from({ length: 8 }, () =>
        spawn(process.execPath, ['-e', script, tmp()]),
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
      assert.equal(winners, 1, `round ${round}: ${outcomes.join(', ')}`);
      assert.ok(outcomes.every((o) => o === 'won' || o === 'ERR_QUEUE_LOCKED'), outcomes.join(', '));
      fs.rmSync(lockFile());
    }
  });
});
