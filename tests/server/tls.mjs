// HTTPS: with --tls-cert/--tls-key the server speaks TLS (MHD + GnuTLS): a client that trusts
// the certificate gets answers, plain HTTP on the same port gets none, and without TLS on a
// non-loopback address the server warns on stderr. Skipped (77) without the openssl tool.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { check, finish, sleep, serverBin } from './lib.mjs';

const dir = mkdtempSync(path.join(os.tmpdir(), 'lathe-tls-test-'));
const cert = path.join(dir, 'cert.pem'), key = path.join(dir, 'key.pem');
try {
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1',
    '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
} catch {
  console.log('openssl not available: skipped');
  rmSync(dir, { recursive: true, force: true });
  process.exit(77);
}
const ca = readFileSync(cert);
const get = (port, url, headers = {}) => new Promise((resolve) => {
  https.get({ host: '127.0.0.1', port, path: url, ca, headers }, (res) => {
    let body = '';
    res.on('data', (d) => { body += d; });
    res.on('end', () => resolve({ status: res.statusCode, body }));
  }).on('error', (e) => resolve({ status: 0, body: String(e) }));
});

// Spawns the server and records its exit from the start: a server that fails at once (port
// taken) must not leave the test awaiting a 'close' event that has already passed.
const launch = (args) => {
  const p = spawn(serverBin, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  p.log = '';
  p.stderr.on('data', (d) => { p.log += d; });
  p.closed = new Promise((res) => p.on('close', res)); // after stderr is drained
  return p;
};
const stopServer = async (p) => {
  p.kill('SIGTERM');
  const t = setTimeout(() => p.kill('SIGKILL'), 10000);
  await p.closed;
  clearTimeout(t);
};

// startServer probes /healthz over plain HTTP, so start this one by hand. Other tests run in
// parallel on the same port range: a port that does not answer over HTTPS is given up.
const data = mkdtempSync(path.join(os.tmpdir(), 'lathe-tls-data-'));
const token = execFileSync(serverBin, ['token', 'create', '--data', data, '--scope', 'read']).toString().trim();
let proc, port, up = false;
for (let tries = 0; tries < 10 && !up; tries++) {
  port = 18100 + Math.floor(Math.random() * 100);
  proc = launch(['--listen', `127.0.0.1:${port}`, '--data', data, '--tls-cert', cert, '--tls-key', key]);
  let exited = false;
  proc.closed.then(() => { exited = true; });
  for (let i = 0; i < 200 && !up && !exited; i++) {
    await sleep(50);
    up = (await get(port, '/healthz')).status === 200;
  }
  if (!up) await stopServer(proc);
}
check(up, `the TLS server answers /healthz over HTTPS (last stderr: ${proc.log.trim()})`);
const r = await get(port, '/api/v1/jobs', { Authorization: `Bearer ${token}` });
check(r.status === 200 && JSON.parse(r.body).items.length === 0, `an authenticated HTTPS request works (got ${r.status})`);
let plain = 0;
try { plain = (await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(2000) })).status; } catch { plain = -1; }
check(plain !== 200, 'plain HTTP on the TLS port gets no answer');
await stopServer(proc);

// Plain HTTP on a non-loopback address warns. The warning comes before the "listening on" line;
// wait for that line (or for an exit) rather than a fixed time, and move on from a taken port.
let warnLog = '';
for (let tries = 0; tries < 10; tries++) {
  const p = launch(['--listen', `0.0.0.0:${18100 + Math.floor(Math.random() * 100)}`, '--data', data]);
  let exited = false;
  p.closed.then(() => { exited = true; });
  for (let i = 0; i < 200 && !exited && !/listening on/.test(p.log); i++) await sleep(50);
  await stopServer(p);
  warnLog = p.log;
  if (!/cannot listen/.test(warnLog)) break;
}
check(/WARNING: plain HTTP on non-loopback/.test(warnLog), `non-loopback plain HTTP warns (stderr: ${warnLog.trim()})`);
rmSync(dir, { recursive: true, force: true });
rmSync(data, { recursive: true, force: true });
finish('server.tls');
