// Cost per cell of the key epochs on the forward path (docs/protocol.md
// 8.10): wrapForward (client, 3 hops) and peelForward (relay) with keys for
// the circuit's life, and the same through the epoch schedule the client
// and the relay use (circuit-keys.ts), over a virtual clock that crosses
// slot boundaries. 1410-byte cells; each figure is the best of 5 runs,
// interleaved, since the machine is shared. `node dist/test/bench/epoch-cost.js`.
import { randomBytes } from 'node:crypto';
import {
  ClientHopKeys,
  forwardKeysFor,
  RelayHopKeys,
  unwrapBackwardEpochs,
} from '../../src/circuit/circuit-keys.js';
import {
  HOP_KEY_BYTES,
  HopKeys,
  layerBackward,
  PaddingSource,
  peelForward,
  sealBackward,
  unwrapBackward,
  wrapForward,
  type ForwardLayerKeys,
} from '../../src/circuit/onion.js';

const S = 1410;
const N = 20_000;
/** Virtual milliseconds per cell: N cells span 180 s, three slot changes. */
const MS_PER_CELL = 9;
const material = Array.from({ length: 3 }, () => randomBytes(HOP_KEY_BYTES));
const pad = new PaddingSource();
const payload = randomBytes(1200);
const out = Buffer.alloc(S);
const scratch = Buffer.alloc(S + 8);
const seqs = [1, 1, 1];
const list: ForwardLayerKeys[] = [];

function time(f: () => void): number {
  const t = process.hrtime.bigint();
  f();
  return Number(process.hrtime.bigint() - t) / N;
}

const staticHops = material.map((m) => new HopKeys(m));
// As many distinct cells as the epoch runs use, so both read the same amount of memory.
const staticCells = Array.from({ length: N }, () => {
  const c = Buffer.alloc(S);
  wrapForward(staticHops, seqs, payload, S, c, pad);
  return c;
});
// Cells under the epochs, made in advance with their send times.
const maker = material.map((m) => new ClientHopKeys(m, 0));
const cells = Array.from({ length: N }, (_, i) => {
  const c = Buffer.alloc(S);
  wrapForward(forwardKeysFor(maker, i * MS_PER_CELL, list), seqs, payload, S, c, pad);
  return c;
});

// Backward cells from hop 3 through hops 2 and 1, static keys and epochs.
const body = payload.subarray(0, 1200);
const staticBack = Array.from({ length: N }, (_, i) => {
  const c = Buffer.alloc(S);
  sealBackward(staticHops[2]!, i + 1, body, S, c);
  layerBackward(staticHops[1]!, i + 1, c, 0, S);
  layerBackward(staticHops[0]!, i + 1, c, 0, S);
  return c;
});
const relays = material.map((m) => new RelayHopKeys(m, 0));
const backCells = Array.from({ length: N }, (_, i) => {
  const c = Buffer.alloc(S);
  const now = i * MS_PER_CELL;
  sealBackward(relays[2]!.backwardKey(now), i + 1, body, S, c);
  layerBackward(relays[1]!.backwardKey(now), i + 1, c, 0, S);
  layerBackward(relays[0]!.backwardKey(now), i + 1, c, 0, S);
  return c;
});
const work = Buffer.alloc(S);
const chosen = [0, 0, 0];

const best = {
  wrapStatic: Infinity,
  wrapEpochs: Infinity,
  peelStatic: Infinity,
  peelEpochs: Infinity,
  unwrapStatic: Infinity,
  unwrapEpochs: Infinity,
};
let stats = {};
for (let run = 0; run < 5; run += 1) {
  best.wrapStatic = Math.min(
    best.wrapStatic,
    time(() => {
      for (let i = 0; i < N; i += 1) wrapForward(staticHops, seqs, payload, S, out, pad);
    }),
  );
  const client = material.map((m) => new ClientHopKeys(m, 0));
  best.wrapEpochs = Math.min(
    best.wrapEpochs,
    time(() => {
      for (let i = 0; i < N; i += 1) {
        wrapForward(forwardKeysFor(client, i * MS_PER_CELL, list), seqs, payload, S, out, pad);
      }
    }),
  );
  best.peelStatic = Math.min(
    best.peelStatic,
    time(() => {
      for (let i = 0; i < N; i += 1) peelForward(staticHops[0]!, staticCells[i]!, 0, S, scratch);
    }),
  );
  const relay = new RelayHopKeys(material[0]!, 0);
  best.peelEpochs = Math.min(
    best.peelEpochs,
    time(() => {
      for (let i = 0; i < N; i += 1) relay.peel(cells[i]!, 0, S, scratch, i * MS_PER_CELL + 2);
    }),
  );
  stats = relay.forward.stats;
  best.unwrapStatic = Math.min(
    best.unwrapStatic,
    time(() => {
      for (let i = 0; i < N; i += 1) {
        staticBack[i]!.copy(work);
        unwrapBackward(staticHops, 2, work, 0, S);
      }
    }),
  );
  const c = material.map((m) => new ClientHopKeys(m, 0));
  best.unwrapEpochs = Math.min(
    best.unwrapEpochs,
    time(() => {
      for (let i = 0; i < N; i += 1) {
        backCells[i]!.copy(work);
        unwrapBackwardEpochs(c, 2, work, 0, S, i * MS_PER_CELL + 3, chosen);
      }
    }),
  );
}
console.log(
  JSON.stringify({
    cellSize: S,
    cellsPerRun: N,
    wrapForward3HopsNs: {
      static: Math.round(best.wrapStatic),
      epochs: Math.round(best.wrapEpochs),
    },
    peelForwardNs: { static: Math.round(best.peelStatic), epochs: Math.round(best.peelEpochs) },
    unwrapBackward3HopsNs: {
      static: Math.round(best.unwrapStatic),
      epochs: Math.round(best.unwrapEpochs),
    },
    relayEpochStats: stats,
  }),
);
