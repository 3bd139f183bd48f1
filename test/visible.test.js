'use strict';
// What the CLI shows of untrusted text: control and format characters
// escaped, invalid UTF-8 as \xNN, everything else byte for byte.

const assert = require('node:assert/strict');
const fc = require('fast-check');

const { jsonLine, utf8Length, visible, visibleText } = require(
  '../dist/visible.js',
);

const b = (s) => Buffer.from(s, 'latin1');
const u = (s) => Buffer.from(s, 'utf8');
const shown = (buf, keepLines = false) =>
  visible(buf, keepLines).toString('latin1');

/** What must never reach a terminal; TAB and LF are checked apart. */
const UNSAFE = /[\x00-\x08\x0b-\x1f\x7f-\x9f\p{Cf}\u2028\u2029]/u;

/** Runs a property with a printed seed so a failure can be replayed. */
function check(name, prop, numRuns) {
  const seed = Number(process.env.FC_SEED) || Date.now() % 2 ** 31;
  console.log(`      ${name}: fast-check seed ${seed}, ${numRuns} runs`);
  fc.assert(prop, { seed, numRuns });
}

function decodeStrict(buf) {
  return new TextDecoder('utf-8', { fatal: true }).decode(buf);
}

describe('visible()', () => {
  it('returns the same Buffer when nothing needs escaping', () => {
    const text = u('Subject: café 日本 😀 \\x1b as text\n\tnext\n');
    assert.equal(visible(text, true), text);
  });

  it('escapes C0 controls and DEL', () => {
    assert.equal(
      shown(b('a\x1b[2Jb\x07c\x00d\x7fe\x08')),
      'a\\x1b[2Jb\\x07c\\x00d\\x7fe\\x08',
    );
  });

  it('names TAB, LF and CR outside the message', () => {
    assert.equal(shown(b('a\tb\nc\rd\r\n')), 'a\\tb\\nc\\rd\\r\\n');
  });

  it('keeps TAB and LF in the message, makes CRLF LF, shows a lone CR', () => {
    assert.equal(shown(b('a\tb\r\nc\rd\n\r'), true), 'a\tb\nc\\rd\n\\r');
  });

  it('escapes C1 controls written as UTF-8', () => {
    assert.equal(
      shown(b('a\xc2\x9b6n\xc2\x85\xc2\x80')),
      'a\\u009b6n\\u0085\\u0080',
    );
  });

  it('shows raw 0x80-0x9f bytes and other invalid UTF-8 as \\xNN', () => {
    const cases = [
      ['\x80\x9f', '\\x80\\x9f'],
      ['\x9b[31m', '\\x9b[31m'],
      ['\xc0\x80', '\\xc0\\x80'], // overlong
      ['\xed\xa0\x80', '\\xed\\xa0\\x80'], // a surrogate
      ['\xf4\x90\x80\x80', '\\xf4\\x90\\x80\\x80'], // above U+10FFFF
      ['\xe2\x80', '\\xe2\\x80'], // cut short at the end
      ['\xff\xfe', '\\xff\\xfe'],
    ];
    for (const [raw, want] of cases) {
      assert.equal(shown(b(raw)), want, JSON.stringify(raw));
      assert.equal(shown(b(raw), true), want, JSON.stringify(raw));
    }
  });

  it('escapes Unicode format characters and the line separators', () => {
    const cases = [
      ['\u202e', '\\u202e'], // RIGHT-TO-LEFT OVERRIDE
      ['\u202a\u202b\u202c\u202d', '\\u202a\\u202b\\u202c\\u202d'],
      ['\u2066\u2067\u2068\u2069', '\\u2066\\u2067\\u2068\\u2069'],
      ['\u200b\u200c\u200d\u200e\u200f', '\\u200b\\u200c\\u200d\\u200e\\u200f'],
      ['\u2028\u2029', '\\u2028\\u2029'],
      ['\ufeff', '\\ufeff'],
      ['\u00ad', '\\u00ad'], // SOFT HYPHEN
      ['\u061c', '\\u061c'], // ARABIC LETTER MARK
      ['\u{e0001}\u{e0041}', '\\u{e0001}\\u{e0041}'], // tags
      ['\u{1d173}', '\\u{1d173}'], // MUSICAL SYMBOL BEGIN BEAM
    ];
    for (const [text, want] of cases) {
      for (const keepLines of [false, true]) {
        assert.equal(shown(u(`x${text}y`), keepLines), `x${want}y`);
      }
    }
  });

  it('keeps the characters beside the format characters', () => {
    // NOT SIGN, REGISTERED SIGN, HYPHENATION POINT, PER MILLE SIGN,
    // SUPERSCRIPT ZERO, NO-BREAK SPACE
    for (const c of ['\u00ac', '\u00ae', '\u2027', '\u2030', '\u2070', '\u00a0']) {
      const text = u(`a${c}b`);
      assert.equal(visible(text, false), text, JSON.stringify(c));
    }
  });

  it('writes valid UTF-8 with no control or format character', () => {
    const bytes = fc.oneof(
      fc.uint8Array({ maxLength: 200 }),
      fc
        .string({ unit: 'binary', maxLength: 60 })
        .map((s) => new Uint8Array(Buffer.from(s, 'utf8'))),
    );
    check(
      'visible output',
      fc.property(bytes, fc.boolean(), (raw, keepLines) => {
        const out = visible(Buffer.from(raw), keepLines);
        const text = decodeStrict(out);
        assert.doesNotMatch(text, UNSAFE);
        if (!keepLines) assert.doesNotMatch(text, /[\t\n]/);
      }),
      3000,
    );
  });

  it('keeps every valid UTF-8 character that is neither control nor format', () => {
    check(
      'visible keeps text',
      fc.property(fc.string({ unit: 'binary', maxLength: 60 }), (s) => {
        const text = s.replace(/[\x00-\x1f\x7f-\x9f\p{Cf}\u2028\u2029]/gu, '');
        const input = Buffer.from(text, 'utf8');
        // Lone surrogates encode as U+FFFD, which is kept.
        assert.deepEqual(visible(input, false), input);
      }),
      3000,
    );
  });
});

describe('visibleText()', () => {
  it('escapes a string as visible() escapes its UTF-8', () => {
    assert.equal(visibleText('ev\u202eil\t\x1b@x'), 'ev\\u202eil\\t\\x1b@x');
    assert.equal(visibleText('café'), 'café');
  });
});

describe('utf8Length()', () => {
  it('gives the encoded length of every kind of code point', () => {
    for (const cp of [0x80, 0x7ff, 0x800, 0xfeff, 0xffff, 0x10000, 0x10ffff]) {
      const bytes = u(String.fromCodePoint(cp));
      assert.equal(utf8Length(bytes, 0), bytes.length, cp.toString(16));
    }
  });

  it('is 0 exactly where a strict decoder refuses', () => {
    const lead = fc.integer({ min: 0x80, max: 0xff });
    const rest = fc.uint8Array({ maxLength: 3 });
    check(
      'utf8Length',
      fc.property(lead, rest, (first, more) => {
        const bytes = Buffer.from([first, ...more]);
        const n = utf8Length(bytes, 0);
        if (n > 0) {
          const text = decodeStrict(bytes.subarray(0, n));
          assert.equal([...text].length, 1);
          return;
        }
        for (let k = 1; k <= bytes.length; k++) {
          let single = false;
          try {
            single = [...decodeStrict(bytes.subarray(0, k))].length === 1;
          } catch {
            // refused: as expected
          }
          assert.ok(!single, `prefix of ${k} bytes decodes`);
        }
      }),
      3000,
    );
  });
});

describe('jsonLine()', () => {
  it('escapes DEL, C1 and format characters and still parses back', () => {
    const value = {
      s: 'a\x7fb\u0085c\u009bd\u202ee\u2028f\ufeffg\u{e0001}h\x1b',
      n: [1, null],
    };
    const line = jsonLine(value);
    assert.ok(line.endsWith('}\n'));
    assert.equal(line.split('\n').length, 2);
    assert.deepEqual(JSON.parse(line), value);
    assert.ok(
      line.includes(
        'a\\u007fb\\u0085c\\u009bd\\u202ee\\u2028f\\ufeffg\\udb40\\udc01h\\u001b',
      ),
      line,
    );
    assert.doesNotMatch(line.slice(0, -1), UNSAFE);
    assert.doesNotMatch(line.slice(0, -1), /[\t\n]/);
  });

  it('leaves other text as JSON.stringify writes it', () => {
    const value = { s: 'café 日本 😀 "q" \\' };
    assert.equal(jsonLine(value), `${JSON.stringify(value)}\n`);
  });
});
