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

// startServer probes /healthz over plain HTTP, so start this one by hand.
const data = mkdtempSync(path.join(os.tmpdir(), 'lathe-tls-data-'));
const token = execFileSync(serverBin, ['token', 'create', '--data', data, '--scope', 'read']).toString().trim();
let proc, port, up = false;
for (let tries = 0; tries < 10 && !up; tries++) {
  port = 18100 + Math.floor(Math.random() * 100);
  proc = spawn(serverBin, ['--listen', `127.0.0.1:${port}`, '--data', data, '--tls-cert', cert, '--tls-key', key], { stdio: 'ignore' });
  for (let i = 0; i < 60 && !up; i++) {
    await sleep(50);
    up = (await get(port, '/healthz')).status === 200;
  }
  if (!up) proc.kill('SIGKILL');
}
check(up, 'the TLS server answers /healthz over HTTPS');
const r = await get(port, '/api/v1/jobs', { Authorization: `Bearer ${token}` });
check(r.status === 200 && JSON.parse(r.body).items.length === 0, `an authenticated HTTPS request works (got ${r.status})`);
let plain = 0;
try { plain = (await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(2000) })).status; } catch { plain = -1; }
check(plain !== 200, 'plain HTTP on the TLS port gets no answer');
proc.kill('SIGTERM');
await sleep(200);

// Plain HTTP on a non-loopback address warns.
const warnSrv = spawn(serverBin, ['--listen', `0.0.0.0:${port}`, '--data', data], { stdio: ['ignore', 'ignore', 'pipe'] });
let log = '';
warnSrv.stderr.on('data', (d) => { log += d; });
await sleep(400);
warnSrv.kill('SIGTERM');
await new Promise((res) => warnSrv.on('close', res));
check(/WARNING: plain HTTP on non-loopback/.test(log), `non-loopback plain HTTP warns (stderr: ${log.trim()})`);
rmSync(dir, { recursive: true, force: true });
rmSync(data, { recursive: true, force: true });
finish('server.tls');
