'use strict';
// Hostile message ids for fast-check: path traversal, separators, NUL,
// unicode look-alikes, very long strings, near-valid hex, and values that
// are not strings at all. None of them is a valid id.

const fc = require('fast-check');

const VALID = /^[0-9a-f]{32}$/;

const hex32 = fc
  .uint8Array({ minLength: 16, maxLength: 16 })
  .map((b) => Buffer.from(b).toString('hex'));

/** Characters that are not lowercase hex but look or act like it. */
const lookAlike = fc.constantFrom(
  'A', 'F', 'g', 'G', 'x', ' ', '\t', '\n', '\r', '\0', '/', '\\', '.', ':',
  '\u0660', // ARABIC-INDIC DIGIT ZERO
  '\uff41', // FULLWIDTH LATIN SMALL LETTER A
  '\u0430', // CYRILLIC SMALL LETTER A
  '\u200b', // ZERO WIDTH SPACE
  '\ud800', // lone surrogate
  '\u{1f4e7}',
);

/** Valid hex with one edit: a character changed, added or dropped. */
const nearValid = fc
  .record({ id: hex32, at: fc.nat({ max: 32 }), c: lookAlike, edit: fc.constantFrom('set', 'insert', 'drop', 'upper', 'suffix', 'prefix') })
  .map(({ id, at, c, edit }) => {
    switch (edit) {
      case 'set':
        return id.slice(0, at) + c + id.slice(at + 1);
      case 'insert':
        return id.slice(0, at) + c + id.slice(at);
      case 'drop':
        return id.slice(0, at) + id.slice(at + 1);
      case 'upper':
        return id.toUpperCase();
      case 'suffix':
        return id + c;
      default:
        return c + id;
    }
  });

const traversal = fc
  .record({
    parts: fc.array(fc.constantFrom('..', '.', '', 'outside', 'victim', 'meta', 'env', 'tmp', '..%2f', '%2e%2e', '....'), {
      minLength: 1,
      maxLength: 6,
    }),
    sep: fc.constantFrom('/', '\\', '/./', '//', '\0'),
    lead: fc.constantFrom('', '/', '../', '/etc/'),
    tail: fc.constantFrom('', '.meta', '.env', '\0', '/', '\0.meta'),
  })
  .map(({ parts, sep, lead, tail }) => lead + parts.join(sep) + tail);

const fixed = fc.constantFrom(
  '',
  '.',
  '..',
  '/',
  '../outside/victim',
  '../../outside/victim',
  '/etc/passwd',
  '.lock',
  '.quarantine',
  'a'.repeat(100_000),
  '../'.repeat(5000) + 'etc/passwd',
  '0'.repeat(31),
  '0'.repeat(33),
);

const anyString = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 80 }),
  fc.string({ unit: fc.constantFrom('a', 'b', '0', '9', '/', '.', '\0', '\\', 'é'), minLength: 28, maxLength: 36 }),
  fc.string({ unit: 'grapheme', minLength: 4000, maxLength: 5000 }),
);

const notAString = fc.oneof(
  hex32.map((id) => [id]),
  hex32.map((id) => Buffer.from(id)),
  hex32.map((id) => new String(id)),
  hex32.map((id) => ({ toString: () => id })),
  fc.constantFrom(null, undefined, 0, 1n, NaN, true, Symbol('id')),
);

const hostileId = fc
  .oneof(nearValid, traversal, fixed, anyString, notAString)
  .filter((id) => typeof id !== 'string' || !VALID.test(id));

module.exports = { hostileId, hex32 };
