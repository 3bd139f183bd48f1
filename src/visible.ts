/**
 * Untrusted text made safe to show. Queued mail comes from strangers, and
 * a terminal obeys what it is sent: control characters move the cursor,
 * retitle the window or answer back, and Unicode format characters (the
 * bidirectional overrides and isolates, zero-width characters) make text
 * read differently from what it is.
 */

const TAB = 0x09;
const LF = 0x0a;
const CR = 0x0d;
const DEL = 0x7f;

/**
 * Unicode format characters (general category Cf) and the line and
 * paragraph separators, which some terminals and editors also obey.
 */
const FORMAT_CHARACTER = /^[\p{Cf}\u2028\u2029]$/u;
const FORMAT_CHARACTERS = /[\p{Cf}\u2028\u2029]/gu;

/** The lowest format character, U+00AD SOFT HYPHEN. */
const FIRST_FORMAT = 0xad;

const CONTROL_NAMES: Record<number, string> = {
  [TAB]: '\\t',
  [LF]: '\\n',
  [CR]: '\\r',
};

/**
 * Bytes made safe for a terminal: valid UTF-8 that is neither a control
 * nor a format character is kept. C0 controls and DEL become `\x1b`,
 * `\x7f` (TAB, LF and CR `\t`, `\n`, `\r`); C1 controls and format
 * characters become `\u009b`, `\u202e` (`\u{e0001}` above U+FFFF); each
 * invalid UTF-8 byte becomes `\xNN`.
 *
 * With `keepLines`, TAB and LF are kept and CRLF becomes LF; a CR not
 * followed by LF is still shown as `\r`. Backslashes are not escaped, so
 * the text `\x1b` in a message looks like an escaped ESC.
 *
 * @returns `bytes` itself when nothing needed escaping.
 */
export function visible(bytes: Buffer, keepLines: boolean): Buffer {
  const out: Buffer[] = [];
  let clean = 0;
  let i = 0;

  const escape = (text: string, next: number): void => {
    out.push(bytes.subarray(clean, i), Buffer.from(text, 'latin1'));
    i = next;
    clean = next;
  };

  while (i < bytes.length) {
    const b = bytes[i];

    if (b >= 0x20 && b < DEL) {
      i++;
    } else if (b < 0x80) {
      if (keepLines && (b === TAB || b === LF)) {
        i++;
      } else if (keepLines && b === CR && bytes[i + 1] === LF) {
        escape('\n', i + 2);
      } else {
        escape(CONTROL_NAMES[b] ?? `\\x${hex2(b)}`, i + 1);
      }
    } else {
      const length = utf8Length(bytes, i);
      const cp = length === 0 ? -1 : codePoint(bytes, i, length);

      if (length === 0) {
        escape(`\\x${hex2(b)}`, i + 1);
      } else if (cp <= 0x9f || isFormatCharacter(cp)) {
        escape(unicodeEscape(cp), i + length);
      } else {
        i += length;
      }
    }
  }

  if (clean === 0) return bytes;
  out.push(bytes.subarray(clean));
  return Buffer.concat(out);
}

/**
 * A string with every control and format character escaped, line breaks
 * included.
 */
export function visibleText(text: string): string {
  return visible(Buffer.from(text, 'utf8'), false).toString('utf8');
}

/**
 * One JSON line. JSON.stringify escapes C0 controls but not DEL, C1
 * controls or format characters, which terminals obey: those are escaped
 * too, as `\u007f` or a surrogate pair `\udb40\udc01`, still valid JSON.
 */
export function jsonLine(value: unknown): string {
  const json = JSON.stringify(value)
    .replace(/[\u007f-\u009f]/g, jsonEscape)
    .replace(FORMAT_CHARACTERS, jsonEscape);
  return `${json}\n`;
}

function jsonEscape(c: string): string {
  let out = '';
  for (let k = 0; k < c.length; k++) {
    out += `\\u${c.charCodeAt(k).toString(16).padStart(4, '0')}`;
  }
  return out;
}

function isFormatCharacter(cp: number): boolean {
  if (cp < FIRST_FORMAT) return false;
  return FORMAT_CHARACTER.test(String.fromCodePoint(cp));
}

function unicodeEscape(cp: number): string {
  const hex = cp.toString(16);
  return cp > 0xffff ? `\\u{${hex}}` : `\\u${hex.padStart(4, '0')}`;
}

/** Length of the well-formed UTF-8 sequence at `i`, or 0 (RFC 3629). */
export function utf8Length(bytes: Uint8Array, i: number): number {
  const b = bytes[i];
  let length: number;
  let low = 0x80;
  let high = 0xbf;

  if (b >= 0xc2 && b <= 0xdf) {
    length = 2;
  } else if (b >= 0xe0 && b <= 0xef) {
    length = 3;
    if (b === 0xe0) low = 0xa0; // overlong
    if (b === 0xed) high = 0x9f; // surrogates
  } else if (b >= 0xf0 && b <= 0xf4) {
    length = 4;
    if (b === 0xf0) low = 0x90; // overlong
    if (b === 0xf4) high = 0x8f; // above U+10FFFF
  } else {
    return 0;
  }

  for (let k = 1; k < length; k++) {
    const c = bytes[i + k];
    const min = k === 1 ? low : 0x80;
    const max = k === 1 ? high : 0xbf;
    if (c === undefined || c < min || c > max) return 0;
  }

  return length;
}

/** The code point of the well-formed sequence of `length` bytes at `i`. */
function codePoint(bytes: Uint8Array, i: number, length: number): number {
  let cp = bytes[i] & (0xff >> (length + 1));
  for (let k = 1; k < length; k++) cp = (cp << 6) | (bytes[i + k] & 0x3f);
  return cp;
}

function hex2(byte: number): string {
  return byte.toString(16).padStart(2, '0');
}
