/**
 * The client: reads IP packets from its TUN device, wraps each in one
 * onion layer per hop and sends it to its guard; unwraps what comes back.
 *
 * It builds circuits hop by hop (CREATE to the guard, then EXTEND through
 * the circuit), leases an inner address from the exit, and watches the
 * circuit (PING to the exit when idle). When a circuit dies it builds a new
 * one through other relays to the same exit and presents the same session
 * key, so the exit gives it the same inner address back and its TCP
 * connections survive.
 *
 * It shows the network only a throw-away identity: a fresh Ed25519 key and
 * link certificate per run, and each exit its own session key (drawn when
 * the client first builds to that exit), so two exits cannot link one
 * client by it.
 *
 * Guards follow the state machine of guards.ts: this driver reports link
 * outcomes to it and does what it says (try a guard, or wait because the
 * network looks down). Links to guards are not persistent dial targets:
 * each attempt is one dial, and only the guard state decides on another.
 */
import { randomBytes, randomInt } from 'node:crypto';
import {
  CIRCUIT_MTU,
  decodeCreated,
  decodeDestroy,
  decodeRelay,
  destroyReasonText,
  DestroyReason,
  encodeCreate,
  encodeDestroy,
  encodeExtend,
  forwardCellSize,
  isCellSize,
  LEASE_GRANT_BYTES,
  MAX_HOPS,
  Relay,
  RELAY_HEADER_BYTES,
} from '../src/circuit/cells.js';
import {
  ClientHopKeys,
  forwardKeysFor,
  unwrapBackwardEpochs,
} from '../src/circuit/circuit-keys.js';
import {
  BACKWARD_BODY_AT,
  backwardCapacity,
  HOP_KEY_BYTES,
  type ForwardLayerKeys,
  PaddingSource,
  wrapForward,
} from '../src/circuit/onion.js';
import { ReplayWindow } from '../src/circuit/replay-window.js';
import {
  ntorClientCreate,
  ntorClientDiscard,
  ntorClientFinish,
  type NtorClientState,
} from '../src/crypto/ntor.js';
import type { Descriptor } from '../src/descriptor/descriptor.js';
import { ephemeralIdentity } from '../src/identity.js';
import { LinkEndpoint, type LinkPeer } from '../src/link/endpoint.js';
import {
  MSG_BACKWARD,
  MSG_CREATED,
  MSG_DESTROY,
  MSG_DESTROY_BACK,
  MSG_FORWARD,
} from '../src/link/messages.js';
import { Outbox } from '../src/link/outbox.js';
import type { DatagramTransport } from '../src/link/transport.js';
import type { Logger } from '../src/log.js';
import { silentLogger } from '../src/log.js';
import { formatIp, parseIp } from '../src/net/cidr.js';
import { realClock, type Clock, type TimerHandle } from '../src/time/clock.js';
import type { PacketDevice } from '../src/tun/device.js';
import { loadGuardList, saveGuardList } from './guard-store.js';
import type { GuardList } from './guards.js';
import { GuardWait, selectPath, updateGuards } from './path.js';

export const STEP_TIMEOUT_MS = 10_000;
export const STEP_RESEND_MS = 1_000;
export const PING_IDLE_MS = 2_000;
/** A ready circuit from which nothing came back for this long is dead. */
export const CIRCUIT_DEAD_MS = 8_000;
/**
 * Middles of a failed path, and relays whose link to this client failed or
 * closed, are left out as middles this long (as guards they follow guards.ts).
 */
export const AVOID_FAILED_MS = 60_000;
/** Most middles avoided at once; the oldest mark goes first. */
export const MAX_AVOIDED = 64;
export const CLIENT_TICK_MS = 250;
/** How often a running client brings its guard state up to date and looks for a due retry. */
export const GUARD_CHECK_INTERVAL_MS = 5_000;

export interface Lease {
  v4: Buffer;
  v6: Buffer | null;
}

type PendingKind = { kind: 'created' } | { kind: 'relay'; command: number };
type Pending = PendingKind & {
  resolve: (body: Buffer) => void;
  /** The circuit closed while waiting: the step fails now, not at its next resend. */
  abort: (reason: string) => void;
};

class Circuit {
  /** Per hop: forward keys through their epochs, backward keys (protocol 8.10). */
  readonly keys: ClientHopKeys[] = [];
  /** What wrapForward takes, refilled per cell; which backward key each hop used (no allocation). */
  readonly forwardKeys: ForwardLayerKeys[] = [];
  readonly chosen: number[] = [0, 0, 0, 0];
  readonly seqs: number[] = [];
  readonly windows: ReplayWindow[] = [];
  state: 'building' | 'ready' | 'closed' = 'building';
  pending: Pending | null = null;
  failure: string | null = null;
  lastHeard = 0;
  lastSent = 0;
  builtAt = 0;
  cellsOut = 0;
  cellsIn = 0;

  constructor(
    readonly id: number,
    readonly path: Descriptor[],
    readonly guard: LinkPeer,
  ) {}
}

export interface ClientCounters {
  fromDevice: number;
  toDevice: number;
  circuitsBuilt: number;
  circuitFailures: number;
  rejectedByExit: number;
  drops: {
    noCircuit: number;
    oversize: number;
    badTag: number;
    replay: number;
    unknownCircuit: number;
  };
}

export interface ClientNodeOptions {
  relays: () => Descriptor[];
  transport: DatagramTransport;
  device: PacketDevice;
  hops: number;
  exitId?: string | undefined;
  stateDir: string | null;
  allowSameSubnet?: boolean;
  log?: Logger;
  /** Time and timers (default: the real clock). */
  clock?: Clock;
  /**
   * Uniform integer in [0, n) for path and guard choices (default
   * crypto.randomInt; a seeded one makes a simulation repeatable).
   */
  random?: (n: number) => number;
  /** Called when a circuit is ready (first and every later one). */
  onCircuit?: (path: Descriptor[], lease: Lease, first: boolean) => void;
  /**
   * Retry failed primary guards with bare links while the circuit runs
   * through another (default true). Off where only the current guard is
   * reachable outside the tunnel (full tunnel: kill switch, host route).
   */
  retryGuardLinks?: boolean;
  /** Called when the guard of the next circuit is chosen, before any traffic to it. */
  onGuard?: (guard: Descriptor) => void;
  onProgress?: (text: string) => void;
}

export class ClientNode {
  readonly endpoint: LinkEndpoint;
  readonly counters: ClientCounters = {
    fromDevice: 0,
    toDevice: 0,
    circuitsBuilt: 0,
    circuitFailures: 0,
    rejectedByExit: 0,
    drops: { noCircuit: 0, oversize: 0, badTag: 0, replay: 0, unknownCircuit: 0 },
  };
  private readonly outbox: Outbox;
  private readonly circuits = new Map<number, Circuit>();
  private current: Circuit | null = null;
  /** The session key shown to one exit; a new exit gets a new one. */
  private session: { exitId: string; key: Buffer } | null = null;
  /** Bare links to primary guards being retried while a circuit runs elsewhere. */
  private readonly guardRetries = new Map<string, number>();
  /** Builds waiting for a link to a guard, by node id (see linkTo). */
  private readonly linkWaits = new Map<string, (peer: LinkPeer | null) => void>();
  private nextGuardCheckAt = 0;
  private lease: Lease | null = null;
  private exitId: string | undefined;
  private readonly avoid = new Map<string, number>();
  private readonly guards: GuardList;
  private readonly padding = new PaddingSource();
  private readonly cell = Buffer.alloc(1500);
  private readonly msg = Buffer.alloc(RELAY_HEADER_BYTES + CIRCUIT_MTU);
  private readonly toDevice = Buffer.alloc(64 * (CIRCUIT_MTU + 2));
  private toDeviceLen = 0;
  private toDeviceCount = 0;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly now: () => number;
  private timer: TimerHandle | undefined;
  private stopped = false;
  private building = false;
  private lastPingAt = 0;
  lastRejection = '';

  constructor(private readonly options: ClientNodeOptions) {
    if (options.hops < 1 || options.hops > MAX_HOPS) throw new RangeError('hops out of range');
    this.log = options.log ?? silentLogger;
    this.clock = options.clock ?? realClock;
    this.now = () => this.clock.now();
    this.exitId = options.exitId;
    this.guards = loadGuardList(options.stateDir, this.now(), this.log);
    this.endpoint = new LinkEndpoint({
      identity: ephemeralIdentity(),
      transport: options.transport,
      log: this.log,
      clock: this.clock,
      listen: null,
      onMessage: (peer, type, buf, o, len) => this.onMessage(peer, type, buf, o, len),
      onReceiveDone: () => {
        this.flushDevice();
        this.outbox.flush();
      },
      onPeerUp: (peer) => {
        if (peer.id) this.linkWaits.get(peer.id)?.(peer);
      },
      onPeerDown: (peer, reason) => this.onPeerDown(peer, reason),
    });
    this.outbox = new Outbox(this.endpoint);
  }

  async start(): Promise<void> {
    await this.endpoint.start();
    this.options.device.start((packed, len, count) => this.fromDevice(packed, len, count));
    this.timer = this.clock.setRepeating(CLIENT_TICK_MS, () => this.tick());
    void this.maintain();
  }

  stop(): void {
    this.stopped = true;
    this.timer?.cancel();
    this.timer = undefined;
    // A retry wait ends now, so that nothing holds the process after stop().
    this.endPause?.();
    for (const wake of [...this.linkWaits.values()]) wake(null);
    for (const c of this.circuits.values()) this.close(c, 'stopping', true);
    this.outbox.flush();
    this.endpoint.stop();
    this.options.device.close();
  }

  get ready(): boolean {
    return this.current?.state === 'ready';
  }

  /** Ends the current retry wait early (set while maintain() waits). */
  private endPause: (() => void) | null = null;

  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        timer.cancel();
        if (this.endPause === done) this.endPause = null;
        resolve();
      };
      const timer = this.clock.setTimer(ms, done);
      this.endPause = done;
    });
  }

  // --- building --------------------------------------------------------------

  /** Keep one ready circuit: build, and rebuild when it dies. */
  private async maintain(): Promise<void> {
    if (this.building || this.stopped) return;
    this.building = true;
    let attempt = 0;
    try {
      while (!this.stopped && !this.ready) {
        attempt += 1;
        try {
          await this.buildOne();
        } catch (e) {
          // A build that stop() cut short is not a failure.
          if (this.stopped) break;
          this.counters.circuitFailures += 1;
          const msg = (e as Error).message;
          if (e instanceof GuardWait) {
            // The guard state says wait (network down): no new guard.
            const ms = Math.max(500, e.untilMs - this.now());
            this.log.warn(`no circuit: ${msg}; retrying the guards in ${Math.ceil(ms / 1000)} s`);
            this.options.onProgress?.(`${msg}; waiting ${Math.ceil(ms / 1000)} s`);
            await this.pause(ms);
            continue;
          }
          this.log.warn(`circuit build failed: ${msg}`);
          this.options.onProgress?.(`circuit build failed: ${msg}; retrying`);
          await this.pause(Math.min(500 * attempt, 5000));
        }
      }
    } finally {
      this.building = false;
    }
  }

  private async buildOne(): Promise<void> {
    const now = this.now();
    for (const [id, until] of this.avoid) if (until <= now) this.avoid.delete(id);
    const relays = this.options.relays();
    let path: Descriptor[];
    try {
      path = selectPath(relays, this.guards, {
        hops: this.options.hops,
        exitId: this.exitId,
        avoid: new Set(this.avoid.keys()),
        allowSameSubnet: this.options.allowSameSubnet ?? false,
        random: this.options.random,
        now,
      });
    } catch (e) {
      this.saveGuards();
      if (e instanceof GuardWait) throw e;
      if (this.avoid.size > 0) {
        // Every candidate was marked failed (our own network was down, so
        // every relay looked dead): forget the marks and try them again.
        this.avoid.clear();
        throw e;
      }
      if (this.exitId && this.exitId !== this.options.exitId) {
        // The exit we leased from is gone: any exit will do now (new address).
        this.exitId = this.options.exitId;
        this.lease = null;
      }
      throw e;
    }
    const names = path.map((d) => `${d.id.slice(0, 8)}@${d.addresses[0]?.host}`).join(' -> ');
    this.options.onProgress?.(`building circuit: ${names}`);
    const guard = path[0] as Descriptor;
    const exitId = (path[path.length - 1] as Descriptor).id;
    if (this.session?.exitId !== exitId) {
      // A new exit: a new session key, never the one another exit saw.
      this.session?.key.fill(0);
      this.session = { exitId, key: randomBytes(16) };
      this.lease = null;
    }
    const session = this.session.key;
    const probe = this.guards.lastRole === 'probe';
    this.saveGuards();
    this.options.onGuard?.(guard);
    const peer = await this.linkTo(guard);
    if (probe) {
      // Another sampled guard answered while every primary had failed: the
      // network works again, so the primaries are tried first, now.
      throw new GuardWait(
        this.now(),
        'a guard outside the primaries answered: retrying the primaries',
      );
    }
    let circId = randomInt(1, 0xffffffff);
    while (this.circuits.has(circId)) circId = randomInt(1, 0xffffffff);
    const circ = new Circuit(circId, path, peer);
    this.circuits.set(circId, circ);
    // The handshake awaiting its answer: wiped on every way out of a step.
    let handshake: NtorClientState | null = null;
    try {
      // Hop 1: CREATE.
      const first = ntorClientCreate(guard.publicKey, guard.onionKey);
      handshake = first.state;
      // The guard's depth is chosen so that the last hop is at MAX_HOPS
      // (docs/protocol.md section 7.4): no hop but the guard learns n.
      const depth = MAX_HOPS - path.length + 1;
      const createMsg = encodeCreate(circId, guard.onionKey, first.message, depth);
      const created = await this.step(circ, { kind: 'created' }, () =>
        this.outbox.addMessage(peer, createMsg),
      );
      this.addHop(circ, first.state, created);
      this.options.onProgress?.(`  hop 1/${path.length} ${guard.id.slice(0, 16)} ready`);
      // Further hops: EXTEND through the circuit.
      for (let i = 1; i < path.length; i += 1) {
        const d = path[i] as Descriptor;
        const addr = d.addresses[0];
        const host = addr ? parseIp(addr.host) : null;
        if (!addr || !host) throw new Error(`relay ${d.id.slice(0, 16)} has no usable address`);
        const hs = ntorClientCreate(d.publicKey, d.onionKey);
        handshake = hs.state;
        const body = encodeExtend({
          targetId: d.publicKey,
          host,
          port: addr.port,
          onionKey: d.onionKey,
          x: hs.message,
        });
        const reply = await this.step(circ, { kind: 'relay', command: Relay.extended }, () =>
          this.sendRelay(circ, Relay.extend, body),
        );
        this.addHop(circ, hs.state, reply);
        this.options.onProgress?.(`  hop ${i + 1}/${path.length} ${d.id.slice(0, 16)} ready`);
      }
      // The lease: same session key, so the same address on a new circuit.
      const leaseBody = Buffer.concat([session, Buffer.from([1])]);
      const grant = await this.step(circ, { kind: 'relay', command: Relay.leaseGrant }, () =>
        this.sendRelay(circ, Relay.lease, leaseBody),
      );
      if (grant.length !== LEASE_GRANT_BYTES || !grant.subarray(0, 16).equals(session)) {
        throw new Error('bad lease grant from the exit');
      }
      const v6 = grant.subarray(20, 36);
      const lease: Lease = {
        v4: Buffer.from(grant.subarray(16, 20)),
        v6: v6.some((b) => b !== 0) ? Buffer.from(v6) : null,
      };
      const first_ = this.lease === null;
      if (this.lease && !this.lease.v4.equals(lease.v4)) {
        this.log.warn('the exit gave a different inner address: existing connections will break');
      }
      this.lease = lease;
      this.exitId = (path[path.length - 1] as Descriptor).id;
      circ.state = 'ready';
      circ.builtAt = circ.lastHeard = this.now();
      const old = this.current;
      this.current = circ;
      if (old && old !== circ) this.close(old, 'replaced', true);
      this.counters.circuitsBuilt += 1;
      const inner = formatIp(lease.v4) + (lease.v6 ? ` and ${formatIp(lease.v6)}` : '');
      this.log.info(`circuit ready: ${names}; inner address ${inner}`);
      this.options.onCircuit?.(path, lease, first_);
    } catch (e) {
      if (handshake) ntorClientDiscard(handshake);
      this.close(circ, (e as Error).message, true);
      for (const d of path.slice(1, -1)) this.avoidMiddle(d.id);
      throw e;
    }
  }

  private addHop(circ: Circuit, state: NtorClientState, reply: Buffer): void {
    const keys = ntorClientFinish(state, reply, HOP_KEY_BYTES);
    if (!keys)
      throw new Error(
        `hop ${circ.keys.length + 1} failed the handshake (wrong onion key or forged reply)`,
      );
    // Slot 0 of this hop's epochs starts now, after the relay made its state.
    circ.keys.push(new ClientHopKeys(keys, this.now()));
    keys.fill(0);
    circ.seqs.push(0);
    circ.windows.push(new ReplayWindow());
  }

  /** Send (and resend every second) until the awaited reply comes, or time out. */
  private step(circ: Circuit, pending: PendingKind, send: () => void): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      const started = this.now();
      let done = false;
      const finish = (err: Error | null, value?: Buffer) => {
        if (done) return;
        done = true;
        timer?.cancel();
        circ.pending = null;
        if (err) reject(err);
        else resolve(value as Buffer);
      };
      circ.pending = {
        ...pending,
        resolve: (b: Buffer) => finish(null, b),
        abort: (reason: string) => finish(new Error(reason)),
      } as Pending;
      const attempt = () => {
        if (circ.state === 'closed') {
          finish(new Error(circ.failure ?? 'circuit closed'));
          return;
        }
        if (this.now() - started > STEP_TIMEOUT_MS) {
          finish(
            new Error(`no answer from hop ${circ.keys.length} within ${STEP_TIMEOUT_MS / 1000} s`),
          );
          return;
        }
        send();
        this.outbox.flush();
      };
      let timer: TimerHandle | null = null;
      attempt();
      if (!done) timer = this.clock.setRepeating(STEP_RESEND_MS, attempt);
    });
  }

  private avoidMiddle(id: string): void {
    this.avoid.delete(id);
    this.avoid.set(id, this.now() + AVOID_FAILED_MS);
    if (this.avoid.size > MAX_AVOIDED) this.avoid.delete(this.avoid.keys().next().value as string);
  }

  private saveGuards(): void {
    for (const r of this.guards.removals.splice(0)) {
      this.log.info(`guard ${r.id.slice(0, 16)} left the sampled set (${r.reason})`);
    }
    if (this.guards.dirty) saveGuardList(this.options.stateDir, this.guards);
  }

  /** One dial (not a persistent target): the guard state decides on the next. */
  private linkTo(d: Descriptor): Promise<LinkPeer> {
    const existing = this.endpoint.upPeers().find((p) => p.id === d.id);
    if (existing) {
      this.guards.onSuccess(d.id, this.now());
      return Promise.resolve(existing);
    }
    const addr = d.addresses[0];
    if (!addr) return Promise.reject(new Error('guard has no address'));
    return new Promise((resolve, reject) => {
      // Woken by the link coming up (onPeerUp), the timeout or stop().
      const finish = (p: LinkPeer | null): void => {
        if (this.linkWaits.get(d.id) !== finish) return;
        this.linkWaits.delete(d.id);
        timer.cancel();
        if (p) {
          this.guards.onSuccess(d.id, this.now());
          this.saveGuards();
          resolve(p);
          return;
        }
        if (!this.stopped) {
          this.guards.onFailure(d.id, this.now());
          this.avoidMiddle(d.id);
        }
        this.saveGuards();
        reject(
          new Error(
            `no link to guard ${addr.host}:${addr.port} within ${STEP_TIMEOUT_MS / 1000} s`,
          ),
        );
      };
      // One build runs at a time, so this holds at most one entry.
      this.linkWaits.get(d.id)?.(null);
      this.linkWaits.set(d.id, finish);
      const timer = this.clock.setTimer(STEP_TIMEOUT_MS, () => finish(null));
      this.endpoint.dial(addr.host, addr.port, d.id, { persistent: false });
    });
  }

  // --- sending ------------------------------------------------------------------

  /** Wrap one relay message for the circuit's current last hop and stage it. */
  private sendRelay(
    circ: Circuit,
    command: number,
    body: Buffer,
    off = 0,
    len = body.length,
  ): boolean {
    const n = circ.keys.length;
    const msg = this.msg.subarray(0, RELAY_HEADER_BYTES + len);
    msg[0] = command;
    msg.writeUInt16BE(len, 1);
    body.copy(msg, RELAY_HEADER_BYTES, off, off + len);
    // The size class is chosen as if the circuit had MAX_HOPS hops, so the
    // last hop cannot learn the path length from which class a message used.
    const size = forwardCellSize(msg.length, MAX_HOPS);
    for (let i = 0; i < n; i += 1) circ.seqs[i] = (circ.seqs[i] as number) + 1;
    const now = this.now();
    const keys = forwardKeysFor(circ.keys, now, circ.forwardKeys);
    wrapForward(keys, circ.seqs, msg, size, this.cell, this.padding);
    this.outbox.add(circ.guard, MSG_FORWARD, circ.id, this.cell, 0, size);
    circ.lastSent = now;
    circ.cellsOut += 1;
    return true;
  }

  private fromDevice(packed: Buffer, len: number, count: number): void {
    this.counters.fromDevice += count;
    const circ = this.current;
    let o = 0;
    while (o + 2 <= len) {
      const n = packed.readUInt16BE(o);
      const p = o + 2;
      o = p + n;
      if (o > len) break;
      if (!circ || circ.state !== 'ready') {
        this.counters.drops.noCircuit += 1;
        continue;
      }
      if (n > CIRCUIT_MTU) {
        this.counters.drops.oversize += 1;
        continue;
      }
      this.sendRelay(circ, Relay.data, packed, p, n);
    }
    this.outbox.flush();
  }

  // --- receiving -----------------------------------------------------------------

  private onMessage(peer: LinkPeer, type: number, buf: Buffer, o: number, len: number): void {
    if (len < 4) return;
    const circ = this.circuits.get(buf.readUInt32BE(o));
    if (!circ || circ.guard !== peer) {
      this.counters.drops.unknownCircuit += 1;
      return;
    }
    switch (type) {
      case MSG_BACKWARD:
        this.onBackward(circ, buf, o + 4, len - 4);
        return;
      case MSG_CREATED: {
        const m = decodeCreated(buf, o, len);
        if (m && circ.pending?.kind === 'created')
          circ.pending.resolve(Buffer.concat([m.y, m.auth]));
        return;
      }
      case MSG_DESTROY_BACK: {
        const d = decodeDestroy(buf, o, len);
        if (d) this.fail(circ, `the guard destroyed the circuit (reason ${d.reason})`);
        return;
      }
      default:
        this.counters.drops.unknownCircuit += 1;
    }
  }

  private onBackward(circ: Circuit, buf: Buffer, o: number, size: number): void {
    if (!isCellSize(size) || circ.keys.length === 0) return;
    const origin = circ.keys.length - 1;
    const now = this.now();
    const seq = unwrapBackwardEpochs(circ.keys, origin, buf, o, size, now, circ.chosen);
    if (seq === 0) {
      this.counters.drops.badTag += 1;
      return;
    }
    if (!(circ.windows[origin] as ReplayWindow).accept(seq)) {
      this.counters.drops.replay += 1;
      return;
    }
    circ.lastHeard = now;
    circ.cellsIn += 1;
    const m = decodeRelay(buf, o + BACKWARD_BODY_AT, backwardCapacity(size));
    if (!m) return;
    if (m.command === Relay.data) {
      if (circ !== this.current) return;
      this.toDevicePacket(buf, m.bodyOffset, m.bodyLength);
      return;
    }
    const body = Buffer.from(buf.subarray(m.bodyOffset, m.bodyOffset + m.bodyLength));
    if (m.command === Relay.extendFailed && circ.state === 'building') {
      this.fail(
        circ,
        `hop ${circ.keys.length} could not extend: ${destroyReasonText(body[0] ?? -1)}`,
      );
      return;
    }
    if (m.command === Relay.leaseRefused) {
      this.fail(circ, 'the exit refused a lease (address pool full)');
      return;
    }
    if (m.command === Relay.rejected) {
      this.counters.rejectedByExit += 1;
      const why = body.toString('latin1').replace(/[^\x20-\x7e]/g, '?');
      if (why !== this.lastRejection) this.log.warn(`the exit refused traffic: ${why}`);
      this.lastRejection = why;
      return;
    }
    const p = circ.pending;
    if (p?.kind === 'relay' && p.command === m.command) p.resolve(body);
  }

  private toDevicePacket(buf: Buffer, o: number, len: number): void {
    if (this.toDeviceLen + 2 + len > this.toDevice.length) this.flushDevice();
    this.toDevice.writeUInt16BE(len, this.toDeviceLen);
    buf.copy(this.toDevice, this.toDeviceLen + 2, o, o + len);
    this.toDeviceLen += 2 + len;
    this.toDeviceCount += 1;
  }

  private flushDevice(): void {
    if (this.toDeviceCount === 0) return;
    this.counters.toDevice += this.options.device.writePacked(this.toDevice, this.toDeviceLen);
    this.toDeviceLen = 0;
    this.toDeviceCount = 0;
  }

  // --- failure -----------------------------------------------------------------

  private fail(circ: Circuit, reason: string): void {
    if (circ.state === 'closed') return;
    const wasReady = circ.state === 'ready';
    this.close(circ, reason, true);
    if (wasReady) {
      this.counters.circuitFailures += 1;
      this.log.warn(`circuit lost: ${reason}; rebuilding`);
      this.options.onProgress?.(`circuit lost: ${reason}; rebuilding`);
      for (const d of circ.path.slice(1, -1)) this.avoidMiddle(d.id);
      void this.maintain();
    }
  }

  private close(circ: Circuit, reason: string, tellGuard: boolean): void {
    if (circ.state === 'closed') return;
    circ.state = 'closed';
    circ.failure = reason;
    circ.pending?.abort(reason);
    this.circuits.delete(circ.id);
    if (this.current === circ) this.current = null;
    if (tellGuard && circ.guard.state === 'up') {
      this.outbox.addMessage(
        circ.guard,
        encodeDestroy(MSG_DESTROY, circ.id, DestroyReason.finished),
      );
    }
    for (const k of circ.keys) k.wipe();
  }

  private onPeerDown(peer: LinkPeer, reason: string): void {
    if (peer.id && !this.stopped) {
      this.guards.onFailure(peer.id, this.now());
      this.saveGuards();
      // The guard state decides when this relay is a guard again; as a
      // middle it is left out like any relay of a failed path, or the next
      // path may extend to a relay known to be gone and stall for
      // STEP_TIMEOUT_MS.
      this.avoidMiddle(peer.id);
    }
    for (const c of [...this.circuits.values()]) {
      if (c.guard === peer) this.fail(c, `link to the guard lost: ${reason}`);
    }
  }

  /** Tell the guard state who is alive; retry a primary guard ahead of ours when due. */
  private guardTick(now: number): void {
    const up = this.endpoint.upPeers();
    for (const p of up) if (p.id) this.guards.onAlive(p.id, p.lastReceivedAt);
    for (const [id, started] of this.guardRetries) {
      if (up.some((p) => p.id === id)) {
        this.guardRetries.delete(id);
        this.guards.onSuccess(id, now);
      } else if (now - started > STEP_TIMEOUT_MS) {
        this.guardRetries.delete(id);
        this.guards.onFailure(id, now);
      }
    }
    const c = this.current;
    if (
      this.options.retryGuardLinks !== false &&
      c?.state === 'ready' &&
      this.guardRetries.size === 0 &&
      now >= this.nextGuardCheckAt
    ) {
      this.nextGuardCheckAt = now + GUARD_CHECK_INTERVAL_MS;
      const relays = this.options.relays();
      const listed = updateGuards(relays, this.guards, now, this.options.random);
      const id = this.guards.dueRetry(listed, c.path[0]?.id ?? null, now);
      const d = id ? relays.find((r) => r.id === id) : undefined;
      const addr = d?.addresses[0];
      if (id && addr) {
        this.guardRetries.set(id, now);
        this.endpoint.dial(addr.host, addr.port, id, { persistent: false });
      }
    }
    this.saveGuards();
  }

  private tick(): void {
    const c = this.current;
    const now = this.now();
    // Keys whose epoch is over go now, also on an idle circuit.
    for (const circ of this.circuits.values()) for (const k of circ.keys) k.advance(now);
    if (c && c.state === 'ready') {
      if (now - c.lastHeard > CIRCUIT_DEAD_MS) {
        this.fail(c, `nothing from the exit for ${CIRCUIT_DEAD_MS / 1000} s`);
      } else if (now - c.lastHeard > PING_IDLE_MS && now - this.lastPingAt >= 1000) {
        // Idle or one-way: ask the exit for a word, so a dead hop shows.
        this.lastPingAt = now;
        this.sendRelay(c, Relay.ping, Buffer.alloc(8));
      }
      this.outbox.flush();
    }
    this.guardTick(now);
    if (!this.ready && !this.building && !this.stopped) void this.maintain();
  }

  describe(): object {
    const c = this.current;
    return {
      circuit: c
        ? {
            state: c.state,
            hops: c.path.map((d) => ({ id: d.id, address: d.addresses[0], exit: d.roles.exit })),
            upForMs: this.now() - c.builtAt,
            cellsOut: c.cellsOut,
            cellsIn: c.cellsIn,
          }
        : null,
      lease: this.lease
        ? {
            v4: formatIp(this.lease.v4),
            ...(this.lease.v6 ? { v6: formatIp(this.lease.v6) } : {}),
          }
        : null,
      guards: this.guards.guards,
      networkDown: this.guards.networkDown,
      client: this.counters,
      lastRejection: this.lastRejection || null,
      link: this.endpoint.describe(),
    };
  }
}
