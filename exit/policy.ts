/**
 * The exit policy: which IP packets (IPv4 and IPv6) an exit forwards to
 * the internet. Pure; the only I/O is reading a policy file.
 *
 * A packet's destination is judged in this order, first match wins:
 *
 *  1. Hard rejects, whatever --allow or the policy file say: loopback
 *     (127/8, ::1) and the exit's own addresses/networks.
 *  2. --allow entries: accept (ahead of the default rejects; this is how a
 *     private overlay reaches private ranges).
 *  3. Policy file rules: `reject` rejects (reason 'policy'); `accept` ends
 *     the policy file's say, the defaults below still apply. The file ends
 *     with an implicit `accept *`. The file can only narrow what the exit
 *     forwards: opening a default-rejected range takes --allow.
 *  4. Default rejects: private (10/8, 172.16/12, 192.168/16, 100.64/10,
 *     fc00::/7, and the not-routable 0/8, 255.255.255.255, ::, ::ffff:0:0/96),
 *     link-local (169.254/16, fe80::/10), multicast (224/4, ff00::/8), then
 *     TCP/UDP destination port 25.
 *  5. Accept.
 *
 * IPv6 destinations that stand for an IPv4 address (IPv4-mapped
 * ::ffff:0:0/96, IPv4-compatible ::/96, NAT64 64:ff9b::/96, 6to4
 * 2002::/16, Teredo 2001::/32: see embeddedIpv4) are judged as that IPv4
 * address too, by every step: an IPv4 rule matches them, so an exit behind
 * a NAT64 gateway or a 6to4/Teredo relay does not reach 127.0.0.1 or
 * 10.0.0.1 through it. NAT64's local-use prefix 64:ff9b:1::/48 cannot be
 * read that way and is a hard reject (`nat64-local`).
 *
 * ICMP and ICMPv6 errors (checkIcmp4/checkIcmp6) are judged by the packet
 * they quote before anything else: the kernel's connection tracking
 * relates an error to the flow it quotes and NATs it into that flow, so an
 * error is forwarded only if it is about a packet the sender received from
 * the error's destination (`icmp-foreign`, `icmp-malformed`,
 * `icmp-redirect`, `icmp-mtu` otherwise).
 *
 * Ports: rules with a port range match only TCP (6) and UDP (17) packets
 * whose destination port is known (not a non-first fragment) and in range;
 * rules without ports match every protocol. IPv6 extension headers
 * (hop-by-hop, routing, destination options, fragment, AH) are walked to
 * find the transport header, so they cannot hide a port.
 */
import { readFileSync } from 'node:fs';
import { errors, ShallotError } from '../src/errors.js';
import { type Cidr, formatIp, parseCidr, parseIp } from '../src/net/cidr.js';
import {
  checkIcmp4,
  checkIcmp6,
  embeddedIpv4,
  ICMP_BAD_QUOTE,
  ICMP_FOREIGN_QUOTE,
  ICMP_LOW_MTU,
  ICMP_NOT_ERROR,
  ICMP_OWN_QUOTE,
  ICMP_REDIRECT,
  type IcmpCheck,
  ipv6ExtensionSize,
  isIpv6Extension,
  isNat64LocalUse,
  MAX_IPV6_EXTENSIONS,
} from '../src/net/ip-packet.js';

export interface PortRange {
  from: number;
  to: number;
}

export interface PolicyRule {
  action: 'accept' | 'reject';
  /** null: any address of both families (`*`). */
  cidr: Cidr | null;
  /** TCP/UDP destination ports; null: every protocol and port. */
  ports: PortRange | null;
  /** The rule in canonical form, e.g. "accept [fd00::/8]:80-443". */
  text: string;
}

export type RejectReason =
  | 'private'
  | 'loopback'
  | 'link-local'
  | 'multicast'
  | 'own-address'
  | 'port-25'
  | 'policy'
  | 'malformed'
  | 'nat64-local'
  | 'icmp-foreign'
  | 'icmp-malformed'
  | 'icmp-redirect'
  | 'icmp-mtu';

export type Verdict =
  { verdict: 'accept' } | { verdict: 'reject'; reason: RejectReason; destination: string };

export interface ExitPolicyOptions {
  /** --allow entries (accepted ahead of the default rejects). */
  allow?: PolicyRule[];
  /** Policy file rules. */
  rules?: PolicyRule[];
  /** The exit's own addresses/networks: always rejected. */
  ownNetworks?: Cidr[];
  /**
   * The exit's own public UDP services (its link port and DHT port) on its
   * own addresses: accepted, so that a client's discovery traffic, which
   * goes through its circuit, can reach the exit it uses. Nothing else on
   * the exit's addresses is ever reachable.
   */
  ownUdpServices?: { addresses: Cidr[]; ports: number[] };
}

const TCP = 6;
const UDP = 17;
const ICMP = 1;
const ICMP6 = 58;

const ICMP_REASONS: Record<IcmpCheck, RejectReason | null> = {
  [ICMP_NOT_ERROR]: null,
  [ICMP_OWN_QUOTE]: null,
  [ICMP_FOREIGN_QUOTE]: 'icmp-foreign',
  [ICMP_BAD_QUOTE]: 'icmp-malformed',
  [ICMP_REDIRECT]: 'icmp-redirect',
  [ICMP_LOW_MTU]: 'icmp-mtu',
};

// ---------------------------------------------------------------- parsing

interface Target {
  cidr: Cidr | null;
  ports: PortRange | null;
}

function targetText(t: Target): string {
  const addr = t.cidr === null ? '*' : t.cidr.text;
  if (!t.ports) return addr;
  const p = t.ports.from === t.ports.to ? `${t.ports.from}` : `${t.ports.from}-${t.ports.to}`;
  return `${t.cidr?.family === 6 ? `[${addr}]` : addr}:${p}`;
}

function parsePorts(text: string): PortRange | string {
  const m = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(text);
  if (!m?.[1]) return `bad port '${text}' (PORT or PORT-PORT, 0-65535)`;
  const from = Number(m[1]);
  const to = m[2] === undefined ? from : Number(m[2]);
  if (from > 65535 || to > 65535) return `bad port '${text}' (0-65535)`;
  if (from > to) return `bad port range '${text}' (first port above last)`;
  return { from, to };
}

function parseAddress(text: string): Cidr | string {
  if (text.includes('/')) {
    try {
      return parseCidr(text, 'destination');
    } catch (e) {
      return e instanceof ShallotError ? e.message : String(e);
    }
  }
  // A bare address is a single host.
  const ip = parseIp(text);
  if (!ip) return `'${text}' is not '*', an address or a CIDR`;
  return parseCidr(`${text}/${ip.length * 8}`, 'destination');
}

/** Parse `*`, `CIDR`, `CIDR:PORTS`, `[V6CIDR]:PORTS`...; a string is the error. */
function parseTarget(text: string): Target | string {
  let addr: string;
  let portText: string | undefined;
  if (text.startsWith('[')) {
    const close = text.indexOf(']');
    if (close < 0) return `'${text}' has '[' without ']'`;
    addr = text.slice(1, close);
    const rest = text.slice(close + 1);
    if (rest !== '') {
      if (!rest.startsWith(':')) return `'${text}': expected ':PORT' after ']'`;
      portText = rest.slice(1);
    }
    if (!addr.includes(':')) return `'${text}': brackets are only for IPv6 addresses`;
  } else {
    const colons = text.split(':').length - 1;
    if (colons <= 1) {
      const c = text.indexOf(':');
      addr = c < 0 ? text : text.slice(0, c);
      portText = c < 0 ? undefined : text.slice(c + 1);
    } else {
      // IPv6 without brackets: no ports possible.
      const slash = text.indexOf('/');
      if (slash >= 0 && text.indexOf(':', slash) >= 0) {
        return `'${text}': write an IPv6 destination with ports as [ADDR/PREFIX]:PORT`;
      }
      addr = text;
    }
  }
  let cidr: Cidr | null = null;
  if (addr !== '*') {
    const c = parseAddress(addr);
    if (typeof c === 'string') return c;
    cidr = c;
  }
  let ports: PortRange | null = null;
  if (portText !== undefined) {
    const p = parsePorts(portText);
    if (typeof p === 'string') return p;
    ports = p;
  }
  return { cidr, ports };
}

function printable(s: string): string {
  const clean = s.replace(/[^\x20-\x7e]/g, '?');
  return clean.length > 80 ? `${clean.slice(0, 77)}...` : clean;
}

/** Parse the text of a policy file; `name` names it in errors. */
export function parsePolicyText(text: string, name: string): PolicyRule[] {
  const rules: PolicyRule[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i += 1) {
    const hash = (lines[i] as string).indexOf('#');
    const line = (hash >= 0 ? (lines[i] as string).slice(0, hash) : (lines[i] as string)).trim();
    if (line === '') continue;
    const words = line.split(/\s+/);
    const where = `${name}:${i + 1}`;
    const action = words[0];
    if ((action !== 'accept' && action !== 'reject') || words.length !== 2) {
      throw errors.badConfig(
        `${where}: expected 'accept TARGET' or 'reject TARGET', got '${printable(line)}'`,
      );
    }
    const t = parseTarget(words[1] as string);
    if (typeof t === 'string') throw errors.badConfig(`${where}: ${printable(t)}`);
    rules.push({ action, ...t, text: `${action} ${targetText(t)}` });
  }
  return rules;
}

/** Read and parse a policy file; errors are one line naming file and line. */
export function parsePolicyFile(path: string): PolicyRule[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    const code = (e as { code?: string }).code ?? String(e);
    throw errors.badConfig(`cannot read the exit policy file ${path}: ${code}`);
  }
  return parsePolicyText(text, path);
}

/** Parse --allow values (each may hold several entries separated by commas). */
export function parseAllowList(list: string[]): PolicyRule[] {
  const rules: PolicyRule[] = [];
  for (const item of list) {
    for (const raw of item.split(',')) {
      const entry = raw.trim();
      if (entry === '') continue;
      const t = parseTarget(entry);
      if (typeof t === 'string') {
        throw errors.badArgument(`--allow entry '${printable(entry)}': ${printable(t)}`);
      }
      rules.push({ action: 'accept', ...t, text: `accept ${targetText(t)}` });
    }
  }
  return rules;
}

// ---------------------------------------------------------------- matching

/** A rule compiled for matching without allocation. */
interface Compiled {
  accept: boolean;
  /** 0: both families. */
  family: 0 | 4 | 6;
  net4: number;
  mask4: number;
  /** IPv6 network and mask bytes, checked up to `bytes6`. */
  net6: Buffer;
  mask6: Buffer;
  bytes6: number;
  /** -1: no port condition. */
  portFrom: number;
  portTo: number;
}

function mask4(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

function compile(cidr: Cidr | null, ports: PortRange | null, accept: boolean): Compiled {
  const c: Compiled = {
    accept,
    family: cidr === null ? 0 : cidr.family,
    net4: 0,
    mask4: 0,
    net6: Buffer.alloc(16),
    mask6: Buffer.alloc(16),
    bytes6: 0,
    portFrom: ports ? ports.from : -1,
    portTo: ports ? ports.to : -1,
  };
  if (cidr?.family === 4) {
    c.mask4 = mask4(cidr.prefix);
    c.net4 = (cidr.address.readUInt32BE(0) & c.mask4) >>> 0;
  } else if (cidr?.family === 6) {
    let bits = cidr.prefix;
    for (let i = 0; i < 16 && bits > 0; i += 1) {
      const m = bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff;
      c.mask6[i] = m;
      c.net6[i] = (cidr.address[i] as number) & m;
      c.bytes6 = i + 1;
      bits -= 8;
    }
  }
  return c;
}

function cidrRule(text: string): Compiled {
  return compile(parseCidr(text), null, false);
}

interface DefaultClass {
  rule: Compiled;
  reason: RejectReason;
}

const HARD_V4: DefaultClass[] = [{ rule: cidrRule('127.0.0.0/8'), reason: 'loopback' }];
const HARD_V6: DefaultClass[] = [{ rule: cidrRule('::1/128'), reason: 'loopback' }];

const DEFAULT_V4: DefaultClass[] = [
  { rule: cidrRule('10.0.0.0/8'), reason: 'private' },
  { rule: cidrRule('172.16.0.0/12'), reason: 'private' },
  { rule: cidrRule('192.168.0.0/16'), reason: 'private' },
  { rule: cidrRule('100.64.0.0/10'), reason: 'private' },
  { rule: cidrRule('0.0.0.0/8'), reason: 'private' },
  { rule: cidrRule('255.255.255.255/32'), reason: 'private' },
  { rule: cidrRule('169.254.0.0/16'), reason: 'link-local' },
  { rule: cidrRule('224.0.0.0/4'), reason: 'multicast' },
];

const DEFAULT_V6: DefaultClass[] = [
  { rule: cidrRule('fc00::/7'), reason: 'private' },
  { rule: cidrRule('::/128'), reason: 'private' },
  { rule: cidrRule('::ffff:0:0/96'), reason: 'private' },
  { rule: cidrRule('::/96'), reason: 'private' },
  { rule: cidrRule('fe80::/10'), reason: 'link-local' },
  { rule: cidrRule('ff00::/8'), reason: 'multicast' },
];

function matches6(rule: Compiled, buf: Buffer, at: number): boolean {
  for (let i = 0; i < rule.bytes6; i += 1) {
    if (((buf[at + i] as number) & (rule.mask6[i] as number)) !== rule.net6[i]) return false;
  }
  return true;
}

function malformed(): Verdict {
  return { verdict: 'reject', reason: 'malformed', destination: '' };
}

const EMPTY = Buffer.alloc(0);
const ACCEPT: Verdict = Object.freeze({ verdict: 'accept' }) as Verdict;

export class ExitPolicy {
  private readonly allow: PolicyRule[];
  private readonly rules: PolicyRule[];
  private readonly allowC: Compiled[];
  private readonly rulesC: Compiled[];
  private readonly hard4: DefaultClass[];
  private readonly hard6: DefaultClass[];

  // The packet being decided (decide() is synchronous; no allocation).
  private family: 4 | 6 = 4;
  private buf: Buffer = EMPTY;
  private dst4 = 0;
  private dst6At = 0;
  /** IPv4 addresses an IPv6 destination stands for (embeddedIpv4), or -1. */
  private embedded4 = -1;
  private embedded4b = -1;
  /** The destination is in 64:ff9b:1::/48. */
  private nat64Local = false;
  /** ICMP/ICMPv6 verdict on the packet (checkIcmp4/checkIcmp6). */
  private icmp: IcmpCheck = ICMP_NOT_ERROR;
  /** TCP/UDP destination port, or -1 (other protocol, non-first fragment). */
  private port = -1;
  private udp = false;
  private readonly servicesC: ReturnType<typeof compile>[];

  constructor(options: ExitPolicyOptions = {}) {
    this.allow = options.allow ?? [];
    this.rules = options.rules ?? [];
    this.allowC = this.allow.map((r) => compile(r.cidr, r.ports, true));
    this.rulesC = this.rules.map((r) => compile(r.cidr, r.ports, r.action === 'accept'));
    const own = (options.ownNetworks ?? []).map((c) => ({
      rule: compile(c, null, false),
      reason: 'own-address' as const,
    }));
    this.hard4 = [...HARD_V4, ...own.filter((o) => o.rule.family === 4)];
    this.hard6 = [...HARD_V6, ...own.filter((o) => o.rule.family === 6)];
    const svc = options.ownUdpServices;
    const ports = (svc?.ports ?? []).filter((p) => Number.isInteger(p) && p > 0 && p < 65536);
    this.servicesC = ports.length
      ? (svc?.addresses ?? []).flatMap((c) =>
          ports.map((p) =>
            compile({ ...c, prefix: c.family === 4 ? 32 : 128 }, { from: p, to: p }, true),
          ),
        )
      : [];
  }

  /** A short human text of the policy, e.g. for a descriptor. */
  summary(): string {
    return [
      ...this.allow.map((r) => r.text),
      ...this.rules.map((r) => r.text),
      'reject private, loopback, link-local, multicast, port 25',
    ].join('; ');
  }

  /** Decide one IP packet at buf[offset, offset+len). Never throws. */
  decide(packet: Buffer, offset: number, len: number): Verdict {
    try {
      if (!this.parse(packet, offset, len)) return malformed();
      const icmpReason = ICMP_REASONS[this.icmp];
      if (icmpReason) return this.reject(icmpReason);
      if (this.nat64Local) return this.reject('nat64-local');
      if (this.udp) {
        for (const r of this.servicesC)
          if (r.family === this.family && this.matches(r)) return ACCEPT;
      }
      const hard = this.classify(this.hard4, this.hard6);
      if (hard) return this.reject(hard);
      for (const r of this.allowC) if (this.matches(r)) return ACCEPT;
      for (const r of this.rulesC) {
        if (!this.matches(r)) continue;
        if (r.accept) break;
        return this.reject('policy');
      }
      const reason = this.classify(DEFAULT_V4, DEFAULT_V6);
      if (reason) return this.reject(reason);
      if (this.port === 25) return this.reject('port-25');
      return ACCEPT;
    } catch {
      return malformed();
    } finally {
      this.buf = EMPTY;
    }
  }

  private reject(reason: RejectReason): Verdict {
    let destination: string;
    if (this.family === 4) {
      const b = Buffer.alloc(4);
      b.writeUInt32BE(this.dst4, 0);
      destination = formatIp(b);
    } else {
      destination = formatIp(Buffer.from(this.buf.subarray(this.dst6At, this.dst6At + 16)));
    }
    return { verdict: 'reject', reason, destination };
  }

  private matches(r: Compiled): boolean {
    if (r.family === 4) {
      if (this.family === 4) {
        if ((this.dst4 & r.mask4) >>> 0 !== r.net4) return false;
      } else {
        // An IPv6 address standing for IPv4 addresses: a reject rule takes
        // it if any of them matches, an accept rule only if all do.
        const a = this.embedded4;
        const b = this.embedded4b;
        if (a < 0) return false;
        const ma = (a & r.mask4) >>> 0 === r.net4;
        const mb = b >= 0 && (b & r.mask4) >>> 0 === r.net4;
        if (r.accept ? !ma || (b >= 0 && !mb) : !ma && !mb) return false;
      }
    } else if (r.family === 6) {
      if (this.family !== 6 || !matches6(r, this.buf, this.dst6At)) return false;
    }
    if (r.portFrom >= 0 && (this.port < r.portFrom || this.port > r.portTo)) return false;
    return true;
  }

  /** The reason of the first class holding the destination (or its embedded IPv4). */
  private classify(v4: DefaultClass[], v6: DefaultClass[]): RejectReason | null {
    if (this.family === 6) {
      for (const c of v6) if (matches6(c.rule, this.buf, this.dst6At)) return c.reason;
    }
    const a = this.family === 4 ? this.dst4 : this.embedded4;
    if (a < 0) return null;
    for (const c of v4) if ((a & c.rule.mask4) >>> 0 === c.rule.net4) return c.reason;
    const b = this.family === 4 ? -1 : this.embedded4b;
    if (b < 0) return null;
    for (const c of v4) if ((b & c.rule.mask4) >>> 0 === c.rule.net4) return c.reason;
    return null;
  }

  /** Read the header into the fields above; false if malformed. */
  private parse(buf: Buffer, offset: number, len: number): boolean {
    if (!Number.isInteger(offset) || !Number.isInteger(len)) return false;
    if (offset < 0 || len < 1 || offset + len > buf.length) return false;
    this.buf = buf;
    this.port = -1;
    this.udp = false;
    this.embedded4 = -1;
    this.embedded4b = -1;
    this.nat64Local = false;
    this.icmp = ICMP_NOT_ERROR;
    const version = (buf[offset] as number) >> 4;
    if (version === 4) {
      if (len < 20) return false;
      const ihl = ((buf[offset] as number) & 0x0f) * 4;
      const total = buf.readUInt16BE(offset + 2);
      if (ihl < 20 || total < ihl || total > len) return false;
      this.family = 4;
      this.dst4 = buf.readUInt32BE(offset + 16);
      const proto = buf[offset + 9] as number;
      const flags = buf.readUInt16BE(offset + 6);
      const fragOffset = flags & 0x1fff;
      if ((proto === TCP || proto === UDP) && fragOffset === 0) {
        if (ihl + 4 > total) return false;
        this.port = buf.readUInt16BE(offset + ihl + 2);
        this.udp = proto === UDP;
      }
      if (proto === ICMP && fragOffset === 0) {
        // A later fragment shows no ICMP header; reassembly needs the first
        // one, which is judged here with the quote it carries.
        this.icmp = checkIcmp4(buf, offset, offset + total, offset + ihl, (flags & 0x2000) !== 0);
      }
      return true;
    }
    if (version !== 6 || len < 40) return false;
    const end = 40 + buf.readUInt16BE(offset + 4);
    if (end > len) return false;
    this.family = 6;
    this.dst6At = offset + 24;
    this.embedded4 = embeddedIpv4(buf, this.dst6At, 0);
    if (this.embedded4 >= 0) {
      // Only Teredo has a second address; only 00xx:... can be NAT64's.
      this.embedded4b = embeddedIpv4(buf, this.dst6At, 1);
    } else if (buf[this.dst6At] === 0) {
      this.nat64Local = isNat64LocalUse(buf, this.dst6At);
    }
    let next = buf[offset + 6] as number;
    let pos = 40;
    let fragmented = false;
    for (let hops = 0; isIpv6Extension(next); hops += 1) {
      if (hops > MAX_IPV6_EXTENSIONS) return false; // an absurd chain of extension headers
      // Hop-by-hop, routing, destination options: (len+1)*8; AH: (len+2)*4;
      // fragment: 8, and a non-first fragment carries no transport header.
      if (pos + (next === 44 ? 8 : 2) > end) return false;
      const size = ipv6ExtensionSize(buf, offset + pos, next);
      const fragOffset = next === 44 ? buf.readUInt16BE(offset + pos + 2) >> 3 : 0;
      if (next === 44) fragmented = true;
      next = buf[offset + pos] as number;
      pos += size;
      if (pos > end) return false;
      if (fragOffset !== 0) return true;
    }
    if (next === ICMP6) {
      this.icmp = checkIcmp6(buf, offset, offset + end, offset + pos, fragmented);
    }
    if (next === TCP || next === UDP) {
      if (pos + 4 > end) return false;
      this.port = buf.readUInt16BE(offset + pos + 2);
      this.udp = next === UDP;
    }
    return true;
  }
}
