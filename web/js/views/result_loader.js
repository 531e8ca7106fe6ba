// The loader part of a train result (result.loader, issue 7): the run's figures over all ranks,
// then per epoch the throughput, buffer hit rate and bytes read from storage, and the local batch
// each rank computed (the plan puts buffered samples on the rank that holds them, so local
// batches differ; the gradient is still the global batch's).
import { h, table, fmtBytes, fmtNum } from '../dom.js';
import { barChart } from '../charts.js';

const pct = (x) => (typeof x === 'number' ? `${(x * 100).toFixed(1)}%` : '–');

export function renderLoader(box, result, charts) {
  const l = result && result.loader;
  if (!l) return;
  box.append(h('h3', {}, 'Data loading'));
  box.append(h('dl', { class: 'facts loader' },
    h('dt', {}, 'Policy'), h('dd', {}, `${l.policy}, ${l.balance} balance, buffer ${pct(l.buffer_fraction)} of the data`),
    h('dt', {}, 'Ranks'), h('dd', {}, String(l.ranks)),
    h('dt', {}, 'Hit rate'), h('dd', {}, pct(l.hit_rate)),
    h('dt', {}, 'Storage read'), h('dd', {}, `${fmtBytes(l.storage_bytes)} in ${fmtNum(l.storage_requests, 0)} requests`),
    h('dt', {}, 'Stall'), h('dd', {}, `${pct(l.stall_fraction)} of the time waiting for data`),
    h('dt', {}, 'Batch imbalance'), h('dd', {}, `${fmtNum(l.batch_imbalance)} (largest local batch / mean, averaged over steps)`)));
  const eps = Array.isArray(l.epochs) ? l.epochs : [];
  if (!eps.length) return;
  box.append(table([
    { label: 'Epoch', value: (e) => String(e.epoch), class: 'num' },
    { label: 'Samples/s', value: (e) => fmtNum(e.samples_per_s, 1), class: 'num' },
    { label: 'Hit rate', value: (e) => pct(e.hit_rate), class: 'num' },
    { label: 'Storage bytes', value: (e) => fmtBytes(e.storage_bytes), class: 'num' },
    { label: 'Requests', value: (e) => fmtNum(e.storage_requests, 0), class: 'num' },
    { label: 'Stall', value: (e) => pct(e.stall_fraction), class: 'num' },
  ], eps, { caption: 'Loading per epoch', class: 'grid loader-epochs' }));
  const labels = eps.map((e) => `epoch ${e.epoch}`);
  charts.push(barChart(box, 'Throughput per epoch (samples/s)', labels, [{ label: 'samples/s', data: eps.map((e) => e.samples_per_s) }]));
  charts.push(barChart(box, 'Buffer hit rate per epoch', labels, [{ label: 'hit rate', data: eps.map((e) => e.hit_rate) }]));
  charts.push(barChart(box, 'Bytes read from storage per epoch', labels, [{ label: 'bytes', data: eps.map((e) => e.storage_bytes) }]));
  // per-rank local batches: one series per epoch, ranks along the axis
  const ranks = Math.max(...eps.map((e) => (e.rank_batch_mean || []).length));
  if (ranks > 0) {
    const rankLabels = Array.from({ length: ranks }, (_, r) => `rank ${r}`);
    box.append(table([
      { label: 'Rank', value: (r) => String(r) },
      ...eps.map((e) => ({ label: `epoch ${e.epoch} mean / max`, value: (r) => `${fmtNum(e.rank_batch_mean[r], 2)} / ${fmtNum(e.rank_batch_max[r], 0)}`, class: 'num' })),
    ], rankLabels.map((_, r) => r), { caption: 'Local batch size per rank', class: 'grid loader-ranks' }));
    charts.push(barChart(box, 'Mean local batch per rank', rankLabels, eps.map((e) => ({ label: `epoch ${e.epoch}`, data: e.rank_batch_mean }))));
  }
}
