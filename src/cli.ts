/**
 * slimta-queue: enqueue, list and show the messages of a queue directory
 * that holds `env/`, `meta/` and `tmp/`.
 *
 * Queued mail is untrusted input. Everything shown to a person goes
 * through {@link visible} first, so no byte of a message or an envelope
 * field can reach the terminal as a control sequence or a format
 * character.
 */

import { constants as fsConstants } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';

import {
  Command,
  CommanderError,
  InvalidArgumentError as OptionValueError,
  Option,
} from 'commander';

import {
  DiskStorage,
  type MessageInfo,
  type QuarantineReport,
} from './disk-storage';
import { Envelope } from './envelope';
import { ID_PATTERN } from './format';
import { loadNative } from './native';
import { jsonLine, visible, visibleText } from './visible';

/** A stream the CLI writes to; process.stdout and process.stderr fit. */
export interface Output {
  write(chunk: string | Uint8Array): boolean;
  isTTY?: boolean;
  once?(event: string, listener: (...args: unknown[]) => void): unknown;
  on?(event: string, listener: (...args: unknown[]) => void): unknown;
}

export interface CliIo {
  stdout: Output;
  stderr: Output;
  /** Read for the file name `-`; default process.stdin. */
  stdin?: AsyncIterable<Buffer | string>;
}

const EXIT_OK = 0;
const EXIT_FAILURE = 1;
const EXIT_USAGE = 2;

const EXIT_HELP = `
Exit status:
  0  success
  1  failure (unreadable queue or file, unknown message, I/O error)
  2  usage error (unknown command or option, missing or invalid argument)
`;

/** More files than this get a progress line on a terminal. */
const PROGRESS_MIN_FILES = 5;
const PROGRESS_INTERVAL_MS = 100;

/** A bad command line: exit status 2. */
class UsageError extends Error {}

/** A failure worth one line and exit status 1. */
class Failure extends Error {}

/**
 * Runs the command line `argv` (the arguments after the program name)
 * and resolves with the exit status: 0 ok, 1 failure, 2 usage. Never
 * rejects. It exits the process only when writing to process.stdout
 * fails: quietly with the status so far when its reader closed the pipe,
 * with one error line and status 1 on any other error.
 */
export async function main(
  argv: string[],
  io: CliIo = { stdout: process.stdout, stderr: process.stderr },
): Promise<number> {
  quietOnClosedPipe(io.stdout);

  try {
    if (argv.length === 0) {
      throw new UsageError(
        "missing command: enqueue, list or show (see 'slimta-queue --help')",
      );
    }

    const program = buildProgram(io);
    checkHelpTopic(program, argv);

    await program.parseAsync(argv, { from: 'user' });
    return EXIT_OK;
  } catch (err) {
    return report(err, io.stderr);
  }
}

/**
 * `help NAME` for a command that does not exist. Commander answers it
 * with the whole help on stderr; a mistyped name deserves one line.
 */
function checkHelpTopic(program: Command, argv: string[]): void {
  if (argv[0] !== 'help' || argv.length < 2) return;

  const topic = argv[1];
  if (topic === 'help' || program.commands.some((c) => c.name() === topic)) {
    return;
  }

  throw new UsageError(`unknown command '${topic}'`);
}

/** Prints one line for `err` and returns the exit status. */
function report(err: unknown, stderr: Output): number {
  if (err instanceof CommanderError) {
    if (
      err.code === 'commander.helpDisplayed' ||
      err.code === 'commander.version'
    ) {
      return EXIT_OK;
    }

    // Help asked for (exit code 0) or written to stderr for a bad call.
    if (err.code === 'commander.help') {
      return err.exitCode === 0 ? EXIT_OK : EXIT_USAGE;
    }

    stderr.write(errorLine(err.message.replace(/^error: /, '')));
    return EXIT_USAGE;
  }

  const message = err instanceof Error ? err.message : String(err);
  stderr.write(errorLine(message));

  return err instanceof UsageError ? EXIT_USAGE : EXIT_FAILURE;
}

function errorLine(message: string): string {
  // visibleText() escapes line breaks too, so a CR or LF in an argument
  // shows as \r or \n, and the error stays on one line.
  return `slimta-queue: ${visibleText(message.trim())}\n`;
}

function warn(stderr: Output, message: string): void {
  stderr.write(errorLine(`warning: ${message}`));
}

const closedPipeHandled = new WeakSet<object>();

/**
 * `slimta-queue list | head` closes the pipe early; the rest of the
 * output has nowhere to go, which is no error. Any other write error
 * (a full disk, EIO) is one line and status 1. Both end the process at
 * once: a write waiting for 'drain' on a broken stream would never
 * resume, so main() could not report it.
 */
function quietOnClosedPipe(stream: Output): void {
  if (stream !== process.stdout || closedPipeHandled.has(stream)) return;
  closedPipeHandled.add(stream);

  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(process.exitCode ?? EXIT_OK);

    process.stderr.write(
      errorLine(`cannot write to standard output: ${osReason(err)}`),
    );
    process.exit(EXIT_FAILURE);
  });
}

// --- the command line ------------------------------------------------------

function buildProgram(io: CliIo): Command {
  const program = new Command('slimta-queue');

  program
    .description('Inspect and fill a slimta-diskstorage mail queue.')
    .version(packageVersion(), '-V, --version')
    .exitOverride()
    .showSuggestionAfterError(true)
    .configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => io.stderr.write(s),
      outputError: () => undefined,
    })
    .addHelpText('after', EXIT_HELP);

  // Required options are checked in the actions rather than marked
  // mandatory: commander reports a missing one before an unknown one, and
  // "--queue not specified" is a poor answer to a misspelt --queue.
  const queueOption = () =>
    new Option(
      '-q, --queue <dir>',
      'queue directory (holds env/, meta/ and tmp/); required',
    );

  program
    .command('enqueue')
    .description(
      'Queue each message file (- reads standard input) and print its id.',
    )
    .addOption(queueOption())
    .option(
      '-f, --from <address>',
      "envelope sender ('' is the null sender); required",
      parseAddress,
    )
    .option(
      '-t, --to <address>',
      'envelope recipient, repeated for more; at least one',
      collectAddress,
    )
    .option(
      '--at <seconds>',
      'next delivery attempt, Unix seconds, such as 1700000000.5 ' +
        '(default: now)',
      parseSeconds,
    )
    .option('--json', 'print {id, file, bytes} as one JSON object a line')
    .argument('<file...>', 'message files, raw RFC 5322 bytes')
    .addHelpText('after', EXIT_HELP)
    .action((files: string[], opts: EnqueueOptions) =>
      enqueue(files, opts, io),
    );

  program
    .command('list')
    .description(
      'List queued messages by next delivery attempt, like mailq. ' +
        'Opens the queue read-only.',
    )
    .addOption(queueOption())
    .option(
      '--json',
      'one JSON object a line: {id, size, timestamp, nextAttempt, ' +
        'attempts, sender, recipients}',
    )
    .addHelpText(
      'after',
      '\nA damaged message is skipped with a warning on stderr; the ' +
        'exit status\nis 1 only when messages were found and none could ' +
        'be read.\n' +
        EXIT_HELP,
    )
    .action((opts: ListOptions) => list(opts, io));

  program
    .command('show')
    .description(
      'Show one message: its envelope, a blank line, then the message, ' +
        'like postcat. Control bytes and Unicode format characters are ' +
        'shown as escapes (\\x1b, \\r, \\u009b, \\u202e); invalid ' +
        'UTF-8 as \\xNN.',
    )
    .addOption(queueOption())
    .addOption(
      new Option('--raw', 'write the stored message bytes only').conflicts(
        'json',
      ),
    )
    .option(
      '--json',
      'print the envelope as JSON, the message base64 in "message"',
    )
    .argument('<id>', 'message id (32 lowercase hexadecimal characters)')
    .addHelpText('after', EXIT_HELP)
    .action((id: string, opts: ShowOptions) => show(id, opts, io));

  return program;
}

function need(value: unknown, option: string): void {
  if (value === undefined) {
    throw new UsageError(`missing required option ${option}`);
  }
}

function packageVersion(): string {
  try {
    // Read at run time: package.json sits outside the compiled tree.
    const pkg = require(path.join(__dirname, '..', 'package.json')) as {
      version?: string;
    };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

function parseAddress(value: string): string {
  // The store refuses these too, but only once the file is read: say so
  // as a usage error, before any work.
  if (/[\r\n\0]/.test(value)) {
    throw new OptionValueError('An address may not contain CR, LF or NUL.');
  }
  return value;
}

function collectAddress(value: string, previous?: string[]): string[] {
  return [...(previous ?? []), parseAddress(value)];
}

function parseSeconds(value: string): number {
  // Number() would also take "0x10", "1e9", "-5" and " 5 ".
  const seconds = /^[0-9]+(\.[0-9]+)?$/.test(value) ? Number(value) : NaN;
  if (!Number.isFinite(seconds)) {
    throw new OptionValueError(
      'Expected Unix seconds as a non-negative decimal number, ' +
        'such as 1700000000 or 1700000000.5.',
    );
  }
  return seconds;
}

// --- opening a queue -------------------------------------------------------

async function openQueue(
  dir: string,
  readOnly: boolean,
): Promise<DiskStorage> {
  // The fallback to the JS backend warns on stderr; a command line tool
  // has nothing to gain from that line, so it picks the backend itself.
  const io = loadNative() ? 'native' : 'js';

  // A reader never writes to tmp/ but the store checks that it exists;
  // a queue without one is still readable, so env/ stands in for it.
  const envDir = path.join(dir, 'env');
  let tmpDir = path.join(dir, 'tmp');
  if (readOnly && !(await isDirectory(tmpDir))) tmpDir = envDir;

  return new DiskStorage(envDir, path.join(dir, 'meta'), tmpDir, {
    io,
    readOnly,
  });
}

async function isDirectory(dir: string): Promise<boolean> {
  try {
    return (await fs.stat(dir)).isDirectory();
  } catch {
    return false;
  }
}

/**
 * Fails unless `dir` holds readable env/ and meta/ directories, so that a
 * mistyped path is an error and not an empty queue.
 */
async function checkQueueDir(dir: string): Promise<void> {
  try {
    const st = await fs.stat(dir);
    if (!st.isDirectory()) {
      throw new Failure(`'${dir}' is not a directory`);
    }
  } catch (err) {
    if (err instanceof Failure) throw err;
    throw new Failure(`cannot open queue '${dir}': ${osReason(err)}`);
  }

  for (const sub of ['env', 'meta']) {
    const subDir = path.join(dir, sub);

    try {
      const st = await fs.stat(subDir);
      if (!st.isDirectory()) {
        throw new Failure(`'${subDir}' is not a directory`);
      }
      await fs.access(subDir, fsConstants.R_OK | fsConstants.X_OK);
    } catch (err) {
      if (err instanceof Failure) throw err;
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new Failure(`'${dir}' is not a queue: it has no ${sub}/`);
      }
      throw new Failure(`cannot read queue '${subDir}': ${osReason(err)}`);
    }
  }
}

/** enqueue creates a missing queue, but a file in its place is a mistake. */
async function checkNotAFile(dir: string): Promise<void> {
  const st = await fs.stat(dir).catch(() => null);
  if (st && !st.isDirectory()) {
    throw new Failure(`'${dir}' is not a directory`);
  }
}

/** "ENOENT: no such file or directory" without the syscall and path. */
function osReason(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  return message.replace(/, \w+( '[^]*')?$/, '');
}

function checkId(id: string): void {
  if (!ID_PATTERN.test(id)) {
    throw new UsageError(
      `invalid message id '${id}': expected 32 lowercase hexadecimal ` +
        'characters',
    );
  }
}

// --- enqueue ---------------------------------------------------------------

interface EnqueueOptions {
  queue: string;
  from: string;
  to: string[];
  at?: number;
  json?: boolean;
}

async function enqueue(
  files: string[],
  opts: EnqueueOptions,
  io: CliIo,
): Promise<void> {
  need(opts.queue, '--queue <dir>');
  need(opts.from, "--from <address> (--from '' for the null sender)");
  need(opts.to, '--to <address>');

  if (files.filter((f) => f === '-').length > 1) {
    throw new UsageError('standard input (-) can be read only once');
  }

  // Every file is checked before the first is queued, so a typo in the
  // last name does not leave the others queued.
  for (const file of files) {
    if (file !== '-') await checkReadable(file);
  }

  await checkNotAFile(opts.queue);
  const store = await openQueue(opts.queue, false);
  const progress = new Progress(io, files.length);

  try {
    for (let i = 0; i < files.length; i++) {
      const file = files[i];
      const raw = await readMessage(file, io);
      const now = Date.now() / 1000;

      const envelope = new Envelope({
        sender: opts.from,
        recipients: opts.to,
        client: { protocol: 'local' },
        timestamp: now,
      });
      envelope.parse(raw);

      const id = await store.write(envelope, opts.at ?? now);

      const line = opts.json
        ? jsonLine({ id, file, bytes: raw.length })
        : `${id}\n`;

      progress.beforeOutput();
      await write(io.stdout, line);
      progress.update(i + 1);
    }
  } finally {
    progress.done();
    await store.close();
  }
}

async function checkReadable(file: string): Promise<void> {
  try {
    const st = await fs.stat(file);
    if (st.isDirectory()) {
      throw new Failure(`cannot read '${file}': it is a directory`);
    }
    await fs.access(file, fsConstants.R_OK);
  } catch (err) {
    if (err instanceof Failure) throw err;
    throw new Failure(`cannot read '${file}': ${osReason(err)}`);
  }
}

async function readMessage(file: string, io: CliIo): Promise<Buffer> {
  if (file === '-') {
    const chunks: Buffer[] = [];
    for await (const chunk of io.stdin ?? process.stdin) {
      chunks.push(Buffer.from(chunk));
    }
    return Buffer.concat(chunks);
  }

  try {
    return await fs.readFile(file);
  } catch (err) {
    throw new Failure(`cannot read '${file}': ${osReason(err)}`);
  }
}

/** "enqueued 120/500" on a terminal's stderr, redrawn in place. */
class Progress {
  private readonly enabled: boolean;
  private shown = false;
  private last = 0;

  constructor(
    private readonly io: CliIo,
    private readonly total: number,
  ) {
    this.enabled =
      io.stderr.isTTY === true && total > PROGRESS_MIN_FILES;
  }

  update(done: number): void {
    if (!this.enabled) return;

    const now = Date.now();
    const last = done === this.total;
    if (this.shown && !last && now - this.last < PROGRESS_INTERVAL_MS) {
      return;
    }

    this.io.stderr.write(`\r\x1b[Kenqueued ${done}/${this.total}`);
    this.shown = true;
    this.last = now;
  }

  /** Wipes the line when stdout shares the terminal, before an id. */
  beforeOutput(): void {
    if (this.io.stdout.isTTY === true) this.done();
  }

  /** Wipes the line. */
  done(): void {
    if (!this.shown) return;

    this.io.stderr.write('\r\x1b[K');
    this.shown = false;
  }
}

// --- list ------------------------------------------------------------------

interface ListOptions {
  queue: string;
  json?: boolean;
}

interface Row {
  id: string;
  size: number;
  timestamp: number | null;
  nextAttempt: number;
  attempts: number;
  sender: string | null;
  recipients: string[];
}

async function list(opts: ListOptions, io: CliIo): Promise<void> {
  need(opts.queue, '--queue <dir>');
  await checkQueueDir(opts.queue);

  const store = await openQueue(opts.queue, true);
  let damaged = 0;

  // Read-only: load() reports damage through this event and moves nothing.
  store.on('quarantine', (r: QuarantineReport) => {
    damaged++;
    warn(io.stderr, `skipped damaged message ${r.id}: ${r.reason}`);
  });

  const rows: Row[] = [];

  try {
    const found: [number, string][] = [];
    for await (const entry of store.load()) found.push(entry);

    for (const [nextAttempt, id] of found) {
      // A whole read per message: the sender and the remaining recipients
      // live only in the envelope file.
      const row = await readRow(store, id, nextAttempt);

      if (row instanceof Error) {
        damaged++;
        warn(io.stderr, `skipped message ${id}: ${row.message}`);
      } else if (row) {
        rows.push(row);
      }
    }
  } finally {
    await store.close();
  }

  rows.sort(
    (a, b) => a.nextAttempt - b.nextAttempt || a.id.localeCompare(b.id),
  );

  if (opts.json) {
    for (const row of rows) await write(io.stdout, jsonLine(row));
  } else {
    await write(io.stdout, table(rows));
  }

  if (rows.length === 0 && damaged > 0) {
    const found = `${damaged} message${damaged === 1 ? '' : 's'} found`;
    throw new Failure(`${found}, none could be read`);
  }
}

/** One message's row; null when it was removed meanwhile. */
async function readRow(
  store: DiskStorage,
  id: string,
  nextAttempt: number,
): Promise<Row | Error | null> {
  try {
    const [envelope, attempts] = await store.get(id);
    const { size } = await store.inspect(id);

    return {
      id,
      size,
      timestamp: envelope.timestamp,
      nextAttempt,
      attempts,
      sender: envelope.sender,
      recipients: envelope.recipients,
    };
  } catch (err) {
    // By code, not instanceof: every QueueError has a code, and the code
    // is the stable part of the contract.
    const { code } = err as { code?: unknown };
    if (code === 'ERR_QUEUE_NOT_FOUND' || code === 'ENOENT') return null;
    return err instanceof Error ? err : new Error(String(err));
  }
}

function table(rows: Row[]): string {
  const total = `${rows.length} message${rows.length === 1 ? '' : 's'}\n`;
  if (rows.length === 0) return total;

  const cells = rows.map((r) => [
    r.id,
    String(r.size),
    isoTime(r.nextAttempt),
    String(r.attempts),
    senderText(r.sender),
    recipientsText(r.recipients),
  ]);
  const head = ['ID', 'SIZE', 'NEXT ATTEMPT', 'TRIES', 'SENDER', 'RECIPIENTS'];
  const rightAligned = [false, true, false, true, false, false];

  const widths = head.map((h, col) =>
    Math.max(h.length, ...cells.map((c) => c[col].length)),
  );

  const line = (cols: string[]) =>
    cols
      .map((c, col) => {
        if (col === cols.length - 1) return c;
        return rightAligned[col]
          ? c.padStart(widths[col])
          : c.padEnd(widths[col]);
      })
      .join('  ') + '\n';

  return line(head) + cells.map(line).join('') + total;
}

function senderText(sender: string | null): string {
  if (sender === null) return '(none)';
  if (sender === '') return '<>';
  return visibleText(sender);
}

function recipientsText(recipients: string[]): string {
  if (recipients.length === 0) return '(none)';

  const shown = recipients.slice(0, 2).map(visibleText).join(', ');
  const more = recipients.length - 2;

  return more > 0 ? `${shown} +${more} more` : shown;
}

// --- show ------------------------------------------------------------------

interface ShowOptions {
  queue: string;
  raw?: boolean;
  json?: boolean;
}

async function show(id: string, opts: ShowOptions, io: CliIo): Promise<void> {
  need(opts.queue, '--queue <dir>');
  checkId(id);
  await checkQueueDir(opts.queue);

  const store = await openQueue(opts.queue, true);
  let envelope: Envelope;
  let attempts: number;
  let meta: MessageInfo;

  try {
    [envelope, attempts] = await store.get(id);
    meta = await store.inspect(id);
  } finally {
    await store.close();
  }

  const [headerBlock, body] = envelope.flatten();

  if (opts.raw) {
    await write(io.stdout, headerBlock);
    await write(io.stdout, body);
    return;
  }

  if (opts.json) {
    const fields = {
      id,
      size: meta.size,
      messageSize: headerBlock.length + body.length,
      nextAttempt: meta.timestamp,
      attempts,
      sender: envelope.sender,
      recipients: envelope.recipients,
      client: envelope.client,
      receiver: envelope.receiver,
      timestamp: envelope.timestamp,
      message: Buffer.concat([headerBlock, body]).toString('base64'),
    };
    await write(io.stdout, jsonLine(fields));
    return;
  }

  const fieldLine = (name: string, value: string | null) =>
    `${name}: ${value === null ? '(none)' : visibleText(value)}\n`;

  const { client } = envelope;
  const lines = [
    fieldLine('id', id),
    fieldLine('next attempt', isoTime(meta.timestamp)),
    fieldLine('attempts', String(attempts)),
    `sender: ${senderText(envelope.sender)}\n`,
    ...envelope.recipients.map((r) => fieldLine('recipient', r)),
    fieldLine('client ip', client.ip),
    fieldLine('client host', client.host),
    fieldLine('client name', client.name),
    fieldLine('client protocol', client.protocol),
    fieldLine('client auth', client.auth),
    fieldLine('receiver', envelope.receiver),
    fieldLine(
      'received',
      envelope.timestamp === null ? null : isoTime(envelope.timestamp),
    ),
    fieldLine('message size', String(headerBlock.length + body.length)),
    fieldLine('stored size', String(meta.size)),
    '\n',
  ];

  await write(io.stdout, lines.join(''));

  const message = visible(Buffer.concat([headerBlock, body]), true);
  await write(io.stdout, message);

  if (message.length > 0 && message[message.length - 1] !== LF) {
    await write(io.stdout, '\n');
  }
}

// --- output ----------------------------------------------------------------

const LF = 0x0a;

/** Writes, waiting for the stream to drain when its buffer is full. */
async function write(
  stream: Output,
  chunk: string | Uint8Array,
): Promise<void> {
  if (stream.write(chunk) || typeof stream.once !== 'function') return;

  await new Promise<void>((resolve) => {
    stream.once?.('drain', () => resolve());
  });
}

function isoTime(seconds: number): string {
  const date = new Date(seconds * 1000);
  if (Number.isNaN(date.getTime())) return String(seconds);
  return date.toISOString().replace(/\.\d{3}Z$/, 'Z');
}
