'use strict';
// fast-check arbitraries for the decoder fuzz: valid env and meta files,
// the ways a file gets damaged, and hostile bytes; and the contract a
// decoder keeps on all of them.

const fc = require('fast-check');
const { crc32 } = require('node:zlib');

const { Envelope, QueueError } = require('../../..');

const HEAD = 56;

const hexId = fc
  .uint8Array({ minLength: 16, maxLength: 16 })
  .map((b) => Buffer.from(b).toString('hex'));

const address = fc
  .string({ unit: 'grapheme', maxLength: 30 })
  .filter((s) => !/[\r\n\0]/.test(s));
const text = fc.option(fc.string({ unit: 'grapheme', maxLength: 20 }));
const bytes = (max) => fc.uint8Array({ maxLength: max }).map((b) => Buffer.from(b));

const envelopeSource = fc.record({
  sender: fc.option(address),
  recipients: fc.array(address, { maxLength: 8 }),
  client: fc.record({ ip: text, host: text, name: text, protocol: text, auth: text }),
  receiver: text,
  timestamp: fc.option(fc.double({ noNaN: true, noDefaultInfinity: true })),
  header: bytes(200),
  body: bytes(400),
});

const metaSource = fc
  .record({
    timestamp: fc.double({ noNaN: true, noDefaultInfinity: true }),
    attempts: fc.nat({ max: 0xffffffff }),
    recipientCount: fc.nat({ max: 40 }),
    picks: fc.array(fc.nat({ max: 39 }), { maxLength: 10 }),
    envSize: fc.nat({ max: 2 ** 31 - 1 }), // the largest env file the format allows
  })
  .map(({ picks, ...m }) => ({
    ...m,
    delivered: [...new Set(picks.filter((i) => i < m.recipientCount))].sort((a, b) => a - b),
  }));

function envelopeOf(s) {
  return Envelope.fromParts(s.header, s.body, {
    sender: s.sender,
    recipients: s.recipients,
    client: s.client,
    receiver: s.receiver,
    timestamp: s.timestamp,
  });
}

/** Byte ranges of the length fields: [offset, width]. */
const LENGTH_FIELDS = {
  env: [
    [12, 4],
    [40, 8],
    [48, 8],
  ],
  meta: [
    [40, 8],
    [48, 4],
    [52, 4],
  ],
};

const edgeValue = fc.oneof(
  fc.constantFrom(0, 1, 2, 3, 4, 59, 60, 61, 0x7fffffff, 0x80000000, 0xffffffff),
  fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
  fc.integer({ min: -8, max: 8 }).map((d) => ({ delta: d })),
);

/** One change to a file; `reseal` recomputes the checksum after it. */
const mutation = (kind) =>
  fc.record({
    change: fc.oneof(
      fc.record({
        op: fc.constant('flip'),
        at: fc.array(fc.record({ pos: fc.nat(), xor: fc.integer({ min: 1, max: 255 }) }), {
          minLength: 1,
          maxLength: 4,
        }),
      }),
      fc.record({ op: fc.constant('truncate'), to: fc.nat() }),
      fc.record({ op: fc.constant('extend'), tail: bytes(64) }),
      fc.record({ op: fc.constant('zero'), from: fc.nat(), len: fc.integer({ min: 1, max: 64 }) }),
      fc.record({
        op: fc.constant('length'),
        field: fc.constantFrom(...LENGTH_FIELDS[kind]),
        value: edgeValue,
      }),
      ...(kind === 'env'
        ? [fc.record({ op: fc.constant('json'), json: fc.jsonValue({ maxDepth: 3 }) })]
        : []),
    ),
    reseal: fc.boolean(),
    otherId: fc.option(hexId, { freq: 8 }),
  });

function reseal(file) {
  if (file.length < HEAD + 4) return file;
  const out = Buffer.from(file);
  out.writeUInt32LE(crc32(out.subarray(0, out.length - 4)), out.length - 4);
  return out;
}

function mutate(original, { change, reseal: fix }) {
  let file = Buffer.from(original);
  switch (change.op) {
    case 'flip':
      for (const { pos, xor } of change.at) file[pos % file.length] ^= xor;
      break;
    case 'truncate':
      file = file.subarray(0, change.to % file.length);
      break;
    case 'extend':
      file = Buffer.concat([file, change.tail]);
      break;
    case 'zero': {
      const from = change.from % file.length;
      file.fill(0, from, Math.min(file.length, from + change.len));
      break;
    }
    case 'length': {
      const [at, width] = change.field;
      const old = width === 4 ? BigInt(file.readUInt32LE(at)) : file.readBigUInt64LE(at);
      let value =
        typeof change.value === 'object' && 'delta' in change.value
          ? old + BigInt(change.value.delta)
          : BigInt(change.value);
      const max = width === 4 ? 0xffffffffn : 2n ** 64n - 1n;
      value = value < 0n ? 0n : value > max ? max : value;
      if (width === 4) file.writeUInt32LE(Number(value), at);
      else file.writeBigUInt64LE(value, at);
      break;
    }
    case 'json': {
      // Another JSON value in place of the fields, lengths kept right.
      const jsonLength = file.readUInt32LE(12);
      const json = Buffer.from(JSON.stringify(change.json) ?? 'null');
      const head = Buffer.from(file.subarray(0, HEAD));
      head.writeUInt32LE(json.length, 12);
      file = Buffer.concat([head, json, file.subarray(HEAD + jsonLength)]);
      break;
    }
  }
  return fix ? reseal(file) : file;
}

/** Random bytes, sometimes behind a valid magic and version, sometimes sealed. */
const hostileBytes = (magic) =>
  fc
    .record({
      body: bytes(300),
      magic: fc.boolean(),
      reseal: fc.boolean(),
    })
    .map(({ body, magic: withMagic, reseal: fix }) => {
      let file = body;
      if (withMagic) {
        const head = Buffer.alloc(10);
        magic.copy(head);
        head.writeUInt16LE(1, 8);
        file = Buffer.concat([head, body]);
      }
      return fix ? reseal(file) : file;
    });

function isCorruptError(err) {
  return err instanceof QueueError && err.code === 'ERR_QUEUE_CORRUPT' && err.name === 'CorruptError';
}

const isText = (v) => v === null || (typeof v === 'string' && v.isWellFormed());
const isAddress = (v) => isText(v) && !/[\r\n\0]/.test(v ?? '');

/** What any decoded envelope must look like, whatever the bytes were. */
function envelopeShapeProblem(e) {
  if (!(e instanceof Envelope)) return 'not an Envelope';
  if (!isAddress(e.sender)) return `sender ${JSON.stringify(e.sender)}`;
  if (!Array.isArray(e.recipients) || !e.recipients.every((r) => typeof r === 'string' && isAddress(r))) {
    return `recipients ${JSON.stringify(e.recipients)}`;
  }
  for (const key of ['ip', 'host', 'name', 'protocol', 'auth']) {
    if (!isText(e.client[key])) return `client.${key} ${JSON.stringify(e.client[key])}`;
  }
  if (!isText(e.receiver)) return `receiver ${JSON.stringify(e.receiver)}`;
  if (e.timestamp !== null && !Number.isFinite(e.timestamp)) return `timestamp ${e.timestamp}`;
  if (!Buffer.isBuffer(e.headers.bytes) || !Buffer.isBuffer(e.message)) return 'bytes are not Buffers';
  return null;
}

function metaShapeProblem(m, id) {
  const u32 = (v) => Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
  if (m.id !== id) return `id ${m.id}`;
  if (!Number.isFinite(m.timestamp)) return `timestamp ${m.timestamp}`;
  if (!u32(m.attempts)) return `attempts ${m.attempts}`;
  if (!u32(m.recipientCount)) return `recipientCount ${m.recipientCount}`;
  if (!Number.isSafeInteger(m.envSize) || m.envSize < 0 || m.envSize > 2 ** 31 - 1) return `envSize ${m.envSize}`;
  if (!m.delivered.every((x, i) => u32(x) && x < m.recipientCount && (i === 0 || x > m.delivered[i - 1]))) {
    return `delivered ${m.delivered}`;
  }
  return null;
}

function sameEnvelope(a, b) {
  return (
    JSON.stringify([a.sender, a.recipients, a.client, a.receiver]) ===
      JSON.stringify([b.sender, b.recipients, b.client, b.receiver]) &&
    Object.is(a.timestamp, b.timestamp) &&
    a.headers.bytes.equals(b.headers.bytes) &&
    a.message.equals(b.message)
  );
}

module.exports = {
  hexId,
  envelopeSource,
  metaSource,
  envelopeOf,
  mutation,
  mutate,
  hostileBytes,
  isCorruptError,
  envelopeShapeProblem,
  metaShapeProblem,
  sameEnvelope,
};
