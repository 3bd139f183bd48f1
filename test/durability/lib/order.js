'use strict';
// The durability order a trace must show, as a pure function over the
// events of lib/strace.js. For each operation, in the window between the
// previous operation's resolve marker and its own:
//
//   write, update: every file is created under the tmp dir, written and
//   fdatasync'ed (or fsync'ed) through the fd of that open before it is
//   linked (write) or renamed (update) to its final name; the final name's
//   directory is fsync'ed after that link or rename; a write unlinks its
//   tmp names; all of it ends before the resolve marker. A write links the
//   env before the meta and, when the env and meta directories differ,
//   syncs the env directory after the env's link and before the meta's:
//   a meta name never reaches the disk before its envelope's.
//
//   remove: the meta and then the env are unlinked, each directory is
//   fsync'ed after the unlink in it, all before the resolve marker; when
//   the directories differ, the meta directory's sync ends before the
//   env's unlink starts: the env is never gone while its meta may be back.
//
// "A before B" means A's call ended before B's call started.

const path = require('node:path');

/**
 * @param events  parsed trace (lib/strace.js parseTrace)
 * @param ops     [{kind: 'write'|'update'|'remove', id, label}] in the
 *                order they ran; `label` is the marker put once the
 *                operation's promise resolved
 * @param dirs    {envDir, metaDir, tmpDir}
 * @returns       the problems found; none means the order is proven
 */
function checkOrder(events, ops, dirs) {
  const problems = [];
  let from = -1;
  for (const op of ops) {
    const marker = events.find(
      (e) => e.kind === 'marker' && e.label === op.label && e.start > from,
    );
    if (!marker) {
      problems.push(`${op.label}: no resolve marker`);
      continue;
    }
    const window = events.filter((e) => e.start > from && e.end < marker.start);
    const say = (msg) => problems.push(`${op.label}: ${msg}`);
    if (op.kind === 'remove') checkRemove(window, op, dirs, say);
    else checkPublish(window, op, dirs, say);
    from = marker.end;
  }
  return problems;
}

function checkPublish(window, op, dirs, say) {
  const finals =
    op.kind === 'write'
      ? [
          path.join(dirs.envDir, `${op.id}.env`),
          path.join(dirs.metaDir, `${op.id}.meta`),
        ]
      : [path.join(dirs.metaDir, `${op.id}.meta`)];
  const verb = op.kind === 'write' ? 'link' : 'rename';
  const published = [];
  const dirSyncs = [];

  for (const final of finals) {
    const pub = window.find(
      (e) => e.kind === verb && e.ok && e.to === final,
    );
    if (!pub) {
      say(`no ${verb} to ${final}`);
      continue;
    }
    published.push(pub);
    const tmp = pub.from;
    if (path.dirname(tmp) !== dirs.tmpDir) {
      say(`${verb} to ${final} is from ${tmp}, not from the tmp dir`);
    }

    const opens = window.filter(
      (e) => e.kind === 'open' && e.ok && e.created && e.path === tmp &&
        e.end < pub.start,
    );
    const open = opens[opens.length - 1];
    if (!open) {
      say(`${tmp} is not created before its ${verb}`);
      continue;
    }
    // Calls on the fd of that open, while it still named the tmp file.
    const onFile = window.filter(
      (e) => e.path === tmp && e.fd === open.fd && e.start > open.end &&
        (e.kind === 'write' || e.kind === 'sync'),
    );
    const syncs = onFile.filter((e) => e.kind === 'sync' && e.ok);
    const sync = syncs.find((e) => e.end < pub.start);
    if (!sync) {
      say(`no fdatasync/fsync of ${tmp} ends before its ${verb}`);
      continue;
    }
    const writes = onFile.filter((e) => e.kind === 'write' && e.ok);
    if (writes.length === 0) say(`nothing is written to ${tmp}`);
    if (writes.some((w) => w.end > sync.start)) {
      say(`${tmp} is written after (or during) its sync`);
    }

    dirSyncs.push(
      checkDirSync(window, path.dirname(final), pub, `${verb} to ${final}`, say),
    );

    if (verb === 'link') {
      const gone = window.find(
        (e) => e.kind === 'unlink' && e.ok && e.path === tmp &&
          e.start > pub.end,
      );
      if (!gone) say(`tmp name ${tmp} is not unlinked after its link`);
    }
  }

  if (op.kind === 'write' && published.length === 2 &&
      !(published[0].end < published[1].start)) {
    say('the meta is linked before the env');
  }
  if (op.kind === 'write' && published.length === 2 && dirSyncs[0] &&
      dirs.envDir !== dirs.metaDir &&
      !(dirSyncs[0].end < published[1].start)) {
    say('the meta is linked before the env directory is synced');
  }
}

function checkRemove(window, op, dirs, say) {
  const names = [
    path.join(dirs.metaDir, `${op.id}.meta`),
    path.join(dirs.envDir, `${op.id}.env`),
  ];
  const unlinks = [];
  const dirSyncs = [];
  for (const name of names) {
    const u = window.find(
      (e) => e.kind === 'unlink' && e.ok && e.path === name,
    );
    if (!u) {
      say(`no unlink of ${name}`);
      continue;
    }
    unlinks.push(u);
    dirSyncs.push(
      checkDirSync(window, path.dirname(name), u, `unlink of ${name}`, say),
    );
  }
  if (unlinks.length === 2 && !(unlinks[0].end < unlinks[1].start)) {
    say('the env is unlinked before the meta');
  }
  if (unlinks.length === 2 && dirSyncs[0] && dirs.envDir !== dirs.metaDir &&
      !(dirSyncs[0].end < unlinks[1].start)) {
    say('the env is unlinked before the meta directory is synced');
  }
}

/**
 * `dir` is fsync'ed, through an fd opened on it, after `after` ended.
 * Returns the first such sync, or null.
 */
function checkDirSync(window, dir, after, what, say) {
  const sync = window.find(
    (e) => e.kind === 'sync' && e.ok && e.path === dir &&
      e.start > after.end,
  );
  if (!sync) {
    say(`directory ${dir} is not fsync'ed after the ${what}`);
    return null;
  }
  const open = window.find(
    (e) => e.kind === 'open' && e.ok && e.fd === sync.fd && e.path === dir &&
      e.end < sync.start,
  );
  if (!open) say(`the fd synced for ${dir} was not opened on it`);
  return sync;
}

module.exports = { checkOrder };
