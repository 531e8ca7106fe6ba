// Workers seen by the server: name, device, last heartbeat, current job.
import { get } from '../api.js';
import { h, table, fmtTime } from '../dom.js';

export async function render(main) {
  const res = await get('/workers');
  main.append(h('h1', {}, 'Workers'), table([
    { label: 'Worker', value: (w) => w.name },
    { label: 'Device', value: (w) => w.device },
    { label: 'Last seen', value: (w) => fmtTime(w.last_seen) },
    { label: 'Job', value: (w) => (w.job ? h('a', { href: `#/jobs/${w.job}` }, w.job) : 'idle') },
  ], res.items, { empty: 'No worker has contacted the server yet. Start one with lathe-worker --server URL --token TOKEN.' }));
}
