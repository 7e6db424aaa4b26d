/**
 * IP addresses and prefixes as bytes (4 or 16), parsed from text with
 * clear errors. Used for inner addresses, routes and policies; never on
 * the per-packet path except through the precomputed forms.
 */
import net from 'node:net';
import { errors } from '../errors.js';

export interface Cidr {
  family: 4 | 6;
  /** The address as written (host bits kept: "10.9.0.1/24" is address .1 in a /24). */
  address: Buffer;
  prefix: number;
  text: string;
}

export function parseIp(text: string): Buffer | null {
  const kind = net.isIP(text);
  if (kind === 4) return Buffer.from(text.split('.').map((x) => Number(x)));
  if (kind === 6) return ipv6Bytes(text);
  return null;
}

function ipv6Bytes(text: string): Buffer {
  // Expand "::" and an embedded IPv4 tail; net.isIP already validated it.
  let t = text;
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(t);
  if (v4?.[1]) {
    const b = v4[1].split('.').map(Number);
    t =
      t.slice(0, -v4[1].length) +
      `${(((b[0] ?? 0) << 8) | (b[1] ?? 0)).toString(16)}:${(((b[2] ?? 0) << 8) | (b[3] ?? 0)).toString(16)}`;
  }
  const [head, tail] = t.includes('::') ? t.split('::') : [t, undefined];
  const h = head ? head.split(':') : [];
  const tl = tail !== undefined && tail !== '' ? tail.split(':') : [];
  const fill = tail !== undefined ? 8 - h.length - tl.length : 0;
  const groups = [...h, ...Array<string>(fill).fill('0'), ...tl];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}

export function formatIp(b: Buffer): string {
  if (b.length === 4) return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(b.readUInt16BE(i).toString(16));
  // Compress the longest run of zero groups (RFC 5952).
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== '0') {
      i += 1;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === '0') j += 1;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (best < 0) return groups.join(':');
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
}

/** Parse "ADDR/PREFIX" (prefix required) or throw a user error naming `what`. */
export function parseCidr(text: string, what = 'address'): Cidr {
  const t = text.trim();
  const slash = t.lastIndexOf('/');
  if (slash < 0) throw errors.badArgument(`${what} '${t}' needs a prefix length, e.g. 10.9.0.1/24`);
  const address = parseIp(t.slice(0, slash));
  const prefixText = t.slice(slash + 1);
  if (!address) throw errors.badArgument(`${what} '${t}' is not an IPv4 or IPv6 address`);
  const max = address.length * 8;
  if (!/^\d{1,3}$/.test(prefixText) || Number(prefixText) > max) {
    throw errors.badArgument(`${what} '${t}' has a bad prefix length (0-${max})`);
  }
  return {
    family: address.length === 4 ? 4 : 6,
    address,
    prefix: Number(prefixText),
    text: `${formatIp(address)}/${prefixText}`,
  };
}

/** True if `ip` (4 or 16 bytes) lies inside the network of `cidr`. */
export function cidrContains(cidr: Cidr, ip: Buffer): boolean {
  if (ip.length !== cidr.address.length) return false;
  let bits = cidr.prefix;
  for (let i = 0; i < ip.length && bits > 0; i += 1) {
    const mask = bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff;
    if (((ip[i] as number) & mask) !== ((cidr.address[i] as number) & mask)) return false;
    bits -= 8;
  }
  return true;
}

/** Parse "HOST:PORT" or "[V6]:PORT" with a clear error. */
export function parseHostPort(text: string, what: string): { host: string; port: number } {
  const t = text.trim();
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(t) ?? /^([^:]+):(\d+)$/.exec(t);
  if (!m || !m[1] || !m[2]) {
    throw errors.badArgument(`${what} '${t}' must be HOST:PORT (IPv6: [ADDR]:PORT)`);
  }
  const port = Number(m[2]);
  if (port < 1 || port > 65535) throw errors.badArgument(`${what} '${t}' has a bad port (1-65535)`);
  if (!net.isIP(m[1])) {
    throw errors.badArgument(
      `${what} '${t}': '${m[1]}' is not an IP address (names are not resolved)`,
    );
  }
  return { host: m[1], port };
}
