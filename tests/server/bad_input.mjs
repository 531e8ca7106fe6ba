// lathe-server bad-input tests against the real binary on loopback: every route without a token
// and with each wrong-scope token, invalid tokens, malformed / deeply nested / oversized JSON,
// unknown fields, wrong content types, path traversal in every path parameter and in static
// paths, stale worker attempts (fencing), oversized and interrupted uploads. After all of it the
// server must still be healthy and its store and database must hold nothing from refused input.
import { readdirSync, readFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { startServer, api, raw, check, finish, makeH5, sleep, waitFor } from './lib.mjs';

const ID = { job: 'job_0123456789abcdef', model: 'mdl_0123456789abcdef', dataset: 'ds_0123456789abcdef',
             artifact: 'art_0123456789abcdef', token: 'tok_0123456789abcdef', kind: 'inspect' };
// [method, path, scopes allowed] — mirrors the route table in server/routes.c.
const RW = ['read', 'submit', 'admin', 'worker'], R = ['read', 'submit', 'admin'], S = ['submit', 'admin'],
      W = ['worker', 'admin'], A = ['admin'];
const ROUTES = [
  ['GET', '/metrics', R], ['GET', '/api/v1/openapi.json', R], ['GET', '/api/v1/schemas/jobs', R], ['GET', '/api/v1/schemas/jobs/{kind}', R],
  ['POST', '/api/v1/models', S], ['PUT', '/api/v1/models', S], ['GET', '/api/v1/models', RW],
  ['GET', '/api/v1/models/{model}', RW], ['GET', '/api/v1/models/{model}/content', RW], ['DELETE', '/api/v1/models/{model}', S],
  ['POST', '/api/v1/datasets', S], ['PUT', '/api/v1/datasets', S], ['GET', '/api/v1/datasets', RW],
  ['GET', '/api/v1/datasets/{dataset}', RW], ['GET', '/api/v1/datasets/{dataset}/content', RW], ['DELETE', '/api/v1/datasets/{dataset}', S],
  ['POST', '/api/v1/jobs', S], ['GET', '/api/v1/jobs', RW], ['GET', '/api/v1/jobs/{job}', RW],
  ['POST', '/api/v1/jobs/{job}/cancel', S], ['POST', '/api/v1/jobs/{job}/retry', S], ['GET', '/api/v1/jobs/{job}/metrics', RW],
  ['GET', '/api/v1/jobs/{job}/events', RW], ['GET', '/api/v1/jobs/{job}/artifacts', RW], ['GET', '/api/v1/changes', R],
  ['GET', '/api/v1/artifacts/{artifact}', R], ['GET', '/api/v1/artifacts/{artifact}/content', R],
  ['GET', '/api/v1/workers', R], ['POST', '/api/v1/workers/claim', W], ['POST', '/api/v1/workers/heartbeat', W],
  ['POST', '/api/v1/workers/events', W], ['PUT', '/api/v1/workers/artifacts', W], ['POST', '/api/v1/workers/complete', W],
  ['POST', '/api/v1/tokens', A], ['GET', '/api/v1/tokens', A], ['DELETE', '/api/v1/tokens/{token}', A],
];
const fill = (p) => p.replace(/\{(\w+)\}/g, (_, k) => ID[k]);

const srv = await startServer(['--upload-max', '65536', '--lease-s', '1', '--backoff-ms', '0']);
const T = srv.tokens;
try {
  // --- auth: no token, garbage tokens, wrong scopes ---
  for (const [m, p, allowed] of ROUTES) {
    const url = fill(p);
    let r = await api(srv, m, url);
    check(r.status === 401 && r.json?.code === 'unauthorized', `${m} ${p} without a token -> 401 (got ${r.status})`);
    r = await api(srv, m, url, { headers: { Authorization: 'Bearer lathe_' + 'A'.repeat(43) } });
    check(r.status === 401, `${m} ${p} with an unknown token -> 401 (got ${r.status})`);
    for (const scope of ['read', 'submit', 'admin', 'worker']) {
      if (allowed.includes(scope)) continue;
      r = await api(srv, m, url, { token: T[scope] });
      check(r.status === 403 && r.json?.code === 'forbidden', `${m} ${p} with a ${scope} token -> 403 (got ${r.status})`);
    }
  }
  for (const h of ['Bearer', 'Bearer ', 'Basic abc', 'Bearer ' + T.admin + 'x', 'bearer' + T.admin, T.admin]) {
    const r = await api(srv, 'GET', '/api/v1/jobs', { headers: { Authorization: h } });
    check(r.status === 401, `Authorization "${h.slice(0, 20)}…" -> 401 (got ${r.status})`);
  }
  check((await api(srv, 'GET', '/healthz')).status === 200, '/healthz needs no token');

  // --- JSON bodies ---
  const post = (url, body, ct = 'application/json', token = T.submit) =>
    api(srv, 'POST', url, { token, body, headers: { 'Content-Type': ct } });
  let r = await post('/api/v1/jobs', '{"kind": "inspect", "spec": {');
  check(r.status === 400 && r.json?.code === 'invalid_json', `malformed JSON -> 400 invalid_json (got ${r.status} ${r.text})`);
  r = await post('/api/v1/jobs', '');
  check(r.status === 400, `empty body -> 400 (got ${r.status})`);
  r = await post('/api/v1/jobs', '[1,2]');
  check(r.status === 400 && r.json?.code === 'invalid_json', `array body -> 400 (got ${r.status})`);
  r = await post('/api/v1/jobs', '['.repeat(100000) + ']'.repeat(100000));
  check(r.status === 400 && r.json?.code === 'too_deep', `100000-deep JSON -> 400 too_deep (got ${r.status})`);
  r = await post('/api/v1/jobs', JSON.stringify({ kind: 'inspect', spec: JSON.parse('{"a":'.repeat(70) + '1' + '}'.repeat(70)) }));
  check(r.status === 400, `70-deep spec -> 400 (got ${r.status})`);
  r = await post('/api/v1/jobs', JSON.stringify({ kind: 'inspect', spec: { dataset: ID.dataset }, colour: 'red' }));
  check(r.status === 400 && r.json?.code === 'unknown_field' && r.json?.path === '$.colour', `unknown top-level field -> 400 with path (got ${r.text})`);
  r = await post('/api/v1/jobs', JSON.stringify({ kind: 'inspect', spec: { dataset: ID.dataset, colour: 'red' } }));
  check(r.status === 400 && r.json?.path?.startsWith('$.spec'), `unknown spec field -> 400 with $.spec path (got ${r.text})`);
  r = await post('/api/v1/jobs', JSON.stringify({ kind: 'nope', spec: {} }));
  check(r.status === 400 && r.json?.path === '$.kind', `unknown kind -> 400 $.kind (got ${r.text})`);
  r = await post('/api/v1/jobs', JSON.stringify({ kind: 'inspect', spec: { dataset: ID.dataset }, priority: 1.5 }));
  check(r.status === 400 && r.json?.path === '$.priority', `fractional priority -> 400 (got ${r.text})`);
  r = await post('/api/v1/jobs', JSON.stringify({ kind: 'inspect', spec: { dataset: '../../etc/passwd' } }));
  check(r.status === 400 && r.json?.path === '$.spec.dataset', `path as a file ref -> 400 with path (got ${r.text})`);
  r = await post('/api/v1/jobs', JSON.stringify({ kind: 'inspect', spec: { dataset: ID.dataset } }));
  check(r.status === 404 && r.json?.path === '$.spec.dataset', `unknown dataset -> 404 with path (got ${r.text})`);
  r = await post('/api/v1/jobs', '{"kind":"inspect","spec":{}}', 'text/plain');
  check(r.status === 415, `text/plain JSON body -> 415 (got ${r.status})`);
  r = await post('/api/v1/jobs', '{"kind":"inspect","spec":{}}', 'application/x-www-form-urlencoded');
  check(r.status === 415, `form body -> 415 (got ${r.status})`);
  r = await post('/api/v1/jobs', JSON.stringify({ kind: 'inspect', spec: { x: 'a'.repeat((1 << 20) + 10) } }));
  check(r.status === 413, `1 MiB+ JSON body -> 413 (got ${r.status})`);
  r = await post('/api/v1/jobs', '{"kind":"inspect","spec":{}}\u0000');
  check(r.status === 400, `NUL in JSON -> 400 (got ${r.status})`);
  r = await api(srv, 'POST', `/api/v1/jobs/${ID.job}/cancel`, { token: T.submit, body: 'x', headers: { 'Content-Type': 'text/plain' } });
  check(r.status === 400 || r.status === 404, `body on a bodiless route refused (got ${r.status})`);
  r = await api(srv, 'PATCH', '/api/v1/jobs', { token: T.admin });
  check(r.status === 405 && /POST/.test(r.headers.get('allow') ?? ''), `PATCH /api/v1/jobs -> 405 with Allow (got ${r.status})`);
  for (const q of ['limit=0', 'limit=201', 'limit=abc', 'page_token=zzz', 'state=sleeping']) {
    r = await api(srv, 'GET', `/api/v1/jobs?${q}`, { token: T.read });
    check(r.status === 400, `GET /api/v1/jobs?${q} -> 400 (got ${r.status})`);
  }
  r = await api(srv, 'POST', '/api/v1/tokens', { token: T.admin, json: { scope: 'root' } });
  check(r.status === 400 && r.json?.path === '$.scope', `token with unknown scope -> 400 (got ${r.text})`);

  // --- path traversal in every path parameter and in static paths ---
  const evil = ['..', '..%2f..%2fetc%2fpasswd', '%2e%2e', 'job_..%2F..%2F', 'job_0123456789abcdef%00', 'JOB_0123456789ABCDEF',
                'job_0123456789abcdef0', '..%5c..%5cwindows', '%252e%252e'];
  for (const [m, p] of ROUTES.filter(([, p]) => p.includes('{'))) {
    for (const e of evil) {
      const url = p.replace(/\{\w+\}/, e).replace(/\{(\w+)\}/g, (_, k) => ID[k]);
      r = await api(srv, m, url, { token: T.admin });
      check(r.status === 404 || r.status === 400, `${m} ${url} -> 4xx (got ${r.status})`);
      check(!/root:/.test(r.text), `${m} ${url} leaks nothing`);
    }
  }
  for (const p of ['/../../../../etc/passwd', '/%2e%2e/%2e%2e/etc/passwd', '/..%2f..%2fetc%2fpasswd', '/.hidden', '/vendor/../../etc/passwd']) {
    const got = await raw(srv, `GET ${p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    check(/^HTTP\/1\.1 (400|404)/.test(got) && !/root:/.test(got), `static ${p} -> 400/404 (got ${got.slice(0, 20)})`);
  }
  for (const name of ['../x.h5', '.hidden', 'a/b.h5', '', 'x'.repeat(300)]) {
    r = await api(srv, 'POST', `/api/v1/datasets?name=${encodeURIComponent(name)}`, { token: T.submit, body: 'data', headers: { 'Content-Type': 'application/octet-stream' } });
    check(r.status === 400 && r.json?.code === 'invalid_name', `upload name "${name.slice(0, 12)}" -> 400 (got ${r.status})`);
  }

  // --- uploads: types, sizes, refusals, interruption ---
  const up = (body, ct = 'application/octet-stream', name = 'f.h5') =>
    api(srv, 'POST', `/api/v1/datasets?name=${name}`, { token: T.submit, body, headers: { 'Content-Type': ct } });
  r = await up('hello', 'application/json');
  check(r.status === 415, `upload as application/json -> 415 (got ${r.status})`);
  r = await up(Buffer.alloc(70000, 1));
  check(r.status === 413 && r.json?.code === 'upload_too_large', `upload over --upload-max -> 413 (got ${r.status})`);
  r = await up('this is not hdf5');
  check(r.status === 415 && r.json?.code === 'unsupported_file', `non-HDF5 dataset -> 415 (got ${r.text})`);
  r = await up(Buffer.concat([Buffer.from([0x89, 0x48, 0x44, 0x46, 0x0d, 0x0a, 0x1a, 0x0a]), Buffer.alloc(600, 0xff)]));
  check(r.status === 400 && r.json?.code === 'invalid_file', `truncated HDF5 -> 400 invalid_file (got ${r.status} ${r.text})`);
  r = await up('');
  check(r.status === 400, `empty upload -> 400 (got ${r.status})`);
  // Chunked (no Content-Length) past the cap: dropped and answered 413 at the end.
  const chunk = 'x'.repeat(30000);
  let got = await raw(srv, `POST /api/v1/datasets?name=c.h5 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${T.submit}\r\n` +
    `Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n` +
    [1, 2, 3].map(() => `${chunk.length.toString(16)}\r\n${chunk}\r\n`).join('') + '0\r\n\r\n');
  check(/^HTTP\/1\.1 413/.test(got), `chunked upload past the cap -> 413 (got ${got.slice(0, 30)})`);
  // A chunked body that never stops is cut off: the connection closes, the server lives on.
  const big = 'y'.repeat(60000);
  got = await raw(srv, `POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${T.submit}\r\n` +
    `Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n` +
    Array.from({ length: 60 }, () => `${big.length.toString(16)}\r\n${big}\r\n`).join(''), { ms: 3000 });
  check(!/^HTTP\/1\.1 2/.test(got), `an endless chunked JSON body is refused (got ${got.slice(0, 30) || 'a closed connection'})`);
  check((await api(srv, 'GET', '/healthz')).status === 200, 'the server survives an endless body');
  // A client dying mid-body leaves no temp file, no blob and no row. It hangs up only once the
  // server holds the half body in a temp file of its own (on a slow, sanitised build the server
  // may reach the request after a client that hangs up at once has gone).
  const valid = readFileSync(makeH5(srv.data));
  const tmpDir = path.join(srv.data, 'tmp'), tmpBefore = new Set(readdirSync(tmpDir));
  let tmpSeen = false;
  got = await raw(srv, Buffer.concat([Buffer.from(`POST /api/v1/datasets?name=cut.h5 HTTP/1.1\r\nHost: x\r\n` +
    `Authorization: Bearer ${T.submit}\r\nContent-Type: application/octet-stream\r\nContent-Length: ${valid.length}\r\n\r\n`),
    valid.subarray(0, Math.floor(valid.length / 2))]),
    { ms: 10000, closeWhen: () => (tmpSeen = readdirSync(tmpDir).some((n) => !tmpBefore.has(n))) });
  check(tmpSeen, 'the interrupted upload reached the server (its temp file appeared)');
  await waitFor(() => readdirSync(tmpDir).length === 0);
  const tmpLeft = readdirSync(tmpDir);
  const blobs = existsSync(path.join(srv.data, 'store')) ? readdirSync(path.join(srv.data, 'store')) : [];
  check(tmpLeft.length === 0, `interrupted upload leaves no temp file (left: ${tmpLeft})`);
  check(blobs.length === 0, `interrupted and refused uploads leave no blob (left: ${blobs})`);
  r = await api(srv, 'GET', '/api/v1/datasets', { token: T.read });
  check(r.status === 200 && r.json.items.length === 0, `no dataset rows after refused uploads (got ${r.json?.items?.length})`);

  // --- worker fencing: a worker reporting for an attempt it no longer holds ---
  r = await up(valid, 'application/octet-stream', 'tiny.h5');
  check(r.status === 201 && /^ds_/.test(r.json?.id), `valid dataset upload -> 201 (got ${r.status} ${r.text})`);
  const ds = r.json?.id;
  r = await post('/api/v1/jobs', JSON.stringify({ kind: 'inspect', spec: { dataset: ds } }));
  check(r.status === 201, `submit -> 201 (got ${r.text})`);
  const job = r.json?.id;
  const wpost = (url, json) => api(srv, 'POST', url, { token: T.worker, json });
  r = await wpost('/api/v1/workers/claim', { worker: 'test:1:cpu', device: 'cpu', kinds: ['inspect'], wait_s: 1 });
  check(r.status === 200 && r.json?.attempt === 1, `claim -> attempt 1 (got ${r.status})`);
  r = await wpost('/api/v1/workers/claim', { worker: 'test:1:cpu', device: 'cpu', colour: 1 });
  check(r.status === 400 && r.json?.path === '$.colour', `claim with unknown field -> 400`);
  r = await wpost('/api/v1/workers/claim', { worker: 'test:1:cpu', device: 'cpu', wait_s: 31 });
  check(r.status === 400 && r.json?.path === '$.wait_s', `claim wait_s 31 -> 400`);
  r = await wpost('/api/v1/workers/events', { job, attempt: 1, events: [{ type: 'metric', key: 'a b', step: 1, value: 1 }] });
  check(r.status === 400 && r.json?.path === '$.events[0].key', `bad metric key -> 400 with path (got ${r.text})`);
  // Lease 1 s, no heartbeat: the reaper requeues; a second worker takes attempt 2.
  await sleep(2600);
  r = await wpost('/api/v1/workers/claim', { worker: 'test:2:cpu', device: 'cpu', wait_s: 3 });
  check(r.status === 200 && r.json?.attempt === 2, `requeued job claimed as attempt 2 (got ${r.status} ${r.json?.attempt})`);
  for (const [url, body] of [['/api/v1/workers/heartbeat', { job, attempt: 1 }],
    ['/api/v1/workers/events', { job, attempt: 1, events: [{ type: 'log', message: 'late' }] }],
    ['/api/v1/workers/complete', { job, attempt: 1, state: 'succeeded', result: {} }]]) {
    r = await wpost(url, body);
    check(r.status === 409 && r.json?.code === 'stale_attempt', `${url} for attempt 1 -> 409 stale_attempt (got ${r.status})`);
  }
  r = await api(srv, 'PUT', `/api/v1/workers/artifacts?job=${job}&attempt=1&name=x.txt`, { token: T.worker, body: 'late', headers: { 'Content-Type': 'application/octet-stream' } });
  check(r.status === 409, `artifact for attempt 1 -> 409 (got ${r.status})`);
  r = await wpost('/api/v1/workers/heartbeat', { job, attempt: 2 });
  check(r.status === 200 && r.json?.cancel === false, `heartbeat of attempt 2 -> 200`);
  r = await api(srv, 'GET', `/api/v1/jobs/${job}/artifacts`, { token: T.read });
  check(r.status === 200 && r.json.items.length === 0, `the stale artifact was not stored`);
  r = await api(srv, 'DELETE', `/api/v1/datasets/${ds}`, { token: T.submit });
  check(r.status === 409 && r.json?.code === 'file_in_use', `deleting a dataset a running job needs -> 409 (got ${r.status})`);
  r = await wpost('/api/v1/workers/complete', { job, attempt: 2, state: 'exploded' });
  check(r.status === 400 && r.json?.path === '$.state', `complete with a bad state -> 400`);
  r = await api(srv, 'POST', `/api/v1/jobs/${job}/retry`, { token: T.submit });
  check(r.status === 409 && r.json?.code === 'invalid_state', `retry of a running job -> 409 (got ${r.status})`);

  // --- a claim long-poll whose worker went away takes no job ---
  {
    const body = JSON.stringify({ worker: 'test:gone:cpu', device: 'cpu', kinds: ['inspect'], wait_s: 6 });
    const req = `POST /api/v1/workers/claim HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${T.worker}\r\n` +
      `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
    await raw(srv, req, { ms: 400 }); // the worker disappears 0.4 s into its long poll
    r = await post('/api/v1/jobs', JSON.stringify({ kind: 'inspect', spec: { dataset: ds } }));
    const job2 = r.json?.id;
    await sleep(1800); // the abandoned poll would have claimed it by now
    r = await api(srv, 'GET', `/api/v1/jobs/${job2}`, { token: T.read });
    check(r.json?.state === 'queued', `a job submitted after the poller vanished stays queued (got ${r.json?.state})`);
    // (the first job, its lease lapsed meanwhile, may come first: it is older)
    let got = [];
    for (let i = 0; i < 2 && !got.some((c) => c.id === job2); i++) {
      r = await wpost('/api/v1/workers/claim', { worker: 'test:3:cpu', device: 'cpu', kinds: ['inspect'], wait_s: 1 });
      got.push({ id: r.json?.job?.id, attempt: r.json?.attempt });
    }
    check(got.some((c) => c.id === job2 && c.attempt === 1),
      `a live worker then claims it as attempt 1 (got ${JSON.stringify(got)})`);
  }

  // --- still healthy, nothing left behind ---
  r = await api(srv, 'GET', '/healthz');
  check(r.status === 200, 'the server is still healthy after all of it');
  check(readdirSync(path.join(srv.data, 'tmp')).length === 0, 'no temp files left at the end');
} finally {
  const clean = await srv.stop();
  check(clean, 'SIGTERM stops the server');
  if (/AddressSanitizer|LeakSanitizer|runtime error/.test(srv.log())) check(false, `sanitizer report:\n${srv.log()}`);
}

// kill -9 of the server mid-upload: after a restart no partial file, no orphan blob, no row,
// and the jobs are all still there.
{
  const jobsBefore = (await (async () => {
    const s2 = await startServer([], {}, srv);
    const r = await api(s2, 'GET', '/api/v1/jobs', { token: srv.tokens.read });
    const valid = readFileSync(path.join(srv.data, 'tiny.h5'));
    // Half a body, then the server dies.
    const pending = raw(s2, Buffer.concat([Buffer.from(`POST /api/v1/datasets?name=k.h5 HTTP/1.1\r\nHost: x\r\n` +
      `Authorization: Bearer ${srv.tokens.submit}\r\nContent-Type: application/octet-stream\r\nContent-Length: ${valid.length}\r\n\r\n`),
      valid.subarray(0, 1000)]), { ms: 10000 });
    check(await waitFor(() => readdirSync(path.join(srv.data, 'tmp')).length === 1),
      'the upload in flight has a temp file');
    s2.proc.kill('SIGKILL');
    await pending;
    return r.json?.items?.length;
  })());
  // Also what a crash between rename and insert would leave: a blob no row names.
  const orphan = 'ab' + 'c'.repeat(62);
  mkdirSync(path.join(srv.data, 'store', 'ab'), { recursive: true });
  writeFileSync(path.join(srv.data, 'store', 'ab', orphan), 'orphan');
  const s3 = await startServer([], {}, srv);
  try {
    check(readdirSync(path.join(srv.data, 'tmp')).length === 0, 'restart sweeps the partial upload');
    check(!existsSync(path.join(srv.data, 'store', 'ab', orphan)), 'restart removes a blob no row names');
    const ds = await api(s3, 'GET', '/api/v1/datasets', { token: srv.tokens.read });
    check(ds.json?.items?.length === 1, `only the committed dataset remains (got ${ds.json?.items?.length})`);
    const blob = path.join(srv.data, 'store', ds.json.items[0].sha256.slice(0, 2), ds.json.items[0].sha256);
    check(existsSync(blob), 'the committed dataset keeps its blob');
    const jobs = await api(s3, 'GET', '/api/v1/jobs', { token: srv.tokens.read });
    check(jobsBefore >= 1 && jobs.json?.items?.length === jobsBefore, `no job lost across kill -9 (${jobsBefore} -> ${jobs.json?.items?.length})`);
  } finally {
    check(await s3.stop(), 'the restarted server stops on SIGTERM');
    if (/AddressSanitizer|LeakSanitizer|runtime error/.test(s3.log())) check(false, `sanitizer report:\n${s3.log()}`);
    srv.cleanup();
  }
}
finish('server.bad_input');
