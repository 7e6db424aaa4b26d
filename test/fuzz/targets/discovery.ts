/**
 * Discovery's key query (both ends) and the client's guard state file.
 * The query and answer come from the network; the guard file is local but
 * read at start, so a damaged one must never throw or grow the state.
 */
import { randomBytes } from 'node:crypto';
import { GuardList, MAX_SAMPLED_GUARDS } from '../../../client/guards.js';
import {
  decodeKeyAnswer,
  decodeKeyQuery,
  encodeKeyAnswer,
  encodeKeyQuery,
  KEY_ANSWER_BYTES,
  KEY_QUERY_BYTES,
  KeyQueryResponder,
  verifyKeyAnswer,
} from '../../../src/discovery/key-query.js';
import { ephemeralIdentity } from '../../../src/identity.js';
import { check, codecTarget, type FuzzTarget } from '../target.js';

const relay = ephemeralIdentity();
const nonce = Buffer.alloc(32, 0x5a);

export const keyQueryTarget = codecTarget<Buffer>({
  name: 'discovery/decodeKeyQuery',
  seeds: () => [encodeKeyQuery(nonce), encodeKeyQuery(randomBytes(32))],
  decode: (input) => decodeKeyQuery(input),
  encode: (n) => encodeKeyQuery(n),
  generate: (rng) => encodeKeyQuery(rng.bytes(32)),
  maxLength: 256,
  weight: 0.5,
});

export const keyAnswerTarget = codecTarget<{ publicKey: Buffer; signature: Buffer }>({
  name: 'discovery/decodeKeyAnswer',
  seeds: () => [encodeKeyAnswer(relay.publicKey, relay.secretKey, nonce)],
  decode(input) {
    const a = decodeKeyAnswer(input);
    // Verification never throws, and accepts only the relay's own answer for this nonce.
    const k = verifyKeyAnswer(input, nonce);
    if (k) check(k.equals(relay.publicKey) && a !== null, 'a forged answer verified');
    return a;
  },
  encode: (a) =>
    Buffer.concat([Buffer.from('SHLK', 'latin1'), Buffer.from([2]), a.publicKey, a.signature]),
  validate: (a) => check(a.publicKey.length === 32 && a.signature.length === 64, 'field sizes'),
  maxLength: 256,
  weight: 0.5,
});

/** The relay side: never throws, never answers more than it was asked, answers verify. */
export const keyResponderTarget: FuzzTarget = {
  name: 'discovery/KeyQueryResponder',
  seeds: () => [encodeKeyQuery(nonce)],
  run(input, rng) {
    const r = new KeyQueryResponder(relay.publicKey, relay.secretKey);
    const a = r.respond(input, rng.below(1_000_000));
    if (!a) return false;
    check(input.length === KEY_QUERY_BYTES, 'answered something that is not a query');
    check(a.length === KEY_ANSWER_BYTES && a.length < input.length, 'answer larger than query');
    check(
      verifyKeyAnswer(a, input.subarray(5, 37))?.equals(relay.publicKey) === true,
      'answer does not verify',
    );
    return true;
  },
  maxLength: 256,
  weight: 0.3,
};

/** The guard state file: any JSON (or not) yields a bounded state, or none. */
export const guardStateTarget: FuzzTarget = {
  name: 'client/GuardList.fromJSON',
  seeds: () => [
    Buffer.from(JSON.stringify({ guards: ['a'.repeat(64), 'b'.repeat(64)] })),
    Buffer.from(
      JSON.stringify({
        version: 2,
        sampled: [{ id: 'c'.repeat(64), addedAt: 1, unlistedSince: null, downSince: 5 }],
      }),
    ),
  ],
  run(input) {
    let doc: unknown;
    try {
      doc = JSON.parse(input.toString('utf8'));
    } catch {
      return false;
    }
    const { list } = GuardList.fromJSON(doc, 1_800_000_000_000);
    check(list.guards.length <= MAX_SAMPLED_GUARDS, 'sampled set over its bound');
    check(new Set(list.guards).size === list.guards.length, 'duplicate guards');
    const again = GuardList.fromJSON(JSON.parse(JSON.stringify(list.toJSON())), 1_800_000_000_000);
    check(
      JSON.stringify(again.list.toJSON()) === JSON.stringify(list.toJSON()),
      'state does not survive a save and load',
    );
    return list.guards.length > 0;
  },
  maxLength: 4096,
  weight: 0.3,
};
