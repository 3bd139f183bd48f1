'use strict';
// Runs the mocha suite and ends with one plain line, "N passed, N failed",
// taken from mocha's own counts, for tools that do not read mocha's summary.
// Before it, when durability tests ran, a line sums up what they tried
// (also written as JSON to test/durability/results/latest.json).
// Usage: node test/run.js [file or directory ...]
// (default: test/*.test.js and test/durability/*.test.js)

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const Mocha = require('mocha');

const { KEYS } = require('./durability/lib/summary');

const args = process.argv.slice(2);

// Each argument is a test file or a directory of them.
const testsIn = (dir) =>
  fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.test.js'))
    .sort()
    .map((f) => path.join(dir, f));
const defaults = [__dirname, path.join(__dirname, 'durability')].filter(
  (dir) => fs.existsSync(dir),
);
const files = (args.length ? args : defaults)
  .map((f) => path.resolve(f))
  .flatMap((f) =>
    fs.existsSync(f) && fs.statSync(f).isDirectory() ? testsIn(f) : [f],
  );

// A fresh file for the durability parts to report into, for this run only.
const summaryFile = path.join(
  fs.mkdtempSync(path.join(os.tmpdir(), 'slimta-summary-')),
  'summary.jsonl',
);
process.env.SLIMTA_DURABILITY_SUMMARY = summaryFile;

const mocha = new Mocha({ timeout: 60000, reporter: 'spec' });
for (const file of files) mocha.addFile(file);

const runner = mocha.run((failures) => {
  const lost = reportDurability();
  const { passes = 0, pending = 0 } = runner.stats || {};
  const failed = Math.max(failures, runner.stats.failures || 0);
  if (pending > 0) console.log(`${pending} skipped`);
  console.log(`${passes} passed, ${failed} failed`);
  process.exitCode = failed > 0 || passes === 0 || lost > 0 ? 1 : 0;
});

/** Prints and saves the durability totals; returns messages lost. */
function reportDurability() {
  let lines = [];
  try {
    lines = fs.readFileSync(summaryFile, 'utf8').split('\n').filter(Boolean);
  } catch {
    return 0; // no durability part ran
  } finally {
    fs.rmSync(path.dirname(summaryFile), { recursive: true, force: true });
  }
  const parts = lines.map((line) => JSON.parse(line));
  const total = Object.fromEntries(KEYS.map((k) => [k, 0]));
  for (const part of parts) for (const k of KEYS) total[k] += part[k];

  const resultsDir = path.join(__dirname, 'durability', 'results');
  fs.mkdirSync(resultsDir, { recursive: true });
  fs.writeFileSync(
    path.join(resultsDir, 'latest.json'),
    JSON.stringify({ date: new Date().toISOString(), total, parts }, null, 2) +
      '\n',
  );
  console.log(
    `durability: ${total.trials} trials, ` +
      `${total.operationsAcknowledged} operations acknowledged, ` +
      `${total.messagesLost} messages lost, ` +
      `${total.damagedDetected} damaged files detected, ` +
      `${total.faultsInjected} faults injected`,
  );
  return total.messagesLost;
}
