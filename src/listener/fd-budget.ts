import { readFileSync } from 'node:fs';

// File descriptors are the one resource a proxy runs out of before memory:
// each proxied connection holds two (client and upstream), each TLS handshake
// one. When the process's soft RLIMIT_NOFILE is reached, libuv silently
// accepts and closes new clients (its reserve-descriptor trick) and new
// upstream connects fail with EMFILE, so ballast refuses a little earlier,
// on its own terms: counted (`fd_limit`), logged, and with enough descriptors
// left for the admin server and health checks to keep working.

import { readdirSync } from 'node:fs';

export const fds = {
  /**
   * Descriptors kept back: what the process held before its listeners opened
   * (stdio, epoll, the admin server, …) plus room for health checks,
   * discovery and files. Set by calibrate().
   */
  reserve: 64,
  /** Proxied connections (from routing until close) in this process, all listeners. */
  active: 0,
  /** Sockets accepted by TLS listeners and not closed (handshakes included). */
  tlsSockets: 0,
  /** Of `active`, those on TLS listeners (their client socket is in tlsSockets too). */
  tlsActive: 0,
  limit: softLimit(),
  /**
   * Descriptors held back for the admin servers of this process: each one's
   * connection cap, its listening socket and the one it accepts to drop.
   * Set by calibrate(); part of `reserve`.
   */
  admin: 0,
};

/**
 * Connections one admin server holds: admin.maxConnections, but at most a
 * sixteenth of the descriptor limit (at least 4), so that under a low limit
 * the admin share does not starve the data path either.
 */
export function adminConnectionCap(maxConnections: number): number {
  return Math.min(maxConnections, Math.max(4, Math.floor(fds.limit / 16)));
}

/** Descriptors the admin servers of a config may hold (0 when the admin server is off). */
export function adminDescriptors(admin: { enabled: boolean; metricsListen?: unknown; maxConnections: number }): number {
  if (!admin.enabled) return 0;
  return (admin.metricsListen !== undefined ? 2 : 1) * (adminConnectionCap(admin.maxConnections) + 2);
}

/** Whether one more proxied connection (two descriptors) fits. */
export function fdsAvailable(): boolean {
  const inUse = 2 * fds.active + (fds.tlsSockets - fds.tlsActive);
  return inUse + 2 + fds.reserve <= fds.limit;
}

/** The most client connections the descriptor limit allows (two descriptors each). */
export function connectionsAllowedByFds(): number {
  return Math.max(1, Math.floor((fds.limit - fds.reserve) / 2));
}

/** Measure what the process holds before its listeners open; `admin` descriptors are held back for the admin servers (see adminDescriptors). */
export function calibrate(admin = 0): void {
  let open = 32;
  try {
    open = readdirSync('/proc/self/fd').length;
  } catch {
    // not Linux: keep the guess
  }
  fds.admin = admin;
  fds.reserve = open + admin + Math.min(64, Math.max(16, Math.floor(fds.limit / 16)));
}

function softLimit(): number {
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    if (m && m[1] !== 'unlimited') return Number(m[1]);
  } catch {
    // not Linux, or /proc unavailable: no clamp
  }
  return Number.MAX_SAFE_INTEGER;
}
