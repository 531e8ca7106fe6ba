// Small DOM helpers shared by the views: element building without innerHTML (so server strings
// are never parsed as markup), formatting, and the error banner.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) { while (el.firstChild) el.firstChild.remove(); return el; }

export function flash(message, kind = 'error') {
  const box = document.getElementById('flash');
  clear(box);
  if (!message) return;
  box.className = kind;
  box.append(h('span', {}, message), h('button', { type: 'button', 'aria-label': 'Dismiss', onclick: () => clear(box) }, '×'));
}

export function showError(e) {
  const where = e && e.path ? ` (at ${e.path})` : '';
  flash(`${e && e.message ? e.message : e}${where}`);
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(i ? 1 : 0)} ${u[i]}`;
}

export function fmtNum(n, digits = 3) {
  if (n === null || n === undefined || Number.isNaN(n)) return '–';
  const a = Math.abs(n);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) return Number(n).toExponential(2);
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits });
}

export function fmtTime(iso) {
  if (!iso) return '–';
  const d = new Date(iso);
  return d.toLocaleString();
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return '–';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

export function jobDuration(job) {
  if (!job.started_at) return null;
  const end = job.finished_at ? new Date(job.finished_at) : new Date();
  return (end - new Date(job.started_at)) / 1000;
}

export function stateBadge(state) {
  return h('span', { class: `badge state-${state}` }, state);
}

export function progressBar(p) {
  const f = p && typeof p.fraction === 'number' ? Math.max(0, Math.min(1, p.fraction)) : 0;
  const label = `${Math.round(f * 100)}%` + (p && p.eta_s ? `, ETA ${fmtDuration(p.eta_s)}` : '');
  const bar = h('div', { class: 'bar' });
  bar.style.width = `${(f * 100).toFixed(1)}%`; // CSSOM, not a style attribute: the CSP forbids those
  return h('div', { class: 'progress', role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': String(Math.round(f * 100)), 'aria-label': label, title: (p && p.message) || '' },
    bar, h('span', {}, label));
}

// A table from rows and column specs {label, value: row => node|string, class}.
export function table(columns, rows, opts = {}) {
  return h('table', { class: opts.class || 'grid' },
    opts.caption ? h('caption', {}, opts.caption) : null,
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col', class: c.class }, c.label)))),
    h('tbody', {}, rows.length
      ? rows.map((r) => h('tr', opts.rowAttrs ? opts.rowAttrs(r) : {}, columns.map((c) => h('td', { class: c.class }, c.value(r)))))
      : h('tr', {}, h('td', { colspan: String(columns.length), class: 'empty' }, opts.empty || 'Nothing here yet.'))));
}
