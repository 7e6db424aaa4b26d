/**
 * Relay descriptors: a signed, versioned record of one relay's keys,
 * addresses, roles and exit policy summary. Wire format (docs/protocol.md,
 * "Relay descriptors"):
 *
 *   body = msgpack [v, id, onion, link, addrs, roles, policy, bw, pub, exp, net]
 *   sig  = Ed25519(id, "shallot descriptor v1" || 0x00 || body)
 *   wire = msgpack [bin body, bin sig]            at most 996 bytes
 *   text = base64url(wire), no padding, one line
 *
 * Both msgpack layers must be canonical (every length and integer in its
 * shortest form, which is what msgpackr writes): the verifier re-encodes
 * what it decoded and rejects any difference, so one descriptor has exactly
 * one byte string and no bit of the wire can change without rejection.
 *
 * `verifyDescriptor` takes untrusted bytes and never throws.
 */
import { Packr, Unpackr } from 'msgpackr';
import { ShallotError, errors } from '../errors.js';
import { type Identity, nodeIdOf, signDetached, verifyDetached } from '../identity.js';
import { formatIp, parseIp } from '../net/cidr.js';

export interface Descriptor {
  /** Hex of `publicKey`: the node id. */
  id: string;
  /** Ed25519 identity key (32 bytes); the descriptor is signed by it. */
  publicKey: Buffer;
  /** X25519 onion key (32 bytes). */
  onionKey: Buffer;
  /** SHA-256 of the relay's DTLS link certificate DER (32 bytes). */
  linkFingerprint: Buffer;
  /** 1-4 distinct addresses; `host` is an IP literal (IPv6 without brackets). */
  addresses: { host: string; port: number }[];
  roles: { relay: boolean; exit: boolean };
  /** Exit policy summary, printable ASCII, at most 200 characters; '' for a non-exit. */
  policy: string;
  /** Advertised bandwidth, kB/s (0 .. 2^32-1). */
  bandwidth: number;
  /** Unix seconds (0 .. 2^32-1). */
  published: number;
  /** Unix seconds; published < expires <= published + 7 days. */
  expires: number;
  /** Network name: 1-32 of A-Z a-z 0-9 . _ - */
  network: string;
}

export type DescriptorFields = Omit<
  Descriptor,
  'id' | 'publicKey' | 'onionKey' | 'linkFingerprint'
>;

export type DescriptorRejectReason =
  | 'malformed'
  | 'oversize'
  | 'bad-signature'
  | 'expired'
  | 'not-yet-valid'
  | 'wrong-network'
  | 'bad-field';

export const DESCRIPTOR_REJECT_REASONS: readonly DescriptorRejectReason[] = [
  'malformed',
  'oversize',
  'bad-signature',
  'expired',
  'not-yet-valid',
  'wrong-network',
  'bad-field',
];

export type DescriptorResult =
  | { ok: true; descriptor: Descriptor; wire: Buffer }
  | { ok: false; reason: DescriptorRejectReason };

export const DESCRIPTOR_VERSION = 1;
/** BEP 44 caps a bencoded value at 1000 bytes: "996:" plus 996 bytes. */
export const DESCRIPTOR_MAX_BYTES = 996;
/** Signature context, prepended to the body bytes (ends with one 0x00 byte). */
export const DESCRIPTOR_SIGNING_CONTEXT = Buffer.from('shallot descriptor v1\0', 'latin1');
export const DESCRIPTOR_MAX_LIFETIME_S = 7 * 24 * 3600;
export const DESCRIPTOR_DEFAULT_CLOCK_SKEW_S = 300;
export const DESCRIPTOR_MAX_ADDRESSES = 4;
export const DESCRIPTOR_MAX_POLICY_CHARS = 200;
export const DESCRIPTOR_MAX_NETWORK_CHARS = 32;
/** base64url length of the largest allowed wire form. */
export const DESCRIPTOR_MAX_TEXT_CHARS = Math.ceil((DESCRIPTOR_MAX_BYTES * 4) / 3);

export const ROLE_RELAY = 1;
export const ROLE_EXIT = 2;

const KEY_BYTES = 32;
const SIGNATURE_BYTES = 64;
const BODY_FIELDS = 11;
const UINT32_MAX = 0xffffffff;
const POLICY_RE = /^[\x20-\x7e]*$/;
const NETWORK_RE = /^[A-Za-z0-9._-]{1,32}$/;
const BASE64URL_RE = /^[A-Za-z0-9_-]*$/;
/** fromText refuses longer lines outright (the verifier would say 'oversize'). */
const TEXT_HARD_LIMIT = 4 * DESCRIPTOR_MAX_TEXT_CHARS;

// Shortest-form MessagePack: with records off, msgpackr writes every integer,
// string, bin and array length in its shortest form. Only arrays, bins,
// unsigned integers and ASCII strings are ever encoded here.
const packr = new Packr({
  useRecords: false,
  structuredClone: false,
  bundleStrings: false,
  moreTypes: false,
  useFloat32: 0,
});
// Maps (never valid here) decode to Map objects, so no key can reach a
// prototype; 64-bit integers decode to bigint, which no field accepts.
const unpackr = new Unpackr({
  useRecords: false,
  structuredClone: false,
  bundleStrings: false,
  mapsAsObjects: false,
  int64AsType: 'bigint',
});

function pack(value: unknown): Buffer {
  // msgpackr returns a view of its shared output buffer: copy it out.
  return Buffer.from(packr.pack(value));
}

type BodyArray = [
  number,
  Buffer,
  Buffer,
  Buffer,
  [Buffer, number][],
  number,
  string,
  number,
  number,
  number,
  string,
];

function isUint(x: unknown, max: number): x is number {
  return typeof x === 'number' && Number.isInteger(x) && x >= 0 && x <= max;
}

function isBytes(x: unknown, length: number): x is Buffer {
  return Buffer.isBuffer(x) && x.length === length;
}

function encodeBody(d: Descriptor, ips: Buffer[]): Buffer {
  const body: BodyArray = [
    DESCRIPTOR_VERSION,
    d.publicKey,
    d.onionKey,
    d.linkFingerprint,
    d.addresses.map((a, i) => [ips[i] as Buffer, a.port]),
    (d.roles.relay ? ROLE_RELAY : 0) | (d.roles.exit ? ROLE_EXIT : 0),
    d.policy,
    d.bandwidth,
    d.published,
    d.expires,
    d.network,
  ];
  return pack(body);
}

function encodeWire(body: Buffer, signature: Buffer): Buffer {
  return pack([body, signature]);
}

function signingInput(body: Buffer): Buffer {
  return Buffer.concat([DESCRIPTOR_SIGNING_CONTEXT, body]);
}

/** Why `fields` cannot be signed, or null. Shared rules of signer and verifier. */
function fieldProblem(f: DescriptorFields): string | null {
  if (!Array.isArray(f.addresses)) return 'addresses must be a list';
  if (f.addresses.length < 1 || f.addresses.length > DESCRIPTOR_MAX_ADDRESSES) {
    return `needs 1-${DESCRIPTOR_MAX_ADDRESSES} addresses, got ${f.addresses.length}`;
  }
  for (const a of f.addresses) {
    if (typeof a?.host !== 'string' || parseIp(a.host) === null) {
      return `address ${JSON.stringify(a?.host)} is not an IPv4 or IPv6 address`;
    }
    if (!isUint(a.port, 65535) || a.port === 0) return `port ${String(a.port)} is not 1-65535`;
  }
  const seen = new Set(
    f.addresses.map((a) => `${(parseIp(a.host) as Buffer).toString('hex')}/${a.port}`),
  );
  if (seen.size !== f.addresses.length) return 'addresses must be distinct';
  if (typeof f.roles?.relay !== 'boolean' || typeof f.roles.exit !== 'boolean') {
    return 'roles must be booleans';
  }
  if (!f.roles.relay && !f.roles.exit) return 'needs at least one role (relay or exit)';
  if (typeof f.policy !== 'string' || !POLICY_RE.test(f.policy)) {
    return 'exit policy summary must be printable ASCII';
  }
  if (f.policy.length > DESCRIPTOR_MAX_POLICY_CHARS) {
    return `exit policy summary is ${f.policy.length} characters (at most ${DESCRIPTOR_MAX_POLICY_CHARS})`;
  }
  if (!f.roles.exit && f.policy !== '')
    return 'the policy must be empty for a relay that is not an exit';
  if (!isUint(f.bandwidth, UINT32_MAX)) return 'bandwidth must be an integer 0 .. 2^32-1 (kB/s)';
  if (!isUint(f.published, UINT32_MAX)) return 'published must be unix seconds 0 .. 2^32-1';
  if (!isUint(f.expires, UINT32_MAX)) return 'expires must be unix seconds 0 .. 2^32-1';
  if (f.expires <= f.published) return 'expires must be after published';
  if (f.expires - f.published > DESCRIPTOR_MAX_LIFETIME_S) {
    return 'expires must be at most 7 days after published';
  }
  if (typeof f.network !== 'string' || !NETWORK_RE.test(f.network)) {
    return `network name must be 1-${DESCRIPTOR_MAX_NETWORK_CHARS} of A-Z a-z 0-9 . _ -`;
  }
  return null;
}

/**
 * Sign a descriptor for `identity`; returns the wire bytes. Throws a user
 * error (code BAD_DESCRIPTOR) for a field out of range or a result over
 * 996 bytes.
 */
export function signDescriptor(identity: Identity, fields: DescriptorFields): Buffer {
  const problem = fieldProblem(fields);
  if (problem) throw new ShallotError('BAD_DESCRIPTOR', 'user', `descriptor: ${problem}`);
  const publicKey = identity.publicKey;
  const onionKey = identity.onionPublic;
  const linkFingerprint = identity.link?.fingerprint;
  if (!isBytes(publicKey, KEY_BYTES) || !isBytes(onionKey, KEY_BYTES)) {
    throw errors.system('descriptor', new Error('identity keys must be 32 bytes'));
  }
  if (!isBytes(linkFingerprint, KEY_BYTES)) {
    throw errors.system('descriptor', new Error('link fingerprint must be 32 bytes'));
  }
  const d: Descriptor = {
    id: nodeIdOf(publicKey),
    publicKey,
    onionKey,
    linkFingerprint,
    addresses: fields.addresses.map((a) => ({ host: a.host, port: a.port })),
    roles: { relay: fields.roles.relay, exit: fields.roles.exit },
    policy: fields.policy,
    bandwidth: fields.bandwidth,
    published: fields.published,
    expires: fields.expires,
    network: fields.network,
  };
  const ips = d.addresses.map((a) => parseIp(a.host) as Buffer);
  const body = encodeBody(d, ips);
  const wire = encodeWire(body, signDetached(identity.secretKey, signingInput(body)));
  if (wire.length > DESCRIPTOR_MAX_BYTES) {
    throw new ShallotError(
      'BAD_DESCRIPTOR',
      'user',
      `descriptor: encodes to ${wire.length} bytes (at most ${DESCRIPTOR_MAX_BYTES}): shorten the policy or drop addresses`,
    );
  }
  // Self-check: catches a secret key that does not match the public key.
  const check = verifyDescriptor(wire, { now: d.published, network: d.network });
  if (!check.ok) {
    throw errors.system(
      'descriptor',
      new Error(`signed descriptor does not verify (${check.reason})`),
    );
  }
  return wire;
}

/** Decode one untrusted msgpack value; undefined if it does not decode. */
function decode(bytes: Buffer): { value: unknown } | undefined {
  try {
    return { value: unpackr.unpack(bytes) as unknown };
  } catch {
    return undefined;
  }
}

/**
 * The descriptor in a decoded body, or null if any field has the wrong type,
 * length or range. `ips` receives the address bytes.
 */
function parseBody(body: unknown[], ips: Buffer[]): Descriptor | null {
  const [, id, onion, link, addrs, roles, policy, bw, pub, exp, net] = body;
  if (!isBytes(id, KEY_BYTES) || !isBytes(onion, KEY_BYTES) || !isBytes(link, KEY_BYTES)) {
    return null;
  }
  if (!Array.isArray(addrs) || addrs.length < 1 || addrs.length > DESCRIPTOR_MAX_ADDRESSES) {
    return null;
  }
  const addresses: { host: string; port: number }[] = [];
  for (const entry of addrs as unknown[]) {
    if (!Array.isArray(entry) || entry.length !== 2) return null;
    const [ip, port] = entry as unknown[];
    if (!Buffer.isBuffer(ip) || (ip.length !== 4 && ip.length !== 16)) return null;
    if (!isUint(port, 65535) || port === 0) return null;
    ips.push(Buffer.from(ip));
    addresses.push({ host: formatIp(ip), port });
  }
  if (!isUint(roles, ROLE_RELAY | ROLE_EXIT)) return null;
  if (typeof policy !== 'string' || typeof net !== 'string') return null;
  if (!isUint(bw, UINT32_MAX) || !isUint(pub, UINT32_MAX) || !isUint(exp, UINT32_MAX)) {
    return null;
  }
  const d: Descriptor = {
    id: nodeIdOf(id),
    publicKey: Buffer.from(id),
    onionKey: Buffer.from(onion),
    linkFingerprint: Buffer.from(link),
    addresses,
    roles: { relay: (roles & ROLE_RELAY) !== 0, exit: (roles & ROLE_EXIT) !== 0 },
    policy,
    bandwidth: bw,
    published: pub,
    expires: exp,
    network: net,
  };
  // The remaining rules (roles not 0, policy text, distinct addresses,
  // lifetime, network name) are the signer's.
  return fieldProblem(d) === null ? d : null;
}

/**
 * Check untrusted wire bytes: size, both msgpack layers (canonical), every
 * field, the signature by the key in `id`, the network name, and the
 * validity window `published - skew <= now < expires + skew`. Never throws.
 */
export function verifyDescriptor(
  wire: Buffer,
  options: { now: number; network: string; clockSkewS?: number },
): DescriptorResult {
  try {
    return verifyUnchecked(wire, options);
  } catch {
    // Not reached by any input known; a bug must still not take down a caller.
    return { ok: false, reason: 'malformed' };
  }
}

function verifyUnchecked(
  input: unknown,
  options: { now: number; network: string; clockSkewS?: number },
): DescriptorResult {
  if (!(input instanceof Uint8Array)) return { ok: false, reason: 'malformed' };
  if (input.length > DESCRIPTOR_MAX_BYTES) return { ok: false, reason: 'oversize' };
  const wire = Buffer.from(input); // a private copy: the caller may reuse its buffer

  const outer = decode(wire);
  if (!outer || !Array.isArray(outer.value) || outer.value.length !== 2) {
    return { ok: false, reason: 'malformed' };
  }
  const [body, signature] = outer.value as unknown[];
  if (!Buffer.isBuffer(body) || !isBytes(signature, SIGNATURE_BYTES)) {
    return { ok: false, reason: 'malformed' };
  }
  if (!encodeWire(body, signature).equals(wire)) return { ok: false, reason: 'malformed' };

  const inner = decode(body);
  if (!inner || !Array.isArray(inner.value) || inner.value.length < 1) {
    return { ok: false, reason: 'malformed' };
  }
  const fields = inner.value as unknown[];
  if (fields[0] !== DESCRIPTOR_VERSION) return { ok: false, reason: 'bad-field' };
  if (fields.length !== BODY_FIELDS) return { ok: false, reason: 'malformed' };
  const ips: Buffer[] = [];
  const d = parseBody(fields, ips);
  if (!d) return { ok: false, reason: 'bad-field' };
  if (!encodeBody(d, ips).equals(body)) return { ok: false, reason: 'malformed' };

  if (!verifyDetached(d.publicKey, signingInput(body), signature)) {
    return { ok: false, reason: 'bad-signature' };
  }
  if (d.network !== options?.network) return { ok: false, reason: 'wrong-network' };

  const skewOption = options.clockSkewS;
  const skew =
    typeof skewOption === 'number' && Number.isFinite(skewOption) && skewOption >= 0
      ? skewOption
      : DESCRIPTOR_DEFAULT_CLOCK_SKEW_S;
  const now = options.now;
  // Negated comparisons, so that a NaN `now` fails closed.
  if (!(d.published - skew <= now)) return { ok: false, reason: 'not-yet-valid' };
  if (!(now < d.expires + skew)) return { ok: false, reason: 'expired' };
  return { ok: true, descriptor: d, wire };
}

/** One-line text form: base64url of the wire bytes, no padding. */
export function descriptorToText(wire: Buffer): string {
  return wire.toString('base64url');
}

/**
 * Wire bytes from the text form, or null if `line` (surrounding white space
 * ignored) is not canonical unpadded base64url. Does not verify.
 */
export function descriptorFromText(line: string): Buffer | null {
  if (typeof line !== 'string') return null;
  const t = line.trim();
  if (t.length === 0 || t.length > TEXT_HARD_LIMIT || !BASE64URL_RE.test(t)) return null;
  const bytes = Buffer.from(t, 'base64url');
  // Rejects a dangling character and non-zero unused bits: one text per wire.
  if (bytes.toString('base64url') !== t) return null;
  return bytes;
}
