// Turning raw runs into metrics, and metrics into the plain-text table.
//
// Every cell is the median over rounds with (min–max). Ratios are computed
// per round (ballast_i / haproxy_i, …) and the median of those is shown: the
// targets of one round ran back to back, so pairing them cancels most of the
// drift of a shared, noisy machine.

export const TARGETS = ['direct', 'haproxy', 'ballast'];
const PROXIES = ['haproxy', 'ballast'];

/** Flat metrics of one run from the load result and the CPU window. */
export function runMetrics(kind, { r, cpu }) {
  const proxyCpu = cpu?.proxy;
  const m = {
    errors: r.errors,
    proxyCpuSec: proxyCpu,
    proxyCores: proxyCpu === undefined ? undefined : proxyCpu / cpu.wallSec,
    proxySysShare: proxyCpu ? cpu.proxySys / proxyCpu : undefined,
    backendCores: cpu?.backend === undefined ? undefined : cpu.backend / cpu.wallSec,
    machineCores: cpu?.machine === undefined ? undefined : cpu.machine / cpu.wallSec,
  };
  if (kind === 'http' || kind === 'etcd') {
    Object.assign(m, {
      rps: r.rps,
      p50us: r.p50us,
      p99us: r.p99us,
      requests: r.requests,
      reqPerCpuSec: proxyCpu ? r.requests / proxyCpu : undefined,
      resumedShare: r.resumedShare,
    });
  } else {
    Object.assign(m, {
      mbps: r.mbps,
      bytes: r.bytes,
      mbPerCpuSec: proxyCpu ? r.bytes / 1e6 / proxyCpu : undefined,
    });
  }
  return m;
}

/** Metrics that only make sense relative to the direct run of the same round. */
export function addRelative(kind, roundRuns) {
  if (kind !== 'http' && kind !== 'etcd') return;
  const d = roundRuns.direct?.m;
  for (const t of PROXIES) {
    const m = roundRuns[t]?.m;
    if (!m || !d) continue;
    m.addP50us = m.p50us - d.p50us;
    m.addP99us = m.p99us - d.p99us;
  }
}

// Rows of the table. proxyOnly: no value for direct, so no proxy/direct ratio.
// sum: add up over rounds instead of the median (error counts).
const ROWS = {
  http: [
    { key: 'rps', label: 'requests/s' },
    { key: 'p50us', label: 'p50 latency (µs)' },
    { key: 'p99us', label: 'p99 latency (µs)' },
    { key: 'addP50us', label: 'added p50 vs direct (µs)', proxyOnly: true, signed: true },
    { key: 'addP99us', label: 'added p99 vs direct (µs)', proxyOnly: true, signed: true },
    { key: 'reqPerCpuSec', label: 'requests per proxy CPU-s', proxyOnly: true },
    { key: 'proxyCores', label: 'proxy CPU (cores busy)', proxyOnly: true, digits: 2 },
    { key: 'proxySysShare', label: 'proxy CPU in kernel (share)', proxyOnly: true, digits: 2 },
    { key: 'backendCores', label: 'backend CPU (cores busy)', digits: 2 },
    { key: 'machineCores', label: 'whole machine (cores busy)', digits: 2 },
    { key: 'resumedShare', label: 'client TLS sessions resumed (share)', digits: 2, optional: true },
    { key: 'errors', label: 'errors (all rounds)', sum: true },
  ],
  etcd: [
    { key: 'rps', label: 'etcd ops/s (put + range)' },
    { key: 'p50us', label: 'p50 op latency (µs)' },
    { key: 'p99us', label: 'p99 op latency (µs)' },
    { key: 'addP50us', label: 'added p50 vs direct (µs)', proxyOnly: true, signed: true },
    { key: 'addP99us', label: 'added p99 vs direct (µs)', proxyOnly: true, signed: true },
    { key: 'reqPerCpuSec', label: 'ops per proxy CPU-s', proxyOnly: true },
    { key: 'proxyCores', label: 'proxy CPU (cores busy)', proxyOnly: true, digits: 2 },
    { key: 'proxySysShare', label: 'proxy CPU in kernel (share)', proxyOnly: true, digits: 2 },
    { key: 'backendCores', label: 'etcd CPU, 3 members (cores busy)', digits: 2 },
    { key: 'machineCores', label: 'whole machine (cores busy)', digits: 2 },
    { key: 'errors', label: 'errors (all rounds)', sum: true },
  ],
  bulk: [
    { key: 'mbps', label: 'throughput (MB/s)' },
    { key: 'mbPerCpuSec', label: 'MB per proxy CPU-s', proxyOnly: true },
    { key: 'proxyCores', label: 'proxy CPU (cores busy)', proxyOnly: true, digits: 2 },
    { key: 'proxySysShare', label: 'proxy CPU in kernel (share)', proxyOnly: true, digits: 2 },
    { key: 'backendCores', label: 'sink CPU (cores busy)', digits: 2 },
    { key: 'machineCores', label: 'whole machine (cores busy)', digits: 2 },
    { key: 'errors', label: 'errors (all rounds)', sum: true },
  ],
};

export function median(xs) {
  const v = xs.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return undefined;
  const h = v.length >> 1;
  return v.length % 2 ? v[h] : (v[h - 1] + v[h]) / 2;
}

function values(rounds, target, key) {
  return rounds.map((r) => r[target]?.m?.[key]).filter((x) => typeof x === 'number' && Number.isFinite(x));
}

function pairedRatio(rounds, num, den, key) {
  return median(
    rounds.map((r) => {
      const a = r[num]?.m?.[key];
      const b = r[den]?.m?.[key];
      return typeof a === 'number' && typeof b === 'number' && b > 0 && a >= 0 ? a / b : undefined;
    }),
  );
}

/** Summary of one scenario: per row, per target median/min/max, and ratios. */
export function summarize(kind, rounds) {
  const rows = ROWS[kind].filter((row) => !row.optional || TARGETS.some((t) => values(rounds, t, row.key).length > 0));
  return rows.map((row) => {
    const cells = {};
    for (const t of TARGETS) {
      if (row.proxyOnly && t === 'direct') continue;
      const v = values(rounds, t, row.key);
      if (v.length === 0) continue;
      cells[t] = row.sum ? { median: v.reduce((a, b) => a + b, 0) } : { median: median(v), min: Math.min(...v), max: Math.max(...v) };
    }
    const ratios = row.sum
      ? {}
      : {
          'ballast/haproxy': pairedRatio(rounds, 'ballast', 'haproxy', row.key),
          'haproxy/direct': row.proxyOnly ? undefined : pairedRatio(rounds, 'haproxy', 'direct', row.key),
          'ballast/direct': row.proxyOnly ? undefined : pairedRatio(rounds, 'ballast', 'direct', row.key),
        };
    return { ...row, cells, ratios };
  });
}

export function fmt(v, { digits, signed } = {}) {
  if (v === undefined || v === null || Number.isNaN(v)) return '—';
  const sign = signed && v > 0 ? '+' : '';
  if (digits !== undefined) return sign + v.toFixed(digits);
  const a = Math.abs(v);
  let s;
  if (a >= 1e6) s = `${(v / 1e6).toFixed(2)}M`;
  else if (a >= 1e5) s = `${(v / 1e3).toFixed(0)}k`;
  else if (a >= 1e4) s = `${(v / 1e3).toFixed(1)}k`;
  else if (a >= 100 || Number.isInteger(v)) s = v.toFixed(0);
  else if (a >= 10) s = v.toFixed(1);
  else s = v.toFixed(2);
  return sign + s;
}

function cellText(c, row, showRange) {
  if (!c) return '—';
  const m = fmt(c.median, row);
  if (!showRange || c.min === undefined || c.min === c.max) return m;
  return `${m} (${fmt(c.min, row)}…${fmt(c.max, row)})`;
}

const ratioText = (r) => (r === undefined ? '—' : `${r.toFixed(2)}x`);

/** The plain-text table of one scenario. */
export function renderScenario(s, summary, nRounds) {
  const showRange = nRounds > 1;
  const header = ['metric', ...TARGETS, 'ballast/haproxy', 'haproxy/direct', 'ballast/direct'];
  const lines = [header];
  for (const row of summary) {
    lines.push([
      row.label,
      ...TARGETS.map((t) => cellText(row.cells[t], row, showRange)),
      ratioText(row.ratios['ballast/haproxy']),
      ratioText(row.ratios['haproxy/direct']),
      ratioText(row.ratios['ballast/direct']),
    ]);
  }
  const widths = header.map((_, i) => Math.max(...lines.map((l) => [...l[i]].length)));
  const pad = (s, w, left) => (left ? s + ' '.repeat(w - [...s].length) : ' '.repeat(w - [...s].length) + s);
  const text = lines.map((l) => l.map((c, i) => pad(c, widths[i], i === 0)).join('  ').trimEnd());
  text.splice(1, 0, widths.map((w) => '-'.repeat(w)).join('  '));
  return text.join('\n');
}
