'use strict';
// DiskStorage: the seed behaviours of slimta's DiskStorage and the
// contract lines that a single process can show, on both backends.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

const {
  BACKENDS,
  useTempDir,
  lib,
  makeEnvelope,
  listDir,
  openStore,
  rejects,
} = require('./helpers');

const ID = /^[0-9a-f]{32}$/;

for (const io of BACKENDS) {
  describe(`DiskStorage (${io} backend)`, function () {
    const tmp = useTempDir();
    let store;
    beforeEach(() => {
      store = openStore(tmp(), io);
    });
    afterEach(async () => {
      await store.close();
    });
    const dir = (name) => path.join(tmp(), name);

    describe('#write()', function () {
      it('uses the backend it was asked for', function () {
        assert.equal(store.io, io);
      });

      it('returns a 32-character lowercase hex id', async function () {
        const id = await store.write(makeEnvelope(), 1700000000);
        assert.match(id, ID);
      });

      it('leaves one env file, one meta file and an empty tmp dir', async function () {
        const id = await store.write(makeEnvelope(), 1700000000);
        assert.deepEqual(listDir(dir('env')), [`${id}.env`]);
        assert.deepEqual(listDir(dir('meta')), [`${id}.meta`]);
        assert.deepEqual(listDir(dir('tmp')), []);
      });

      it('creates missing directories 0700 and files 0600', async function () {
        const id = await store.write(makeEnvelope(), 1);
        for (const d of ['env', 'meta', 'tmp']) {
          assert.equal(fs.statSync(dir(d)).mode & 0o777, 0o700, d);
        }
        assert.equal(
          fs.statSync(path.join(dir('env'), `${id}.env`)).mode & 0o777,
          0o600,
        );
        await store.setTimestamp(id, 2);
        assert.equal(
          fs.statSync(path.join(dir('meta'), `${id}.meta`)).mode & 0o777,
          0o600,
        );
      });

      it('gives distinct ids to 200 concurrent writes', async function () {
        const ids = await Promise.all(
          Array.from({ length: 200 }, (_, i) => store.write(makeEnvelope(), i)),
        );
        assert.equal(new Set(ids).size, 200);
        assert.equal(listDir(dir('env')).length, 200);
      });

      for (const bad of [NaN, Infinity, -Infinity, '1700000000', null, undefined, 10n]) {
        it(`rejects the timestamp ${String(bad)} with a TypeError and writes nothing`, async function () {
          const err = await rejects(store.write(makeEnvelope(), bad));
          assert.ok(err instanceof TypeError);
          assert.ok(err instanceof lib().QueueError);
          assert.equal(err.code, 'ERR_QUEUE_INVALID_ARGUMENT');
          assert.equal(err.retryable, false);
          assert.deepEqual(listDir(dir('env')), []);
          assert.deepEqual(listDir(dir('meta')), []);
        });
      }

      const refused = {
        'a CR in the sender': { sender: 'a@b\r\nRCPT TO:<x@y>' },
        'a LF in a recipient': { recipients: ['ok@x', 'a\nb@x'] },
        'a NUL in a recipient': { recipients: ['a\0b@x'] },
        'a lone surrogate in the sender': { sender: 'a\ud800@x' },
        'a lone surrogate in client.name': { client: { name: 'x\udc00' } },
        'a number as recipient': { recipients: [42] },
        'recipients that are not an array': { recipients: 'a@b' },
      };
      for (const [what, fields] of Object.entries(refused)) {
        it(`refuses ${what} with ERR_QUEUE_INVALID_ENVELOPE and writes nothing`, async function () {
          const env = makeEnvelope();
          Object.assign(env, fields);
          const err = await rejects(store.write(env, 1));
          assert.equal(err.code, 'ERR_QUEUE_INVALID_ENVELOPE');
          assert.equal(err.retryable, false);
          assert.deepEqual(listDir(dir('env')), []);
        });
      }

      it('stores a copy: a Buffer changed after the call does not change the message', async function () {
        const env = makeEnvelope();
        const body = Buffer.from('original body bytes');
        env.message = body;
        const pending = store.write(env, 1);
        body.fill(0x58);
        env.recipients.push('late@example.com');
        const id = await pending;
        const [back] = await store.get(id);
        assert.equal(back.message.toString(), 'original body bytes');
        assert.deepEqual(back.recipients, ['rcpt1@example.com', 'rcpt2@example.com']);
      });

      it('refuses a message over the 2 GiB maximum up front with ERR_QUEUE_TOO_LARGE', async function () {
        const { Envelope, MAX_ENV_FILE_SIZE } = lib();
        assert.equal(MAX_ENV_FILE_SIZE, 2 ** 31 - 1);
        // allocUnsafe leaves the pages untouched: 2 GiB of address space,
        // not of memory.
        const body = Buffer.allocUnsafe(MAX_ENV_FILE_SIZE);
        const env = Envelope.fromParts(Buffer.from('A: b\r\n\r\n'), body, {
          sender: 'a@x',
          recipients: ['b@y'],
        });
        const err = await rejects(store.write(env, 1));
        assert.equal(err.code, 'ERR_QUEUE_TOO_LARGE');
        assert.equal(err.retryable, false);
        assert.deepEqual(listDir(dir('tmp')), []);
        assert.deepEqual(listDir(dir('env')), []);
      });

      it('works with envDir === metaDir', async function () {
        const { DiskStorage } = lib();
        const same = new DiskStorage(dir('q'), dir('q'), undefined, { io });
        const id = await same.write(makeEnvelope(), 5);
        assert.deepEqual(fs.readdirSync(dir('q')).sort(), ['.quarantine', '.tmp', `${id}.env`, `${id}.meta`]);
        const [env] = await same.get(id);
        assert.equal(env.sender, 'sender@example.com');
        const loaded = [];
        for await (const entry of same.load()) loaded.push(entry);
        assert.deepEqual(loaded, [[5, id]]);
        await same.remove(id);
        assert.deepEqual(fs.readdirSync(dir('q')).sort(), ['.lock', '.lock.d', '.quarantine', '.tmp']);
        await same.close();
        // The lock's directory stays, empty: its socket went with the lock.
        assert.deepEqual(fs.readdirSync(dir('q')).sort(), ['.lock.d', '.quarantine', '.tmp']);
        assert.deepEqual(fs.readdirSync(path.join(dir('q'), '.lock.d')), []);
      });

      it('puts the default tmpDir inside envDir, never in the system temp dir', async function () {
        const { DiskStorage } = lib();
        const s = new DiskStorage(dir('e'), dir('m'), null, { io });
        assert.equal(s.tmpDir, path.join(dir('e'), '.tmp'));
        await s.write(makeEnvelope(), 1);
        assert.deepEqual(listDir(path.join(dir('e'), '.tmp')), []);
        await s.close();
      });
    });

    describe('#get()', function () {
      it('returns every field exactly as written', async function () {
        const { Envelope } = lib();
        const env = new Envelope({
          sender: '',
          recipients: ['z@x', 'ünïcödé@例え.jp', 'a@x', '𝔘𝔫𝔦@x', 'emoji-😀@x'],
          client: { ip: '192.0.2.1', host: 'mx.example', name: 'EHLO name ✓', protocol: 'ESMTPSA', auth: 'user' },
          receiver: 'receiver.example',
          timestamp: 1700000000.5,
        });
        env.parse(Buffer.from('Subject: héllo\r\n\r\nbody\r\n'));
        const id = await store.write(env, 1);
        const [back, attempts] = await store.get(id);
        assert.equal(attempts, 0);
        assert.ok(back instanceof Envelope);
        assert.equal(back.sender, '');
        assert.deepEqual(back.recipients, env.recipients);
        assert.deepEqual(back.client, env.client);
        assert.equal(back.receiver, 'receiver.example');
        assert.equal(back.timestamp, 1700000000.5);
        assert.deepEqual(back.flatten(), env.flatten());
        assert.equal(back.headers.get('subject'), 'héllo');
      });

      it('keeps a null sender, receiver and timestamp null', async function () {
        const { Envelope } = lib();
        const env = new Envelope({ sender: null, recipients: ['a@x'] });
        env.parse(Buffer.from('X: y\n\nz'));
        const [back] = await store.get(await store.write(env, 1));
        assert.equal(back.sender, null);
        assert.equal(back.receiver, null);
        assert.equal(back.timestamp, null);
        assert.deepEqual(back.client, { ip: null, host: null, name: null, protocol: null, auth: null });
      });

      it('keeps a body of every byte 0x00-0xFF with CR/LF mixes byte for byte', async function () {
        const bytes = [];
        for (let i = 0; i < 256; i++) bytes.push(i);
        const body = Buffer.concat([
          Buffer.from(bytes),
          Buffer.from('\r\n\n\r\r\r\n.\r\n\n.\n\r'),
          Buffer.from(bytes.reverse()),
        ]);
        const raw = Buffer.concat([Buffer.from('A: 1\n\r\n'), body]);
        const env = makeEnvelope({}, raw);
        const [back] = await store.get(await store.write(env, 1));
        assert.ok(back.message.equals(body));
        assert.ok(Buffer.concat(back.flatten()).equals(raw));
      });

      it('rejects an unknown id with ERR_QUEUE_NOT_FOUND', async function () {
        const err = await rejects(store.get('0'.repeat(32)));
        assert.equal(err.code, 'ERR_QUEUE_NOT_FOUND');
        assert.ok(err instanceof lib().NotFoundError);
        assert.equal(err.retryable, false);
      });
    });

    describe('timestamps', function () {
      for (const ts of [1700000000.1234567, 0.1 + 0.2, 1e12, 0, -0, -1.5, Number.MIN_VALUE, 1.7976931348623157e308]) {
        it(`keep ${Object.is(ts, -0) ? '-0' : ts} exactly (Object.is)`, async function () {
          const id = await store.write(makeEnvelope(), ts);
          let seen = [];
          for await (const entry of store.load()) seen.push(entry);
          assert.equal(seen.length, 1);
          assert.ok(Object.is(seen[0][0], ts), `${seen[0][0]} !== ${ts}`);
          await store.setTimestamp(id, ts / 3);
          seen = [];
          for await (const entry of store.load()) seen.push(entry);
          assert.ok(Object.is(seen[0][0], ts / 3));
        });
      }

      it('rejects a NaN timestamp in setTimestamp and leaves the meta as it was', async function () {
        const id = await store.write(makeEnvelope(), 10);
        const metaFile = path.join(dir('meta'), `${id}.meta`);
        const before = fs.readFileSync(metaFile);
        const err = await rejects(store.setTimestamp(id, NaN));
        assert.ok(err instanceof TypeError);
        assert.ok(fs.readFileSync(metaFile).equals(before));
      });
    });

    describe('#setTimestamp() and #incrementAttempts()', function () {
      it('counts attempts 1 then 2, and setTimestamp keeps them', async function () {
        const id = await store.write(makeEnvelope(), 1);
        assert.equal(await store.incrementAttempts(id), 1);
        assert.equal(await store.incrementAttempts(id), 2);
        await store.setTimestamp(id, 99);
        await store.setRecipientsDelivered(id, [0]);
        const [, attempts] = await store.get(id);
        assert.equal(attempts, 2);
      });

      it('counts on from the stored value in a new DiskStorage', async function () {
        const id = await store.write(makeEnvelope(), 1);
        await store.incrementAttempts(id);
        await store.incrementAttempts(id);
        const again = openStore(tmp(), io);
        assert.equal(await again.incrementAttempts(id), 3);
        assert.equal((await store.get(id))[1], 3);
        await again.close();
      });

      it('returns 1..100 to 100 concurrent incrementAttempts calls', async function () {
        const id = await store.write(makeEnvelope(), 1);
        const counts = await Promise.all(
          Array.from({ length: 100 }, () => store.incrementAttempts(id)),
        );
        assert.deepEqual(counts, Array.from({ length: 100 }, (_, i) => i + 1));
        assert.equal((await store.get(id))[1], 100);
      });

      it('applies interleaved updates on one id in call order', async function () {
        const id = await store.write(makeEnvelope(), 1);
        const calls = [];
        for (let i = 0; i < 30; i++) {
          calls.push(store.setTimestamp(id, i));
          calls.push(store.incrementAttempts(id));
        }
        await Promise.all(calls);
        const loaded = [];
        for await (const entry of store.load()) loaded.push(entry);
        assert.deepEqual(loaded, [[29, id]]);
        assert.equal((await store.get(id))[1], 30);
      });

      it('runs a read called after an update after it, on a fresh store too', async function () {
        const id = await store.write(makeEnvelope({ recipients: ['a@x', 'b@x'] }), 1);
        for (let round = 0; round < 5; round++) {
          const fresh = openStore(tmp(), io);
          const inc = fresh.incrementAttempts(id);
          const got = fresh.get(id);
          const ts = fresh.setTimestamp(id, 100 + round);
          const seen = fresh.inspect(id);
          const rcpt = fresh.setRecipientsDelivered(id, [0]);
          const after = fresh.get(id);
          assert.equal(await inc, round + 1);
          assert.equal((await got)[1], round + 1);
          await ts;
          assert.equal((await seen).timestamp, 100 + round);
          await rcpt;
          assert.deepEqual((await after)[0].recipients, ['b@x']);
          await fresh.close();
        }
      });

      it('runs a get() called after remove() after it', async function () {
        const id = await store.write(makeEnvelope(), 1);
        const removed = store.remove(id);
        const err = await rejects(store.get(id));
        await removed;
        assert.equal(err.code, 'ERR_QUEUE_NOT_FOUND');
      });

      it('loses no update between two stores of one queue in one thread', async function () {
        const id = await store.write(makeEnvelope(), 1);
        const other = openStore(tmp(), io);
        const counts = await Promise.all(
          Array.from({ length: 100 }, (_, i) =>
            (i % 2 ? other : store).incrementAttempts(id),
          ),
        );
        await other.close();
        assert.deepEqual(counts, Array.from({ length: 100 }, (_, i) => i + 1));
        assert.equal((await store.inspect(id)).attempts, 100);
      });

      it('loses no update between two stores of one queue spelt through a symlink', async function () {
        const id = await store.write(makeEnvelope(), 1);
        const link = path.join(tmp(), 'link');
        fs.symlinkSync(tmp(), link);
        const other = openStore(link, io);
        const counts = await Promise.all(
          Array.from({ length: 100 }, (_, i) =>
            (i % 2 ? other : store).incrementAttempts(id),
          ),
        );
        await other.close();
        assert.deepEqual(counts, Array.from({ length: 100 }, (_, i) => i + 1));
      });

      it('rejects updates of an unknown id with ERR_QUEUE_NOT_FOUND', async function () {
        const unknown = 'f'.repeat(32);
        for (const call of [
          () => store.setTimestamp(unknown, 1),
          () => store.incrementAttempts(unknown),
          () => store.setRecipientsDelivered(unknown, [0]),
        ]) {
          const err = await rejects(call());
          assert.equal(err.code, 'ERR_QUEUE_NOT_FOUND');
        }
        assert.deepEqual(listDir(dir('meta')), []);
        assert.deepEqual(listDir(dir('tmp')), []);
      });
    });

    describe('#setRecipientsDelivered()', function () {
      const rcpts = ['r0@x', 'r1@x', 'r2@x', 'r3@x', 'r4@x'];

      it('leaves out [1] then also [3] from get()', async function () {
        const id = await store.write(makeEnvelope({ recipients: rcpts }), 1);
        await store.setRecipientsDelivered(id, [1]);
        assert.deepEqual((await store.get(id))[0].recipients, ['r0@x', 'r2@x', 'r3@x', 'r4@x']);
        await store.setRecipientsDelivered(id, [3]);
        assert.deepEqual((await store.get(id))[0].recipients, ['r0@x', 'r2@x', 'r4@x']);
      });

      it('counts indexes against the envelope as first written, and repeats change nothing', async function () {
        const id = await store.write(makeEnvelope({ recipients: rcpts }), 1);
        await store.setRecipientsDelivered(id, [4, 0]);
        await store.setRecipientsDelivered(id, [4, 4, 0]);
        await store.setRecipientsDelivered(id, [2]);
        assert.deepEqual((await store.get(id))[0].recipients, ['r1@x', 'r3@x']);
        await store.setRecipientsDelivered(id, [1, 3]);
        assert.deepEqual((await store.get(id))[0].recipients, []);
      });

      it('uses the indexes as they were at the call, whatever the caller does to its array later', async function () {
        const id = await store.write(makeEnvelope({ recipients: rcpts }), 1);
        await store.setRecipientsDelivered(id, [1]);
        const indexes = [0];
        const call = store.setRecipientsDelivered(id, indexes);
        indexes.push(1.5, 99);
        indexes[0] = 4;
        await call;
        assert.deepEqual((await store.get(id))[0].recipients, ['r2@x', 'r3@x', 'r4@x']);
        const loaded = [];
        for await (const [, qid] of store.load()) loaded.push(qid);
        assert.deepEqual(loaded, [id]);
      });

      for (const bad of [[5], [-1], [1.5], ['1'], [NaN], [null], [2 ** 53], 1, 'x', null]) {
        it(`rejects ${JSON.stringify(bad)} with a TypeError and leaves the meta unchanged`, async function () {
          const id = await store.write(makeEnvelope({ recipients: rcpts }), 1);
          await store.setRecipientsDelivered(id, [2]);
          const metaFile = path.join(dir('meta'), `${id}.meta`);
          const before = fs.readFileSync(metaFile);
          const err = await rejects(store.setRecipientsDelivered(id, bad));
          assert.ok(err instanceof TypeError, String(err));
          assert.equal(err.code, 'ERR_QUEUE_INVALID_ARGUMENT');
          assert.ok(fs.readFileSync(metaFile).equals(before));
          assert.deepEqual(listDir(dir('tmp')), []);
        });
      }
    });

    describe('#load()', function () {
      it('yields every message once, with its timestamp', async function () {
        const expected = [];
        for (let i = 0; i < 600; i++) {
          expected.push([i + 0.25, await store.write(makeEnvelope(), i + 0.25)]);
        }
        const seen = [];
        for await (const entry of store.load()) seen.push(entry);
        const byId = (a, b) => (a[1] < b[1] ? -1 : 1);
        assert.deepEqual(seen.sort(byId), expected.sort(byId));
      });

      it('yields nothing for an empty queue', async function () {
        const seen = [];
        for await (const entry of store.load()) seen.push(entry);
        assert.deepEqual(seen, []);
      });
    });

    describe('#remove()', function () {
      it('removes both files', async function () {
        const id = await store.write(makeEnvelope(), 1);
        await store.remove(id);
        assert.deepEqual(listDir(dir('env')), []);
        assert.deepEqual(listDir(dir('meta')), []);
        const err = await rejects(store.get(id));
        assert.equal(err.code, 'ERR_QUEUE_NOT_FOUND');
      });

      it('removes a message whose env file is already gone', async function () {
        const id = await store.write(makeEnvelope(), 1);
        fs.unlinkSync(path.join(dir('env'), `${id}.env`));
        await store.remove(id);
        assert.deepEqual(listDir(dir('meta')), []);
      });

      it('removes a message whose meta file is already gone', async function () {
        const id = await store.write(makeEnvelope(), 1);
        fs.unlinkSync(path.join(dir('meta'), `${id}.meta`));
        await store.remove(id);
        assert.deepEqual(listDir(dir('env')), []);
      });

      it('succeeds again when neither file exists, so a failed remove can be retried', async function () {
        const id = await store.write(makeEnvelope(), 1);
        const other = await store.write(makeEnvelope(), 2);
        await store.remove(id);
        await store.remove(id);
        await store.remove('0'.repeat(32));
        assert.deepEqual(listDir(dir('meta')), [`${other}.meta`]);
        assert.deepEqual(listDir(dir('env')), [`${other}.env`]);
      });

      it('runs after updates queued before it on the same id', async function () {
        const id = await store.write(makeEnvelope(), 1);
        const results = await Promise.allSettled([
          store.incrementAttempts(id),
          store.setTimestamp(id, 5),
          store.remove(id),
          store.incrementAttempts(id),
        ]);
        assert.deepEqual(results.map((r) => r.status), ['fulfilled', 'fulfilled', 'fulfilled', 'rejected']);
        assert.equal((await Promise.allSettled([store.remove(id)]))[0].status, 'fulfilled');
        assert.equal(results[3].reason.code, 'ERR_QUEUE_NOT_FOUND');
        assert.deepEqual(listDir(dir('meta')), []);
      });
    });

    describe('#inspect()', function () {
      it('reports timestamp, attempts, size and delivered recipients from the meta', async function () {
        const id = await store.write(makeEnvelope({ recipients: ['a@x', 'b@x', 'c@x'] }), 1234.5);
        await store.incrementAttempts(id);
        await store.setRecipientsDelivered(id, [2, 0]);
        const info = await store.inspect(id);
        assert.deepEqual(info, {
          id,
          timestamp: 1234.5,
          attempts: 1,
          size: fs.statSync(path.join(dir('env'), `${id}.env`)).size,
          recipients: 3,
          delivered: [0, 2],
        });
        const err = await rejects(store.inspect('1'.repeat(32)));
        assert.equal(err.code, 'ERR_QUEUE_NOT_FOUND');
      });
    });

    describe('#getInfo()', function () {
      it('counts the messages', async function () {
        for (let i = 0; i < 3; i++) await store.write(makeEnvelope(), i);
        const info = await store.getInfo();
        assert.equal(info.size, 3);
        assert.equal(info.tmpFiles, 0);
        assert.equal(info.quarantined, 0);
        assert.equal(info.io, io);
      });
    });

    describe('#close()', function () {
      it('waits for writes in flight, then refuses new calls', async function () {
        const pending = Array.from({ length: 20 }, (_, i) => store.write(makeEnvelope(), i));
        await store.close();
        const settled = await Promise.allSettled(pending);
        assert.ok(settled.every((s) => s.status === 'fulfilled'));
        assert.equal(listDir(dir('env')).length, 20);
        const err = await rejects(store.write(makeEnvelope(), 1));
        assert.equal(err.code, 'ERR_QUEUE_CLOSED');
      });

      it('waits for the step of a load() under way, and ends the iteration after it', async function () {
        const ids = [];
        for (let i = 0; i < 6; i++) ids.push(await store.write(makeEnvelope(), i));
        // Damage all but the first, so that load() has quarantine work left.
        for (const id of ids.slice(1)) {
          fs.writeFileSync(path.join(dir('meta'), `${id}.meta`), 'junk');
        }
        const loading = openStore(tmp(), io, { graceMs: 0 });
        const moved = [];
        loading.on('quarantine', (r) => moved.push(r.id));
        const it = loading.load();
        const first = it.next();
        const closed = loading.close();
        await first;
        await closed;
        const lockFile = path.join(dir('meta'), '.lock');
        assert.equal(fs.existsSync(lockFile), false, 'the lock outlived close()');
        const count = moved.length;
        const err = await rejects(it.next());
        assert.equal(err.code, 'ERR_QUEUE_CLOSED');
        assert.equal(moved.length, count, 'load() went on after close()');
      });
    });

    describe('#close() twice', function () {
      it('gives the lock back once, so another store of the queue keeps it', async function () {
        const id = await store.write(makeEnvelope(), 1);
        const a = openStore(tmp(), io);
        const b = openStore(tmp(), io);
        await a.incrementAttempts(id);
        await b.incrementAttempts(id);
        await Promise.all([a.close(), a.close()]);
        await a.close();
        assert.ok(fs.existsSync(path.join(dir('meta'), '.lock')), 'b lost its lock');
        assert.equal(await b.incrementAttempts(id), 3);
        await b.close();
      });
    });

    describe('options', function () {
      for (const [what, options] of [
        ['a misspelt option', { readonly: true }],
        ['an unknown option', { bogus: 1 }],
        ['a non-boolean readOnly', { readOnly: 'yes' }],
        ['an empty quarantineDir', { quarantineDir: '' }],
      ]) {
        it(`refuses ${what} with ERR_QUEUE_INVALID_ARGUMENT`, function () {
          assert.throws(
            () => openStore(tmp(), io, options),
            (err) => err instanceof TypeError && err.code === 'ERR_QUEUE_INVALID_ARGUMENT',
          );
        });
      }

      it('refuses options that are not an object', function () {
        const { DiskStorage } = lib();
        assert.throws(
          () => new DiskStorage(dir('e'), dir('m'), null, 'js'),
          (err) => err.code === 'ERR_QUEUE_INVALID_ARGUMENT',
        );
      });
    });
  });
}
