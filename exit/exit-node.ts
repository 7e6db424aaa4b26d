/**
 * The exit: the last hop of client circuits toward the internet.
 *
 * A client asks for a lease (LEASE, with a random 16-byte session key it
 * keeps for the life of its process); the exit gives it an inner address
 * from its pool and binds the session to that circuit. A later circuit
 * presenting the same session key takes the lease over, so the client's
 * inner address, and its TCP connections, outlive one circuit.
 *
 * From a circuit, only packets whose source is the session's leased
 * address are accepted; each is checked against the exit policy and
 * written to the exit's TUN, where the kernel forwards and masquerades it.
 * The source check is what the policy's ICMP rule builds on: an error is
 * forwarded only if it quotes a packet sent to its own source, that is,
 * to the sender's lease, so that connection tracking can relate it to no
 * other session's flow (protocol 9.6). Rejects are counted per reason.
 * Replies read from the TUN are mapped back to the session, and so to its
 * current circuit, by destination address.
 */
import { CIRCUIT_MTU, LEASE_BODY_BYTES, Relay } from '../src/circuit/cells.js';
import type { Logger } from '../src/log.js';
import { formatIp } from '../src/net/cidr.js';
import { silentLogger } from '../src/log.js';
import {
  addressKey,
  ipv4Destination,
  ipv4Source,
  ipv6Destination,
  ipv6Source,
  ipVersion,
} from '../src/net/ip-packet.js';
import { realClock, type Clock, type TimerHandle } from '../src/time/clock.js';
import type { PacketDevice } from '../src/tun/device.js';
import type { AddressPool, Lease } from './address-pool.js';
import type { ExitPolicy } from './policy.js';
import type { LastHopHandler, RelayCircuit, RelayNode } from '../relay/relay-node.js';

interface Session {
  key: string;
  lease: Lease;
  v4: number;
  v6: string | null;
  circuit: RelayCircuit | null;
  lastRejectAt: number;
}

export interface ExitCounters {
  toInternet: number;
  fromInternet: number;
  leases: number;
  drops: {
    noLease: number;
    badSource: number;
    policy: number;
    noSession: number;
    noCircuit: number;
    badPacket: number;
    oversize: number;
    poolFull: number;
  };
  rejectsByReason: Record<string, number>;
}

const REJECT_NOTICE_INTERVAL_MS = 1000;
const SEND_STAGE_PACKETS = 64;
/** How often leases past their idle time are released. */
const LEASE_EXPIRY_CHECK_MS = 10_000;

export class ExitHandler implements LastHopHandler {
  readonly counters: ExitCounters = {
    toInternet: 0,
    fromInternet: 0,
    leases: 0,
    drops: {
      noLease: 0,
      badSource: 0,
      policy: 0,
      noSession: 0,
      noCircuit: 0,
      badPacket: 0,
      oversize: 0,
      poolFull: 0,
    },
    rejectsByReason: {},
  };
  private readonly sessions = new Map<string, Session>();
  private readonly stage = Buffer.alloc(SEND_STAGE_PACKETS * (CIRCUIT_MTU + 2));
  private stageLen = 0;
  private stageCount = 0;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly now: () => number;
  private expiryTimer: TimerHandle | undefined;

  constructor(
    private readonly relay: RelayNode,
    private readonly device: PacketDevice,
    private readonly pool: AddressPool,
    private readonly policy: ExitPolicy,
    options: { log?: Logger; clock?: Clock } = {},
  ) {
    this.log = options.log ?? silentLogger;
    this.clock = options.clock ?? realClock;
    this.now = () => this.clock.now();
  }

  start(): void {
    this.log.info(`exit serving ${this.pool.size} leases`);
    this.device.start((packed, len, count) => this.fromDevice(packed, len, count));
    this.expiryTimer = this.clock.setRepeating(LEASE_EXPIRY_CHECK_MS, () => this.expire()).unref();
  }

  stop(): void {
    this.expiryTimer?.cancel();
    this.expiryTimer = undefined;
    this.device.close();
  }

  onRelayMessage(circ: RelayCircuit, command: number, buf: Buffer, off: number, len: number): void {
    const bound = circ.exitContext as Session | undefined;
    // Any word from the client keeps its lease (PINGs on an idle circuit too).
    if (bound) this.pool.touch(bound.key, this.now());
    switch (command) {
      case Relay.data:
        this.fromCircuit(circ, buf, off, len);
        return;
      case Relay.lease:
        this.onLease(circ, buf, off, len);
        return;
      case Relay.ping:
        this.relay.sendBackward(circ, Relay.pong, buf, off, Math.min(len, 8));
        return;
      default:
        this.relay.counters.drops.badRelayMessage += 1;
    }
  }

  onCircuitClosed(circ: RelayCircuit): void {
    const s = circ.exitContext as Session | undefined;
    if (s && s.circuit === circ) s.circuit = null;
  }

  flush(): void {
    if (this.stageCount === 0) return;
    const written = this.device.writePacked(this.stage, this.stageLen);
    this.counters.toInternet += written;
    this.stageLen = 0;
    this.stageCount = 0;
  }

  private onLease(circ: RelayCircuit, buf: Buffer, off: number, len: number): void {
    if (len !== LEASE_BODY_BYTES) {
      this.relay.counters.drops.badRelayMessage += 1;
      return;
    }
    const key = buf.toString('hex', off, off + 16);
    const current = circ.exitContext as Session | undefined;
    if (current && current.key !== key) {
      // One session per circuit: a circuit cannot hoard the pool.
      this.relay.sendBackward(circ, Relay.leaseRefused, Buffer.from([2]));
      return;
    }
    const lease = this.pool.lease(key, this.now());
    if (!lease) {
      this.counters.drops.poolFull += 1;
      this.relay.sendBackward(circ, Relay.leaseRefused, Buffer.from([1]));
      return;
    }
    let s = this.sessions.get(key);
    if (!s) {
      s = {
        key,
        lease,
        v4: addressKey(lease.v4) as number,
        v6: lease.v6 ? (addressKey(lease.v6) as string) : null,
        circuit: null,
        lastRejectAt: 0,
      };
      this.sessions.set(key, s);
      this.counters.leases += 1;
    }
    if (s.circuit !== circ) {
      // A newer circuit of the same session takes the lease over.
      if (s.circuit) s.circuit.exitContext = undefined;
      s.circuit = circ;
      circ.exitContext = s;
    }
    const grant = Buffer.alloc(36);
    buf.copy(grant, 0, off, off + 16);
    lease.v4.copy(grant, 16);
    lease.v6?.copy(grant, 20);
    this.relay.sendBackward(circ, Relay.leaseGrant, grant);
  }

  private fromCircuit(circ: RelayCircuit, buf: Buffer, off: number, len: number): void {
    const s = circ.exitContext as Session | undefined;
    if (!s) {
      this.counters.drops.noLease += 1;
      return;
    }
    const v = ipVersion(buf, off, len);
    if (v === 0) {
      this.counters.drops.badPacket += 1;
      return;
    }
    const ok =
      v === 4 ? ipv4Source(buf, off) === s.v4 : s.v6 !== null && ipv6Source(buf, off) === s.v6;
    if (!ok) {
      this.counters.drops.badSource += 1;
      return;
    }
    const verdict = this.policy.decide(buf, off, len);
    if (verdict.verdict === 'reject') {
      this.counters.drops.policy += 1;
      this.counters.rejectsByReason[verdict.reason] =
        (this.counters.rejectsByReason[verdict.reason] ?? 0) + 1;
      const now = this.now();
      if (now - s.lastRejectAt >= REJECT_NOTICE_INTERVAL_MS) {
        // Tell the client why, at most once a second per session; log no payload.
        s.lastRejectAt = now;
        const text = Buffer.from(`${verdict.reason} ${verdict.destination}`.slice(0, 100));
        this.relay.sendBackward(circ, Relay.rejected, text);
      }
      return;
    }
    this.pool.touch(s.key, this.now());
    if (this.stageLen + 2 + len > this.stage.length) this.flush();
    this.stage.writeUInt16BE(len, this.stageLen);
    buf.copy(this.stage, this.stageLen + 2, off, off + len);
    this.stageLen += 2 + len;
    this.stageCount += 1;
  }

  private fromDevice(packed: Buffer, len: number, count: number): void {
    this.counters.fromInternet += count;
    let o = 0;
    while (o + 2 <= len) {
      const n = packed.readUInt16BE(o);
      const p = o + 2;
      o = p + n;
      if (o > len) break;
      if (n > CIRCUIT_MTU) {
        this.counters.drops.oversize += 1;
        continue;
      }
      const v = ipVersion(packed, p, n);
      if (v === 0) {
        this.counters.drops.badPacket += 1;
        continue;
      }
      const key =
        v === 4
          ? this.pool.lookupV4(ipv4Destination(packed, p))
          : this.pool.lookupV6(ipv6Destination(packed, p));
      const s = key === undefined ? undefined : this.sessions.get(key);
      if (!s) {
        this.counters.drops.noSession += 1;
        continue;
      }
      if (!s.circuit) {
        this.counters.drops.noCircuit += 1;
        continue;
      }
      this.relay.sendBackward(s.circuit, Relay.data, packed, p, n);
    }
    this.relay.outbox.flush();
  }

  private expire(): void {
    for (const key of this.pool.expire(this.now())) {
      const s = this.sessions.get(key);
      if (s?.circuit) s.circuit.exitContext = undefined;
      this.sessions.delete(key);
    }
  }

  describe(): object {
    return {
      exit: this.counters,
      leases: [...this.sessions.values()].map((s) => ({
        address: formatIp(s.lease.v4),
        ...(s.lease.v6 ? { v6: formatIp(s.lease.v6) } : {}),
        circuit: s.circuit !== null,
      })),
    };
  }
}
