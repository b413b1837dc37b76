/* Small DOM helpers shared by the dashboard's panels. */

export const reducedMotion = window.matchMedia('(prefers-reduced-motion: reduce)');
export const phone = window.matchMedia('(max-width: 720px)');
export const $ = (id) => document.getElementById(id);

export function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Re-trigger a CSS animation class on an element that may already carry it.
export function replay(node, cls) {
  if (reducedMotion.matches) return;
  node.classList.remove(cls);
  void node.offsetWidth;
  node.classList.add(cls);
}

// Remove after an exit animation; a timer backs up animationend (hidden tabs, reduced motion).
export function removeAnimated(node, cls, ms) {
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
