// Result view of a `compress` job: headline figures before and after, the per-layer rank table
// and chart, per-layer latency predicted against measured, the baselines beside the search at
// the same target, and the search trajectory (expected and argmax cost per step).
import { h, table, fmtNum } from '../dom.js';
import { barChart, MetricCharts } from '../charts.js';

const pct = (v) => (typeof v === 'number' ? `${(v * 100).toFixed(2)}%` : '–');
const ms = (v) => (typeof v === 'number' ? `${fmtNum(v)} ms` : '–');

function fineTuning(f) {
  if (!f || f.steps == null) return 'none';
  const d = f.distill && typeof f.distill === 'object'
    ? `distilled from the original (alpha ${f.distill.alpha}, T ${f.distill.temperature})` : 'cross-entropy only';
  return `${f.steps} steps (${fmtNum(f.epochs)} epochs) of batch ${f.batch_size}, ${f.schedule} from lr ${f.lr}, ${d}, from the ${f.init || 'searched'} weights`;
}

function timing(c) {
  if (!c) return '–';
  const others = typeof c.other_busy_cores === 'number' ? `${fmtNum(c.other_busy_cores)} cores busy with other work` : 'other work unknown';
  return `${c.cores} cores, ${others}, OMP_WAIT_POLICY ${c.omp_wait_policy || '–'}`;
}

// The latency model behind the prediction: affine in the searched layers' latencies, through the
// dense model and a reference with every searched layer at its smallest rank.
function predictionModel(r) {
  if (typeof r.latency_ms_reference !== 'number') return '';
  return `; from the reference model (every searched layer at its smallest rank, ${ms(r.latency_ms_reference)}) plus ${fmtNum(r.latency_prediction_slope)} × the chosen layers' latencies above it`;
}

export function renderCompress(box, r, charts) {
  if (!r) return;
  const tgt = r.target || {};
  const table_ = r.latency_table || {};
  if (r.baselines_only) box.append(h('p', {}, 'Baselines only: no search was run; the table compares them with the original model.'));
  box.append(h('dl', { class: 'facts' },
    h('dt', {}, 'Device'), h('dd', {}, r.device || '–'),
    h('dt', {}, 'Latency table'), h('dd', {}, `${table_.device || '–'}, batch ${table_.batch ?? '–'}, rank step ${table_.rank_step ?? '–'}${table_.estimated ? ' (roofline ESTIMATE)' : ''}`),
    h('dt', {}, 'Target'), h('dd', {}, `${tgt.kind || '–'} ≤ ${fmtNum(tgt.value)} (before ${fmtNum(tgt.before)}, achieved ${fmtNum(tgt.achieved)}${tgt.met ? ', met' : ', NOT met'})`),
    h('dt', {}, 'FLOPs (MACs)'), h('dd', {}, `${fmtNum(r.flops_before, 0)} → ${fmtNum(r.flops_after, 0)} (−${pct(r.flops_reduction)})`),
    h('dt', {}, 'Parameters'), h('dd', {}, `${fmtNum(r.params_before, 0)} → ${fmtNum(r.params_after, 0)}`),
    h('dt', {}, 'Accuracy'), h('dd', {}, `${pct(r.accuracy_before)} → ${pct(r.accuracy_after)}${r.accuracy_before_finetune == null ? '' : ` (${pct(r.accuracy_before_finetune)} before fine-tuning)`}`),
    h('dt', {}, 'Fine-tuning'), h('dd', {}, fineTuning(r.finetune)),
    h('dt', {}, `Latency, batch ${r.latency_batch ?? '–'}`), h('dd', {}, `${ms(r.latency_ms_before)} → ${ms(r.latency_ms_after)} (×${fmtNum(r.speedup_measured)})`),
    h('dt', {}, 'Latency, batch 1'), h('dd', {}, `${ms(r.latency_ms_before_batch1)} → ${ms(r.latency_ms_after_batch1)} (×${fmtNum(r.speedup_measured_batch1)})`),
    h('dt', {}, 'Timing conditions'), h('dd', {}, timing(r.latency_conditions)),
    h('dt', {}, 'Predicted latency'), h('dd', {}, r.latency_ms_predicted == null ? (r.latency_prediction_note || 'not comparable (table from another device or an estimate)') : `${ms(r.latency_ms_predicted)} (error ${pct(r.latency_prediction_error)})${predictionModel(r)}`)));
  // Other work on the worker while it timed: the latencies and the speedup carry it.
  if (r.latency_note) box.append(h('p', { class: 'error latency-note' }, `Warning: ${r.latency_note}.`));

  charts.push(barChart(box, 'Accuracy before and after', ['accuracy'],
    [{ label: 'before', data: [r.accuracy_before] }, { label: 'after', data: [r.accuracy_after] }]));
  charts.push(barChart(box, 'FLOPs (MACs per sample) before and after', ['MACs'],
    [{ label: 'before', data: [r.flops_before] }, { label: 'after', data: [r.flops_after] }]));

  const layers = Array.isArray(r.layers) ? r.layers : [];
  box.append(table([
    { label: 'Layer', value: (l) => l.name },
    { label: 'Kind', value: (l) => l.kind || 'conv' },
    { label: 'Weight', value: (l) => JSON.stringify(l.shape) },
    { label: 'Input', value: (l) => JSON.stringify(l.input) },
    { label: 'Candidates', value: (l) => (l.candidate_ranks || []).join(' ') },
    { label: 'Rank', value: (l) => (l.chosen_rank ? String(l.chosen_rank) : 'dense'), class: 'num' },
    { label: 'Params', value: (l) => `${fmtNum(l.params_before, 0)} → ${fmtNum(l.params_after, 0)}`, class: 'num' },
    { label: 'MACs', value: (l) => `${fmtNum(l.flops_before, 0)} → ${fmtNum(l.flops_after, 0)}`, class: 'num' },
    { label: 'Latency predicted', value: (l) => ms(l.latency_ms_predicted), class: 'num' },
    { label: 'Latency measured', value: (l) => ms(l.latency_ms_measured), class: 'num' },
  ], layers, { caption: 'Layers', class: 'grid layers' }));
  const names = layers.map((l, i) => `${i + 1}`);
  if (layers.length) {
    charts.push(barChart(box, 'Chosen rank per layer (largest candidate for reference)', names, [
      { label: 'chosen rank', data: layers.map((l) => l.chosen_rank) },
      { label: 'largest candidate', data: layers.map((l) => (l.candidate_ranks || []).slice(-1)[0] || 0) }]));
    charts.push(barChart(box, 'Per-layer latency (ms): predicted by the table vs measured', names, [
      { label: 'dense', data: layers.map((l) => l.latency_ms_dense) },
      { label: 'predicted', data: layers.map((l) => l.latency_ms_predicted) },
      { label: 'measured', data: layers.map((l) => l.latency_ms_measured) }]));
  }

  const bl = r.baselines || {};
  const rows = (r.baselines_only ? [{ name: 'original', flops: r.flops_before, params: r.params_before, accuracy: r.accuracy_before, latency_ms: r.latency_ms_before }]
    : [{ name: 'searched (HALOC)', flops: r.flops_after, params: r.params_after, accuracy: r.accuracy_after, latency_ms: r.latency_ms_after }])
    .concat(Object.keys(bl).map((k) => ({ name: k, ...bl[k] })));
  box.append(table([
    { label: 'Method', value: (b) => b.name },
    { label: 'MACs', value: (b) => fmtNum(b.flops, 0), class: 'num' },
    { label: 'Params', value: (b) => fmtNum(b.params, 0), class: 'num' },
    { label: 'Accuracy', value: (b) => pct(b.accuracy), class: 'num' },
    { label: `Latency, batch ${r.latency_batch ?? '–'}`, value: (b) => ms(b.latency_ms), class: 'num' },
  ], rows, { caption: 'At the same target: search against the baselines' }));
  if (rows.length > 1) {
    charts.push(barChart(box, 'Accuracy at the same target', rows.map((b) => b.name),
      [{ label: 'accuracy', data: rows.map((b) => b.accuracy) }]));
  }

  const t = r.search_trajectory;
  if (t && Array.isArray(t.step) && t.step.length) {
    const holder = h('div', { class: 'charts' });
    box.append(holder);
    const mc = new MetricCharts(holder, { groupKey: () => 'search' });
    t.step.forEach((s, i) => {
      mc.add(`expected ${tgt.kind || 'cost'}`, s, t.expected_cost[i]);
      mc.add(`argmax ${tgt.kind || 'cost'}`, s, t.argmax_cost[i]);
      mc.add('target', s, tgt.value);
    });
    mc.redraw();
    charts.push(mc);
  }
}
