// The activation-compression result view (web/js/views/result_actcomp.js) in Debian's Chromium
// against the real server and worker: an exact train job, then an adaptive one naming it as
// baseline_job; the adaptive job's page shows the per-layer bytes table and bar chart, the
// eb-over-steps chart, and the accuracy table against the baseline, with no console error.
// Usage: node tests/actcomp/ui_actcomp.mjs BUILD_BIN_DIR   (exit 77: no chromium or data)
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Cluster } from '../lib/cluster.mjs';

const bin = resolve(process.argv[2] || 'build/bin');
const fmnist = resolve(bin, '../data/fashion-mnist.h5');
const shots = resolve(bin, '../test-artifacts/browser');
const CHROMIUM = '/usr/bin/chromium';
let chromium;
try { ({ chromium } = await import('playwright-core')); } catch { console.log('skipped: playwright-core is not installed (run scripts/setup.sh)'); process.exit(77); }
if (!existsSync(CHROMIUM)) { console.log('skipped: /usr/bin/chromium is not installed'); process.exit(77); }
if (!existsSync(fmnist)) { console.log(`skipped: ${fmnist} missing (tests/train/fmnist.sh makes it)`); process.exit(77); }
mkdirSync(shots, { recursive: true });

function assert(cond, msg) { if (!cond) throw new Error(msg); }
const cluster = new Cluster({ bin, port: 19031 + (process.pid % 50) });
let browser, ok = false;
const problems = [];
try {
  await cluster.startServer();
  const admin = cluster.token('admin', 'actcomp-ui');
  cluster.startWorker(cluster.token('worker'), 'actcomp-worker');
  const ds = await cluster.api(admin, 'POST', '/datasets?name=fashion-mnist.h5', readFileSync(fmnist), { 'Content-Type': 'application/octet-stream' });
  assert(ds.status === 201, 'dataset upload: ' + JSON.stringify(ds.body));
  const spec = { model: { zoo: 'smallcnn' }, dataset: ds.body.id, epochs: 1, batch_size: 64, max_steps: 30, lr: 0.05, threads: 2, splits: { val: 'test' } };
  const base = await cluster.api(admin, 'POST', '/jobs', { kind: 'train', spec });
  assert(base.status === 201, 'submit: ' + JSON.stringify(base.body));
  await cluster.waitJob(admin, base.body.id, ['succeeded'], 300000);
  const ac = await cluster.api(admin, 'POST', '/jobs', { kind: 'train', spec: { ...spec, activation_compression: { mode: 'adaptive', window: 5, sample_every: 7, bn: { mode: 'lossy' }, baseline_job: base.body.id } } });
  assert(ac.status === 201, 'submit: ' + JSON.stringify(ac.body));
  const job = await cluster.waitJob(admin, ac.body.id, ['succeeded', 'failed', 'dead'], 300000);
  assert(job.state === 'succeeded', 'adaptive job: ' + JSON.stringify(job.error));
  const layers = job.result.activation_compression.layers;

  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'] });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console error: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('response', (r) => { if (r.status() >= 400) problems.push(`HTTP ${r.status()} for ${r.url()}`); });
  await page.goto(cluster.url + '/');
  await page.getByLabel('Token').fill(admin);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Jobs' }).waitFor();
  await page.goto(`${cluster.url}/#/jobs/${ac.body.id}`);
  await page.getByRole('heading', { name: 'Activation compression' }).waitFor({ timeout: 30000 });
  const rows = await page.locator('table.actcomp-layers tbody tr').count();
  assert(rows === layers.length, `layer table has ${rows} rows, the result ${layers.length} layers`);
  console.log(`ok   layer table: ${rows} rows`);
  await page.getByRole('img', { name: 'Saved bytes per layer, before and after compression' }).waitFor();
  console.log('ok   saved-bytes bar chart');
  const points = Number(await page.locator('[data-chart="actcomp-eb"] figure.chart').getAttribute('data-points'));
  const expect = layers.filter((l) => l.eb_history.some((p) => p.eb > 0)).reduce((n, l) => n + l.eb_history.length, 0);
  assert(points === expect && points > 0, `eb chart has ${points} points, the result's histories ${expect}`);
  console.log(`ok   eb-over-steps chart: ${points} points`);
  await page.locator('table.actcomp-baseline').getByText('Validation accuracy').waitFor({ timeout: 15000 });
  const cells = await page.locator('table.actcomp-baseline tbody tr').first().locator('td').allInnerTexts();
  assert(/%$/.test(cells[1]) && /%$/.test(cells[2]) && / pp$/.test(cells[3]), 'accuracy row: ' + cells.join(' | '));
  console.log(`ok   accuracy against the baseline: ${cells.join(' | ')}`);
  await page.screenshot({ path: join(shots, 'actcomp-result.png'), fullPage: true });
  assert(problems.length === 0, problems.join('\n'));
  console.log('ok   no console errors and no failed requests');
  ok = true;
} catch (e) {
  console.log(`FAIL ${e.stack || e}`);
  for (const p of cluster.procs) if (p.exitCode !== null) console.log(`process exited ${p.exitCode}: ${p.output.slice(-2000)}`);
} finally {
  if (browser) await browser.close();
  await cluster.stop();
}
process.exit(ok ? 0 : 1);
