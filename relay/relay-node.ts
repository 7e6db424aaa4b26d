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
 */
import { randomInt } from 'node:crypto';
import {
  CELL_SIZES,
  decodeCreate,
  decodeDestroy,
  decodeExtend,
  decodeRelay,
  DestroyReason,
  encodeCreate,
  encodeDestroy,
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
import { formatIp } from '../src/net/cidr.js';

export const MAX_CIRCUITS = 8192;
export const MAX_CIRCUITS_PER_LINK = 2048;
export const CIRCUIT_IDLE_MS = 180_000;
export const EXTEND_TIMEOUT_MS = 10_000;
export const CREATE_RESEND_MS = 1_000;
export const RELAY_TICK_MS = 500;
/** EXTENDs waiting for a link to come up, at most (each may cost a DTLS handshake). */
export const MAX_EXTEND_TARGETS = 512;

export interface RelayCircuit {
  prev: LinkPeer;
  prevId: number;
  next: LinkPeer | null;
  nextId: number;
  /** Forward keys through their epochs, backward keys (protocol 8.10). */
  keys: RelayHopKeys;
  window: ReplayWindow;
  created: Buffer;
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
  };
}

export interface RelayNodeOptions {
  identity: Identity;
  transport: DatagramTransport;
  log?: Logger;
  now?: () => number;
  lastHop?: LastHopHandler;
  maxCircuits?: number;
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
    },
  };
  private readonly byPrev = new Map<LinkPeer, Map<number, RelayCircuit>>();
  private readonly byNext = new Map<LinkPeer, Map<number, RelayCircuit>>();
  private readonly waitingForLink = new Set<RelayCircuit>();
  private circuitCount = 0;
  private readonly scratch = Buffer.alloc(CELL_SIZES[1] + 8);
  private readonly cellOut = Buffer.alloc(CELL_SIZES[1]);
  private readonly msgOut = Buffer.alloc(CELL_SIZES[1]);
  private readonly log: Logger;
  private readonly now: () => number;
  private timer: NodeJS.Timeout | undefined;
  private readonly maxCircuits: number;
  lastHop: LastHopHandler | undefined;
  /** The onion key before the last rotation, accepted until `until` (ms). */
  previousOnion: { secret: Buffer; public: Buffer; until: number } | null = null;

  constructor(private readonly options: RelayNodeOptions) {
    this.log = options.log ?? silentLogger;
    this.now = options.now ?? Date.now;
    this.lastHop = options.lastHop;
    this.maxCircuits = options.maxCircuits ?? MAX_CIRCUITS;
    this.endpoint = new LinkEndpoint({
      identity: options.identity,
      transport: options.transport,
      log: this.log,
      now: this.now,
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
    this.timer = setInterval(() => this.tick(), RELAY_TICK_MS);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
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
    const r = ntorServerRespond(id.publicKey, onion.secret, onion.public, m.x, HOP_KEY_BYTES);
    if (!r) {
      this.counters.drops.badCreate += 1;
      this.outbox.addMessage(
        peer,
        encodeDestroy(MSG_DESTROY_BACK, m.circId, DestroyReason.protocol),
      );
      return;
    }
    const created = encodeCreate(
      MSG_CREATED,
      m.circId,
      r.message.subarray(0, 32),
      r.message.subarray(32, 64),
    );
    const circ: RelayCircuit = {
      prev: peer,
      prevId: m.circId,
      next: null,
      nextId: 0,
      keys: new RelayHopKeys(r.keys, this.now()),
      window: new ReplayWindow(),
      created,
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
    if (circ.next && circ.extend?.done) {
      // The client did not get our EXTENDED: say it again.
      this.sendBackward(circ, Relay.extended, circ.extend.done);
      return;
    }
    if (circ.extend) return; // in progress: a retransmission
    const e = decodeExtend(buf, o, len);
    const targetId = e?.targetId.toString('hex');
    if (!e || !targetId || targetId === this.options.identity.id || targetId === circ.prev.id) {
      this.counters.drops.badRelayMessage += 1;
      this.sendBackward(circ, Relay.extendFailed, Buffer.from([DestroyReason.protocol]));
      return;
    }
    const host = formatIp(e.host);
    if (this.waitingForLink.size >= MAX_EXTEND_TARGETS) {
      this.sendBackward(circ, Relay.extendFailed, Buffer.from([DestroyReason.resourceLimit]));
      return;
    }
    this.counters.extends += 1;
    const now = this.now();
    circ.extend = {
      targetId,
      host,
      port: e.port,
      create: null,
      createdAt: now,
      lastSentAt: 0,
      peer: null,
      circId: 0,
      done: null,
    };
    // CREATE carries B and X; the circuit id is chosen when the link is up.
    circ.extend.create = Buffer.concat([e.onionKey, e.x]);
    const peer = this.endpoint.upPeers().find((p) => p.id === targetId);
    if (peer) this.sendCreate(circ, peer);
    else {
      this.waitingForLink.add(circ);
      this.endpoint.dial(host, e.port, targetId, { persistent: false });
    }
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
    this.waitingForLink.delete(circ);
    this.outbox.addMessage(
      peer,
      encodeCreate(MSG_CREATE, id, ext.create.subarray(0, 32), ext.create.subarray(32, 64)),
    );
  }

  private onCreated(peer: LinkPeer, buf: Buffer, o: number, len: number): void {
    if (len !== 68) {
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
    ext.done = Buffer.from(buf.subarray(o + 4, o + 68));
    ext.create = null;
    circ.lastActivity = this.now();
    this.sendBackward(circ, Relay.extended, ext.done);
  }

  private failExtend(circ: RelayCircuit, reason: number): void {
    const ext = circ.extend;
    if (!ext) return;
    if (ext.peer) this.byNext.get(ext.peer)?.delete(ext.circId);
    this.waitingForLink.delete(circ);
    circ.extend = null;
    this.counters.extendFailures += 1;
    this.sendBackward(circ, Relay.extendFailed, Buffer.from([reason]));
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
    this.waitingForLink.delete(circ);
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
    for (const circ of [...this.waitingForLink]) {
      if (circ.extend?.targetId === peer.id) this.sendCreate(circ, peer);
    }
    this.outbox.flush();
  }

  private onPeerDown(peer: LinkPeer): void {
    for (const circ of [...(this.byPrev.get(peer)?.values() ?? [])]) {
      this.destroy(circ, DestroyReason.linkLost, false, true);
    }
    for (const circ of [...(this.byNext.get(peer)?.values() ?? [])]) {
      if (circ.next === peer) this.destroy(circ, DestroyReason.linkLost, true, false);
      else this.failExtend(circ, DestroyReason.linkLost);
    }
    this.byPrev.delete(peer);
    this.byNext.delete(peer);
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
            this.outbox.addMessage(
              ext.peer,
              encodeCreate(
                MSG_CREATE,
                ext.circId,
                ext.create.subarray(0, 32),
                ext.create.subarray(32, 64),
              ),
            );
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
      relay: this.counters,
      link: this.endpoint.describe(),
    };
  }
}
