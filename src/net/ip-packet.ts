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
