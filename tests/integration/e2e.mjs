// End to end on loopback: the real lathe-server, lathe-worker and lathe, as a user runs them.
//
//   node tests/integration/e2e.mjs BUILD/bin
//
// upload → submit an inspect job → follow SSE to the result → download the artifact; kill -9 the
// worker mid-job → the job is requeued and finishes on a second worker; kill -9 the server during
// an upload → after a restart no partial file and no lost job; cancel a running job; idempotent
// submit; a bad spec refused with the JSON path of the fault. The long jobs are real: an exact
// inspect (every element read) of a 2^28-element HDF5 dataset whose chunks were never written,
// so the file is tiny but reading it takes seconds. Ports 18200-18299; every process and temp
// folder is removed at the end. Exit 0 passed, 1 failed, 77 skipped (binaries not built).
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';

const bin = path.resolve(process.argv[2] || 'build/bin');
const SERVER = path.join(bin, 'lathe-server'), WORKER = path.join(bin, 'lathe-worker'), CLI = path.join(bin, 'lathe');
const MAKE_H5 = path.join(bin, 'make_test_h5');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lathe-e2e-'));
const procs = new Set();
let failures = 0;
const sleep = ms => new Promise(r => setTimeout(r, ms));

function cleanup() {
  for (const p of procs) {
    try { process.kill(-p.pid, 'SIGKILL'); } catch {}
    for (const g of p.jobGroups || []) { try { process.kill(-g, 'SIGKILL'); } catch {} }
  }
  fs.rmSync(tmp, { recursive: true, force: true });
}
process.on('exit', cleanup);
process.on('SIGINT', () => process.exit(1));
process.on('SIGTERM', () => process.exit(1));

for (const b of [SERVER, WORKER, CLI, MAKE_H5]) if (!fs.existsSync(b)) { console.log(`skip: ${b} not built`); process.exit(77); }
const make = (...args) => spawnSync(MAKE_H5, args).status === 0;
if (!make('small', path.join(tmp, 'small.h5')) || !make('long', path.join(tmp, 'long.h5'), '28')) {
  console.error('make_test_h5 failed');
  process.exit(1);
}
// 16 MiB of noise for the interrupted upload (never completed, so never checked)
fs.writeFileSync(path.join(tmp, 'noise.bin'), Buffer.alloc(16 << 20, 0x5a));

function check(cond, what) {
  if (!cond) { failures++; console.error('  check failed:', what); }
}
async function test(name, fn) {
  const t0 = Date.now(), before = failures;
  try { await fn(); } catch (e) { failures++; console.error('  ' + (e.stack || e.message)); }
  console.log(`${failures > before ? 'FAIL' : 'ok  '} ${name} (${Date.now() - t0} ms)`);
}
async function until(what, fn, timeout_ms = 60000, every_ms = 100) {
  const end = Date.now() + timeout_ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error('timed out waiting for ' + what);
    await sleep(every_ms);
  }
}

// ---- processes ----
const data = path.join(tmp, 'data');
const tokens = {};
for (const scope of ['admin', 'submit', 'worker', 'read'])
  tokens[scope] = execFileSync(SERVER, ['token', 'create', '--data', data, '--scope', scope, '--name', scope]).toString().trim();

let port, base, server;
function startProc(file, args, name) {
  const p = spawn(file, args, { stdio: ['ignore', 'ignore', 'pipe'], detached: true, env: { ...process.env, LATHE_CLI: CLI } });
  p.log = '';
  p.name = name;
  p.stderr.on('data', d => { p.log += d; if (process.env.LATHE_TEST_VERBOSE) process.stderr.write(`[${name}] ${d}`); });
  p.exited = new Promise(r => p.on('exit', (code, signal) => { procs.delete(p); r({ code, signal }); }));
  procs.add(p);
  return p;
}
async function startServer(at) {
  for (let tries = 0; tries < 40; tries++) {
    const want = at ?? 18200 + Math.floor(Math.random() * 100);
    const p = startProc(SERVER, ['--listen', `127.0.0.1:${want}`, '--data', data, '--lease-s', '2', '--backoff-ms', '200'], 'server');
    for (let i = 0; i < 100; i++) {
      if (p.exitCode !== null) break;
      // our read token accepted: not another test's server on a port ours failed to bind
      try {
        const b = `http://127.0.0.1:${want}`;
        if ((await fetch(`${b}/healthz`)).status === 200 &&
            (await fetch(`${b}/api/v1/jobs`, { headers: { Authorization: `Bearer ${tokens.read}` } })).status === 200) {
          port = want; base = b; server = p; return;
        }
      } catch {}
      await sleep(50);
    }
    try { process.kill(-p.pid, 'SIGKILL'); } catch {}
    await p.exited;
    if (at) await sleep(250); // the same port after a crash: wait for it to be free
  }
  throw new Error('lathe-server did not start: ' + [...procs].map(p => p.log).join('\n').slice(-500));
}
function startWorker(name) {
  return startProc(WORKER, ['--server', base, '--token', tokens.worker, '--device', 'cpu', '--name', name,
    '--cache', path.join(tmp, 'cache-' + name), '--grace', '3', '--wait', '2'], name);
}
async function stopProc(p, sig = 'SIGTERM') {
  if (p.exitCode !== null || p.signalCode !== null) return p.exited;
  p.kill(sig);
  const t = setTimeout(() => { try { process.kill(-p.pid, 'SIGKILL'); } catch {} }, 20000);
  const r = await p.exited;
  clearTimeout(t);
  return r;
}
// The `lathe run` children of a worker (each leads its own process group).
function jobGroups(worker) {
  return spawnSync('pgrep', ['-P', String(worker.pid)]).stdout.toString().trim().split('\n').filter(Boolean).map(Number);
}

// ---- API ----
async function api(method, url, { token = tokens.submit, json, body, headers = {} } = {}) {
  const h = { Authorization: `Bearer ${token}`, ...headers };
  if (json !== undefined) { h['Content-Type'] = 'application/json'; body = JSON.stringify(json); }
  const r = await fetch(base + url, { method, headers: h, body });
  const text = await r.text();
  let parsed;
  try { parsed = JSON.parse(text); } catch {}
  return { status: r.status, json: parsed, text, headers: r.headers };
}
const upload = (file, kind = 'datasets') =>
  api('POST', `/api/v1/${kind}?name=${encodeURIComponent(path.basename(file))}`, { body: fs.readFileSync(file), headers: { 'Content-Type': 'application/octet-stream' } });
const job = id => api('GET', `/api/v1/jobs/${id}`).then(r => r.json);

// Follows /jobs/{id}/events as Server-Sent Events until a terminal state event; returns them.
async function followSSE(id, timeout_ms = 60000) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), timeout_ms);
  const r = await fetch(`${base}/api/v1/jobs/${id}/events`, { headers: { Authorization: `Bearer ${tokens.read}`, Accept: 'text/event-stream' }, signal: ctl.signal });
  check(r.status === 200 && /text\/event-stream/.test(r.headers.get('content-type')), 'SSE answered as text/event-stream');
  const events = [];
  const decoder = new TextDecoder();
  let buf = '';
  try {
    for await (const chunk of r.body) {
      buf += decoder.decode(chunk, { stream: true });
      let at;
      while ((at = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, at);
        buf = buf.slice(at + 2);
        const ev = {};
        for (const line of block.split('\n')) {
          const m = line.match(/^(id|event|data): ?(.*)$/);
          if (m) ev[m[1]] = m[2];
        }
        if (!ev.data) continue;
        ev.data = JSON.parse(ev.data);
        events.push(ev);
        if (ev.event === 'state' && ['succeeded', 'failed', 'cancelled', 'dead'].includes(ev.data.state)) {
          ctl.abort();
          return events;
        }
      }
    }
  } catch (e) {
    if (e.name !== 'AbortError') throw e;
  } finally {
    clearTimeout(timer);
  }
  return events;
}

// ---- the tests ----
await startServer();
let workerA = startWorker('worker-a');

let smallId, longId;
await test('e2e: upload, submit inspect, follow SSE to the result, download the artifact', async () => {
  const up = await upload(path.join(tmp, 'small.h5'));
  check(up.status === 201 && /^ds_[0-9a-f]{16}$/.test(up.json?.id), 'upload 201: ' + up.text.slice(0, 200));
  smallId = up.json.id;
  const sub = await api('POST', '/api/v1/jobs', { json: { kind: 'inspect', spec: { dataset: smallId } } });
  check(sub.status === 201 && sub.json.state === 'queued', 'submit 201 queued: ' + sub.text.slice(0, 200));
  check(sub.json.spec.exact === false, 'the stored spec has its defaults filled');
  const events = await followSSE(sub.json.id);
  const last = events[events.length - 1];
  check(last?.event === 'state' && last.data.state === 'succeeded', 'SSE ends with state succeeded: ' + JSON.stringify(last));
  check(events.some(e => e.event === 'progress'), 'progress events streamed');
  check(events.some(e => e.event === 'state' && e.data.state === 'running'), 'running state streamed');
  check(events.some(e => e.event === 'artifact' && e.data.name === 'inspect.json'), 'artifact event streamed');
  const ids = events.map(e => Number(e.id));
  check(ids.every((v, i) => i === 0 || v > ids[i - 1]), 'event ids increase');
  const j = await job(sub.json.id);
  check(j.state === 'succeeded' && j.attempt === 1 && j.worker === 'worker-a', 'job succeeded on worker-a: ' + JSON.stringify(j).slice(0, 200));
  check(j.result?.format === 'hdf5' && j.result.splits?.train?.samples === 4, 'result is the inspect summary');
  check(j.progress?.fraction === 1, 'progress 1');
  const arts = await api('GET', `/api/v1/jobs/${sub.json.id}/artifacts`);
  const list = arts.json?.items ?? arts.json?.artifacts ?? arts.json;
  const art = Array.isArray(list) ? list.find(a => a.name === 'inspect.json') : null;
  check(art, 'artifact listed: ' + arts.text.slice(0, 300));
  if (art) {
    const content = await api('GET', `/api/v1/artifacts/${art.id}/content`, { token: tokens.read });
    check(content.status === 200 && content.json?.format === 'hdf5', 'artifact downloads as the summary');
    check(JSON.stringify(content.json.splits) === JSON.stringify(j.result.splits), 'artifact and result agree');
  }
  // Last-Event-ID resume: only later events come back
  const r = await api('GET', `/api/v1/jobs/${sub.json.id}/events?after=${ids[ids.length - 2]}`, { token: tokens.read });
  check(r.status === 200 && r.json.events.length === 1, 'events after the last-but-one: exactly one');
});

await test('e2e: a bad spec is refused at submit with the JSON path; idempotent submit', async () => {
  const bad = await api('POST', '/api/v1/jobs', { json: { kind: 'inspect', spec: { dataset: smallId, exakt: true } } });
  check(bad.status === 400 && bad.json?.path === '$.spec.exakt', 'refused with the path: ' + bad.text.slice(0, 200));
  const unknown = await api('POST', '/api/v1/jobs', { json: { kind: 'inspect', spec: { dataset: 'ds_0123456789abcdef' } } });
  check(unknown.status >= 400 && unknown.status < 500 && unknown.json?.path === '$.spec.dataset', 'an unknown upload is refused: ' + unknown.text.slice(0, 200));
  const key = 'e2e-' + Date.now();
  const body = { kind: 'inspect', spec: { dataset: smallId } };
  const a = await api('POST', '/api/v1/jobs', { json: body, headers: { 'Idempotency-Key': key } });
  const b = await api('POST', '/api/v1/jobs', { json: body, headers: { 'Idempotency-Key': key } });
  check(a.status === 201 && b.status === 200 && a.json.id === b.json.id, `same key, same job (${a.status} ${b.status})`);
  const c = await api('POST', '/api/v1/jobs', { json: { kind: 'inspect', spec: { dataset: smallId, exact: true } }, headers: { 'Idempotency-Key': key } });
  check(c.status === 409 || c.status === 422, 'same key, different request: refused (' + c.status + ')');
  await until('the idempotent job to finish', async () => (await job(a.json.id)).state === 'succeeded');
});

await test('e2e: kill -9 the worker mid-job; the job is requeued and finishes on a second worker', async () => {
  const up = await upload(path.join(tmp, 'long.h5'));
  check(up.status === 201, 'long.h5 uploaded: ' + up.text.slice(0, 200));
  longId = up.json.id;
  const sub = await api('POST', '/api/v1/jobs', { json: { kind: 'inspect', spec: { dataset: longId, exact: true } } });
  await until('worker-a reading the long job', async () => {
    const j = await job(sub.json.id);
    return j.state === 'running' && j.progress?.fraction > 0 && j.progress.fraction < 1;
  });
  workerA.jobGroups = jobGroups(workerA);
  process.kill(workerA.pid, 'SIGKILL');
  await workerA.exited;
  const workerB = startWorker('worker-b');
  const j = await until('the job to finish on worker-b', async () => {
    const j = await job(sub.json.id);
    return ['succeeded', 'failed', 'dead', 'cancelled'].includes(j.state) ? j : null;
  }, 120000, 250);
  check(j.state === 'succeeded' && j.attempt === 2 && j.worker === 'worker-b', 'succeeded on worker-b at attempt 2: ' + JSON.stringify({ state: j.state, attempt: j.attempt, worker: j.worker, error: j.error }));
  check(j.result?.objects?.find(o => o.path === '/big')?.stats?.elements_read === 2 ** 28, 'exact statistics over every element');
  // the orphaned `lathe run` of worker-a died too (SIGPIPE on its next event)
  await until('worker-a\'s job process to end', async () => workerA.jobGroups.every(g => { try { process.kill(g, 0); return false; } catch { return true; } }), 20000);
  workerA = workerB;
});

await test('e2e: cancel a running job', async () => {
  const sub = await api('POST', '/api/v1/jobs', { json: { kind: 'inspect', spec: { dataset: longId, exact: true } } });
  await until('the job running with progress', async () => {
    const j = await job(sub.json.id);
    return j.state === 'running' && j.progress?.fraction > 0;
  });
  const t0 = Date.now();
  const c = await api('POST', `/api/v1/jobs/${sub.json.id}/cancel`);
  check(c.status === 200, 'cancel accepted: ' + c.status);
  const j = await until('cancelled', async () => { const j = await job(sub.json.id); return j.state === 'cancelled' ? j : null; }, 30000);
  check(Date.now() - t0 < 10000, `cancelled within a heartbeat and the grace period (${Date.now() - t0} ms)`);
  check(j.attempt === 1, 'not retried');
  // the worker lives on and serves the next job
  const next = await api('POST', '/api/v1/jobs', { json: { kind: 'inspect', spec: { dataset: smallId } } });
  await until('the next job to succeed', async () => (await job(next.json.id)).state === 'succeeded');
  check(workerA.exitCode === null, 'the worker is still running');
});

await test('e2e: kill -9 the server during an upload; after restart no partial file and no lost job', async () => {
  await stopProc(workerA);
  // the server keeps a claim long-poll (wait 2 s) open after its worker left, and would hand
  // the next job to it (to be requeued when the lease lapses): let it expire first
  await sleep(2500);
  const queued = await api('POST', '/api/v1/jobs', { json: { kind: 'inspect', spec: { dataset: smallId } } });
  check(queued.status === 201, 'a job queued before the crash');
  const before = (await api('GET', '/api/v1/datasets')).json;
  // stream a 16 MiB body slowly, and kill the server half way through
  const crashed = new Promise(resolve => {
    const req = http.request(`${base}/api/v1/datasets?name=noise.h5`, {
      method: 'POST', headers: { Authorization: `Bearer ${tokens.submit}`, 'Content-Type': 'application/octet-stream', 'Content-Length': 16 << 20 } });
    req.on('error', () => resolve('connection lost'));
    req.on('response', res => resolve('answered ' + res.statusCode));
    const bytes = fs.readFileSync(path.join(tmp, 'noise.bin'));
    let sent = 0;
    const pump = () => {
      if (sent >= 8 << 20) {
        setTimeout(() => { process.kill(server.pid, 'SIGKILL'); }, 300);
        return;
      }
      req.write(bytes.subarray(sent, sent + (1 << 20)), () => setTimeout(pump, 50));
      sent += 1 << 20;
    };
    pump();
  });
  check(await crashed === 'connection lost', 'the upload died with the server');
  await server.exited;
  const tmpDir = path.join(data, 'tmp');
  const partial = fs.existsSync(tmpDir) ? fs.readdirSync(tmpDir) : [];
  check(partial.length > 0, 'the crash left a partial upload behind (so the restart has something to clean)');
  await startServer(port);
  const leftover = fs.existsSync(tmpDir) ? fs.readdirSync(tmpDir) : [];
  check(leftover.length === 0, `no partial upload after the restart (before restart: ${partial.length}, after: ${leftover})`);
  const after = (await api('GET', '/api/v1/datasets')).json;
  check(JSON.stringify(after) === JSON.stringify(before), 'the dataset list is unchanged');
  const stillThere = await job(queued.json.id);
  check(stillThere?.state === 'queued', 'the queued job survived: ' + JSON.stringify(stillThere).slice(0, 120));
  workerA = startWorker('worker-c');
  const done = await until('the surviving job to finish', async () => { const j = await job(queued.json.id); return j.state === 'succeeded' ? j : null; }, 60000);
  check(done.worker === 'worker-c', 'run by the new worker');
});

await test('e2e: a worker rides out a server restart in the middle of a job', async () => {
  const sub = await api('POST', '/api/v1/jobs', { json: { kind: 'inspect', spec: { dataset: longId, exact: true } } });
  await until('the job running', async () => (await job(sub.json.id)).state === 'running');
  await stopProc(server);  // a clean restart, well inside the 2 s lease
  await startServer(port);
  const j = await until('the job to finish', async () => {
    const j = await job(sub.json.id);
    return ['succeeded', 'failed', 'dead', 'cancelled'].includes(j.state) ? j : null;
  }, 120000, 250);
  // with a 2 s lease the restart may cost the lease; either way the job ends well
  check(j.state === 'succeeded', 'succeeded: ' + JSON.stringify({ state: j.state, attempt: j.attempt, error: j.error }));
  const r = await stopProc(workerA);
  check(r.code === 0, 'the worker exits 0 on SIGTERM: ' + JSON.stringify(r));
});

await stopProc(server);
console.log(failures ? `${failures} check(s) failed` : 'all passed');
if (failures) for (const p of [server, workerA]) if (p) console.error(`--- ${p.name} log (tail)\n${p.log.slice(-3000)}`);
process.exit(failures ? 1 : 0);
