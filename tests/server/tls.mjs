// HTTPS: with --tls-cert/--tls-key the server speaks TLS (MHD + GnuTLS): a client that trusts
// the certificate gets answers, plain HTTP on the same port gets none, and without TLS on a
// non-loopback address the server warns on stderr. Skipped (77) without the openssl tool.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { check, finish, startServer } from './lib.mjs';

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

// startServer moves on from ports other tests hold; this one is ready when it answers over HTTPS.
let srv = null, startErr = '';
try {
  srv = await startServer(['--tls-cert', cert, '--tls-key', key], {}, null,
    { ready: async (port) => (await get(port, '/healthz')).status === 200 });
} catch (e) { startErr = String(e); }
check(srv, `the TLS server answers /healthz over HTTPS (${startErr})`);
if (srv) {
  const r = await get(srv.port, '/api/v1/jobs', { Authorization: `Bearer ${srv.tokens.read}` });
  check(r.status === 200 && JSON.parse(r.body).items.length === 0, `an authenticated HTTPS request works (got ${r.status})`);
  let plain = 0;
  try { plain = (await fetch(`http://127.0.0.1:${srv.port}/healthz`, { signal: AbortSignal.timeout(2000) })).status; } catch { plain = -1; }
  check(plain !== 200, 'plain HTTP on the TLS port gets no answer');
  await srv.stop();
  srv.cleanup();
}

// Plain HTTP on a non-loopback address warns (before it listens; stop() drains stderr).
const warn = await startServer([], {}, null, { host: '0.0.0.0' });
await warn.stop();
check(/WARNING: plain HTTP on non-loopback/.test(warn.log()), `non-loopback plain HTTP warns (stderr: ${warn.log().trim()})`);
warn.cleanup();
rmSync(dir, { recursive: true, force: true });
finish('server.tls');
