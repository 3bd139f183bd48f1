'use strict';

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const fc = require('fast-check');

const { Envelope, Headers } = require('../dist/envelope.js');
const { corpusDir } = require('./helpers');

const b = (s) => Buffer.from(s, 'latin1');

function parsed(raw) {
  const env = new Envelope();
  env.parse(typeof raw === 'string' ? b(raw) : raw);
  return env;
}

function flat(env) {
  return Buffer.concat(env.flatten());
}

/**
 * Fields of a header block by a second, plainer reading of the rule in
 * Headers' documentation: a line that does not start with a space or tab
 * is a field when the text before its first colon, less trailing spaces
 * and tabs, is printable ASCII; continuation lines are joined to it.
 */
function referenceFields(block) {
  const fields = [];
  let current = null;
  const texts = block.toString('latin1').split('\n');
  for (const [i, text] of texts.entries()) {
    // A CR is part of a line ending only before an LF.
    const ended = i < texts.length - 1 && text.endsWith('\r');
    const line = ended ? text.slice(0, -1) : text;
    if (line === '' && i < texts.length - 1) break;
    if (/^[ \t]/.test(line)) {
      if (current) current.raw += line;
      continue;
    }
    current = null;
    const colon = line.indexOf(':');
    const name = line.slice(0, Math.max(colon, 0)).replace(/[ \t]+$/, '');
    if (!/^[\x21-\x7e]+$/.test(name)) continue;
    current = { name, raw: line.slice(colon + 1) };
    fields.push(current);
  }
  return fields.map(({ name, raw }) => ({
    name,
    value: b(raw).toString('utf8').replace(/^[ \t]+/, ''),
  }));
}

/** Runs a property with a printed seed so a failure can be replayed. */
function check(name, prop, numRuns) {
  const seed = Number(process.env.FC_SEED) || Date.now() % 2 ** 31;
  console.log(`      ${name}: fast-check seed ${seed}, ${numRuns} runs`);
  fc.assert(prop, { seed, numRuns });
}

describe('Envelope()', () => {
  it('starts with an empty header block and an empty body', () => {
    const env = new Envelope();
    const [head, body] = env.flatten();
    assert.equal(head.length, 0);
    assert.equal(body.length, 0);
    assert.equal(env.sender, null);
    assert.deepEqual(env.recipients, []);
    assert.equal(env.receiver, null);
    assert.equal(env.timestamp, null);
  });

  it('fills every client key, null when unknown', () => {
    const env = new Envelope({ client: { ip: '192.0.2.1' } });
    assert.deepEqual(env.client, {
      ip: '192.0.2.1',
      host: null,
      name: null,
      protocol: null,
      auth: null,
    });
  });

  it('keeps "" as the null sender', () => {
    assert.equal(new Envelope({ sender: '' }).sender, '');
  });

  for (const [what, recipients] of [
    ['a string', 'bob'],
    ['null', null],
    ['an array with a number', ['a@example.com', 1]],
    ['an array with null', [null]],
  ]) {
    it(`rejects recipients that are ${what}`, () => {
      assert.throws(() => new Envelope({ recipients }), {
        name: 'InvalidArgumentError',
        code: 'ERR_QUEUE_INVALID_ARGUMENT',
        message: 'recipients must be an array of strings',
      });
    });
  }

  it('copies the recipients and client it is given', () => {
    const recipients = ['a@example.com'];
    const client = { ip: '192.0.2.1' };
    const env = new Envelope({ recipients, client });
    recipients.push('b@example.com');
    client.ip = '198.51.100.1';
    assert.deepEqual(env.recipients, ['a@example.com']);
    assert.equal(env.client.ip, '192.0.2.1');
  });
});

describe('Envelope#parse()', () => {
  const cases = [
    ['LF', 'A: 1\nB: 2\n\nbody\n', 'A: 1\nB: 2\n\n', 'body\n'],
    [
      'CRLF',
      'A: 1\r\nB: 2\r\n\r\nbody\r\n',
      'A: 1\r\nB: 2\r\n\r\n',
      'body\r\n',
    ],
    ['LF then CRLF', 'A: 1\n\r\nbody', 'A: 1\n\r\n', 'body'],
    ['CRLF then LF', 'A: 1\r\n\nbody', 'A: 1\r\n\n', 'body'],
    [
      'mixed endings',
      'A: 1\r\nB: 2\nC: 3\r\n\nx\r\ny',
      'A: 1\r\nB: 2\nC: 3\r\n\n',
      'x\r\ny',
    ],
    ['headers only, final CRLF', 'A: 1\r\nB: 2\r\n', 'A: 1\r\nB: 2\r\n', ''],
    ['headers only, no final line ending', 'A: 1\r\nB: 2', 'A: 1\r\nB: 2', ''],
    ['empty input', '', '', ''],
    [
      'an empty line at offset 0 (CRLF)',
      '\r\nbody\r\n\r\n',
      '\r\n',
      'body\r\n\r\n',
    ],
    ['an empty line at offset 0 (LF)', '\nA: 1\n\n', '\n', 'A: 1\n\n'],
    [
      'a whitespace-only line',
      'A: 1\r\n \t\r\n\r\nbody',
      'A: 1\r\n \t\r\n\r\n',
      'body',
    ],
    [
      'a lone CR, which is no line ending',
      'A: 1\r\r\nbody',
      'A: 1\r\r\nbody',
      '',
    ],
    ['only empty lines', '\r\n\r\n\r\n', '\r\n', '\r\n\r\n'],
  ];

  for (const [what, raw, head, body] of cases) {
    it(`splits ${what} at the first empty line`, () => {
      const [h, m] = parsed(raw).flatten();
      assert.equal(h.toString('latin1'), head);
      assert.equal(m.toString('latin1'), body);
    });
  }

  it('keeps a whitespace-only line as part of the field above it', () => {
    const env = parsed('A: 1\r\n \t\r\n x\r\nB: 2\r\n\r\n');
    assert.equal(env.headers.get('A'), '1 \t x');
    assert.deepEqual(env.headers.names(), ['A', 'B']);
  });

  it('keeps a 1,100-octet header line whole', () => {
    const long = 'X-Long: ' + 'a'.repeat(1092);
    const raw = `${long}\r\nB: 2\r\n\r\nbody`;
    const env = parsed(raw);
    assert.deepEqual(flat(env), b(raw));
    assert.equal(env.headers.get('x-long'), 'a'.repeat(1092));
  });

  it('keeps "X:y" and double spaces as written', () => {
    const raw = 'X:y\r\nSubject:  two  spaces \r\n\r\n';
    const env = parsed(raw);
    assert.deepEqual(flat(env), b(raw));
    assert.equal(env.headers.get('x'), 'y');
    assert.equal(env.headers.get('subject'), 'two  spaces ');
  });

  it('decodes raw UTF-8 header bytes', () => {
    const raw = Buffer.from('Subject: Grüße 日本\r\n\r\nbody', 'utf8');
    const env = parsed(raw);
    assert.deepEqual(flat(env), raw);
    assert.equal(env.headers.get('Subject'), 'Grüße 日本');
  });

  it('decodes latin-1 header bytes with replacement characters', () => {
    const raw = b('Subject: Gr\xfc\xdfe\r\n\r\n');
    const env = parsed(raw);
    assert.deepEqual(flat(env), raw);
    assert.equal(env.headers.get('Subject'), 'Gr\ufffd\ufffde');
  });

  it('keeps an mbox "From " first line and never returns it', () => {
    const raw =
      'From someone@example.com Mon Jan  1 00:00:00 2024\n' +
      'From: a@example.com\n\nbody';
    const env = parsed(raw);
    assert.deepEqual(flat(env), b(raw));
    assert.deepEqual(env.headers.names(), ['From']);
    assert.equal(env.headers.get('from'), 'a@example.com');
  });

  it('reads "From : x" on the first line as a From field', () => {
    const raw = 'From : a@example.com\r\nTo: b@example.com\r\n\r\nbody';
    const env = parsed(raw);
    assert.deepEqual(flat(env), b(raw));
    assert.deepEqual(env.headers.names(), ['From', 'To']);
    assert.equal(env.headers.get('from'), 'a@example.com');
  });

  it('keeps a first line that starts with a space and never returns it', () => {
    const raw = ' stray: 1\r\n\tmore\r\nA: 1\r\n\r\n';
    const env = parsed(raw);
    assert.deepEqual(flat(env), b(raw));
    assert.deepEqual(env.headers.names(), ['A']);
    assert.equal(env.headers.get('stray'), undefined);
  });

  it('keeps lines without a colon and never returns them', () => {
    const raw = 'A: 1\r\nno colon here\r\n folded\r\nB: 2\r\n\r\n';
    const env = parsed(raw);
    assert.deepEqual(flat(env), b(raw));
    assert.deepEqual(env.headers.names(), ['A', 'B']);
    assert.equal(env.headers.get('A'), '1');
  });

  it('copies its input', () => {
    const raw = b('A: 1\r\n\r\nbody');
    const env = parsed(raw);
    raw.fill(0x78);
    assert.equal(flat(env).toString('latin1'), 'A: 1\r\n\r\nbody');
  });

  it('accepts a plain Uint8Array', () => {
    const raw = new Uint8Array(b('A: 1\n\nbody'));
    const env = parsed(raw);
    assert.equal(env.headers.get('a'), '1');
    assert.equal(env.message.toString(), 'body');
  });

  it('rejects input that is not bytes', () => {
    assert.throws(() => new Envelope().parse('A: 1'), TypeError);
  });
});

describe('Headers', () => {
  const env = parsed(
    'Received: one\r\n\tfolded\r\nreceived: two\r\n' +
      'Subject:\r\n x\r\nEmpty:\r\n\r\nbody',
  );

  it('finds fields by name in any case', () => {
    assert.equal(env.headers.get('RECEIVED'), 'one\tfolded');
    assert.deepEqual(env.headers.getAll('received'), ['one\tfolded', 'two']);
    assert.ok(env.headers.has('subject'));
    assert.ok(!env.headers.has('to'));
    assert.equal(env.headers.get('to'), undefined);
    assert.deepEqual(env.headers.getAll('to'), []);
  });

  it('trims whitespace after the colon, also across a fold', () => {
    assert.equal(env.headers.get('subject'), 'x');
  });

  it('has an empty field with an empty value', () => {
    assert.ok(env.headers.has('empty'));
    assert.equal(env.headers.get('empty'), '');
  });

  it('lists names in order as written', () => {
    assert.deepEqual(env.headers.names(), [
      'Received',
      'received',
      'Subject',
      'Empty',
    ]);
  });

  it('exposes the header block as bytes', () => {
    const h = new Headers(b('A: 1\n\n'));
    assert.ok(Buffer.isBuffer(h.bytes));
    assert.equal(h.bytes.toString(), 'A: 1\n\n');
    assert.equal(h.get('a'), '1');
  });

  it('reads no fields after an empty line in stored bytes', () => {
    const h = new Headers(b('A: 1\r\n\r\nB: 2\r\n'));
    assert.deepEqual(h.names(), ['A']);
  });
});

describe('Envelope#prependHeader()', () => {
  const inputs = [
    ['LF', 'A: 1\nB: 2\n\nbody\n', '\n'],
    ['CRLF', 'A: 1\r\nB: 2\r\n\r\nbody\r\n', '\r\n'],
    ['LF then CRLF', 'A: 1\n\r\nbody', '\n'],
    ['mixed, CRLF first', 'A: 1\r\nB: 2\n\nbody', '\r\n'],
    ['no line ending', 'A: 1', '\r\n'],
    ['empty input', '', '\r\n'],
    ['headers only, no final line ending', 'A: 1\nB: 2', '\n'],
    ['a whitespace-only folded line', 'A: 1\n \t\n\nbody', '\n'],
    ['a 1,100-octet line', `X: ${'a'.repeat(1097)}\r\n\r\n`, '\r\n'],
    ['"X:y" and double spaces', 'X:y\nS:  a  b\n\n', '\n'],
    [
      'an mbox "From " line',
      'From a@b Mon Jan  1 00:00:00 2024\nA: 1\n\n',
      '\n',
    ],
    ['latin-1 bytes', 'S: \xe9t\xe9\n\n\xff', '\n'],
  ];

  for (const [what, raw, eol] of inputs) {
    const ending = JSON.stringify(eol);
    it(`puts one field at byte 0 of ${what}, ended with ${ending}`, () => {
      const env = parsed(raw);
      const names = env.headers.names();
      env.prependHeader('X-New', 'v');
      assert.deepEqual(flat(env), Buffer.concat([b(`X-New: v${eol}`), b(raw)]));
      assert.equal(env.headers.get('x-new'), 'v');
      assert.deepEqual(env.headers.names(), ['X-New', ...names]);
    });
  }

  it('takes the line ending from the body when the headers have none', () => {
    const env = Envelope.fromParts(b('A: 1'), b('x\ny'));
    env.prependHeader('X', 'v');
    assert.equal(flat(env).toString('latin1'), 'X: v\nA: 1x\ny');
  });

  it('reads a leading continuation line into the new field, also stored', () => {
    const raw = ' lead\r\nA: 1\r\n\r\n';
    const env = parsed(raw);
    env.prependHeader('X', 'v');
    assert.equal(flat(env).toString('latin1'), `X: v\r\n${raw}`);
    assert.equal(env.headers.get('x'), 'v lead');
    assert.deepEqual(env.headers.names(), ['X', 'A']);

    const [head, body] = env.flatten();
    const back = Envelope.fromParts(Buffer.from(head), Buffer.from(body));
    assert.equal(back.headers.get('x'), 'v lead');
    assert.deepEqual(back.headers.names(), ['X', 'A']);
  });

  it('stacks fields, newest first', () => {
    const env = parsed('A: 1\n\n');
    env.prependHeader('R', 'first');
    env.prependHeader('R', 'second');
    assert.equal(flat(env).toString(), 'R: second\nR: first\nA: 1\n\n');
    assert.deepEqual(env.headers.getAll('r'), ['second', 'first']);
  });

  it('writes folds in the value with the message line ending', () => {
    for (const fold of ['\r\n ', '\n\t', '\r ']) {
      const env = parsed('A: 1\n\n');
      env.prependHeader('X', `a${fold}b`);
      const expected = `X: a\n${fold.slice(-1)}b\nA: 1\n\n`;
      assert.equal(flat(env).toString(), expected);
      assert.equal(env.headers.get('x'), `a${fold.slice(-1)}b`);
    }
  });

  it('encodes the value as UTF-8', () => {
    const env = parsed('A: 1\r\n\r\n');
    env.prependHeader('Subject', 'Grüße');
    assert.deepEqual(
      env.flatten()[0],
      Buffer.from('Subject: Grüße\r\nA: 1\r\n\r\n', 'utf8'),
    );
    assert.equal(env.headers.get('subject'), 'Grüße');
  });

  const rejected = [
    ['a value ending in CRLF', 'X', 'v\r\n'],
    ['a value ending in LF', 'X', 'v\n'],
    ['a value ending in CR', 'X', 'v\r'],
    ['a bare LF in the value', 'X', 'a\nb'],
    ['a bare CR in the value', 'X', 'a\rb'],
    ['a CRLF not followed by whitespace', 'X', 'a\r\nb'],
    ['an empty name', '', 'v'],
    ['a name with a colon', 'X:Y', 'v'],
    ['a name with a space', 'X Y', 'v'],
    ['a name with a non-ASCII letter', 'Ä', 'v'],
    ['a name with a control character', 'X\x7f', 'v'],
    ['a name that is not a string', 42, 'v'],
    ['a value that is not a string', 'X', 42],
    ['a value of null', 'X', null],
    ['a run of 999 octets with no whitespace', 'X', 'a'.repeat(999)],
    ['a run that cannot fit after the name', 'X', 'a'.repeat(996)],
    ['a folded run that is too long', 'X', `a\r\n ${'b'.repeat(998)}`],
    ['a fold followed by a line of spaces', 'X', 'a\r\n \r\n b'],
    ['a fold followed by a tab at the end', 'X', 'a\n\t'],
    ['a fold followed by a space at the end', 'X', 'a\r\n '],
    ['a value only a fold and spaces', 'X', '\r\n  '],
    ['trailing spaces past the line limit', 'X', `a${' '.repeat(1200)}`],
    ['a run of spaces too long to split', 'X', `a${' '.repeat(2000)}b`],
  ];

  for (const [what, name, value] of rejected) {
    it(`rejects ${what} and leaves the envelope unchanged`, () => {
      const raw = 'A: 1\r\n\r\nbody';
      const env = parsed(raw);
      const headers = env.headers;
      assert.throws(() => env.prependHeader(name, value), {
        name: 'InvalidArgumentError',
        code: 'ERR_QUEUE_INVALID_ARGUMENT',
      });
      assert.deepEqual(flat(env), b(raw));
      assert.equal(env.headers, headers);
    });
  }

  it('folds trailing spaces past the limit onto a line that has text', () => {
    const value = `${'b'.repeat(900)} c${' '.repeat(200)}`;
    const env = parsed('A: 1\r\n\r\n');
    env.prependHeader('X', value);
    const lines = env.flatten()[0].toString().split('\r\n');
    assert.deepEqual(
      lines.map((l) => l.length),
      [3 + 900, 2 + 200, 4, 0, 0],
    );
    assert.equal(env.headers.get('x'), value);
  });

  it('accepts a run that just fits the 998-octet line', () => {
    const env = parsed('A: 1\r\n\r\n');
    env.prependHeader('X', 'a'.repeat(995));
    const first = env.flatten()[0].toString().split('\r\n')[0];
    assert.equal(first.length, 998);
  });

  it('folds a long value only at its own whitespace', () => {
    const value = `${'a'.repeat(700)} ${'b'.repeat(700)}\t${'c'.repeat(10)}`;
    const env = parsed('A: 1\n\n');
    env.prependHeader('X-Long', value);
    const lines = env.flatten()[0].toString().split('\n');
    assert.deepEqual(
      lines.map((l) => l.length),
      [8 + 700, 701 + 11, 4, 0, 0],
    );
    assert.equal(env.headers.get('x-long'), value);
  });

  it('folds to lines of text within 998 octets that unfold to the value', () => {
    const word = fc.stringMatching(/^[a-zA-Z0-9.\u00e9\u65e5]{1,400}$/);
    const spaces = fc
      .tuple(fc.constantFrom(' ', '\t', ' \t'), fc.nat({ max: 1200 }))
      .map(([s, n]) => s.repeat(Math.ceil(n / s.length)));
    const gap = fc.oneof(fc.constantFrom(' ', '\t', '  '), spaces);
    const edge = fc.oneof(fc.constant(''), spaces);
    const value = fc
      .tuple(
        edge,
        fc.array(fc.tuple(word, gap), { minLength: 1, maxLength: 30 }),
        word,
        edge,
      )
      .map(
        ([lead, parts, last, tail]) =>
          lead + parts.map(([w, g]) => w + g).join('') + last + tail,
      );

    let folded = 0;
    check(
      'long-value folding',
      fc.property(value, fc.constantFrom('\n', '\r\n'), (v, eol) => {
        const raw = `A: 1${eol}${eol}body`;
        const env = parsed(raw);
        try {
          env.prependHeader('X-Long', v);
        } catch (err) {
          assert.ok(err instanceof TypeError, String(err));
          assert.deepEqual(flat(env), b(raw));
          return;
        }
        const head = env.flatten()[0].toString('utf8');
        const field = head.slice(0, head.indexOf(`${eol}A: 1`));
        const lines = field.split(eol);
        if (lines.length > 1) folded++;
        for (const line of lines) {
          assert.ok(Buffer.byteLength(line) <= 998, `line of ${line.length}`);
          assert.match(line, /[^ \t]/, 'a line of only spaces and tabs');
        }
        assert.ok(!field.replaceAll(eol, '').includes('\r'));
        assert.equal(env.headers.get('x-long'), v.replace(/^[ \t]+/, ''));
      }),
      2000,
    );
    assert.ok(folded > 100, `only ${folded} values were folded`);
  });
});

describe('Envelope#copy()', () => {
  function original() {
    const env = new Envelope({
      sender: 'a@example.com',
      recipients: ['b@example.com', 'c@example.com'],
      client: { ip: '192.0.2.1', host: 'mx.example.com' },
      receiver: 'mx.example.net',
      timestamp: 1700000000.25,
    });
    env.parse(b('A: 1\r\n\r\nbody'));
    return env;
  }

  it('carries every field over', () => {
    const env = original();
    const dup = env.copy();
    assert.equal(dup.sender, env.sender);
    assert.deepEqual(dup.recipients, env.recipients);
    assert.deepEqual(dup.client, env.client);
    assert.equal(dup.receiver, env.receiver);
    assert.equal(dup.timestamp, env.timestamp);
    assert.deepEqual(flat(dup), flat(env));
  });

  it('uses exactly a copy of the recipients passed, [] included', () => {
    const env = original();
    const list = ['d@example.com'];
    const dup = env.copy(list);
    list.push('e@example.com');
    assert.deepEqual(dup.recipients, ['d@example.com']);
    assert.deepEqual(env.copy([]).recipients, []);
  });

  it('shares no recipients array', () => {
    const env = original();
    const dup = env.copy();
    dup.recipients.push('x@example.com');
    env.recipients[0] = 'y@example.com';
    assert.deepEqual(dup.recipients, [
      'b@example.com',
      'c@example.com',
      'x@example.com',
    ]);
    assert.deepEqual(env.recipients, ['y@example.com', 'c@example.com']);
  });

  it('shares no client object', () => {
    const env = original();
    const dup = env.copy();
    dup.client.ip = '198.51.100.1';
    env.client.auth = 'user';
    assert.equal(env.client.ip, '192.0.2.1');
    assert.equal(dup.client.auth, null);
  });

  it('shares no body bytes', () => {
    const env = original();
    const dup = env.copy();
    dup.message[0] = 0x42;
    env.message[1] = 0x43;
    assert.equal(env.message.toString(), 'bCdy');
    assert.equal(dup.message.toString(), 'Body');
  });

  it('shares no header bytes', () => {
    const env = original();
    const dup = env.copy();
    assert.notEqual(dup.headers.bytes.buffer, env.headers.bytes.buffer);
    assert.notEqual(dup.message.buffer, env.message.buffer);
    dup.prependHeader('X', 'dup');
    env.prependHeader('Y', 'env');
    assert.equal(flat(env).toString(), 'Y: env\r\nA: 1\r\n\r\nbody');
    assert.equal(flat(dup).toString(), 'X: dup\r\nA: 1\r\n\r\nbody');
    assert.equal(env.headers.get('x'), undefined);
    assert.equal(dup.headers.get('y'), undefined);
  });

  it('reads its header block as the original does', () => {
    const env = parsed(' lead\nA: 1\n\n');
    env.prependHeader('X', 'v');
    assert.equal(env.copy().headers.get('x'), 'v lead');
    assert.deepEqual(env.copy().headers.names(), ['X', 'A']);
  });

  for (const [what, recipients] of [
    ['numbers', [1, 2]],
    ['a string', 'bob'],
    ['null', null],
  ]) {
    it(`rejects new recipients that are ${what}`, () => {
      assert.throws(() => original().copy(recipients), {
        name: 'InvalidArgumentError',
        code: 'ERR_QUEUE_INVALID_ARGUMENT',
        message: 'newRecipients must be an array of strings',
      });
    });
  }
});

describe('Envelope.fromParts()', () => {
  it('keeps the body Buffer without copying it', () => {
    const head = b('A: 1\r\n\r\n');
    const body = b('body');
    const env = Envelope.fromParts(head, body, { sender: '' });
    assert.equal(env.message, body);
    assert.equal(env.headers.bytes, head);
    assert.equal(env.sender, '');
    assert.equal(env.headers.get('a'), '1');
  });

  it('reads back what flatten() returned', () => {
    const env = parsed('From x\r\nA: 1\r\n b\r\n\r\nbody');
    const [head, body] = env.flatten();
    const back = Envelope.fromParts(Buffer.from(head), Buffer.from(body));
    assert.deepEqual(flat(back), flat(env));
    assert.deepEqual(back.headers.names(), ['A']);
    assert.equal(back.headers.get('a'), '1 b');
  });
});

describe('Envelope round trip', () => {
  it('flattens arbitrary bytes back to themselves', () => {
    const bytes = fc.oneof(
      fc.uint8Array({ maxLength: 300 }),
      fc
        .array(
          fc.constantFrom(
            ...['\r', '\n', '\r\n', ' ', '\t', ':', 'A', 'From ', 'x', '\xff'],
          ),
          { maxLength: 60 },
        )
        .map((parts) => new Uint8Array(b(parts.join('')))),
    );
    check(
      'parse/flatten round trip',
      fc.property(bytes, (raw) => {
        const env = parsed(Buffer.from(raw));
        assert.deepEqual(flat(env), Buffer.from(raw));
        const expected = referenceFields(env.flatten()[0]);
        assert.deepEqual(
          env.headers.names(),
          expected.map((f) => f.name),
        );
        for (const { name } of expected) {
          assert.deepEqual(
            env.headers.getAll(name),
            expected
              .filter((f) => f.name.toLowerCase() === name.toLowerCase())
              .map((f) => f.value),
          );
        }
      }),
      5000,
    );
  });

  it('prepends a valid field before the original bytes', () => {
    const name = fc.stringMatching(/^[\x21-\x39\x3b-\x7e]{1,40}$/);
    const value = fc
      .array(
        fc.oneof(
          fc.string({ unit: 'grapheme', maxLength: 20 }).map((s) =>
            s.replace(/[\r\n]/g, ''),
          ),
          fc.constantFrom(' ', '\t', '\r\n ', '\n\t', '\r '),
        ),
        { maxLength: 10 },
      )
      .map((parts) => parts.join(''));
    const raw = fc.uint8Array({ maxLength: 200 });

    check(
      'prependHeader',
      fc.property(name, value, raw, (n, v, r) => {
        const env = parsed(Buffer.from(r));
        const pieces = v.split(/\r\n|\r|\n/);
        if (pieces.slice(1).some((p) => /^[ \t]*$/.test(p))) {
          assert.throws(() => env.prependHeader(n, v), TypeError);
          assert.deepEqual(flat(env), Buffer.from(r));
          return;
        }
        env.prependHeader(n, v);
        const out = flat(env);
        const original = Buffer.from(r);
        const field = out.subarray(0, out.length - original.length);
        assert.deepEqual(out.subarray(field.length), original);

        const lf = original.indexOf(0x0a);
        const bare = lf !== -1 && !(lf > 0 && original[lf - 1] === 0x0d);
        const eol = bare ? '\n' : '\r\n';
        const unfolded = v.replace(/(\r\n|\r|\n)(?=[ \t])/g, eol);
        assert.deepEqual(field, Buffer.from(`${n}: ${unfolded}${eol}`));

        // Continuation lines that began the original block continue the
        // new field.
        const lead = [];
        const texts = original.toString('latin1').split('\n');
        for (const [i, text] of texts.entries()) {
          if (!/^[ \t]/.test(text)) break;
          const ended = i < texts.length - 1 && text.endsWith('\r');
          lead.push(ended ? text.slice(0, -1) : text);
        }
        const value = Buffer.concat([
          Buffer.from(v.replace(/(\r\n|\r|\n)(?=[ \t])/g, '')),
          b(lead.join('')),
        ]);
        assert.equal(
          env.headers.get(n),
          value.toString('utf8').replace(/^[ \t]+/, ''),
        );
      }),
      3000,
    );
  });
});

describe('Envelope over the shared corpus', () => {
  it('parses and flattens every corpus file byte for byte', function () {
    if (!corpusDir) {
      console.log('      skipped: no shared corpus beside the repository');
      this.skip();
    }

    const files = fs
      .readdirSync(corpusDir)
      .filter((f) => f.endsWith('.eml'))
      .sort();
    assert.ok(files.length > 0, 'corpus holds no .eml files');

    for (const file of files) {
      const raw = fs.readFileSync(path.join(corpusDir, file));
      const env = parsed(raw);
      assert.deepEqual(flat(env), raw, file);

      const expected = referenceFields(env.flatten()[0]);
      assert.deepEqual(
        env.headers.names(),
        expected.map((f) => f.name),
        file,
      );
      const received = expected
        .filter((f) => f.name.toLowerCase() === 'received')
        .map((f) => f.value);
      assert.deepEqual(env.headers.getAll('received'), received, file);

      env.prependHeader('Received', 'from corpus by test');
      const out = flat(env);
      assert.deepEqual(out.subarray(out.length - raw.length), raw, file);
      assert.deepEqual(
        env.headers.getAll('received'),
        ['from corpus by test', ...received],
        file,
      );
    }
  });

  it('unfolds a known Received field of the corpus', function () {
    if (!corpusDir) this.skip();
    const raw = fs.readFileSync(path.join(corpusDir, '002-plain-ascii-lf.eml'));
    assert.deepEqual(parsed(raw).headers.getAll('received'), [
      'by mail.zzz.org (Postfix, from userid 889)' +
        '\tid 27CEAD38CC; Fri,  4 May 2001 14:05:44 -0400 (EDT)',
    ]);
  });
});
