// Result views per job kind. Each returns a cleanup function for the charts it made.
import { h, table, fmtBytes, fmtNum } from '../dom.js';
import { barChart } from '../charts.js';
import { renderLoader } from './result_loader.js';
import { renderCompress } from './result_compress.js';
import { renderActcomp } from './result_actcomp.js';

export function renderResult(box, job) {
  const r = job.result;
  const charts = [];
  if (job.kind === 'inspect') renderInspect(box, r);
  else if (job.kind === 'train') renderTrain(box, r, charts);
  else if (job.kind === 'compress') renderCompress(box, r, charts);
  else box.append(h('pre', { class: 'spec' }, JSON.stringify(r, null, 2)));
  return () => charts.forEach((c) => c.destroy());
}

// The inspect summary of an ONNX model (layers) or an HDF5 file (datasets); also used by the
// model and dataset detail pages.
export function renderInspect(box, s) {
  if (!s) return;
  if (Array.isArray(s.layers)) {
    box.append(h('dl', { class: 'facts' },
      h('dt', {}, 'Parameters'), h('dd', {}, fmtNum(s.params, 0)),
      h('dt', {}, 'MACs per sample'), h('dd', {}, fmtNum(s.macs, 0)),
      s.opset ? [h('dt', {}, 'Opset'), h('dd', {}, String(s.opset))] : null,
      Array.isArray(s.inputs) ? [h('dt', {}, 'Inputs'), h('dd', {}, s.inputs.map((i) => `${i.name} ${JSON.stringify(i.shape)}`).join(', '))] : null,
      Array.isArray(s.outputs) ? [h('dt', {}, 'Outputs'), h('dd', {}, s.outputs.map((i) => `${i.name} ${JSON.stringify(i.shape)}`).join(', '))] : null));
    box.append(table([
      { label: 'Layer', value: (l) => l.name },
      { label: 'Op', value: (l) => l.op },
      { label: 'Output shape', value: (l) => JSON.stringify(l.output_shape || l.shape) },
      { label: 'Parameters', value: (l) => fmtNum(l.params, 0), class: 'num' },
      { label: 'MACs', value: (l) => fmtNum(l.macs, 0), class: 'num' },
    ], s.layers, { caption: 'Layers', class: 'grid layers' }));
  } else if (Array.isArray(s.datasets)) {
    box.append(table([
      { label: 'Dataset', value: (d) => d.path },
      { label: 'Type', value: (d) => d.dtype },
      { label: 'Shape', value: (d) => JSON.stringify(d.shape) },
      { label: 'Chunks', value: (d) => d.chunks ? JSON.stringify(d.chunks) : 'contiguous' },
      { label: 'Compression', value: (d) => (d.filters && d.filters.length ? d.filters.join(', ') : 'none') },
      { label: 'Min', value: (d) => fmtNum(d.min), class: 'num' },
      { label: 'Max', value: (d) => fmtNum(d.max), class: 'num' },
      { label: 'Mean', value: (d) => fmtNum(d.mean), class: 'num' },
    ], s.datasets, { caption: 'Datasets', class: 'grid datasets' }));
  } else {
    box.append(h('pre', { class: 'spec' }, JSON.stringify(s, null, 2)));
  }
}

function renderTrain(box, r, charts) {
  const f = r.final || {};
  box.append(h('dl', { class: 'facts' },
    h('dt', {}, 'Epochs'), h('dd', {}, String(r.epochs)),
    h('dt', {}, 'Train loss'), h('dd', {}, fmtNum(f.train_loss)),
    h('dt', {}, 'Validation loss'), h('dd', {}, fmtNum(f.val_loss)),
    h('dt', {}, 'Validation accuracy'), h('dd', {}, f.val_accuracy === undefined ? '–' : `${(f.val_accuracy * 100).toFixed(2)}%`),
    h('dt', {}, 'Throughput'), h('dd', {}, `${fmtNum(r.throughput_samples_per_s, 1)} samples/s`)));
  const mem = r.memory_peak_bytes || {};
  const keys = Object.keys(mem);
  if (keys.length) {
    box.append(table([
      { label: 'Memory category', value: (k) => k },
      { label: 'Peak', value: (k) => fmtBytes(mem[k]), class: 'num' },
    ], keys, { caption: 'Peak memory by category' }));
    charts.push(barChart(box, 'Peak memory by category (bytes)', keys, [{ label: 'peak bytes', data: keys.map((k) => mem[k]) }], { horizontal: true }));
  }
  if (r.loader) renderLoader(box, r, charts);
  if (r.activation_compression) renderActcomp(box, r, charts);
}
