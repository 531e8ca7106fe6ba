// lathe-worker against a scripted server that speaks the worker protocol of schema/CONTRACT.md.
//
// This pins the worker's side of the protocol in isolation — what it sends, how it reacts to
// cancel, to 409 (stale attempt), to a server that is down or restarting, to a corrupt download,
// to SIGTERM — with every answer under the test's control. The end-to-end tests against the real
// lathe-server live in tests/integration/. Jobs are real `lathe run` inspect jobs over HDF5 files
// the test writes with make_test_h5; the long ones read a 2^31-element dataset exactly.
//
//   node tests/workers/worker_protocol.mjs BUILD/bin
// Exit 0 all passed, 1 a failure.
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';

const bin = path.resolve(process.argv[2] || 'build/bin');
const worker_bin = path.join(bin, 'lathe-worker');
const make_h5 = path.join(bin, 'make_test_h5');
const TOKEN = 'wrk-test-token';
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lathe-worker-proto-'));
const children = new Set();
let failures = 0;

function cleanup() {
  for (const c of children) { try { process.kill(-c.pid, 'SIGKILL'); } catch { try { c.kill('SIGKILL'); } catch {} } }
  fs.rmSync(tmp, { recursive: true, force: true });
}
process.on('exit', cleanup);
process.on('SIGINT', () => process.exit(1));
process.on('SIGTERM', () => process.exit(1));

const make = (...args) => spawnSync(make_h5, args).status === 0;
if (!make('small', path.join(tmp, 'small.h5')) || !make('long', path.join(tmp, 'big.h5'), '31')) {
  console.error('make_test_h5 failed');
  process.exit(1);
}
fs.writeFileSync(path.join(tmp, 'text.h5'), 'not hdf5\n');

// ---- the scripted server ----
const files = {};   // id -> {bytes, sha256, served}
const jobs = [];    // queued claim answers
const log = [];     // every request: {method, path, body, auth}
let script = {};    // per-test behaviour: heartbeat(job) -> answer, content(id) -> bytes
let waiters = [];

function addFile(id, name, bytes) {
  files[id] = { bytes, sha256: createHash('sha256').update(bytes).digest('hex'), served: 0 };
}
addFile('ds_00000000000000a1', 'small.h5', fs.readFileSync(path.join(tmp, 'small.h5')));
addFile('ds_00000000000000b2', 'big.h5', fs.readFileSync(path.join(tmp, 'big.h5')));
addFile('ds_00000000000000c3', 'text.h5', fs.readFileSync(path.join(tmp, 'text.h5')));
addFile('ds_00000000000000d4', 'slow.bin', Buffer.from('served slowly, never run'));

function note(entry) {
  log.push(entry);
  const still = [];
  for (const w of waiters) { if (w.pred(entry)) w.resolve(entry); else still.push(w); }
  waiters = still;
}
function waitFor(pred, what, timeout_ms = 20000) {
  const hit = log.find(pred);
  if (hit) return Promise.resolve(hit);
  return new Promise((resolve, reject) => {
    const w = { pred, resolve };
    waiters.push(w);
    setTimeout(() => { waiters = waiters.filter(x => x !== w); reject(new Error('timed out waiting for ' + what)); }, timeout_ms);
  });
}

function leaseUntil(s) { return new Date(Date.now() + s * 1000).toISOString(); }

function handler(req, res) {
  const chunks = [];
  req.on('data', c => chunks.push(c));
  req.on('end', () => {
    const raw = Buffer.concat(chunks);
    const url = new URL(req.url, 'http://x');
    let body = null;
    if ((req.headers['content-type'] || '').startsWith('application/json') && raw.length) {
      try { body = JSON.parse(raw); } catch { body = { unparsable: String(raw) }; }
    }
    const entry = { method: req.method, path: url.pathname, query: Object.fromEntries(url.searchParams), body, raw, auth: req.headers.authorization };
    note(entry);
    const send = (status, obj) => {
      res.writeHead(status, obj === undefined ? {} : { 'content-type': 'application/json' });
      res.end(obj === undefined ? undefined : JSON.stringify(obj));
    };
    if (req.headers.authorization !== 'Bearer ' + TOKEN) return send(401, { code: 'unauthorized', message: 'token' });
    const p = url.pathname;
    if (p === '/api/v1/workers/claim') {
      const next = jobs.shift();
      if (next) return send(200, next);
      const wait = Math.min(body?.wait_s ?? 1, 2) * 1000; // a short long-poll keeps the test quick
      return setTimeout(() => {
        const later = jobs.shift();
        later ? send(200, later) : send(204);
      }, wait);
    }
    if (p === '/api/v1/workers/heartbeat') {
      const a = script.heartbeat ? script.heartbeat(body) : null;
      if (a === 409) return send(409, { code: 'stale_attempt', message: 'not yours' });
      return send(200, { lease_until: leaseUntil(3), cancel: !!a?.cancel });
    }
    if (p === '/api/v1/workers/events') return send(script.events ? script.events(body) : 200, {});
    if (p === '/api/v1/workers/artifacts') return send(201, { id: 'art_0000000000000001', name: url.searchParams.get('name'), size: raw.length });
    if (p === '/api/v1/workers/complete') return send(200, {});
    let m = p.match(/^\/api\/v1\/(datasets|models)\/([a-z0-9_]+)(\/content)?$/);
    if (m && files[m[2]]) {
      const f = files[m[2]];
      if (!m[3]) return send(200, { id: m[2], sha256: f.sha256, size: f.bytes.length });
      f.served++;
      const bytes = script.content ? script.content(m[2], f.bytes) : f.bytes;
      return setTimeout(() => {
        res.writeHead(200, { 'content-type': 'application/octet-stream', etag: '"' + f.sha256 + '"' });
        res.end(bytes);
      }, script.contentDelay ?? 0);
    }
    if (m) return send(404, { code: 'not_found', message: 'no such upload' });
    send(404, { code: 'not_found', message: p });
  });
}

let server, port;
async function startServer(at) {
  server = http.createServer(handler);
  server.keepAliveTimeout = 1000;
  for (let tries = 0; ; tries++) {
    const want = at ?? 18200 + Math.floor(Math.random() * 100);
    try {
      await new Promise((resolve, reject) => { server.once('error', reject); server.listen(want, '127.0.0.1', resolve); });
      port = want;
      return;
    } catch (e) {
      if (at || tries > 20) throw e;
    }
  }
}
async function stopServer() {
  await new Promise(r => { server.close(r); server.closeAllConnections(); });
}

function startWorker(extra = [], cwd = undefined) {
  const w = spawn(worker_bin, ['--server', `http://127.0.0.1:${port}`, '--token', TOKEN, '--device', 'cpu',
    '--cache', path.join(tmp, 'cache'), '--grace', '2', '--wait', '1', ...extra], { stdio: ['ignore', 'ignore', 'pipe'], detached: true, cwd });
  w.stderrText = '';
  w.stderr.on('data', d => { w.stderrText += d; });
  w.exited = new Promise(r => w.on('exit', (code, signal) => { children.delete(w); r({ code, signal }); }));
  children.add(w);
  return w;
}
async function stopWorker(w) {
  if (w.exitCode !== null || w.signalCode !== null) return w.exited;
  w.kill('SIGTERM');
  const t = setTimeout(() => { try { process.kill(-w.pid, 'SIGKILL'); } catch {} }, 15000);
  const r = await w.exited;
  clearTimeout(t);
  return r;
}

let jobSeq = 0;
function queueJob(spec, kind = 'inspect', attempt = 1) {
  const id = 'job_' + (++jobSeq).toString(16).padStart(16, '0');
  jobs.push({ job: { id, kind, state: 'running', attempt, spec }, attempt, lease_until: leaseUntil(3) });
  return id;
}
const completeOf = id => waitFor(e => e.path === '/api/v1/workers/complete' && e.body?.job === id, `complete of ${id}`, 30000);
const eventsOf = id => log.filter(e => e.path === '/api/v1/workers/events' && e.body?.job === id).flatMap(e => e.body.events);

function check(cond, what) {
  if (!cond) { failures++; console.error('  check failed:', what); }
}

async function test(name, fn) {
  script = {};
  const t0 = Date.now(), before = failures;
  try {
    await fn();
    console.log(`${failures > before ? 'FAIL' : 'ok  '} ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    failures++;
    console.log(`FAIL ${name}: ${e.message}`);
  }
}

await startServer();
// leftovers of a killed worker's downloads: an abandoned one and one still being written
fs.mkdirSync(path.join(tmp, 'cache', 'files'), { recursive: true });
const partialOld = path.join(tmp, 'cache', 'files', '.partial-abandoned'), partialNew = path.join(tmp, 'cache', 'files', '.partial-fresh');
fs.writeFileSync(partialOld, 'x');
fs.writeFileSync(partialNew, 'x');
const hourAgo = new Date(Date.now() - 3600e3);
fs.utimesSync(partialOld, hourAgo, hourAgo);
let w = startWorker();

await test('worker: claims, downloads by SHA-256, runs, relays events, uploads artifacts, completes', async () => {
  const id = queueJob({ dataset: 'ds_00000000000000a1' });
  const done = await completeOf(id);
  check(done.body.state === 'succeeded', 'state succeeded: ' + JSON.stringify(done.body).slice(0, 300));
  check(done.body.attempt === 1, 'attempt echoed');
  check(done.body.result?.format === 'hdf5', 'result is the inspect summary');
  check(done.body.result?.splits?.train?.samples === 4, 'summary has the split');
  const claim = log.find(e => e.path === '/api/v1/workers/claim');
  check(claim.body.device === 'cpu' && claim.body.kinds.includes('inspect') && /:cpu$/.test(claim.body.worker), 'claim body ' + JSON.stringify(claim.body));
  check(log.every(e => e.auth === 'Bearer ' + TOKEN), 'every request carries the token');
  const ev = eventsOf(id);
  check(ev.some(e => e.type === 'progress'), 'progress relayed');
  check(!ev.some(e => e.type === 'artifact'), 'artifact events are left to the server (it logs them on upload, with ids)');
  const art = log.find(e => e.path === '/api/v1/workers/artifacts' && e.query.job === id);
  check(art && art.query.name === 'inspect.json' && art.query.attempt === '1', 'artifact uploaded with job/attempt/name');
  check(art && JSON.parse(art.raw).format === 'hdf5', 'artifact body is the summary');
  check(!fs.existsSync(partialOld) && fs.existsSync(partialNew), 'an abandoned partial download is swept at start, a fresh one kept');
  fs.rmSync(partialNew);
  const cached = path.join(tmp, 'cache', 'files', files.ds_00000000000000a1.sha256);
  check(fs.existsSync(cached), 'input cached under its SHA-256');
  await waitFor(e => e.path === '/api/v1/workers/claim' && log.indexOf(e) > log.indexOf(done), 'the next claim');
  check(!fs.existsSync(path.join(tmp, 'cache', 'jobs', `${id}-1`)), 'job folder removed afterwards');
});

await test('worker: a cached input is verified and not downloaded again', async () => {
  const before = files.ds_00000000000000a1.served;
  const id = queueJob({ dataset: 'ds_00000000000000a1' });
  const done = await completeOf(id);
  check(done.body.state === 'succeeded', 'succeeded');
  check(files.ds_00000000000000a1.served === before, 'no second download');
});

await test('worker: a download that does not match its SHA-256 fails retryably and leaves nothing', async () => {
  fs.rmSync(path.join(tmp, 'cache', 'files'), { recursive: true, force: true });
  script.content = (id, bytes) => { const b = Buffer.from(bytes); b[b.length - 1] ^= 0xff; return b; };
  const id = queueJob({ dataset: 'ds_00000000000000a1' });
  const done = await completeOf(id);
  check(done.body.state === 'failed' && done.body.retryable === true, 'failed, retryable: ' + JSON.stringify(done.body));
  check(/hashes to/.test(done.body.error), 'says the hash differs: ' + done.body.error);
  const left = fs.existsSync(path.join(tmp, 'cache', 'files')) ? fs.readdirSync(path.join(tmp, 'cache', 'files')) : [];
  check(left.length === 0, 'no partial or bad file in the cache: ' + left);
});

await test('worker: a batch refused with 400 is resent event by event, dropping only the bad one', async () => {
  // the server refuses any batch of several events, and the job's first progress event alone
  script.events = b => (b.events.length > 1 || (b.events[0].type === 'progress' && b.events[0].fraction === 0) ? 400 : 200);
  const id = queueJob({ dataset: 'ds_00000000000000a1' });
  const done = await completeOf(id);
  check(done.body.state === 'succeeded', 'succeeded');
  const accepted = log.filter(e => e.path === '/api/v1/workers/events' && e.body?.job === id && e.body.events.length === 1 &&
    !(e.body.events[0].type === 'progress' && e.body.events[0].fraction === 0));
  check(accepted.some(e => e.body.events[0].type === 'progress' && e.body.events[0].fraction === 1), 'the other events still arrived: ' + accepted.length);
});

await test('worker: bad input fails without retry and carries the message', async () => {
  const id = queueJob({ dataset: 'ds_00000000000000c3' });
  const done = await completeOf(id);
  check(done.body.state === 'failed' && done.body.retryable === false, 'failed, not retryable: ' + JSON.stringify(done.body));
  check(/not an HDF5 file/.test(done.body.error), 'message names the problem: ' + done.body.error);
});

await test('worker: a spec naming a path instead of an upload id is refused, the path never read', async () => {
  const id = queueJob({ dataset: '/etc/passwd' });
  const done = await completeOf(id);
  check(done.body.state === 'failed' && done.body.retryable === false, 'refused: ' + JSON.stringify(done.body));
  check(/must be a dataset id/.test(done.body.error), done.body.error);
  const unknown = queueJob({ dataset: 'ds_ffffffffffffffff' });
  const d2 = await completeOf(unknown);
  check(d2.body.state === 'failed' && d2.body.retryable === false && /does not exist/.test(d2.body.error), 'unknown upload: ' + d2.body.error);
  const bad = queueJob({ dataset: 'ds_00000000000000a1', bogus: 1 });
  const d3 = await completeOf(bad);
  check(d3.body.state === 'failed' && /\$\.spec\.bogus/.test(d3.body.error), 'invalid spec: ' + d3.body.error);
});

await test('worker: cancel from a heartbeat stops the job (SIGTERM) and reports it', async () => {
  const id = queueJob({ dataset: 'ds_00000000000000b2', exact: true });
  let cancelled = false;
  script.heartbeat = b => (b.job === id && cancelled ? { cancel: true } : null);
  await waitFor(e => e.path === '/api/v1/workers/events' && e.body?.job === id &&
    e.body.events.some(x => x.type === 'progress' && /reading/.test(x.message || '')), 'progress of the long job');
  cancelled = true;
  const t0 = Date.now();
  const done = await completeOf(id);
  check(done.body.state === 'failed' && done.body.error === 'cancelled' && done.body.retryable === false, 'reported cancelled: ' + JSON.stringify(done.body));
  check(Date.now() - t0 < 6000, `stopped within a heartbeat + grace (${Date.now() - t0} ms)`);
  check(eventsOf(id).some(e => e.type === 'error' && /SIGTERM/.test(e.message)), 'the job stopped on SIGTERM and said so');
});

await test('worker: a cancel that arrives while inputs download stops the job before it starts', async () => {
  const id = queueJob({ dataset: 'ds_00000000000000d4' });
  script.contentDelay = 2500;
  script.heartbeat = b => (b.job === id ? { cancel: true } : null);
  const done = await completeOf(id);
  check(done.body.state === 'failed' && done.body.error === 'cancelled' && done.body.retryable === false, 'reported cancelled: ' + JSON.stringify(done.body));
  check(eventsOf(id).length === 0, 'the job never ran (no events)');
});

await test('worker: a 409 from a heartbeat kills the job and drops it without a report', async () => {
  const id = queueJob({ dataset: 'ds_00000000000000b2', exact: true });
  let stale = false;
  script.heartbeat = b => (b.job === id && stale ? 409 : null);
  await waitFor(e => e.path === '/api/v1/workers/events' && e.body?.job === id, 'events of the long job');
  stale = true;
  const hb = await waitFor(e => e.path === '/api/v1/workers/heartbeat' && e.body?.job === id && stale, '409 heartbeat');
  // the worker goes back to claiming once the job is dropped
  const t0 = Date.now();
  await waitFor(e => e.path === '/api/v1/workers/claim' && log.indexOf(e) > log.indexOf(hb), 'next claim');
  check(Date.now() - t0 < 5000, 'dropped promptly');
  check(!log.some(e => e.path === '/api/v1/workers/complete' && e.body?.job === id), 'no complete for a stale attempt');
  check(!log.some(e => e.path === '/api/v1/workers/artifacts' && e.query.job === id), 'no artifacts for a stale attempt');
});

await test('worker: a job killed by a signal is reported retryable with its last stderr lines', async () => {
  const id = queueJob({ dataset: 'ds_00000000000000b2', exact: true });
  await waitFor(e => e.path === '/api/v1/workers/events' && e.body?.job === id, 'events of the long job');
  // the job's process group is the `lathe run` child of the worker
  const kids = spawnSync('pgrep', ['-P', String(w.pid)]).stdout.toString().trim().split('\n').filter(Boolean);
  check(kids.length === 1, 'one child: ' + kids);
  for (const k of kids) process.kill(Number(k), 'SIGKILL');
  const done = await completeOf(id);
  check(done.body.state === 'failed' && done.body.retryable === true, 'retryable: ' + JSON.stringify(done.body));
  check(/killed by signal 9/.test(done.body.error), done.body.error);
});

await test('worker: rides out a server restart (events kept, job completes)', async () => {
  const id = queueJob({ dataset: 'ds_00000000000000a1' });
  script.events = () => 200;
  await stopServer();         // down before the worker's next call
  await new Promise(r => setTimeout(r, 1500));
  await startServer(port);    // back on the same port
  const done = await completeOf(id);
  check(done.body.state === 'succeeded', 'succeeded after the restart');
  check(/retrying|failed/.test(w.stderrText), 'the worker said it was retrying');
});

await test('worker: SIGTERM stops the running job, reports it retryable, exits 0', async () => {
  const id = queueJob({ dataset: 'ds_00000000000000b2', exact: true });
  await waitFor(e => e.path === '/api/v1/workers/events' && e.body?.job === id, 'events of the long job');
  const t0 = Date.now();
  w.kill('SIGTERM');
  const r = await w.exited;
  check(r.code === 0, 'exit 0: ' + JSON.stringify(r));
  check(Date.now() - t0 < 8000, `prompt (${Date.now() - t0} ms)`);
  const done = log.find(e => e.path === '/api/v1/workers/complete' && e.body?.job === id);
  check(done && done.body.state === 'failed' && done.body.retryable === true, 'reported retryable: ' + JSON.stringify(done?.body));
  check(spawnSync('pgrep', ['-f', path.join(tmp, 'cache', 'jobs')]).stdout.toString().trim() === '', 'no job process left');
});

await test('worker: starts while the server is down and claims once it is up (relative --cache, size cap)', async () => {
  await stopServer();
  w = startWorker(['--cache', 'cache-rel', '--cache-max-gb', '1e-9'], tmp); // a 1-byte cap
  await new Promise(r => setTimeout(r, 1500));
  check(w.exitCode === null, 'still running while the server is down');
  await startServer(port);
  const id = queueJob({ dataset: 'ds_00000000000000a1' });
  const done = await completeOf(id);
  check(done.body.state === 'succeeded', 'succeeded: ' + JSON.stringify(done.body).slice(0, 300));
  check(fs.existsSync(path.join(tmp, 'cache-rel', 'files', files.ds_00000000000000a1.sha256)), 'cached under the relative folder');
  // the next job's input pushes the least recently used one out, never its own
  const next = queueJob({ dataset: 'ds_00000000000000c3' });
  await completeOf(next);
  const left = fs.readdirSync(path.join(tmp, 'cache-rel', 'files'));
  check(left.length === 1 && left[0] === files.ds_00000000000000c3.sha256, 'only the running job\'s input kept: ' + left);
  const r = await stopWorker(w);
  check(r.code === 0, 'clean exit when idle');
});

// spawnSync would block this process, and with it the scripted server: run to the end async.
function runToEnd(args, env) {
  return new Promise(resolve => {
    const c = spawn(worker_bin, args, { env: env ?? process.env, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    c.stderr.on('data', d => { err += d; });
    const t = setTimeout(() => c.kill('SIGKILL'), 10000);
    c.on('exit', code => { clearTimeout(t); resolve({ status: code, stderr: err }); });
  });
}

await test('worker: refuses a wrong token, a missing token and a bad device with exit 2', async () => {
  const bad = await runToEnd(['--server', `http://127.0.0.1:${port}`, '--token', 'nope', '--cache', path.join(tmp, 'cache')]);
  check(bad.status === 2 && /refused the token/.test(bad.stderr), 'status ' + bad.status + ' ' + bad.stderr);
  const none = await runToEnd(['--server', `http://127.0.0.1:${port}`], { PATH: process.env.PATH });
  check(none.status === 2 && /no token/.test(none.stderr), 'no token: ' + none.stderr);
  const dev = await runToEnd(['--token', 'x', '--device', 'gpu']);
  check(dev.status === 2 && /--device/.test(dev.stderr), 'bad device: ' + dev.stderr);
});

await stopServer();
console.log(failures ? `${failures} check(s) failed` : 'all passed');
process.exit(failures ? 1 : 0);
