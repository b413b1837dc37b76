/* The page's view: which strategy and symbol it shows, asked of the hub as server-side filters.
 *
 * The hub filters (docs/protocol.md, "Filters"): the snapshot, the socket and every resume carry
 * `trade_update.strategy`, `trade_update.symbol` and `log_stream.level` in their URL, so rows of other
 * strategies never cross the wire, and the welcome frame says which filters the hub applied (its scope may
 * narrow them further). The page still checks each trade against the selection, a set lookup per event: a
 * hub that predates filters (one half of a rolling upgrade behind a proxy) ignores the parameters, and a
 * screen labelled "grid" must not show another strategy's trades. `filteredOut` counts what that check
 * dropped; with a hub that filters it stays 0.
 */

import { $, el } from './dom.js';

export const FIELDS = ['strategy', 'symbol'];
const SEEN_KEY = 'zepix.seen';
const MAX_SEEN = 100;
const MAX_VALUE = 64;  // the hub refuses longer filter values

export const view = {
  selected: { strategy: [], symbol: [] },  // empty: every value
  level: 'INFO',                           // the minimum log level asked of the hub
  effective: undefined,                    // the welcome's `filters`; null when the hub sent none
  filteredOut: 0,
  seen: { strategy: new Set(), symbol: new Set() },
};

const usable = (v) => typeof v === 'string' && v.length > 0 && v.length <= MAX_VALUE && !v.includes(',');

function parseList(raw) {
  return raw ? [...new Set(raw.split(',').map((v) => v.trim()).filter(usable))] : [];
}

/** The selection named in the page's own URL (`?strategy=grid&symbol=BTCUSDT,ETHUSDT`): a bookmarkable screen. */
export function readSelection() {
  const q = new URL(window.location.href).searchParams;
  for (const f of FIELDS) view.selected[f] = parseList(q.get(f));
  loadSeen();
}

function writeSelection() {
  const url = new URL(window.location.href);
  for (const f of FIELDS) {
    if (view.selected[f].length) url.searchParams.set(f, view.selected[f].join(','));
    else url.searchParams.delete(f);
  }
  window.history.replaceState(window.history.state, '', url.pathname + url.search + url.hash);
}

/** The topics a token allows (its `topics` claim; null: every topic). Read, not verified: the hub verifies. */
export function tokenTopics(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const claims = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), '=')));
    return Array.isArray(claims.topics) ? new Set(claims.topics) : null;
  } catch {
    return null;
  }
}

/** The filters in URL form, for the snapshot and the socket alike. A filter on a topic the token does not
 * allow would be refused (4400 / 422), so only topics the page receives get one. */
export function filterParams(token) {
  const topics = token ? tokenTopics(token) : null;
  const has = (topic) => topics === null || topics.has(topic);
  const q = new URLSearchParams();
  if (has('trade_update')) {
    for (const f of FIELDS) if (view.selected[f].length) q.set(`trade_update.${f}`, view.selected[f].join(','));
  }
  if (has('log_stream') && view.level !== 'DEBUG') q.set('log_stream.level', view.level);
  return q;
}

/** Does a trade belong on this screen? (The fallback check; see the module comment.) */
export function inView(trade) {
  return FIELDS.every((f) => !view.selected[f].length || view.selected[f].includes(String(trade[f] ?? '')));
}

export function filtering() {
  return FIELDS.some((f) => view.selected[f].length);
}

// ---------------------------------------------------------------- the selector

function loadSeen() {
  let stored = null;
  try { stored = JSON.parse(localStorage.getItem(SEEN_KEY) || 'null'); } catch { stored = null; }
  for (const f of FIELDS) {
    const values = stored && Array.isArray(stored[f]) ? stored[f] : [];
    for (const v of values.filter(usable).slice(0, MAX_SEEN)) view.seen[f].add(v);
  }
}

let seenDirty = true;  // the selects are empty until the first render

/** Remember a trade's strategy and symbol as choices; a filtered page sees only its own, so they persist. */
export function noteTrade(trade) {
  for (const f of FIELDS) {
    const v = trade[f];
    if (usable(v) && !view.seen[f].has(v) && view.seen[f].size < MAX_SEEN) {
      view.seen[f].add(v);
      seenDirty = true;
    }
  }
}

/** Bring the selects up to date with what has been seen; cheap when nothing new was. */
export function renderSelector() {
  if (!seenDirty) return;
  seenDirty = false;
  try {
    localStorage.setItem(SEEN_KEY, JSON.stringify(Object.fromEntries(FIELDS.map((f) => [f, [...view.seen[f]]]))));
  } catch { /* choices not persisted */ }
  for (const f of FIELDS) {
    const select = $(`filter-${f}`);
    const chosen = view.selected[f].join(',');
    const values = [...new Set([...view.seen[f], ...view.selected[f]])].sort();
    const options = [el('option', '', f === 'strategy' ? 'All strategies' : 'All symbols')];
    options[0].value = '';
    for (const v of values) {
      const o = el('option', '', v);
      o.value = v;
      options.push(o);
    }
    if (view.selected[f].length > 1) {  // a list from the page URL: offered as it is
      const o = el('option', '', view.selected[f].join(', '));
      o.value = chosen;
      options.push(o);
    }
    select.replaceChildren(...options);
    select.value = chosen;
  }
}

/** The hub's answer (the welcome's `filters`), shown beside the selects when it is not what was asked. */
export function showEffective(filters) {
  view.effective = filters && typeof filters === 'object' ? filters : null;
  const note = $('filter-note');
  const asked = [...filterParams(null).keys()].filter((k) => k.startsWith('trade_update.'));
  let text = '';
  if (view.effective === null) {
    text = asked.length ? 'this hub does not filter: the page does' : '';
  } else {
    const parts = [];
    for (const f of FIELDS) {
      const values = view.effective[`trade_update.${f}`];
      const wanted = view.selected[f];
      if (Array.isArray(values) && [...values].sort().join(',') !== [...wanted].sort().join(',')) parts.push(`${f} ${values.join(', ')}`);
    }
    text = parts.length ? `limited by the token to ${parts.join(' · ')}` : '';
  }
  note.textContent = text;
  note.hidden = !text;
}

/** Wire the selects; `changed()` runs after the selection (and the page URL) changed. */
export function wireSelector(changed) {
  for (const f of FIELDS) {
    $(`filter-${f}`).addEventListener('change', (ev) => {
      view.selected[f] = parseList(ev.target.value);
      writeSelection();
      changed();
    });
  }
}
