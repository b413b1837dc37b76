/* How numbers and times read on the dashboard: pure functions, no DOM. */

const formats = new Map();
function numberFormat(min, max) {
  const key = `${min}/${max}`;
  if (!formats.has(key)) {
    formats.set(key, new Intl.NumberFormat('en-US', { minimumFractionDigits: min, maximumFractionDigits: max }));
  }
  return formats.get(key);
}

export function toNumber(v) {
  if (v === null || v === undefined || v === '') return null;
  const n = typeof v === 'number' ? v : Number(v);
  return Number.isFinite(n) ? n : null;
}

// Prices arrive as JSON numbers with whatever digits numeric holds: show what a trader reads.
export function fmtPrice(v) {
  const n = toNumber(v);
  if (n === null) return '—';
  const a = Math.abs(n);
  if (a >= 1000) return numberFormat(2, 2).format(n);
  if (a >= 10) return numberFormat(2, 3).format(n);
  if (a >= 1) return numberFormat(2, 5).format(n);
  if (a === 0) return '0';
  return numberFormat(2, Math.min(10, 3 - Math.floor(Math.log10(a)) + 2)).format(n);
}

export function fmtQty(v) {
  const n = toNumber(v);
  if (n === null) return '—';
  const a = Math.abs(n);
  if (a >= 1000) return numberFormat(0, 2).format(n);
  if (a >= 1) return numberFormat(0, 4).format(n);
  if (a === 0) return '0';
  return numberFormat(0, Math.min(10, 3 - Math.floor(Math.log10(a)) + 2)).format(n);
}

export function fmtPnl(v) {
  const n = toNumber(v);
  if (n === null) return '—';
  const s = numberFormat(2, 2).format(Math.abs(n));
  return n > 0 ? `+${s}` : n < 0 ? `\u2212${s}` : s;
}

export function pnlSign(v) {
  const n = toNumber(v);
  return n === null ? 'none' : n > 0 ? 'pos' : n < 0 ? 'neg' : 'zero';
}

export function parseTime(ts) {
  if (!ts) return null;
  const t = Date.parse(ts);
  return Number.isFinite(t) ? t : null;
}

export function fmtAge(ms) {
  if (ms === null) return '—';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${m % 60}m`;
  return `${Math.floor(h / 24)}d`;
}

export function fmtClock(ms, withMs) {
  if (ms === null) return '--:--:--';
  const d = new Date(ms);
  const p = (x, n = 2) => String(x).padStart(n, '0');
  const base = `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  return withMs ? `${base}.${p(d.getMilliseconds(), 3)}` : base;
}

export function fmtUptime(s) {
  const n = toNumber(s);
  if (n === null) return '—';
  if (n < 60) return `${Math.round(n)}s`;
  if (n < 3600) return `${Math.floor(n / 60)}m`;
  if (n < 172800) return `${Math.floor(n / 3600)}h ${Math.floor((n % 3600) / 60)}m`;
  return `${Math.floor(n / 86400)}d`;
}

export function humanStatus(s) {
  return String(s || '').replace(/_/g, ' ').toLowerCase();
}
