/* zepix-hub live dashboard: snapshot over HTTP, then /ws/live with resume.
 *
 * Consistency rule (docs/protocol.md): render GET /api/snapshot, connect with
 * since=<snapshot.head>, apply every event frame whose seq is above the last
 * applied one (seq null frames always apply), and on a reconnect resume with
 * since=<last applied seq>. A `replayed` frame with recovered=false means the
 * hub cannot fill the gap: reload the snapshot and continue from its head.
 * Every resume also sends epoch=<the log's epoch, from the snapshot>: a seq
 * names an event only within one log, and after a restore fence or a rebuilt
 * database the hub answers recovered=false instead of replaying another log.
 *
 * Plain browser JavaScript, no build step, no dependencies.
 */
(() => {
  'use strict';

  const OPEN_STATUSES = new Set(['PENDING', 'OPEN', 'PARTIALLY_FILLED', 'FILLED']);
  const LEVELS = ['DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL'];
  const MAX_LOG_ROWS = 500;        // a log storm must not grow the DOM without bound
  const MAX_CLOSED = 20;
  const MAX_SAMPLES = 40;
  const MAX_TOASTS = 6;
  const TOAST_MS = 5000;
  const STICKY_TOASTS = new Set(['error', 'critical']);
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_MAX_MS = 8000;
  const TOKEN_KEY = 'zepix.token';
  const FILTER_KEY = 'zepix.logLevels';
  const STOP_CODES = { 4001: 'unauthorized', 4003: 'forbidden' };

  const reducedMotion = window.matchMedia('(prefers-reduced-motion: reduce)');
  const phone = window.matchMedia('(max-width: 720px)');
  const $ = (id) => document.getElementById(id);

  const state = {
    token: null,
    lastSeq: null,       // seq of the last applied persisted event
    epoch: null,         // the event log lastSeq belongs to (from the snapshot; sent back on every resume)
    open: new Map(),     // trade id (string) -> trade row
    closed: [],          // newest first
    status: null,        // latest sys_status data
    cpu: [],
    ram: [],
    maxLogId: 0,
    applied: 0,          // event frames applied (tests and the curious)
    ignored: 0,          // event frames dropped as already applied
    conn: {
      status: 'connecting', detail: '', connects: 0, reconnects: 0, resumes: 0, reloads: 0,
      lastMissed: 0, lastCloseCode: null, closeCodes: [], session: null, expiresAt: null,
    },
  };

  // ---------------------------------------------------------------- formatting

  const nf = new Map();
  function numberFormat(min, max) {
    const key = `${min}/${max}`;
    if (!nf.has(key)) {
      nf.set(key, new Intl.NumberFormat('en-US', { minimumFractionDigits: min, maximumFractionDigits: max }));
    }
    return nf.get(key);
  }

  function toNumber(v) {
    if (v === null || v === undefined || v === '') return null;
    const n = typeof v === 'number' ? v : Number(v);
    return Number.isFinite(n) ? n : null;
  }

  // Prices arrive as JSON numbers with whatever digits numeric holds: show what a trader reads.
  function fmtPrice(v) {
    const n = toNumber(v);
    if (n === null) return '—';
    const a = Math.abs(n);
    if (a >= 1000) return numberFormat(2, 2).format(n);
    if (a >= 10) return numberFormat(2, 3).format(n);
    if (a >= 1) return numberFormat(2, 5).format(n);
    if (a === 0) return '0';
    return numberFormat(2, Math.min(10, 3 - Math.floor(Math.log10(a)) + 2)).format(n);
  }

  function fmtQty(v) {
    const n = toNumber(v);
    if (n === null) return '—';
    const a = Math.abs(n);
    if (a >= 1000) return numberFormat(0, 2).format(n);
    if (a >= 1) return numberFormat(0, 4).format(n);
    if (a === 0) return '0';
    return numberFormat(0, Math.min(10, 3 - Math.floor(Math.log10(a)) + 2)).format(n);
  }

  function fmtPnl(v) {
    const n = toNumber(v);
    if (n === null) return '—';
    const s = numberFormat(2, 2).format(Math.abs(n));
    return n > 0 ? `+${s}` : n < 0 ? `\u2212${s}` : s;
  }

  function pnlSign(v) {
    const n = toNumber(v);
    return n === null ? 'none' : n > 0 ? 'pos' : n < 0 ? 'neg' : 'zero';
  }

  function parseTime(ts) {
    if (!ts) return null;
    const t = Date.parse(ts);
    return Number.isFinite(t) ? t : null;
  }

  function fmtAge(ms) {
    if (ms === null) return '—';
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return `${s}s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h}h ${m % 60}m`;
    return `${Math.floor(h / 24)}d`;
  }

  function fmtClock(ms, withMs) {
    if (ms === null) return '--:--:--';
    const d = new Date(ms);
    const p = (x, n = 2) => String(x).padStart(n, '0');
    const base = `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
    return withMs ? `${base}.${p(d.getMilliseconds(), 3)}` : base;
  }

  function fmtUptime(s) {
    const n = toNumber(s);
    if (n === null) return '—';
    if (n < 60) return `${Math.round(n)}s`;
    if (n < 3600) return `${Math.floor(n / 60)}m`;
    if (n < 172800) return `${Math.floor(n / 3600)}h ${Math.floor((n % 3600) / 60)}m`;
    return `${Math.floor(n / 86400)}d`;
  }

  function humanStatus(s) {
    return String(s || '').replace(/_/g, ' ').toLowerCase();
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // Re-trigger a CSS animation class on an element that may already carry it.
  function replay(node, cls) {
    if (reducedMotion.matches) return;
    node.classList.remove(cls);
    void node.offsetWidth;
    node.classList.add(cls);
  }

  // Remove after an exit animation; a timer backs up animationend (hidden tabs, reduced motion).
  function removeAnimated(node, cls, ms) {
    if (reducedMotion.matches || document.hidden) {
      node.remove();
      return;
    }
    node.classList.add(cls);
    let done = false;
    const finish = () => { if (!done) { done = true; node.remove(); } };
    node.addEventListener('animationend', finish, { once: true });
    setTimeout(finish, ms + 100);
  }

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
    state.token = token;
    try { sessionStorage.setItem(TOKEN_KEY, token); } catch { /* in memory only */ }
  }

  // ---------------------------------------------------------------- connection indicator

  let settleTimer = null;
  function setConn(status, text, detail) {
    clearTimeout(settleTimer);
    state.conn.status = status;
    state.conn.detail = detail || '';
    const node = $('conn');
    node.dataset.status = status;
    $('conn-text').textContent = text;
    node.title = detail || text;
    document.body.dataset.conn = status;
    // "resumed" and "reloaded" are news, not states: after a while they settle to "live".
    if (status === 'resumed' || status === 'reloaded') {
      settleTimer = setTimeout(() => { if (state.conn.status === status) setConn('live', 'Live', detail); }, 8000);
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

  // ---------------------------------------------------------------- sys_status

  function levelOf(pct) {
    return pct >= 85 ? 'high' : pct >= 60 ? 'mid' : 'ok';
  }

  function drawSpark(svg, samples) {
    const line = svg.querySelector('.spark-line');
    const area = svg.querySelector('.spark-area');
    if (samples.length < 2) {
      line.setAttribute('d', '');
      area.setAttribute('d', '');
      return;
    }
    // Right-aligned time axis; the y axis zooms to the recent range (the ring shows the absolute value).
    const span = Math.max(samples.length, 12) - 1;
    const step = 100 / span;
    const x0 = 100 - step * (samples.length - 1);
    let lo = Math.min(...samples);
    let hi = Math.max(...samples);
    if (hi - lo < 20) { const mid = (hi + lo) / 2; lo = mid - 10; hi = mid + 10; }
    if (lo < 0) { hi -= lo; lo = 0; }
    if (hi > 100) { lo = Math.max(0, lo - (hi - 100)); hi = 100; }
    const y = (v) => 26 - ((v - lo) / (hi - lo)) * 24;
    const pts = samples.map((v, i) => [x0 + i * step, y(v)]);
    const d = pts.map(([px, py], i) => `${i ? 'L' : 'M'}${px.toFixed(2)} ${py.toFixed(2)}`).join(' ');
    line.setAttribute('d', d);
    area.setAttribute('d', `${d} L100 28 L${x0.toFixed(2)} 28 Z`);
  }

  function setMeter(id, valueId, samples, pct) {
    const meter = $(id);
    const n = toNumber(pct);
    meter.dataset.level = n === null ? 'ok' : levelOf(n);
    $(valueId).textContent = n === null ? '—' : `${Math.round(n)}%`;
    const ring = meter.querySelector('.ring-value');
    ring.setAttribute('stroke-dasharray', `${n === null ? 0 : Math.max(0, Math.min(100, n))} 100`);
    ring.style.opacity = n ? '1' : '0';  // a round cap would draw a dot for 0
    drawSpark(meter.querySelector('.spark'), samples);
  }

  function applyStatus(d) {
    if (!d || typeof d !== 'object') return;
    state.status = d;
    const cpu = toNumber(d.cpu);
    const ram = toNumber(d.ram);
    if (cpu !== null) { state.cpu.push(cpu); if (state.cpu.length > MAX_SAMPLES) state.cpu.shift(); }
    if (ram !== null) { state.ram.push(ram); if (state.ram.length > MAX_SAMPLES) state.ram.shift(); }
    const pill = $('bot-status');
    const status = d.status === 'DEGRADED' ? 'DEGRADED' : d.status === 'RUNNING' ? 'RUNNING' : 'unknown';
    if (pill.dataset.state !== status) {
      pill.dataset.state = status;
      replay(pill, 'pop');
    }
    $('bot-status-text').textContent = status === 'unknown' ? '—' : status;
    setMeter('meter-cpu', 'cpu-value', state.cpu, cpu);
    setMeter('meter-ram', 'ram-value', state.ram, ram);
    const bits = [];
    if (d.uptime_s !== undefined) bits.push(`up ${fmtUptime(d.uptime_s)}`);
    if (d.connections !== undefined) bits.push(`${d.connections} client${d.connections === 1 ? '' : 's'}`);
    if (toNumber(d.lag)) bits.push(`lag ${d.lag}`);
    if (d.hub_rss_mb !== undefined) bits.push(`${Math.round(d.hub_rss_mb)} MB`);
    $('stat-hub').textContent = bits.join(' · ') || '—';
    $('stat-hub').title = `hub CPU ${d.hub_cpu ?? '—'}% · RSS ${d.hub_rss_mb ?? '—'} MB · listener ${d.listener ?? '—'}`;
  }

  // ---------------------------------------------------------------- trades

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
    const before = state.open.get(id);
    state.open.set(id, t);
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
    state.open.delete(id);
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
    const existing = state.closed.findIndex((c) => String(c.id) === id);
    const li = buildClosed(t);
    if (existing >= 0) {
      state.closed[existing] = t;
      const old = list.querySelector(`li[data-trade-id="${CSS.escape(id)}"]`);
      if (old) { old.replaceWith(li); if (animate) replay(li.querySelector('.pnl'), 'flash'); }
    } else {
      state.closed.unshift(t);
      list.prepend(li);
      if (animate) replay(li, 'enter');
      while (state.closed.length > MAX_CLOSED) {
        const gone = state.closed.pop();
        const node = list.querySelector(`li[data-trade-id="${CSS.escape(String(gone.id))}"]`);
        if (node) node.remove();
      }
    }
  }

  function removeClosed(id) {
    const i = state.closed.findIndex((c) => String(c.id) === id);
    if (i < 0) return;
    state.closed.splice(i, 1);
    const node = $('closed-list').querySelector(`li[data-trade-id="${CSS.escape(id)}"]`);
    if (node) { delete node.dataset.tradeId; removeAnimated(node, 'leave', 450); }
  }

  function applyTrade(d, animate) {
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

  function tradesChanged() {
    const n = state.open.size;
    $('open-count').textContent = String(n);
    $('stat-open').textContent = String(n);
    $('trades-empty').hidden = n > 0;
    $('closed-count').textContent = String(state.closed.length);
    $('closed-empty').hidden = state.closed.length > 0;
    let sum = 0;
    for (const c of state.closed) sum += toNumber(c.realized_pnl) || 0;
    const pnl = $('stat-pnl');
    pnl.textContent = fmtPnl(sum);
    pnl.dataset.sign = pnlSign(sum);
  }

  function refreshAges() {
    for (const td of tbody().querySelectorAll('td[data-col="age"]')) {
      const since = td.dataset.since;
      td.textContent = fmtAge(since ? Number(since) : null);
    }
  }

  // ---------------------------------------------------------------- logs

  const logs = { queue: [], paused: false, held: [], dropped: 0, flushScheduled: false };

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

  function pushLog(row) {
    const id = toNumber(row.id);
    if (id !== null) state.maxLogId = Math.max(state.maxLogId, id);
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

  function setPaused(paused) {
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

  function loadLevelFilter() {
    let shown = null;
    try { shown = JSON.parse(localStorage.getItem(FILTER_KEY) || 'null'); } catch { shown = null; }
    if (!Array.isArray(shown)) shown = LEVELS.filter((l) => l !== 'DEBUG');
    applyLevelFilter(new Set(shown));
  }

  function applyLevelFilter(shown) {
    const list = $('log-list');
    for (const chip of document.querySelectorAll('#level-filter .chip')) {
      const on = shown.has(chip.dataset.level);
      chip.setAttribute('aria-pressed', String(on));
    }
    for (const l of LEVELS) list.classList.toggle(`hide-${l}`, !shown.has(l));
    try { localStorage.setItem(FILTER_KEY, JSON.stringify([...shown])); } catch { /* not persisted */ }
  }

  function shownLevels() {
    return new Set([...document.querySelectorAll('#level-filter .chip[aria-pressed="true"]')].map((c) => c.dataset.level));
  }

  // ---------------------------------------------------------------- toasts

  const TOAST_ICONS = { info: 'i', success: '✓', warning: '!', error: '!', critical: '‼' };

  function toast(d) {
    const type = ['info', 'success', 'warning', 'error', 'critical'].includes(d.type) ? d.type : 'info';
    const sticky = STICKY_TOASTS.has(type);
    const box = $('toasts');
    const node = el('div', 'toast');
    node.dataset.type = type;
    node.dataset.sticky = String(sticky);
    node.setAttribute('role', sticky ? 'alert' : 'status');
    const icon = el('span', 'toast-icon', TOAST_ICONS[type]);
    icon.setAttribute('aria-hidden', 'true');
    const text = el('div', 'toast-text');
    text.append(el('strong', 'toast-title', String(d.title || type)));
    if (d.body) text.append(el('span', 'toast-body', String(d.body)));
    const close = el('button', 'toast-close', '×');
    close.type = 'button';
    close.setAttribute('aria-label', `Dismiss notification: ${d.title || type}`);
    close.addEventListener('click', () => dismiss(node));
    node.append(icon, text, close);
    box.append(node);
    replay(node, 'enter');
    if (!sticky) {
      // The timer pauses while the operator hovers or focuses the toast, so it does not vanish mid-read.
      let left = TOAST_MS;
      let started = Date.now();
      let timer = setTimeout(() => dismiss(node), left);
      const hold = () => { clearTimeout(timer); left -= Date.now() - started; };
      const release = () => { started = Date.now(); timer = setTimeout(() => dismiss(node), Math.max(1500, left)); };
      node.addEventListener('mouseenter', hold);
      node.addEventListener('mouseleave', release);
      node.addEventListener('focusin', hold);
      node.addEventListener('focusout', release);
    }
    const all = [...box.querySelectorAll('.toast:not(.leave)')];
    if (all.length > MAX_TOASTS) {
      const victim = all.find((t) => t.dataset.sticky === 'false') || all[0];
      dismiss(victim);
    }
    toastsChanged();
  }

  function dismiss(node) {
    if (!node.isConnected || node.classList.contains('leave')) return;
    const next = node.nextElementSibling || node.previousElementSibling;
    const hadFocus = node.contains(document.activeElement);
    removeAnimated(node, 'leave', 300);
    if (hadFocus && next && next.classList.contains('toast')) next.querySelector('.toast-close').focus();
    toastsChanged();
  }

  function toastsChanged() {
    const sticky = $('toasts').querySelectorAll('.toast[data-sticky="true"]:not(.leave)').length;
    $('toasts-clear').hidden = sticky < 2;
  }

  // ---------------------------------------------------------------- events

  function applyEvent(f) {
    if (f.seq !== null && f.seq !== undefined) {
      if (state.lastSeq !== null && f.seq <= state.lastSeq) { state.ignored += 1; return; }
    }
    const d = f.data || {};
    switch (f.topic) {
      case 'trade_update': applyTrade(d, true); break;
      case 'log_stream': pushLog(d); break;
      case 'notification': toast(d); break;
      case 'sys_status': applyStatus(d); break;
      default: break;  // a topic added later: ignore, but still advance seq
    }
    if (f.seq !== null && f.seq !== undefined) {
      state.lastSeq = f.seq;
      $('stat-seq').textContent = `#${f.seq}`;
    }
    state.applied += 1;
  }

  function renderSnapshot(snap) {
    const epoch = typeof snap.epoch === 'string' ? snap.epoch : null;
    if (state.lastSeq !== null && (snap.head < state.lastSeq || epoch !== state.epoch)) {
      // The event log went backwards or is another one (a restored or new database): old log lines
      // no longer line up.
      $('log-list').textContent = '';
      logs.queue = [];
      state.maxLogId = 0;
    }
    const fresh = new Map();
    for (const t of snap.open_trades || []) fresh.set(String(t.id), t);
    for (const id of [...state.open.keys()]) if (!fresh.has(id)) removeOpen(id, 'reloaded');
    // Oldest first in the snapshot, prepended one by one: newest ends up on top.
    const firstLoad = state.lastSeq === null;
    for (const t of snap.open_trades || []) upsertOpen(t, null, !firstLoad);
    const list = $('closed-list');
    list.textContent = '';
    state.closed = [];
    for (const t of (snap.closed_trades || []).slice(0, MAX_CLOSED).reverse()) addClosed(t, false);
    tradesChanged();
    for (const row of snap.logs || []) {
      const id = toNumber(row.id);
      if (id === null || id > state.maxLogId) pushLog(row);
    }
    if (snap.status) applyStatus(snap.status);
    state.lastSeq = snap.head;
    state.epoch = epoch;
    $('stat-seq').textContent = `#${snap.head}`;
  }

  // ---------------------------------------------------------------- network

  class AuthFailure extends Error {}

  async function fetchSnapshot() {
    // A stalled request would leave the page "Reloading…" for good, buffering live frames: give up and retry.
    const r = await fetch(new URL('api/snapshot', document.baseURI), {
      headers: { Authorization: `Bearer ${state.token}` }, cache: 'no-store', signal: AbortSignal.timeout(15000),
    });
    if (r.status === 401 || r.status === 403) {
      let detail = '';
      try { detail = (await r.json()).detail || ''; } catch { /* no body */ }
      throw new AuthFailure(detail || `HTTP ${r.status}`);
    }
    if (!r.ok) throw new Error(`snapshot: HTTP ${r.status}`);
    return r.json();
  }

  const net = {
    ws: null, gen: 0, attempt: 0, timer: null, stopped: true, reloading: false, buffer: null,
    lastFrameAt: 0, pingSentAt: 0, heartbeatMs: 5000, everLive: false, needReload: false, starts: 0,
  };

  // A cleared timer must read as "none pending": hurry() tests net.timer to know a reconnect is waiting.
  function cancelTimer() {
    clearTimeout(net.timer);
    net.timer = null;
  }

  function wsUrl() {
    const url = new URL('ws/live', document.baseURI);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    url.search = `?since=${encodeURIComponent(String(state.lastSeq ?? 0))}`;
    if (state.epoch) url.search += `&epoch=${encodeURIComponent(state.epoch)}`;
    return url.toString();
  }

  function connect() {
    cancelTimer();
    if (net.stopped) return;
    drop();
    // A reload cut short by a lost socket is abandoned: the new socket's `replayed` decides afresh.
    net.reloading = false;
    net.buffer = null;
    const gen = ++net.gen;
    let sock;
    try {
      // The token travels as a subprotocol, never in the URL (URLs end up in logs).
      sock = new WebSocket(wsUrl(), ['bearer', state.token]);
    } catch (err) {
      scheduleReconnect(`could not open a WebSocket: ${err.message}`);
      return;
    }
    net.ws = sock;
    net.lastFrameAt = Date.now();
    net.pingSentAt = 0;
    sock.onmessage = (ev) => { if (gen === net.gen) onFrame(ev.data, gen); };
    sock.onclose = (ev) => { if (gen === net.gen) onClose(ev.code, ev.reason); };
    sock.onerror = () => { /* onclose follows with the code */ };
  }

  function drop() {
    net.gen += 1;  // callbacks of the old socket are now ignored
    const old = net.ws;
    net.ws = null;
    if (old) {
      old.onmessage = null; old.onclose = null; old.onerror = null;
      try { old.close(1000, 'client reconnecting'); } catch { /* already closed */ }
    }
  }

  function onClose(code, reason) {
    net.ws = null;
    state.conn.lastCloseCode = code;
    state.conn.closeCodes.push(code);
    if (state.conn.closeCodes.length > 20) state.conn.closeCodes.shift();
    const stop = STOP_CODES[code];
    if (stop === 'unauthorized') {
      halt('unauthorized', 'Token expired or invalid',
        'The hub refused the token (close 4001). Paste a fresh token to reconnect.', true);
      return;
    }
    if (stop === 'forbidden') {
      halt('forbidden', 'Not allowed', `The hub refused this page: ${reason || 'origin or topic not allowed'} (close 4003).`, false);
      return;
    }
    // 4400: our since was refused; 4410: the hub found its event log restored to an earlier point, so the
    // seqs we hold may name other events now. Either way, start over from a snapshot.
    if (code === 4400 || code === 4410) net.needReload = true;
    scheduleReconnect(`closed ${code}${reason ? `: ${reason}` : ''}`);
  }

  function halt(status, text, body, askToken) {
    net.stopped = true;
    cancelTimer();
    drop();
    setConn(status, text, body);
    showBanner(text, body, askToken);
  }

  function scheduleReconnect(why) {
    if (net.stopped) return;
    cancelTimer();
    net.attempt += 1;
    if (net.everLive) state.conn.reconnects += 1;
    // Exponential backoff with jitter: a restarted hub is not hit by every dashboard at once.
    const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** Math.min(10, net.attempt - 1));
    const delay = Math.round(cap / 2 + Math.random() * cap / 2);
    setConn('reconnecting', `Reconnecting… (attempt ${net.attempt})`, `${why}; retrying in ${(delay / 1000).toFixed(1)} s`);
    net.timer = setTimeout(() => {
      net.timer = null;
      if (net.needReload || state.lastSeq === null) start();
      else connect();
    }, delay);
  }

  function onFrame(raw, gen) {
    net.lastFrameAt = Date.now();
    net.pingSentAt = 0;
    let f;
    try { f = JSON.parse(raw); } catch { console.warn('zepix: ignoring a frame that is not JSON'); return; }
    if (!f || typeof f !== 'object') return;
    switch (f.type) {
      case 'event':
        if (net.reloading) { net.buffer.push(f); return; }
        applyEvent(f);
        return;
      case 'welcome':
        state.conn.session = f.session;
        state.conn.expiresAt = f.expires_at || null;
        net.heartbeatMs = Math.max(1000, (Number(f.heartbeat_s) || 5) * 1000);
        return;
      case 'replayed':
        onReplayed(f, gen);
        return;
      case 'error':
        console.warn(`zepix: hub says ${f.code}: ${f.message}`);
        return;
      default:
        return;  // pong, topics, refreshed
    }
  }

  function onReplayed(f, gen) {
    net.attempt = 0;
    state.conn.connects += 1;
    const wasLive = net.everLive;
    net.everLive = true;
    hideBanner();
    if (f.recovered === false) {
      state.conn.reloads += 1;
      reloadAfterGap(gen, f.reason || 'gap too large');
      return;
    }
    if (typeof f.head === 'number' && state.lastSeq !== null && f.head > state.lastSeq) {
      // Nothing on our topics up to head is left to send; adopting it keeps the next resume short.
      state.lastSeq = f.head;
      $('stat-seq').textContent = `#${f.head}`;
    }
    state.conn.lastMissed = f.count || 0;
    if (wasLive) {
      state.conn.resumes += 1;
      const n = f.count || 0;
      setConn('resumed', `Resumed · ${n} missed event${n === 1 ? '' : 's'}`,
        `Reconnected and replayed ${n} event${n === 1 ? '' : 's'} missed while away`);
    } else {
      setConn('live', 'Live', 'Connected; events arrive as they commit');
    }
  }

  // recovered=false: the gap cannot be replayed. Reload state, then keep applying live frames above its head.
  async function reloadAfterGap(gen, why) {
    net.reloading = true;
    net.buffer = [];
    setConn('reloading', 'Reloading state…', why);
    try {
      const snap = await fetchSnapshot();
      if (gen !== net.gen) return;
      renderSnapshot(snap);
      const buffered = net.buffer;
      net.reloading = false;
      net.buffer = null;
      for (const f of buffered) applyEvent(f);
      if (!net.ws) return;  // the socket went away meanwhile; the reconnect owns the indicator now
      setConn('reloaded', 'Could not resume · state reloaded', `The hub could not replay the gap (${why}); state was reloaded`);
    } catch (err) {
      if (gen !== net.gen) return;
      net.reloading = false;
      net.buffer = null;
      if (err instanceof AuthFailure) {
        halt('unauthorized', 'Token expired or invalid', `The hub refused the token: ${err.message}`, true);
        return;
      }
      drop();
      net.needReload = true;
      scheduleReconnect(`could not reload state: ${err.message}`);
    }
  }

  // Half-open TCP (a laptop that slept, a dead proxy) shows as silence: probe, then give up and reconnect.
  function watchdog() {
    if (!net.ws || net.ws.readyState !== WebSocket.OPEN) return;
    const silent = Date.now() - net.lastFrameAt;
    const probeAfter = Math.max(4000, net.heartbeatMs * 3);
    if (silent > probeAfter && !net.pingSentAt) {
      net.pingSentAt = Date.now();
      try { net.ws.send('{"type":"ping"}'); } catch { /* close follows */ }
    } else if (net.pingSentAt && Date.now() - net.pingSentAt > Math.max(5000, net.heartbeatMs * 2)) {
      drop();
      scheduleReconnect('no answer from the hub');
    }
  }

  async function start() {
    cancelTimer();
    drop();
    net.stopped = false;
    net.needReload = false;
    net.reloading = false;
    net.buffer = null;
    if (!state.token) {
      net.stopped = true;
      setConn('no-token', 'No token', 'Open the page with ?token=<JWT>');
      showBanner('Token needed', 'Open this page with ?token=<JWT> or paste a token (zepix-hub token --sub NAME mints one).', true);
      return;
    }
    if (!net.everLive) setConn('connecting', 'Connecting…', 'Loading the current state');
    const mine = ++net.starts;  // a newer start() (a pasted token) supersedes this one
    const reload = net.everLive;  // not the first load: after a 4400 or 4410, or a new token
    try {
      const snap = await fetchSnapshot();
      if (net.stopped || mine !== net.starts) return;
      renderSnapshot(snap);
      if (reload) state.conn.reloads += 1;
    } catch (err) {
      if (net.stopped || mine !== net.starts) return;
      if (err instanceof AuthFailure) {
        halt('unauthorized', 'Token expired or invalid', `The hub refused the token: ${err.message}`, true);
        return;
      }
      net.needReload = true;
      scheduleReconnect(`could not load state: ${err.message}`);
      return;
    }
    connect();
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
      net.attempt = 0;
      net.everLive = false;  // a fresh start from a snapshot, not a resume
      start();
    });
    $('level-filter').addEventListener('click', (ev) => {
      const chip = ev.target.closest('.chip');
      if (!chip) return;
      chip.setAttribute('aria-pressed', String(chip.getAttribute('aria-pressed') !== 'true'));
      applyLevelFilter(shownLevels());
    });
    $('log-pause').addEventListener('click', () => setPaused(!logs.paused));
    $('toasts-clear').addEventListener('click', () => {
      for (const t of $('toasts').querySelectorAll('.toast')) dismiss(t);
    });
    document.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape') {
        const toasts = $('toasts').querySelectorAll('.toast:not(.leave)');
        if (toasts.length) dismiss(toasts[toasts.length - 1]);
      }
    });
    // Back online or back in view: do not sit out the rest of a long backoff.
    const hurry = () => {
      if (!net.stopped && !net.ws && net.timer) {
        net.attempt = 0;
        cancelTimer();
        if (net.needReload || state.lastSeq === null) start(); else connect();
      }
    };
    window.addEventListener('online', hurry);
    document.addEventListener('visibilitychange', () => { if (!document.hidden) hurry(); });
    setInterval(refreshAges, 15000);
    setInterval(watchdog, 1000);
  }

  // A read-only window for tests and for operators poking at the console.
  window.zepix = Object.freeze({
    get lastSeq() { return state.lastSeq; },
    get epoch() { return state.epoch; },
    openTradeIds() { return [...state.open.values()].map((t) => t.id); },
    openTrades() { return [...state.open.values()].map((t) => ({ id: t.id, status: t.status })); },
    get state() {
      return JSON.parse(JSON.stringify({
        lastSeq: state.lastSeq,
        epoch: state.epoch,
        applied: state.applied,
        ignored: state.ignored,
        connection: state.conn,
        status: state.status,
        samples: state.cpu.length,
        open: [...state.open.values()],
        closed: state.closed,
        logRows: document.querySelectorAll('#log-list .log').length,
        logsPaused: logs.paused,
        toasts: document.querySelectorAll('#toasts .toast:not(.leave)').length,
      }));
    },
  });

  wire();
  loadLevelFilter();
  tradesChanged();
  state.token = takeToken();
  start();
})();
