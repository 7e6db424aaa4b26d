/**
 * Minimal IP header reading for routing decisions on the packet path: the
 * version and the source/destination addresses, with the length checked
 * first. Keys are numbers for IPv4 (no allocation) and strings for IPv6.
 */

/** 0 if the packet is not a plausible IPv4/IPv6 packet, else 4 or 6. */
export function ipVersion(buf: Buffer, offset: number, len: number): 0 | 4 | 6 {
  if (len < 1) return 0;
  const v = (buf[offset] as number) >> 4;
  if (v === 4 && len >= 20) return 4;
  if (v === 6 && len >= 40) return 6;
  return 0;
}

/** IPv4 source address as an unsigned 32-bit number (caller checked version 4). */
export function ipv4Source(buf: Buffer, offset: number): number {
  return buf.readUInt32BE(offset + 12);
}

export function ipv4Destination(buf: Buffer, offset: number): number {
  return buf.readUInt32BE(offset + 16);
}

/** IPv6 source address as hex (caller checked version 6). */
export function ipv6Source(buf: Buffer, offset: number): string {
  return buf.toString('hex', offset + 8, offset + 24);
}

export function ipv6Destination(buf: Buffer, offset: number): string {
  return buf.toString('hex', offset + 24, offset + 40);
}

/** Key of an address in the same form as the readers above. */
export function addressKey(ip: Buffer): number | string {
  return ip.length === 4 ? ip.readUInt32BE(0) : ip.toString('hex');
}

// ------------------------------------------------ IPv4 inside IPv6 addresses

/**
 * The IPv4 address an IPv6 address at buf[at, at+16) stands for, or -1.
 * `index` 0 is the address traffic is delivered to: IPv4-mapped
 * (::ffff:0:0/96), IPv4-compatible (::/96, deprecated), NAT64's well-known
 * prefix (64:ff9b::/96, RFC 6052), 6to4 (2002::/16, RFC 3056: bits 16-47)
 * and Teredo's client (2001::/32, RFC 4380: the last 32 bits inverted);
 * `index` 1 is Teredo's server (bits 32-63), the only second address.
 * NAT64's local-use prefix 64:ff9b:1::/48 (RFC 8215) is not here: where
 * its IPv4 address sits depends on the length of the prefix an operator
 * carved out of it, so it cannot be read (see isNat64LocalUse).
 */
export function embeddedIpv4(buf: Buffer, at: number, index: 0 | 1): number {
  // The first byte rules out almost every address (this runs per packet).
  const b0 = buf[at] as number;
  const b1 = buf[at + 1] as number;
  if (b0 === 0x20) {
    if (b1 === 0x02) return index === 0 ? buf.readUInt32BE(at + 2) : -1;
    if (b1 !== 0x01 || buf[at + 2] !== 0 || buf[at + 3] !== 0) return -1;
    return index === 0 ? ~buf.readUInt32BE(at + 12) >>> 0 : buf.readUInt32BE(at + 4);
  }
  if (b0 !== 0 || index !== 0) return -1;
  const w1 = buf.readUInt32BE(at + 4);
  const w2 = buf.readUInt32BE(at + 8);
  if (w1 !== 0) return -1;
  if (b1 === 0 && buf[at + 2] === 0 && buf[at + 3] === 0 && (w2 === 0xffff || w2 === 0)) {
    return buf.readUInt32BE(at + 12);
  }
  if (b1 === 0x64 && buf[at + 2] === 0xff && buf[at + 3] === 0x9b && w2 === 0) {
    return buf.readUInt32BE(at + 12);
  }
  return -1;
}

/** True for 64:ff9b:1::/48, NAT64's local-use prefix (RFC 8215). */
export function isNat64LocalUse(buf: Buffer, at: number): boolean {
  return (
    buf[at] === 0 &&
    buf[at + 1] === 0x64 &&
    buf[at + 2] === 0xff &&
    buf[at + 3] === 0x9b &&
    buf[at + 4] === 0 &&
    buf[at + 5] === 1
  );
}

// ------------------------------------------------ ICMP errors and their quotes

/** checkIcmp4/checkIcmp6 results. */
export const ICMP_NOT_ERROR = 0;
/** An error about a packet the sender received from the error's destination. */
export const ICMP_OWN_QUOTE = 1;
/** An error whose quoted packet is not one the sender received from its destination. */
export const ICMP_FOREIGN_QUOTE = 2;
/** Too short, not IP, about a later fragment, about an ICMP error, or fragmented. */
export const ICMP_BAD_QUOTE = 3;
/** An IPv4 redirect: never from an end host. */
export const ICMP_REDIRECT = 4;
/** Packet too big / fragmentation needed below MIN_QUOTED_MTU. */
export const ICMP_LOW_MTU = 5;
export type IcmpCheck = 0 | 1 | 2 | 3 | 4 | 5;

/**
 * The smallest path MTU a client may report in ICMPv6 packet too big or
 * ICMPv4 fragmentation needed: IPv6's minimum link MTU (RFC 8200), which
 * the circuit's inner MTU is at least. Anything less would only lower the
 * path MTU that destinations keep for the exit's address, which every
 * client of the exit shares.
 */
export const MIN_QUOTED_MTU = 1280;

/** ICMPv4 types that report an error about a quoted packet (RFC 792, 1812). */
function isIcmp4Error(type: number): boolean {
  return type === 3 || type === 4 || type === 5 || type === 11 || type === 12;
}

/**
 * Judge an ICMPv4 message a client sent. `ip` is the outer header's offset,
 * `end` the end of the outer packet (by its total length), `icmp` the ICMP
 * header's offset, `fragmented` whether the outer packet is a fragment.
 * Reads nothing outside [ip, end); never throws for ip <= icmp <= end <= buf.length.
 *
 * An error a client sends is about a packet it received, so the quoted
 * packet must run from the error's destination to the error's source.
 */
export function checkIcmp4(
  buf: Buffer,
  ip: number,
  end: number,
  icmp: number,
  fragmented: boolean,
): IcmpCheck {
  if (icmp + 8 > end) return ICMP_BAD_QUOTE;
  const type = buf[icmp] as number;
  if (!isIcmp4Error(type)) return ICMP_NOT_ERROR;
  if (type === 5) return ICMP_REDIRECT;
  if (fragmented) return ICMP_BAD_QUOTE;
  const q = icmp + 8;
  if (q + 20 > end || (buf[q] as number) >> 4 !== 4) return ICMP_BAD_QUOTE;
  const qihl = ((buf[q] as number) & 0x0f) * 4;
  if (qihl < 20 || q + qihl + 8 > end || buf.readUInt16BE(q + 2) < qihl) return ICMP_BAD_QUOTE;
  if (buf.readUInt32BE(q + 12) !== buf.readUInt32BE(ip + 16)) return ICMP_FOREIGN_QUOTE;
  if (buf.readUInt32BE(q + 16) !== buf.readUInt32BE(ip + 12)) return ICMP_FOREIGN_QUOTE;
  // Hosts send errors only about a first fragment, and never about an error.
  if ((buf.readUInt16BE(q + 6) & 0x1fff) !== 0) return ICMP_BAD_QUOTE;
  if (buf[q + 9] === 1 && isIcmp4Error(buf[q + qihl] as number)) return ICMP_BAD_QUOTE;
  if (type === 3 && buf[icmp + 1] === 4 && buf.readUInt16BE(icmp + 6) < MIN_QUOTED_MTU) {
    return ICMP_LOW_MTU;
  }
  return ICMP_OWN_QUOTE;
}

function sameBytes(buf: Buffer, a: number, b: number, n: number): boolean {
  for (let i = 0; i < n; i += 1) if (buf[a + i] !== buf[b + i]) return false;
  return true;
}

/** The IPv6 extension headers walked here and in the exit policy. */
export function isIpv6Extension(next: number): boolean {
  return next === 0 || next === 43 || next === 60 || next === 51 || next === 44;
}

/** Size of the extension header `next` at buf[at] (which must hold 2 bytes). */
export function ipv6ExtensionSize(buf: Buffer, at: number, next: number): number {
  if (next === 44) return 8;
  const l = buf[at + 1] as number;
  return next === 51 ? (l + 2) * 4 : (l + 1) * 8;
}

/** IPv6 extension headers the walkers follow before giving up. */
export const MAX_IPV6_EXTENSIONS = 8;

/**
 * Judge an ICMPv6 message a client sent; as checkIcmp4, for IPv6
 * (`end`: 40 + payload length after `ip`). Types below 128 are errors
 * (RFC 4443 2.1), and connection tracking relates every one of them to the
 * flow it quotes, so all are checked.
 */
export function checkIcmp6(
  buf: Buffer,
  ip: number,
  end: number,
  icmp: number,
  fragmented: boolean,
): IcmpCheck {
  if (icmp + 8 > end) return ICMP_BAD_QUOTE;
  const type = buf[icmp] as number;
  if (type >= 128) return ICMP_NOT_ERROR;
  if (fragmented) return ICMP_BAD_QUOTE;
  const q = icmp + 8;
  if (q + 48 > end || (buf[q] as number) >> 4 !== 6) return ICMP_BAD_QUOTE;
  // Quoted source = outer destination, quoted destination = outer source.
  if (!sameBytes(buf, q + 8, ip + 24, 16)) return ICMP_FOREIGN_QUOTE;
  if (!sameBytes(buf, q + 24, ip + 8, 16)) return ICMP_FOREIGN_QUOTE;
  // Never about an ICMPv6 error (RFC 4443 2.4 e.1), as far as the quote shows it.
  let next = buf[q + 6] as number;
  let pos = q + 40;
  for (let hops = 0; isIpv6Extension(next) && hops < MAX_IPV6_EXTENSIONS; hops += 1) {
    if (pos + 2 > end) break;
    const size = ipv6ExtensionSize(buf, pos, next);
    next = buf[pos] as number;
    pos += size;
  }
  if (next === 58 && pos < end && (buf[pos] as number) < 128) return ICMP_BAD_QUOTE;
  if (type === 2 && buf.readUInt32BE(icmp + 4) < MIN_QUOTED_MTU) return ICMP_LOW_MTU;
  return ICMP_OWN_QUOTE;
}
