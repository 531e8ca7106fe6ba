// Models and datasets: drag-and-drop (or picker) upload with progress and the SHA-256 shown on
// completion, the list, and a detail page with the server's inspect summary.
import { get, del, upload, download } from '../api.js';
import { h, clear, table, fmtBytes, fmtTime, showError, flash, progressBar } from '../dom.js';
import { renderInspect } from './results.js';

const TITLES = { models: 'Models', datasets: 'Datasets' };
const HINTS = { models: 'ONNX models (.onnx)', datasets: 'HDF5 datasets (.h5): one group per split with x and y, or jpeg + offsets + y' };

export async function renderList(main, [kind]) {
  const listBox = h('div', {});
  const status = h('div', { class: 'upload-status', 'aria-live': 'polite' });
  const picker = h('input', { type: 'file', id: 'file-input', class: 'sr-only', multiple: true, accept: kind === 'models' ? '.onnx' : '.h5,.hdf5' });
  const zone = h('div', { class: 'dropzone', tabindex: '0', role: 'button', 'aria-describedby': 'drop-hint',
    onclick: () => picker.click(), onkeydown: (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); picker.click(); } } },
  h('strong', {}, `Drop ${kind === 'models' ? 'model' : 'dataset'} files here, or choose files`),
  h('div', { id: 'drop-hint', class: 'muted' }, HINTS[kind]));
  zone.addEventListener('dragover', (e) => { e.preventDefault(); zone.classList.add('over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (e) => { e.preventDefault(); zone.classList.remove('over'); send([...e.dataTransfer.files]); });
  picker.addEventListener('change', () => { send([...picker.files]); picker.value = ''; });

  async function send(files) {
    for (const file of files) {
      const row = h('div', { class: 'upload' }, h('span', {}, file.name));
      const bar = h('div', {});
      row.append(bar);
      status.append(row);
      try {
        const obj = await upload(kind, file, (f) => clear(bar).append(progressBar({ fraction: f })));
        clear(bar).append(h('span', { class: 'ok' }, 'uploaded, SHA-256 '), h('code', { class: 'hash', 'data-sha256': obj.sha256 }, obj.sha256));
        load();
      } catch (e) {
        clear(bar).append(h('span', { class: 'error' }, `refused: ${e.message}`));
      }
    }
  }

  async function load() {
    let res;
    try { res = await get(`/${kind}`, { limit: 200 }); } catch (e) { showError(e); return; }
    clear(listBox).append(table([
      { label: 'Name', value: (o) => h('a', { href: `#/${kind}/${o.id}` }, o.name) },
      { label: 'Size', value: (o) => fmtBytes(o.size), class: 'num' },
      { label: 'SHA-256', value: (o) => h('code', { class: 'hash' }, o.sha256.slice(0, 16) + '…') },
      { label: 'Uploaded', value: (o) => fmtTime(o.created_at) },
      { label: h('span', { class: 'sr-only' }, 'Actions'), value: (o) => h('button', { type: 'button', class: 'link', onclick: () => remove(o) }, 'Delete') },
    ], res.items, { empty: `No ${kind} yet.` }));
  }
  async function remove(o) {
    if (!confirm(`Delete ${o.name}?`)) return;
    try { await del(`/${kind}/${o.id}`); flash(`${o.name} deleted.`, 'info'); load(); } catch (e) { showError(e); }
  }
  main.append(h('h1', {}, TITLES[kind]), zone, picker, status, listBox);
  await load();
}

export async function renderDetail(main, [kind, id]) {
  const o = await get(`/${kind}/${id}`);
  main.append(h('h1', {}, o.name),
    h('dl', { class: 'facts' },
      h('dt', {}, 'Id'), h('dd', {}, h('code', {}, o.id)),
      h('dt', {}, 'Size'), h('dd', {}, fmtBytes(o.size)),
      h('dt', {}, 'SHA-256'), h('dd', {}, h('code', { class: 'hash' }, o.sha256)),
      h('dt', {}, 'Uploaded'), h('dd', {}, fmtTime(o.created_at))),
    h('div', { class: 'toolbar' },
      h('button', { type: 'button', onclick: () => download(`/${kind}/${id}/content`, o.name).catch(showError) }, 'Download'),
      h('a', { class: 'button', href: `#/new?kind=${kind === 'models' ? 'inspect' : 'train'}&${kind === 'models' ? 'model' : 'dataset'}=${o.id}` }, 'Use in a job')));
  const box = h('section', { 'aria-labelledby': 'sum-title' }, h('h2', { id: 'sum-title' }, 'Summary'));
  main.append(box);
  renderInspect(box, o.summary);
}
