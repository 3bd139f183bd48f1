/**
 * The message envelope kept by the queue: the SMTP transaction data plus the
 * raw message, split into its header block and its body.
 *
 * The raw bytes are the source of truth. Nothing here re-encodes, re-folds
 * or re-spaces them: a parsed message flattens back to the same bytes, and
 * a prepended header is the only change ever made to them.
 */

import { InvalidArgumentError } from './errors';

const CR = 0x0d;
const LF = 0x0a;
const SP = 0x20;
const HTAB = 0x09;
const COLON = 0x3a;

/** RFC 5322 limit for one line, not counting its line ending. */
const MAX_LINE_OCTETS = 998;

const CRLF = Buffer.from('\r\n', 'latin1');
const BARE_LF = Buffer.from('\n', 'latin1');

/** Who handed the message over; every key present, null when unknown. */
export interface ClientInfo {
  ip: string | null;
  host: string | null;
  name: string | null;
  protocol: string | null;
  auth: string | null;
}

/** The envelope fields a caller may set when creating an envelope. */
export interface EnvelopeInit {
  sender?: string | null;
  recipients?: string[];
  client?: Partial<ClientInfo>;
  receiver?: string | null;
  timestamp?: number | null;
}

interface Field {
  name: string;
  lower: string;
  value: string;
}

function isWsp(byte: number | undefined): boolean {
  return byte === SP || byte === HTAB;
}

function toBuffer(data: Buffer | Uint8Array, what: string): Buffer {
  if (Buffer.isBuffer(data)) return data;

  if (data instanceof Uint8Array) {
    // A view over the same memory: callers that must not share it copy.
    return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  }

  throw new InvalidArgumentError(`${what} must be a Buffer or Uint8Array`);
}

/**
 * A copy with memory of its own. `Buffer.from()` places small copies in a
 * shared pool, so two envelopes' bytes could sit in one ArrayBuffer.
 */
function ownCopy(data: Buffer): Buffer {
  const out = Buffer.allocUnsafeSlow(data.length);
  data.copy(out);
  return out;
}

/**
 * Offset just past the empty line that ends the header block, or
 * `raw.length` when there is none.
 *
 * A line ending is CRLF or LF. The empty line is a line ending at offset 0
 * or one directly after another line ending; a line of spaces or tabs is
 * not empty. A lone CR is not a line ending.
 */
function headerBlockEnd(raw: Buffer): number {
  if (raw[0] === LF) return 1;
  if (raw[0] === CR && raw[1] === LF) return 2;

  let lf = raw.indexOf(LF);

  while (lf !== -1) {
    const next = lf + 1;

    if (raw[next] === LF) return next + 1;
    if (raw[next] === CR && raw[next + 1] === LF) return next + 2;

    lf = raw.indexOf(LF, next);
  }

  return raw.length;
}

/** Length of the field name before its colon, or -1 when not a field. */
function fieldNameEnd(line: Buffer): number {
  const colon = line.indexOf(COLON);
  if (colon < 1) return -1;

  // Whitespace between the name and the colon is obsolete syntax
  // (RFC 5322 section 4.5.8) that still turns up; accept and drop it.
  let end = colon;
  while (end > 0 && isWsp(line[end - 1])) end--;
  if (end === 0) return -1;

  for (let i = 0; i < end; i++) {
    if (line[i] < 0x21 || line[i] > 0x7e) return -1;
  }

  return end;
}

/** The fields of a header block, in order. */
function parseFields(block: Buffer): Field[] {
  const out: Field[] = [];
  let start = 0;
  let current: { name: string; parts: Buffer[] } | null = null;

  const finish = (): void => {
    if (!current) return;

    const raw = Buffer.concat(current.parts).toString('utf8');
    const value = raw.replace(/^[ \t]+/, '');
    out.push({ name: current.name, lower: current.name.toLowerCase(), value });
    current = null;
  };

  while (start < block.length) {
    const lf = block.indexOf(LF, start);
    const lineEnd = lf === -1 ? block.length : lf + 1;

    // The line's content without its line ending: unfolding joins the
    // contents and so keeps the space or tab that starts the next line.
    let contentEnd = lineEnd;
    if (lf !== -1) {
      contentEnd = lf > start && block[lf - 1] === CR ? lf - 1 : lf;
    }
    const line = block.subarray(start, contentEnd);

    start = lineEnd;

    if (line.length === 0 && lf !== -1) break;

    if (isWsp(line[0])) {
      // A continuation of the field above; on the first line, or after a
      // line that is not a field, it belongs to no field.
      if (current) current.parts.push(line);
      continue;
    }

    finish();

    // Not a field: skipped, like an mbox "From " line ("From" and a space
    // then an address, never a colon right after the name). "From : x" is
    // a field by this rule and is kept as one.
    const nameEnd = fieldNameEnd(line);
    if (nameEnd === -1) continue;

    current = {
      name: line.subarray(0, nameEnd).toString('latin1'),
      parts: [line.subarray(line.indexOf(COLON) + 1)],
    };
  }

  finish();
  return out;
}

/**
 * A read-only view of a raw header block.
 *
 * The block is kept exactly as given and its bytes are the stored form;
 * fields are found in it on first lookup. A field starts at a line whose
 * text before the first colon is a name of printable ASCII; lines that start
 * with a space or tab continue it. A first line starting with a space or
 * tab and lines without a name and colon (an mbox `From ` line among them)
 * stay in the bytes but are never returned as fields. Values are unfolded,
 * decoded as UTF-8 (invalid bytes become U+FFFD) and stripped of the
 * spaces and tabs after the colon. Name lookups ignore ASCII case.
 */
export class Headers {
  readonly #bytes: Buffer;
  #fields: Field[] | null = null;

  /**
   * @param bytes - the header block, kept without copying; it must not be
   *   changed afterwards.
   */
  constructor(bytes: Buffer | Uint8Array = Buffer.alloc(0)) {
    this.#bytes = toBuffer(bytes, 'header block');
  }

  /**
   * The raw header block, the same Buffer every time. It is the stored form:
   * do not change it.
   */
  get bytes(): Buffer {
    return this.#bytes;
  }

  /** First field named `name`, unfolded, or undefined. */
  get(name: string): string | undefined {
    const lower = String(name).toLowerCase();
    return this.#index().find((f) => f.lower === lower)?.value;
  }

  /** Every field named `name`, in order. */
  getAll(name: string): string[] {
    const lower = String(name).toLowerCase();
    return this.#index()
      .filter((f) => f.lower === lower)
      .map((f) => f.value);
  }

  /** Whether a field named `name` exists. */
  has(name: string): boolean {
    return this.get(name) !== undefined;
  }

  /** Field names in order, spelled as written, repeats included. */
  names(): string[] {
    return this.#index().map((f) => f.name);
  }

  /** A new view of `field` followed by this block; this one is unchanged. */
  withPrepended(field: Buffer): Headers {
    return new Headers(Buffer.concat([field, this.#bytes]));
  }

  /** A view of a private copy of the bytes. */
  copy(): Headers {
    return new Headers(ownCopy(this.#bytes));
  }

  #index(): Field[] {
    this.#fields ??= parseFields(this.#bytes);
    return this.#fields;
  }
}

/** The line ending a new field gets: the first in the message, else CRLF. */
function lineEndingOf(header: Buffer, body: Buffer): Buffer {
  for (const buf of [header, body]) {
    const lf = buf.indexOf(LF);
    if (lf === -1) continue;
    return lf > 0 && buf[lf - 1] === CR ? CRLF : BARE_LF;
  }

  return CRLF;
}

/**
 * Splits a value at the folds it already holds (CRLF, CR or LF followed by
 * a space or tab). Each later piece starts with that space or tab.
 */
function splitFolds(value: Buffer): Buffer[] {
  const pieces: Buffer[] = [];
  let start = 0;
  let i = 0;

  while (i < value.length) {
    const byte = value[i];

    if (byte !== CR && byte !== LF) {
      i++;
      continue;
    }

    const breakLen = byte === CR && value[i + 1] === LF ? 2 : 1;
    if (!isWsp(value[i + breakLen])) {
      throw new InvalidArgumentError(
        'header value may hold a line break only as a fold before a ' +
          'space or tab',
      );
    }

    pieces.push(value.subarray(start, i));
    i += breakLen;
    start = i;
  }

  pieces.push(value.subarray(start));
  return pieces;
}

/** Index of the last byte that is not a space or tab, or -1. */
function lastText(line: Buffer, start = 0): number {
  let i = line.length - 1;
  while (i >= start && isWsp(line[i])) i--;
  return i >= start ? i : -1;
}

function whitespaceLineError(): InvalidArgumentError {
  // RFC 5322 allows no such line, and some readers take it for the empty
  // line that ends the header block.
  return new InvalidArgumentError(
    'header value would write a line of only spaces and tabs',
  );
}

/**
 * Breaks one physical line so no piece exceeds the line limit. `prefix` is
 * the count of octets before `line` on its first output line (the name and
 * `: `), and only the value's own spaces and tabs are break points: the
 * break goes before one, which then starts the next line. Every piece
 * after the first line of the field holds something other than spaces and
 * tabs.
 */
function foldLong(line: Buffer, prefix: number): Buffer[] {
  const out: Buffer[] = [];
  let start = 0;
  let used = prefix;

  if (used === 0 && lastText(line) === -1) throw whitespaceLineError();

  while (used + line.length - start > MAX_LINE_OCTETS) {
    // The furthest break that keeps this line within the limit and leaves
    // text both before it and after it: a break inside trailing spaces
    // would start a line of spaces only.
    let cut = -1;
    const limit = start + MAX_LINE_OCTETS - used;
    const last = lastText(line, start);

    for (let i = Math.min(limit, last - 1); i > start; i--) {
      if (isWsp(line[i])) {
        cut = i;
        break;
      }
    }

    // A nearer break only shortens this line, so when the furthest one
    // leaves it spaces only, every one does.
    let hasText = used > 0;
    for (let i = start; cut !== -1 && !hasText && i < cut; i++) {
      if (!isWsp(line[i])) hasText = true;
    }

    if (cut === -1 || !hasText) {
      throw new InvalidArgumentError(
        `header line would exceed ${MAX_LINE_OCTETS} octets and has no ` +
          'space or tab to fold at that leaves text on both lines',
      );
    }

    out.push(line.subarray(start, cut));
    start = cut;
    used = 0;
  }

  out.push(line.subarray(start));
  return out;
}

/** Builds `Name: value` plus line ending, folded to the line limit. */
function buildField(name: unknown, value: unknown, eol: Buffer): Buffer {
  if (typeof name !== 'string' || !/^[\x21-\x39\x3b-\x7e]+$/.test(name)) {
    throw new InvalidArgumentError(
      'header name must be a non-empty string of printable ASCII without ":"',
    );
  }

  if (typeof value !== 'string') {
    throw new InvalidArgumentError('header value must be a string');
  }

  const head = Buffer.from(`${name}: `, 'latin1');
  const pieces = splitFolds(Buffer.from(value, 'utf8'));

  const lines: Buffer[] = [];
  pieces.forEach((piece, i) => {
    lines.push(...foldLong(piece, i === 0 ? head.length : 0));
  });

  const chunks: Buffer[] = [head];
  for (let i = 0; i < lines.length; i++) {
    if (i > 0) chunks.push(eol);
    chunks.push(lines[i]);
  }
  chunks.push(eol);

  return Buffer.concat(chunks);
}

/** A copy of `recipients`, which must be an array of strings. */
function recipientsFrom(recipients: unknown, what: string): string[] {
  if (
    !Array.isArray(recipients) ||
    !recipients.every((r) => typeof r === 'string')
  ) {
    throw new InvalidArgumentError(`${what} must be an array of strings`);
  }

  return [...recipients];
}

function clientFrom(client: Partial<ClientInfo> = {}): ClientInfo {
  return {
    ip: client.ip ?? null,
    host: client.host ?? null,
    name: client.name ?? null,
    protocol: client.protocol ?? null,
    auth: client.auth ?? null,
  };
}

/**
 * One message in the queue: who sent it to whom, how it arrived, and its
 * raw header block and body.
 */
export class Envelope {
  /** Envelope sender; `""` is the null sender of bounces and stays `""`. */
  sender: string | null;
  /** Envelope recipients, in order. */
  recipients: string[];
  /** View of the raw header block. */
  headers: Headers;
  /** The body: the bytes after the empty line that ends the headers. */
  message: Buffer;
  /** The client that handed the message over. */
  client: ClientInfo;
  /** Name of the host that received the message. */
  receiver: string | null;
  /** Receipt time in Unix seconds (fractional), or null. */
  timestamp: number | null;

  /**
   * An envelope with an empty header block and an empty body. The
   * recipients and client given are copied, not kept.
   *
   * @throws InvalidArgumentError (a TypeError) when `recipients` is given
   *   and is not an array of strings.
   */
  constructor(init: EnvelopeInit = {}) {
    this.sender = init.sender ?? null;
    this.recipients =
      init.recipients === undefined
        ? []
        : recipientsFrom(init.recipients, 'recipients');
    this.headers = new Headers();
    this.message = Buffer.alloc(0);
    this.client = clientFrom(init.client);
    this.receiver = init.receiver ?? null;
    this.timestamp = init.timestamp ?? null;
  }

  /**
   * An envelope over stored parts, as `flatten()` returned them. Neither
   * Buffer is copied: the body may be large, and the caller hands both over.
   */
  static fromParts(
    headerBytes: Buffer | Uint8Array,
    message: Buffer | Uint8Array,
    init?: EnvelopeInit,
  ): Envelope {
    const envelope = new Envelope(init);
    envelope.headers = new Headers(toBuffer(headerBytes, 'header block'));
    envelope.message = toBuffer(message, 'message');
    return envelope;
  }

  /**
   * Splits a raw message into header block and body, copying it.
   *
   * The header block runs up to and including the first empty line (a line
   * ending, CRLF or LF, at offset 0 or directly after another line ending);
   * the body is every byte after it. Without an empty line the whole input
   * is the header block and the body is empty.
   */
  parse(raw: Buffer | Uint8Array): void {
    const input = toBuffer(raw, 'raw message');
    const end = headerBlockEnd(input);

    // Two copies rather than two views of one, so that a small header
    // block never keeps a large body's memory alive.
    this.headers = new Headers(ownCopy(input.subarray(0, end)));
    this.message = ownCopy(input.subarray(end));
  }

  /**
   * The header block and the body; their concatenation is the stored
   * message. These are the envelope's own Buffers, not copies: do not
   * change them.
   */
  flatten(): [Buffer, Buffer] {
    return [this.headers.bytes, this.message];
  }

  /**
   * Puts the field `name: value` before everything else in the header block,
   * leaving the existing bytes as they are.
   *
   * The field ends with the first line ending of the message (CRLF when it
   * has none), and folds already in `value` are written with that ending. A
   * line over 998 octets is folded before a space or tab of the value, and
   * never so that a line holds only spaces and tabs.
   *
   * The header block is read as one, here and once stored: when it began
   * with a continuation line (a line starting with a space or tab), that
   * line continues the new field. `prependHeader('X', 'v')` on
   * `" lead\r\nA: 1\r\n\r\n"` gives `headers.get('x') === 'v lead'`.
   *
   * @throws InvalidArgumentError (a TypeError) when the name is not
   *   printable ASCII without `:`, the value is not a string, holds a
   *   line break that is not a fold, would write a line of only spaces
   *   and tabs (a fold followed by nothing but whitespace), or has a run
   *   too long to fit a line; the envelope is then unchanged.
   */
  prependHeader(name: string, value: string): void {
    const eol = lineEndingOf(this.headers.bytes, this.message);
    const field = buildField(name, value, eol);
    this.headers = this.headers.withPrepended(field);
  }

  /**
   * A deep copy: its own recipients, client, header bytes and body.
   *
   * @param newRecipients - recipients for the copy (copied; `[]` is kept
   *   as empty); by default those of this envelope.
   * @throws InvalidArgumentError (a TypeError) when `newRecipients` is
   *   given and is not an array of strings.
   */
  copy(newRecipients?: string[]): Envelope {
    const recipients =
      newRecipients === undefined
        ? this.recipients
        : recipientsFrom(newRecipients, 'newRecipients');

    const envelope = new Envelope({
      sender: this.sender,
      recipients,
      client: this.client,
      receiver: this.receiver,
      timestamp: this.timestamp,
    });

    envelope.headers = this.headers.copy();
    envelope.message = ownCopy(this.message);
    return envelope;
  }
}
