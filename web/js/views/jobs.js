// Dashboard: jobs table with filters, paging, bulk retry and live updates from the server's
// event stream (falling back to polling if the stream drops).
import { get, post, stream } from '../api.js';
import { h, clear, table, stateBadge, progressBar, fmtTime, fmtDuration, jobDuration, showError, flash } from '../dom.js';

const STATES = ['', 'queued', 'running', 'succeeded', 'failed', 'cancelled', 'dead'];
const KINDS = ['', 'inspect', 'train', 'compress'];

export async function render(main, _m, params) {
  const state = params.get('state') || '';
  const kind = params.get('kind') || '';
  const page = params.get('page') || '';
  const selected = new Set();
  const byId = new Map();
  const body = h('div', {});

  const select = (id, label, values, value) => h('label', { for: id }, label + ' ',
    h('select', { id, onchange: () => go({ [id]: document.getElementById(id).value, page: '' }) },
      values.map((v) => h('option', { value: v, selected: v === value }, v || 'any'))));
  function go(change) {
    const q = new URLSearchParams({ state, kind, page, ...change });
    for (const [k, v] of [...q]) if (!v) q.delete(k);
    location.hash = '#/jobs' + (q.toString() ? '?' + q : '');
  }
  const retryBtn = h('button', { type: 'button', disabled: true, onclick: retrySelected }, 'Retry selected');
  main.append(h('h1', {}, 'Jobs'),
    h('div', { class: 'toolbar' }, select('state', 'State', STATES, state), select('kind', 'Kind', KINDS, kind), retryBtn,
      h('a', { class: 'button', href: '#/new' }, 'New job')),
    body);

  async function retrySelected() {
    const ids = [...selected];
    const results = await Promise.allSettled(ids.map((id) => post(`/jobs/${id}/retry`)));
    const failed = results.filter((r) => r.status === 'rejected');
    if (failed.length) showError({ message: `${failed.length} of ${ids.length} could not be retried: ${failed[0].reason.message}` });
    else flash(`${ids.length} job(s) queued again.`, 'info');
    selected.clear();
    load();
  }

  let next = null;
  async function load() {
    let res;
    try {
      res = await get('/jobs', { state, kind, page_token: page, limit: 25 });
    } catch (e) { showError(e); return; }
    next = res.next_page_token || null;
    byId.clear();
    for (const j of res.items) byId.set(j.id, j);
    draw();
  }
  function draw() {
    const rows = [...byId.values()].sort((a, b) => (b.created_at || "").localeCompare(a.created_at || ""));
    retryBtn.disabled = selected.size === 0;
    clear(body).append(
      table([
        { label: h('span', { class: 'sr-only' }, 'Select'), value: (j) => h('input', { type: 'checkbox', 'aria-label': `select ${j.id}`, checked: selected.has(j.id), onchange: (e) => { if (e.target.checked) selected.add(j.id); else selected.delete(j.id); retryBtn.disabled = selected.size === 0; } }) },
        { label: 'Job', value: (j) => h('a', { href: `#/jobs/${j.id}` }, j.id) },
        { label: 'Kind', value: (j) => j.kind },
        { label: 'State', value: (j) => stateBadge(j.state) },
        { label: 'Progress', value: (j) => progressBar(j.progress) },
        { label: 'Worker', value: (j) => j.worker || '–' },
        { label: 'Attempt', value: (j) => `${j.attempt}/${j.max_attempts}`, class: 'num' },
        { label: 'Created', value: (j) => fmtTime(j.created_at) },
        { label: 'Duration', value: (j) => fmtDuration(jobDuration(j)), class: 'num' },
      ], rows, { empty: 'No jobs match. Submit one from “New job”.', rowAttrs: (j) => ({ dataset: { job: j.id } }) }),
      h('div', { class: 'pager' },
        page ? h('a', { href: '#/jobs' + (state || kind ? '?' + new URLSearchParams({ ...(state && { state }), ...(kind && { kind }) }) : '') }, '« First page') : null,
        next ? h('a', { href: '#', onclick: (e) => { e.preventDefault(); go({ page: next }); } }, 'Next page »') : null));
  }
  await load();

  // Live: the global stream carries every job change; rows on this page update in place and new
  // jobs that match the filters appear on the first page.
  const stop = stream('/changes', (ev) => {
    const j = ev.data && ev.data.job;
    if (!j) return;
    const matches = (!state || j.state === state) && (!kind || j.kind === kind);
    if (byId.has(j.id) || (matches && !page)) {
      if (matches || byId.has(j.id)) byId.set(j.id, j);
      draw();
    }
  });
  const poll = setInterval(load, 15000);
  return () => { stop(); clearInterval(poll); };
}
