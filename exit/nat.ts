/**
 * Kernel forwarding and masquerade for an exit, through nftables.
 *
 * start() turns on IP forwarding (remembering the old values) and adds ONE
 * nftables table of its own, in one atomic `nft -f -` transaction:
 *
 *   table inet shallot_exit_<pid> {
 *     chain postrouting {   # nat: pool traffic leaving by any other
 *       type nat hook postrouting priority srcnat; policy accept;
 *       ip saddr 10.70.0.0/24 oifname != "shx0" masquerade
 *     }
 *     chain forward {       # anti-spoof: pool sources only from the TUN
 *       type filter hook forward priority filter; policy accept;
 *       ip saddr 10.70.0.0/24 iifname != "shx0" counter drop
 *       iifname "shx0" ct state invalid counter drop
 *       oifname "shx0" ct state invalid counter drop
 *     }
 *   }
 *
 * The two `ct state invalid` rules drop, in and out of the TUN, what
 * connection tracking cannot place: TCP segments outside the window of
 * their connection, and ICMP errors that quote no flow it knows. Such
 * packets are not NATed either, so from the TUN they would leave with a
 * pool source. (The exit policy already drops client ICMP errors that
 * quote another client's flow; this is the kernel's own check behind it.)
 *
 * The forward chain accepts everything else: it must not break other
 * forwarding on the host. (A drop in some other table, e.g. a firewall
 * with a forward policy of drop, still applies: nftables base chains are
 * all traversed.) stop() deletes the table and restores the sysctls it
 * changed, if nobody changed them since. removeStale() sweeps the tables
 * of exits that died without stop(), and puts back the forwarding sysctls
 * they had turned on (recorded in each table's comment) once no live exit
 * is left.
 */
import { errors } from '../src/errors.js';
import { type Cidr, formatIp } from '../src/net/cidr.js';
import { CommandError, systemRunner, type CommandRunner } from '../src/sys/command-runner.js';
import { procSysctls, type Sysctls } from '../src/sys/sysctl.js';

export interface ExitNatOptions {
  /** The exit's TUN device: pool traffic comes in here. */
  tunName: string;
  poolV4: Cidr;
  poolV6?: Cidr;
  /** Masquerade only when leaving by this interface; default: any but the TUN. */
  outInterface?: string;
  /** Default 'shallot_exit_<pid>'. */
  tableName?: string;
  /** Runs `nft` (default: the real one; tests pass a RecordingRunner). */
  runner?: CommandRunner;
  /** Reads and writes the forwarding sysctls (default: /proc/sys). */
  sysctls?: Sysctls;
}

/** The host seams removeStale() goes through. */
export interface ExitNatHost {
  runner?: CommandRunner;
  sysctls?: Sysctls;
  /** Is the exit of this pid still running? (default: signal 0) */
  isAlive?: (pid: number) => boolean;
}

const STALE_PREFIX = 'shallot_exit_';
/** Table comment: the forwarding sysctls the exit turned on, and their values before. */
const FORWARDING_MARK = 'shallot exit; forwarding was';
const NO_NFT = 'the exit needs nftables: apt-get install nftables';

const SYSCTL_V4 = '/proc/sys/net/ipv4/ip_forward';
const SYSCTL_V6 = '/proc/sys/net/ipv6/conf/all/forwarding';

/** Run nft; failures become one-line errors. */
function nft(runner: CommandRunner, args: string[], input?: string): string {
  try {
    return runner.run('nft', args, input !== undefined ? { input } : {}).stdout;
  } catch (e) {
    if (!(e instanceof CommandError)) throw e;
    if (e.missing) throw errors.badConfig(NO_NFT);
    if (/Operation not permitted/i.test(e.reason)) throw errors.needRoot('the exit (nftables)');
    throw e;
  }
}

function readSysctl(sysctls: Sysctls, path: string): string {
  try {
    return sysctls.read(path);
  } catch (e) {
    throw errors.system(`reading ${path}`, e);
  }
}

function writeSysctl(sysctls: Sysctls, path: string, value: string): void {
  try {
    sysctls.write(path, value);
  } catch (e) {
    if ((e as { code?: string }).code === 'EACCES' || (e as { code?: string }).code === 'EPERM') {
      throw errors.needRoot('the exit (IP forwarding)');
    }
    throw errors.system(`writing ${path}`, e);
  }
}

/** "10.70.0.0/24": the network of a CIDR, host bits cleared (nft wants that). */
function networkText(cidr: Cidr): string {
  const out = Buffer.from(cidr.address);
  let bits = cidr.prefix;
  for (let i = 0; i < out.length; i += 1) {
    const m = bits >= 8 ? 0xff : bits <= 0 ? 0 : (0xff << (8 - bits)) & 0xff;
    out[i] = (out[i] as number) & m;
    bits -= 8;
  }
  return `${formatIp(out)}/${cidr.prefix}`;
}

function checkInterfaceName(name: string, what: string): void {
  // Linux interface names: 1-15 bytes, no '/', no whitespace; we also keep
  // quotes and backslashes out of the nft text.
  if (!/^[A-Za-z0-9_.:@+-]{1,15}$/.test(name)) {
    throw errors.badArgument(`${what} '${name}' is not a valid interface name`);
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as { code?: string }).code === 'EPERM';
  }
}

interface Saved {
  path: string;
  previous: string;
}

export class ExitNat {
  readonly tableName: string;
  private readonly options: ExitNatOptions;
  private readonly runner: CommandRunner;
  private readonly sysctls: Sysctls;
  private started = false;
  private saved: Saved[] = [];

  constructor(options: ExitNatOptions) {
    checkInterfaceName(options.tunName, 'TUN device');
    if (options.outInterface !== undefined) {
      checkInterfaceName(options.outInterface, 'outgoing interface');
    }
    if (options.poolV4.family !== 4) {
      throw errors.badConfig(`exit pool ${options.poolV4.text} is not an IPv4 network`);
    }
    if (options.poolV6 && options.poolV6.family !== 6) {
      throw errors.badConfig(`exit pool ${options.poolV6.text} is not an IPv6 network`);
    }
    this.tableName = options.tableName ?? `${STALE_PREFIX}${process.pid}`;
    if (!/^[A-Za-z0-9_]{1,64}$/.test(this.tableName)) {
      throw errors.badArgument(`nftables table name '${this.tableName}' is not valid`);
    }
    this.options = options;
    this.runner = options.runner ?? systemRunner;
    this.sysctls = options.sysctls ?? procSysctls;
  }

  /**
   * The nft transaction start() applies (replacing a leftover of the same
   * name). `forwardingWas`, when given, goes into the table's comment: the
   * sysctl values start() is about to change, so that removeStale() can
   * put them back for an exit that died without stop().
   */
  ruleset(forwardingWas?: { v4: string | null; v6: string | null }): string {
    const { tunName, poolV4, poolV6, outInterface } = this.options;
    const tun = `"${tunName}"`;
    const out = outInterface === undefined ? `oifname != ${tun}` : `oifname "${outInterface}"`;
    const pools: [string, string][] = [['ip', networkText(poolV4)]];
    if (poolV6) pools.push(['ip6', networkText(poolV6)]);
    const t = this.tableName;
    return [
      // Create-then-delete makes the transaction start from nothing even if
      // a table of this name was left behind (e.g. by a reused pid).
      `add table inet ${t}`,
      `delete table inet ${t}`,
      `table inet ${t} {`,
      ...(forwardingWas
        ? [`  comment "${FORWARDING_MARK} ${forwardingWas.v4 ?? '-'} ${forwardingWas.v6 ?? '-'}"`]
        : []),
      `  chain postrouting {`,
      `    type nat hook postrouting priority srcnat; policy accept;`,
      ...pools.map(([f, net]) => `    ${f} saddr ${net} ${out} masquerade`),
      `  }`,
      `  chain forward {`,
      `    type filter hook forward priority filter; policy accept;`,
      ...pools.map(([f, net]) => `    ${f} saddr ${net} iifname != ${tun} counter drop`),
      `    iifname ${tun} ct state invalid counter drop`,
      `    oifname ${tun} ct state invalid counter drop`,
      `  }`,
      `}`,
      '',
    ].join('\n');
  }

  /** Add the table and enable forwarding. A second call does nothing. */
  start(): void {
    if (this.started) return;
    // The table first: it fails cleanly (no nft, no permission) before any
    // sysctl is touched, and is one atomic transaction. It records which
    // forwarding sysctls are about to be turned on, and their values.
    const was = (path: string) => {
      const v = readSysctl(this.sysctls, path);
      return v === '1' || !/^[0-9]$/.test(v) ? null : v;
    };
    const forwardingWas = {
      v4: was(SYSCTL_V4),
      v6: this.options.poolV6 ? was(SYSCTL_V6) : null,
    };
    nft(this.runner, ['-f', '-'], this.ruleset(forwardingWas));
    try {
      this.enableForwarding(SYSCTL_V4);
      if (this.options.poolV6) this.enableForwarding(SYSCTL_V6);
    } catch (e) {
      this.restoreSysctls();
      this.deleteTable();
      throw e;
    }
    this.started = true;
  }

  /** Remove the table and restore forwarding. Idempotent. */
  stop(): void {
    if (!this.started) return;
    this.started = false;
    let failure: unknown = null;
    try {
      this.deleteTable();
    } catch (e) {
      failure = e;
    }
    try {
      this.restoreSysctls();
    } catch (e) {
      failure ??= e;
    }
    if (failure) throw failure;
  }

  /**
   * Delete tables named PREFIX<pid> whose process is gone (an exit that
   * crashed) and, if no live exit remains, put back the forwarding
   * sysctls those exits had turned on. Returns the names deleted.
   */
  static removeStale(prefix = STALE_PREFIX, host: ExitNatHost = {}): string[] {
    const runner = host.runner ?? systemRunner;
    const sysctls = host.sysctls ?? procSysctls;
    const isAlive = host.isAlive ?? pidAlive;
    const removed: string[] = [];
    const escaped = prefix.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    const re = new RegExp(`^table inet (${escaped}(\\d+))$`);
    const restore: { path: string; value: string }[] = [];
    let live = 0;
    for (const line of nft(runner, ['list', 'tables']).split('\n')) {
      const m = re.exec(line.trim());
      if (!m?.[1] || !m[2]) continue;
      const pid = Number(m[2]);
      if (pid === process.pid || isAlive(pid)) {
        live += 1;
        continue;
      }
      try {
        const text = nft(runner, ['list', 'table', 'inet', m[1]]);
        const c = new RegExp(`comment "${FORWARDING_MARK} (\\S+) (\\S+)"`).exec(text);
        if (c?.[1] && /^[0-9]$/.test(c[1])) restore.push({ path: SYSCTL_V4, value: c[1] });
        if (c?.[2] && /^[0-9]$/.test(c[2])) restore.push({ path: SYSCTL_V6, value: c[2] });
        nft(runner, ['delete', 'table', 'inet', m[1]]);
        removed.push(m[1]);
      } catch {
        /* deleted meanwhile */
      }
    }
    // Forwarding that a dead exit turned on goes back to what it was, unless
    // a live exit still needs it (or someone turned it off since).
    if (live === 0) {
      for (const r of restore) {
        try {
          if (readSysctl(sysctls, r.path) === '1') writeSysctl(sysctls, r.path, r.value);
        } catch {
          /* best effort: the caller's own start() reports sysctl trouble */
        }
      }
    }
    return removed;
  }

  private enableForwarding(path: string): void {
    const previous = readSysctl(this.sysctls, path);
    if (previous === '1') return;
    writeSysctl(this.sysctls, path, '1');
    this.saved.push({ path, previous });
  }

  private restoreSysctls(): void {
    let failure: unknown = null;
    for (const s of this.saved.splice(0).reverse()) {
      try {
        // Leave it alone if someone else changed it since.
        if (readSysctl(this.sysctls, s.path) === '1') writeSysctl(this.sysctls, s.path, s.previous);
      } catch (e) {
        failure ??= e;
      }
    }
    if (failure) throw failure;
  }

  private deleteTable(): void {
    try {
      nft(this.runner, ['delete', 'table', 'inet', this.tableName]);
    } catch (e) {
      // Already gone is fine (stop() must be idempotent).
      if (/No such file or directory/i.test(e instanceof Error ? e.message : '')) return;
      throw e;
    }
  }
}
