'use strict';
// One JSON line per part of the durability harness, appended to a file
// that a final step reads and sums up.

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const KEYS = [
  'trials',
  'operationsAcknowledged',
  'messagesLost',
  'damagedDetected',
  'faultsInjected',
];

/** The file the lines go to: $SLIMTA_DURABILITY_SUMMARY or a temp file. */
function summaryFile() {
  return (
    process.env.SLIMTA_DURABILITY_SUMMARY ||
    path.join(os.tmpdir(), 'slimta-durability-summary.jsonl')
  );
}

/** Appends `{part, ...counts}`; a missing count is 0. */
function record(part, counts) {
  const line = { part };
  for (const key of KEYS) line[key] = Number(counts[key] ?? 0);
  fs.appendFileSync(summaryFile(), JSON.stringify(line) + '\n');
}

/** Counts of every key at 0, for a part to add to. */
function zeroCounts() {
  return Object.fromEntries(KEYS.map((key) => [key, 0]));
}

module.exports = { record, summaryFile, zeroCounts, KEYS };
