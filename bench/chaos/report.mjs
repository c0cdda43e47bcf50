// The soak report as Markdown: one row per fault kind, totals, ballast's
// memory and descriptors, and the issue's goals checked.

const s = (ms) => (ms === undefined ? '-' : ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`);
const mib = (kib) => (kib === undefined ? '-' : `${(kib / 1024).toFixed(1)} MiB`);

export function goals(report) {
  const k = report.byKind;
  const out = [
    { goal: '0 acknowledged writes lost', ok: report.totals.lost === 0 && report.totals.revisionMismatches === 0, got: `${report.totals.lost} lost, ${report.totals.revisionMismatches} stored at another revision` },
    { goal: '0 revision regressions', ok: report.totals.regressions === 0, got: `${report.totals.regressions} reads in ${report.totals.regressionEvents ?? '?'} events` },
  ];
  // Leader victims add etcd's own election (1 s election timeout, then a
  // campaign) to the window, which no proxy can hide: judged separately.
  for (const [kind, limit, what] of [['kill', 1000, 'kill -9'], ['stop', 2000, 'SIGSTOP']]) {
    const x = k[kind];
    if (!x) continue;
    out.push({ goal: `${what}: error window < ${limit / 1000} s (every victim)`, ok: x.worstMs < limit, got: `worst ${s(x.worstMs)}, median ${s(x.medianMs)}` });
    if (x.byRole.follower) out.push({ goal: `${what}: error window < ${limit / 1000} s (follower victims: ballast's part alone)`, ok: x.byRole.follower.worstMs < limit, got: `worst ${s(x.byRole.follower.worstMs)} over ${x.byRole.follower.count}, median ${s(x.byRole.follower.medianMs)}` });
  }
  const lp = report.ballast.longestProcess;
  if (lp) {
    // V8 grows its heap for a while and then collects: "flat" means no trend,
    // judged as the peak of the last third of one process's samples against
    // the peak of its first third (at least 9 samples, else not judged).
    const own = report.ballast.samples.filter((x) => x.pid === lp.pid);
    if (own.length >= 9) {
      const third = Math.floor(own.length / 3);
      const peak = (xs) => Math.max(...xs.map((x) => x.rssKiB));
      const early = peak(own.slice(0, third));
      const late = peak(own.slice(-third));
      out.push({ goal: 'RSS flat (one process: peak of the last third <= 1.1 x peak of the first third)', ok: late <= 1.1 * early, got: `${mib(early)} -> ${mib(late)} over cycles ${lp.fromCycle}-${lp.toCycle} (first ${mib(lp.rssKiB.first)}, max ${mib(lp.rssKiB.max)}, last ${mib(lp.rssKiB.last)})` });
    } else {
      out.push({ goal: 'RSS flat (one process)', ok: true, got: `not judged: the longest-lived process has ${own.length} samples (restart faults replace it; run without them for this)` });
    }
    out.push({ goal: 'open fds flat (one process, last <= first + 10)', ok: lp.fds.last <= lp.fds.first + 10, got: `${lp.fds.first} -> ${lp.fds.last} (max ${lp.fds.max})` });
  }
  return out;
}

export function renderMarkdown(r) {
  const L = [];
  L.push(`# ballast chaos soak`, '');
  L.push(`${r.date} — ${r.settings.cycles} cycles, ${r.settings.clients} clients, faults in turn: ${r.settings.faults.join(', ')}; ${(r.durationMs / 60000).toFixed(1)} min total, ${s(r.perCycleMs)} per cycle on average (${r.settings.cpus} CPUs).`, '');
  L.push(`Setup: etcd ${r.settings.etcd}; ballast ${r.settings.ballast}; clients use etcd3 (grpc-js) with a 1 s deadline per call, no retry policy, reconnect backoff 50-500 ms, one write and one serializable read every ${r.settings.paceMs} ms each.`, '');
  L.push(`Versions: ${r.versions.ballast}; soak ${r.versions.soakNode}; ${r.versions.etcd}; etcd3 client ${r.versions.etcd3Client}; commit ${r.versions.commit}; kernel ${r.versions.kernel}.`, '');
  L.push('| fault | count | clients hit / client-faults | failed writes | median window | worst window | leader victims (worst) | follower victims (worst) | mean cycle |');
  L.push('|---|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const [kind, k] of Object.entries(r.byKind)) {
    const role = (x) => (x ? `${x.count} (${s(x.worstMs)})` : '-');
    L.push(`| ${k.label} (\`${kind}\`) | ${k.count} | ${k.affected} / ${k.clientFaults} | ${k.failedWrites} | ${s(k.medianMs)} | ${s(k.worstMs)} | ${role(k.byRole.leader)} | ${role(k.byRole.follower)} | ${s(k.meanCycleMs)} |`);
  }
  L.push('', 'Error window: per client and fault, from the start of the first write that failed to the next acknowledged write (median and worst over the clients that saw one).', '');
  const t = r.totals;
  L.push('| totals | |', '|---|---:|');
  L.push(`| acknowledged writes | ${t.ackedWrites} |`);
  L.push(`| lost (acked, not readable from the members) | ${t.lost} |`);
  L.push(`| stored at another revision than acked | ${t.revisionMismatches} |`);
  L.push(`| serializable reads | ${t.reads} |`);
  L.push(`| regressions: reads returning a lower revision than the same client read before | ${t.regressions} (in ${t.regressionEvents ?? '?'} client-fault events) |`);
  L.push(`| failed writes / failed reads | ${t.writeFailures} / ${t.readFailures} |`);
  L.push(`| member changes seen by clients | ${t.memberMoves} |`);
  L.push(`| fault errors / recovery timeouts | ${t.faultErrors} / ${t.recoveryTimeouts} |`);
  const b = r.ballast;
  L.push('', '| ballast process | RSS | open fds |', '|---|---:|---:|');
  L.push(`| first sample (cycle 0) | ${mib(b.rssKiB.first)} | ${b.fds.first} |`);
  L.push(`| last sample | ${mib(b.rssKiB.last)} | ${b.fds.last} |`);
  L.push(`| max | ${mib(b.rssKiB.max)} | ${b.fds.max} |`);
  if (b.longestProcess) {
    const lp = b.longestProcess;
    L.push(`| longest-lived process (cycles ${lp.fromCycle}-${lp.toCycle}, ${lp.samples} samples): first / last / max | ${mib(lp.rssKiB.first)} / ${mib(lp.rssKiB.last)} / ${mib(lp.rssKiB.max)} | ${lp.fds.first} / ${lp.fds.last} / ${lp.fds.max} |`);
  }
  L.push('', `ballast was started ${b.starts} time(s) (the restart fault replaces the process: RSS and fds are compared within one process).`, '');
  L.push('| goal | result | |', '|---|---|---|');
  for (const g of goals(r)) L.push(`| ${g.goal} | ${g.ok ? 'met' : '**not met**'} | ${g.got} |`);
  if (t.regressionDetails.length) {
    L.push('', 'Regressions (one row per client, cycle, member and revision; first 30):', '', '| client | cycle | fault | at | reads | lasted | read rev | earlier max | behind by | member | earlier member |', '|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---|');
    for (const x of t.regressionDetails) L.push(`| ${x.client} | ${x.cycle + 1} | ${x.kind} | ${s(x.offsetMs)} | ${x.reads} | ${s(x.lastedMs)} | ${x.rev} | ${x.prevMax} | ${x.behindBy} | ${x.member} | ${x.prevMember} |`);
  }
  if (t.lostKeys.length) L.push('', `Lost keys (first 20): ${t.lostKeys.join(', ')}`);
  if (t.problems.length) L.push('', 'Problems:', ...t.problems.map((p) => `- ${p}`));
  const errs = r.cycles.filter((c) => c.error || c.recoveryTimeout);
  if (errs.length) L.push('', 'Fault errors and recovery timeouts:', ...errs.map((c) => `- cycle ${c.cycle + 1} ${c.kind}: ${c.error ?? ''} ${c.recoveryTimeout ?? ''}`));
  if (b.logErrors.length) L.push('', 'ballast error-level log lines (digits replaced by N):', ...b.logErrors.map((e) => `- ${e.n}× ${e.msg}`));
  const m = b.metrics;
  L.push('', `ballast metrics at the end: affinity moves ${m.affinityMoves.map((x) => `${x.reason}=${x.value}`).join(' ')}, behind moves ${m.affinityBehind}; listener results ${m.listener.map((x) => `${x.result}=${x.value}`).join(' ')}; TLS refusals ${m.tlsRefusals.map((x) => `${x.reason}=${x.value}`).join(' ') || 'none'}; config reloads ${m.configReloads.map((x) => `${x.result}=${x.value}`).join(' ')}.`);
  L.push('', 'Per cycle (windows: one per client that saw failed writes; for restarts, SIGTERM to exit and SIGTERM to the new process ready):', '', '| # | fault | victim | role | cycle time | windows (ms) | notes | RSS | fds |', '|---:|---|---|---|---:|---|---|---:|---:|');
  for (const c of r.cycles) {
    const smp = b.samples.find((x) => x.cycle === c.cycle);
    const notes = c.kind === 'restart' ? `exit ${c.exit?.code ?? '?'} after ${s(c.drainMs)}, ready after ${s(c.downMs)}` : c.kind === 'reload' ? `serial ${String(c.servedSerial ?? '').slice(0, 8)}… served` : '';
    L.push(`| ${c.cycle + 1} | ${c.kind} | ${c.victim ?? '-'}${c.replacement ? ` -> ${c.replacement}` : ''} | ${c.role ?? '-'} | ${s(c.ms)} | ${(c.windows ?? []).join(', ')} | ${notes} | ${mib(smp?.rssKiB)} | ${smp?.fds ?? '-'} |`);
  }
  return `${L.join('\n')}\n`;
}
