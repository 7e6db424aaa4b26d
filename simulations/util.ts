/**
 * Small helpers of the simulator: a seeded random source, summaries of
 * samples, a transport wrapper that counts a node's datagrams and can
 * crash it (the node goes silent, as a killed process would), and a
 * watch for relays that dial each other at the same moment.
 */
import { performance } from 'node:perf_hooks';
import { isClientHello } from '../src/link/endpoint.js';
import type {
  DatagramReceiver,
  DatagramTransport,
  MemoryTransport,
} from '../src/link/transport.js';

/** mulberry32: a small seeded generator of floats in [0, 1). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** An independent stream for one purpose, derived from the run's seed. */
export function stream(seed: number, salt: number): () => number {
  return seededRandom((Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(salt, 0x85ebca6b)) >>> 0);
}

export function shuffle<T>(items: T[], random: () => number): T[] {
  const a = [...items];
  for (let i = a.length - 1; i > 0; i -= 1) {
    const j = Math.floor(random() * (i + 1));
    [a[i], a[j]] = [a[j] as T, a[i] as T];
  }
  return a;
}

export interface Summary {
  n: number;
  min: number | null;
  median: number | null;
  p90: number | null;
  max: number | null;
}

/** Nearest-rank percentile of sorted values. */
function rank(sorted: number[], p: number): number {
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1));
  return sorted[i] as number;
}

export function summarize(values: number[], digits = 1): Summary {
  if (values.length === 0) return { n: 0, min: null, median: null, p90: null, max: null };
  const s = [...values].sort((a, b) => a - b);
  const r = (v: number) => Number(v.toFixed(digits));
  return {
    n: s.length,
    min: r(s[0] as number),
    median: r(rank(s, 0.5)),
    p90: r(rank(s, 0.9)),
    max: r(s[s.length - 1] as number),
  };
}

/** Reservoir sampling: a uniform sample of at most `capacity` of everything offered. */
export class Reservoir {
  readonly values: number[] = [];
  seen = 0;

  constructor(
    private readonly capacity: number,
    private readonly random: () => number,
  ) {}

  offer(v: number): void {
    this.seen += 1;
    if (this.values.length < this.capacity) this.values.push(v);
    else {
      const j = Math.floor(this.random() * this.seen);
      if (j < this.capacity) this.values[j] = v;
    }
  }
}

/** Two DTLS ClientHellos in opposite directions within this long: a crossed dial. */
const CROSS_WINDOW_MS = 1000;
/** A crossed pair is counted again only after this long (the link handshake timeout). */
const CROSS_REPEAT_MS = 10_000;
/** Entries of each DialWatch table, at most (a full table is cleared). */
const WATCH_ENTRIES = 4096;
/** Crossed pairs listed by name, at most. */
const WATCH_EXAMPLES = 16;

/**
 * Watches the ClientHellos relays send each other, to spot two relays
 * dialing each other at the same moment (each extending a circuit to the
 * other). Both links use the same pair of addresses, so each side's
 * ClientHello lands in the other side's own dialing session: see
 * simulations/README.md. Looks at the datagrams only, never at node state.
 */
export class DialWatch {
  crossed = 0;
  readonly examples: string[] = [];
  private readonly lastHello = new Map<string, number>();
  private readonly lastCrossed = new Map<string, number>();

  hello(from: string, to: string): void {
    const now = performance.now();
    if (this.lastHello.size >= WATCH_ENTRIES) this.lastHello.clear();
    this.lastHello.set(`${from}>${to}`, now);
    const back = this.lastHello.get(`${to}>${from}`);
    if (back === undefined || now - back > CROSS_WINDOW_MS) return;
    const pair = from < to ? `${from}<->${to}` : `${to}<->${from}`;
    const seen = this.lastCrossed.get(pair);
    if (seen !== undefined && now - seen < CROSS_REPEAT_MS) return;
    if (this.lastCrossed.size >= WATCH_ENTRIES) this.lastCrossed.clear();
    this.lastCrossed.set(pair, now);
    this.crossed += 1;
    if (this.examples.length < WATCH_EXAMPLES) this.examples.push(pair);
  }
}

/**
 * A node's MemoryTransport with counters and a crash switch. After
 * crash() the node neither sends nor receives anything, and its address
 * is gone from the network (datagrams to it are lost), while the node
 * object itself knows nothing of it: it finds out nothing, as a killed
 * process would not, and its neighbours only notice through their timers.
 */
export class SimTransport implements DatagramTransport {
  sent = 0;
  received = 0;
  crashed = false;

  constructor(
    private readonly inner: MemoryTransport,
    private readonly watch: DialWatch | null = null,
  ) {}

  start(receiver: DatagramReceiver, onBatchEnd?: () => void): Promise<void> {
    return this.inner.start(
      (data, host, port) => {
        if (this.crashed) return;
        this.received += 1;
        receiver(data, host, port);
      },
      onBatchEnd &&
        (() => {
          if (!this.crashed) onBatchEnd();
        }),
    );
  }

  address(): { host: string; port: number } {
    return this.inner.address();
  }

  sendPacked(packed: Buffer, len: number, host: string, port: number): void {
    let o = 0;
    while (o + 2 <= len) {
      const n = packed.readUInt16BE(o);
      o += 2;
      if (o + n > len) break;
      this.sendOne(packed.subarray(o, o + n), host, port);
      o += n;
    }
  }

  sendOne(data: Buffer, host: string, port: number): void {
    if (this.crashed) return;
    this.sent += 1;
    if (this.watch && isClientHello(data)) this.watch.hello(this.inner.address().host, host);
    this.inner.sendOne(data, host, port);
  }

  close(): void {
    this.inner.close();
  }

  crash(): void {
    this.crashed = true;
    this.inner.close();
  }
}
