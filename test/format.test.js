'use strict';
// The format module refuses what it cannot store exactly, and a decoder
// refuses a file whose checksum is good but whose content is not what
// the encoder writes (another writer, a hand edit).

const assert = require('node:assert/strict');
const { crc32 } = require('node:zlib');

const { makeEnvelope } = require('./helpers');
const format = require('../dist/format.js');
const { CorruptError, InvalidEnvelopeError } = require('../dist/errors.js');

const ID = '0123456789abcdef0123456789abcdef';

/** Rewrites the trailing CRC so only the edited field is wrong. */
function reseal(file) {
  const end = file.length - 4;
  file.writeUInt32LE(crc32(file.subarray(0, end)), end);
  return file;
}

function encodedEnv(fields = {}) {
  return Buffer.concat(format.encodeEnvelope(ID, makeEnvelope(fields)));
}

/** An env file whose JSON fields are replaced by `json` (a Buffer). */
function envWithJson(json) {
  const file = encodedEnv();
  const jsonLength = file.readUInt32LE(12);
  const head = Buffer.from(file.subarray(0, 56));
  head.writeUInt32LE(json.length, 12);
  return reseal(
    Buffer.concat([head, json, file.subarray(56 + jsonLength)]),
  );
}

function metaFile(fields = {}) {
  return format.encodeMeta({
    id: ID,
    timestamp: 1700000000.5,
    attempts: 2,
    recipientCount: 3,
    delivered: [1],
    envSize: 100,
    ...fields,
  });
}

function corrupt(fn) {
  assert.throws(fn, (err) => err instanceof CorruptError && err.code === 'ERR_QUEUE_CORRUPT');
}

describe('format: encodeEnvelope()', function () {
  const refused = {
    'a string body': (env) => (env.message = 'héllo'),
    'a client that is a string': (env) => (env.client = 'x'),
    'a NaN receipt timestamp': (env) => (env.timestamp = NaN),
    'a string receipt timestamp': (env) => (env.timestamp = '1'),
    'a CR in a recipient': (env) => (env.recipients = ['a\rb']),
    'a number in client.ip': (env) => (env.client = { ip: 4 }),
  };
  for (const [what, spoil] of Object.entries(refused)) {
    it(`refuses ${what}`, function () {
      const env = makeEnvelope();
      spoil(env);
      assert.throws(() => format.encodeEnvelope(ID, env), InvalidEnvelopeError);
    });
  }

  it('stores an undefined receipt timestamp as none', function () {
    const env = makeEnvelope();
    env.timestamp = undefined;
    const file = Buffer.concat(format.encodeEnvelope(ID, env));
    assert.equal(format.decodeEnvelope(file, ID, '/x').timestamp, null);
    assert.equal(file.readUInt16LE(10), 0);
  });
});

describe('format: decodeEnvelope() of checksummed but foreign content', function () {
  it('accepts its own encoding', function () {
    const env = format.decodeEnvelope(encodedEnv(), ID, '/x');
    assert.equal(env.sender, 'sender@example.com');
  });

  const foreign = {
    'JSON that is not UTF-8': Buffer.from([0x7b, 0x22, 0xff, 0x22, 0x7d]),
    'JSON null': Buffer.from('null'),
    'recipients that are not an array': Buffer.from(
      '{"sender":null,"recipients":"bob","client":{},"receiver":null}',
    ),
    'a recipient with CR LF': Buffer.from(
      '{"sender":null,"recipients":["a\\r\\nb"],"client":{"ip":null,"host":null,"name":null,"protocol":null,"auth":null},"receiver":null}',
    ),
    'a client that is not an object': Buffer.from(
      '{"sender":null,"recipients":[],"client":"x","receiver":null}',
    ),
  };
  for (const [what, json] of Object.entries(foreign)) {
    it(`refuses ${what}`, function () {
      corrupt(() => format.decodeEnvelope(envWithJson(json), ID, '/x'));
    });
  }

  it('refuses a non-finite receipt timestamp, and one without its flag', function () {
    const nan = encodedEnv({ timestamp: 5 });
    nan.writeDoubleLE(NaN, 32);
    corrupt(() => format.decodeEnvelope(reseal(nan), ID, '/x'));
    const unflagged = encodedEnv({ timestamp: null });
    unflagged.writeDoubleLE(7, 32);
    corrupt(() => format.decodeEnvelope(reseal(unflagged), ID, '/x'));
  });
});

describe('format: decodeMeta()', function () {
  it('round-trips every field', function () {
    assert.deepEqual(format.decodeMeta(metaFile(), ID, '/x'), {
      id: ID,
      timestamp: 1700000000.5,
      attempts: 2,
      recipientCount: 3,
      delivered: [1],
      envSize: 100,
    });
  });

  it('refuses a non-finite timestamp and an impossible envelope size', function () {
    const nan = metaFile();
    nan.writeDoubleLE(Infinity, 32);
    corrupt(() => format.decodeMeta(reseal(nan), ID, '/x'));
    const huge = metaFile();
    huge.writeBigUInt64LE(2n ** 40n, 40);
    corrupt(() => format.decodeMeta(reseal(huge), ID, '/x'));
  });

  it('refuses delivered indexes out of order or out of range', function () {
    corrupt(() => format.decodeMeta(metaFile({ delivered: [2, 1] }), ID, '/x'));
    corrupt(() => format.decodeMeta(metaFile({ delivered: [3] }), ID, '/x'));
  });

  it('refuses a meta file of another message', function () {
    corrupt(() => format.decodeMeta(metaFile(), 'f'.repeat(32), '/x'));
  });
});
