// Result view of activation compression (specs/actcomp.md), part of a train job's result: saved
// bytes per layer before and after (bar chart and table), the error bound of every compressed
// layer over the run (from the result's eb history, so it needs no metrics request), and the
// accuracy against the uncompressed run that activation_compression.baseline_job names.
import { get } from '../api.js';
import { h, table, fmtBytes, fmtNum, showError } from '../dom.js';
import { barChart, MetricCharts } from '../charts.js';

const KIND_LABEL = {
  weight_input: 'conv/linear input (codec)',
  bn_input: 'batch-norm input',
  relu_mask: 'ReLU mask (1 bit)',
  pool_argmax: 'max-pool argmax (2 bits)',
  exact: 'exact copy',
};

const pct = (x) => (typeof x === 'number' ? `${(x * 100).toFixed(2)}%` : '–');

// box: the result section; result: the train job's result; charts: the list of charts (anything
// with destroy()) the caller destroys when the view goes away.
export function renderActcomp(box, result, charts) {
  const ac = result.activation_compression;
  if (!ac) return;
  const layers = Array.isArray(ac.layers) ? ac.layers : [];
  const sec = h('section', { class: 'actcomp', 'aria-labelledby': 'actcomp-title' },
    h('h3', { id: 'actcomp-title' }, 'Activation compression'));
  box.append(sec);
  sec.append(h('dl', { class: 'facts' },
    h('dt', {}, 'Mode'), h('dd', {}, ac.mode || '–'),
    h('dt', {}, 'Saved activations, last step'), h('dd', {}, `${fmtBytes(ac.saved_bytes_before)} → ${fmtBytes(ac.saved_bytes_after)} (${fmtNum(ac.ratio, 2)}×)`),
    h('dt', {}, 'Peak within a step'), h('dd', {}, `${fmtBytes(ac.peak_saved_bytes_before)} → ${fmtBytes(ac.peak_saved_bytes_after)} (${fmtNum(ac.peak_ratio, 2)}×)`)),
    h('p', { class: 'muted' }, 'Before: every layer\'s saved tensor as exact storage (a ReLU output kept by the ReLU and the next layer counts for both). '
      + (ac.mode === 'adaptive' ? 'Peaks count from the end of the first window, which runs exact. ' : '')
      + 'The whole run\'s allocator peak is activations_saved above.'));

  sec.append(table([
    { label: 'Layer', value: (l) => l.name },
    { label: 'Op', value: (l) => l.op },
    { label: 'Stored as', value: (l) => KIND_LABEL[l.kind] || l.kind },
    { label: 'Before', value: (l) => fmtBytes(l.bytes_before), class: 'num' },
    { label: 'After', value: (l) => fmtBytes(l.bytes_after), class: 'num' },
    { label: 'Ratio', value: (l) => (l.bytes_after ? `${fmtNum(l.bytes_before / l.bytes_after, 2)}×` : '–'), class: 'num' },
    { label: 'Error bound', value: (l) => (l.eb ? fmtNum(l.eb, 4) : 'exact'), class: 'num' },
    { label: 'Observed / predicted dW error', value: (l) => (l.grad_error ? `${fmtNum(l.grad_error.mean_ratio, 2)} (${l.grad_error.samples} samples)` : '–'), class: 'num' },
  ], layers, { caption: 'Saved activations per layer, last step', class: 'grid actcomp-layers', empty: 'No saved tensors reported.' }));

  if (layers.length) {
    const names = layers.map((l) => l.name);
    charts.push(barChart(sec, 'Saved bytes per layer, before and after compression', names, [
      { label: 'before', data: layers.map((l) => l.bytes_before) },
      { label: 'after', data: layers.map((l) => l.bytes_after) },
    ], { horizontal: true, log: true }));
  }

  // Only layers whose bound moved or that have one: exact layers would be flat lines at zero.
  const withHistory = layers.filter((l) => Array.isArray(l.eb_history) && l.eb_history.some((p) => p.eb > 0));
  if (withHistory.length) {
    const ebBox = h('div', { class: 'charts', 'data-chart': 'actcomp-eb' });
    const eb = new MetricCharts(ebBox, { groupKey: () => 'actcomp.eb' });
    sec.append(h('h4', {}, 'Error bound per layer over steps'), eb.controls(h), ebBox);
    for (const l of withHistory) for (const p of l.eb_history) eb.add(l.name, p.step, p.eb);
    eb.redraw();
    // MetricCharts titles a group by its key prefix; this one chart deserves a plain caption.
    ebBox.querySelector('figcaption').textContent = 'Error bound (absolute) per layer';
    charts.push(eb);
  }

  if (ac.baseline_job) {
    const cmp = h('div', { class: 'actcomp-baseline' }, h('p', { class: 'muted' }, `Loading baseline ${ac.baseline_job}…`));
    sec.append(h('h4', {}, 'Accuracy against the uncompressed run'), cmp);
    get(`/jobs/${encodeURIComponent(ac.baseline_job)}`).then((base) => {
      cmp.replaceChildren(baselineTable(result, ac.baseline_job, base));
    }).catch((e) => {
      cmp.replaceChildren(h('p', { class: 'error' }, `Baseline ${ac.baseline_job}: ${e && e.message ? e.message : e}`));
      showError(e);
    });
  }
}

function baselineTable(result, id, base) {
  const b = (base && base.result) || {};
  const bf = b.final || {}, f = result.final || {};
  const bsaved = b.memory_peak_bytes ? b.memory_peak_bytes.activations_saved : undefined;
  const saved = result.memory_peak_bytes ? result.memory_peak_bytes.activations_saved : undefined;
  const rows = [
    { what: 'Validation accuracy', base: pct(bf.val_accuracy), here: pct(f.val_accuracy),
      diff: typeof bf.val_accuracy === 'number' && typeof f.val_accuracy === 'number' ? `${((f.val_accuracy - bf.val_accuracy) * 100).toFixed(2)} pp` : '–' },
    { what: 'Validation loss', base: fmtNum(bf.val_loss, 4), here: fmtNum(f.val_loss, 4),
      diff: typeof bf.val_loss === 'number' && typeof f.val_loss === 'number' ? fmtNum(f.val_loss - bf.val_loss, 4) : '–' },
    { what: 'Peak saved-activation memory', base: fmtBytes(bsaved), here: fmtBytes(saved),
      diff: bsaved && saved ? `${fmtNum(bsaved / saved, 2)}× less` : '–' },
    { what: 'Throughput (samples/s)', base: fmtNum(b.throughput_samples_per_s, 1), here: fmtNum(result.throughput_samples_per_s, 1),
      diff: b.throughput_samples_per_s && result.throughput_samples_per_s ? `${((result.throughput_samples_per_s / b.throughput_samples_per_s - 1) * 100).toFixed(1)}%` : '–' },
  ];
  return h('div', {},
    base && base.kind !== 'train' ? h('p', { class: 'error' }, `${id} is a ${base.kind} job, not a train job`) : null,
    base && base.state !== 'succeeded' ? h('p', { class: 'muted' }, `${id} is ${base.state}: no final figures yet`) : null,
    table([
      { label: '', value: (r) => r.what },
      { label: h('a', { href: `#/jobs/${id}` }, `uncompressed (${id})`), value: (r) => r.base, class: 'num' },
      { label: 'this run', value: (r) => r.here, class: 'num' },
      { label: 'difference', value: (r) => r.diff, class: 'num' },
    ], rows, { class: 'grid actcomp-baseline' }));
}
