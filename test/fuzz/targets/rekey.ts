/**
 * A link in the middle of a re-key (docs/protocol.md 4.4): the re-key is
 * started on the simulated clock and stopped after a random number of its
 * datagrams, then one input arrives, either as a REKEY message from the
 * authenticated peer (a hostile or confused peer) or as a datagram from
 * the peer's address on the wire (an off-path attacker, while up to three
 * sessions may decrypt). Whatever the input, the link stays up, holds at
 * most three sessions, carries data both ways afterwards, and re-keys
 * again within the retry time.
 */
import { REKEY_HANDSHAKE_TIMEOUT_MS, REKEY_RETRY_MS } from '../../../src/link/constants.js';
import { MSG_REKEY } from '../../../src/link/messages.js';
import { check, type FuzzTarget } from '../target.js';
import { captureHandshake, allDatagrams } from './dtls-util.js';
import {
  exchange,
  linkIsUp,
  linkPair,
  packMessage,
  recover,
  upLink,
  type LinkPair,
} from './link-fixture.js';

const REKEY_MS = 1000;
let pair: LinkPair | undefined;
const stats = { asRekey: 0, asWire: 0, stoppedAfter: 0, rekeys: 0, abandoned: 0 };

export const rekeyTarget: FuzzTarget = {
  name: 'link/rekey',
  async seeds() {
    const opts = { rekeyAfterMs: REKEY_MS, rekeyOverlapMs: 500 };
    pair = await linkPair(65, opts, opts);
    return allDatagrams(captureHandshake(1414));
  },
  run(input, rng) {
    const p = pair as LinkPair;
    if (!linkIsUp(p)) recover(p);
    const before = p.dialer.ep.counters.rekeys;
    const down = p.listener.down.length + p.dialer.down.length;
    // Start a re-key and deliver only its first few datagrams.
    p.clock.t += REKEY_MS + 1;
    p.listener.ep.tick();
    p.dialer.ep.tick();
    const keep = rng.below(8);
    stats.stoppedAfter += keep;
    for (let i = 0; i < keep && p.net.queue.length > 0; i += 1) {
      const d = p.net.queue.shift();
      if (d) p.net.inject(d.data, { host: d.fromHost, port: d.fromPort }, d);
    }
    const toListener = rng.chance(0.5);
    const [from, to] = toListener ? [p.dialer, p.listener] : [p.listener, p.dialer];
    if (rng.chance(0.5)) {
      stats.asRekey += 1;
      const link = upLink(from, to.addr);
      check(link !== undefined, 'link down before the input');
      const [b, len] = packMessage(Buffer.concat([Buffer.from([MSG_REKEY]), input]));
      from.ep.sendMessages(link!, b, len, 1);
    } else {
      stats.asWire += 1;
      p.net.inject(input, from.addr, to.addr);
    }
    // Let the rest happen, with time for an abandoned attempt to retry.
    for (let t = 0; t <= REKEY_HANDSHAKE_TIMEOUT_MS + REKEY_RETRY_MS + 1000; t += 250) {
      p.net.drain();
      for (const s of [p.listener, p.dialer]) {
        for (const peer of s.ep.peers.values()) {
          const held = [peer.session, peer.previous, peer.next].filter(Boolean).length;
          check(held <= 3, `${held} sessions on one link`);
        }
      }
      if (p.dialer.ep.counters.rekeys > before && t > 0) break;
      p.clock.t += 250;
      p.listener.ep.tick();
      p.dialer.ep.tick();
    }
    p.net.drain();
    const reasons = [...p.listener.down, ...p.dialer.down].slice(down);
    check(reasons.length === 0, `the link went down: ${reasons.join('; ')}`);
    check(p.dialer.ep.counters.rekeys > before, 'no re-key completed within the retry time');
    stats.rekeys = p.dialer.ep.counters.rekeys;
    stats.abandoned = p.dialer.ep.counters.rekeyFailures + p.listener.ep.counters.rekeyFailures;
    exchange(p, 'after re-key');
  },
  maxLength: 1414,
  stats: () =>
    `as REKEY ${stats.asRekey}, from the wire ${stats.asWire}, re-keys ${stats.rekeys}, attempts abandoned ${stats.abandoned}`,
  teardown() {
    pair?.dialer.ep.stop();
    pair?.listener.ep.stop();
  },
};
