/**
 * The relay's handling of circuit messages (relay/relay-node.ts), whole:
 * a RelayNode R on the synchronous in-memory network, a previous hop P
 * (a client) and a next hop N (a node R can extend to), both linked to R.
 * The input is a program of operations, in any order and with any
 * content: raw link messages of every circuit type from P and from N,
 * genuine CREATEs (any depth), EXTENDs (to N, a black hole, a private
 * address, R itself), FORWARD cells wrapped with real keys, N's answers
 * (a real CREATED, BACKWARD cells, DESTROY_BACK), DESTROYs, and time
 * passing (ticks, extend timeouts, token buckets refilling).
 *
 * After every operation: nothing threw, and every table of R is bounded
 * and consistent (circuit count, wait list, per-neighbour state).
 */
import {
  CELL_LARGE,
  CELL_SMALL,
  decodeCreate,
  decodeCreated,
  encodeCreated,
  encodeCreate,
  encodeDestroy,
  encodeExtend,
  forwardCellSize,
  MAX_HOPS,
  Relay,
  relayMessage,
} from '../../../src/circuit/cells.js';
import { HOP_KEY_BYTES, HopKeys, PaddingSource, wrapForward } from '../../../src/circuit/onion.js';
import {
  ntorClientCreate,
  ntorClientFinish,
  ntorServerRespond,
  type NtorClientState,
} from '../../../src/crypto/ntor.js';
import { ephemeralIdentity, type Identity } from '../../../src/identity.js';
import {
  MSG_BACKWARD,
  MSG_CREATE,
  MSG_CREATED,
  MSG_DESTROY,
  MSG_DESTROY_BACK,
  MSG_FORWARD,
} from '../../../src/link/messages.js';
import { RelayNode, MAX_EXTEND_TARGETS, type RelayCircuit } from '../../../relay/relay-node.js';
import type { LinkPeer } from '../../../src/link/endpoint.js';
import { check, type FuzzTarget } from '../target.js';
import { Clock, packMessage, QueueNetwork, side, upLink, type Side } from './link-fixture.js';

const R_ADDR = { host: '10.90.0.1', port: 7000 };
const P_ADDR = { host: '10.90.0.2', port: 40000 };
const N_ADDR = { host: '10.90.0.3', port: 7000 };
/** Small limits so the fuzzer reaches them. */
const MAX_CIRCUITS = 48;
const SLOTS = 8;
const TYPES = [
  MSG_CREATE,
  MSG_CREATED,
  MSG_DESTROY,
  MSG_FORWARD,
  MSG_BACKWARD,
  MSG_DESTROY_BACK,
  0x10,
  0x26,
];

interface Slot {
  circId: number;
  keys: HopKeys[];
  seqs: number[];
  pending: NtorClientState | null;
}

interface Fixture {
  net: QueueNetwork;
  clock: Clock;
  relay: RelayNode;
  rId: Identity;
  nId: Identity;
  p: Side;
  n: Side;
  slots: (Slot | null)[];
  /** Circuit ids R chose toward N (from the CREATEs N received), newest last. */
  towardN: { circId: number; x: Buffer }[];
  padding: PaddingSource;
  cell: Buffer;
}

let fx: Fixture | undefined;
const stats = { runs: 0, ops: 0, maxCircuits: 0, maxWaiting: 0, extendeds: 0, created: 0 };

class Reader {
  private i = 0;
  constructor(private readonly b: Buffer) {}
  get done(): boolean {
    return this.i >= this.b.length;
  }
  u8(): number {
    return this.i < this.b.length ? (this.b[this.i++] as number) : 0;
  }
  u32(): number {
    return ((this.u8() << 24) | (this.u8() << 16) | (this.u8() << 8) | this.u8()) >>> 0;
  }
  bytes(n: number): Buffer {
    const out = Buffer.alloc(n);
    const take = Math.min(n, this.b.length - this.i);
    this.b.copy(out, 0, this.i, this.i + take);
    this.i += take;
    return out;
  }
}

async function build(): Promise<Fixture> {
  const net = new QueueNetwork();
  const clock = new Clock();
  const rId = ephemeralIdentity();
  const nId = ephemeralIdentity();
  const relay = new RelayNode({
    identity: rId,
    transport: net.transport(R_ADDR.host, R_ADDR.port),
    clock,
    maxCircuits: MAX_CIRCUITS,
    allowPrivateExtend: true,
  });
  // The endpoint only: R's own interval timer stays off, the fuzzer ticks.
  await relay.endpoint.start();
  const p = await side(net, P_ADDR, ephemeralIdentity(), clock);
  const n = await side(net, N_ADDR, nId, clock, { listen: { allowedIds: null } });
  p.ep.dial(R_ADDR.host, R_ADDR.port, rId.id);
  net.drain();
  const f: Fixture = {
    net,
    clock,
    relay,
    rId,
    nId,
    p,
    n,
    slots: Array<Slot | null>(SLOTS).fill(null),
    towardN: [],
    padding: new PaddingSource(),
    cell: Buffer.alloc(1500),
  };
  if (!upLink(p, R_ADDR)) throw new Error('fixture: P could not link to R');
  return f;
}

function send(from: Side, to: { host: string; port: number }, message: Buffer): void {
  const link = upLink(from, to);
  if (!link) return;
  const [b, len] = packMessage(message);
  from.ep.sendMessages(link, b, len, 1);
}

/** Handle what P and N received: CREATED and EXTENDED give P keys; CREATEs to N are noted. */
function absorb(f: Fixture): void {
  f.net.drain();
  for (const m of f.p.data) {
    if (m[0] !== MSG_CREATED) continue;
    const c = decodeCreated(m, 1, m.length - 1);
    const s = c && f.slots.find((x) => x?.circId === c.circId && x.keys.length === 0);
    if (!c || !s || !s.pending) continue;
    const keys = ntorClientFinish(s.pending, Buffer.concat([c.y, c.auth]), HOP_KEY_BYTES);
    s.pending = null;
    if (keys) {
      s.keys.push(new HopKeys(keys));
      s.seqs.push(0);
      stats.created += 1;
    }
  }
  f.p.data.length = 0;
  for (const m of f.n.data) {
    if (m[0] !== MSG_CREATE) continue;
    const c = decodeCreate(m, 1, m.length - 1);
    if (!c) continue;
    f.towardN.push({ circId: c.circId, x: c.x });
    if (f.towardN.length > 16) f.towardN.shift();
  }
  f.n.data.length = 0;
}

function forwardCell(f: Fixture, s: Slot, command: number, body: Buffer, large: boolean): Buffer {
  const msg = relayMessage(command, body);
  for (let i = 0; i < s.seqs.length; i += 1) s.seqs[i] = (s.seqs[i] as number) + 1;
  const size = large ? CELL_LARGE : forwardCellSize(msg.length, s.keys.length);
  wrapForward(s.keys, s.seqs, msg, size, f.cell, f.padding);
  const out = Buffer.alloc(5 + size);
  out[0] = MSG_FORWARD;
  out.writeUInt32BE(s.circId, 1);
  f.cell.copy(out, 5, 0, size);
  return out;
}

function passTime(f: Fixture, ms: number): void {
  // In steps short enough that keepalives keep the links up.
  for (let left = ms; left > 0; left -= 1000) {
    f.clock.t += Math.min(left, 1000);
    f.relay.tick();
    f.relay.endpoint.tick();
    f.p.ep.tick();
    f.n.ep.tick();
    absorb(f);
  }
}

function op(f: Fixture, r: Reader): void {
  const code = r.u8() % 10;
  const slotIx = r.u8() % SLOTS;
  switch (code) {
    case 0: {
      // A raw circuit message from P, any type, any body.
      const type = TYPES[r.u8() % TYPES.length] as number;
      send(f.p, R_ADDR, Buffer.concat([Buffer.from([type]), r.bytes(r.u8() * 6)]));
      break;
    }
    case 1: {
      const type = TYPES[r.u8() % TYPES.length] as number;
      send(f.n, R_ADDR, Buffer.concat([Buffer.from([type]), r.bytes(r.u8() * 6)]));
      break;
    }
    case 2: {
      // A genuine CREATE on a slot, with the depth from the input.
      const circId = r.u8() === 0 ? 0 : (r.u32() % 0xfffffffe) + 1;
      const depth = r.u8() % (MAX_HOPS + 2);
      const hs = ntorClientCreate(f.rId.publicKey, f.rId.onionPublic);
      f.slots[slotIx] = { circId, keys: [], seqs: [], pending: hs.state };
      send(f.p, R_ADDR, encodeCreate(circId, f.rId.onionPublic, hs.message, depth));
      break;
    }
    case 3: {
      // EXTEND on a slot's circuit: to N, a black hole, a private or loopback address, R itself.
      const s = f.slots[slotIx];
      if (!s || s.keys.length === 0) break;
      const which = r.u8() % 5;
      const targets = [
        { id: f.nId, host: [10, 90, 0, 3], port: N_ADDR.port },
        { id: ephemeralIdentity(), host: [198, 51, 100, r.u8()], port: 7000 },
        { id: f.nId, host: [127, 0, 0, 1], port: N_ADDR.port },
        { id: f.rId, host: [10, 90, 0, 1], port: R_ADDR.port },
        { id: f.nId, host: [10, 90, 0, 3], port: 0 },
      ];
      const t = targets[which] as (typeof targets)[number];
      const hs = ntorClientCreate(t.id.publicKey, t.id.onionPublic);
      s.pending = hs.state;
      const body =
        t.port === 0
          ? r.bytes(r.u8())
          : encodeExtend({
              targetId: t.id.publicKey,
              host: Buffer.from(t.host),
              port: t.port,
              onionKey: t.id.onionPublic,
              x: hs.message,
            });
      send(f.p, R_ADDR, forwardCell(f, s, Relay.extend, body, false));
      break;
    }
    case 4: {
      // A genuine FORWARD cell with any relay message (R reads or forwards it).
      const s = f.slots[slotIx];
      if (!s || s.keys.length === 0) break;
      const command = r.u8();
      const large = (command & 0x80) !== 0;
      const body = r.bytes(r.u8());
      if (command === 0 || body.length > 200) break;
      send(f.p, R_ADDR, forwardCell(f, s, command & 0x7f || 1, body, large));
      break;
    }
    case 5: {
      // N answers the newest CREATE it got with a real CREATED; P may finish the hop later.
      const c = f.towardN[f.towardN.length - 1 - (r.u8() % Math.max(1, f.towardN.length))];
      if (!c) break;
      const resp = ntorServerRespond(
        f.nId.publicKey,
        f.nId.onionSecret,
        f.nId.onionPublic,
        c.x,
        HOP_KEY_BYTES,
      );
      if (!resp) break;
      send(
        f.n,
        R_ADDR,
        encodeCreated(c.circId, resp.message.subarray(0, 32), resp.message.subarray(32)),
      );
      stats.extendeds += 1;
      break;
    }
    case 6: {
      // BACKWARD from N on an id R chose, any content.
      const c = f.towardN[r.u8() % Math.max(1, f.towardN.length)];
      if (!c) break;
      const size = r.u8() & 1 ? CELL_LARGE : CELL_SMALL;
      const out = Buffer.concat([Buffer.from([MSG_BACKWARD, 0, 0, 0, 0]), r.bytes(size)]);
      out.writeUInt32BE(c.circId, 1);
      send(f.n, R_ADDR, out);
      break;
    }
    case 7: {
      // DESTROY from P on a slot, or DESTROY_BACK from N on an id R chose.
      const reason = r.u8();
      if (reason & 1) {
        const s = f.slots[slotIx];
        if (s) send(f.p, R_ADDR, encodeDestroy(MSG_DESTROY, s.circId, reason >> 1));
      } else {
        const c = f.towardN[r.u8() % Math.max(1, f.towardN.length)];
        if (c) send(f.n, R_ADDR, encodeDestroy(MSG_DESTROY_BACK, c.circId, reason >> 1));
      }
      break;
    }
    case 8:
      passTime(f, (r.u8() % 16) * 1000);
      break;
    default: {
      // A burst: the same genuine CREATE many times (idempotency, budgets).
      const count = r.u8() % 64;
      const hs = ntorClientCreate(f.rId.publicKey, f.rId.onionPublic);
      for (let k = 0; k < count; k += 1) {
        send(f.p, R_ADDR, encodeCreate(r.u32() || 1, f.rId.onionPublic, hs.message, 1));
      }
    }
  }
  absorb(f);
}

/** R's tables: bounded, and each circuit where the others say it is. */
function checkTables(f: Fixture): void {
  const rr = f.relay as unknown as {
    byPrev: Map<LinkPeer, Map<number, RelayCircuit>>;
    byNext: Map<LinkPeer, Map<number, RelayCircuit>>;
    waitingForLink: Set<RelayCircuit>;
    neighbours: Map<LinkPeer, { waiting: Set<RelayCircuit> }>;
    linked: Map<string, LinkPeer>;
  };
  let n = 0;
  const all = new Set<RelayCircuit>();
  for (const t of rr.byPrev.values()) {
    check(t.size > 0, 'an empty per-link table was kept');
    for (const c of t.values()) {
      n += 1;
      all.add(c);
      check(c.depth >= 1 && c.depth <= MAX_HOPS, `a circuit at depth ${c.depth}`);
    }
  }
  check(n === f.relay.circuits, `circuit count ${f.relay.circuits} but ${n} in the tables`);
  check(n <= MAX_CIRCUITS, `${n} circuits, more than the limit`);
  for (const t of rr.byNext.values()) {
    for (const c of t.values()) check(all.has(c), 'byNext holds a freed circuit');
  }
  check(rr.waitingForLink.size <= MAX_EXTEND_TARGETS, 'wait list over its bound');
  let waiting = 0;
  for (const nb of rr.neighbours.values()) {
    waiting += nb.waiting.size;
    for (const c of nb.waiting)
      check(rr.waitingForLink.has(c), 'a neighbour waits for a circuit the relay does not');
  }
  check(waiting === rr.waitingForLink.size, 'per-neighbour waits do not add up');
  for (const c of rr.waitingForLink) check(all.has(c), 'the wait list holds a freed circuit');
  check(
    rr.neighbours.size <= f.relay.endpoint.peers.size,
    'neighbour state for a link that is gone',
  );
  check(rr.linked.size <= f.relay.endpoint.peers.size, 'more linked ids than links');
  stats.maxCircuits = Math.max(stats.maxCircuits, n);
  stats.maxWaiting = Math.max(stats.maxWaiting, rr.waitingForLink.size);
}

function seedProgram(ops: number[][]): Buffer {
  return Buffer.from(ops.flat());
}

export const relayCircuitsTarget: FuzzTarget = {
  name: 'relay/circuit-messages',
  async seeds() {
    fx = await build();
    return [
      // CREATE, EXTEND to N, N's CREATED, a PING, a BACKWARD, DESTROY.
      seedProgram([
        [2, 0, 1, 0, 0, 0, 7, 1],
        [3, 0, 0],
        [5, 0, 0],
        [4, 0, 9, 8, 1, 2, 3, 4, 5, 6, 7, 8],
        [6, 0, 0, 0],
        [7, 0, 1],
      ]),
      // Extends refused: too deep, private target with the check on, black hole then time out.
      seedProgram([
        [2, 1, 1, 0, 0, 0, 9, 3],
        [3, 1, 0],
        [2, 2, 1, 0, 0, 1, 9, 1],
        [3, 2, 1, 7],
        [8, 0, 11],
      ]),
      // A CREATE burst and raw garbage of every type from both sides.
      seedProgram([
        [9, 0, 63],
        [0, 0, 0, 4],
        [0, 0, 3, 9],
        [1, 0, 1, 2],
        [1, 0, 4, 69],
        [8, 0, 2],
      ]),
    ];
  },
  run(input) {
    const f = fx as Fixture;
    stats.runs += 1;
    // Budgets refill between runs; the links stay up.
    passTime(f, 2000);
    if (!upLink(f.p, R_ADDR)) {
      f.p.ep.dial(R_ADDR.host, R_ADDR.port, f.rId.id);
      passTime(f, 1000);
    }
    const r = new Reader(input);
    for (let k = 0; k < 64 && !r.done; k += 1) {
      op(f, r);
      stats.ops += 1;
      checkTables(f);
    }
    // Start the next run from an empty relay: P tears down what it made.
    for (const s of f.slots) if (s) send(f.p, R_ADDR, encodeDestroy(MSG_DESTROY, s.circId, 4));
    f.slots.fill(null);
    absorb(f);
    if (f.relay.circuits > MAX_CIRCUITS / 2) passTime(f, 181_000);
    checkTables(f);
    return true;
  },
  maxLength: 512,
  weight: 1,
  stats: () =>
    `runs ${stats.runs}, ops ${stats.ops}, created ${stats.created}, N answers ${stats.extendeds}, ` +
    `max circuits ${stats.maxCircuits}, max waiting ${stats.maxWaiting}`,
  teardown() {
    fx?.relay.stop();
    fx?.p.ep.stop();
    fx?.n.ep.stop();
    fx = undefined;
  },
};
