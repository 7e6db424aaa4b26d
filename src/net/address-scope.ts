/**
 * Which addresses a relay may dial when a circuit asks it to extend
 * (docs/protocol.md section 7.4). An EXTEND names any address; a relay
 * that dialled loopback, its own host or a private network would let any
 * client make it send DTLS handshakes to places only it can reach (Tor
 * refuses these by default too: ExtendAllowPrivateAddresses). A network
 * of relays on private addresses (a testnet, the end-to-end tests) turns
 * the check off.
 *
 * Addresses that embed an IPv4 address (IPv4-mapped ::ffff:0:0/96, the
 * NAT64 prefix 64:ff9b::/96, 6to4 2002::/16) are judged as that IPv4
 * address: a dual-stack socket or a NAT64 or 6to4 gateway would carry the
 * handshake there.
 */
import { cidrContains, parseCidr, type Cidr } from './cidr.js';

export type AddressScope =
  'public' | 'unspecified' | 'loopback' | 'private' | 'link-local' | 'multicast' | 'reserved';

const V4: [Cidr, AddressScope][] = (
  [
    ['0.0.0.0/8', 'unspecified'],
    ['127.0.0.0/8', 'loopback'],
    ['10.0.0.0/8', 'private'],
    ['172.16.0.0/12', 'private'],
    ['192.168.0.0/16', 'private'],
    ['100.64.0.0/10', 'private'],
    ['169.254.0.0/16', 'link-local'],
    ['224.0.0.0/4', 'multicast'],
    ['240.0.0.0/4', 'reserved'],
  ] as const
).map(([c, s]) => [parseCidr(c), s]);

const V6: [Cidr, AddressScope][] = (
  [
    ['::/128', 'unspecified'],
    ['::1/128', 'loopback'],
    ['fc00::/7', 'private'],
    // RFC 8215: NAT64 for local use only.
    ['64:ff9b:1::/48', 'private'],
    ['fe80::/10', 'link-local'],
    ['fec0::/10', 'link-local'],
    ['ff00::/8', 'multicast'],
    // The deprecated IPv4-compatible addresses (::a.b.c.d).
    ['::/96', 'reserved'],
  ] as const
).map(([c, s]) => [parseCidr(c), s]);

const MAPPED = parseCidr('::ffff:0:0/96');
const NAT64 = parseCidr('64:ff9b::/96');
const SIX_TO_FOUR = parseCidr('2002::/16');

/** The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4), else the address itself. */
export function effectiveAddress(ip: Buffer): Buffer {
  if (ip.length !== 16) return ip;
  if (cidrContains(MAPPED, ip) || cidrContains(NAT64, ip)) return ip.subarray(12);
  if (cidrContains(SIX_TO_FOUR, ip)) return ip.subarray(2, 6);
  return ip;
}

/** The scope of a 4- or 16-byte address; anything else is 'reserved'. */
export function addressScope(ip: Buffer): AddressScope {
  const e = effectiveAddress(ip);
  if (e.length !== 4 && e.length !== 16) return 'reserved';
  for (const [c, s] of e.length === 4 ? V4 : V6) if (cidrContains(c, e)) return s;
  return 'public';
}

/**
 * Why a relay must not extend to `ip`, or null if it may: with
 * `allowPrivate` every address is allowed; without it, only public
 * addresses that are not among `own` (this host's addresses, as bytes).
 */
export function extendRefusal(
  ip: Buffer,
  own: readonly Buffer[],
  allowPrivate: boolean,
): string | null {
  if (allowPrivate) return null;
  const scope = addressScope(ip);
  if (scope !== 'public') return scope;
  const e = effectiveAddress(ip);
  for (const a of own) if (effectiveAddress(a).equals(e)) return 'own address';
  return null;
}
