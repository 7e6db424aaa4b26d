/**
 * Direct-mode AUTH attributes: the inner addresses a tunnel end claims.
 *
 *   count u8, then per address: family u8 (4 or 6), prefix u8, 4 or 16 bytes
 *
 * decodeAddresses returns null on any malformed input; it never throws.
 */
import type { Cidr } from '../net/cidr.js';
import { formatIp } from '../net/cidr.js';

export const MAX_ADDRESSES = 8;

export function encodeAddresses(list: Cidr[]): Buffer {
  const parts: Buffer[] = [Buffer.from([list.length])];
  for (const c of list) parts.push(Buffer.from([c.family, c.prefix]), c.address);
  return Buffer.concat(parts);
}

export function decodeAddresses(buf: Buffer): Cidr[] | null {
  if (buf.length < 1) return null;
  const count = buf[0] as number;
  if (count > MAX_ADDRESSES) return null;
  const out: Cidr[] = [];
  let o = 1;
  for (let i = 0; i < count; i += 1) {
    if (o + 2 > buf.length) return null;
    const family = buf[o] as number;
    const prefix = buf[o + 1] as number;
    const size = family === 4 ? 4 : family === 6 ? 16 : 0;
    if (size === 0 || prefix > size * 8 || o + 2 + size > buf.length) return null;
    const address = Buffer.from(buf.subarray(o + 2, o + 2 + size));
    out.push({
      family: family === 4 ? 4 : 6,
      address,
      prefix,
      text: `${formatIp(address)}/${prefix}`,
    });
    o += 2 + size;
  }
  return o === buf.length ? out : null;
}
