// REST client for /api/v1: bearer token from this tab's sessionStorage, JSON errors surfaced as
// ApiError (code, message, path), and a Server-Sent Events reader built on fetch, because
// EventSource cannot send an Authorization header.

const TOKEN_KEY = 'lathe.token';

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.message ? body.message : `HTTP ${status}`);
    this.status = status;
    this.code = body && body.code ? body.code : 'http_' + status;
    this.path = body && body.path ? body.path : null;
  }
}

export const auth = {
  get token() { return sessionStorage.getItem(TOKEN_KEY); },
  set(token) { sessionStorage.setItem(TOKEN_KEY, token); },
  clear() { sessionStorage.removeItem(TOKEN_KEY); },
};

function headers(extra = {}) {
  const h = { ...extra };
  if (auth.token) h.Authorization = 'Bearer ' + auth.token;
  return h;
}

async function parse(res) {
  const text = await res.text();
  let body = null;
  if (text) {
    try { body = JSON.parse(text); } catch { body = { message: text.slice(0, 300) }; }
  }
  if (!res.ok) {
    if (res.status === 401) window.dispatchEvent(new CustomEvent('lathe:unauthorized'));
    throw new ApiError(res.status, body);
  }
  return body;
}

export async function get(path, params) {
  const q = params ? '?' + new URLSearchParams(Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== '')) : '';
  return parse(await fetch('/api/v1' + path + q, { headers: headers() }));
}

// POST with a JSON body, or with none (actions such as cancel and retry take no body).
export async function post(path, body, extraHeaders = {}) {
  const init = { method: 'POST', headers: headers(extraHeaders) };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  return parse(await fetch('/api/v1' + path, init));
}

export async function del(path) {
  return parse(await fetch('/api/v1' + path, { method: 'DELETE', headers: headers() }));
}

// Upload a File as a raw body with progress (fetch has no upload progress; XHR does).
export function upload(kind, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', `/api/v1/${kind}?name=${encodeURIComponent(file.name)}`);
    xhr.setRequestHeader('Authorization', 'Bearer ' + auth.token);
    xhr.setRequestHeader('Content-Type', 'application/octet-stream');
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { body = { message: xhr.responseText }; }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(xhr.status, body));
    };
    xhr.onerror = () => reject(new ApiError(0, { code: 'network', message: 'network error during upload' }));
    xhr.send(file);
  });
}

// Download with the token (a plain link cannot carry it) and hand the blob to the browser.
export async function download(path, filename) {
  const res = await fetch('/api/v1' + path, { headers: headers() });
  if (!res.ok) await parse(res);
  const url = URL.createObjectURL(await res.blob());
  const a = document.createElement('a');
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// Follows an SSE stream; calls onEvent({id, event, data}) per message and reconnects with
// Last-Event-ID after a drop. Returns a function that stops it.
export function stream(path, onEvent, onError) {
  const ctrl = new AbortController();
  let lastId = null;
  let stopped = false;
  async function run() {
    while (!stopped) {
      try {
        const h = headers({ Accept: 'text/event-stream' });
        if (lastId !== null) h['Last-Event-ID'] = lastId;
        const res = await fetch('/api/v1' + path, { headers: h, signal: ctrl.signal });
        if (!res.ok) { await parse(res); return; }
        const reader = res.body.getReader();
        const dec = new TextDecoder();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let cut;
          while ((cut = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, cut);
            buf = buf.slice(cut + 2);
            const msg = { id: null, event: 'message', data: '' };
            for (const line of block.split('\n')) {
              if (line.startsWith(':')) continue;
              const i = line.indexOf(':');
              const field = i < 0 ? line : line.slice(0, i);
              const val = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
              if (field === 'id') msg.id = val;
              else if (field === 'event') msg.event = val;
              else if (field === 'data') msg.data += (msg.data ? '\n' : '') + val;
            }
            if (msg.id !== null) lastId = msg.id;
            if (msg.data) {
              let data = msg.data;
              try { data = JSON.parse(msg.data); } catch { /* plain text event */ }
              onEvent({ id: msg.id, event: msg.event, data });
            }
          }
        }
      } catch (e) {
        if (stopped || e.name === 'AbortError') return;
        if (e instanceof ApiError) { if (onError) onError(e); return; }
      }
      if (!stopped) await new Promise((r) => setTimeout(r, 1000));
    }
  }
  run();
  return () => { stopped = true; ctrl.abort(); };
}
