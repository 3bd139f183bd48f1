'use strict';
// Runs the mocha suite and ends with one plain line, "N passed, N failed",
// taken from mocha's own counts, for tools that do not read mocha's summary.
// Usage: node test/run.js [file or directory ...]
// (default: test/*.test.js and test/durability/*.test.js)

const path = require('node:path');
const fs = require('node:fs');
const Mocha = require('mocha');

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

const mocha = new Mocha({ timeout: 60000, reporter: 'spec' });
for (const file of files) mocha.addFile(file);

const runner = mocha.run((failures) => {
  const { passes = 0, pending = 0 } = runner.stats || {};
  const failed = Math.max(failures, runner.stats.failures || 0);
  console.log(`${passes} passed, ${failed} failed, ${pending} skipped`);
  process.exitCode = failed > 0 || passes === 0 ? 1 : 0;
});
