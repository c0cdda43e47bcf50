// The status page: one self-contained HTML document (no framework, no CDN:
// it must work on an air-gapped control-plane node). It polls /status every
// two seconds and renders it; throughput is the byte delta between polls.

export const STATUS_PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ballast</title>
<style>
  :root { --up:#1a7f37; --down:#cf222e; --ejected:#bc4c00; --unknown:#6e7781; --draining:#8250df; --bg:#f6f8fa; --fg:#1f2328; --muted:#656d76; --line:#d0d7de; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: var(--bg); }
  header { display: flex; align-items: baseline; gap: 16px; padding: 14px 24px; background: #fff; border-bottom: 1px solid var(--line); }
  header h1 { font-size: 18px; margin: 0; }
  header .meta { color: var(--muted); font-size: 13px; }
  #ready { font-weight: 600; padding: 2px 10px; border-radius: 12px; color: #fff; }
  main { padding: 16px 24px; max-width: 1400px; }
  section { background: #fff; border: 1px solid var(--line); border-radius: 8px; margin-bottom: 16px; overflow: hidden; }
  section h2 { font-size: 15px; margin: 0; padding: 10px 14px; border-bottom: 1px solid var(--line); display: flex; gap: 12px; align-items: baseline; }
  section h2 .sub { font-weight: 400; color: var(--muted); font-size: 13px; }
  table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
  th, td { text-align: left; padding: 6px 14px; border-bottom: 1px solid #eaeef2; white-space: nowrap; }
  th { font-size: 12px; color: var(--muted); font-weight: 600; text-transform: uppercase; letter-spacing: .03em; }
  td.reason { white-space: normal; color: var(--muted); }
  tr:last-child td { border-bottom: 0; }
  .state { display: inline-flex; align-items: center; gap: 6px; font-weight: 600; }
  .dot { width: 10px; height: 10px; border-radius: 50%; display: inline-block; }
  .num { text-align: right; }
  .panic { color: #fff; background: var(--down); padding: 1px 8px; border-radius: 10px; font-size: 12px; }
  .warn { color: var(--ejected); }
  #error { color: var(--down); padding: 0 24px; }
</style>
</head>
<body>
<header>
  <h1>ballast</h1>
  <span id="ready">…</span>
  <span class="meta" id="meta"></span>
</header>
<div id="error"></div>
<main id="main"><p>Loading /status…</p></main>
<script>
"use strict";
const colors = { up: 'var(--up)', down: 'var(--down)', ejected: 'var(--ejected)', unknown: 'var(--unknown)', draining: 'var(--draining)' };
let previous = null;
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
const bytes = (n) => n < 1024 ? n + ' B' : n < 1048576 ? (n / 1024).toFixed(1) + ' KiB' : n < 1073741824 ? (n / 1048576).toFixed(1) + ' MiB' : (n / 1073741824).toFixed(2) + ' GiB';
const rate = (n) => bytes(Math.max(0, Math.round(n))) + '/s';
const ago = (s) => s < 60 ? s + 's' : s < 3600 ? Math.floor(s / 60) + 'm' : s < 86400 ? Math.floor(s / 3600) + 'h' : Math.floor(s / 86400) + 'd';

function render(st, dt) {
  const prevEp = new Map();
  if (previous) for (const c of previous.clusters) for (const e of c.endpoints) prevEp.set(c.name + '/' + e.id, e);
  const ready = document.getElementById('ready');
  ready.textContent = st.ready ? 'ready' : (st.state === 'draining' ? 'draining' : 'not ready');
  ready.style.background = st.ready ? 'var(--up)' : 'var(--down)';
  ready.title = st.notReady.join('\\n');
  document.getElementById('meta').textContent = 'v' + st.version + ' · node ' + st.node + ' · pid ' + st.pid + ' · up ' + ago(st.uptimeSeconds) + ' · ' + st.config + ' · reloads ' + st.reloads.ok + ' ok / ' + st.reloads.failed + ' failed';
  let html = '';
  for (const c of st.clusters) {
    html += '<section data-cluster="' + esc(c.name) + '"><h2>' + esc(c.name) + ' <span class="sub">' + esc(c.balance) + ' · check ' + esc(c.check) + ' · ' + c.healthy + '/' + c.endpoints.filter((e) => e.state !== 'draining').length + ' healthy' + (c.tls ? ' · mTLS ' + esc(c.tls) : '') + (c.affinity ? ' · ' + c.affinity.placements + ' placements' : '') + '</span>' + (c.panic ? '<span class="panic">PANIC: routing to all</span>' : '') + '</h2>';
    html += '<table><thead><tr><th>endpoint</th><th>state</th><th>for</th><th class="num">active</th><th class="num">total</th><th class="num">in</th><th class="num">out</th><th>last check</th><th>etcd</th><th>reason</th></tr></thead><tbody>';
    for (const e of c.endpoints) {
      const p = prevEp.get(c.name + '/' + e.id);
      const up = p && dt > 0 ? rate((e.bytesUp - p.bytesUp) / dt) : '–';
      const down = p && dt > 0 ? rate((e.bytesDown - p.bytesDown) / dt) : '–';
      const check = e.lastCheck ? (e.lastCheck.ok === false ? '<span class="warn">fail</span>' : 'ok') + ' ' + e.lastCheck.durationMs + 'ms, ' + ago(Math.round(e.lastCheck.agoMs / 1000)) + ' ago' : '–';
      const etcd = e.etcd ? (e.etcd.isLeader ? 'leader' : 'follower') + ' · idx ' + e.etcd.raftIndex + (e.etcd.alarms.length ? ' · ' + esc(e.etcd.alarms.join(',')) : '') : '';
      html += '<tr data-endpoint="' + esc(e.id) + '" data-state="' + esc(e.state) + '"><td>' + esc(e.id) + '</td><td><span class="state"><span class="dot" style="background:' + colors[e.state] + '"></span>' + esc(e.state) + '</span></td><td>' + ago(e.sinceSeconds) + '</td><td class="num">' + e.active + '</td><td class="num">' + e.total + '</td><td class="num">' + up + '</td><td class="num">' + down + '</td><td>' + check + '</td><td>' + etcd + '</td><td class="reason">' + esc(e.reason) + '</td></tr>';
    }
    html += '</tbody></table></section>';
  }
  html += '<section><h2>listeners</h2><table><thead><tr><th>name</th><th>listen</th><th>cluster</th><th>tls</th><th class="num">active</th><th>results</th><th>tls refusals</th></tr></thead><tbody>';
  for (const l of st.listeners) {
    const fmt = (o) => Object.entries(o).map(([k, v]) => esc(k) + ' ' + v).join(', ') || '–';
    html += '<tr data-listener="' + esc(l.name) + '"><td>' + esc(l.name) + '</td><td>' + esc(l.listen) + '</td><td>' + esc(l.cluster) + '</td><td>' + esc(l.tls ?? 'passthrough') + '</td><td class="num">' + l.active + ' / ' + l.maxConnections + '</td><td class="reason">' + fmt(l.results) + '</td><td class="reason">' + fmt(l.tlsRefusals) + '</td></tr>';
  }
  html += '</tbody></table></section>';
  if (st.tls.length) {
    html += '<section><h2>certificates</h2><table><thead><tr><th>profile</th><th>expires in</th><th>rotations</th><th>subject</th><th>reason</th></tr></thead><tbody>';
    for (const t of st.tls) {
      const soon = t.expiresInSeconds !== null && t.expiresInSeconds < 14 * 86400;
      html += '<tr><td>' + esc(t.profile) + '</td><td class="' + (soon ? 'warn' : '') + '">' + (t.expiresInSeconds === null ? '–' : ago(t.expiresInSeconds)) + '</td><td>' + t.rotations + ' ok / ' + t.rotationFailures + ' refused</td><td>' + esc((t.certs.find((c) => c.role === 'cert') || t.certs[0] || {}).subject) + '</td><td class="reason">' + esc(t.lastError ?? '') + '</td></tr>';
    }
    html += '</tbody></table></section>';
  }
  if (st.backup) {
    const b = st.backup;
    html += '<section data-backup><h2>backups</h2><table><tbody><tr><th>newest verified snapshot</th><td>' + esc(b.lastFile ?? 'none yet') + '</td><th>revision</th><td>' + esc(b.lastRevision ?? '–') + '</td><th>taken</th><td>' + esc(b.lastSuccessAt ?? '–') + '</td></tr><tr><th>last drill</th><td>' + esc(b.lastDrillVerdict ?? 'never') + '</td><th>at</th><td>' + esc(b.lastDrillAt ?? '–') + '</td><th>last error</th><td class="reason">' + esc(b.lastError ?? '') + '</td></tr></tbody></table></section>';
  }
  if (st.vip) {
    const v = st.vip;
    html += '<section data-vip><h2>virtual IP</h2><table><tbody><tr><th>address</th><td>' + esc(v.address) + ' on ' + esc(v.interface) + '</td><th>held by</th><td class="' + (v.holder ? '' : 'warn') + '">' + esc(v.holder ?? 'nobody (as seen from here)') + (v.holding ? ' (this node)' : '') + '</td><th>since</th><td>' + esc(v.holderSince ?? '–') + '</td></tr><tr><th>this node</th><td>' + esc(v.node) + ': ' + esc(v.state) + '</td><th>lease / address lifetime</th><td>' + v.leaseTTLSeconds + ' s / ' + v.addressLifetimeSeconds + ' s</td><th>last error</th><td class="reason">' + esc(v.lastError ?? '') + '</td></tr></tbody></table></section>';
  }
  document.getElementById('main').innerHTML = html;
}

let lastAt = 0;
async function poll() {
  try {
    const res = await fetch('status', { cache: 'no-store' });
    const st = await res.json();
    const now = performance.now();
    render(st, lastAt ? (now - lastAt) / 1000 : 0);
    previous = st;
    lastAt = now;
    document.getElementById('error').textContent = '';
  } catch (err) {
    document.getElementById('error').textContent = 'cannot reach /status: ' + err;
  }
  setTimeout(poll, 2000);
}
poll();
</script>
</body>
</html>
`;
