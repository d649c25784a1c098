// Building the page without HTML strings: every text, including what a model returns,
// goes in as a text node. (The page's Trusted Types policy makes innerHTML throw.)

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value == null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "value" || key === "checked" || key === "disabled" || key === "selected")
      el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  add(el, children);
  return el;
}

function add(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

export function fill(el, ...children) {
  el.replaceChildren();
  add(el, children);
  return el;
}

export function ago(unix) {
  if (!unix) return "—";
  const s = Math.max(0, Date.now() / 1000 - unix);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(unix * 1000).toLocaleString();
}

export function duration(seconds) {
  if (seconds == null) return "—";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  return `${Math.round(seconds / 60)} min`;
}

export function clock(unix) {
  return new Date(unix * 1000).toLocaleTimeString();
}

export async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    if (button) flash(button, "Copied");
  } catch {
    if (button) flash(button, "Select and copy");
  }
}

function flash(button, label) {
  const was = button.textContent;
  button.textContent = label;
  setTimeout(() => (button.textContent = was), 1200);
}
