/**
 * Link endpoints on an in-memory network whose deliveries are queued and
 * drained synchronously: a whole handshake, and everything a fuzzed
 * datagram sets off, happens inside one run() with no timers involved.
 */
import { ephemeralIdentity, type Identity } from '../../../src/identity.js';
import {
  LinkEndpoint,
  type LinkEndpointOptions,
  type LinkPeer,
} from '../../../src/link/endpoint.js';
import { MSG_DATA } from '../../../src/link/messages.js';
import { MemoryNetwork, type MemoryTransport } from '../../../src/link/transport.js';
import { realClock, type Clock as NodeClock, type TimerHandle } from '../../../src/time/clock.js';
import { FuzzFailure } from '../target.js';

export interface Datagram {
  fromHost: string;
  fromPort: number;
  host: string;
  port: number;
  data: Buffer;
}

/** Most datagrams one injected datagram may set off before we call it a storm. */
export const STORM_LIMIT = 2_000;

export class QueueNetwork extends MemoryNetwork {
  readonly queue: Datagram[] = [];
  /** Every datagram sent while capturing (for seeds). */
  capture: Datagram[] | null = null;

  override deliver(
    fromHost: string,
    fromPort: number,
    host: string,
    port: number,
    data: Buffer,
  ): void {
    const d = { fromHost, fromPort, host, port, data: Buffer.from(data) };
    this.capture?.push(d);
    this.queue.push(d);
  }

  /** Deliver everything queued, and what that sets off, now. */
  drain(limit = STORM_LIMIT): number {
    let n = 0;
    while (this.queue.length > 0) {
      n += 1;
      if (n > limit) {
        const kinds = this.queue
          .slice(0, 4)
          .map((d) => `${d.fromHost}:${d.fromPort}->${d.host}:${d.port} ${d.data.length} B`);
        this.queue.length = 0;
        throw new FuzzFailure(
          `datagram storm: more than ${limit} datagrams without end (${kinds.join('; ')})`,
        );
      }
      const d = this.queue.shift() as Datagram;
      const t = this.endpoints.get(`${d.host}:${d.port}`);
      if (t) t.receive(d.data, d.fromHost, d.fromPort);
      else this.dropped += 1;
    }
    return n;
  }

  /** Inject one datagram as if it came from `from`; synchronous. */
  inject(
    data: Buffer,
    from: { host: string; port: number },
    to: { host: string; port: number },
  ): void {
    const t = this.endpoints.get(`${to.host}:${to.port}`) as MemoryTransport | undefined;
    if (!t) throw new Error(`nothing at ${to.host}:${to.port}`);
    t.receive(data, from.host, from.port);
  }
}

export interface Side {
  ep: LinkEndpoint;
  id: Identity;
  addr: { host: string; port: number };
  /** Application messages delivered up: the type byte, then the body. */
  data: Buffer[];
  down: string[];
}

/** Time the fixture steps by hand; timers (the endpoint's tick) on real time. */
export class Clock implements NodeClock {
  t = 1_000_000;
  readonly now = (): number => this.t;
  setTimer(ms: number, fn: () => void): TimerHandle {
    return realClock.setTimer(ms, fn);
  }
  setRepeating(ms: number, fn: () => void): TimerHandle {
    return realClock.setRepeating(ms, fn);
  }
}

let identities: Identity[] | undefined;
/** Two identities shared by the fixtures (a link certificate costs a few ms). */
export function fixtureIdentities(): [Identity, Identity] {
  identities ??= [ephemeralIdentity(), ephemeralIdentity()];
  return identities as [Identity, Identity];
}

export async function side(
  net: QueueNetwork,
  addr: { host: string; port: number },
  id: Identity,
  clock: Clock,
  extra: Partial<LinkEndpointOptions> = {},
): Promise<Side> {
  const s: Side = { ep: undefined as unknown as LinkEndpoint, id, addr, data: [], down: [] };
  s.ep = new LinkEndpoint({
    identity: id,
    transport: net.transport(addr.host, addr.port),
    clock,
    onMessage: (_p, type, buf, o, len) =>
      s.data.push(Buffer.concat([Buffer.from([type]), buf.subarray(o, o + len)])),
    onPeerDown: (_p, reason) => s.down.push(reason),
    ...extra,
  });
  await s.ep.start();
  return s;
}

/** The up link of `s` to the endpoint at `to`, if any. */
export function upLink(s: Side, to: { host: string; port: number }): LinkPeer | undefined {
  for (const p of s.ep.peers.values()) {
    if (p.host === to.host && p.port === to.port && p.state === 'up') return p;
  }
  return undefined;
}

export function packMessage(message: Buffer): [Buffer, number] {
  const b = Buffer.alloc(2 + message.length);
  b.writeUInt16BE(message.length, 0);
  message.copy(b, 2);
  return [b, b.length];
}

export function dataMessage(payload: Buffer): Buffer {
  return Buffer.concat([Buffer.from([MSG_DATA]), payload]);
}

export interface LinkPair {
  net: QueueNetwork;
  clock: Clock;
  listener: Side;
  dialer: Side;
}

/** A listener and a dialer with an up link, every datagram of it captured. */
export async function linkPair(
  base: number,
  listenerExtra: Partial<LinkEndpointOptions> = {},
  dialerExtra: Partial<LinkEndpointOptions> = {},
): Promise<LinkPair & { captured: Datagram[] }> {
  const net = new QueueNetwork();
  net.capture = [];
  const clock = new Clock();
  const [lid, did] = fixtureIdentities();
  const listener = await side(net, { host: `10.${base}.0.1`, port: 7000 }, lid, clock, {
    listen: { allowedIds: null },
    ...listenerExtra,
  });
  const dialer = await side(net, { host: `10.${base}.0.2`, port: 40000 }, did, clock, dialerExtra);
  const pair = { net, clock, listener, dialer };
  dialer.ep.dial(listener.addr.host, listener.addr.port, lid.id);
  net.drain();
  if (!linkIsUp(pair)) throw new Error('fixture link did not come up');
  exchange(pair, 'seed');
  const captured = net.capture;
  net.capture = null;
  return { ...pair, captured };
}

export function linkIsUp(p: LinkPair): boolean {
  return (
    upLink(p.listener, p.dialer.addr) !== undefined &&
    upLink(p.dialer, p.listener.addr) !== undefined
  );
}

/** Data both ways over the up link; throws a FuzzFailure if it does not arrive. */
export function exchange(p: LinkPair, tag: string): void {
  for (const [from, to] of [
    [p.dialer, p.listener],
    [p.listener, p.dialer],
  ] as const) {
    const link = upLink(from, to.addr);
    if (!link) throw new FuzzFailure(`no up link ${from.addr.host} -> ${to.addr.host}`);
    const payload = dataMessage(Buffer.from(`${tag} ${from.addr.host}`));
    const [b, len] = packMessage(payload);
    const before = to.data.length;
    if (!from.ep.sendMessages(link, b, len, 1))
      throw new FuzzFailure('sendMessages refused an up link');
    p.net.drain();
    const got = to.data.slice(before);
    to.data.length = 0;
    if (got.length !== 1 || !got[0]?.equals(payload)) {
      throw new FuzzFailure(`the link no longer carries data ${from.addr.host} -> ${to.addr.host}`);
    }
  }
}

/**
 * Let simulated time pass (ticks of `stepMs`) until the link is up again;
 * returns the simulated milliseconds it took.
 */
export function recover(p: LinkPair, stepMs = 250, maxMs = 120_000): number {
  for (let waited = 0; waited <= maxMs; waited += stepMs) {
    p.net.drain();
    if (linkIsUp(p)) return waited;
    p.clock.t += stepMs;
    p.listener.ep.tick();
    p.dialer.ep.tick();
  }
  throw new FuzzFailure(`the link did not come back within ${maxMs / 1000} simulated seconds`);
}

export function stopPair(p: LinkPair): void {
  p.dialer.ep.stop();
  p.listener.ep.stop();
}
