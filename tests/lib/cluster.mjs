// Test helper: starts a real lathe-server (temp data dir, loopback port) and lathe-workers from a
// build folder, creates tokens, and tears everything down. Used by the browser and integration
// suites so that they exercise the real binaries.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export class Cluster {
  constructor({ bin, port, log = false }) {
    this.bin = bin;
    this.port = port;
    this.url = `http://127.0.0.1:${port}`;
    this.data = mkdtempSync(join(tmpdir(), 'lathe-test-'));
    this.procs = [];
    this.log = log;
  }

  token(scope, name = scope) {
    return execFileSync(join(this.bin, 'lathe-server'), ['token', 'create', '--data', this.data, '--scope', scope, '--name', name], { encoding: 'utf8' }).trim();
  }

  spawn(cmd, args, env = {}) {
    const p = spawn(join(this.bin, cmd), args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    p.output = '';
    const keep = (d) => { p.output = (p.output + d.toString()).slice(-20000); if (this.log) process.stderr.write(`[${cmd}] ${d}`); };
    p.stdout.on('data', keep);
    p.stderr.on('data', keep);
    this.procs.push(p);
    return p;
  }

  async startServer() {
    this.server = this.spawn('lathe-server', ['--listen', `127.0.0.1:${this.port}`, '--data', this.data]);
    const deadline = Date.now() + 15000;
    while (Date.now() < deadline) {
      try { if ((await fetch(this.url + '/healthz')).ok) return; } catch { /* not up yet */ }
      if (this.server.exitCode !== null) throw new Error('lathe-server exited: ' + this.server.output);
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error('lathe-server did not become healthy: ' + this.server.output);
  }

  startWorker(token, name = 'test-worker') {
    const cache = join(this.data, 'cache-' + name);
    return this.spawn('lathe-worker', ['--server', this.url, '--token', token, '--device', 'cpu', '--cache', cache, '--name', name]);
  }

  async api(token, method, path, body, headers = {}) {
    const init = { method, headers: { Authorization: `Bearer ${token}`, ...headers } };
    if (body !== undefined) {
      if (body instanceof Uint8Array || Buffer.isBuffer(body)) init.body = body;
      else { init.body = JSON.stringify(body); init.headers['Content-Type'] = 'application/json'; }
    }
    const res = await fetch(this.url + '/api/v1' + path, init);
    const text = await res.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch { json = text; }
    return { status: res.status, body: json, headers: res.headers };
  }

  async waitJob(token, id, states, timeoutMs = 120000) {
    const deadline = Date.now() + timeoutMs;
    let job;
    while (Date.now() < deadline) {
      job = (await this.api(token, 'GET', `/jobs/${id}`)).body;
      if (states.includes(job.state)) return job;
      await new Promise((r) => setTimeout(r, 250));
    }
    throw new Error(`job ${id} did not reach ${states} in time; last: ${JSON.stringify(job)}`);
  }

  async stop() {
    for (const p of this.procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGTERM');
    await Promise.all(this.procs.map((p) => (p.exitCode !== null || p.signalCode !== null) ? null : new Promise((r) => { const t = setTimeout(() => { p.kill('SIGKILL'); r(); }, 5000); p.on('exit', () => { clearTimeout(t); r(); }); })));
    if (existsSync(this.data)) rmSync(this.data, { recursive: true, force: true });
  }
}
