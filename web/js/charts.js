// Metric charts on Chart.js (served by lathe-server from the npm package as /vendor/chart.umd.js).
// Series are grouped by what they measure; each chart offers step/time x axis, EMA smoothing and
// a log scale, and accepts live points.

const GROUPS = [
  { id: 'loss', title: 'Loss', match: (k) => /(^|\.)loss$/.test(k) },
  { id: 'accuracy', title: 'Accuracy', match: (k) => /accuracy$/.test(k) },
  { id: 'lr', title: 'Learning rate', match: (k) => k === 'lr' || k.endsWith('.lr') },
  { id: 'throughput', title: 'Throughput (samples/s)', match: (k) => k.startsWith('throughput') || k === 'loader.samples_per_s' },
  { id: 'memory', title: 'Memory (bytes)', match: (k) => k.startsWith('memory.') },
  { id: 'actcomp-eb', title: 'Activation error bound per layer', match: (k) => k.startsWith('actcomp.eb.') },
  { id: 'actcomp-obs', title: 'Observed / predicted gradient error', match: (k) => k.startsWith('actcomp.obs_pred.') },
  { id: 'actcomp-bytes', title: 'Saved activation bytes', match: (k) => k.startsWith('actcomp.saved_bytes') },
  { id: 'search-cost', title: 'Search: expected cost', match: (k) => /^search\.(expected|flops|latency|params)/.test(k) },
  { id: 'loader-bytes', title: 'Loader: bytes from storage', match: (k) => k.startsWith('loader.storage') },
  { id: 'loader', title: 'Loader: hit rate and stall fraction', match: (k) => k === 'loader.hit_rate' || k === 'loader.stall_fraction' },
];
const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2', '#be185d', '#4d7c0f'];

export function groupOf(key) {
  const g = GROUPS.find((x) => x.match(key));
  return g ? g : { id: key.split('.')[0], title: key.split('.')[0] };
}

function ema(points, alpha) {
  if (!alpha) return points;
  let s = null;
  return points.map((p) => { s = s === null ? p.y : alpha * s + (1 - alpha) * p.y; return { x: p.x, y: s }; });
}

// series: Map key -> [{step, value, time}], label(key) for legends (compare view prefixes job ids)
export class MetricCharts {
  constructor(container, opts = {}) {
    this.container = container;
    this.series = new Map();
    this.charts = new Map();
    this.xAxis = 'step';
    this.smoothing = 0;
    this.logScale = false;
    this.label = opts.label || ((k) => k);
    this.groupKey = opts.groupKey || ((k) => k);
  }

  controls(h) {
    const id = Math.random().toString(36).slice(2, 7);
    return h('div', { class: 'toolbar chart-controls' },
      h('label', { for: `x-${id}` }, 'x axis ',
        h('select', { id: `x-${id}`, onchange: (e) => { this.xAxis = e.target.value; this.redraw(); } },
          h('option', { value: 'step' }, 'step'), h('option', { value: 'time' }, 'time'))),
      h('label', { for: `s-${id}` }, 'smoothing ',
        h('input', { id: `s-${id}`, type: 'range', min: '0', max: '0.99', step: '0.01', value: '0', oninput: (e) => { this.smoothing = Number(e.target.value); this.redraw(); } })),
      h('label', { for: `l-${id}` }, h('input', { id: `l-${id}`, type: 'checkbox', onchange: (e) => { this.logScale = e.target.checked; this.redraw(); } }), ' log scale'));
  }

  add(key, step, value, time) {
    if (!this.series.has(key)) this.series.set(key, []);
    this.series.get(key).push({ step, value, time: time ? new Date(time).getTime() : Date.now() });
  }

  points(key) {
    const pts = this.series.get(key).map((p) => ({ x: this.xAxis === 'step' ? p.step : (p.time - this.t0) / 1000, y: p.value }));
    return ema(pts, this.smoothing);
  }

  redraw() {
    const Chart = window.Chart;
    if (!Chart) throw new Error('the chart library did not load (/vendor/chart.umd.js)');
    this.t0 = Math.min(...[...this.series.values()].flat().map((p) => p.time));
    const groups = new Map();
    for (const key of this.series.keys()) {
      const g = groupOf(this.groupKey(key));
      if (!groups.has(g.id)) groups.set(g.id, { title: g.title, keys: [] });
      groups.get(g.id).keys.push(key);
    }
    for (const [gid, g] of groups) {
      const datasets = g.keys.map((k, i) => ({ label: this.label(k), data: this.points(k), borderColor: COLORS[i % COLORS.length], backgroundColor: COLORS[i % COLORS.length], pointRadius: 0, borderWidth: 1.5, tension: 0 }));
      let chart = this.charts.get(gid);
      if (!chart) {
        const canvas = document.createElement('canvas');
        canvas.setAttribute('role', 'img');
        canvas.setAttribute('aria-label', `${g.title} chart`);
        const fig = document.createElement('figure');
        fig.className = 'chart';
        fig.dataset.chart = gid;
        const cap = document.createElement('figcaption');
        cap.textContent = g.title;
        fig.append(cap, canvas);
        this.container.append(fig);
        chart = new Chart(canvas, {
          type: 'line',
          data: { datasets },
          options: { animation: false, parsing: false, normalized: true, maintainAspectRatio: false,
            scales: { x: { type: 'linear', title: { display: true, text: this.xAxis === 'step' ? 'step' : 'seconds' } }, y: { type: this.logScale ? 'logarithmic' : 'linear' } },
            plugins: { legend: { display: datasets.length > 1 } } },
        });
        this.charts.set(gid, chart);
      } else {
        chart.data.datasets = datasets;
        chart.options.scales.x.title.text = this.xAxis === 'step' ? 'step' : 'seconds';
        chart.options.scales.y.type = this.logScale ? 'logarithmic' : 'linear';
        chart.options.plugins.legend.display = datasets.length > 1;
        chart.update('none');
      }
      chart.canvas.parentNode.dataset.points = String(datasets.reduce((n, d) => n + d.data.length, 0));
    }
  }

  destroy() { for (const c of this.charts.values()) c.destroy(); this.charts.clear(); }
}

// A bar chart of one record of numbers (memory by category, per-layer bytes, ...).
export function barChart(container, title, labels, datasets, opts = {}) {
  const Chart = window.Chart;
  const fig = document.createElement('figure');
  fig.className = 'chart';
  const cap = document.createElement('figcaption');
  cap.textContent = title;
  const canvas = document.createElement('canvas');
  canvas.setAttribute('role', 'img');
  canvas.setAttribute('aria-label', title);
  fig.append(cap, canvas);
  container.append(fig);
  return new Chart(canvas, {
    type: 'bar',
    data: { labels, datasets: datasets.map((d, i) => ({ backgroundColor: COLORS[i % COLORS.length], ...d })) },
    options: { animation: false, maintainAspectRatio: false, indexAxis: opts.horizontal ? 'y' : 'x',
      scales: { [opts.horizontal ? 'x' : 'y']: { type: opts.log ? 'logarithmic' : 'linear' } } },
  });
}
