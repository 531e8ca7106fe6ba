// Shared harness for the server's node tests: starts the real lathe-server on a loopback port
// in 18100-18199 with a fresh data folder, makes tokens with `lathe-server token create`, and
// offers fetch helpers, a raw-socket client, and pass/fail bookkeeping.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export const [serverBin, cliBin, makeH5Bin] = process.argv.slice(2);

let failures = 0, checks = 0;
export function check(cond, what) {
  checks++;
  if (!cond) {
    failures++;
    console.log(`FAIL ${what}`);
  }
}
export function finish(name) {
  console.log(`${name}: ${checks - failures} of ${checks} checks passed`);
  process.exitCode = failures ? 1 : 0;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Polls cond() every 50 ms until it holds or ms pass; returns its last value. For what another
// process does in its own time (a loaded CI machine runs the sanitizer builds side by side).
export async function waitFor(cond, ms = 10000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v || Date.now() >= end) return v;
    await sleep(50);
  }
}

// reuse: {data, tokens} of an earlier server, to restart on the same data folder.
// host: the address to listen on; ready(port): whether the server answers (default: GET /healthz
// over plain HTTP on 127.0.0.1 gives 200, and this data folder's read token is accepted: another
// test's server on the same port, which ours failed to bind, does not pass for ours).
const ownServerUp = async (base, tokens) =>
  (await fetch(`${base}/healthz`)).status === 200 &&
  (await fetch(`${base}/api/v1/jobs`, { headers: { Authorization: `Bearer ${tokens.read}` } })).status === 200;
export async function startServer(extraArgs = [], env = {}, reuse = null,
                                  { host = '127.0.0.1', ready = null } = {}) {
  const data = reuse ? reuse.data : mkdtempSync(path.join(os.tmpdir(), 'lathe-srv-test-'));
  const tokens = reuse ? reuse.tokens : {};
  for (const scope of reuse ? [] : ['read', 'submit', 'admin', 'worker'])
    tokens[scope] = execFileSync(serverBin, ['token', 'create', '--data', data, '--scope', scope, '--name', scope]).toString().trim();
  for (let tries = 0; tries < 20; tries++) {
    const port = 18100 + Math.floor(Math.random() * 100);
    const proc = spawn(serverBin, ['--listen', `${host}:${port}`, '--data', data, ...extraArgs], {
      env: { ...process.env, LATHE_CLI: cliBin, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    proc.stderr.on('data', (d) => { log += d; });
    let exited = false;
    proc.on('close', () => { exited = true; }); // after stderr is drained
    const base = `http://127.0.0.1:${port}`;
    for (let i = 0; i < 100 && !exited; i++) {
      try {
        if (ready ? await ready(port) : await ownServerUp(base, tokens)) {
          return { base, port, data, tokens, proc, log: () => log,
            async stop() {
              proc.kill('SIGTERM');
              for (let j = 0; j < 100 && !exited; j++) await sleep(50);
              if (!exited) proc.kill('SIGKILL');
              return exited;
            },
            cleanup() { rmSync(data, { recursive: true, force: true }); } };
        }
      } catch { /* not up yet */ }
      await sleep(50);
    }
    proc.kill('SIGKILL');
    if (!/cannot listen/.test(log)) throw new Error(`lathe-server did not start: ${log}`);
  }
  throw new Error('no free port in 18100-18199');
}

// fetch with a bearer token; returns {status, json, text, headers}.
export async function api(srv, method, url, { token, body, json, headers = {} } = {}) {
  const h = { ...headers };
  if (token) h.Authorization = `Bearer ${token}`;
  let payload = body;
  if (json !== undefined) {
    payload = JSON.stringify(json);
    h['Content-Type'] ??= 'application/json';
  }
  const r = await fetch(srv.base + url, { method, headers: h, body: payload });
  const text = await r.text();
  let parsed;
  try { parsed = text ? JSON.parse(text) : undefined; } catch { parsed = undefined; }
  return { status: r.status, json: parsed, text, headers: r.headers };
}

// Sends raw bytes on a fresh connection; resolves with what came back when the server closes
// or after ms. With closeWhen, the socket is destroyed once the bytes are written and the
// condition holds (polled as waitFor does, within ms): a client dying mid-request, after the
// server has surely seen what it sent.
export function raw(srv, bytes, { ms = 2000, closeWhen = null } = {}) {
  return new Promise((resolve) => {
    const sock = net.connect(srv.port, '127.0.0.1');
    let got = '', timer = null;
    const done = () => { clearTimeout(timer); sock.destroy(); resolve(got); };
    sock.on('connect', () => {
      sock.write(bytes, async () => {
        if (!closeWhen) return;
        await waitFor(closeWhen, ms);
        done();
      });
    });
    sock.on('data', (d) => { got += d.toString('latin1'); });
    sock.on('error', done);
    sock.on('close', done);
    timer = setTimeout(done, ms);
  });
}

export function makeH5(dir) {
  const file = path.join(dir, 'tiny.h5');
  execFileSync(makeH5Bin, [file]);
  return file;
}

export { sleep };
