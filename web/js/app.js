// Lathe web UI: a hash router over the views. Each view is `async render(main, params)` and may
// return a cleanup function (closing streams, destroying charts) that runs on navigation.
import { auth } from './api.js';
import { flash, clear, h } from './dom.js';
import * as login from './views/login.js';
import * as jobs from './views/jobs.js';
import * as job from './views/job.js';
import * as files from './views/files.js';
import * as newjob from './views/newjob.js';
import * as compare from './views/compare.js';
import * as workers from './views/workers.js';

const routes = [
  [/^#\/login$/, login.render],
  [/^#\/jobs$/, jobs.render],
  [/^#\/jobs\/([\w-]+)$/, job.render],
  [/^#\/new$/, newjob.render],
  [/^#\/(models|datasets)$/, files.renderList],
  [/^#\/(models|datasets)\/([\w-]+)$/, files.renderDetail],
  [/^#\/compare$/, compare.render],
  [/^#\/workers$/, workers.render],
];

let cleanup = null;

async function route() {
  const main = document.getElementById('main');
  if (cleanup) { try { cleanup(); } catch { /* view already gone */ } cleanup = null; }
  const [path, query] = (location.hash || '#/jobs').split('?');
  const params = new URLSearchParams(query || '');
  document.getElementById('signout').hidden = !auth.token;
  if (!auth.token && path !== '#/login') {
    location.hash = '#/login';
    return;
  }
  for (const a of document.querySelectorAll('nav a')) {
    if (path.startsWith(a.getAttribute('href'))) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  for (const [re, render] of routes) {
    const m = path.match(re);
    if (!m) continue;
    clear(main);
    flash(null);
    try {
      cleanup = (await render(main, m.slice(1), params)) || null;
    } catch (e) {
      main.append(h('p', { class: 'error' }, e.message || String(e)));
    }
    main.focus({ preventScroll: true });
    return;
  }
  location.hash = '#/jobs';
}

window.addEventListener('hashchange', route);
window.addEventListener('lathe:unauthorized', () => {
  auth.clear();
  flash('Your token was refused (expired, revoked or mistyped). Sign in again.');
  location.hash = '#/login';
});
document.getElementById('signout').addEventListener('click', () => {
  auth.clear();
  location.hash = '#/login';
});
route();
