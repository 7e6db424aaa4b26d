/**
 * Direct mode: an encrypted point-to-point (or hub) tunnel between TUN
 * devices over DTLS links.
 *
 * The dialing side sends every packet from its device to its one peer.
 * The listening side routes each packet by inner destination address to
 * the peer that claimed it, and accepts from a peer only packets whose
 * source is that peer's inner address (as WireGuard's allowed IPs do).
 * Peers claim addresses in their AUTH attributes; a claim must lie in the
 * listener's own prefixes and not be held by another node.
 */
import type { Identity } from '../identity.js';
import type { LinkEndpoint, LinkPeer } from '../link/endpoint.js';
import { LinkEndpoint as Endpoint, formatHostPort } from '../link/endpoint.js';
import { LINK_MESSAGE_BYTES, SEND_BATCH_PACKETS } from '../link/constants.js';
import { CloseReason, type CloseReasonCode, MSG_DATA } from '../link/messages.js';
import type { DatagramTransport } from '../link/transport.js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { cidrContains, type Cidr } from '../net/cidr.js';
import {
  addressKey,
  ipv4Destination,
  ipv4Source,
  ipv6Destination,
  ipv6Source,
  ipVersion,
} from '../net/ip-packet.js';
import type { PacketDevice } from '../tun/device.js';
import { decodeAddresses, encodeAddresses } from './attributes.js';

/** Largest IP packet the tunnel carries: one link message minus the type byte. */
export const TUNNEL_MTU = LINK_MESSAGE_BYTES - 1;

export type TunnelMode =
  | { kind: 'listen'; allowedIds: Set<string> | null }
  | { kind: 'connect'; host: string; port: number; peerId: string };

export interface TunnelOptions {
  identity: Identity;
  transport: DatagramTransport;
  device: PacketDevice;
  addresses: Cidr[];
  mode: TunnelMode;
  log?: Logger;
  deadPeerAfterMs?: number;
  keepaliveIntervalMs?: number;
}

export interface TunnelCounters {
  fromDevice: number;
  toDevice: number;
  drops: {
    noLink: number;
    noRoute: number;
    badSource: number;
    badPacket: number;
    oversize: number;
    deviceFull: number;
  };
}

/** Per-peer state of the tunnel: claimed addresses and a send staging buffer. */
class PeerRoute {
  readonly keys: (number | string)[];
  readonly stage = Buffer.alloc(SEND_BATCH_PACKETS * (TUNNEL_MTU + 3));
  stageLen = 0;
  stageCount = 0;
  constructor(
    readonly addresses: Cidr[],
    readonly v4: Set<number>,
    readonly v6: Set<string>,
  ) {
    this.keys = addresses.map((a) => addressKey(a.address));
  }
}

export class DirectTunnel {
  readonly endpoint: LinkEndpoint;
  readonly counters: TunnelCounters = {
    fromDevice: 0,
    toDevice: 0,
    drops: { noLink: 0, noRoute: 0, badSource: 0, badPacket: 0, oversize: 0, deviceFull: 0 },
  };
  private readonly routes = new Map<number | string, LinkPeer>();
  private readonly toDevice = Buffer.alloc(SEND_BATCH_PACKETS * (TUNNEL_MTU + 2));
  private toDeviceLen = 0;
  private toDeviceCount = 0;
  private readonly log: Logger;
  private readonly ownKeys: Set<number | string>;
  private readonly staged: PeerRoute[] = [];

  constructor(private readonly options: TunnelOptions) {
    this.log = options.log ?? silentLogger;
    this.ownKeys = new Set(options.addresses.map((a) => addressKey(a.address)));
    const listening = options.mode.kind === 'listen';
    this.endpoint = new Endpoint({
      identity: options.identity,
      transport: options.transport,
      log: this.log,
      listen: options.mode.kind === 'listen' ? { allowedIds: options.mode.allowedIds } : null,
      attributes: () => encodeAddresses(options.addresses),
      admit: listening ? (peer) => this.admit(peer) : (peer) => this.admitListener(peer),
      onPeerUp: (peer) => this.onPeerUp(peer),
      onPeerDown: (peer, reason) => this.onPeerDown(peer, reason),
      onMessage: (peer, type, buf, o, len) => {
        if (type === MSG_DATA) this.fromLink(peer, buf, o, len);
        else this.counters.drops.badPacket += 1;
      },
      onReceiveDone: () => this.flushToDevice(),
      ...(options.deadPeerAfterMs !== undefined
        ? { deadPeerAfterMs: options.deadPeerAfterMs }
        : {}),
      ...(options.keepaliveIntervalMs !== undefined
        ? { keepaliveIntervalMs: options.keepaliveIntervalMs }
        : {}),
    });
  }

  async start(): Promise<void> {
    await this.endpoint.start();
    this.options.device.start((packed, len, count) => this.fromDevice(packed, len, count));
    const m = this.options.mode;
    if (m.kind === 'connect') this.endpoint.dial(m.host, m.port, m.peerId);
  }

  stop(): void {
    this.endpoint.stop();
    this.options.device.close();
  }

  // --- admission -----------------------------------------------------------

  /** Listener: may this authenticated peer have the addresses it claims? */
  private admit(peer: LinkPeer): CloseReasonCode | null {
    const claimed = peer.attributes ? decodeAddresses(peer.attributes) : null;
    if (!claimed || claimed.length === 0) return CloseReason.badAddress;
    for (const c of claimed) {
      const key = addressKey(c.address);
      const inside = this.options.addresses.some((own) => cidrContains(own, c.address));
      if (!inside || this.ownKeys.has(key)) return CloseReason.badAddress;
      const holder = this.routes.get(key);
      if (holder && holder.id !== peer.id) return CloseReason.addressInUse;
    }
    peer.context = routeFor(claimed);
    return null;
  }

  /** Dialer: the listener's addresses are informational; the AUTH must parse. */
  private admitListener(peer: LinkPeer): CloseReasonCode | null {
    const claimed = peer.attributes ? decodeAddresses(peer.attributes) : null;
    if (!claimed) return CloseReason.badAddress;
    peer.context = routeFor(claimed);
    return null;
  }

  private onPeerUp(peer: LinkPeer): void {
    const route = peer.context as PeerRoute;
    if (this.options.mode.kind === 'listen') {
      for (const key of route.keys) this.routes.set(key, peer);
    }
    const addrs = route.addresses.map((a) => a.text).join(', ');
    this.log.info(`peer ${peer.id} up at ${formatHostPort(peer.host, peer.port)}, inner ${addrs}`);
  }

  private onPeerDown(peer: LinkPeer, reason: string): void {
    for (const [key, p] of this.routes) if (p === peer) this.routes.delete(key);
    this.log.warn(`peer ${peer.id} down: ${reason}`);
  }

  // --- device to link ------------------------------------------------------

  private fromDevice(packed: Buffer, len: number, count: number): void {
    this.counters.fromDevice += count;
    const listening = this.options.mode.kind === 'listen';
    const single = listening ? null : (this.endpoint.upPeers()[0] ?? null);
    let o = 0;
    while (o + 2 <= len) {
      const n = packed.readUInt16BE(o);
      const p = o + 2;
      o = p + n;
      if (o > len) break;
      if (n > TUNNEL_MTU) {
        this.counters.drops.oversize += 1;
        continue;
      }
      let peer: LinkPeer | null | undefined = single;
      if (listening) {
        const v = ipVersion(packed, p, n);
        if (v === 0) {
          this.counters.drops.badPacket += 1;
          continue;
        }
        peer = this.routes.get(v === 4 ? ipv4Destination(packed, p) : ipv6Destination(packed, p));
        if (!peer) {
          this.counters.drops.noRoute += 1;
          continue;
        }
      } else if (!peer) {
        this.counters.drops.noLink += 1;
        continue;
      }
      const route = peer.context as PeerRoute;
      if (route.stageCount === 0) this.staged.push(route);
      route.stage.writeUInt16BE(n + 1, route.stageLen);
      route.stage[route.stageLen + 2] = MSG_DATA;
      packed.copy(route.stage, route.stageLen + 3, p, p + n);
      route.stageLen += n + 3;
      route.stageCount += 1;
      if (route.stageCount === SEND_BATCH_PACKETS) this.flushPeer(peer, route);
    }
    for (const route of this.staged) {
      if (route.stageCount > 0) {
        const peer = this.peerOf(route);
        if (peer) this.flushPeer(peer, route);
        else route.stageLen = route.stageCount = 0;
      }
    }
    this.staged.length = 0;
  }

  private peerOf(route: PeerRoute): LinkPeer | null {
    for (const p of this.endpoint.peers.values()) if (p.context === route) return p;
    return null;
  }

  private flushPeer(peer: LinkPeer, route: PeerRoute): void {
    if (!this.endpoint.sendMessages(peer, route.stage, route.stageLen, route.stageCount)) {
      this.counters.drops.noLink += route.stageCount;
    }
    route.stageLen = 0;
    route.stageCount = 0;
  }

  // --- link to device ------------------------------------------------------

  private fromLink(peer: LinkPeer, buf: Buffer, o: number, len: number): void {
    const v = ipVersion(buf, o, len);
    if (v === 0) {
      this.counters.drops.badPacket += 1;
      return;
    }
    if (this.options.mode.kind === 'listen') {
      const route = peer.context as PeerRoute;
      const ok = v === 4 ? route.v4.has(ipv4Source(buf, o)) : route.v6.has(ipv6Source(buf, o));
      if (!ok) {
        this.counters.drops.badSource += 1;
        return;
      }
    }
    if (this.toDeviceLen + 2 + len > this.toDevice.length) this.flushToDevice();
    this.toDevice.writeUInt16BE(len, this.toDeviceLen);
    buf.copy(this.toDevice, this.toDeviceLen + 2, o, o + len);
    this.toDeviceLen += 2 + len;
    this.toDeviceCount += 1;
  }

  private flushToDevice(): void {
    if (this.toDeviceCount === 0) return;
    const written = this.options.device.writePacked(this.toDevice, this.toDeviceLen);
    this.counters.toDevice += written;
    this.counters.drops.deviceFull += this.toDeviceCount - written;
    this.toDeviceLen = 0;
    this.toDeviceCount = 0;
  }

  describe(): object {
    return {
      mode: this.options.mode.kind,
      addresses: this.options.addresses.map((a) => a.text),
      tunnel: this.counters,
      link: this.endpoint.describe(),
      routes: [...this.routes].map(([k, p]) => ({ address: String(k), peer: p.id })),
    };
  }
}

function routeFor(addresses: Cidr[]): PeerRoute {
  const v4 = new Set<number>();
  const v6 = new Set<string>();
  for (const a of addresses) {
    const k = addressKey(a.address);
    if (typeof k === 'number') v4.add(k);
    else v6.add(k);
  }
  return new PeerRoute(addresses, v4, v6);
}
