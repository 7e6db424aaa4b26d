/**
 * Pure decoders of network bytes: link messages (AUTH, CLOSE), direct-mode
 * address attributes, and the IP header readers of the packet path.
 */
import { isDeepStrictEqual } from 'node:util';
import { decodeAddresses, encodeAddresses, MAX_ADDRESSES } from '../../../src/direct/attributes.js';
import {
  AUTH_FIXED_BYTES,
  AUTH_MAX_ATTRIBUTE_BYTES,
  closeReasonText,
  decodeAuth,
  decodeClose,
  encodeAuth,
  MSG_CLOSE,
  ROLE_DIALER,
  ROLE_LISTENER,
  type AuthMessage,
} from '../../../src/link/messages.js';
import { formatIp, parseCidr, type Cidr } from '../../../src/net/cidr.js';
import {
  addressKey,
  ipv4Destination,
  ipv4Source,
  ipv6Destination,
  ipv6Source,
  ipVersion,
} from '../../../src/net/ip-packet.js';
import type { Rng } from '../rng.js';
import { check, codecTarget, type FuzzTarget } from '../target.js';

/** A copy of `input` at offset `pad` inside a larger buffer of filler. */
function embedded(input: Buffer, pad: number): Buffer {
  return Buffer.concat([Buffer.alloc(pad, 0xee), input, Buffer.alloc(5, 0xee)]);
}

// --- AUTH ---------------------------------------------------------------------

function randomCidr(rng: Rng, sloppy = false): Cidr {
  const family = rng.chance(0.5) ? 4 : 6;
  const address = rng.bytes(family === 4 ? 4 : 16);
  const bits = family === 4 ? 32 : 128;
  const prefix = sloppy && rng.chance(0.1) ? bits + 1 : rng.range(0, bits);
  return { family, address, prefix, text: `${formatIp(address)}/${prefix}` };
}

function randomAuth(rng: Rng): AuthMessage {
  const attrLen = rng.chance(0.5) ? rng.below(40) : rng.below(AUTH_MAX_ATTRIBUTE_BYTES + 2);
  return {
    role: rng.chance(0.9) ? rng.pick([ROLE_DIALER, ROLE_LISTENER]) : rng.below(256),
    publicKey: rng.bytes(32),
    signature: rng.bytes(64),
    attributes: rng.chance(0.5)
      ? encodeAddresses([randomCidr(rng), randomCidr(rng)])
      : rng.bytes(attrLen),
  };
}

/**
 * decodeAuth over a window, with its window contract checked: the same
 * bytes at an offset decode the same, windows past the buffer are refused,
 * and the result owns its bytes (the endpoint's receive buffer is reused).
 */
function decodeAuthChecked(input: Buffer): AuthMessage | null {
  const v = decodeAuth(input, 0, input.length);
  const pad = 1 + (input.length % 7);
  const big = embedded(input, pad);
  const at = decodeAuth(big, pad, input.length);
  check(isDeepStrictEqual(at, v), 'decodeAuth at an offset differs from offset 0');
  check(decodeAuth(input, 0, input.length + 1) === null, 'decodeAuth read past the buffer');
  check(decodeAuth(input, -1, input.length) === null, 'decodeAuth accepted a negative offset');
  check(decodeAuth(input, 1, input.length) === null, 'decodeAuth read past the buffer (offset)');
  if (v && at) {
    check(v.publicKey.length === 32 && v.signature.length === 64, 'AUTH field sizes');
    check(v.attributes.length <= AUTH_MAX_ATTRIBUTE_BYTES, 'AUTH attributes over the limit');
    check(AUTH_FIXED_BYTES + v.attributes.length === input.length, 'AUTH length accounting');
    const before = Buffer.concat([at.publicKey, at.signature, at.attributes]);
    big.fill(0x5a);
    const after = Buffer.concat([at.publicKey, at.signature, at.attributes]);
    check(before.equals(after), 'decodeAuth returned views into the receive buffer, not copies');
  }
  return v;
}

export const authTarget = codecTarget<AuthMessage>({
  name: 'link/decodeAuth',
  seeds: () => [
    encodeAuth({
      role: ROLE_DIALER,
      publicKey: Buffer.alloc(32, 0xaa),
      signature: Buffer.alloc(64, 0xbb),
      attributes: Buffer.alloc(0),
    }),
    encodeAuth({
      role: ROLE_LISTENER,
      publicKey: Buffer.alloc(32, 1),
      signature: Buffer.alloc(64, 2),
      attributes: encodeAddresses([parseCidr('10.9.0.1/24'), parseCidr('fd09::1/64')]),
    }),
    encodeAuth({
      role: ROLE_DIALER,
      publicKey: Buffer.alloc(32, 3),
      signature: Buffer.alloc(64, 4),
      attributes: Buffer.alloc(AUTH_MAX_ATTRIBUTE_BYTES, 7),
    }),
  ],
  decode: decodeAuthChecked,
  encode: encodeAuth,
  generate: (rng) => encodeAuth(randomAuth(rng)),
  fields: (b) => (b.length >= 101 ? [{ offset: 99, size: 2, value: b.length - 101 }] : []),
  maxLength: 1024,
});

// --- CLOSE --------------------------------------------------------------------

export const closeTarget = codecTarget<number>({
  name: 'link/decodeClose',
  seeds: () => [0, 1, 2, 3, 4, 5, 6].map((r) => Buffer.from([MSG_CLOSE, r])),
  decode(input) {
    const v = decodeClose(input, 0, input.length);
    const pad = 1 + (input.length % 5);
    check(
      decodeClose(embedded(input, pad), pad, input.length) === v,
      'decodeClose at an offset differs',
    );
    check(decodeClose(input, 0, input.length + 1) === null, 'decodeClose read past the buffer');
    check(decodeClose(input, 1, input.length) === null, 'decodeClose read past the buffer');
    return v;
  },
  encode: (reason) => Buffer.from([MSG_CLOSE, reason]),
  validate(reason) {
    check(Number.isInteger(reason) && reason >= 0 && reason <= 255, 'close reason is a byte');
    check(closeReasonText(reason).length > 0, 'every close reason has a text');
  },
  generate: (rng) => Buffer.from([MSG_CLOSE, rng.below(256)]),
  maxLength: 16,
  weight: 0.5,
});

// --- direct-mode address attributes --------------------------------------------

export const addressesTarget = codecTarget<Cidr[]>({
  name: 'direct/decodeAddresses',
  seeds: () => [
    encodeAddresses([]),
    encodeAddresses([parseCidr('10.9.0.2/32')]),
    encodeAddresses([parseCidr('10.9.0.2/24'), parseCidr('fd09::2/64')]),
    encodeAddresses(Array.from({ length: MAX_ADDRESSES }, (_, i) => parseCidr(`10.9.${i}.1/24`))),
    encodeAddresses([parseCidr('::/0'), parseCidr('0.0.0.0/0'), parseCidr('::ffff:1.2.3.4/128')]),
  ],
  decode: decodeAddresses,
  encode: encodeAddresses,
  validate(list) {
    check(list.length <= MAX_ADDRESSES, 'more addresses than MAX_ADDRESSES');
    for (const c of list) {
      check(c.address.length === (c.family === 4 ? 4 : 16), 'address size matches family');
      check(c.prefix >= 0 && c.prefix <= c.address.length * 8, 'prefix within the address');
      // The text form (shown in logs and status) must name the same prefix.
      const again = parseCidr(c.text);
      check(
        again.address.equals(c.address) && again.prefix === c.prefix,
        `text ${c.text} does not parse back to the same prefix`,
      );
    }
  },
  generate(rng) {
    const n = rng.chance(0.9) ? rng.below(MAX_ADDRESSES + 1) : MAX_ADDRESSES + 1;
    return encodeAddresses(Array.from({ length: n }, () => randomCidr(rng, true)));
  },
  fields: (b) => (b.length ? [{ offset: 0, size: 1, value: b[0] as number }] : []),
  maxLength: 512,
});

// --- IP header readers ----------------------------------------------------------

function randomIpPacket(rng: Rng): Buffer {
  const v6 = rng.chance(0.5);
  const header = v6 ? 40 : 20;
  const p = rng.bytes(header + rng.below(64));
  p[0] = v6 ? 0x60 | ((p[0] as number) & 0x0f) : 0x45;
  return p;
}

let ipAccepted = 0;
let ipRejected = 0;

function checkIp(buf: Buffer, o: number, len: number): 0 | 4 | 6 {
  const v = ipVersion(buf, o, len);
  check(v === 0 || v === 4 || v === 6, `ipVersion returned ${String(v)}`);
  const nibble = len >= 1 ? (buf[o] as number) >> 4 : -1;
  const expected = nibble === 4 && len >= 20 ? 4 : nibble === 6 && len >= 40 ? 6 : 0;
  check(v === expected, `ipVersion ${v}, expected ${expected} (len ${len})`);
  if (v === 4) {
    const src = Buffer.from(buf.subarray(o + 12, o + 16));
    const dst = Buffer.from(buf.subarray(o + 16, o + 20));
    // The routing key of a packet must equal the key of the address it carries.
    check(ipv4Source(buf, o) === addressKey(src), 'IPv4 source key != addressKey(source)');
    check(ipv4Destination(buf, o) === addressKey(dst), 'IPv4 destination key mismatch');
  } else if (v === 6) {
    const src = Buffer.from(buf.subarray(o + 8, o + 24));
    const dst = Buffer.from(buf.subarray(o + 24, o + 40));
    check(ipv6Source(buf, o) === addressKey(src), 'IPv6 source key != addressKey(source)');
    check(ipv6Destination(buf, o) === addressKey(dst), 'IPv6 destination key mismatch');
  }
  return v;
}

export const ipPacketTarget: FuzzTarget = {
  name: 'net/ip-packet',
  seeds: () => [
    Buffer.concat([
      Buffer.from('4500001c00000000401100000a0900020a090001', 'hex'),
      Buffer.alloc(8),
    ]),
    Buffer.concat([
      Buffer.from('6000000000083a40', 'hex'),
      parseCidr('fd09::2/128').address,
      parseCidr('fd09::1/128').address,
      Buffer.from('8000000000000000', 'hex'),
    ]),
  ],
  run(input) {
    const v = checkIp(input, 0, input.length);
    // The same bytes inside a larger buffer, and a window one byte short.
    const pad = 1 + (input.length % 9);
    check(checkIp(embedded(input, pad), pad, input.length) === v, 'ipVersion depends on offset');
    if (input.length > 0) checkIp(input, 0, input.length - 1);
    check(ipVersion(input, 0, 0) === 0, 'an empty window is not a packet');
    if (v === 0) ipRejected += 1;
    else ipAccepted += 1;
    return v !== 0;
  },
  generate: randomIpPacket,
  maxLength: 256,
  weight: 0.5,
  stats: () => `accepted ${ipAccepted}, rejected ${ipRejected}`,
};
