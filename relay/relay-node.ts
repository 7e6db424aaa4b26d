/**
 * A relay: the circuit table and forwarding. It knows, per circuit, only
 * the link and circuit id before it and after it. It peels one forward
 * layer (and drops what fails its tag or replays), adds one backward
 * layer, and when it is the last hop of a circuit it answers EXTEND, or
 * hands the relay message to the exit (if it is one).
 *
 * Bounded: at most MAX_CIRCUITS circuits, MAX_CIRCUITS_PER_LINK per link;
 * a circuit is freed on DESTROY, when either of its links goes down, and
 * after CIRCUIT_IDLE_MS without a cell.
 *
 * Extending (docs/protocol.md section 7.4) is where one neighbour could
 * make the relay work for it or starve others, so:
 * - a circuit has a depth (its CREATE says it; an extend sends depth + 1)
 *   and no relay extends from depth MAX_HOPS: no circuit, looping or not,
 *   has more than MAX_HOPS honest hops in a row;
 * - each circuit gets one extend attempt; repeats are answered from it;
 * - an EXTEND to a relay already linked is answered at once; only EXTENDs
 *   that must dial wait, at most MAX_EXTEND_WAIT_PER_LINK per neighbour
 *   and MAX_EXTEND_TARGETS in all, and when the table is full a neighbour
 *   below its fair share takes the oldest slot of the neighbour holding
 *   the most;
 * - CREATE (three X25519 operations) and EXTEND each have a token bucket
 *   per neighbour; over the rate they are dropped, counted, and the
 *   sender's own resend a second later finds a token again;
 * - loopback, private and other non-public targets, and this host's own
 *   addresses, are refused unless `allowPrivateExtend` (a testnet).
 */
import { randomInt } from 'node:crypto';
import {
  CELL_SIZES,
  CREATED_BODY_BYTES,
  decodeCreate,
  decodeDestroy,
  decodeExtend,
  decodeRelay,
  DestroyReason,
  encodeCreate,
  encodeCreated,
  encodeDestroy,
  MAX_HOPS,
  backwardCellSize,
  isCellSize,
  Relay,
} from '../src/circuit/cells.js';
import { RelayHopKeys } from '../src/circuit/circuit-keys.js';
import {
  backwardCapacity,
  HOP_KEY_BYTES,
  layerBackward,
  sealBackward,
  SEQ_FLAG_FOR_THIS_HOP,
} from '../src/circuit/onion.js';
import { ReplayWindow } from '../src/circuit/replay-window.js';
import { ntorServerRespond } from '../src/crypto/ntor.js';
import type { Identity } from '../src/identity.js';
import { LinkEndpoint, type LinkPeer } from '../src/link/endpoint.js';
import {
  MSG_BACKWARD,
  MSG_CREATE,
  MSG_CREATED,
  MSG_DESTROY,
  MSG_DESTROY_BACK,
  MSG_FORWARD,
} from '../src/link/messages.js';
import { Outbox } from '../src/link/outbox.js';
import type { DatagramTransport } from '../src/link/transport.js';
import type { Logger } from '../src/log.js';
import { silentLogger } from '../src/log.js';
import { extendRefusal } from '../src/net/address-scope.js';
import { formatIp, parseIp } from '../src/net/cidr.js';
import { realClock, type Clock, type TimerHandle } from '../src/time/clock.js';
import { TokenBucket } from './rate-limiter.js';

export const MAX_CIRCUITS = 8192;
export const MAX_CIRCUITS_PER_LINK = 2048;
export const CIRCUIT_IDLE_MS = 180_000;
export const EXTEND_TIMEOUT_MS = 10_000;
export const CREATE_RESEND_MS = 1_000;
export const RELAY_TICK_MS = 500;
/** EXTENDs waiting for a link to come up, at most (each may cost a DTLS handshake). */
export const MAX_EXTEND_TARGETS = 512;
/** EXTENDs waiting for a link, at most, whose circuits come from one neighbour. */
export const MAX_EXTEND_WAIT_PER_LINK = 64;
/** CREATEs a neighbour may send (three X25519 operations each): rate and burst. */
export const CREATE_RATE_PER_S = 20;
export const CREATE_BURST = 40;
/** New EXTENDs on a neighbour's circuits (repeats are free): rate and burst. */
export const EXTEND_RATE_PER_S = 20;
export const EXTEND_BURST = 40;

export interface RelayCircuit {
  prev: LinkPeer;
  prevId: number;
  next: LinkPeer | null;
  nextId: number;
  /** Forward keys through their epochs, backward keys (protocol 8.10). */
  keys: RelayHopKeys;
  window: ReplayWindow;
  created: Buffer;
  /** Position on the circuit as its CREATE said, 1..MAX_HOPS. */
  depth: number;
  /** Why this circuit's one extend attempt failed (a DestroyReason), 0 if it did not. */
  extendRefused: number;
  backwardSeq: number;
  lastActivity: number;
  extend: ExtendState | null;
  /** For the exit: the session bound to this circuit. */
  exitContext: unknown;
  /**
   * Backward cells this hop has forwarded on the circuit: the counter its
   * backward layers are keyed by (docs/protocol.md section 8.5), never
   * repeated, so nothing a later hop sends survives this hop's layer.
   */
  backwardForwarded: number;
}

interface ExtendState {
  targetId: string;
  host: string;
  port: number;
  create: Buffer | null;
  createdAt: number;
  lastSentAt: number;
  peer: LinkPeer | null;
  circId: number;
  /** EXTENDED body, kept to answer a repeated EXTEND. */
  done: Buffer | null;
}

/** What the relay keeps per neighbour (an up link), freed when the link goes. */
interface Neighbour {
  create: TokenBucket;
  extend: TokenBucket;
  /** Its circuits whose EXTEND waits for a link, oldest first. */
  waiting: Set<RelayCircuit>;
}

/** What the exit plugs in to handle relay messages at the last hop. */
export interface LastHopHandler {
  onRelayMessage(circ: RelayCircuit, command: number, buf: Buffer, off: number, len: number): void;
  onCircuitClosed(circ: RelayCircuit): void;
  /** Called after each received datagram's messages were handled. */
  flush?(): void;
}

export interface RelayCounters {
  cellsIn: number;
  cellsOut: number;
  circuitsCreated: number;
  circuitsClosed: number;
  extends: number;
  extendFailures: number;
  drops: {
    unknownCircuit: number;
    badTag: number;
    replay: number;
    badCell: number;
    notExit: number;
    resourceLimit: number;
    badCreate: number;
    badRelayMessage: number;
    /** CREATE with a depth outside 1..MAX_HOPS. */
    badDepth: number;
    /** CREATE or new EXTEND beyond the neighbour's token bucket (not answered). */
    createRateLimited: number;
    extendRateLimited: number;
    /** EXTEND_FAILED 7: the circuit is at depth MAX_HOPS here. */
    extendTooManyHops: number;
    /** EXTEND_FAILED 8: a non-public target or this host's own address. */
    extendForbiddenAddress: number;
    /** EXTEND_FAILED 2: the neighbour's share of the wait table is full. */
    extendWaitFull: number;
    /** EXTEND_FAILED 2: a waiting extend that gave its slot to a neighbour below its share. */
    extendEvicted: number;
  };
}

export interface RelayNodeOptions {
  identity: Identity;
  transport: DatagramTransport;
  log?: Logger;
  /** Time and timers (default: the real clock). */
  clock?: Clock;
  lastHop?: LastHopHandler;
  maxCircuits?: number;
  /**
   * Extend to loopback, private, link-local and other non-public
   * addresses and to this host's own (a network of relays on private
   * addresses: a testnet, the tests). Off by default.
   */
  allowPrivateExtend?: boolean;
  /** This host's addresses (the transport's own is added): never extended to by default. */
  ownAddresses?: string[];
}

export class RelayNode {
  readonly endpoint: LinkEndpoint;
  readonly outbox: Outbox;
  readonly counters: RelayCounters = {
    cellsIn: 0,
    cellsOut: 0,
    circuitsCreated: 0,
    circuitsClosed: 0,
    extends: 0,
    extendFailures: 0,
    drops: {
      unknownCircuit: 0,
      badTag: 0,
      replay: 0,
      badCell: 0,
      notExit: 0,
      resourceLimit: 0,
      badCreate: 0,
      badRelayMessage: 0,
      badDepth: 0,
      createRateLimited: 0,
      extendRateLimited: 0,
      extendTooManyHops: 0,
      extendForbiddenAddress: 0,
      extendWaitFull: 0,
      extendEvicted: 0,
    },
  };
  private readonly byPrev = new Map<LinkPeer, Map<number, RelayCircuit>>();
  private readonly byNext = new Map<LinkPeer, Map<number, RelayCircuit>>();
  private readonly waitingForLink = new Set<RelayCircuit>();
  private readonly neighbours = new Map<LinkPeer, Neighbour>();
  /** Up links by authenticated node id: an EXTEND to one of these never waits. */
  private readonly linked = new Map<string, LinkPeer>();
  private readonly ownAddresses: Buffer[];
  private readonly allowPrivateExtend: boolean;
  private circuitCount = 0;
  private readonly scratch = Buffer.alloc(CELL_SIZES[1] + 8);
  private readonly cellOut = Buffer.alloc(CELL_SIZES[1]);
  private readonly msgOut = Buffer.alloc(CELL_SIZES[1]);
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly now: () => number;
  private timer: TimerHandle | undefined;
  private readonly maxCircuits: number;
  lastHop: LastHopHandler | undefined;
  /** The onion key before the last rotation, accepted until `until` (ms). */
  previousOnion: { secret: Buffer; public: Buffer; until: number } | null = null;

  constructor(private readonly options: RelayNodeOptions) {
    this.log = options.log ?? silentLogger;
    this.clock = options.clock ?? realClock;
    this.now = () => this.clock.now();
    this.lastHop = options.lastHop;
    this.maxCircuits = options.maxCircuits ?? MAX_CIRCUITS;
    this.allowPrivateExtend = options.allowPrivateExtend ?? false;
    this.ownAddresses = [...(options.ownAddresses ?? []), options.transport.address().host]
      .map((a) => parseIp(a))
      .filter((b): b is Buffer => b !== null && b.some((x) => x !== 0));
    this.endpoint = new LinkEndpoint({
      identity: options.identity,
      transport: options.transport,
      log: this.log,
      clock: this.clock,
      listen: { allowedIds: null },
      onMessage: (peer, type, buf, o, len) => this.onMessage(peer, type, buf, o, len),
      onReceiveDone: () => {
        this.lastHop?.flush?.();
        this.outbox.flush();
      },
      onPeerUp: (peer) => this.onPeerUp(peer),
      onPeerDown: (peer) => this.onPeerDown(peer),
    });
    this.outbox = new Outbox(this.endpoint);
  }

  async start(): Promise<void> {
    await this.endpoint.start();
    this.timer = this.clock.setRepeating(RELAY_TICK_MS, () => this.tick());
  }

  stop(): void {
    this.timer?.cancel();
    this.timer = undefined;
    for (const m of [...this.byPrev.values()]) {
      for (const c of [...m.values()]) this.destroy(c, DestroyReason.finished, true, true);
    }
    this.outbox.flush();
    this.endpoint.stop();
  }

  get circuits(): number {
    return this.circuitCount;
  }

  /** EXTENDs waiting for a link (at most MAX_EXTEND_TARGETS). */
  get extendsWaiting(): number {
    return this.waitingForLink.size;
  }

  private neighbour(peer: LinkPeer): Neighbour {
    let n = this.neighbours.get(peer);
    if (!n) {
      const now = this.now();
      n = {
        create: new TokenBucket(CREATE_RATE_PER_S, CREATE_BURST, now),
        extend: new TokenBucket(EXTEND_RATE_PER_S, EXTEND_BURST, now),
        waiting: new Set(),
      };
      this.neighbours.set(peer, n);
    }
    return n;
  }

  // --- dispatch --------------------------------------------------------------

  private onMessage(peer: LinkPeer, type: number, buf: Buffer, o: number, len: number): void {
    switch (type) {
      case MSG_FORWARD:
        this.onForward(peer, buf, o, len);
        return;
      case MSG_BACKWARD:
        this.onBackward(peer, buf, o, len);
        return;
      case MSG_CREATE:
        this.onCreate(peer, buf, o, len);
        return;
      case MSG_CREATED:
        this.onCreated(peer, buf, o, len);
        return;
      case MSG_DESTROY:
        this.onDestroy(peer, buf, o, len, true);
        return;
      case MSG_DESTROY_BACK:
        this.onDestroy(peer, buf, o, len, false);
        return;
      default:
        this.counters.drops.badCell += 1;
    }
  }

  private onForward(peer: LinkPeer, buf: Buffer, o: number, len: number): void {
    this.counters.cellsIn += 1;
    const size = len - 4;
    if (len < 4 || !isCellSize(size)) {
      this.counters.drops.badCell += 1;
      return;
    }
    const circ = this.byPrev.get(peer)?.get(buf.readUInt32BE(o));
    if (!circ) {
      this.counters.drops.unknownCircuit += 1;
      return;
    }
    const now = this.now();
    const seq = circ.keys.peel(buf, o + 4, size, this.scratch, now);
    if (seq === 0) {
      this.counters.drops.badTag += 1;
      return;
    }
    if (!circ.window.accept(seq)) {
      this.counters.drops.replay += 1;
      return;
    }
    circ.lastActivity = now;
    const forMe = (this.scratch[0] as number) & SEQ_FLAG_FOR_THIS_HOP;
    if (circ.next && !forMe) {
      this.outbox.add(circ.next, MSG_FORWARD, circ.nextId, this.scratch, 8, size);
      this.counters.cellsOut += 1;
      return;
    }
    const msg = decodeRelay(this.scratch, 8, size);
    if (!msg) {
      this.counters.drops.badRelayMessage += 1;
      return;
    }
    if (msg.command === Relay.extend) {
      this.onExtend(circ, this.scratch, msg.bodyOffset, msg.bodyLength);
      return;
    }
    if (!this.lastHop) {
      this.counters.drops.notExit += 1;
      return;
    }
    this.lastHop.onRelayMessage(circ, msg.command, this.scratch, msg.bodyOffset, msg.bodyLength);
  }

  private onBackward(peer: LinkPeer, buf: Buffer, o: number, len: number): void {
    this.counters.cellsIn += 1;
    const size = len - 4;
    if (len < 4 || !isCellSize(size)) {
      this.counters.drops.badCell += 1;
      return;
    }
    const circ = this.byNext.get(peer)?.get(buf.readUInt32BE(o));
    if (!circ || circ.next !== peer) {
      this.counters.drops.unknownCircuit += 1;
      return;
    }
    // No filter on what the next hop sends: the layer depends only on this
    // hop's counter, so a repeated cell comes out unrelated to the first.
    circ.backwardForwarded += 1;
    const now = this.now();
    const keys = circ.keys.backwardKey(now);
    if (!layerBackward(keys, circ.backwardForwarded, buf, o + 4, size)) {
      this.counters.drops.badCell += 1;
      return;
    }
    circ.lastActivity = now;
    this.outbox.add(circ.prev, MSG_BACKWARD, circ.prevId, buf, o + 4, size);
    this.counters.cellsOut += 1;
  }

  /** Originate a relay message toward the client on `circ` (this node is its last hop). */
  sendBackward(
    circ: RelayCircuit,
    command: number,
    body: Buffer,
    off = 0,
    len = body.length,
  ): void {
    if (3 + len > backwardCapacity(CELL_SIZES[1])) return;
    const msg = this.msgOut.subarray(0, 3 + len);
    msg[0] = command;
    msg.writeUInt16BE(len, 1);
    body.copy(msg, 3, off, off + len);
    const size = backwardCellSize(msg.length);
    circ.backwardSeq += 1;
    const now = this.now();
    circ.lastActivity = now;
    sealBackward(circ.keys.backwardKey(now), circ.backwardSeq, msg, size, this.cellOut);
    this.outbox.add(circ.prev, MSG_BACKWARD, circ.prevId, this.cellOut, 0, size);
    this.counters.cellsOut += 1;
  }

  // --- circuit creation ----------------------------------------------------------

  private onCreate(peer: LinkPeer, buf: Buffer, o: number, len: number): void {
    const m = decodeCreate(buf, o, len);
    if (!m) {
      this.counters.drops.badCreate += 1;
      return;
    }
    let table = this.byPrev.get(peer);
    const existing = table?.get(m.circId);
    if (existing) {
      // A retransmitted CREATE: answer again, change nothing.
      this.outbox.addMessage(peer, existing.created);
      return;
    }
    if (m.depth < 1 || m.depth > MAX_HOPS) {
      this.counters.drops.badDepth += 1;
      this.outbox.addMessage(
        peer,
        encodeDestroy(MSG_DESTROY_BACK, m.circId, DestroyReason.protocol),
      );
      return;
    }
    if (this.circuitCount >= this.maxCircuits || (table?.size ?? 0) >= MAX_CIRCUITS_PER_LINK) {
      this.counters.drops.resourceLimit += 1;
      this.outbox.addMessage(
        peer,
        encodeDestroy(MSG_DESTROY_BACK, m.circId, DestroyReason.resourceLimit),
      );
      return;
    }
    const id = this.options.identity;
    // The current onion key, or the previous one during its grace period.
    const prev =
      this.previousOnion && this.now() < this.previousOnion.until ? this.previousOnion : null;
    const onion = m.onionKey.equals(id.onionPublic)
      ? { secret: id.onionSecret, public: id.onionPublic }
      : prev && m.onionKey.equals(prev.public)
        ? prev
        : null;
    if (!onion) {
      this.counters.drops.badCreate += 1;
      this.outbox.addMessage(peer, encodeDestroy(MSG_DESTROY_BACK, m.circId, DestroyReason.badKey));
      return;
    }
    // The handshake is the expensive part: a budget per neighbour. Over it
    // the CREATE is dropped unanswered; the sender resends it in a second.
    if (!this.neighbour(peer).create.take(this.now())) {
      this.counters.drops.createRateLimited += 1;
      return;
    }
    const r = ntorServerRespond(id.publicKey, onion.secret, onion.public, m.x, HOP_KEY_BYTES);
    if (!r) {
      this.counters.drops.badCreate += 1;
      this.outbox.addMessage(
        peer,
        encodeDestroy(MSG_DESTROY_BACK, m.circId, DestroyReason.protocol),
      );
      return;
    }
    const created = encodeCreated(m.circId, r.message.subarray(0, 32), r.message.subarray(32, 64));
    const circ: RelayCircuit = {
      prev: peer,
      prevId: m.circId,
      next: null,
      nextId: 0,
      keys: new RelayHopKeys(r.keys, this.now()),
      window: new ReplayWindow(),
      created,
      depth: m.depth,
      extendRefused: 0,
      backwardSeq: 0,
      lastActivity: this.now(),
      extend: null,
      exitContext: undefined,
      backwardForwarded: 0,
    };
    r.keys.fill(0);
    if (!table) {
      table = new Map();
      this.byPrev.set(peer, table);
    }
    table.set(m.circId, circ);
    this.circuitCount += 1;
    this.counters.circuitsCreated += 1;
    this.outbox.addMessage(peer, created);
  }

  private onExtend(circ: RelayCircuit, buf: Buffer, o: number, len: number): void {
    // Repeats of the one extend attempt a circuit gets cost nothing.
    if (circ.next && circ.extend?.done) {
      // The client did not get our EXTENDED: say it again.
      this.sendBackward(circ, Relay.extended, circ.extend.done);
      return;
    }
    if (circ.extend) return; // in progress: a retransmission
    if (circ.extendRefused !== 0) {
      this.sendBackward(circ, Relay.extendFailed, Buffer.from([circ.extendRefused]));
      return;
    }
    const now = this.now();
    const nb = this.neighbour(circ.prev);
    if (!nb.extend.take(now)) {
      // Unanswered: an honest client resends its EXTEND in a second.
      this.counters.drops.extendRateLimited += 1;
      return;
    }
    const e = decodeExtend(buf, o, len);
    const targetId = e?.targetId.toString('hex');
    if (!e || !targetId || targetId === this.options.identity.id || targetId === circ.prev.id) {
      this.counters.drops.badRelayMessage += 1;
      this.refuseExtend(circ, DestroyReason.protocol);
      return;
    }
    if (circ.depth >= MAX_HOPS) {
      this.counters.drops.extendTooManyHops += 1;
      this.refuseExtend(circ, DestroyReason.tooManyHops);
      return;
    }
    if (extendRefusal(e.host, this.ownAddresses, this.allowPrivateExtend) !== null) {
      this.counters.drops.extendForbiddenAddress += 1;
      this.refuseExtend(circ, DestroyReason.forbiddenAddress);
      return;
    }
    const host = formatIp(e.host);
    const peer = this.linked.get(targetId);
    if (!peer && !this.admitWait(nb)) {
      this.counters.drops.extendWaitFull += 1;
      this.refuseExtend(circ, DestroyReason.resourceLimit);
      return;
    }
    this.counters.extends += 1;
    circ.extend = {
      targetId,
      host,
      port: e.port,
      // CREATE carries B and X; the circuit id is chosen when the link is up.
      create: Buffer.concat([e.onionKey, e.x]),
      createdAt: now,
      lastSentAt: 0,
      peer: null,
      circId: 0,
      done: null,
    };
    if (peer) this.sendCreate(circ, peer);
    else {
      this.waitingForLink.add(circ);
      nb.waiting.add(circ);
      this.endpoint.dial(host, e.port, targetId, { persistent: false });
    }
  }

  /** Answer this circuit's extend attempt, now and on every repeat, with EXTEND_FAILED. */
  private refuseExtend(circ: RelayCircuit, reason: number): void {
    circ.extendRefused = reason;
    this.sendBackward(circ, Relay.extendFailed, Buffer.from([reason]));
  }

  /**
   * May one more of `nb`'s circuits wait for a link? Within its own cap,
   * yes while the table has room; when it is full, only by taking the
   * oldest slot of the neighbour that holds the most, and only if that
   * one holds more than `nb` (so every neighbour keeps at least its fair
   * share, MAX_EXTEND_TARGETS over the number of neighbours waiting).
   */
  private admitWait(nb: Neighbour): boolean {
    if (nb.waiting.size >= MAX_EXTEND_WAIT_PER_LINK) return false;
    if (this.waitingForLink.size < MAX_EXTEND_TARGETS) return true;
    let top: Neighbour | null = null;
    for (const n of this.neighbours.values()) {
      if (!top || n.waiting.size > top.waiting.size) top = n;
    }
    if (!top || top.waiting.size <= nb.waiting.size) return false;
    const victim = top.waiting.values().next().value as RelayCircuit;
    this.counters.drops.extendEvicted += 1;
    this.failExtend(victim, DestroyReason.resourceLimit);
    return true;
  }

  private createMessage(circ: RelayCircuit, ext: ExtendState, circId: number): Buffer {
    const b = ext.create as Buffer;
    return encodeCreate(circId, b.subarray(0, 32), b.subarray(32, 64), circ.depth + 1);
  }

  private sendCreate(circ: RelayCircuit, peer: LinkPeer): void {
    const ext = circ.extend;
    if (!ext || !ext.create) return;
    let table = this.byNext.get(peer);
    if (!table) {
      table = new Map();
      this.byNext.set(peer, table);
    }
    let id = randomInt(1, 0xffffffff);
    while (table.has(id)) id = randomInt(1, 0xffffffff);
    table.set(id, circ);
    ext.peer = peer;
    ext.circId = id;
    ext.lastSentAt = this.now();
    this.stopWaiting(circ, true);
    this.outbox.addMessage(peer, this.createMessage(circ, ext, id));
  }

  /**
   * The circuit no longer waits for a link. If it ended without one (it
   * was refused, evicted, timed out or freed) and no other waiting extend
   * wants the same address, the dial is abandoned too: an evicted extend
   * must not keep a link slot for the rest of a handshake timeout.
   */
  private stopWaiting(circ: RelayCircuit, linked = false): void {
    if (!this.waitingForLink.delete(circ)) return;
    this.neighbours.get(circ.prev)?.waiting.delete(circ);
    const ext = circ.extend;
    if (linked || !ext) return;
    for (const c of this.waitingForLink) {
      if (c.extend?.host === ext.host && c.extend.port === ext.port) return;
    }
    this.endpoint.cancelDial(ext.host, ext.port);
  }

  private onCreated(peer: LinkPeer, buf: Buffer, o: number, len: number): void {
    if (len !== CREATED_BODY_BYTES) {
      this.counters.drops.badCreate += 1;
      return;
    }
    const circId = buf.readUInt32BE(o);
    const circ = this.byNext.get(peer)?.get(circId);
    const ext = circ?.extend;
    if (!circ || !ext || ext.peer !== peer || ext.circId !== circId) {
      this.counters.drops.unknownCircuit += 1;
      return;
    }
    if (ext.done) return; // duplicate CREATED
    circ.next = peer;
    circ.nextId = circId;
    ext.done = Buffer.from(buf.subarray(o + 4, o + CREATED_BODY_BYTES));
    ext.create = null;
    circ.lastActivity = this.now();
    this.sendBackward(circ, Relay.extended, ext.done);
  }

  private failExtend(circ: RelayCircuit, reason: number): void {
    const ext = circ.extend;
    if (!ext) return;
    if (ext.peer) this.byNext.get(ext.peer)?.delete(ext.circId);
    this.stopWaiting(circ);
    circ.extend = null;
    this.counters.extendFailures += 1;
    this.refuseExtend(circ, reason);
  }

  // --- teardown ------------------------------------------------------------------

  /**
   * DESTROY travels away from the client (sent by a circuit's previous hop)
   * and DESTROY_BACK toward it (sent by the next hop): the type says which
   * table the id belongs to, since both ends of a link may pick one id.
   */
  private onDestroy(peer: LinkPeer, buf: Buffer, o: number, len: number, fromPrev: boolean): void {
    const d = decodeDestroy(buf, o, len);
    if (!d) {
      this.counters.drops.badCell += 1;
      return;
    }
    if (fromPrev) {
      const circ = this.byPrev.get(peer)?.get(d.circId);
      if (circ) this.destroy(circ, d.reason, false, true);
      return;
    }
    const circ = this.byNext.get(peer)?.get(d.circId);
    if (!circ) return;
    if (circ.next === peer) this.destroy(circ, d.reason, true, false);
    else if (circ.extend?.peer === peer) this.failExtend(circ, d.reason);
  }

  /** Free a circuit, telling the neighbours named. */
  private destroy(circ: RelayCircuit, reason: number, tellPrev: boolean, tellNext: boolean): void {
    const table = this.byPrev.get(circ.prev);
    if (!table || table.get(circ.prevId) !== circ) return;
    table.delete(circ.prevId);
    if (table.size === 0) this.byPrev.delete(circ.prev);
    const nextPeer = circ.next ?? circ.extend?.peer ?? null;
    const nextId = circ.next ? circ.nextId : (circ.extend?.circId ?? 0);
    if (nextPeer) {
      const nt = this.byNext.get(nextPeer);
      nt?.delete(nextId);
      if (nt && nt.size === 0) this.byNext.delete(nextPeer);
    }
    this.stopWaiting(circ);
    if (tellPrev && circ.prev.state === 'up') {
      this.outbox.addMessage(circ.prev, encodeDestroy(MSG_DESTROY_BACK, circ.prevId, reason));
    }
    if (tellNext && nextPeer && nextPeer.state === 'up') {
      this.outbox.addMessage(nextPeer, encodeDestroy(MSG_DESTROY, nextId, reason));
    }
    this.lastHop?.onCircuitClosed(circ);
    circ.keys.wipe();
    this.circuitCount -= 1;
    this.counters.circuitsClosed += 1;
  }

  private onPeerUp(peer: LinkPeer): void {
    if (peer.id) this.linked.set(peer.id, peer);
    for (const circ of [...this.waitingForLink]) {
      if (circ.extend?.targetId === peer.id) this.sendCreate(circ, peer);
    }
    this.outbox.flush();
  }

  private onPeerDown(peer: LinkPeer): void {
    if (peer.id && this.linked.get(peer.id) === peer) this.linked.delete(peer.id);
    for (const circ of [...(this.byPrev.get(peer)?.values() ?? [])]) {
      this.destroy(circ, DestroyReason.linkLost, false, true);
    }
    for (const circ of [...(this.byNext.get(peer)?.values() ?? [])]) {
      if (circ.next === peer) this.destroy(circ, DestroyReason.linkLost, true, false);
      else this.failExtend(circ, DestroyReason.linkLost);
    }
    this.byPrev.delete(peer);
    this.byNext.delete(peer);
    this.neighbours.delete(peer);
    this.outbox.flush();
  }

  /** Retransmit CREATEs, time out extends, free idle circuits, erase keys whose time is up. */
  tick(): void {
    const now = this.now();
    for (const table of [...this.byPrev.values()]) {
      for (const circ of [...table.values()]) {
        circ.keys.advance(now);
        const ext = circ.extend;
        if (ext && !ext.done) {
          if (now - ext.createdAt > EXTEND_TIMEOUT_MS) {
            this.failExtend(circ, DestroyReason.timeout);
          } else if (ext.peer && ext.create && now - ext.lastSentAt >= CREATE_RESEND_MS) {
            ext.lastSentAt = now;
            this.outbox.addMessage(ext.peer, this.createMessage(circ, ext, ext.circId));
          }
        }
        if (now - circ.lastActivity > CIRCUIT_IDLE_MS) {
          this.destroy(circ, DestroyReason.timeout, true, true);
        }
      }
    }
    this.outbox.flush();
  }

  describe(): object {
    return {
      circuits: this.circuitCount,
      extendsWaiting: this.waitingForLink.size,
      relay: this.counters,
      link: this.endpoint.describe(),
    };
  }
}
