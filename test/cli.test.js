'use strict';
// The slimta-queue command, run as a child process the way people and
// scripts run it: exit codes, stdout, stderr, and what it leaves on disk.

const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

const { corpusDir, useTempDir } = require('./helpers');

const BIN = path.join(__dirname, '..', 'bin', 'slimta-queue.js');
const ID = /^[0-9a-f]{32}$/;

/** Runs slimta-queue; stdout and stderr as Buffers, `input` on stdin. */
function run(args, input) {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    input,
    timeout: 60000,
    maxBuffer: 256 * 1024 * 1024,
  });
  if (r.error) throw r.error;
  return {
    status: r.status,
    stdout: r.stdout,
    stderr: r.stderr.toString('utf8'),
    text: r.stdout.toString('utf8'),
  };
}

/** Runs a command that must succeed; returns its stdout as text. */
function ok(args, input) {
  const r = run(args, input);
  assert.equal(r.status, 0, `slimta-queue ${args.join(' ')}: ${r.stderr}`);
  return r.text;
}

function sha256(buf) {
  return crypto.createHash('sha256').update(buf).digest('hex');
}

/** Every file under `dir` with its sha256, to show nothing moved. */
function snapshot(dir) {
  const out = {};
  for (const entry of fs.readdirSync(dir, { recursive: true })) {
    const file = path.join(dir, entry);
    const st = fs.statSync(file);
    out[entry] = st.isFile() ? sha256(fs.readFileSync(file)) : 'dir';
  }
  return out;
}

function assertOneErrorLine(r, status) {
  assert.equal(r.status, status, r.stderr);
  assert.match(r.stderr, /^slimta-queue: [^\n]+\n$/);
}

/** C0 but LF, DEL, C1, format characters and the line separators. */
const UNSAFE_CHAR = /[\x00-\x09\x0b-\x1f\x7f-\x9f\p{Cf}\u2028\u2029]/u;

/**
 * Fails unless `out` is valid UTF-8 (so no raw 0x80-0x9f byte) holding
 * no control or format character. LF is allowed everywhere, TAB only
 * after the first empty line, in the message that `show` prints.
 */
function assertNoControlBytes(out, { message = false } = {}) {
  let text;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(out);
  } catch {
    assert.fail('output is not valid UTF-8');
  }

  const split = message ? text.indexOf('\n\n') : -1;
  const parts =
    split === -1 ? [text, ''] : [text.slice(0, split), text.slice(split)];

  for (const [part, allowTab] of [[parts[0], false], [parts[1], true]]) {
    const found = part.replace(allowTab ? /\t/g : /^$/, '').match(UNSAFE_CHAR);
    if (found) {
      const cp = found[0].codePointAt(0).toString(16);
      assert.fail(`U+${cp.padStart(4, '0')} in output: ${JSON.stringify(part)}`);
    }
  }
}

/** Flips one byte six from the end of `file`. */
function flipNearEnd(file) {
  const bytes = fs.readFileSync(file);
  bytes[bytes.length - 6] ^= 0xff;
  fs.writeFileSync(file, bytes);
}

describe('slimta-queue', function () {
  this.timeout(120000);
  const tmp = useTempDir('slimta-cli-');
  const queue = () => path.join(tmp(), 'queue');

  /** Writes `raw` to a file and enqueues it; returns the id. */
  function enqueueBytes(raw, extra = []) {
    const file = path.join(tmp(), `m${crypto.randomUUID()}.eml`);
    fs.writeFileSync(file, raw);
    const out = ok([
      'enqueue', '--queue', queue(), ...extra, file,
    ]);
    assert.match(out.trim(), ID);
    return out.trim();
  }

  describe('enqueue, then list and show in new processes', function () {
    const corpus = [
      '001-rfc2822-appendix-simple-crlf.eml',
      '018-mbox-from-line-pdf-attachment.eml',
    ];

    before(function () {
      if (!corpusDir) {
        console.log('    (no corpus beside the repository: skipped)');
        this.skip();
      }
    });

    it('lists each message and shows its exact stored bytes', function () {
      const files = corpus.map((f) => path.join(corpusDir, f));
      const out = ok([
        'enqueue', '--queue', queue(),
        '--from', 'joe@example.net',
        '--to', 'larry@example.com', '--to', 'moe@example.com',
        ...files,
      ]);
      const ids = out.trim().split('\n');
      assert.equal(ids.length, 2);
      ids.forEach((id) => assert.match(id, ID));

      const table = ok(['list', '--queue', queue()]);
      const lines = table.trimEnd().split('\n');
      assert.match(lines[0], /^ID +SIZE +NEXT ATTEMPT +TRIES +SENDER/);
      assert.equal(lines.at(-1), '2 messages');
      for (const id of ids) {
        const row = lines.find((l) => l.startsWith(id));
        assert.ok(row, `no row for ${id}`);
        assert.match(row, /joe@example\.net +larry@example\.com, moe@/);
        assert.match(row, / \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ /);
      }

      ids.forEach((id, i) => {
        const raw = run(['show', '--queue', queue(), '--raw', id]);
        assert.equal(raw.status, 0, raw.stderr);
        assert.equal(sha256(raw.stdout), sha256(fs.readFileSync(files[i])));
      });

      const shown = ok(['show', '--queue', queue(), ids[0]]);
      assert.match(shown, new RegExp(`^id: ${ids[0]}\n`));
      assert.match(shown, /\nsender: joe@example\.net\n/);
      assert.match(shown, /\nrecipient: larry@example\.com\n/);
      assert.match(shown, /\nrecipient: moe@example\.com\n/);
      assert.match(shown, /\nclient protocol: local\n/);
      assert.match(shown, /\n\nFrom: John Doe <jdoe@machine\.example>\n/);
      assert.match(shown, /\nSubject: Saying Hello\n/);
      assert.doesNotMatch(shown, /\r/);

      const mbox = ok(['show', '--queue', queue(), ids[1]]);
      assert.match(mbox, /\n\nFrom \S+/);
    });

    it('prints {id, file, bytes} with --json', function () {
      const file = path.join(corpusDir, corpus[0]);
      const out = ok([
        'enqueue', '-q', queue(), '-f', 'a@x', '-t', 'b@y', '--json', file,
      ]);
      const obj = JSON.parse(out);
      assert.match(obj.id, ID);
      assert.equal(obj.file, file);
      assert.equal(obj.bytes, fs.statSync(file).size);
    });
  });

  describe('enqueue', function () {
    it('reads standard input for -', function () {
      const raw = Buffer.from('Subject: stdin\r\n\r\nbody\r\n');
      const id = ok(
        ['enqueue', '-q', queue(), '-f', 'a@x', '-t', 'b@y', '-'],
        raw,
      ).trim();
      const back = run(['show', '-q', queue(), '--raw', id]);
      assert.deepEqual(back.stdout, raw);
    });

    it('sets the next attempt from --at and list sorts by it', function () {
      const late = enqueueBytes('Subject: late\n\n', [
        '-f', 'a@x', '-t', 'b@y', '--at', '2000000000',
      ]);
      const early = enqueueBytes('Subject: early\n\n', [
        '-f', 'a@x', '-t', 'b@y', '--at', '1000000000',
      ]);
      const lines = ok(['list', '-q', queue()]).split('\n');
      assert.ok(lines[1].startsWith(early));
      assert.match(lines[1], / 2001-09-09T01:46:40Z /);
      assert.ok(lines[2].startsWith(late));

      const json = ok(['list', '-q', queue(), '--json'])
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l));
      assert.deepEqual(
        json.map((m) => [m.id, m.nextAttempt]),
        [[early, 1000000000], [late, 2000000000]],
      );
    });

    it("keeps --from '' as the null sender, shown as <>", function () {
      const id = enqueueBytes('Subject: bounce\n\n', [
        '--from', '', '--to', 'b@y',
      ]);
      assert.match(ok(['list', '-q', queue()]), new RegExp(`${id} .* <> +b@y`));
      assert.match(ok(['show', '-q', queue(), id]), /\nsender: <>\n/);
      const json = JSON.parse(ok(['list', '-q', queue(), '--json']));
      assert.equal(json.sender, '');
      const shown = JSON.parse(ok(['show', '-q', queue(), '--json', id]));
      assert.equal(shown.sender, '');
    });

    it('queues nothing when one of the files is unreadable', function () {
      const good = path.join(tmp(), 'good.eml');
      fs.writeFileSync(good, 'Subject: x\n\n');
      const r = run([
        'enqueue', '-q', queue(), '-f', 'a@x', '-t', 'b@y',
        good, path.join(tmp(), 'missing.eml'),
      ]);
      assertOneErrorLine(r, 1);
      assert.match(r.stderr, /cannot read '.*missing\.eml': ENOENT/);
      assert.equal(r.text, '');
      assert.equal(fs.existsSync(queue()), false);
    });

    it('enqueues beside another process that owns the queue', async function () {
      const { openStore } = require('./helpers');
      const owner = openStore(queue(), 'js');
      for await (const entry of owner.load()) assert.fail(`unexpected ${entry}`);
      assert.ok(fs.existsSync(path.join(queue(), 'meta', '.lock')));
      try {
        const file = path.join(tmp(), 'x.eml');
        fs.writeFileSync(file, 'Subject: x\n\n');
        const r = run(['enqueue', '-q', queue(), '-f', 'a', '-t', 'b', file]);
        assert.equal(r.status, 0, r.stderr);
        const id = r.text.trim();
        const seen = [];
        for await (const [, i] of owner.load()) seen.push(i);
        assert.deepEqual(seen, [id]);
        assert.match(ok(['list', '-q', queue()]), /^1 message\n$/m);
      } finally {
        await owner.close();
      }
    });

    it('creates the queue directories', function () {
      enqueueBytes('Subject: x\n\n', ['-f', 'a@x', '-t', 'b@y']);
      for (const sub of ['env', 'meta', 'tmp']) {
        assert.ok(fs.statSync(path.join(queue(), sub)).isDirectory());
      }
    });

    it('shows no progress line when stderr is not a terminal', function () {
      const files = [];
      for (let i = 0; i < 12; i++) {
        files.push(path.join(tmp(), `p${i}.eml`));
        fs.writeFileSync(files[i], `Subject: ${i}\n\n`);
      }
      const r = run([
        'enqueue', '-q', queue(), '-f', 'a@x', '-t', 'b@y', ...files,
      ]);
      assert.equal(r.status, 0);
      assert.equal(r.stderr, '');
      assert.equal(r.text.trim().split('\n').length, 12);
    });
  });

  describe('list', function () {
    it('prints every one of 5,000 recipients with --json', function () {
      const rcpts = Array.from({ length: 5000 }, (_, i) => `r${i}@example.com`);
      const id = enqueueBytes('Subject: many\n\nhi\n', [
        '-f', 'a@x', ...rcpts.flatMap((r) => ['--to', r]),
      ]);

      const json = JSON.parse(ok(['list', '-q', queue(), '--json']));
      assert.equal(json.id, id);
      assert.deepEqual(json.recipients, rcpts);
      assert.equal(json.attempts, 0);
      assert.equal(typeof json.size, 'number');

      const row = ok(['list', '-q', queue()]).split('\n')[1];
      assert.match(row, /r0@example\.com, r1@example\.com \+4998 more$/);
    });

    it('says 0 messages for an empty queue', function () {
      fs.mkdirSync(path.join(queue(), 'env'), { recursive: true });
      fs.mkdirSync(path.join(queue(), 'meta'));
      fs.mkdirSync(path.join(queue(), 'tmp'));
      assert.equal(ok(['list', '-q', queue()]), '0 messages\n');
      assert.equal(ok(['list', '-q', queue(), '--json']), '');
    });

    it('warns about a damaged message and moves nothing', function () {
      const flags = ['-f', 'a@x', '-t', 'b@y'];
      const good = enqueueBytes('Subject: good\n\n', flags);
      const bad = enqueueBytes('Subject: bad\n\n', flags);
      const metaFile = path.join(queue(), 'meta', `${bad}.meta`);
      const meta = fs.readFileSync(metaFile);
      meta[meta.length - 1] ^= 0xff;
      fs.writeFileSync(metaFile, meta);
      const before = snapshot(queue());

      const r = run(['list', '-q', queue()]);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, new RegExp(`^slimta-queue: warning: .*${bad}`));
      assert.equal(r.stderr.split('\n').length, 2);
      assert.match(r.text, new RegExp(`\n${good} `));
      assert.doesNotMatch(r.text, new RegExp(bad));
      assert.match(r.text, /\n1 message\n$/);

      assert.deepEqual(snapshot(queue()), before);
    });

    it('warns about a damaged env file, fails as it was the only one', function () {
      const id = enqueueBytes('Subject: x\n\nbody\n', ['-f', 'a@x', '-t', 'b@y']);
      flipNearEnd(path.join(queue(), 'env', `${id}.env`));
      const before = snapshot(queue());

      const r = run(['list', '-q', queue()]);
      assert.equal(r.status, 1, r.stderr);
      const lines = r.stderr.trimEnd().split('\n');
      assert.equal(lines.length, 2, r.stderr);
      assert.match(
        lines[0],
        new RegExp(`^slimta-queue: warning: skipped message ${id}: .*checksum`),
      );
      assert.equal(lines[1], 'slimta-queue: 1 message found, none could be read');
      assert.deepEqual(snapshot(queue()), before);
    });

    it('reads a queue that has no tmp/ directory', function () {
      const id = enqueueBytes('Subject: x\n\n', ['-f', 'a@x', '-t', 'b@y']);
      fs.rmdirSync(path.join(queue(), 'tmp'));
      assert.match(ok(['list', '-q', queue()]), new RegExp(`\n${id} `));
      assert.equal(fs.existsSync(path.join(queue(), 'tmp')), false);
    });

    it('fails when no message could be read', function () {
      const bad = enqueueBytes('Subject: bad\n\n', ['-f', 'a@x', '-t', 'b@y']);
      const metaFile = path.join(queue(), 'meta', `${bad}.meta`);
      fs.writeFileSync(metaFile, 'garbage');

      const r = run(['list', '-q', queue()]);
      assert.equal(r.status, 1);
      const lines = r.stderr.trimEnd().split('\n');
      assert.equal(lines.length, 2);
      assert.ok(lines.every((l) => l.startsWith('slimta-queue: ')));
      assert.ok(fs.existsSync(metaFile));
    });
  });

  describe('show', function () {
    const ESC_RAW = Buffer.concat([
      Buffer.from('Subject: \x1b[31mred\x1b[0m \x07bell\x7f\r\n', 'latin1'),
      Buffer.from('X-C1: \xc2\x9b6n csi\r\n', 'latin1'),
      Buffer.from('X-Bad: \xff\xfe\r\n', 'latin1'),
      Buffer.from('X-Raw-C1: \x9b6n \x80\x85\x9f\r\n', 'latin1'),
      Buffer.from('X-Bidi: \u202eevil\u2066 \u200b\ufeff\r\n\r\n', 'utf8'),
      Buffer.from('body \x1b]0;title\x07 bare\rcr \xc2\x85 end\r\n', 'latin1'),
      Buffer.from('line\u2028sep \u{e0001}tag', 'utf8'),
      Buffer.from(' \x9b raw\r\n', 'latin1'),
      Buffer.from('tab\tkept caf\xc3\xa9 stays\n', 'latin1'),
    ]);

    it('shows control bytes of message and envelope as escapes', function () {
      const id = enqueueBytes(ESC_RAW, [
        '--from', 'evil\x1b[2J@x\u202e',
        '--to', 'r\x07\u009b@y', '--to', 'a\tb@x', '--to', 'plain@y',
      ]);

      const r = run(['show', '-q', queue(), id]);
      assert.equal(r.status, 0, r.stderr);
      assertNoControlBytes(r.stdout, { message: true });
      const text = r.text;
      assert.match(text, /\nsender: evil\\x1b\[2J@x\\u202e\n/);
      assert.match(text, /\nrecipient: r\\x07\\u009b@y\n/);
      assert.match(text, /\nrecipient: a\\tb@x\n/);
      assert.ok(text.includes(`\nmessage size: ${ESC_RAW.length}\n`));
      assert.match(text, /\nstored size: \d+\n/);
      assert.ok(text.includes('Subject: \\x1b[31mred\\x1b[0m \\x07bell\\x7f\n'));
      assert.ok(text.includes('X-C1: \\u009b6n csi\n'));
      assert.ok(text.includes('X-Bad: \\xff\\xfe\n'));
      assert.ok(text.includes('X-Raw-C1: \\x9b6n \\x80\\x85\\x9f\n'));
      assert.ok(text.includes('X-Bidi: \\u202eevil\\u2066 \\u200b\\ufeff\n'));
      assert.ok(text.includes('body \\x1b]0;title\\x07 bare\\rcr \\u0085 end\n'));
      assert.ok(text.includes('line\\u2028sep \\u{e0001}tag \\x9b raw\n'));
      assert.ok(text.includes('tab\tkept café stays\n'));

      const raw = run(['show', '-q', queue(), '--raw', id]);
      assert.deepEqual(raw.stdout, ESC_RAW);
    });

    it('fails with one line for a damaged env file', function () {
      const id = enqueueBytes('Subject: x\n\nbody\n', ['-f', 'a@x', '-t', 'b@y']);
      flipNearEnd(path.join(queue(), 'env', `${id}.env`));
      for (const flags of [[], ['--raw'], ['--json']]) {
        const r = run(['show', '-q', queue(), ...flags, id]);
        assertOneErrorLine(r, 1);
        assert.match(r.stderr, new RegExp(`${id}\\.env'?: checksum`));
        assert.equal(r.text, '');
      }
    });

    it('escapes the same bytes in list and in JSON output', function () {
      const id = enqueueBytes(ESC_RAW, [
        '--from', 'evil\x1b@x\u2067', '--to', 'r\x7f\u0085@y',
        '--to', 't\tab\u202e@y',
      ]);
      for (const args of [
        ['list', '-q', queue()],
        ['list', '-q', queue(), '--json'],
        ['show', '-q', queue(), '--json', id],
      ]) {
        const r = run(args);
        assert.equal(r.status, 0, r.stderr);
        assertNoControlBytes(r.stdout);
      }
      assert.match(
        ok(['list', '-q', queue()]),
        / evil\\x1b@x\\u2067 +r\\x7f\\u0085@y, t\\tab\\u202e@y\n/,
      );
      const line = ok(['list', '-q', queue(), '--json']);
      assert.ok(line.includes('"evil\\u001b@x\\u2067"'), line);
      assert.ok(line.includes('"t\\tab\\u202e@y"'), line);
      const json = JSON.parse(line);
      assert.equal(json.sender, 'evil\x1b@x\u2067');
      assert.deepEqual(json.recipients, ['r\x7f\u0085@y', 't\tab\u202e@y']);

      const shown = JSON.parse(ok(['show', '-q', queue(), '--json', id]));
      assert.deepEqual(Buffer.from(shown.message, 'base64'), ESC_RAW);
      assert.equal(shown.client.protocol, 'local');
      assert.equal(shown.client.ip, null);
    });
  });

  describe('errors', function () {
    const anId = '0123456789abcdef0123456789abcdef';

    function withQueue() {
      enqueueBytes('Subject: x\n\n', ['-f', 'a@x', '-t', 'b@y']);
    }

    const q = () => ['-q', queue()];
    const nowhere = () => ['-q', path.join(tmp(), 'nope')];
    const enq = (...a) => ['enqueue', ...q(), ...a];
    const show = (...a) => ['show', ...q(), ...a];
    const send = ['-f', 'a', '-t', 'b'];

    const cases = [
      ['no command', () => [], 2],
      ['an unknown command', () => ['frobnicate'], 2],
      ['an unknown option', () => ['list', ...q(), '--bogus'], 2],
      ['list without --queue', () => ['list'], 2],
      ['show without an id', () => show(), 2],
      ['enqueue without --from', () => enq('-t', 'b', 'f'), 2],
      ['enqueue without --to', () => enq('-f', 'a', 'f'), 2],
      ['enqueue without files', () => enq(...send), 2],
      ['a --to with a line break', () => enq('-f', 'a', '-t', 'b\nc', 'f'), 2],
      ['a --to with a CR', () => enq('-f', 'a', '-t', 'b\rc', 'f'), 2],
      ['a --at that is no number', () => enq(...send, '--at', 'x', 'f'), 2],
      ['a hexadecimal --at', () => enq(...send, '--at', '0x10', 'f'), 2],
      ['a negative --at', () => enq(...send, '--at', '-5', 'f'), 2],
      ['an exponent in --at', () => enq(...send, '--at', '1e9', 'f'), 2],
      ['help for an unknown command', () => ['help', 'bogus'], 2],
      ['show --raw with --json', () => show('--raw', '--json', anId), 2],
      ['an invalid id', () => show('not-an-id'), 2],
      ['an unreadable file', () => enq(...send, path.join(tmp(), 'no.eml')), 1],
      ['list of a missing queue', () => ['list', ...nowhere()], 1],
      ['show in a missing queue', () => ['show', ...nowhere(), anId], 1],
      ['list of a directory with no queue', () => ['list', '-q', tmp()], 1],
      ['an unknown id', () => (withQueue(), show(anId)), 1],
    ];

    for (const [what, args, status] of cases) {
      it(`exits ${status} with one line for ${what}`, function () {
        const r = run(args());
        assertOneErrorLine(r, status);
        assert.equal(r.text, '', 'nothing on stdout');
      });
    }

    it('refuses a --to with NUL (run in-process: argv cannot hold NUL)', async function () {
      const { main } = require('../dist/cli.js');
      const out = [];
      const err = [];
      const io = {
        stdout: { write: (s) => out.push(String(s)) || true },
        stderr: { write: (s) => err.push(String(s)) || true },
      };
      const args = ['enqueue', '-q', queue(), '-f', 'a', '-t', 'b\0c', 'f'];
      assert.equal(await main(args, io), 2);
      assert.equal(out.join(''), '');
      assert.match(err.join(''), /^slimta-queue: [^\n]*'b\\x00c'[^\n]*CR, LF or NUL\.\n$/);
      assert.equal(fs.existsSync(queue()), false);
    });

    it('shows a CR LF in an argument as visible escapes on its one error line', function () {
      const r = run(['enqueue', '-q', queue(), '-f', 'a\r\nb', '-t', 'c', 'f']);
      assertOneErrorLine(r, 2);
      assert.match(r.stderr, /'a\\r\\nb' is invalid\. An address/);
    });

    it('says a file given as the queue of enqueue is not a directory', function () {
      const file = path.join(tmp(), 'plain');
      fs.writeFileSync(file, 'x');
      const msg = path.join(tmp(), 'm.eml');
      fs.writeFileSync(msg, 'Subject: x\n\nbody\n');
      const r = run(['enqueue', '-q', file, '-f', 'a', '-t', 'b', msg]);
      assertOneErrorLine(r, 1);
      assert.equal(r.stderr, `slimta-queue: '${file}' is not a directory\n`);
    });

    it('says which command is unknown to help', function () {
      const r = run(['help', 'bogus']);
      assert.equal(r.stderr, "slimta-queue: unknown command 'bogus'\n");
    });

    it('stops quietly when the reader of its output goes away', function () {
      // About 170 kB of output: more than a pipe holds, so the write
      // meets the closed pipe.
      const to = Array.from({ length: 3000 }, (_, i) => [
        '-t',
        `r${i}@${'x'.repeat(40)}.example`,
      ]);
      enqueueBytes('Subject: many\n\n', ['-f', 'a@x', ...to.flat()]);
      const errFile = path.join(tmp(), 'stderr');
      const r = spawnSync(
        'bash',
        [
          '-c',
          '"$0" "$1" list --json -q "$2" 2>"$3" | head -c 10 >/dev/null; ' +
            'echo "${PIPESTATUS[0]}"',
          process.execPath, BIN, queue(), errFile,
        ],
        { encoding: 'utf8', timeout: 60000 },
      );
      assert.equal(r.status, 0, r.stderr);
      assert.equal(fs.readFileSync(errFile, 'utf8'), '');
      assert.equal(r.stdout, '0\n');
    });

    it('fails with one line when standard output cannot be written', function () {
      if (!fs.existsSync('/dev/full')) this.skip();
      const full = fs.openSync('/dev/full', 'w');
      try {
        for (const args of [['--help'], ['list', '-q', (withQueue(), queue())]]) {
          const r = spawnSync(process.execPath, [BIN, ...args], {
            stdio: ['ignore', full, 'pipe'],
            encoding: 'utf8',
            timeout: 60000,
          });
          assert.equal(r.status, 1, r.stderr);
          assert.equal(
            r.stderr,
            'slimta-queue: cannot write to standard output: ' +
              'ENOSPC: no space left on device\n',
          );
        }
      } finally {
        fs.closeSync(full);
      }
    });

    it('names the unknown id', function () {
      withQueue();
      const r = run(['show', '-q', queue(), anId]);
      assert.equal(r.stderr, `slimta-queue: no message ${anId} in the queue\n`);
    });

    it('never creates a missing queue for list or show', function () {
      run(['list', '-q', queue()]);
      run(['show', '-q', queue(), anId]);
      assert.equal(fs.existsSync(queue()), false);
    });
  });

  describe('help and version', function () {
    for (const cmd of [[], ['enqueue'], ['list'], ['show']]) {
      const name = ['slimta-queue', ...cmd, '--help'].join(' ');
      it(`documents the exit codes in ${name}`, function () {
        const out = ok([...cmd, '--help']);
        assert.match(out, /^Usage: slimta-queue/);
        assert.match(
          out,
          /Exit status:\n  0  success\n  1  failure .*\n  2  usage error/,
        );
      });
    }

    it('shows progress in place when stderr is a terminal', async function () {
      const { main } = require('../dist/cli.js');
      const files = [];
      for (let i = 0; i < 8; i++) {
        files.push(path.join(tmp(), `p${i}.eml`));
        fs.writeFileSync(files[i], `Subject: ${i}\n\n`);
      }
      const out = [];
      const err = [];
      const io = {
        stdout: { write: (s) => out.push(String(s)) || true },
        stderr: { write: (s) => err.push(String(s)) || true, isTTY: true },
      };
      const args = ['enqueue', '-q', queue(), '-f', 'a', '-t', 'b', ...files];
      assert.equal(await main(args, io), 0);
      assert.equal(out.join('').trim().split('\n').length, 8);
      assert.equal(err[0], '\r\x1b[Kenqueued 1/8');
      assert.ok(err.includes('\r\x1b[Kenqueued 8/8'));
      assert.equal(err.at(-1), '\r\x1b[K');
    });

    it('asks for a lowercase id in show --help', function () {
      assert.match(
        ok(['show', '--help']),
        /\n  id +message id \(32 lowercase hexadecimal characters\)/,
      );
    });

    it('prints the package version', function () {
      const { version } = require('../package.json');
      assert.equal(ok(['--version']), `${version}\n`);
    });

    it('runs in-process through main() with its streams', async function () {
      const { main } = require('../dist/cli.js');
      const out = [];
      const err = [];
      const io = {
        stdout: { write: (s) => out.push(String(s)) || true },
        stderr: { write: (s) => err.push(String(s)) || true },
      };
      assert.equal(await main(['list', '-q', queue()], io), 1);
      assert.equal(out.join(''), '');
      assert.match(err.join(''), /^slimta-queue: cannot open queue .*ENOENT/);
    });
  });
});
