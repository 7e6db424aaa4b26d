/**
 * The client's kill switch: an nftables table of its own whose output chain
 * drops every locally generated packet except
 *   - loopback,
 *   - anything leaving through the TUN device (the onion circuit),
 *   - UDP to the guard's address and port (the link that carries the circuit),
 *   - optionally, destinations on the local network the user lists,
 * and counts what it drops in the named counter `leak_blocked`. IPv6 gets
 * no exception of its own: what is not to the TUN (or loopback, or a listed
 * destination) is dropped, so a client without an inner IPv6 address leaks
 * none. There is deliberately no "established,related" exception: a
 * connection opened before the switch went on must not keep its path
 * around the tunnel.
 *
 * It goes on before the circuit is up and stays while the client runs, so
 * nothing leaks while no circuit exists (the TUN is matched by name, so the
 * device need not exist yet). The table is created and deleted in one
 * `nft -f -` transaction each; being a separate base chain on the output
 * hook, its drop is final whatever other tables accept.
 *
 * Only output is filtered: forwarded traffic (containers, VMs behind this
 * host) is not this switch's business.
 */
import net from 'node:net';
import { errors } from '../src/errors.js';
import type { Cidr } from '../src/net/cidr.js';
import { CommandError, systemRunner, type CommandRunner } from '../src/sys/command-runner.js';
import { checkDeviceName, checkGuard, networkText } from './routing.js';

export interface KillSwitchOptions {
  tunName: string;
  /** null until a guard is chosen (nothing but the tunnel and allowances pass). */
  guard: { host: string; port: number } | null;
  /** UDP source ports let out: the client's own DHT and discovery sockets. */
  allowUdpSourcePorts?: number[];
  /** Accept traffic out the loopback device (default true). */
  allowLoopback?: boolean;
  /** Destinations outside the tunnel that stay reachable (printers, the LAN). */
  allowLan?: Cidr[];
  /** Accept DHCPv4 client traffic (UDP 68 → 67) so the lease can be renewed (default false). */
  allowDhcp?: boolean;
  /** Default shallot_client_<pid>, which removeStale() recognises. */
  tableName?: string;
  /** Runs `nft` (default: the real one; tests pass a RecordingRunner). */
  runner?: CommandRunner;
}

export const TABLE_PREFIX = 'shallot_client_';
export const COUNTER_NAME = 'leak_blocked';
export const NFT_MISSING = 'the kill switch needs nftables: apt-get install nftables';

const TABLE_NAME = /^[A-Za-z][A-Za-z0-9_]{0,63}$/;

export interface RulesetOptions {
  table: string;
  tunName: string;
  /** null before a guard is chosen: then only the tunnel and the allowances pass. */
  guard: { host: string; port: number } | null;
  /** UDP source ports let out (the client's DHT and discovery sockets). */
  allowUdpSourcePorts?: number[];
  allowLoopback: boolean;
  allowLan: Cidr[];
  allowDhcp: boolean;
}

/**
 * The nft script that (re)creates the table in one transaction: the
 * add-then-delete pair removes a same-named leftover without failing when
 * there is none, and nothing is ever half installed.
 */
export function killSwitchRuleset(o: RulesetOptions): string {
  const guardFamily = o.guard && net.isIPv6(o.guard.host) ? 'ip6' : 'ip';
  const rules: string[] = [];
  if (o.allowLoopback) rules.push('oif "lo" accept');
  rules.push(`oifname "${o.tunName}" accept`);
  if (o.guard) rules.push(`${guardFamily} daddr ${o.guard.host} udp dport ${o.guard.port} accept`);
  const ports = (o.allowUdpSourcePorts ?? []).filter(
    (p) => Number.isInteger(p) && p > 0 && p < 65536,
  );
  if (ports.length > 0) rules.push(`udp sport { ${ports.join(', ')} } accept`);
  for (const c of o.allowLan) {
    rules.push(`${c.family === 6 ? 'ip6' : 'ip'} daddr ${networkText(c)} accept`);
  }
  if (o.allowDhcp) {
    rules.push('meta nfproto ipv4 udp sport 68 udp dport 67 accept');
  }
  // An IPv6 guard or LAN is reached only after neighbour discovery; these
  // messages never leave the link (hop limit 255, checked by receivers).
  if ((o.guard && guardFamily === 'ip6') || o.allowLan.some((c) => c.family === 6)) {
    rules.push(
      'icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } ' +
        'ip6 hoplimit 255 accept',
    );
  }
  // Everything else, IPv4 and IPv6 alike, is a leak: count it and drop it.
  rules.push(`counter name "${COUNTER_NAME}" drop`);
  return [
    `add table inet ${o.table}`,
    `delete table inet ${o.table}`,
    `table inet ${o.table} {`,
    `\tcounter ${COUNTER_NAME} {`,
    '\t}',
    '\tchain output {',
    '\t\ttype filter hook output priority 0; policy drop;',
    ...rules.map((r) => `\t\t${r}`),
    '\t}',
    '}',
    '',
  ].join('\n');
}

/** The nft script that deletes the table, and succeeds if it is already gone. */
export function removeTableScript(table: string): string {
  return `add table inet ${table}\ndelete table inet ${table}\n`;
}

function nftObjects(json: string, what: string): Record<string, unknown>[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch {
    throw errors.system(what, `unparsable nft output: ${json.trim().slice(0, 80)}`);
  }
  const list = (parsed as { nftables?: unknown }).nftables;
  if (!Array.isArray(list)) throw errors.system(what, 'nft output has no "nftables" list');
  return list.filter((x): x is Record<string, unknown> => !!x && typeof x === 'object');
}

/** Packets counted, from `nft -j list counter inet TABLE leak_blocked`. */
export function parseCounterPackets(json: string): number {
  for (const o of nftObjects(json, 'reading the kill switch counter')) {
    const c = o.counter as { name?: unknown; packets?: unknown } | undefined;
    if (c && c.name === COUNTER_NAME && typeof c.packets === 'number') return c.packets;
  }
  throw errors.system('reading the kill switch counter', `no counter ${COUNTER_NAME}`);
}

/** Kill switch tables (from `nft -j list tables`) whose owning process is gone. */
export function staleTables(json: string, isAlive: (pid: number) => boolean): string[] {
  const out: string[] = [];
  for (const o of nftObjects(json, 'listing nftables tables')) {
    const t = o.table as { family?: unknown; name?: unknown } | undefined;
    if (!t || t.family !== 'inet' || typeof t.name !== 'string') continue;
    const m = new RegExp(`^${TABLE_PREFIX}(\\d+)$`).exec(t.name);
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid !== process.pid && !isAlive(pid)) out.push(t.name);
  }
  return out;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Run nft; a missing binary or missing privilege is a one-line user error. */
function nft(runner: CommandRunner, args: string[], input?: string): string {
  try {
    return runner.run('nft', args, { input: input ?? '' }).stdout;
  } catch (e) {
    if (!(e instanceof CommandError)) throw e;
    if (e.missing) throw errors.badConfig(NFT_MISSING);
    if (/Operation not permitted/.test(e.reason)) throw errors.needRoot('the kill switch');
    throw e;
  }
}

export class KillSwitch {
  readonly table: string;
  private readonly ruleset: string;
  private readonly runner: CommandRunner;
  private active = false;

  constructor(opts: KillSwitchOptions) {
    checkDeviceName(opts.tunName);
    if (opts.guard) checkGuard(opts.guard);
    const table = opts.tableName ?? `${TABLE_PREFIX}${process.pid}`;
    if (!TABLE_NAME.test(table)) {
      throw errors.badArgument(
        `kill switch table name '${table}' must be a letter, then letters, digits or '_'`,
      );
    }
    this.table = table;
    this.runner = opts.runner ?? systemRunner;
    this.ruleset = killSwitchRuleset({
      table,
      tunName: opts.tunName,
      guard: opts.guard,
      allowUdpSourcePorts: opts.allowUdpSourcePorts ?? [],
      allowLoopback: opts.allowLoopback ?? true,
      allowLan: opts.allowLan ?? [],
      allowDhcp: opts.allowDhcp ?? false,
    });
  }

  /** Install the table (atomically replacing a same-named leftover). */
  start(): void {
    nft(this.runner, ['-f', '-'], this.ruleset);
    this.active = true;
  }

  /** Remove the table; harmless if it is already gone. */
  stop(): void {
    nft(this.runner, ['-f', '-'], removeTableScript(this.table));
    this.active = false;
  }

  get started(): boolean {
    return this.active;
  }

  /** Packets dropped as leaks so far (0 when the switch is off). */
  blockedPackets(): number {
    if (!this.active) return 0;
    return parseCounterPackets(
      nft(this.runner, ['-j', 'list', 'counter', 'inet', this.table, COUNTER_NAME]),
    );
  }

  /** The nft script start() applies (for diagnostics). */
  describe(): object {
    return { table: this.table, active: this.active, ruleset: this.ruleset };
  }

  /** Delete the tables of kill switches whose process died without stopping them. */
  static removeStale(runner: CommandRunner = systemRunner, isAlive = processAlive): void {
    for (const t of staleTables(nft(runner, ['-j', 'list', 'tables']), isAlive)) {
      nft(runner, ['-f', '-'], removeTableScript(t));
    }
  }
}
