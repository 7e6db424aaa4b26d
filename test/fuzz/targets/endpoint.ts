/**
 * A LinkEndpoint as a whole, fed datagrams on the in-memory network:
 * - a listener taking random and mutated datagrams (mutations of a real
 *   captured handshake among them) from several source addresses;
 * - an established link taking unauthenticated datagrams at either end;
 * - an authenticated peer sending arbitrary link messages.
 */
import { HANDSHAKE_TIMEOUT_MS } from '../../../src/link/constants.js';
import { isClientHello } from '../../../src/link/endpoint.js';
import {
  MSG_AUTH,
  MSG_CLOSE,
  MSG_DATA,
  MSG_KEEPALIVE,
  MSG_REKEY,
} from '../../../src/link/messages.js';
import { loadDtls } from '../../../src/native/binding.js';
import type { Rng } from '../rng.js';
import { check, type FuzzTarget } from '../target.js';
import { dtlsFields, flush } from './dtls-util.js';
import {
  exchange,
  linkIsUp,
  linkPair,
  packMessage,
  recover,
  type LinkPair,
  upLink,
} from './link-fixture.js';

function handshakeSeeds(captured: { data: Buffer }[]): Buffer[] {
  const seen = new Set<string>();
  const out: Buffer[] = [];
  for (const d of captured) {
    const k = d.data.toString('hex');
    if (!seen.has(k)) {
      seen.add(k);
      out.push(d.data);
    }
  }
  // A few DTLS-shaped headers with nothing behind them.
  out.push(Buffer.from('16fefd0000000000000000000c', 'hex'));
  out.push(Buffer.from('17fefd0001000000000001', 'hex'));
  return out;
}

// --- a listener under fire --------------------------------------------------------

const LISTENER_MAX_PEERS = 8;
let listener: LinkPair | undefined;
let sources: { host: string; port: number }[] = [];
const listenerStats = { execs: 0, maxPeers: 0 };

function counted(p: LinkPair): number {
  const c = p.listener.ep.counters;
  // A key query (answered statelessly before any DTLS) is an outcome too.
  return c.helloVerifySent + c.drops.garbage + c.drops.peerLimit + c.linksAccepted + c.keyQueries;
}

export const listenerTarget: FuzzTarget = {
  name: 'link/listener',
  async seeds() {
    const pair = await linkPair(61, { maxPeers: LISTENER_MAX_PEERS });
    listener = pair;
    // The dialer's own address (its captured cookie is valid from there),
    // and strangers.
    sources = [
      pair.dialer.addr,
      { host: '10.61.0.9', port: 5000 },
      { host: '10.61.0.10', port: 5001 },
      { host: 'fd61::9', port: 443 },
    ];
    return handshakeSeeds(pair.captured);
  },
  run(input, rng: Rng) {
    const p = listener as LinkPair;
    const ep = p.listener.ep;
    const from = rng.pick(sources);
    const had = [...ep.peers.values()].some((x) => x.host === from.host && x.port === from.port);
    const rx = ep.counters.rxDatagrams;
    const before = counted(p);
    const queued = p.net.queue.length;
    const accepted = ep.counters.linksAccepted;
    p.net.inject(input, from, p.listener.addr);
    check(ep.counters.rxDatagrams === rx + 1, 'a datagram was not counted as received');
    if (!had) {
      // With no link for the address, exactly one outcome is counted.
      check(
        counted(p) === before + 1,
        `datagram from ${from.host}:${from.port} (no link) not counted exactly once`,
      );
      const answers = p.net.queue.slice(queued).filter((d) => d.host === from.host);
      if (ep.counters.linksAccepted === accepted) {
        // Stateless: at most one small HelloVerifyRequest goes back.
        check(answers.length <= 1, `${answers.length} datagrams answered one unverified datagram`);
        check((answers[0]?.data.length ?? 0) <= 128, 'a large answer to an unverified datagram');
      }
    }
    p.net.drain();
    check(ep.peers.size <= LISTENER_MAX_PEERS, `peers.size ${ep.peers.size} over maxPeers`);
    listenerStats.maxPeers = Math.max(listenerStats.maxPeers, ep.peers.size);
    listenerStats.execs += 1;
    if (listenerStats.execs % 64 === 0) {
      // Let a second pass: timers run, half-open links expire, the dialer redials.
      p.clock.t += 1_000;
      ep.tick();
      p.dialer.ep.tick();
      p.net.drain();
      for (const peer of ep.peers.values()) {
        check(
          peer.state !== 'handshake' || p.clock.t - peer.createdAt <= HANDSHAKE_TIMEOUT_MS + 1_000,
          'a half-open link outlived the handshake timeout',
        );
      }
    }
  },
  fields: dtlsFields,
  maxLength: 2048,
  stats() {
    const c = listener?.listener.ep.counters;
    if (!c) return '';
    return (
      `helloVerify ${c.helloVerifySent}, garbage ${c.drops.garbage}, peerLimit ${c.drops.peerLimit}, ` +
      `accepted ${c.linksAccepted}, up ${c.linksUp}, authFailures ${c.authFailures}, most peers ${listenerStats.maxPeers}`
    );
  },
  teardown() {
    if (listener) {
      listener.dialer.ep.stop();
      listener.listener.ep.stop();
    }
  },
};

// --- an established link --------------------------------------------------------

let established: LinkPair | undefined;
const establishedStats = { execs: 0, restarts: 0, recoveryMs: 0 };

export const establishedTarget: FuzzTarget = {
  name: 'link/established',
  async seeds() {
    const pair = await linkPair(62);
    established = pair;
    return handshakeSeeds(pair.captured);
  },
  run(input, rng) {
    const p = established as LinkPair;
    const toListener = rng.chance(0.5);
    const links = [upLink(p.listener, p.dialer.addr), upLink(p.dialer, p.listener.addr)];
    const accepted = p.listener.ep.counters.linksAccepted;
    const downBefore = p.listener.down.length + p.dialer.down.length;
    if (toListener) p.net.inject(input, p.dialer.addr, p.listener.addr);
    else p.net.inject(input, p.listener.addr, p.dialer.addr);
    p.net.drain();
    establishedStats.execs += 1;
    if (p.listener.ep.counters.linksAccepted > accepted) {
      // A ClientHello carrying a cookie that is valid for the dialer's
      // address starts a new link there, which replaces the old one (the
      // documented "peer restarted" path). Anything else must not.
      check(
        toListener && isClientHello(input),
        'a link was replaced by a datagram that is no ClientHello',
      );
      establishedStats.restarts += 1;
      establishedStats.recoveryMs += recover(p);
      exchange(p, `after restart ${establishedStats.execs}`);
      return;
    }
    const down = [...p.listener.down, ...p.dialer.down].slice(downBefore);
    check(down.length === 0, `an unauthenticated datagram took the link down: ${down.join('; ')}`);
    check(
      upLink(p.listener, p.dialer.addr) === links[0] &&
        upLink(p.dialer, p.listener.addr) === links[1],
      'the link was replaced',
    );
    exchange(p, `check ${establishedStats.execs}`);
  },
  fields: dtlsFields,
  maxLength: 2048,
  stats: () =>
    `restarts by a replayed cookie ClientHello ${establishedStats.restarts}` +
    (establishedStats.restarts
      ? ` (link back after ${Math.round(establishedStats.recoveryMs / establishedStats.restarts)} simulated ms on average)`
      : ''),
  teardown() {
    if (established) {
      established.dialer.ep.stop();
      established.listener.ep.stop();
    }
  },
};

// --- an authenticated peer sending any link message -------------------------------

let messages: LinkPair | undefined;
const messageStats = {
  data: 0,
  keepalive: 0,
  auth: 0,
  close: 0,
  rekey: 0,
  bad: 0,
  empty: 0,
  oversize: 0,
};

/** REKEY messages carrying the first flight of a real re-key: a ClientHello. */
function rekeySeeds(): Buffer[] {
  const D = loadDtls();
  const ctx = new D.DtlsContext({ ...D.generateCertificate(), mtu: 1400 });
  const s = ctx.connect();
  s.pump();
  const hellos = flush(s).map((d) => Buffer.concat([Buffer.from([MSG_REKEY]), d]));
  s.free();
  return [...hellos, Buffer.concat([Buffer.from([MSG_REKEY]), Buffer.alloc(13)])];
}

export const peerMessagesTarget: FuzzTarget = {
  name: 'link/peer-messages',
  async seeds() {
    const pair = await linkPair(63);
    messages = pair;
    return [
      Buffer.from([MSG_DATA, 0x45, 0, 0, 20]),
      Buffer.from([MSG_DATA]),
      Buffer.from([MSG_KEEPALIVE]),
      Buffer.from([MSG_CLOSE, 0]),
      Buffer.from([MSG_CLOSE, 5]),
      Buffer.concat([Buffer.from([MSG_AUTH, 1, 0]), Buffer.alloc(98)]),
      Buffer.from([0x20, 0, 0, 0, 1]),
      Buffer.from([0x00]),
      Buffer.from([0x04, 1, 2, 3]),
      ...rekeySeeds(),
    ];
  },
  run(input) {
    const p = messages as LinkPair;
    if (!linkIsUp(p)) recover(p);
    const from = upLink(p.dialer, p.listener.addr);
    const at = upLink(p.listener, p.dialer.addr);
    check(from && at, 'fixture link is down');
    const c = p.listener.ep.counters;
    const bad = c.drops.badMessage;
    const delivered = p.listener.data.length;
    const down = p.listener.down.length + p.dialer.down.length;
    const [b, len] = packMessage(input);
    const sent = p.dialer.ep.sendMessages(from, b, len, 1);
    check(sent, 'sendMessages refused an up link');
    p.net.drain();
    const type = input[0];
    const got = p.listener.data.slice(delivered);
    p.listener.data.length = 0;
    const fits = input.length <= from.session.maxPlaintext();
    if (input.length === 0 || !fits) {
      if (input.length === 0) messageStats.empty += 1;
      else messageStats.oversize += 1;
      check(
        got.length === 0 && c.drops.badMessage === bad,
        'an empty or oversize record had an effect',
      );
    } else if ((type as number) >= MSG_DATA) {
      messageStats.data += 1;
      check(
        got.length === 1 && got[0]?.equals(input),
        'an application message was not delivered as sent',
      );
    } else if (type === MSG_KEEPALIVE) {
      messageStats.keepalive += 1;
      check(got.length === 0 && c.drops.badMessage === bad, 'KEEPALIVE had an effect');
    } else if (type === MSG_AUTH) {
      messageStats.auth += 1;
      check(got.length === 0, 'AUTH delivered data');
    } else if (type === MSG_REKEY && input.length >= 14) {
      // A re-key handshake datagram: answered (HelloVerifyRequest) or dropped.
      messageStats.rekey += 1;
      check(got.length === 0, 'REKEY delivered data');
    } else if (type === MSG_CLOSE && input.length === 2) {
      messageStats.close += 1;
      check(at.state === 'closed', 'a CLOSE did not close the link');
      recover(p);
    } else {
      messageStats.bad += 1;
      check(c.drops.badMessage === bad + 1, `message type ${type} not counted as bad`);
    }
    if (!(type === MSG_CLOSE && input.length === 2)) {
      const reasons = [...p.listener.down, ...p.dialer.down].slice(down);
      check(reasons.length === 0, `message type ${type} took the link down: ${reasons.join('; ')}`);
    }
    exchange(p, 'after message');
  },
  maxLength: 1500,
  stats: () =>
    Object.entries(messageStats)
      .map(([k, v]) => `${k} ${v}`)
      .join(', '),
  teardown() {
    if (messages) {
      messages.dialer.ep.stop();
      messages.listener.ep.stop();
    }
  },
};
