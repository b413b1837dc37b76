/* The header's health panel: the latest sys_status sample, CPU and RAM rings and sparklines. */

import { $, replay } from './dom.js';
import { fmtUptime, toNumber } from './format.js';

const MAX_SAMPLES = 40;

export const health = { status: null, cpu: [], ram: [] };

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

export function applyStatus(d) {
  if (!d || typeof d !== 'object') return;
  health.status = d;
  const cpu = toNumber(d.cpu);
  const ram = toNumber(d.ram);
  if (cpu !== null) { health.cpu.push(cpu); if (health.cpu.length > MAX_SAMPLES) health.cpu.shift(); }
  if (ram !== null) { health.ram.push(ram); if (health.ram.length > MAX_SAMPLES) health.ram.shift(); }
  const pill = $('bot-status');
  const status = d.status === 'DEGRADED' ? 'DEGRADED' : d.status === 'RUNNING' ? 'RUNNING' : 'unknown';
  if (pill.dataset.state !== status) {
    pill.dataset.state = status;
    replay(pill, 'pop');
  }
  $('bot-status-text').textContent = status === 'unknown' ? '—' : status;
  setMeter('meter-cpu', 'cpu-value', health.cpu, cpu);
  setMeter('meter-ram', 'ram-value', health.ram, ram);
  const bits = [];
  if (d.uptime_s !== undefined) bits.push(`up ${fmtUptime(d.uptime_s)}`);
  if (d.connections !== undefined) bits.push(`${d.connections} client${d.connections === 1 ? '' : 's'}`);
  if (toNumber(d.lag)) bits.push(`lag ${d.lag}`);
  if (d.hub_rss_mb !== undefined) bits.push(`${Math.round(d.hub_rss_mb)} MB`);
  $('stat-hub').textContent = bits.join(' · ') || '—';
  $('stat-hub').title = `hub CPU ${d.hub_cpu ?? '—'}% · RSS ${d.hub_rss_mb ?? '—'} MB · listener ${d.listener ?? '—'}`;
}
