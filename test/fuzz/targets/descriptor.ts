/**
 * Relay descriptors come from other nodes and from files: the verifier
 * takes untrusted bytes. No mutation of a signed descriptor may verify,
 * and nothing may throw.
 */
import {
  DESCRIPTOR_REJECT_REASONS,
  descriptorFromText,
  descriptorToText,
  signDescriptor,
  verifyDescriptor,
  type DescriptorFields,
} from '../../../src/descriptor/descriptor.js';
import sodium from 'sodium-native';
import { nodeIdOf, type Identity } from '../../../src/identity.js';
import { check, type FuzzTarget } from '../target.js';

const NETWORK = 'fuzznet';
const PUBLISHED = 1_700_000_000;
const genuine = new Set<string>();
const reasons = new Map<string, number>();

/**
 * The same keys in every process (Ed25519 signatures are deterministic):
 * the genuine descriptors a stored corpus holds are genuine in the next
 * run too. (With a random identity per process they verified, correctly,
 * and were taken for forgeries.)
 */
function fixedIdentity(): Identity {
  const publicKey = Buffer.alloc(sodium.crypto_sign_PUBLICKEYBYTES);
  const secretKey = Buffer.alloc(sodium.crypto_sign_SECRETKEYBYTES);
  sodium.crypto_sign_seed_keypair(publicKey, secretKey, Buffer.alloc(32, 0x5d));
  const onionSecret = Buffer.alloc(32, 0x6e);
  const onionPublic = Buffer.alloc(32);
  sodium.crypto_scalarmult_base(onionPublic, onionSecret);
  const link = { certPem: '', keyPem: '', fingerprint: Buffer.alloc(32, 0x1f) };
  return { id: nodeIdOf(publicKey), publicKey, secretKey, onionSecret, onionPublic, link };
}

function signed(): Buffer[] {
  const id = fixedIdentity();
  const base: DescriptorFields = {
    addresses: [{ host: '192.0.2.1', port: 7000 }],
    roles: { relay: true, exit: false },
    policy: '',
    bandwidth: 1000,
    published: PUBLISHED,
    expires: PUBLISHED + 3600,
    network: NETWORK,
  };
  const list = [
    signDescriptor(id, base),
    signDescriptor(id, {
      ...base,
      addresses: [
        { host: '192.0.2.1', port: 7000 },
        { host: '2001:db8::1', port: 443 },
      ],
      roles: { relay: true, exit: true },
      policy: 'accept *:80,443; reject *:*',
      bandwidth: 0xffffffff,
    }),
  ];
  for (const w of list) genuine.add(w.toString('hex'));
  return list;
}

export const descriptorTarget: FuzzTarget = {
  name: 'descriptor/verify',
  seeds: signed,
  run(input) {
    const r = verifyDescriptor(input, { now: PUBLISHED + 10, network: NETWORK });
    if (r.ok) {
      check(genuine.has(input.toString('hex')), 'a modified descriptor verified');
      check(r.wire.equals(input), 'verified wire differs from the input');
      reasons.set('ok', (reasons.get('ok') ?? 0) + 1);
      return true;
    }
    check(
      DESCRIPTOR_REJECT_REASONS.includes(r.reason),
      `unknown reject reason ${String(r.reason)}`,
    );
    reasons.set(r.reason, (reasons.get(r.reason) ?? 0) + 1);
    return false;
  },
  maxLength: 1100,
  stats: () =>
    [...reasons]
      .sort()
      .map(([k, v]) => `${k} ${v}`)
      .join(', '),
};

let textAccepted = 0;

export const descriptorTextTarget: FuzzTarget = {
  name: 'descriptor/fromText',
  seeds: () => signed().map((w) => Buffer.from(descriptorToText(w), 'latin1')),
  run(input) {
    const line = input.toString('latin1');
    const wire = descriptorFromText(line);
    if (wire === null) return false;
    check(Buffer.isBuffer(wire), 'descriptorFromText returned a non-Buffer');
    check(descriptorToText(wire) === line.trim(), 'text form is not canonical');
    textAccepted += 1;
    return true;
  },
  maxLength: 1600,
  weight: 0.5,
  stats: () => `accepted ${textAccepted}`,
};
