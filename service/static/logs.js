/* The log stream panel: batched rendering, pause, and the level chips.
 *
 * The chips say which levels are shown. The lowest one shown is also the page's server-side minimum
 * (`log_stream.level`, docs/protocol.md): lines below it are not sent at all; a level switched off above the
 * minimum (INFO and ERROR on, WARNING off) is hidden here, by a CSS class, as before filters existed.
 */

import { $, el, reducedMotion } from './dom.js';
import { fmtClock, parseTime, toNumber } from './format.js';

export const LEVELS = ['DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL'];
const MAX_LOG_ROWS = 500;  // a log storm must not grow the DOM without bound
const LEVELS_KEY = 'zepix.logLevels';

export const logs = { queue: [], paused: false, held: [], dropped: 0, flushScheduled: false, maxId: 0 };

function buildLog(row) {
  const level = LEVELS.includes(row.level) ? row.level : 'INFO';
  const div = el('div', 'log');
  div.dataset.level = level;
  if (row.id !== undefined) div.dataset.logId = String(row.id);
  const ts = parseTime(row.ts);
  const time = el('time', 'log-time', fmtClock(ts, false));
  time.append(el('span', 'ms', fmtClock(ts, true).slice(8)));
  if (ts !== null) time.dateTime = new Date(ts).toISOString();
  const lvl = el('span', 'log-level', level);
  const src = el('span', 'log-source', row.source || '');
  const msg = el('span', 'log-msg', String(row.msg ?? ''));
  if (row.context && typeof row.context === 'object' && Object.keys(row.context).length) {
    const ctx = JSON.stringify(row.context);
    msg.title = ctx.length > 500 ? `${ctx.slice(0, 500)}…` : ctx;
  }
  div.append(time, lvl, src, msg);
  return div;
}

export function pushLog(row) {
  const id = toNumber(row.id);
  if (id !== null) logs.maxId = Math.max(logs.maxId, id);
  if (logs.paused) {
    logs.held.push(row);
    if (logs.held.length > MAX_LOG_ROWS) { logs.held.shift(); logs.dropped += 1; }
    showHeld();
    return;
  }
  logs.queue.push(row);
  if (logs.queue.length > MAX_LOG_ROWS) logs.queue.shift();
  scheduleLogFlush();
}

/** A snapshot's log lines: only those newer than the newest shown (unless `replaced` cleared the list). */
export function renderLogs(rows, replaced) {
  if (replaced) {
    $('log-list').textContent = '';
    logs.queue = [];
    logs.maxId = 0;
  }
  for (const row of rows) {
    const id = toNumber(row.id);
    if (id === null || id > logs.maxId) pushLog(row);
  }
}

// Batch DOM work per frame: a storm of thousands of lines costs one insert of at most MAX_LOG_ROWS.
function scheduleLogFlush() {
  if (logs.flushScheduled) return;
  logs.flushScheduled = true;
  let done = false;
  const run = () => { if (!done) { done = true; logs.flushScheduled = false; flushLogs(); } };
  requestAnimationFrame(run);
  setTimeout(run, 120);  // rAF does not run in a hidden tab
}

function flushLogs() {
  if (!logs.queue.length) return;
  const list = $('log-list');
  const frag = document.createDocumentFragment();
  const rows = logs.queue;
  logs.queue = [];
  const fresh = rows.length <= 20 && !reducedMotion.matches;
  for (let i = rows.length - 1; i >= 0; i -= 1) {
    const node = buildLog(rows[i]);
    if (fresh) node.classList.add('enter');
    frag.append(node);
  }
  list.prepend(frag);
  while (list.childElementCount > MAX_LOG_ROWS) list.lastElementChild.remove();
  $('logs-empty').hidden = list.childElementCount > 0;
}

function showHeld() {
  const box = $('log-pending');
  if (!logs.paused || (!logs.held.length && !logs.dropped)) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  box.textContent = `${logs.held.length} new line${logs.held.length === 1 ? '' : 's'} held while paused`
    + (logs.dropped ? ` (${logs.dropped} older ones dropped)` : '');
}

export function setPaused(paused) {
  logs.paused = paused;
  const btn = $('log-pause');
  btn.setAttribute('aria-pressed', String(paused));
  $('log-pause-text').textContent = paused ? 'Resume' : 'Pause';
  $('logs').dataset.paused = String(paused);
  if (!paused) {
    const held = logs.held;
    logs.held = [];
    logs.dropped = 0;
    for (const row of held) pushLog(row);
  }
  showHeld();
}

// ---------------------------------------------------------------- levels

/** The levels shown when the page loads: the operator's last choice, or all but DEBUG. */
export function loadLevels() {
  let shown = null;
  try { shown = JSON.parse(localStorage.getItem(LEVELS_KEY) || 'null'); } catch { shown = null; }
  if (!Array.isArray(shown)) shown = LEVELS.filter((l) => l !== 'DEBUG');
  return new Set(shown.filter((l) => LEVELS.includes(l)));
}

export function showLevels(shown) {
  const list = $('log-list');
  for (const chip of document.querySelectorAll('#level-filter .chip')) {
    chip.setAttribute('aria-pressed', String(shown.has(chip.dataset.level)));
  }
  for (const l of LEVELS) list.classList.toggle(`hide-${l}`, !shown.has(l));
  try { localStorage.setItem(LEVELS_KEY, JSON.stringify([...shown])); } catch { /* not persisted */ }
}

export function shownLevels() {
  return new Set([...document.querySelectorAll('#level-filter .chip[aria-pressed="true"]')]
    .map((c) => c.dataset.level));
}

/** The server-side minimum for a set of shown levels: the lowest shown (CRITICAL when none is). */
export function minimumLevel(shown) {
  return LEVELS.find((l) => shown.has(l)) ?? 'CRITICAL';
}
