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

const material = [0, 1].map((i) => new Rng(1000 + i).bytes(HOP_KEY_BYTES));
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
let unwrapAccepted = 0;

export const unwrapBackwardTarget: FuzzTarget = {
  name: 'circuit/unwrapBackward',
  seeds() {
    const relays = material.map((m) => new HopKeys(m));
    const random = deterministicRandom(8);
    const out: Buffer[] = [];
    for (const size of [CELL_SMALL, CELL_LARGE]) {
      const cell = Buffer.alloc(size);
      sealBackward(relays[1] as HopKeys, 1, Buffer.from('hello back'), size, cell, random);
      layerBackward(relays[0] as HopKeys, cell, 0, size);
      out.push(cell);
      genuineBackward.add(cell.toString('hex'));
    }
    return out;
  },
  run(input) {
    clientKeys ??= material.map((m) => new HopKeys(m));
    const client = clientKeys;
    const cell = Buffer.from(input);
    const seq = unwrapBackward(client, 1, cell, 0, cell.length);
    check(Number.isSafeInteger(seq) && seq >= 0, `unwrapBackward returned ${seq}`);
    if (seq > 0) {
      check(genuineBackward.has(input.toString('hex')), 'a forged backward cell authenticated');
      unwrapAccepted += 1;
    }
    check(
      unwrapBackward(client, 2, Buffer.from(input), 0, input.length) === 0,
      'origin past the circuit',
    );
    return seq > 0;
  },
  maxLength: CELL_LARGE + 16,
  weight: 0.5,
  stats: () => `authenticated ${unwrapAccepted} (only unmodified genuine cells may)`,
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

export const circuitTargets: FuzzTarget[] = [
  createTarget,
  createdTarget,
  destroyTarget,
  relayTarget,
  extendTarget,
  peelForwardTarget,
  unwrapBackwardTarget,
  replayWindowTarget,
];
