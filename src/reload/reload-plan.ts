import { isDeepStrictEqual } from 'node:util';
import type { ClusterConfig, Config, ListenerConfig } from '../config/load.js';
import { keyKindFor, profileRoles } from '../tls/profiles.js';

// A reload as data: the running config and the next one in, the actions that
// turn one into the other out (or the reason the running process cannot take
// it). Pure: no sockets, files or clocks, so every case is a table row in
// test/unit/reload-plan.test.ts. Ballast applies a plan in two phases: what
// can fail (TLS material, new sockets) first, then the commit.

/** Top-level settings a running process cannot change in place. */
export const RESTART_SETTINGS = ['admin', 'workers', 'handover', 'workerSockets', 'vip'] as const;
export type RestartSetting = (typeof RESTART_SETTINGS)[number];

export interface ReloadRefusal {
  readonly kind: 'refused';
  readonly reason: 'restart_required';
  readonly settings: readonly RestartSetting[];
  readonly message: string;
}

export interface ListenerUpdate {
  readonly config: ListenerConfig;
  /** The listener terminates with another profile, or its profile was reloaded: swap its secure context. */
  readonly replaceTls: boolean;
}

export interface ClusterUpdate {
  readonly config: ClusterConfig;
  /** Health check or discovery settings changed: their loops restart with the new settings. */
  readonly restartLoops: boolean;
}

export interface ReloadPlan {
  readonly kind: 'apply';
  readonly tls: {
    /** New profiles, and profiles whose settings, roles or affinity key changed: loaded afresh. */
    readonly load: readonly string[];
    readonly remove: readonly string[];
    /** Server profiles whose CRL this reload removes (worth a warning: revoked clients get in again). */
    readonly crlDropped: readonly string[];
  };
  readonly clusters: {
    readonly add: readonly ClusterConfig[];
    readonly update: readonly ClusterUpdate[];
    readonly remove: readonly string[];
  };
  readonly listeners: {
    /** Listeners on an address no running listener of that name has: bound before anything changes. */
    readonly bind: readonly ListenerConfig[];
    /** Same name and address, other socket settings: the old socket closes first, then this binds. */
    readonly rebind: readonly ListenerConfig[];
    /** Running listeners that stop accepting (removed, moved or rebound); their connections finish. */
    readonly retire: readonly string[];
    /** Listeners that keep their socket and take new settings (only those whose settings or profile changed). */
    readonly update: readonly ListenerUpdate[];
  };
  /** The new log level, when it changed. */
  readonly logLevel: string | undefined;
  readonly backupChanged: boolean;
}

export type ReloadDecision = ReloadPlan | ReloadRefusal;

export function planReload(prev: Config, next: Config): ReloadDecision {
  const restart = RESTART_SETTINGS.filter((k) => !isDeepStrictEqual(prev[k], next[k]));
  if (restart.length > 0) {
    const list = restart.join(', ');
    return {
      kind: 'refused',
      reason: 'restart_required',
      settings: restart,
      message: `${list} changed: that needs a restart (the running process keeps its current ${list}); revert it in the file, or restart ballast to apply it`,
    };
  }

  const prevRoles = profileRoles(prev);
  const nextRoles = profileRoles(next);
  const load: string[] = [];
  const crlDropped: string[] = [];
  for (const [name, p] of next.tls) {
    const old = prev.tls.get(name);
    const same =
      old !== undefined &&
      isDeepStrictEqual(old, p) &&
      isDeepStrictEqual(prevRoles.get(name), nextRoles.get(name)) &&
      keyKindFor(prev, name)() === keyKindFor(next, name)();
    if (same) continue;
    load.push(name);
    if (old?.crl !== undefined && p.crl === undefined && nextRoles.get(name)?.server === true) crlDropped.push(name);
  }
  const removeTls = [...prev.tls.keys()].filter((n) => !next.tls.has(n));

  const prevClusters = new Map(prev.clusters.map((c) => [c.name, c]));
  const add: ClusterConfig[] = [];
  const update: ClusterUpdate[] = [];
  for (const cc of next.clusters) {
    const old = prevClusters.get(cc.name);
    if (old === undefined) add.push(cc);
    else if (!isDeepStrictEqual(old, cc)) {
      update.push({ config: cc, restartLoops: !isDeepStrictEqual(old.health, cc.health) || old.discovery !== cc.discovery || old.tls !== cc.tls });
    }
  }
  const nextClusterNames = new Set(next.clusters.map((c) => c.name));
  const removeClusters = prev.clusters.filter((c) => !nextClusterNames.has(c.name)).map((c) => c.name);

  const prevListeners = new Map(prev.listeners.map((l) => [l.name, l]));
  const bind: ListenerConfig[] = [];
  const rebind: ListenerConfig[] = [];
  const listenerUpdates: ListenerUpdate[] = [];
  const retire = new Set(prev.listeners.map((l) => l.name));
  for (const lc of next.listeners) {
    const old = prevListeners.get(lc.name);
    if (old === undefined || old.listen.text !== lc.listen.text) {
      bind.push(lc);
      continue;
    }
    // TLS changes (another profile, new material) apply in place with
    // setSecureContext; only termination switched on or off needs a new socket.
    const sameSocket = (old.tls === undefined) === (lc.tls === undefined) && old.backlog === lc.backlog && old.socketMode === lc.socketMode;
    if (!sameSocket) {
      rebind.push(lc);
      continue;
    }
    retire.delete(lc.name);
    const replaceTls = lc.tls !== undefined && (old.tls !== lc.tls || load.includes(lc.tls));
    if (replaceTls || !isDeepStrictEqual(old, lc)) listenerUpdates.push({ config: lc, replaceTls });
  }

  return {
    kind: 'apply',
    tls: { load, remove: removeTls, crlDropped },
    clusters: { add, update, remove: removeClusters },
    listeners: { bind, rebind, retire: [...retire], update: listenerUpdates },
    logLevel: prev.log.level !== next.log.level ? next.log.level : undefined,
    backupChanged: !isDeepStrictEqual(prev.backup, next.backup),
  };
}

/** One line for the log: what a plan changes, e.g. "tls ~front; listeners +api -old; clusters ~etcd". */
export function describePlan(p: ReloadPlan): string {
  const part = (what: string, items: [string, readonly string[]][]) => {
    const words = items.flatMap(([sign, names]) => names.map((n) => `${sign}${n}`));
    return words.length > 0 ? `${what} ${words.join(' ')}` : '';
  };
  const parts = [
    part('tls', [['~', p.tls.load], ['-', p.tls.remove]]),
    part('listeners', [['+', p.listeners.bind.map((l) => l.name)], ['±', p.listeners.rebind.map((l) => l.name)], ['-', p.listeners.retire.filter((n) => !p.listeners.bind.some((l) => l.name === n) && !p.listeners.rebind.some((l) => l.name === n))], ['~', p.listeners.update.map((u) => u.config.name)]]),
    part('clusters', [['+', p.clusters.add.map((c) => c.name)], ['-', p.clusters.remove], ['~', p.clusters.update.map((u) => u.config.name)]]),
    p.logLevel !== undefined ? `log.level ${p.logLevel}` : '',
    p.backupChanged ? 'backup' : '',
  ].filter((x) => x !== '');
  return parts.length > 0 ? parts.join('; ') : 'no change';
}

/** Thrown by Ballast.reload for a config the running process cannot take without a restart. */
export class ReloadRefusedError extends Error {
  readonly code = 'BALLAST_RELOAD_RESTART_REQUIRED';
  readonly reason: ReloadRefusal['reason'];
  readonly settings: readonly RestartSetting[];
  constructor(refusal: ReloadRefusal) {
    super(refusal.message);
    this.name = 'ReloadRefusedError';
    this.reason = refusal.reason;
    this.settings = refusal.settings;
  }
}
