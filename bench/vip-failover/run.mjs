// bench/vip-failover: ballast's VIP (elected through etcd, kernel lifetime
// shorter than the lease) next to keepalived (VRRP, advert_int 1) on the same
// namespace lab (lab.mjs): per case, the time until another node answers the
// client and the number of 50 ms samples that showed two holders.
//
//   node bench/vip-failover/run.mjs [--runs N] [--only kill,stop,...] [--modes ballast,keepalived] [--lease-ttl 3s] [--out DIR]
//
// Needs root, iproute2, etcd, arping, curl, keepalived (scripts/setup --bench)
// and dist/ (npm run build). About 1 minute per run per mode.
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { CASE_LABELS, CASES, REPO, VipLab } from './lab.mjs';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '2' },
    only: { type: 'string' },
    modes: { type: 'string', default: 'ballast,keepalived' },
    'lease-ttl': { type: 'string', default: '3s' },
    out: { type: 'string', default: path.join(REPO, 'bench/vip-failover/results') },
  },
});
const runs = Math.max(1, Number(values.runs) || 1);
const cases = values.only ? values.only.split(',') : CASES;
const modes = values.modes.split(',');
for (const c of cases) if (!CASES.includes(c)) throw new Error(`unknown case ${c} (have: ${CASES.join(', ')})`);

const log = (s) => process.stderr.write(`${s}\n`);
const results = [];
for (const mode of modes) {
  log(`== ${mode}: starting the lab`);
  const lab = await VipLab.start({ mode, leaseTTL: values['lease-ttl'], log });
  try {
    for (let r = 0; r < runs; r++) {
      for (const kind of cases) {
        let res;
        try {
          res = await lab.runCase(kind, { boundMs: 20_000, observeMs: 6000 });
        } catch (e) {
          log(`${mode} ${kind} #${r + 1}: ${e.message}`);
          results.push({ mode, kind, run: r + 1, error: e.message, twoHolderSamples: 0 });
          continue;
        }
        log(`${mode} ${kind} #${r + 1}: ${res.from} -> ${res.to ?? 'nobody'} in ${res.answerMs ?? '-'} ms, two-holder samples ${res.twoHolderSamples}/${res.samples}`);
        results.push({ ...res, run: r + 1 });
      }
    }
    results.push({ mode, kind: 'all', twoHolderSamples: lab.twoHolderSamples(0).length, samples: lab.samples.length });
  } finally {
    await lab.close();
  }
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? undefined : s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const cell = (mode, kind) => {
  const rs = results.filter((x) => x.mode === mode && x.kind === kind);
  if (rs.length === 0) return ['–', '–'];
  const ms = rs.map((x) => x.answerMs).filter((x) => x !== undefined);
  const failed = rs.length - ms.length;
  const t = ms.length ? `${(median(ms) / 1000).toFixed(2)} s (${(Math.min(...ms) / 1000).toFixed(2)}…${(Math.max(...ms) / 1000).toFixed(2)})${failed ? `, ${failed} never` : ''}` : 'never';
  const two = rs.map((x) => x.twoHolderSamples);
  return [t, `${two.reduce((a, b) => a + b, 0)} (${two.join(', ')})`];
};
let md = `VIP failover, ${runs} run(s) per case, leaseTTL ${values['lease-ttl']}; time until another node answers the client (median (min…max)), and samples (every 50 ms, over the 6 s after the fault) with two holders (sum (per run))\n\n`;
md += `| case | ${modes.map((m) => `${m}: answered after | ${m}: two-holder samples`).join(' | ')} |\n|---|${modes.map(() => '---|---').join('|')}|\n`;
for (const kind of cases) md += `| ${CASE_LABELS[kind]} | ${modes.map((m) => cell(m, kind).join(' | ')).join(' | ')} |\n`;
process.stdout.write(md);
fs.mkdirSync(values.out, { recursive: true });
fs.writeFileSync(path.join(values.out, 'latest.md'), md);
fs.writeFileSync(path.join(values.out, 'latest.json'), JSON.stringify({ at: new Date().toISOString(), runs, leaseTTL: values['lease-ttl'], results }, null, 2));
