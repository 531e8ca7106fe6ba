// Job page: state and progress, live charts of its metrics, live log tail, result view for its
// kind, artifacts, and the actions cancel / retry / clone-and-edit.
import { get, post, stream, download } from '../api.js';
import { h, clear, stateBadge, progressBar, fmtTime, fmtDuration, jobDuration, showError, flash, table, fmtBytes, fmtNum } from '../dom.js';
import { MetricCharts } from '../charts.js';
import { renderResult } from './results.js';

const TERMINAL = new Set(['succeeded', 'failed', 'cancelled', 'dead']);

export async function render(main, [id]) {
  let job = await get(`/jobs/${id}`);
  const head = h('div', {});
  const resultBox = h('section', { 'aria-labelledby': 'res-title' });
  const chartBox = h('div', { class: 'charts' });
  const logBox = h('pre', { class: 'log', tabindex: '0', 'aria-label': 'Job log' });
  const artBox = h('div', {});
  const charts = new MetricCharts(chartBox);
  let resultCleanup = null;

  function drawHead() {
    clear(head).append(...[
      h('h1', {}, `${job.kind} job `, h('code', {}, job.id), ' ', stateBadge(job.state)),
      h('div', { class: 'toolbar' },
        !TERMINAL.has(job.state) ? h('button', { type: 'button', onclick: cancel }, 'Cancel') : null,
        TERMINAL.has(job.state) && job.state !== 'succeeded' ? h('button', { type: 'button', onclick: retry }, 'Retry') : null,
        h('a', { class: 'button', href: `#/new?from=${job.id}` }, 'Clone and edit'),
        h('a', { class: 'button', href: `#/compare?ids=${job.id}` }, 'Compare…')),
      progressBar(job.progress),
      h('p', { class: 'muted' }, job.progress && job.progress.message ? job.progress.message : ''),
      h('dl', { class: 'facts' },
        h('dt', {}, 'Worker'), h('dd', {}, job.worker || '–'),
        h('dt', {}, 'Attempt'), h('dd', {}, `${job.attempt} of ${job.max_attempts}`),
        h('dt', {}, 'Priority'), h('dd', {}, String(job.priority)),
        h('dt', {}, 'Created'), h('dd', {}, fmtTime(job.created_at)),
        h('dt', {}, 'Duration'), h('dd', {}, fmtDuration(jobDuration(job)))),
      job.error ? h('div', { class: 'error', role: 'status' }, h('strong', {}, 'Error: '), h('pre', {}, job.error)) : null,
    ].filter(Boolean)); // DOM append would print a null as the text "null"
  }
  async function cancel() {
    try { job = await post(`/jobs/${id}/cancel`); drawHead(); flash('Cancel requested.', 'info'); } catch (e) { showError(e); }
  }
  async function retry() {
    try { job = await post(`/jobs/${id}/retry`); drawHead(); flash('Queued again.', 'info'); } catch (e) { showError(e); }
  }
  async function drawResult() {
    if (resultCleanup) { resultCleanup(); resultCleanup = null; }
    clear(resultBox);
    if (!job.result) return;
    resultBox.append(h('h2', { id: 'res-title' }, 'Result'));
    resultCleanup = renderResult(resultBox, job);
  }
  async function drawArtifacts() {
    let res;
    try { res = await get(`/jobs/${id}/artifacts`); } catch (e) { showError(e); return; }
    clear(artBox).append(table([
      { label: 'Artifact', value: (a) => h('a', { href: '#', onclick: (e) => { e.preventDefault(); download(`/artifacts/${a.id}/content`, a.name).catch(showError); } }, a.name) },
      { label: 'Size', value: (a) => fmtBytes(a.size), class: 'num' },
      { label: 'SHA-256', value: (a) => h('code', { class: 'hash' }, a.sha256) },
    ], res.items, { empty: 'No artifacts yet.' }));
  }

  main.append(head, resultBox,
    h('section', { 'aria-labelledby': 'charts-title' }, h('h2', { id: 'charts-title' }, 'Metrics'), charts.controls(h), chartBox),
    h('section', { 'aria-labelledby': 'log-title' }, h('h2', { id: 'log-title' }, 'Log'), logBox),
    h('section', { 'aria-labelledby': 'art-title' }, h('h2', { id: 'art-title' }, 'Artifacts'), artBox),
    h('section', { 'aria-labelledby': 'spec-title' }, h('h2', { id: 'spec-title' }, 'Spec'), h('pre', { class: 'spec' }, JSON.stringify(job.spec, null, 2))));
  drawHead();
  drawResult();
  drawArtifacts();

  const m = await get(`/jobs/${id}/metrics`, { max_points: 1000 });
  for (const s of m.series) for (const p of s.points) charts.add(s.key, p.step, p.value, p.time);
  if (charts.series.size) charts.redraw();
  const seenMetricSteps = new Map([...charts.series].map(([k, pts]) => [k, pts.length ? pts[pts.length - 1].step : -Infinity]));

  const appendLog = (line) => {
    const atBottom = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 4;
    logBox.append(line + '\n');
    while (logBox.childNodes.length > 2000) logBox.firstChild.remove();
    if (atBottom) logBox.scrollTop = logBox.scrollHeight;
  };
  let pending = false;
  const stop = stream(`/jobs/${id}/events`, (ev) => {
    const e = ev.data;
    if (!e || typeof e !== 'object') return;
    if (e.type === 'metric') {
      if (e.step > (seenMetricSteps.get(e.key) ?? -Infinity)) {
        charts.add(e.key, e.step, e.value, e.time);
        seenMetricSteps.set(e.key, e.step);
        if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; charts.redraw(); }); }
      }
    } else if (e.type === 'log') {
      appendLog(`${e.time ? e.time.slice(11, 19) + ' ' : ''}${e.level || 'info'}: ${e.message}`);
    } else if (e.type === 'state' || e.type === 'progress' || e.type === 'result' || e.type === 'artifact') {
      get(`/jobs/${id}`).then((j) => {
        const finished = !job.result && j.result;
        job = j;
        drawHead();
        if (finished) drawResult();
        if (e.type === 'artifact' || finished) drawArtifacts();
      }).catch(showError);
    }
  }, showError);
  return () => { stop(); charts.destroy(); if (resultCleanup) resultCleanup(); };
}
