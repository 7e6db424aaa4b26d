/**
 * Measurement primitives of the benchmark: iperf3 throughput and ping RTT
 * between two namespaces of a Lab.
 *
 * The first half of this file is pure (parsers and statistics, no I/O) so
 * it can be unit-tested without root; the runners below it drive the tools.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import os from 'node:os';
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

/**
 * Command name and CPU time (user + system, in clock ticks, all threads) of
 * a process from the text of /proc/PID/stat; null if it does not parse.
 * The command name may hold spaces and parentheses: it ends at the last ')'.
 */
export function parseProcStat(text: string): { comm: string; ticks: number } | null {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < open) return null;
  // After ')': state (field 3), ppid, ..., utime (field 14), stime (field 15).
  const rest = text
    .slice(close + 1)
    .trim()
    .split(/\s+/);
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) return null;
  return { comm: text.slice(open + 1, close), ticks: utime + stime };
}

/**
 * Busy, interrupt (irq + softirq: kernel work charged to no process) and
 * total jiffies of all CPUs from the text of /proc/stat; null if absent.
 */
export function parseCpuTotals(text: string): { busy: number; irq: number; total: number } | null {
  const line = text.split('\n').find((l) => l.startsWith('cpu '));
  if (!line) return null;
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  if (f.length < 4 || f.some((x) => !Number.isFinite(x))) return null;
  // user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
  const idle = (f[3] ?? 0) + (f[4] ?? 0);
  return { busy: total - idle, irq: (f[5] ?? 0) + (f[6] ?? 0), total };
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

// ---------------------------------------------------------------------------
// CPU use per process while a measurement runs
// ---------------------------------------------------------------------------

export interface ProcessCpu {
  /** "<namespace short name>: <what>", e.g. "h3r1: shallot relay" or "b: iperf3". */
  label: string;
  /** CPU time over the window as a percentage of one CPU (top's convention: can exceed 100). */
  percent: number;
  /** How many processes carried this label in the window (iperf3 servers are one per run). */
  processes: number;
}

export interface CpuReport {
  seconds: number;
  cpus: number;
  /** All CPUs of the host: busy share of their capacity over the window, percent. */
  hostBusyPercent: number;
  /** Of that, interrupt and softirq work (not charged to any process), percent of all CPUs. */
  hostIrqPercent: number;
  /** Busiest first: the processes in the sampled namespaces. */
  processes: ProcessCpu[];
  /**
   * Busiest first: every other process of the host (other jobs, kernel
   * threads, this harness), by command name; the same % of one CPU.
   */
  outside: ProcessCpu[];
}

let clockTicks = 0;
function ticksPerSecond(): number {
  if (clockTicks === 0) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    } catch {
      /* below */
    }
    if (!Number.isFinite(clockTicks) || clockTicks <= 0) clockTicks = 100;
  }
  return clockTicks;
}

function readText(file: string): string | null {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return null;
  }
}

/** What a process is, for the report: "shallot <command>" for the CLI, else its command name. */
function describeProcess(pid: number, comm: string): string {
  const argv = (readText(`/proc/${pid}/cmdline`) ?? '').split('\0');
  const cli = argv.findIndex((a) => /(^|\/)cli\/main\.js$/.test(a));
  if (cli >= 0 && argv[cli + 1]) return `shallot ${argv[cli + 1]}`;
  return comm;
}

/**
 * Samples the CPU time of every process of the host once a second between
 * start() and stop(), without forking anything that would compete for CPU,
 * and tells those in a set of namespaces (through /proc/PID/ns/net) from
 * the rest: on a small machine another job's CPU use skews a throughput. A process first seen
 * after start() started inside the window, so all its CPU time counts; one
 * that exits between two samples loses at most its last second.
 */
export class CpuSampler {
  private readonly inodes = new Map<string, string>();
  private readonly seen = new Map<
    number,
    { label: string; inside: boolean; first: number; last: number }
  >();
  private timer: NodeJS.Timeout | null = null;
  private started = 0;
  private host0: { busy: number; irq: number; total: number } | null = null;
  private firstPass = true;

  /** namespaces: full name → short name used in labels. */
  constructor(
    namespaces: Map<string, string>,
    private readonly intervalMs = 1000,
  ) {
    for (const [full, short] of namespaces) {
      try {
        this.inodes.set(`net:[${statSync(`/run/netns/${full}`).ino}]`, short);
      } catch {
        /* namespace gone: nothing to sample there */
      }
    }
  }

  private sample(): void {
    let pids: string[];
    try {
      pids = readdirSync('/proc').filter((d) => /^\d+$/.test(d));
    } catch {
      return;
    }
    for (const d of pids) {
      const pid = Number(d);
      const st = parseProcStat(readText(`/proc/${d}/stat`) ?? '');
      if (!st) continue;
      const known = this.seen.get(pid);
      if (known) {
        known.last = st.ticks;
        continue;
      }
      let link = '';
      try {
        link = readlinkSync(`/proc/${d}/ns/net`);
      } catch {
        /* exited, or a kernel thread: outside */
      }
      const short = this.inodes.get(link);
      const what = pid === process.pid ? 'bench harness' : describeProcess(pid, st.comm);
      this.seen.set(pid, {
        label: short === undefined ? what : `${short}: ${what}`,
        inside: short !== undefined,
        first: this.firstPass ? st.ticks : 0,
        last: st.ticks,
      });
    }
    this.firstPass = false;
  }

  start(): void {
    this.started = Date.now();
    this.host0 = parseCpuTotals(readText('/proc/stat') ?? '');
    this.sample();
    this.timer = setInterval(() => this.sample(), this.intervalMs);
  }

  stop(): CpuReport {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.sample();
    const seconds = (Date.now() - this.started) / 1000;
    const host1 = parseCpuTotals(readText('/proc/stat') ?? '');
    const hz = ticksPerSecond();
    const group = (inside: boolean): ProcessCpu[] => {
      const byLabel = new Map<string, { ticks: number; processes: number }>();
      for (const p of this.seen.values()) {
        if (p.inside !== inside) continue;
        const e = byLabel.get(p.label) ?? { ticks: 0, processes: 0 };
        e.ticks += Math.max(0, p.last - p.first);
        e.processes += 1;
        byLabel.set(p.label, e);
      }
      return [...byLabel.entries()]
        .map(([label, e]) => ({
          label,
          percent: seconds > 0 ? (100 * e.ticks) / hz / seconds : 0,
          processes: e.processes,
        }))
        .sort((a, b) => b.percent - a.percent);
    };
    let hostBusyPercent = NaN;
    let hostIrqPercent = NaN;
    if (this.host0 && host1 && host1.total > this.host0.total) {
      const total = host1.total - this.host0.total;
      hostBusyPercent = (100 * (host1.busy - this.host0.busy)) / total;
      hostIrqPercent = (100 * (host1.irq - this.host0.irq)) / total;
    }
    return {
      seconds,
      cpus: os.cpus().length,
      hostBusyPercent,
      hostIrqPercent,
      processes: group(true),
      outside: group(false),
    };
  }
}
