/* The open-trades table and the recently-closed list, kept from trade_update events and snapshots. */

import { $, el, phone, removeAnimated, replay } from './dom.js';
import { fmtAge, fmtClock, fmtPnl, fmtPrice, fmtQty, humanStatus, parseTime, pnlSign, toNumber } from './format.js';

const OPEN_STATUSES = new Set(['PENDING', 'OPEN', 'PARTIALLY_FILLED', 'FILLED']);
const MAX_CLOSED = 20;

export const trades = {
  open: new Map(),  // trade id (string) -> trade row
  closed: [],       // newest first
};

const tbody = () => $('trades-body');
// Which cell shows which column, so an UPDATE flashes exactly what changed.
const CELL_OF = {
  symbol: 'trade', side: 'trade', order_type: 'trade', status: 'status',  // + 'trade' on phones, see below
  quantity: 'fill', filled_quantity: 'fill', entry_price: 'entry', fill_price: 'entry',
  stop_loss: 'risk', take_profit: 'risk', strategy: 'strategy', opened_at: 'age',
};

function twoLines(td, top, bottom) {
  td.textContent = '';
  td.append(el('span', 'l1', top), el('span', 'l2', bottom));
}

function buildRow(t) {
  const tr = el('tr');
  tr.dataset.tradeId = String(t.id);
  const cells = [
    ['trade', ''], ['status', ''], ['fill', 'num'], ['entry', 'num'],
    ['risk', 'num opt'], ['strategy', 'opt opt-wide'], ['age', 'num opt'],
  ];
  for (const [col, cls] of cells) {
    const td = el(col === 'trade' ? 'th' : 'td', cls);
    if (col === 'trade') td.scope = 'row';
    td.dataset.col = col;
    tr.append(td);
  }
  const trade = tr.querySelector('[data-col="trade"]');
  const line = el('span', 'l1');
  line.append(el('span', 'sym'), el('span', 'side'));
  const sub = el('span', 'l2');
  sub.append(el('span', 'ref'), el('span', 'badge badge-inline'));
  trade.append(line, sub);
  const fill = tr.querySelector('[data-col="fill"]');
  const bar = el('span', 'bar');
  bar.append(el('span', 'bar-fill'));
  fill.append(el('span', 'fill-text'), bar);
  return tr;
}

function fillRow(tr, t) {
  const cell = (c) => tr.querySelector(`[data-col="${c}"]`);
  tr.dataset.status = t.status;
  tr.dataset.side = t.side;
  tr.dataset.strategy = t.strategy ?? '';
  tr.dataset.symbol = t.symbol ?? '';
  const trade = cell('trade');
  trade.querySelector('.sym').textContent = t.symbol;
  const side = trade.querySelector('.side');
  side.textContent = t.side;
  side.className = `side side-${String(t.side).toLowerCase()}`;
  trade.querySelector('.ref').textContent = `#${t.id} · ${String(t.order_type || '').toLowerCase()}`;
  const inline = trade.querySelector('.badge-inline');  // the status column folds in here on a phone
  inline.textContent = humanStatus(t.status);
  inline.dataset.status = t.status;
  const status = cell('status');
  status.textContent = '';
  const badge = el('span', 'badge', humanStatus(t.status));
  badge.dataset.status = t.status;
  status.append(badge);
  const qty = toNumber(t.quantity);
  const filled = toNumber(t.filled_quantity) || 0;
  const fill = cell('fill');
  fill.querySelector('.fill-text').textContent = `${fmtQty(filled)} / ${fmtQty(qty)}`;
  const ratio = qty ? Math.max(0, Math.min(1, filled / qty)) : 0;
  fill.querySelector('.bar-fill').style.transform = `scaleX(${ratio})`;
  fill.title = `filled ${t.filled_quantity ?? 0} of ${t.quantity}`;
  twoLines(cell('entry'), fmtPrice(t.entry_price), toNumber(t.fill_price) === null ? 'not filled' : `fill ${fmtPrice(t.fill_price)}`);
  cell('entry').title = `entry ${t.entry_price ?? '—'} · fill ${t.fill_price ?? '—'}`;
  const risk = cell('risk');
  twoLines(risk, fmtPrice(t.stop_loss), fmtPrice(t.take_profit));
  risk.firstChild.className = 'l1 sl';
  risk.lastChild.className = 'l2 tp';
  risk.title = `stop loss ${t.stop_loss ?? '—'} · take profit ${t.take_profit ?? '—'}`;
  cell('strategy').textContent = t.strategy || '—';
  const opened = parseTime(t.opened_at);
  const age = cell('age');
  age.dataset.since = opened === null ? '' : String(opened);
  age.textContent = fmtAge(opened);
  age.title = opened === null ? '' : new Date(opened).toLocaleString();
}

function changedColumns(before, after) {
  const out = [];
  for (const k of Object.keys(after)) {
    if (JSON.stringify(before[k]) !== JSON.stringify(after[k])) out.push(k);
  }
  return out;
}

function upsertOpen(t, changed, animate) {
  const id = String(t.id);
  const before = trades.open.get(id);
  trades.open.set(id, t);
  let tr = tbody().querySelector(`tr[data-trade-id="${CSS.escape(id)}"]`);
  if (!tr) {
    tr = buildRow(t);
    fillRow(tr, t);
    tbody().prepend(tr);
    if (animate) replay(tr, 'enter');
    return;
  }
  fillRow(tr, t);
  if (!animate) return;
  const cols = Array.isArray(changed) && changed.length ? changed : before ? changedColumns(before, t) : [];
  const cells = new Set(cols.map((c) => CELL_OF[c]).filter(Boolean));
  if (cells.has('status') && phone.matches) cells.add('trade');
  for (const c of cells) replay(tr.querySelector(`[data-col="${c}"]`), 'flash');
}

function removeOpen(id, why) {
  trades.open.delete(id);
  const tr = tbody().querySelector(`tr[data-trade-id="${CSS.escape(id)}"]`);
  if (!tr) return;
  // The row leaves the "open" set at once; only its picture fades out.
  delete tr.dataset.tradeId;
  tr.dataset.leavingId = id;
  tr.dataset.leaving = why;
  removeAnimated(tr, 'leave', 450);
}

function buildClosed(t) {
  const li = el('li', 'closed-item');
  li.dataset.tradeId = String(t.id);
  li.dataset.status = t.status;
  li.dataset.strategy = t.strategy ?? '';
  li.dataset.symbol = t.symbol ?? '';
  const main = el('div', 'closed-main');
  const sym = el('span', 'sym', t.symbol);
  const side = el('span', `side side-${String(t.side).toLowerCase()}`, t.side);
  main.append(sym, side);
  const meta = el('div', 'closed-meta');
  const reason = t.close_reason ? humanStatus(t.close_reason) : humanStatus(t.status);
  const when = parseTime(t.closed_at) ?? parseTime(t.updated_at);
  meta.textContent = `#${t.id} · ${reason} · ${fmtClock(when)}`;
  const left = el('div', 'closed-left');
  left.append(main, meta);
  const pnl = el('span', 'pnl', t.status === 'CLOSED' || toNumber(t.realized_pnl) !== null
    ? fmtPnl(t.realized_pnl) : humanStatus(t.status));
  pnl.dataset.sign = pnlSign(t.realized_pnl);
  pnl.dataset.col = 'realized_pnl';
  li.append(left, pnl);
  return li;
}

function addClosed(t, animate) {
  const id = String(t.id);
  const list = $('closed-list');
  const existing = trades.closed.findIndex((c) => String(c.id) === id);
  const li = buildClosed(t);
  if (existing >= 0) {
    trades.closed[existing] = t;
    const old = list.querySelector(`li[data-trade-id="${CSS.escape(id)}"]`);
    if (old) { old.replaceWith(li); if (animate) replay(li.querySelector('.pnl'), 'flash'); }
  } else {
    trades.closed.unshift(t);
    list.prepend(li);
    if (animate) replay(li, 'enter');
    while (trades.closed.length > MAX_CLOSED) {
      const gone = trades.closed.pop();
      const node = list.querySelector(`li[data-trade-id="${CSS.escape(String(gone.id))}"]`);
      if (node) node.remove();
    }
  }
}

function removeClosed(id) {
  const i = trades.closed.findIndex((c) => String(c.id) === id);
  if (i < 0) return;
  trades.closed.splice(i, 1);
  const node = $('closed-list').querySelector(`li[data-trade-id="${CSS.escape(id)}"]`);
  if (node) { delete node.dataset.tradeId; removeAnimated(node, 'leave', 450); }
}

/** A trade_update's data: insert, update, close or delete the row it names. */
export function applyTrade(d, animate) {
  const t = d && d.trade;
  if (!t || t.id === undefined || t.id === null) return;
  const id = String(t.id);
  if (d.op === 'DELETE') {
    removeOpen(id, 'deleted');
    removeClosed(id);
  } else if (OPEN_STATUSES.has(t.status)) {
    removeClosed(id);
    upsertOpen(t, d.changed, animate);
  } else {
    removeOpen(id, 'closed');
    addClosed(t, animate);
  }
  tradesChanged();
}

/** A trade that left the view (it no longer matches the filters): gone from both lists, without a verdict. */
export function dropTrade(id) {
  const key = String(id);
  if (!trades.open.has(key) && !trades.closed.some((c) => String(c.id) === key)) return;
  removeOpen(key, 'filtered');
  removeClosed(key);
  tradesChanged();
}

/** The trade lists of a snapshot replace what is shown; rows still there update in place. */
export function renderTrades(open, closed, animate) {
  const fresh = new Map();
  for (const t of open) fresh.set(String(t.id), t);
  for (const id of [...trades.open.keys()]) if (!fresh.has(id)) removeOpen(id, 'reloaded');
  // Oldest first in the snapshot, prepended one by one: newest ends up on top.
  for (const t of open) upsertOpen(t, null, animate);
  $('closed-list').textContent = '';
  trades.closed = [];
  for (const t of closed.slice(0, MAX_CLOSED).reverse()) addClosed(t, false);
  tradesChanged();
}

export function tradesChanged() {
  const n = trades.open.size;
  $('open-count').textContent = String(n);
  $('stat-open').textContent = String(n);
  $('trades-empty').hidden = n > 0;
  $('closed-count').textContent = String(trades.closed.length);
  $('closed-empty').hidden = trades.closed.length > 0;
  let sum = 0;
  for (const c of trades.closed) sum += toNumber(c.realized_pnl) || 0;
  const pnl = $('stat-pnl');
  pnl.textContent = fmtPnl(sum);
  pnl.dataset.sign = pnlSign(sum);
}

export function refreshAges() {
  for (const td of tbody().querySelectorAll('td[data-col="age"]')) {
    const since = td.dataset.since;
    td.textContent = fmtAge(since ? Number(since) : null);
  }
}
