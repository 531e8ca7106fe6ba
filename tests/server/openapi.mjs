// OpenAPI conformance: drives every route of lathe-server through a whole job's life (upload,
// submit, claim, events, artifacts, complete, SSE, metrics, cancel, retry, tokens) and validates
// every JSON response against schema/openapi.json with ajv, and every status against the
// statuses the document lists for that operation.
import { createRequire } from 'node:module';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer, api, check, finish, makeH5, sleep } from './lib.mjs';

const require = createRequire(import.meta.url);
const Ajv2020 = require('ajv/dist/2020').default;
const addFormats = require('ajv-formats');

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const doc = JSON.parse(readFileSync(path.join(root, 'schema/openapi.json'), 'utf8'));
const ajv = new Ajv2020({ strict: false, allErrors: true });
addFormats(ajv);
ajv.addSchema({ ...doc, $id: 'openapi.json' });

// The operation an URL hits: templates like /api/v1/jobs/{id} become regexes.
const ops = Object.entries(doc.paths).map(([tpl, item]) =>
  [new RegExp('^' + tpl.replace(/\{\w+\}/g, '[^/]+') + '$'), tpl, item]);
function operation(method, url) {
  const p = url.split('?')[0];
  for (const [re, tpl, item] of ops) if (re.test(p) && item[method.toLowerCase()]) return [tpl, item[method.toLowerCase()]];
  return [null, null];
}
const validators = new Map();
let validated = 0;
function conform(method, url, r) {
  const [tpl, op] = operation(method, url);
  check(op, `${method} ${url} is in the OpenAPI document`);
  if (!op) return r;
  const resp = op.responses[String(r.status)];
  check(resp, `${method} ${tpl} answered ${r.status}, which the document lists (${Object.keys(op.responses)})`);
  if (!resp) return r;
  const ref = resp.$ref ? doc.components.responses[resp.$ref.split('/').pop()] : resp;
  const media = ref.content?.['application/json'];
  const ctype = r.headers.get('content-type') ?? '';
  if (media) {
    check(ctype.startsWith('application/json'), `${method} ${tpl} ${r.status} is JSON (got ${ctype})`);
    const key = `${tpl} ${method} ${r.status}`;
    if (!validators.has(key)) {
      const ptr = resp.$ref ? `openapi.json#/components/responses/${resp.$ref.split('/').pop()}/content/application~1json/schema`
        : `openapi.json#/paths/${tpl.replaceAll('~', '~0').replaceAll('/', '~1')}/${method.toLowerCase()}/responses/${r.status}/content/application~1json/schema`;
      validators.set(key, ajv.compile({ $ref: ptr }));
    }
    const v = validators.get(key);
    const ok = v(r.json);
    check(ok, `${method} ${tpl} ${r.status} matches the schema: ${JSON.stringify(v.errors)?.slice(0, 400)} body ${r.text.slice(0, 300)}`);
    validated++;
  }
  return r;
}
const call = async (srv, method, url, opts) => conform(method, url, await api(srv, method, url, opts));

const web = mkdtempSync(path.join(os.tmpdir(), 'lathe-web-test-'));
writeFileSync(path.join(web, 'index.html'), '<!doctype html><title>Lathe</title><script type="module" src="app.js"></script>');
writeFileSync(path.join(web, 'app.js'), 'export {};');
const srv = await startServer(['--lease-s', '5', '--backoff-ms', '0', '--web', web, '--vendor', path.join(root, 'node_modules')]);
const T = srv.tokens;
try {
  const served = await api(srv, 'GET', '/api/v1/openapi.json', { token: T.read });
  check(served.status === 200 && JSON.stringify(served.json) === JSON.stringify(doc), 'the served OpenAPI document is schema/openapi.json');
  await call(srv, 'GET', '/healthz');
  const sch = await api(srv, 'GET', '/api/v1/schemas/jobs/inspect', { token: T.read });
  check(sch.status === 200 && sch.json?.title === 'inspect', 'GET /api/v1/schemas/jobs/inspect serves the kind schema');
  await call(srv, 'GET', '/api/v1/schemas/jobs/nope', { token: T.read });
  await call(srv, 'GET', '/api/v1/jobs');
  await call(srv, 'GET', '/api/v1/tokens', { token: T.read });

  // Files.
  const h5 = readFileSync(makeH5(srv.data));
  const octet = { 'Content-Type': 'application/octet-stream' };
  const ds = (await call(srv, 'POST', '/api/v1/datasets?name=tiny.h5', { token: T.submit, body: h5, headers: octet })).json;
  check(ds?.summary && ds.size === h5.length, 'the dataset object carries its inspect summary');
  await call(srv, 'PUT', '/api/v1/datasets?name=tiny2.h5', { token: T.submit, body: h5, headers: octet });
  await call(srv, 'POST', '/api/v1/datasets?name=bad.h5', { token: T.submit, body: 'nope', headers: octet });
  await call(srv, 'POST', '/api/v1/models?name=garbage.onnx', { token: T.submit, body: 'not a model', headers: octet });
  const list = (await call(srv, 'GET', '/api/v1/datasets?limit=1', { token: T.worker })).json;
  check(list?.items?.length === 1 && list.next_page_token, 'dataset list pages');
  await call(srv, 'GET', `/api/v1/datasets?limit=1&page_token=${list?.next_page_token}`, { token: T.read });
  await call(srv, 'GET', `/api/v1/datasets/${ds.id}`, { token: T.read });
  await call(srv, 'GET', '/api/v1/datasets/ds_0123456789abcdef', { token: T.read });
  const content = await call(srv, 'GET', `/api/v1/datasets/${ds.id}/content`, { token: T.worker });
  check(content.headers.get('etag') === `"${ds.sha256}"`, 'content ETag is the sha256');
  const notModified = await call(srv, 'GET', `/api/v1/datasets/${ds.id}/content`, { token: T.worker, headers: { 'If-None-Match': `"${ds.sha256}"` } });
  check(notModified.status === 304, 'If-None-Match answers 304');
  await call(srv, 'GET', '/api/v1/models', { token: T.read });

  // Jobs.
  const spec = { kind: 'inspect', spec: { dataset: ds.id } };
  const idem = { 'Idempotency-Key': 'abc-1' };
  const job = (await call(srv, 'POST', '/api/v1/jobs', { token: T.submit, json: spec, headers: idem })).json;
  check(job?.state === 'queued' && job.spec.exact === false, 'submitted job is queued with defaults filled');
  const again = await call(srv, 'POST', '/api/v1/jobs', { token: T.submit, json: spec, headers: idem });
  check(again.status === 200 && again.json?.id === job.id, 'Idempotency-Key replay returns the same job');
  const conflict = await call(srv, 'POST', '/api/v1/jobs', { token: T.submit, json: { ...spec, priority: 3 }, headers: idem });
  check(conflict.status === 409, 'Idempotency-Key reuse with another body is 409');
  await call(srv, 'POST', '/api/v1/jobs', { token: T.submit, json: { kind: 'inspect', spec: { dataset: 5 } } });
  const other = (await call(srv, 'POST', '/api/v1/jobs', { token: T.submit, json: { ...spec, priority: -5 } })).json;
  await call(srv, 'GET', '/api/v1/jobs?state=queued&kind=inspect&limit=1', { token: T.read });
  await call(srv, 'GET', `/api/v1/jobs/${job.id}`, { token: T.read });
  await call(srv, 'GET', '/api/v1/jobs/job_0123456789abcdef', { token: T.read });

  // The worker side.
  const w = (url, json) => call(srv, 'POST', url, { token: T.worker, json });
  const claim = (await w('/api/v1/workers/claim', { worker: 'oa:1:cpu', device: 'cpu', kinds: ['inspect'], wait_s: 2 })).json;
  check(claim?.job?.id === job.id && claim.attempt === 1, 'the higher-priority job is claimed first');
  const a = { job: job.id, attempt: 1 };
  await w('/api/v1/workers/heartbeat', a);
  await w('/api/v1/workers/heartbeat', { ...a, attempt: 7 });
  await w('/api/v1/workers/events', { ...a, events: [
    { type: 'progress', fraction: 0.5, message: 'half', eta_s: 1.5 },
    ...Array.from({ length: 50 }, (_, i) => ({ type: 'metric', key: 'train.loss', step: i, value: 1 / (i + 1) })),
    { type: 'log', level: 'info', message: 'hello' }] });
  const art = await call(srv, 'PUT', `/api/v1/workers/artifacts?job=${job.id}&attempt=1&name=report.json`, { token: T.worker, body: '{"ok":true}', headers: octet });
  check(art.status === 201 && art.json?.size === 11, 'artifact stored');
  await call(srv, 'GET', `/api/v1/jobs/${job.id}/metrics?max_points=9`, { token: T.read });
  const poll = (await call(srv, 'GET', `/api/v1/jobs/${job.id}/events?after=0&wait=0`, { token: T.read })).json;
  check(poll?.events?.some((e) => e.type === 'log'), 'long poll returns the log event');
  await w('/api/v1/workers/complete', { ...a, state: 'succeeded', result: { rows: 12 } });
  await w('/api/v1/workers/complete', { ...a, state: 'succeeded', result: { rows: 12 } });
  await call(srv, 'GET', `/api/v1/jobs/${job.id}`, { token: T.read });

  // SSE: the whole log, ending once the job is finished; Last-Event-ID resumes.
  const sse = await fetch(`${srv.base}/api/v1/jobs/${job.id}/events`, { headers: { Authorization: `Bearer ${T.read}`, Accept: 'text/event-stream' } });
  const text = await sse.text();
  check(sse.headers.get('content-type')?.startsWith('text/event-stream'), 'SSE content type');
  const ids = [...text.matchAll(/^id: (\d+)$/gm)].map((m) => +m[1]);
  check(ids.length >= 5 && /event: state\ndata: \{"type":"state","state":"succeeded"/.test(text), `SSE carries the log through to the end state: ${text.slice(0, 200)}`);
  const resumed = await (await fetch(`${srv.base}/api/v1/jobs/${job.id}/events`, { headers: { Authorization: `Bearer ${T.read}`, Accept: 'text/event-stream', 'Last-Event-ID': String(ids[ids.length - 2]) } })).text();
  check([...resumed.matchAll(/^id: (\d+)$/gm)].length === 1, 'Last-Event-ID resumes after the given event');
  const viaQuery = await fetch(`${srv.base}/api/v1/jobs/${job.id}/events?access_token=${T.read}`, { headers: { Accept: 'text/event-stream' } });
  check(viaQuery.status === 200, 'EventSource clients may pass access_token');
  await viaQuery.text();

  const arts = (await call(srv, 'GET', `/api/v1/jobs/${job.id}/artifacts`, { token: T.read })).json;
  const artId = arts?.items?.[0]?.id;
  await call(srv, 'GET', `/api/v1/artifacts/${artId}`, { token: T.read });
  const artBody = await call(srv, 'GET', `/api/v1/artifacts/${artId}/content`, { token: T.read });
  check(artBody.text === '{"ok":true}', 'artifact content round-trips');

  // Cancel and retry; the empty queue answers 204.
  await call(srv, 'POST', `/api/v1/jobs/${other.id}/cancel`, { token: T.submit });
  await call(srv, 'POST', `/api/v1/jobs/${other.id}/cancel`, { token: T.submit });
  const retried = (await call(srv, 'POST', `/api/v1/jobs/${other.id}/retry`, { token: T.submit })).json;
  check(retried?.state === 'queued', 'retry requeues a cancelled job');
  const c2 = (await w('/api/v1/workers/claim', { worker: 'oa:2:cpu', device: 'cpu', wait_s: 1 })).json;
  await w('/api/v1/workers/complete', { job: c2.job.id, attempt: c2.attempt, state: 'failed', error: 'bad input', retryable: false });
  const failed = (await call(srv, 'GET', `/api/v1/jobs/${other.id}`, { token: T.read })).json;
  check(failed?.state === 'failed' && failed.error === 'bad input', 'a non-retryable failure ends failed');
  const empty = await w('/api/v1/workers/claim', { worker: 'oa:2:cpu', device: 'cpu', wait_s: 1 });
  check(empty.status === 204, 'claim on an empty queue answers 204 after wait_s');
  await call(srv, 'GET', '/api/v1/workers', { token: T.read });

  // Long polls wake on the change they wait for, well before their wait ends.
  let t0 = Date.now();
  const waiting = w('/api/v1/workers/claim', { worker: 'oa:3:cpu', device: 'cpu', wait_s: 10 });
  await sleep(300);
  const fresh = (await call(srv, 'POST', '/api/v1/jobs', { token: T.submit, json: spec })).json;
  const woke = await waiting;
  check(woke.status === 200 && woke.json?.job?.id === fresh?.id && Date.now() - t0 < 3000,
    `a waiting claim is woken by a submission (${woke.status} after ${Date.now() - t0} ms)`);
  const lastId = (await call(srv, 'GET', `/api/v1/jobs/${fresh.id}/events`, { token: T.read })).json.last_id;
  t0 = Date.now();
  const polling = call(srv, 'GET', `/api/v1/jobs/${fresh.id}/events?after=${lastId}&wait=10`, { token: T.read });
  await sleep(300);
  await w('/api/v1/workers/events', { job: fresh.id, attempt: woke.json.attempt, events: [{ type: 'log', level: 'info', message: 'wake' }] });
  const polled = (await polling).json;
  check(polled?.events?.[0]?.data?.message === 'wake' && Date.now() - t0 < 3000,
    `an events long poll is woken by a new event (after ${Date.now() - t0} ms)`);
  await w('/api/v1/workers/complete', { job: fresh.id, attempt: woke.json.attempt, state: 'succeeded', result: {} });

  // Concurrent uploads all get checked (inspect children run at most two at a time).
  const many = await Promise.all(Array.from({ length: 5 }, (_, i) =>
    call(srv, 'POST', `/api/v1/datasets?name=par${i}.h5`, { token: T.submit, body: h5, headers: octet })));
  check(many.every((m) => m.status === 201), `five concurrent uploads all stored (${many.map((m) => m.status)})`);

  // Tokens.
  const tok = (await call(srv, 'POST', '/api/v1/tokens', { token: T.admin, json: { scope: 'read', name: 'dash' } })).json;
  check((await api(srv, 'GET', '/api/v1/jobs', { token: tok.token })).status === 200, 'a created token works');
  await call(srv, 'GET', '/api/v1/tokens', { token: T.admin });
  await call(srv, 'DELETE', `/api/v1/tokens/${tok.id}`, { token: T.admin });
  check((await api(srv, 'GET', '/api/v1/jobs', { token: tok.token })).status === 401, 'a revoked token is refused');

  // Deleting: submit tokens only their own uploads.
  const mine = (await call(srv, 'POST', '/api/v1/datasets?name=del.h5', { token: T.admin, body: h5, headers: octet })).json;
  await call(srv, 'DELETE', `/api/v1/datasets/${mine.id}`, { token: T.submit });
  await call(srv, 'DELETE', `/api/v1/datasets/${mine.id}`, { token: T.admin });
  await call(srv, 'DELETE', `/api/v1/datasets/${mine.id}`, { token: T.admin });

  const prom = await api(srv, 'GET', '/metrics', { token: T.read });
  check(prom.status === 200 && /lathe_jobs\{state="succeeded"\} 2/.test(prom.text) && /lathe_jobs\{state="failed"\} 1/.test(prom.text),
    'Prometheus metrics count jobs by state');
  check(/lathe_http_request_duration_seconds_bucket\{route="GET \/api\/v1\/jobs\/\{job\}",le="0.01"\}/.test(prom.text), 'latency histogram by route');
  check(/lathe_workers_seen 3/.test(prom.text) && /lathe_queue_oldest_age_seconds/.test(prom.text), 'workers seen and queue age');
  const page = await api(srv, 'GET', '/');
  check(page.status === 200 && page.headers.get('content-type')?.startsWith('text/html') && /Lathe/.test(page.text), '/ serves web/index.html');
  const js = await api(srv, 'GET', '/app.js');
  check(js.status === 200 && js.headers.get('content-type')?.startsWith('text/javascript'), 'ES modules are served as JavaScript');
  check((await api(srv, 'GET', '/missing.js')).status === 404, 'a missing static file is 404');
  const chart = await api(srv, 'GET', '/vendor/chart.umd.js');
  check(chart.status === 200 && chart.headers.get('content-type')?.startsWith('text/javascript') && chart.text.length > 1000,
    '/vendor/chart.umd.js is served from node_modules/chart.js');
  check(page.headers.get('x-content-type-options') === 'nosniff' && /script-src 'self'/.test(page.headers.get('content-security-policy') ?? ''),
    'nosniff and a strict CSP on every answer');
  check(validated > 40, `validated ${validated} JSON responses`);
} finally {
  check(await srv.stop(), 'SIGTERM stops the server');
  if (/AddressSanitizer|LeakSanitizer|runtime error/.test(srv.log())) check(false, `sanitizer report:\n${srv.log()}`);
  srv.cleanup();
  rmSync(web, { recursive: true, force: true });
}
finish('server.openapi');
