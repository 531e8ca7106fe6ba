// Compare: pick jobs, overlay their metric curves, and list where their specs differ.
import { get } from '../api.js';
import { h, clear, table, stateBadge, showError } from '../dom.js';
import { MetricCharts } from '../charts.js';

function flatten(obj, prefix = '', out = {}) {
  if (obj && typeof obj === 'object' && !Array.isArray(obj)) {
    for (const [k, v] of Object.entries(obj)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  } else {
    out[prefix] = JSON.stringify(obj);
  }
  return out;
}

export async function render(main, _m, params) {
  const ids = (params.get('ids') || '').split(',').filter(Boolean);
  const recent = (await get('/jobs', { limit: 50 })).items;
  const picker = h('fieldset', {}, h('legend', {}, 'Jobs to compare'),
    h('div', { class: 'choices' }, recent.map((j) => h('label', {},
      h('input', { type: 'checkbox', value: j.id, checked: ids.includes(j.id) }), ` ${j.id} (${j.kind}, ${j.state})`))),
    h('button', { type: 'button', onclick: () => {
      const chosen = [...picker.querySelectorAll('input:checked')].map((i) => i.value);
      location.hash = '#/compare?ids=' + chosen.join(',');
    } }, 'Compare selected'));
  const out = h('div', {});
  main.append(h('h1', {}, 'Compare jobs'), picker, out);
  if (ids.length < 1) { out.append(h('p', { class: 'muted' }, 'Select two or more jobs.')); return null; }

  let jobs;
  try { jobs = await Promise.all(ids.map((id) => get(`/jobs/${id}`))); } catch (e) { showError(e); return null; }
  const flat = jobs.map((j) => flatten({ kind: j.kind, spec: j.spec }));
  const keys = [...new Set(flat.flatMap((f) => Object.keys(f)))].sort();
  const differing = keys.filter((k) => new Set(flat.map((f) => f[k])).size > 1);
  const chartBox = h('div', { class: 'charts' });
  const charts = new MetricCharts(chartBox, { label: (k) => k.replace('\u0000', ' · '), groupKey: (k) => k.split('\u0000')[1] });
  clear(out).append(
    table([{ label: 'Job', value: (j) => h('a', { href: `#/jobs/${j.id}` }, j.id) }, { label: 'State', value: (j) => stateBadge(j.state) },
      { label: 'Final val accuracy', value: (j) => (j.result && j.result.final && j.result.final.val_accuracy !== undefined ? `${(j.result.final.val_accuracy * 100).toFixed(2)}%` : '–') }], jobs, { caption: 'Jobs' }),
    table([{ label: 'Spec field', value: (k) => k }, ...jobs.map((j, i) => ({ label: j.id, value: (k) => flat[i][k] ?? '–' }))], differing,
      { caption: 'Spec differences', empty: 'The specs are identical.', class: 'grid diff' }),
    h('h2', {}, 'Curves'), charts.controls(h), chartBox);
  for (const j of jobs) {
    const m = await get(`/jobs/${j.id}/metrics`, { max_points: 1000 });
    for (const s of m.series) for (const p of s.points) charts.add(`${j.id}\u0000${s.key}`, p.step, p.value, p.time);
  }
  if (charts.series.size) charts.redraw();
  return () => charts.destroy();
}
