/**
 * The on-disk format: the one module that knows the bytes of env and meta
 * files. docs/FORMAT.md specifies the same layout in prose.
 *
 * Both files are self-checking: magic, version, the message id, explicit
 * lengths and a CRC-32 of everything before it. A truncated file, a flipped
 * bit or a file copied under another id's name fails `decode*()` with a
 * CorruptError rather than yielding wrong data.
 */

import { constants as bufferConstants } from 'node:buffer';
import { crc32 } from 'node:zlib';

import { Envelope, type ClientInfo } from './envelope';
import { CorruptError, InvalidEnvelopeError, TooLargeError } from './errors';

/** Byte 0x89 and CR LF catch 7-bit and text-mode transfers, as in PNG. */
export const ENV_MAGIC = Buffer.from('\x89SQENV\r\n', 'latin1');
export const META_MAGIC = Buffer.from('\x89SQMET\r\n', 'latin1');
export const FORMAT_VERSION = 1;

const ENV_HEAD = 56;
const META_HEAD = 56;
const TRAILER = 4;

/** Flag bit in the env head: the envelope has a receipt timestamp. */
const HAS_TIMESTAMP = 1;

/**
 * The largest env file the store accepts, 2 GiB less one byte: get() must
 * read it back whole, and node:fs reads at most that much into one Buffer.
 */
export const MAX_ENV_FILE_SIZE = Math.min(
  2 ** 31 - 1,
  bufferConstants.MAX_LENGTH,
);

export const ID_PATTERN = /^[0-9a-f]{32}$/;

/** The envelope fields that are not bytes, stored as JSON. */
interface EnvelopeFields {
  sender: string | null;
  recipients: string[];
  client: ClientInfo;
  receiver: string | null;
}

/** The mutable per-message state kept in the meta file. */
export interface Meta {
  id: string;
  /** Next delivery attempt, Unix seconds; stored as float64. */
  timestamp: number;
  attempts: number;
  /** Number of recipients in the envelope as first written. */
  recipientCount: number;
  /** Indexes of delivered recipients, ascending, no repeats. */
  delivered: number[];
  /** Size in bytes of the env file, to notice a truncated one cheaply. */
  envSize: number;
}

/**
 * Encodes an envelope as the buffers of an env file, in order. The header
 * block and body are copied once here: the caller may reuse its Buffers as
 * soon as write() returns, while the bytes reach the disk later.
 */
export function encodeEnvelope(id: string, envelope: Envelope): Buffer[] {
  const { fields, timestamp, headerBlock, body } = checkEnvelope(envelope);
  const json = Buffer.from(JSON.stringify(fields), 'utf8');

  const total =
    ENV_HEAD + json.length + headerBlock.length + body.length + TRAILER;
  if (total > MAX_ENV_FILE_SIZE) {
    throw new TooLargeError(
      `message of ${total} bytes exceeds the maximum of ` +
        `${MAX_ENV_FILE_SIZE} bytes`,
    );
  }

  const head = Buffer.alloc(ENV_HEAD);
  ENV_MAGIC.copy(head, 0);
  head.writeUInt16LE(FORMAT_VERSION, 8);
  head.writeUInt16LE(timestamp === null ? 0 : HAS_TIMESTAMP, 10);
  head.writeUInt32LE(json.length, 12);
  head.write(id, 16, 'hex');
  head.writeDoubleLE(timestamp ?? 0, 32);
  head.writeBigUInt64LE(BigInt(headerBlock.length), 40);
  head.writeBigUInt64LE(BigInt(body.length), 48);

  const parts = [head, json, Buffer.from(headerBlock), Buffer.from(body)];
  const trailer = Buffer.alloc(TRAILER);
  trailer.writeUInt32LE(crcOf(parts), 0);
  parts.push(trailer);
  return parts;
}

/** Total byte length of encoded buffers. */
export function sizeOf(bufs: Buffer[]): number {
  return bufs.reduce((n, b) => n + b.length, 0);
}

/**
 * Decodes an env file. The returned envelope's header block and body are
 * views into `file`, not copies.
 */
export function decodeEnvelope(
  file: Buffer,
  id: string,
  path: string,
): Envelope {
  const fail = (reason: string): never => {
    throw new CorruptError(path, reason);
  };
  if (file.length < ENV_HEAD + TRAILER) {
    fail(`${file.length} bytes is too short`);
  }
  checkMagic(file, ENV_MAGIC, path);

  const flags = file.readUInt16LE(10);
  if ((flags & ~HAS_TIMESTAMP) !== 0) fail(`unknown flags ${flags}`);

  const jsonLength = file.readUInt32LE(12);
  const headerLength = safeLength(file.readBigUInt64LE(40));
  const bodyLength = safeLength(file.readBigUInt64LE(48));
  const expected = ENV_HEAD + jsonLength + headerLength + bodyLength + TRAILER;
  if (expected !== file.length) {
    fail(`length is ${file.length} bytes, its header says ${expected}`);
  }
  checkCrc(file, path);
  checkId(file, id, path);

  let parsed: unknown;
  try {
    const json = file.subarray(ENV_HEAD, ENV_HEAD + jsonLength);
    parsed = JSON.parse(strictUtf8.decode(json));
  } catch (err) {
    return fail(`envelope fields are not UTF-8 JSON (${String(err)})`);
  }
  const problem = fieldsProblem(parsed);
  if (problem !== null) fail(`envelope fields: ${problem}`);
  const fields = parsed as EnvelopeFields;

  const receivedAt = file.readDoubleLE(32);
  if (flags & HAS_TIMESTAMP ? !Number.isFinite(receivedAt) : receivedAt !== 0) {
    fail(`bad receipt timestamp ${receivedAt}`);
  }

  const headerStart = ENV_HEAD + jsonLength;
  const bodyStart = headerStart + headerLength;
  return Envelope.fromParts(
    file.subarray(headerStart, bodyStart),
    file.subarray(bodyStart, bodyStart + bodyLength),
    {
      sender: fields.sender,
      recipients: fields.recipients,
      client: fields.client,
      receiver: fields.receiver,
      timestamp: flags & HAS_TIMESTAMP ? receivedAt : null,
    },
  );
}

/** Encodes a meta file. */
export function encodeMeta(meta: Meta): Buffer {
  const file = Buffer.alloc(META_HEAD + 4 * meta.delivered.length + TRAILER);
  META_MAGIC.copy(file, 0);
  file.writeUInt16LE(FORMAT_VERSION, 8);
  file.writeUInt16LE(0, 10);
  file.writeUInt32LE(meta.attempts, 12);
  file.write(meta.id, 16, 'hex');
  file.writeDoubleLE(meta.timestamp, 32);
  file.writeBigUInt64LE(BigInt(meta.envSize), 40);
  file.writeUInt32LE(meta.recipientCount, 48);
  file.writeUInt32LE(meta.delivered.length, 52);
  let at = META_HEAD;
  for (const index of meta.delivered) {
    file.writeUInt32LE(index, at);
    at += 4;
  }
  file.writeUInt32LE(crc32(file.subarray(0, at)), at);
  return file;
}

/** Decodes a meta file. */
export function decodeMeta(file: Buffer, id: string, path: string): Meta {
  const fail = (reason: string): never => {
    throw new CorruptError(path, reason);
  };
  if (file.length < META_HEAD + TRAILER) {
    fail(`${file.length} bytes is too short`);
  }
  checkMagic(file, META_MAGIC, path);
  const flags = file.readUInt16LE(10);
  if (flags !== 0) fail(`unknown flags ${flags}`);
  const count = file.readUInt32LE(52);
  const expected = META_HEAD + 4 * count + TRAILER;
  if (expected !== file.length) {
    fail(`length is ${file.length} bytes, its header says ${expected}`);
  }
  checkCrc(file, path);
  checkId(file, id, path);

  const recipientCount = file.readUInt32LE(48);
  const delivered: number[] = [];
  for (let at = META_HEAD; at < META_HEAD + 4 * count; at += 4) {
    const index = file.readUInt32LE(at);
    const last = delivered.length ? delivered[delivered.length - 1] : -1;
    if (index >= recipientCount || index <= last) {
      fail('delivered recipient list is out of order or out of range');
    }
    delivered.push(index);
  }
  const timestamp = file.readDoubleLE(32);
  if (!Number.isFinite(timestamp)) fail(`bad timestamp ${timestamp}`);
  const envSize = safeLength(file.readBigUInt64LE(40));
  if (envSize > MAX_ENV_FILE_SIZE) fail(`envelope size ${envSize} too large`);
  return {
    id,
    timestamp,
    attempts: file.readUInt32LE(12),
    recipientCount,
    delivered,
    envSize,
  };
}

interface CheckedEnvelope {
  fields: EnvelopeFields;
  timestamp: number | null;
  headerBlock: Uint8Array;
  body: Uint8Array;
}

/**
 * Checks what the format can store exactly. Anything else is refused with
 * an InvalidEnvelopeError rather than stored changed: JSON cannot carry a
 * lone surrogate through UTF-8, a string body would be counted in UTF-16
 * units but written as UTF-8 bytes, and CR, LF or NUL in an address would
 * let it inject SMTP commands once it is relayed.
 */
function checkEnvelope(envelope: Envelope): CheckedEnvelope {
  const refuse = (reason: string): never => {
    throw new InvalidEnvelopeError(reason);
  };
  if (envelope === null || typeof envelope !== 'object') {
    refuse('envelope must be an Envelope object');
  }
  if (typeof envelope.flatten !== 'function') {
    refuse('envelope has no flatten() method');
  }

  const client = envelope.client ?? {};
  if (!isRecord(client)) refuse('envelope.client must be an object');
  const fields = {
    sender: envelope.sender === undefined ? null : envelope.sender,
    recipients: Array.isArray(envelope.recipients)
      ? envelope.recipients.slice()
      : envelope.recipients,
    client: Object.fromEntries(
      CLIENT_KEYS.map((key) => [key, client[key] ?? null]),
    ),
    receiver: envelope.receiver ?? null,
  };
  const problem = fieldsProblem(fields);
  if (problem !== null) refuse(`envelope.${problem}`);

  const timestamp = envelope.timestamp ?? null;
  if (timestamp !== null && !Number.isFinite(timestamp)) {
    refuse('envelope.timestamp must be a finite number or null');
  }

  const [headerBlock, body] = envelope.flatten();
  if (!(headerBlock instanceof Uint8Array) || !(body instanceof Uint8Array)) {
    refuse('envelope header block and message must be Buffers');
  }
  return {
    fields: fields as unknown as EnvelopeFields,
    timestamp,
    headerBlock,
    body,
  };
}

const CLIENT_KEYS = ['ip', 'host', 'name', 'protocol', 'auth'] as const;

/**
 * Why a value is not envelope fields this format stores, or null. Used
 * both ways: to refuse an envelope before it is written, and to refuse a
 * file whose checksum is good but whose JSON is not what this module
 * writes (another writer, a hand edit), which would otherwise surface far
 * from the file, as a TypeError or as an address that smuggles CR LF.
 */
function fieldsProblem(value: unknown): string | null {
  if (!isRecord(value)) return 'fields are not an object';
  if (value.sender !== null) {
    const bad = textProblem(value.sender, true);
    if (bad) return `sender ${bad}`;
  }
  const recipients = value.recipients;
  if (!Array.isArray(recipients)) return 'recipients must be an array';
  for (let i = 0; i < recipients.length; i++) {
    const bad = textProblem(recipients[i], true);
    if (bad) return `recipients[${i}] ${bad}`;
  }
  const client = value.client;
  if (!isRecord(client)) return 'client must be an object';
  for (const key of CLIENT_KEYS) {
    const bad = client[key] === null ? null : textProblem(client[key], false);
    if (bad) return `client.${key} ${bad}`;
  }
  if (value.receiver !== null) {
    const bad = textProblem(value.receiver, false);
    if (bad) return `receiver ${bad}`;
  }
  return null;
}

function textProblem(value: unknown, address: boolean): string | null {
  if (typeof value !== 'string') return 'must be a string or null';
  if (!value.isWellFormed()) {
    return 'contains a lone UTF-16 surrogate, which UTF-8 cannot store';
  }
  if (address && /[\r\n\0]/.test(value)) return 'contains CR, LF or NUL';
  return null;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Decodes UTF-8 and throws on a malformed byte rather than replacing it. */
const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

function crcOf(parts: Buffer[]): number {
  let crc = 0;
  for (const part of parts) crc = crc32(part, crc);
  return crc;
}

function checkMagic(file: Buffer, magic: Buffer, path: string): void {
  if (!file.subarray(0, 8).equals(magic)) {
    throw new CorruptError(path, 'bad magic number');
  }
  const version = file.readUInt16LE(8);
  if (version !== FORMAT_VERSION) {
    throw new CorruptError(path, `unsupported format version ${version}`);
  }
}

function checkCrc(file: Buffer, path: string): void {
  const end = file.length - TRAILER;
  const stored = file.readUInt32LE(end);
  const actual = crc32(file.subarray(0, end));
  if (stored !== actual) {
    throw new CorruptError(path, 'checksum mismatch');
  }
}

function checkId(file: Buffer, id: string, path: string): void {
  const stored = file.toString('hex', 16, 32);
  if (stored !== id) {
    throw new CorruptError(path, `file belongs to message ${stored}`);
  }
}

function safeLength(value: bigint): number {
  return value > BigInt(Number.MAX_SAFE_INTEGER)
    ? Number.MAX_SAFE_INTEGER
    : Number(value);
}
