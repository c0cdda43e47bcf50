#!/usr/bin/env node
// The chaos soak from the command line:
//
//   npm run chaos -- --cycles 20            # build, then 20 faults (about 10 s each)
//   node bench/chaos/run.mjs --cycles 6 --faults kill,stop --clients 4
//
// Prints one line per cycle and the report table, writes
// bench/chaos/results/latest.md and latest.json, exits 1 if an acknowledged
// write was lost or a client saw its read revision go backwards.
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { killAll } from './procs.mjs';
import { renderMarkdown, goals } from './report.mjs';
import { FAULTS, REPO, runSoak } from './soak.mjs';

const HELP = `usage: node bench/chaos/run.mjs [--cycles N] [--faults a,b] [--clients N] [--pace MS] [--ballast-node PATH] [--out DIR] [--keep]
  --cycles N           faults to inject, one per cycle (default 10)
  --faults a,b         kinds, taken in turn (default ${FAULTS.join(',')})
  --clients N          client identities writing and reading through ballast (default 4)
  --pace MS            pause between a client's requests (default 20)
  --ballast-node PATH  node binary for ballast (default: this node)
  --out DIR            where latest.md and latest.json go (default bench/chaos/results)
  --keep               keep the work dir (etcd data and logs, ballast log)
`;

let values;
try {
  ({ values } = parseArgs({
    options: {
      cycles: { type: 'string', default: '10' },
      faults: { type: 'string', default: FAULTS.join(',') },
      clients: { type: 'string', default: '4' },
      pace: { type: 'string', default: '20' },
      'ballast-node': { type: 'string' },
      out: { type: 'string', default: path.join(REPO, 'bench/chaos/results') },
      keep: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  }));
} catch (err) {
  process.stderr.write(`${err.message}\n${HELP}`);
  process.exit(2);
}
if (values.help) {
  process.stdout.write(HELP);
  process.exit(0);
}
const int = (v, what, min) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) {
    process.stderr.write(`--${what}: expected a whole number >= ${min}, got "${v}"\n`);
    process.exit(2);
  }
  return n;
};
const cycles = int(values.cycles, 'cycles', 1);
const clients = int(values.clients, 'clients', 1);
const paceMs = int(values.pace, 'pace', 0);
const faults = values.faults.split(',').map((f) => f.trim()).filter(Boolean);
const bad = faults.filter((f) => !FAULTS.includes(f));
if (bad.length || faults.length === 0) {
  process.stderr.write(`--faults: unknown ${bad.join(', ') || '(none given)'} (have ${FAULTS.join(', ')})\n`);
  process.exit(2);
}

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    process.stderr.write(`\n${sig}: stopping etcd and ballast\n`);
    void killAll().finally(() => process.exit(130));
  });
}

const log = (line) => process.stdout.write(`[${new Date().toISOString().slice(11, 19)}] ${line}\n`);
const report = await runSoak({ cycles, faults, clients, paceMs, log, nodeBin: values['ballast-node'] ?? process.execPath, keepDir: values.keep });
const md = renderMarkdown(report);
fs.mkdirSync(values.out, { recursive: true });
fs.writeFileSync(path.join(values.out, 'latest.md'), md);
fs.writeFileSync(path.join(values.out, 'latest.json'), `${JSON.stringify(report, null, 2)}\n`);
process.stdout.write(`\n${md}\nwrote ${path.join(values.out, 'latest.md')} and latest.json\n`);
const failed = goals(report).filter((g) => !g.ok && /lost|regressions/.test(g.goal));
process.exit(failed.length > 0 ? 1 : 0);
