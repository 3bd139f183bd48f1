'use strict';
// Message n of the durability workloads: its recipients, raw bytes and
// first timestamp are a pure function of n, so whoever reads the queue
// afterwards can tell what each stored message must hold.

const { createHash } = require('node:crypto');

const { Rng } = require('./trial-rng');

function recipientsFor(n) {
  return Array.from({ length: 1 + (n % 5) }, (_, i) => `r${n}.${i}@x`);
}

/** Mostly small bodies, every 16th one between 64 and 256 KiB. */
function bodyLength(n) {
  const rng = new Rng(n ^ 0x5eed);
  return n % 16 === 15 ? rng.range(64 << 10, 256 << 10) : rng.range(0, 8000);
}

function fill(buf, seed) {
  const rng = new Rng(seed);
  let i = 0;
  for (; i + 4 <= buf.length; i += 4) {
    buf.writeUInt32LE(Math.floor(rng.next() * 2 ** 32), i);
  }
  for (; i < buf.length; i++) buf[i] = rng.int(256);
  return buf;
}

function rawFor(n) {
  const head = Buffer.from(`N: ${n}\r\nSubject: message ${n}\r\n\r\n`);
  return Buffer.concat([head, fill(Buffer.alloc(bodyLength(n)), n)]);
}

function timestampFor(n) {
  return 1_700_000_000 + n / 8;
}

function envelopeFor(Envelope, n) {
  const env = new Envelope({
    sender: `s${n}@x`,
    recipients: recipientsFor(n),
  });
  env.parse(rawFor(n));
  return env;
}

/** The n a stored message was written as, from its `N:` header. */
function numberOf(envelope) {
  const value = envelope.headers.get('N');
  return value !== undefined && /^\d+$/.test(value) ? Number(value) : null;
}

/** The one big message: a header and `size` bytes of body. */
function bigRaw(size) {
  return Buffer.concat([
    Buffer.from('N: big\r\n\r\n'),
    fill(Buffer.allocUnsafe(size), 0xb16),
  ]);
}

function sha256(buf) {
  return createHash('sha256').update(buf).digest('hex');
}

module.exports = {
  recipientsFor,
  rawFor,
  timestampFor,
  envelopeFor,
  numberOf,
  bigRaw,
  sha256,
};
