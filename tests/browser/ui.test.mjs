// End-to-end UI test: Debian's Chromium, driven by playwright-core, against the real lathe-server
// and a real lathe-worker started here. Fails on any console error or failed request.
// Usage: node tests/browser/ui.test.mjs BUILD_BIN_DIR  (exit 77 = skipped: no chromium or data)
import { chromium } from 'playwright-core';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Cluster } from '../lib/cluster.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '../..');
const bin = resolve(process.argv[2] || join(root, 'build/bin'));
const shared = resolve(root, '../shared/data');
const fmnist = resolve(bin, '../data/fashion-mnist.h5');
const shots = resolve(bin, '../test-artifacts/browser');
const CHROMIUM = '/usr/bin/chromium';

if (!existsSync(CHROMIUM)) { console.log('skipped: /usr/bin/chromium is not installed (apt-get install chromium)'); process.exit(77); }
if (!existsSync(join(shared, 'models/resnet20-cifar10.onnx'))) { console.log(`skipped: ${shared} not found`); process.exit(77); }
if (!existsSync(fmnist)) { console.log(`skipped: ${fmnist} missing (scripts/setup.sh generates it)`); process.exit(77); }
mkdirSync(shots, { recursive: true });

let passed = 0, failed = 0;
async function step(name, fn) {
  try { await fn(); passed++; console.log(`ok   ${name}`); } catch (e) { failed++; console.log(`FAIL ${name}\n${e.stack || e}`); throw e; }
}
function assert(cond, msg) { if (!cond) throw new Error(msg); }

const cluster = new Cluster({ bin, port: 18931 + (process.pid % 50) });
let browser;
const problems = [];
try {
  await cluster.startServer();
  const admin = cluster.token('admin', 'browser-test');
  cluster.startWorker(cluster.token('worker'), 'browser-worker');
  const ds = await cluster.api(admin, 'POST', '/datasets?name=fashion-mnist.h5', readFileSync(fmnist), { 'Content-Type': 'application/octet-stream' });
  assert(ds.status === 201, 'dataset upload: ' + JSON.stringify(ds.body));
  const trainSpec = (steps) => ({ model: { zoo: 'smallcnn' }, dataset: ds.body.id, epochs: 1, batch_size: 64, max_steps: steps, lr: 0.05 });

  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'] });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console error: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('requestfailed', (r) => { if (!/aborted|ERR_ABORTED/.test(r.failure()?.errorText || '')) problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`); });
  page.on('response', (r) => { if (r.status() >= 400) problems.push(`HTTP ${r.status()} for ${r.url()}`); });

  await step('sign in with a token', async () => {
    await page.goto(cluster.url + '/');
    await page.getByLabel('Token').fill(admin);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Jobs' }).waitFor();
  });

  await step('upload the shared ResNet-20 ONNX and see its layer table', async () => {
    await page.getByRole('link', { name: 'Models' }).click();
    await page.locator('#file-input').setInputFiles(join(shared, 'models/resnet20-cifar10.onnx'));
    const hash = page.locator('code[data-sha256]');
    await hash.waitFor({ timeout: 30000 });
    assert(/^[0-9a-f]{64}$/.test(await hash.textContent()), 'SHA-256 shown after upload');
    await page.getByRole('link', { name: 'resnet20-cifar10.onnx' }).first().click();
    const rows = page.locator('table.layers tbody tr');
    await rows.first().waitFor();
    const n = await rows.count();
    assert(n >= 20, `layer table has ${n} rows, expected the ResNet-20 layers`);
    await page.screenshot({ path: join(shots, 'model-detail.png'), fullPage: true });
  });

  let jobA;
  await step('submit a train job from the form and watch its chart update live', async () => {
    await page.goto(cluster.url + '/#/new?kind=train');
    await page.locator('select#kind').selectOption('train');
    await page.locator('[data-path="$.spec.model.zoo"]').selectOption(JSON.stringify('smallcnn'));
    await page.locator('[data-path="$.spec.dataset"]').selectOption(ds.body.id);
    for (const [k, v] of [['epochs', 1], ['batch_size', 64], ['max_steps', 150], ['lr', 0.05]]) {
      await page.locator(`[data-path="$.spec.${k}"]`).fill(String(v));
    }
    await page.getByRole('button', { name: 'Submit job' }).click();
    await page.waitForURL(/#\/jobs\/job_/);
    jobA = page.url().split('/').pop();
    const fig = page.locator('figure[data-chart="loss"]');
    await fig.waitFor({ timeout: 60000 });
    const first = Number(await fig.getAttribute('data-points'));
    await page.waitForFunction((f) => Number(document.querySelector('figure[data-chart="loss"]').dataset.points) > f, first, { timeout: 60000 });
    await page.screenshot({ path: join(shots, 'job-live.png'), fullPage: true });
  });

  await step('open the finished job result', async () => {
    await cluster.waitJob(admin, jobA, ['succeeded'], 240000);
    await page.reload();
    await page.getByRole('heading', { name: 'Result' }).waitFor({ timeout: 30000 });
    await page.getByText('Validation accuracy').waitFor();
    const text = await page.locator('main').innerText();
    assert(!/(^|\n)\s*(null|undefined|NaN)\s*(\n|$)/.test(text), 'no stray null/undefined/NaN rendered on the job page');
    await page.screenshot({ path: join(shots, 'job-result.png'), fullPage: true });
  });

  let jobB;
  await step('cancel another job', async () => {
    const r = await cluster.api(admin, 'POST', '/jobs', { kind: 'train', spec: { ...trainSpec(100000), epochs: 50 } });
    assert(r.status === 201, 'submit: ' + JSON.stringify(r.body));
    jobB = r.body.id;
    await page.goto(`${cluster.url}/#/jobs/${jobB}`);
    await page.getByRole('button', { name: 'Cancel' }).click();
    await cluster.waitJob(admin, jobB, ['cancelled'], 60000);
    await page.reload();
    await page.locator('.badge.state-cancelled').first().waitFor();
  });

  await step('compare two jobs', async () => {
    await page.goto(`${cluster.url}/#/compare?ids=${jobA},${jobB}`);
    const diff = page.locator('table.diff tbody tr');
    await diff.first().waitFor();
    assert(await page.locator('table.diff').getByText('spec.max_steps').count() === 1, 'spec difference max_steps listed');
    await page.locator('figure[data-chart="loss"]').waitFor();
    await page.screenshot({ path: join(shots, 'compare.png'), fullPage: true });
  });

  await step('compress result view: layer table, rank and latency charts, baselines', async () => {
    const models = (await cluster.api(admin, 'GET', '/models')).body.items;
    const model = models.find((m) => m.name === 'resnet20-cifar10.onnx');
    const cifar = await cluster.api(admin, 'POST', '/datasets?name=cifar10-jpeg.h5', readFileSync(join(shared, 'cifar10-jpeg.h5')), { 'Content-Type': 'application/octet-stream' });
    assert(model && cifar.status === 201, 'inputs for the compress job');
    const spec = { model: { file: model.id }, dataset: cifar.body.id, eval_samples: 200, target: { kind: 'flops', reduction: 0.5 },
      search: { steps: 4, batch_size: 16 }, finetune: { steps: 2, batch_size: 16 }, baselines: ['uniform'], latency: { batch: 4 },
      normalisation: { mean: [0.4914, 0.4822, 0.4465], std: [0.2470, 0.2435, 0.2616] }, threads: 2 };
    const r = await cluster.api(admin, 'POST', '/jobs', { kind: 'compress', spec });
    assert(r.status === 201, 'compress submit: ' + JSON.stringify(r.body));
    await cluster.waitJob(admin, r.body.id, ['succeeded'], 400000);
    await page.goto(`${cluster.url}/#/jobs/${r.body.id}`);
    await page.getByRole('heading', { name: 'Result' }).waitFor({ timeout: 30000 });
    await page.locator('table.layers tbody tr').first().waitFor();
    const figs = await page.locator('#main section figure.chart').count();
    assert(figs >= 4, `compress result shows ${figs} charts`);
    // the warning about other work while timing shows exactly when the result carries it
    const job = (await cluster.api(admin, 'GET', `/jobs/${r.body.id}`)).body;
    const note = job.result && job.result.latency_note;
    const shown = await page.locator('p.latency-note').count();
    assert(shown === (note ? 1 : 0), `latency note in result: ${JSON.stringify(note)}, shown ${shown}`);
    if (note) assert((await page.locator('p.latency-note').textContent()).includes(note), 'latency note text');
    // the prediction names the latency model it came from
    const facts = await page.locator('dl.facts', { hasText: 'Predicted latency' }).textContent();
    if (typeof job.result.latency_ms_reference === 'number') {
      assert(facts.includes('from the reference model') && facts.includes("× the chosen layers' latencies"),
        `prediction model shown: ${facts}`);
    }
    await page.screenshot({ path: join(shots, 'compress-result.png'), fullPage: true });
  });

  await step('loader result view: per-epoch loading and per-rank batches', async () => {
    const sur = resolve(bin, '../data/surrogate.h5');
    assert(existsSync(sur), `${sur} missing (scripts/setup.sh generates it)`);
    const d = await cluster.api(admin, 'POST', '/datasets?name=surrogate.h5', readFileSync(sur), { 'Content-Type': 'application/octet-stream' });
    const ex = JSON.parse(readFileSync(join(root, 'schema/jobs/train-surrogate.example.json'), 'utf8'));
    const r = await cluster.api(admin, 'POST', '/jobs', { kind: 'train', spec: { ...ex.spec, dataset: d.body.id, ranks: 2, max_steps: 12 } });
    assert(r.status === 201, 'surrogate submit: ' + JSON.stringify(r.body));
    await cluster.waitJob(admin, r.body.id, ['succeeded'], 240000);
    await page.goto(`${cluster.url}/#/jobs/${r.body.id}`);
    await page.getByRole('heading', { name: 'Data loading' }).waitFor({ timeout: 30000 });
    await page.locator('table.loader-epochs tbody tr').first().waitFor();
    assert(await page.locator('table.loader-ranks tbody tr').count() === 2, 'per-rank batch table has the 2 ranks the worker launched with mpirun');
    await page.screenshot({ path: join(shots, 'loader-result.png'), fullPage: true });
  });

  await step('dashboard readable at phone width', async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.goto(`${cluster.url}/#/jobs`);
    await page.locator(`tr[data-job="${jobA}"]`).waitFor();
    await page.screenshot({ path: join(shots, 'jobs-phone.png'), fullPage: true });
  });

  await step('no console errors and no failed requests', async () => {
    assert(problems.length === 0, problems.join('\n'));
  });
} catch (e) {
  if (!failed) { failed++; console.log(`FAIL setup\n${e.stack || e}`); }
  for (const p of cluster.procs) if (p.exitCode !== null) console.log(`process exited ${p.exitCode}: ${p.output.slice(-2000)}`);
} finally {
  if (browser) await browser.close();
  await cluster.stop();
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
