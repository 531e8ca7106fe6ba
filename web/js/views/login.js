// Sign-in: the token is checked against the API and kept in sessionStorage (this tab only).
import { auth, get } from '../api.js';
import { h, showError } from '../dom.js';

export async function render(main) {
  const input = h('input', { id: 'token', type: 'password', autocomplete: 'off', required: true, spellcheck: 'false', size: '50' });
  const form = h('form', { class: 'card narrow', 'aria-labelledby': 'login-title' },
    h('h1', { id: 'login-title' }, 'Sign in'),
    h('p', {}, 'Paste an API token. `lathe-server token create --scope admin` prints one; the demo printed one when it started.'),
    h('label', { for: 'token' }, 'Token'), input,
    h('button', { type: 'submit' }, 'Sign in'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    auth.set(input.value.trim());
    try {
      await get('/jobs', { limit: 1 });
      location.hash = '#/jobs';
    } catch (e) {
      auth.clear();
      showError(e.status === 401 ? { message: 'That token is not valid: check it was copied whole, or create a new one.' } : e);
    }
  });
  main.append(form);
  input.focus();
}
