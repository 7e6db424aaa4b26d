/**
 * What a client changes on its host, driven by the ClientNode's events:
 *
 * - the kill switch (full tunnel): installed before any guard is known
 *   (nothing leaves but discovery), replaced in one nft transaction when
 *   the guard changes, so that only the current guard is reachable
 *   outside the tunnel and there is never a gap;
 * - the inner addresses on the TUN device, once, from the first lease
 *   (IPv6 only where the host has it on);
 * - the routes into the TUN (client/routing.ts), made for the guard of
 *   the circuit that came up and remade when the guard changes.
 *
 * Everything it adds, stop() removes, in reverse order. Commands go
 * through the injected runner: a test plans a client's host changes
 * without root (RecordingRunner).
 */
import { formatIp, parseCidr, type Cidr } from '../src/net/cidr.js';
import type { Logger } from '../src/log.js';
import { silentLogger } from '../src/log.js';
import { systemRunner, type CommandRunner } from '../src/sys/command-runner.js';
import { ip } from '../src/tun/iproute.js';
import { KillSwitch } from './kill-switch.js';
import { ClientRouting } from './routing.js';

export interface ClientHostOptions {
  tunName: string;
  /** Networks routed into the tunnel (split tunnel), or null for everything (full tunnel). */
  split: Cidr[] | null;
  /** Full tunnel only: block everything outside the tunnel (default true). */
  killSwitch?: boolean;
  /** UDP source ports let out beside the guard link: discovery's sockets. */
  allowUdpSourcePorts?: number[];
  runner?: CommandRunner;
  log?: Logger;
}

export interface Endpoint {
  host: string;
  port: number;
}

export class ClientHost {
  private readonly runner: CommandRunner;
  private readonly log: Logger;
  private killSwitch: KillSwitch | null = null;
  private routing: ClientRouting | null = null;
  private guard: Endpoint | null = null;
  private addressed = false;
  private innerV6: Cidr | null = null;
  private stopped = false;

  constructor(private readonly o: ClientHostOptions) {
    this.runner = o.runner ?? systemRunner;
    this.log = o.log ?? silentLogger;
  }

  get killSwitchOn(): boolean {
    return this.o.split === null && this.o.killSwitch !== false;
  }

  /** Before any circuit: the kill switch with no guard (only discovery gets out). */
  start(): void {
    if (this.killSwitchOn) this.installKillSwitch(null);
  }

  /** The guard of the next circuit was chosen (before any traffic to it). */
  onGuard(g: Endpoint): void {
    if (this.stopped || (this.guard && this.guard.host === g.host && this.guard.port === g.port))
      return;
    this.guard = { host: g.host, port: g.port };
    // Same table name: nft replaces it in one transaction, never a gap.
    if (this.killSwitchOn) this.installKillSwitch(this.guard);
    if (this.routing) {
      this.routing.stop();
      this.routing = null;
    }
  }

  /** A circuit is ready with this lease: addresses once, routes for its guard. */
  onCircuit(lease: { v4: Buffer; v6: Buffer | null }): void {
    if (this.stopped) return;
    if (!this.addressed) {
      ip(['addr', 'add', `${formatIp(lease.v4)}/32`, 'dev', this.o.tunName], this.runner);
      if (lease.v6) {
        try {
          ip(
            ['-6', 'addr', 'add', `${formatIp(lease.v6)}/128`, 'dev', this.o.tunName, 'nodad'],
            this.runner,
          );
          this.innerV6 = parseCidr(`${formatIp(lease.v6)}/128`);
        } catch (e) {
          // IPv6 off on this host (disable_ipv6): carry on with IPv4. No
          // IPv6 route enters the TUN, and the kill switch drops IPv6.
          this.log.warn(`no IPv6 through the circuit: ${(e as Error).message}`);
        }
      }
      this.addressed = true;
    }
    if (!this.routing && this.guard) {
      this.routing = new ClientRouting({
        tunName: this.o.tunName,
        guard: this.guard,
        mode: this.o.split ? { kind: 'split', cidrs: this.o.split } : { kind: 'full' },
        ...(this.innerV6 ? { innerV6: this.innerV6 } : {}),
        runner: this.runner,
      });
      this.routing.start();
    }
  }

  /** The inner IPv6 address, once one was added. */
  get v6(): Cidr | null {
    return this.innerV6;
  }

  /** Packets the kill switch dropped, or null (off, or the count cannot be read). */
  blockedPackets(): number | null {
    try {
      return this.killSwitch ? this.killSwitch.blockedPackets() : null;
    } catch {
      return null;
    }
  }

  /** Routes first, then the kill switch: nothing leaks while the routes go. */
  stop(): void {
    this.stopped = true;
    this.routing?.stop();
    this.routing = null;
    this.killSwitch?.stop();
    this.killSwitch = null;
  }

  private installKillSwitch(guard: Endpoint | null): void {
    const k = new KillSwitch({
      tunName: this.o.tunName,
      guard,
      allowUdpSourcePorts: this.o.allowUdpSourcePorts ?? [],
      runner: this.runner,
    });
    k.start();
    this.killSwitch = k;
  }
}
