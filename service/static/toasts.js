/* Notifications as toasts: info and success fade by themselves, error and critical stay until dismissed. */

import { $, el, removeAnimated, replay } from './dom.js';

const MAX_TOASTS = 6;
const TOAST_MS = 5000;
const STICKY_TOASTS = new Set(['error', 'critical']);
const TOAST_ICONS = { info: 'i', success: '✓', warning: '!', error: '!', critical: '‼' };

export function toast(d) {
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

export function dismiss(node) {
  if (!node.isConnected || node.classList.contains('leave')) return;
  const next = node.nextElementSibling || node.previousElementSibling;
  const hadFocus = node.contains(document.activeElement);
  removeAnimated(node, 'leave', 300);
  if (hadFocus && next && next.classList.contains('toast')) next.querySelector('.toast-close').focus();
  toastsChanged();
}

export function dismissAll() {
  for (const t of $('toasts').querySelectorAll('.toast')) dismiss(t);
}

/** Escape closes the newest toast. */
export function dismissNewest() {
  const toasts = $('toasts').querySelectorAll('.toast:not(.leave)');
  if (toasts.length) dismiss(toasts[toasts.length - 1]);
}

function toastsChanged() {
  const sticky = $('toasts').querySelectorAll('.toast[data-sticky="true"]:not(.leave)').length;
  $('toasts-clear').hidden = sticky < 2;
}
