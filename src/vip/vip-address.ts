import type { Logger } from 'pino';
import type { VipConfig } from '../config/load.js';
import type { CommandRunner } from './runner.js';

// The VIP on the node's interface, always with a kernel lifetime: an address
// added with `valid_lft T` disappears by itself T seconds after its last
// refresh, so a holder that is killed, frozen or cut off loses it without
// running any code. Removal that finds nothing to remove is a success.

export class VipCommandError extends Error {
  readonly code = 'BALLAST_VIP_COMMAND';
  constructor(
    readonly command: string,
    readonly detail: string,
    /** The command did not finish in time (the node is overloaded): worth retrying, unlike a missing tool or capability. */
    readonly timedOut = false,
  ) {
    super(`vip: \`${command}\` failed: ${detail}${/ENOENT/.test(detail) ? ' (install iproute2 and iputils-arping; see deploy/README.md)' : /Operation not permitted|EPERM/.test(detail) ? ' (ballast needs the NET_ADMIN capability to change addresses, NET_RAW to announce them)' : ''}`);
    this.name = 'VipCommandError';
  }
}

export class VipAddress {
  private warnedNoAnnounce = false;

  constructor(
    private readonly config: Pick<VipConfig, 'cidr' | 'ip' | 'family' | 'interface'>,
    private readonly run: CommandRunner,
    private readonly log: Logger,
    // `ip` answers in milliseconds, but a loaded node can take seconds to
    // spawn it; a refresh that ends late is caught by the election's checks.
    private readonly timeoutMs = 3000,
  ) {}

  /** Add (or re-add) the address with lifetime `seconds`; IPv6 skips duplicate detection, which would hold it back about a second. */
  async add(seconds: number): Promise<void> {
    await this.ip(['addr', 'replace', this.config.cidr, 'dev', this.config.interface, 'valid_lft', String(seconds), 'preferred_lft', String(seconds), ...(this.config.family === 6 ? ['nodad'] : [])]);
  }

  /** Push the lifetime out to `seconds` from now. */
  async refresh(seconds: number): Promise<void> {
    await this.ip(['addr', 'change', this.config.cidr, 'dev', this.config.interface, 'valid_lft', String(seconds), 'preferred_lft', String(seconds), ...(this.config.family === 6 ? ['nodad'] : [])]);
  }

  /** Remove the address; true when it was there. */
  async remove(): Promise<boolean> {
    const args = ['addr', 'del', this.config.cidr, 'dev', this.config.interface];
    const r = await this.run('ip', args, this.timeoutMs);
    if (r.ok) return true;
    // "Cannot assign requested address" (older kernels) / "Address not found": nothing to remove.
    if (/Cannot assign requested address|Address not found|EADDRNOTAVAIL/i.test(r.stderr)) return false;
    throw new VipCommandError(`ip ${args.join(' ')}`, describe(r), r.code === 'ETIMEDOUT');
  }

  /** Whether the address is on the interface now. */
  async present(): Promise<boolean> {
    const args = ['-o', `-${this.config.family}`, 'addr', 'show', 'dev', this.config.interface];
    const r = await this.run('ip', args, this.timeoutMs);
    if (!r.ok) throw new VipCommandError(`ip ${args.join(' ')}`, describe(r));
    return r.stdout.split('\n').some((line) => line.split(/\s+/).includes(this.config.cidr));
  }

  /**
   * Tell the segment the address moved: gratuitous ARP for IPv4 (three, one
   * a second; arping runs in the background). IPv6 has no announcement yet.
   */
  announce(): void {
    if (this.config.family === 6) {
      if (!this.warnedNoAnnounce) this.log.warn({ vip: this.config.cidr }, 'vip: IPv6 has no unsolicited neighbour advertisement yet; neighbours find the new holder when their cache entry goes stale');
      this.warnedNoAnnounce = true;
      return;
    }
    const args = ['-U', '-c', '3', '-I', this.config.interface, this.config.ip];
    void this.run('arping', args, 5000).then((r) => {
      if (!r.ok) this.log.warn({ vip: this.config.cidr, err: describe(r) }, `vip: gratuitous ARP failed (arping ${args.join(' ')}): ${describe(r)}`);
    });
  }

  private async ip(args: string[]): Promise<void> {
    const r = await this.run('ip', args, this.timeoutMs);
    if (!r.ok) throw new VipCommandError(`ip ${args.join(' ')}`, describe(r), r.code === 'ETIMEDOUT');
  }
}

function describe(r: { code: number | string; stderr: string }): string {
  const text = r.stderr.trim().split('\n')[0] ?? '';
  return text ? `${text} (exit ${r.code})` : `exit ${r.code}`;
}
