/**
 * Circuit codecs and onion layers: what neighbours send in circuit
 * messages and what arrives inside cells. Forged cells must never
 * authenticate.
 */
import { isDeepStrictEqual } from 'node:util';
import {
  decodeCreate,
  decodeCreated,
  decodeDestroy,
  decodeExtend,
  decodeRelay,
  encodeCreate,
  encodeCreated,
  encodeDestroy,
  encodeExtend,
  relayMessage,
  CELL_LARGE,
  CELL_SMALL,
  type CreateMsg,
  type ExtendBody,
  type RelayMsg,
} from '../../../src/circuit/cells.js';
import {
  BACKWARD_OVERHEAD,
  BACKWARD_X_BYTES,
  MAX_HOPS,
  HOP_KEY_BYTES,
  HopKeys,
  layerBackward,
  PaddingSource,
  peelForward,
  sealBackward,
  unwrapBackward,
  wrapForward,
} from '../../../src/circuit/onion.js';
import { REPLAY_WINDOW_SIZE, ReplayWindow } from '../../../src/circuit/replay-window.js';
import {
  ClientHopKeys,
  forwardKeysFor,
  RelayHopKeys,
  unwrapBackwardEpochs,
} from '../../../src/circuit/circuit-keys.js';
import { EPOCH_WINDOW_MS } from '../../../src/circuit/key-epochs.js';
import type { ForwardLayerKeys } from '../../../src/circuit/onion.js';
import { Rng } from '../rng.js';
import { check, codecTarget, type FuzzTarget } from '../target.js';

/**
 * decode(buf, o, len) at offset 0 and inside a larger buffer must agree
 * (after `relative` maps a value decoded at offset o to offset 0).
 */
function windowed<T>(
  decode: (b: Buffer, o: number, len: number) => T | null,
  relative: (v: T, o: number) => T = (v) => v,
) {
  return (input: Buffer): T | null => {
    const v = decode(input, 0, input.length);
    const pad = 1 + (input.length % 7);
    const big = Buffer.concat([Buffer.alloc(pad, 0xee), input, Buffer.alloc(5, 0xee)]);
    const at = decode(big, pad, input.length);
    check(
      isDeepStrictEqual(at === null ? null : relative(at, pad), v),
      'decoder depends on the offset',
    );
    check(decode(input, 1, input.length) === null, 'decoder read past the buffer');
    return v;
  };
}

export const createTarget = codecTarget<CreateMsg>({
  name: 'circuit/decodeCreate',
  seeds: () => [
    encodeCreate(7, Buffer.alloc(32, 1), Buffer.alloc(32, 2), 1).subarray(1),
    encodeCreate(0xfffffffe, Buffer.alloc(32, 3), Buffer.alloc(32, 4), 3).subarray(1),
  ],
  decode: windowed(decodeCreate),
  encode: (m) => encodeCreate(m.circId, m.onionKey, m.x, m.depth).subarray(1),
  maxLength: 128,
  weight: 0.3,
});

export const createdTarget = codecTarget<{ circId: number; y: Buffer; auth: Buffer }>({
  name: 'circuit/decodeCreated',
  seeds: () => [encodeCreated(9, Buffer.alloc(32, 5), Buffer.alloc(32, 6)).subarray(1)],
  decode: windowed(decodeCreated),
  encode: (m) => encodeCreated(m.circId, m.y, m.auth).subarray(1),
  maxLength: 128,
  weight: 0.3,
});

export const destroyTarget = codecTarget<{ circId: number; reason: number }>({
  name: 'circuit/decodeDestroy',
  seeds: () => [encodeDestroy(0x22, 0xdeadbeef, 3).subarray(1)],
  decode: windowed(decodeDestroy),
  encode: (m) => encodeDestroy(0x22, m.circId, m.reason).subarray(1),
  maxLength: 32,
  weight: 0.3,
});

export const relayTarget = codecTarget<RelayMsg>({
  name: 'circuit/decodeRelay',
  seeds: () => [
    relayMessage(1, Buffer.from('payload')),
    Buffer.concat([relayMessage(9, Buffer.alloc(0)), Buffer.alloc(40)]),
  ],
  decode: windowed(decodeRelay, (m, o) => ({ ...m, bodyOffset: m.bodyOffset - o })),
  validate(m, input) {
    check(m.command !== 0, 'relay command 0 accepted');
    check(m.bodyOffset + m.bodyLength <= input.length, 'relay body runs past the cell');
  },
  // The cell carries padding after the body: compare the parsed fields only.
  canonical: false,
  encode: (m) => relayMessage(m.command, Buffer.alloc(m.bodyLength, 0x61)),
  maxLength: 512,
  weight: 0.5,
});

export const extendTarget = codecTarget<ExtendBody>({
  name: 'circuit/decodeExtend',
  seeds: () => [
    encodeExtend({
      targetId: Buffer.alloc(32, 9),
      host: Buffer.from([192, 0, 2, 1]),
      port: 7000,
      onionKey: Buffer.alloc(32, 1),
      x: Buffer.alloc(32, 2),
    }),
    encodeExtend({
      targetId: Buffer.alloc(32, 8),
      host: Buffer.alloc(16, 0x20),
      port: 443,
      onionKey: Buffer.alloc(32, 3),
      x: Buffer.alloc(32, 4),
    }),
  ],
  decode: windowed(decodeExtend),
  encode: encodeExtend,
  validate(e) {
    check(e.port >= 1 && e.port <= 65535, 'port out of range');
    check(e.host.length === 4 || e.host.length === 16, 'address size');
  },
  maxLength: 256,
  weight: 0.5,
});

// --- onion layers ------------------------------------------------------------------

function deterministicRandom(seed: number): (buf: Buffer) => void {
  const rng = new Rng(seed);
  return (buf) => {
    rng.bytes(buf.length).copy(buf);
  };
}

const material = [0, 1, 2].map((i) => new Rng(1000 + i).bytes(HOP_KEY_BYTES));
// Made once: every HopKeys holds sodium_malloc'd keys (guarded pages), and
// the process aborts when too many are alive.
let relayKeys: HopKeys | undefined;
let clientKeys: HopKeys[] | undefined;
const genuine = new Set<string>();
let peelAccepted = 0;

export const peelForwardTarget: FuzzTarget = {
  name: 'circuit/peelForward',
  seeds() {
    const client = material.map((m) => new HopKeys(m));
    const random = deterministicRandom(7);
    const pad = new PaddingSource(Buffer.alloc(32, 5));
    const out: Buffer[] = [];
    for (const [size, hops] of [
      [CELL_SMALL, 1],
      [CELL_LARGE, 2],
      [CELL_SMALL, 2],
    ] as const) {
      const cell = Buffer.alloc(size);
      wrapForward(
        client.slice(0, hops),
        [1, 1].slice(0, hops),
        Buffer.from('hello'),
        size,
        cell,
        pad,
        random,
      );
      out.push(cell);
      genuine.add(cell.toString('hex'));
    }
    return out;
  },
  run(input) {
    relayKeys ??= new HopKeys(material[0] as Buffer);
    const relay = relayKeys;
    const scratch = Buffer.alloc(input.length + 8);
    const copy = Buffer.from(input);
    const seq = peelForward(relay, input, 0, input.length, scratch);
    check(Number.isSafeInteger(seq) && seq >= 0, `peelForward returned ${seq}`);
    check(copy.equals(input), 'peelForward modified its input cell');
    if (seq > 0) {
      check(genuine.has(input.toString('hex')), 'a forged forward cell authenticated');
      peelAccepted += 1;
    }
    return seq > 0;
  },
  maxLength: CELL_LARGE + 16,
  weight: 0.5,
  stats: () => `authenticated ${peelAccepted} (only unmodified genuine cells may)`,
};

const genuineBackward = new Set<string>();

/**
 * The bytes of a backward cell the client reads for an origin at index
 * `origin`: all but what is left of the origin's tail, 16 bytes for each
 * forwarding hop fewer than MAX_HOPS - 1 (docs/protocol.md section 8.5),
 * which nothing reads and nothing checks.
 */
function usedPart(cell: Buffer, origin: number): string {
  const unused = BACKWARD_X_BYTES * (MAX_HOPS - 1 - origin);
  return cell.toString('hex', 0, cell.length - unused);
}
let unwrapAccepted = 0;

export const unwrapBackwardTarget: FuzzTarget = {
  name: 'circuit/unwrapBackward',
  seeds() {
    const relays = material.map((m) => new HopKeys(m));
    const random = deterministicRandom(8);
    const out: Buffer[] = [];
    let counter = 0;
    // Cells from hop 2 through hop 1, and from hop 3 through hops 2 and 1.
    for (const origin of [1, 2]) {
      for (const size of [CELL_SMALL, CELL_LARGE]) {
        const cell = Buffer.alloc(size);
        sealBackward(relays[origin] as HopKeys, 1, Buffer.from('hello back'), size, cell, random);
        for (let i = origin - 1; i >= 0; i -= 1) {
          counter += 1;
          layerBackward(relays[i] as HopKeys, counter, cell, 0, size);
        }
        out.push(cell);
        genuineBackward.add(`${origin}:${usedPart(cell, origin)}`);
      }
    }
    return out;
  },
  run(input) {
    clientKeys ??= material.map((m) => new HopKeys(m));
    const client = clientKeys;
    let accepted = false;
    for (const origin of [1, 2]) {
      const cell = Buffer.from(input);
      const seq = unwrapBackward(client, origin, cell, 0, cell.length);
      check(Number.isSafeInteger(seq) && seq >= 0, `unwrapBackward returned ${seq}`);
      if (seq > 0) {
        check(
          genuineBackward.has(`${origin}:${usedPart(input, origin)}`),
          'a forged backward cell authenticated',
        );
        unwrapAccepted += 1;
        accepted = true;
      } else check(cell.equals(input), 'a refused backward cell was modified');
    }
    check(
      unwrapBackward(client, 3, Buffer.from(input), 0, input.length) === 0,
      'origin past the circuit',
    );
    return accepted;
  },
  maxLength: CELL_LARGE + 16,
  weight: 0.5,
  stats: () => `authenticated ${unwrapAccepted} (only unmodified genuine cells may)`,
};

let layered = 0;

/**
 * A forwarding hop's backward layer on any bytes: it never throws, keeps
 * the size, refuses cells too short to hold a layer, and its header depends
 * on its counter only (what the cell held does not show through).
 */
export const layerBackwardTarget: FuzzTarget = {
  name: 'circuit/layerBackward',
  seeds() {
    const relays = material.map((m) => new HopKeys(m));
    const cell = Buffer.alloc(CELL_SMALL);
    sealBackward(
      relays[2] as HopKeys,
      1,
      Buffer.from('seed'),
      CELL_SMALL,
      cell,
      deterministicRandom(9),
    );
    return [cell, Buffer.alloc(CELL_LARGE, 0x5a), Buffer.alloc(BACKWARD_OVERHEAD)];
  },
  run(input) {
    relayKeys ??= new HopKeys(material[0] as Buffer);
    layered += 1;
    const counter = layered;
    const cell = Buffer.from(input);
    const ok = layerBackward(relayKeys, counter, cell, 0, cell.length);
    check(ok === input.length >= BACKWARD_OVERHEAD, `layerBackward(${input.length} bytes) = ${ok}`);
    check(cell.length === input.length, 'layerBackward changed the size');
    if (!ok) {
      check(cell.equals(input), 'a refused cell was modified');
      return false;
    }
    const other = Buffer.alloc(Math.max(BACKWARD_OVERHEAD, input.length), 0xff);
    layerBackward(relayKeys, counter, other, 0, other.length);
    check(
      other.subarray(0, BACKWARD_X_BYTES).equals(cell.subarray(0, BACKWARD_X_BYTES)),
      'the header depends on the cell, not only on the counter',
    );
    check(!layerBackward(relayKeys, 0, Buffer.from(input), 0, input.length), 'counter 0 accepted');
    return true;
  },
  maxLength: CELL_LARGE + 16,
  weight: 0.3,
};

// --- replay window, against a model ------------------------------------------------

export const replayWindowTarget: FuzzTarget = {
  name: 'circuit/replay-window',
  seeds: () => [Buffer.from('0001000200030001ffff0800', 'hex')],
  run(input) {
    // The input is a walk: each u16 moves the sequence number forward or back.
    const w = new ReplayWindow();
    const seen = new Set<number>();
    let top = 0;
    let seq = 1;
    for (let i = 0; i + 2 <= input.length; i += 2) {
      const step = input.readInt16BE(i);
      seq = Math.max(0, seq + (step === -32768 ? REPLAY_WINDOW_SIZE * 40 : step));
      const fresh = seq > 0 && !seen.has(seq) && (seq > top || top - seq < REPLAY_WINDOW_SIZE);
      const got = w.accept(seq);
      check(got === fresh, `accept(${seq}) = ${got}, expected ${fresh} (top ${top})`);
      if (fresh) {
        seen.add(seq);
        top = Math.max(top, seq);
      }
    }
  },
  maxLength: 512,
  weight: 0.3,
};

/** D: the client's slots start this long after the relay's (its handshake's reply time). */
const CLIENT_OFFSET_MS = 300;
let epochOpened = 0;
let epochRefusedLate = 0;

/**
 * The key epochs of one hop (docs/protocol.md 8.10) as a state machine
 * driven by the input, three bytes an operation: let time pass (up to
 * 650 s), the client sends a forward cell, the relay sends a backward one,
 * or a recorded cell is delivered (any of the last 32, so reordered,
 * repeated, late) as it was or with a byte flipped. Checked: nothing
 * throws; a flipped cell never opens; no cell opens at the relay W = 70 s
 * or more after it was sent (the forward-secrecy window of a relay's
 * memory), nor at the client W + D or more after (its backward window,
 * its slots starting D = 300 ms after the relay's: docs/protocol.md
 * 8.10.5); a cell delivered as soon as it was sent always opens; the
 * receivers hold at most four keys.
 */
export const epochsTarget: FuzzTarget = {
  name: 'circuit/key-epochs',
  seeds() {
    const r = new Rng(77);
    return [
      r.bytes(30),
      r.bytes(90),
      Buffer.from([0, 255, 255, 1, 0, 0, 2, 0, 0, 3, 0, 0, 4, 0, 0]),
    ];
  },
  run(input) {
    const m = material[0] as Buffer;
    const size = CELL_SMALL;
    // The relay made its state 300 ms before the client finished the handshake.
    const relay = new RelayHopKeys(m, 0);
    const client = [new ClientHopKeys(m, CLIENT_OFFSET_MS)];
    const list: ForwardLayerKeys[] = [];
    const chosen = [0];
    const pad = new PaddingSource(Buffer.alloc(32, 9));
    const scratch = Buffer.alloc(size + 8);
    const sent: { at: number; cell: Buffer; forward: boolean }[] = [];
    let now = CLIENT_OFFSET_MS;
    let seq = 0;
    const deliver = (c: { at: number; cell: Buffer; forward: boolean }, flip: number) => {
      const cell = Buffer.from(c.cell);
      if (flip >= 0) cell[flip % size] = (cell[flip % size] as number) ^ 0x01;
      const ok = c.forward
        ? relay.peel(cell, 0, size, scratch, now) > 0
        : unwrapBackwardEpochs(client, 0, cell, 0, size, now, chosen) > 0;
      check(!(ok && flip >= 0), 'a modified cell opened');
      if (ok) {
        const window = c.forward ? EPOCH_WINDOW_MS : EPOCH_WINDOW_MS + CLIENT_OFFSET_MS;
        check(
          now - c.at < window,
          `a ${c.forward ? 'forward' : 'backward'} cell sent at ${c.at} opened at ${now}`,
        );
        epochOpened += 1;
      } else if (flip < 0 && now - c.at >= EPOCH_WINDOW_MS) epochRefusedLate += 1;
      return ok;
    };
    for (let o = 0; o + 3 <= input.length; o += 3) {
      const op = (input[o] as number) % 6;
      const a = input[o + 1] as number;
      const b = input[o + 2] as number;
      if (op === 0) {
        now += a * b * 10;
        relay.advance(now);
        client[0]!.advance(now);
      } else if (op === 1 || op === 2) {
        seq += 1;
        const cell = Buffer.alloc(size);
        if (op === 1) {
          wrapForward(
            forwardKeysFor(client, now, list),
            [seq],
            Buffer.from([9, 0, 1, a]),
            size,
            cell,
            pad,
          );
        } else sealBackward(relay.backwardKey(now), seq, Buffer.from([10, 0, 1, a]), size, cell);
        const c = { at: now, cell, forward: op === 1 };
        sent.push(c);
        if (sent.length > 32) sent.shift();
        // At once, in order: it opens.
        if (b < 128) check(deliver(c, -1), 'a cell delivered as it was sent did not open');
      } else {
        const c = sent[sent.length - 1 - (a % Math.max(1, sent.length))];
        if (c) deliver(c, op === 4 ? b : -1);
      }
      check(relay.forward.inspect().keys.length <= 4, 'the relay holds more than 4 keys');
      check(client[0]!.backward.inspect().keys.length <= 4, 'the client holds more than 4 keys');
    }
    relay.wipe();
    client[0]!.wipe();
    return true;
  },
  maxLength: 300,
  weight: 0.3,
  stats: () => `opened ${epochOpened}, refused after the window ${epochRefusedLate}`,
};

export const circuitTargets: FuzzTarget[] = [
  createTarget,
  createdTarget,
  destroyTarget,
  relayTarget,
  extendTarget,
  peelForwardTarget,
  unwrapBackwardTarget,
  layerBackwardTarget,
  replayWindowTarget,
  epochsTarget,
];
