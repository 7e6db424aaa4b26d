/**
 * A client that builds circuits by hand over the in-memory network, from
 * the same library pieces the real client uses (link endpoint, ntor,
 * onion layers), but with every choice left to the test: the depth in
 * CREATE, any path (loops included), EXTENDs to any address, and floods
 * of CREATE and EXTEND without waiting for answers. Used by the relay's
 * attack tests (test/unit/relay-limits.test.ts).
 */
import { randomInt } from 'node:crypto';
import {
  decodeCreated,
  decodeDestroy,
  decodeRelay,
  encodeCreate,
  encodeExtend,
  forwardCellSize,
  isCellSize,
  Relay,
  relayMessage,
} from '../../src/circuit/cells.js';
import {
  ClientHopKeys,
  forwardKeysFor,
  unwrapBackwardEpochs,
} from '../../src/circuit/circuit-keys.js';
import {
  HOP_KEY_BYTES,
  PaddingSource,
  wrapForward,
  type ForwardLayerKeys,
} from '../../src/circuit/onion.js';
import { ntorClientCreate, ntorClientFinish, type NtorClientState } from '../../src/crypto/ntor.js';
import { ephemeralIdentity } from '../../src/identity.js';
import { LinkEndpoint, type LinkPeer } from '../../src/link/endpoint.js';
import {
  MSG_BACKWARD,
  MSG_CREATED,
  MSG_DESTROY_BACK,
  MSG_FORWARD,
} from '../../src/link/messages.js';
import { Outbox } from '../../src/link/outbox.js';
import type { MemoryNetwork } from '../../src/link/transport.js';
import { parseIp } from '../../src/net/cidr.js';
import { realClock, sleep, type Clock } from '../../src/time/clock.js';

/** What a test needs to know of a relay: where it is and its keys. */
export interface RelayRef {
  id: string;
  publicKey: Buffer;
  onionKey: Buffer;
  host: string;
  port: number;
}

export type Answer =
  | { kind: 'ok' }
  | { kind: 'failed'; reason: number }
  | { kind: 'destroyed'; reason: number }
  | { kind: 'timeout' };

export class RawCircuit {
  readonly keys: ClientHopKeys[] = [];
  /** wrapForward's per-cell key list and unwrap's per-hop choice, reused. */
  readonly forwardKeys: ForwardLayerKeys[] = [];
  readonly chosen: number[] = [];
  readonly seqs: number[] = [];
  /** The handshake of the hop being added, and its answer once it came. */
  pending: NtorClientState | null = null;
  created: Buffer | null = null;
  extended: Buffer | null = null;
  failed: number | null = null;
  destroyed: number | null = null;
  /** The last CREATE message or EXTEND body sent, for resends. */
  request: Buffer | null = null;
  /** Authentic backward cells from each hop. */
  readonly heard: number[] = [];

  constructor(
    readonly peer: LinkPeer,
    readonly circId: number,
  ) {}

  get hops(): number {
    return this.keys.length;
  }
}

/** How long a step waits for its answer, and how often it resends (as the client does). */
const STEP_MS = 3_000;
const RESEND_MS = 1_000;

export class RawClient {
  readonly endpoint: LinkEndpoint;
  readonly outbox: Outbox;
  readonly circuits = new Map<number, RawCircuit>();
  private readonly padding = new PaddingSource();
  private readonly cell = Buffer.alloc(1500);

  /** Waits and timestamps on `clock` (a VirtualClock: the test moves time). */
  constructor(
    net: MemoryNetwork,
    host: string,
    port = 40000,
    private readonly clock: Clock = realClock,
  ) {
    this.endpoint = new LinkEndpoint({
      identity: ephemeralIdentity(),
      transport: net.transport(host, port),
      clock,
      listen: null,
      onMessage: (peer, type, buf, o, len) => this.onMessage(peer, type, buf, o, len),
      onReceiveDone: () => this.outbox.flush(),
    });
    this.outbox = new Outbox(this.endpoint);
  }

  async start(): Promise<void> {
    await this.endpoint.start();
  }

  stop(): void {
    this.endpoint.stop();
  }

  async link(r: RelayRef): Promise<LinkPeer> {
    this.endpoint.dial(r.host, r.port, r.id);
    const deadline = this.clock.now() + 10_000;
    for (;;) {
      const p = this.endpoint.upPeers().find((x) => x.id === r.id);
      if (p) return p;
      if (this.clock.now() > deadline) throw new Error(`no link to ${r.host}:${r.port}`);
      await sleep(this.clock, 10);
    }
  }

  /** Send CREATE for a new circuit on `peer` (no waiting). */
  sendCreate(peer: LinkPeer, r: RelayRef, depth: number): RawCircuit {
    let circId = randomInt(1, 0xffffffff);
    while (this.circuits.has(circId)) circId = randomInt(1, 0xffffffff);
    const c = new RawCircuit(peer, circId);
    this.circuits.set(circId, c);
    const hs = ntorClientCreate(r.publicKey, r.onionKey);
    c.pending = hs.state;
    c.request = encodeCreate(circId, r.onionKey, hs.message, depth);
    this.outbox.addMessage(peer, c.request);
    return c;
  }

  /** Send EXTEND toward `target` (at `host`, default its own address) on `c` (no waiting). */
  sendExtend(c: RawCircuit, target: RelayRef, host = target.host): void {
    const hs = ntorClientCreate(target.publicKey, target.onionKey);
    c.pending = hs.state;
    c.extended = null;
    c.failed = null;
    const ip = parseIp(host);
    if (!ip) throw new Error(`bad address ${host}`);
    c.request = encodeExtend({
      targetId: target.publicKey,
      host: ip,
      port: target.port,
      onionKey: target.onionKey,
      x: hs.message,
    });
    this.sendRelay(c, Relay.extend, c.request);
  }

  /** A relay message to the circuit's last hop. */
  sendRelay(c: RawCircuit, command: number, body: Buffer): void {
    const msg = relayMessage(command, body);
    for (let i = 0; i < c.seqs.length; i += 1) c.seqs[i] = (c.seqs[i] as number) + 1;
    const size = forwardCellSize(msg.length, c.hops);
    wrapForward(
      forwardKeysFor(c.keys, this.clock.now(), c.forwardKeys),
      c.seqs,
      msg,
      size,
      this.cell,
      this.padding,
    );
    this.outbox.add(c.peer, MSG_FORWARD, c.circId, this.cell, 0, size);
  }

  flush(): void {
    this.outbox.flush();
  }

  /** Take the keys of a circuit whose CREATED came (after sendCreate). */
  finishCreate(c: RawCircuit): void {
    if (c.hops === 0 && c.created) this.addHop(c, c.created);
  }

  /** CREATE, resent every second like a real client, until CREATED or DESTROY. */
  async create(peer: LinkPeer, r: RelayRef, depth: number): Promise<[RawCircuit, Answer]> {
    const c = this.sendCreate(peer, r, depth);
    this.flush();
    const a = await this.wait(
      c,
      () => c.created !== null,
      () => this.outbox.addMessage(peer, c.request as Buffer),
    );
    if (a.kind === 'ok') this.addHop(c, c.created as Buffer);
    return [c, a];
  }

  /** EXTEND, resent every second like a real client, until EXTENDED or EXTEND_FAILED. */
  async extend(c: RawCircuit, target: RelayRef, host = target.host): Promise<Answer> {
    this.sendExtend(c, target, host);
    this.flush();
    // A resend is a fresh cell around the same body (same X).
    const a = await this.wait(
      c,
      () => c.extended !== null,
      () => this.sendRelay(c, Relay.extend, c.request as Buffer),
    );
    if (a.kind === 'ok') this.addHop(c, c.extended as Buffer);
    return a;
  }

  /** Poll until `done`, an answer that ends the step, or STEP_MS; `resend` every RESEND_MS. */
  private async wait(c: RawCircuit, done: () => boolean, resend: () => void): Promise<Answer> {
    const deadline = this.clock.now() + STEP_MS;
    let sentAt = this.clock.now();
    for (;;) {
      if (done()) return { kind: 'ok' };
      if (c.failed !== null) return { kind: 'failed', reason: c.failed };
      if (c.destroyed !== null) return { kind: 'destroyed', reason: c.destroyed };
      if (this.clock.now() > deadline) return { kind: 'timeout' };
      if (this.clock.now() - sentAt >= RESEND_MS) {
        sentAt = this.clock.now();
        resend();
        this.flush();
      }
      await sleep(this.clock, 5);
    }
  }

  private addHop(c: RawCircuit, reply: Buffer): void {
    const keys = ntorClientFinish(c.pending as NtorClientState, reply, HOP_KEY_BYTES);
    if (!keys) throw new Error(`hop ${c.hops + 1} failed the handshake`);
    // Epoch keys from the moment CREATED arrived, as the client's (protocol 8.10).
    c.keys.push(new ClientHopKeys(keys, this.clock.now()));
    keys.fill(0);
    c.seqs.push(0);
    c.heard.push(0);
    c.pending = null;
  }

  private onMessage(_peer: LinkPeer, type: number, buf: Buffer, o: number, len: number): void {
    if (len < 4) return;
    const c = this.circuits.get(buf.readUInt32BE(o));
    if (!c) return;
    if (type === MSG_CREATED) {
      const m = decodeCreated(buf, o, len);
      if (m && !c.created) c.created = Buffer.concat([m.y, m.auth]);
      return;
    }
    if (type === MSG_DESTROY_BACK) {
      c.destroyed = decodeDestroy(buf, o, len)?.reason ?? -1;
      return;
    }
    if (type !== MSG_BACKWARD || c.hops === 0 || !isCellSize(len - 4)) return;
    const size = len - 4;
    for (let origin = c.hops - 1; origin >= 0; origin -= 1) {
      const copy = Buffer.from(buf.subarray(o + 4, o + len));
      if (unwrapBackwardEpochs(c.keys, origin, copy, 0, size, this.clock.now(), c.chosen) === 0)
        continue;
      c.heard[origin] = (c.heard[origin] as number) + 1;
      const m = decodeRelay(copy, 40, size - 40);
      if (!m) return;
      const body = Buffer.from(copy.subarray(m.bodyOffset, m.bodyOffset + m.bodyLength));
      if (m.command === Relay.extended) c.extended ??= body;
      else if (m.command === Relay.extendFailed) c.failed = body[0] ?? -1;
      return;
    }
  }
}
