/* zepix-hub live dashboard: the entry module, which wires the panels to the connection.
 *
 * connection.js keeps the consistency rule (docs/protocol.md): a snapshot, then /ws/live from its head with
 * its epoch, every event applied once, resume or reload after a drop. This module says what the snapshot and
 * the events mean for the page (trades.js, logs.js, toasts.js, status.js), which view the hub is asked for
 * (filters.js), and how the connection's state reads in the header.
 *
 * Plain browser JavaScript modules, no build step, no dependencies.
 */

import { Connection, State } from './connection.js';
import { $ } from './dom.js';
import {
  filterParams, inView, noteTrade, readSelection, renderSelector, showEffective, view, wireSelector,
} from './filters.js';
import {
  loadLevels, logs, minimumLevel, pushLog, renderLogs, setPaused, showLevels, shownLevels,
} from './logs.js';
import { applyStatus, health } from './status.js';
import { dismissAll, dismissNewest, toast } from './toasts.js';
import { applyTrade, dropTrade, refreshAges, renderTrades, trades, tradesChanged } from './trades.js';

const TOKEN_KEY = 'zepix.token';
const TRANSITIONS_KEPT = 50;

const indicator = { status: 'connecting', detail: '' };
const transitions = [];  // the connection's recent moves, for tests and the curious

// ---------------------------------------------------------------- token

function takeToken() {
  const url = new URL(window.location.href);
  const fromUrl = url.searchParams.get('token');
  if (fromUrl) {
    try { sessionStorage.setItem(TOKEN_KEY, fromUrl); } catch { /* storage may be disabled */ }
    url.searchParams.delete('token');
    // The token must not linger in the address bar, history or a shared screenshot.
    window.history.replaceState(window.history.state, '', url.pathname + url.search + url.hash);
    return fromUrl;
  }
  try { return sessionStorage.getItem(TOKEN_KEY); } catch { return null; }
}

function storeToken(token) {
  try { sessionStorage.setItem(TOKEN_KEY, token); } catch { /* in memory only */ }
}

// ---------------------------------------------------------------- connection indicator

let settleTimer = null;
function setConn(status, text, detail) {
  clearTimeout(settleTimer);
  indicator.status = status;
  indicator.detail = detail || '';
  const node = $('conn');
  node.dataset.status = status;
  $('conn-text').textContent = text;
  node.title = detail || text;
  document.body.dataset.conn = status;
  // "resumed" and "reloaded" are news, not states: after a while they settle to "live".
  if (status === 'resumed' || status === 'reloaded') {
    settleTimer = setTimeout(() => { if (indicator.status === status) setConn('live', 'Live', detail); }, 8000);
  }
}

function showBanner(title, body, askToken) {
  $('banner-title').textContent = title;
  $('banner-body').textContent = body;
  $('token-form').hidden = !askToken;
  $('banner').hidden = false;
}

function hideBanner() {
  $('banner').hidden = true;
}

function halt(status, text, body, askToken) {
  setConn(status, text, body);
  showBanner(text, body, askToken);
}

// What each way of stopping says, and whether a pasted token can help.
function stopped(t) {
  if (t.why === 'no-token') {
    setConn('no-token', 'No token', 'Open the page with ?token=<JWT>');
    showBanner('Token needed',
      'Open this page with ?token=<JWT> or paste a token (zepix-hub token --sub NAME mints one).', true);
  } else if (t.why === 'unauthorized') {
    halt('unauthorized', 'Token expired or invalid', t.http
      ? `The hub refused the token: ${t.reason}`
      : 'The hub refused the token (close 4001). Paste a fresh token to reconnect.', true);
  } else if (t.why === 'forbidden') {
    halt('forbidden', 'Not allowed',
      `The hub refused this page: ${t.reason || 'origin or topic not allowed'} (close 4003).`, false);
  } else if (t.why === 'refused') {
    halt('refused', 'Filter refused',
      `The hub refused this view's filters: ${t.reason}. Choose another strategy, symbol or log level.`, false);
  }
}

function showSeq() {
  const seq = connection.position.seq;
  if (seq !== null) $('stat-seq').textContent = `#${seq}`;
}

function onTransition(t) {
  transitions.push({ from: t.from, to: t.to, on: t.on });
  if (transitions.length > TRANSITIONS_KEPT) transitions.shift();
  switch (t.to) {
    case State.LOADING:
      if (!t.everLive) setConn('connecting', 'Connecting…', 'Loading the current state');
      return;
    case State.BACKOFF:
      setConn('reconnecting', `Reconnecting… (attempt ${t.attempt})`,
        `${t.reason}; retrying in ${(t.delay / 1000).toFixed(1)} s`);
      return;
    case State.RELOADING:
      hideBanner();
      setConn('reloading', 'Reloading state…', t.reason);
      return;
    case State.LIVE:
      hideBanner();
      showSeq();
      if (t.reloaded) {
        setConn('reloaded', 'Could not resume · state reloaded',
          `The hub could not replay the gap (${t.reason}); state was reloaded`);
      } else if (t.resumed) {
        const n = t.count;
        setConn('resumed', `Resumed · ${n} missed event${n === 1 ? '' : 's'}`,
          `Reconnected and replayed ${n} event${n === 1 ? '' : 's'} missed while away`);
      } else {
        setConn('live', 'Live', 'Connected; events arrive as they commit');
      }
      return;
    case State.STOPPED:
      stopped(t);
      return;
    default:
      return;
  }
}

// ---------------------------------------------------------------- what the stream means

// Every trade goes through here: it teaches the selector its strategy and symbol, and one that is not in
// view (a hub that ignored the filters) leaves the screen instead of joining it.
function keep(trade) {
  noteTrade(trade);
  if (inView(trade)) return true;
  view.filteredOut += 1;
  return false;
}

function onEvent(f) {
  const d = f.data || {};
  switch (f.topic) {
    case 'trade_update':
      if (d.trade && !keep(d.trade)) {
        if (d.trade.id !== undefined && d.trade.id !== null) dropTrade(d.trade.id);
      } else {
        applyTrade(d, true);
      }
      renderSelector();
      break;
    case 'log_stream': pushLog(d); break;
    case 'notification': toast(d); break;
    case 'sys_status': applyStatus(d); break;
    default: break;  // a topic added later: ignore, but still advance seq
  }
  if (f.seq !== null && f.seq !== undefined) $('stat-seq').textContent = `#${f.seq}`;
}

function onSnapshot(snap, { first, replaced }) {
  const open = (snap.open_trades || []).filter(keep);
  const closed = (snap.closed_trades || []).filter(keep);
  renderTrades(open, closed, !first);
  renderSelector();
  renderLogs(snap.logs || [], replaced);
  if (snap.status) applyStatus(snap.status);
  $('stat-seq').textContent = `#${snap.head}`;
}

const connection = new Connection({
  base: document.baseURI,
  params: () => filterParams(connection.token),
  hooks: {
    onTransition,
    onSnapshot,
    onEvent,
    onWelcome: (f) => showEffective(f.filters),
    onInvalid: (from, to, on) => console.error(`zepix: no move from ${from} to ${to} (${on})`),
  },
});

// A new selection or minimum level is another view: start over from a snapshot of it, not a resume.
function viewChanged() {
  view.filteredOut = 0;
  connection.start(undefined, { fresh: true, replace: true });
}

// ---------------------------------------------------------------- wiring

function wire() {
  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const value = $('token-input').value.trim();
    if (!value) return;
    $('token-input').value = '';
    storeToken(value);
    hideBanner();
    connection.start(value, { fresh: true });  // a fresh start from a snapshot, not a resume
  });
  $('level-filter').addEventListener('click', (ev) => {
    const chip = ev.target.closest('.chip');
    if (!chip) return;
    chip.setAttribute('aria-pressed', String(chip.getAttribute('aria-pressed') !== 'true'));
    const shown = shownLevels();
    showLevels(shown);
    const level = minimumLevel(shown);
    if (level !== view.level) {
      view.level = level;
      viewChanged();
    }
  });
  wireSelector(viewChanged);
  $('log-pause').addEventListener('click', () => setPaused(!logs.paused));
  $('toasts-clear').addEventListener('click', dismissAll);
  document.addEventListener('keydown', (ev) => { if (ev.key === 'Escape') dismissNewest(); });
  // Back online or back in view: do not sit out the rest of a long backoff.
  window.addEventListener('online', () => connection.hurry());
  document.addEventListener('visibilitychange', () => { if (!document.hidden) connection.hurry(); });
  setInterval(refreshAges, 15000);
}

// A read-only window for tests and for operators poking at the console.
window.zepix = Object.freeze({
  get lastSeq() { return connection.position.seq; },
  get epoch() { return connection.position.epoch; },
  openTradeIds() { return [...trades.open.values()].map((t) => t.id); },
  openTrades() { return [...trades.open.values()].map((t) => ({ id: t.id, status: t.status })); },
  get state() {
    const { applied, ignored, ...stats } = connection.stats;
    return JSON.parse(JSON.stringify({
      lastSeq: connection.position.seq,
      epoch: connection.position.epoch,
      applied,
      ignored,
      connection: { status: indicator.status, detail: indicator.detail, machine: connection.state, ...stats },
      transitions,
      filters: {
        requested: Object.fromEntries(filterParams(connection.token)),
        effective: view.effective ?? null,
        filteredOut: view.filteredOut,
      },
      status: health.status,
      samples: health.cpu.length,
      open: [...trades.open.values()],
      closed: trades.closed,
      logRows: document.querySelectorAll('#log-list .log').length,
      logsPaused: logs.paused,
      toasts: document.querySelectorAll('#toasts .toast:not(.leave)').length,
    }));
  },
});

wire();
readSelection();
const shown = loadLevels();
showLevels(shown);
view.level = minimumLevel(shown);
renderSelector();
tradesChanged();
connection.start(takeToken());
