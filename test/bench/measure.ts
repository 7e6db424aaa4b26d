/**
 * Measurement primitives of the benchmark: iperf3 throughput and ping RTT
 * between two namespaces of a Lab.
 *
 * The first half of this file is pure (parsers and statistics, no I/O) so
 * it can be unit-tested without root; the runners below it drive the tools.
 */
import type { Lab } from '../helpers/netns.js';

// ---------------------------------------------------------------------------
// Pure parsing and statistics
// ---------------------------------------------------------------------------

/** Median of a list (mean of the two middle values for an even count); NaN if empty. */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  if (s.length % 2 === 1) return s[mid] as number;
  return ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

export interface Summary {
  median: number;
  min: number;
  max: number;
}

/** Median, minimum and maximum of a list; all NaN if the list is empty. */
export function summarize(xs: readonly number[]): Summary {
  if (xs.length === 0) return { median: NaN, min: NaN, max: NaN };
  return { median: median(xs), min: Math.min(...xs), max: Math.max(...xs) };
}

/**
 * Throughput in Mbit/s from the JSON that `iperf3 -c ... -J` prints:
 * end.sum_received.bits_per_second (what the receiver actually got).
 * Throws with iperf3's own message when the run failed.
 */
export function parseIperf3Json(text: string): number {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    const head = text.trim().slice(0, 120);
    throw new Error(`iperf3 printed no JSON${head ? `: ${head}` : ''}`);
  }
  const obj = doc as {
    error?: unknown;
    end?: { sum_received?: { bits_per_second?: unknown } };
  };
  if (typeof obj.error === 'string') throw new Error(`iperf3: ${obj.error}`);
  const bps = obj.end?.sum_received?.bits_per_second;
  if (typeof bps !== 'number' || !Number.isFinite(bps)) {
    throw new Error('iperf3 JSON has no end.sum_received.bits_per_second');
  }
  return bps / 1e6;
}

export interface PingResult {
  /** Round-trip time of each reply, in ms, in arrival order (duplicates excluded). */
  times: number[];
  transmitted: number;
  received: number;
  /** Median of `times` (computed here, ping does not print it); NaN if no reply. */
  medianMs: number;
  /** The avg of ping's summary line; NaN if absent. */
  avgMs: number;
}

/** Parse the output of iputils (or busybox) ping. */
export function parsePingOutput(text: string): PingResult {
  const times: number[] = [];
  for (const line of text.split('\n')) {
    if (line.includes('(DUP!)')) continue;
    const m = /\btime[=<]\s*([0-9]+(?:\.[0-9]+)?)\s*ms\b/.exec(line);
    if (m && /seq=\d/.test(line)) times.push(Number(m[1]));
  }
  const counts = /(\d+) packets transmitted, (\d+) (?:packets )?received/.exec(text);
  const summary = /(?:rtt|round-trip) min\/avg\/max(?:\/mdev)? = [0-9.]+\/([0-9.]+)\//.exec(text);
  return {
    times,
    transmitted: counts ? Number(counts[1]) : times.length,
    received: counts ? Number(counts[2]) : times.length,
    medianMs: median(times),
    avgMs: summary ? Number(summary[1]) : NaN,
  };
}

/** A single line without control characters, at most `max` characters: for error reasons. */
export function oneLine(text: string, max = 160): string {
  const s = text.replace(/\s+/g, ' ').trim();
  return s.length > max ? `${s.slice(0, max - 3)}...` : s;
}

// ---------------------------------------------------------------------------
// Runners (need root and a Lab)
// ---------------------------------------------------------------------------

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export const IPERF3_PORT = 5201;

/** True once something listens on TCP `port` inside namespace `ns`. */
async function listening(lab: Lab, ns: string, port: number): Promise<boolean> {
  const out = await lab.exec(ns, 'ss', ['-Hltn', `sport = :${port}`], 5000);
  return out.code === 0 && out.stdout.trim() !== '';
}

export interface IperfOptions {
  seconds: number;
  port?: number;
}

/**
 * One iperf3 TCP run: a one-shot server (`-s -1`) in serverNs, the client
 * in clientNs sending to `target` for `seconds`. Returns Mbit/s received.
 */
export async function runIperf3(
  lab: Lab,
  serverNs: string,
  clientNs: string,
  target: string,
  opts: IperfOptions,
): Promise<number> {
  const port = opts.port ?? IPERF3_PORT;
  const server = lab.spawn(serverNs, 'iperf3', ['-s', '-1', '-p', String(port)]);
  try {
    const deadline = Date.now() + 5000;
    while (!(await listening(lab, serverNs, port))) {
      if (server.exitCode !== null || server.signalCode !== null) {
        throw new Error(`iperf3 server exited: ${oneLine(server.output())}`);
      }
      if (Date.now() > deadline) throw new Error('iperf3 server did not start listening');
      await sleep(50);
    }
    const client = await lab.exec(
      clientNs,
      'iperf3',
      [
        '-c',
        target,
        '-p',
        String(port),
        '-t',
        String(opts.seconds),
        '-J',
        '--connect-timeout',
        '5000',
      ],
      (opts.seconds + 15) * 1000,
    );
    if (client.code === null) throw new Error('iperf3 client timed out');
    return parseIperf3Json(client.stdout || client.stderr);
  } finally {
    await lab.stop(server, 2000);
  }
}

export interface PingOptions {
  count: number;
  intervalS: number;
}

/** `ping -c count -i interval target` in ns; throws if no reply came back. */
export async function runPing(
  lab: Lab,
  ns: string,
  target: string,
  opts: PingOptions,
): Promise<PingResult> {
  const out = await lab.exec(
    ns,
    'ping',
    ['-n', '-c', String(opts.count), '-i', String(opts.intervalS), '-W', '2', target],
    opts.count * opts.intervalS * 1000 + 15_000,
  );
  const res = parsePingOutput(out.stdout);
  if (res.times.length === 0) {
    throw new Error(`ping ${target}: no reply (${oneLine(out.stdout + out.stderr)})`);
  }
  return res;
}

/** One `ping -c1 -W1`; true if it got a reply. */
export async function pingOnce(lab: Lab, ns: string, target: string): Promise<boolean> {
  const out = await lab.exec(ns, 'ping', ['-n', '-c', '1', '-W', '1', target], 5000);
  return out.code === 0;
}
