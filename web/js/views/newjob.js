// New job: one form per kind, generated from the kind's JSON Schema as served by the server
// (/api/v1/schemas/jobs/{kind}), prefilled with defaults or with a cloned job's spec. The server
// validates with the same schema; its message is shown next to the field its JSON path names.
import { get, post } from '../api.js';
import { h, clear, showError, flash } from '../dom.js';

export async function render(main, _m, params) {
  const { kinds } = await get('/schemas/jobs');
  const schemas = {};
  for (const k of kinds) schemas[k] = await get(`/schemas/jobs/${k}`);
  let prefill = {};
  let kind = params.get('kind') || kinds[0];
  const from = params.get('from');
  if (from) {
    const j = await get(`/jobs/${from}`);
    kind = j.kind;
    prefill = j.spec || {};
  }
  for (const key of ['model', 'dataset']) if (params.get(key)) prefill[key] = params.get(key);
  const files = {
    model: (await get('/models', { limit: 200 })).items,
    dataset: (await get('/datasets', { limit: 200 })).items,
  };

  const formBox = h('div', {});
  const kindSel = h('select', { id: 'kind', onchange: () => { kind = kindSel.value; prefill = {}; draw(); } },
    kinds.map((k) => h('option', { value: k, selected: k === kind }, k)));
  main.append(h('h1', {}, from ? `New job (cloned from ${from})` : 'New job'),
    h('div', { class: 'toolbar' }, h('label', { for: 'kind' }, 'Kind '), kindSel), formBox);

  function draw() {
    const schema = schemas[kind];
    const root = field(schema, '$.spec', prefill, files, true);
    const priority = h('input', { id: 'priority', type: 'number', step: '1', value: '0' });
    const form = h('form', { class: 'card jobform', novalidate: true },
      schema.description ? h('p', { class: 'muted' }, schema.description) : null,
      root.el,
      h('fieldset', {}, h('legend', {}, 'Queue'), h('label', { for: 'priority' }, 'Priority (higher runs first)'), priority),
      h('button', { type: 'submit' }, 'Submit job'));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      for (const el of form.querySelectorAll('.field-error')) el.remove();
      let spec;
      try { spec = root.get(); } catch (e) { showError(e); return; }
      try {
        const job = await post('/jobs', { kind, spec, priority: Number(priority.value) || 0 });
        flash(`Job ${job.id} queued.`, 'info');
        location.hash = `#/jobs/${job.id}`;
      } catch (e) {
        showError(e);
        if (e.path) markField(form, e.path, e.message);
      }
    });
    clear(formBox).append(form);
  }
  draw();
}

function markField(form, path, message) {
  let p = path;
  while (p) {
    const el = form.querySelector(`[data-path="${CSS.escape(p)}"]`);
    if (el) {
      const msg = h('div', { class: 'field-error', role: 'alert' }, message);
      el.after(msg);
      const input = el.matches('input,select,textarea') ? el : el.querySelector('input,select,textarea');
      if (input) { input.setAttribute('aria-invalid', 'true'); input.focus(); }
      return;
    }
    const cut = Math.max(p.lastIndexOf('.'), p.lastIndexOf('['));
    p = cut > 1 ? p.slice(0, cut) : '';
  }
}

let uid = 0;
const idOf = (path) => 'f' + (++uid) + '-' + path.replace(/[^\w]/g, '_');

// Returns {el, get()} for one schema node at a JSON path.
function field(schema, path, value, files, top = false, label = null) {
  const title = schema.title || label || path.split('.').pop();
  const help = schema.description ? h('div', { class: 'help muted' }, schema.description) : null;
  if (schema.oneOf) return oneOfField(schema, path, value, files, title, help);
  const type = Array.isArray(schema.type) ? schema.type[0] : schema.type;
  const init = value !== undefined ? value : schema.default;
  const id = idOf(path);
  if (type === 'object') {
    const children = [];
    const props = schema.properties || {};
    const required = new Set(schema.required || []);
    for (const [k, sub] of Object.entries(props)) {
      const v = init && typeof init === 'object' ? init[k] : undefined;
      const f = field(sub, `${path}.${k}`, v, files, false, k + (required.has(k) ? ' *' : ''));
      children.push([k, f, required.has(k), sub]);
    }
    const body = h('div', { class: 'fields' }, children.map(([, f]) => f.el));
    const optional = !top && !(schema.default !== undefined) && value === undefined;
    const enable = !top ? h('input', { type: 'checkbox', id, checked: !optional }) : null;
    if (enable) { body.hidden = optional; enable.addEventListener('change', () => { body.hidden = !enable.checked; }); }
    const el = top ? h('div', { 'data-path': path }, body)
      : h('fieldset', { 'data-path': path }, h('legend', {}, enable, h('label', { for: id }, ' ' + title)), help, body);
    return { el, get: () => {
      if (enable && !enable.checked) return undefined;
      const out = {};
      for (const [k, f, req, sub] of children) {
        const v = f.get();
        if (v !== undefined) out[k] = v;
        else if (req && sub.default === undefined) throw Object.assign(new Error(`${k} is required`), { path: `${path}.${k}` });
      }
      return out;
    } };
  }
  let input;
  if (schema['x-lathe-file']) {
    const list = files[schema['x-lathe-file']] || [];
    input = h('select', { id }, h('option', { value: '' }, `– choose a ${schema['x-lathe-file']} –`),
      list.map((o) => h('option', { value: o.id, selected: o.id === init }, `${o.name} (${o.id})`)));
  } else if (schema.enum) {
    input = h('select', { id }, schema.enum.map((v) => h('option', { value: JSON.stringify(v), selected: v === init }, String(v))));
  } else if (type === 'boolean') {
    input = h('input', { id, type: 'checkbox', checked: !!init });
  } else if (type === 'integer' || type === 'number') {
    input = h('input', { id, type: 'number', step: type === 'integer' ? '1' : 'any', min: schema.minimum, max: schema.maximum, value: init ?? '' });
  } else if (type === 'array') {
    input = h('input', { id, type: 'text', value: Array.isArray(init) ? init.join(', ') : '', placeholder: 'comma-separated' });
  } else {
    input = h('input', { id, type: 'text', value: init ?? '', maxlength: schema.maxLength });
  }
  input.dataset.path = path;
  const el = h('div', { class: 'field' }, h('label', { for: id }, title), input, help);
  return { el, get: () => {
    if (schema['x-lathe-file']) return input.value || undefined;
    if (schema.enum) return JSON.parse(input.value);
    if (type === 'boolean') return input.checked;
    if (input.value === '') return undefined;
    if (type === 'integer' || type === 'number') return Number(input.value);
    if (type === 'array') {
      const itemType = schema.items && schema.items.type;
      return input.value.split(',').map((s) => s.trim()).filter(Boolean).map((s) => (itemType === 'number' || itemType === 'integer' ? Number(s) : s));
    }
    return input.value;
  } };
}

function oneOfField(schema, path, value, files, title, help) {
  const name = idOf(path);
  const branches = schema.oneOf.map((sub, i) => {
    const bval = matches(sub, value) ? value : undefined;
    return { sub, f: field({ ...sub, title: sub.title || title }, path, bval, files, true), label: sub.title || describe(sub, i) };
  });
  let chosen = Math.max(0, branches.findIndex((b) => matches(b.sub, value)));
  const body = h('div', {});
  const radios = branches.map((b, i) => h('label', {}, h('input', { type: 'radio', name, value: String(i), checked: i === chosen, onchange: () => { chosen = i; show(); } }), ' ' + b.label));
  function show() { clear(body).append(branches[chosen].f.el); }
  show();
  return { el: h('fieldset', { 'data-path': path }, h('legend', {}, title), help, h('div', { class: 'choices' }, radios), body), get: () => branches[chosen].f.get() };
}

function describe(sub, i) {
  if (sub.required && sub.required.length) return sub.required.join(' + ');
  if (sub.enum) return 'one of ' + sub.enum.join(', ');
  return sub.type || `option ${i + 1}`;
}

function matches(sub, value) {
  if (value === undefined) return false;
  if (sub.required) return value && typeof value === 'object' && sub.required.every((k) => k in value);
  if (sub.enum) return sub.enum.includes(value);
  if (sub.type === 'string') return typeof value === 'string';
  return false;
}
