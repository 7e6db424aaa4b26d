/**
 * `npm run bench`: throughput and RTT of a plain veth, wireguard-go and
 * shallot (a direct tunnel between two network namespaces, and a 3-hop
 * onion circuit through five namespaces and a router) on this machine.
 *
 * Needs root. Installs the tools it lacks (Debian packages), runs every
 * scenario of scenarios.ts, prints a table, the CPU use of each scenario's
 * processes during its throughput runs, and the checks against targets
 * (throughput shallot-direct / wireguard-go, shallot-3hop / wireguard-go,
 * RTT added per circuit hop over the plainly routed path), then the
 * discovery figures of discovery-bench.ts (DHT lookup, first circuit cold
 * and warm; run after the throughput scenarios), then the results as JSON
 * on the last line, prefixed with `BENCH_JSON `. A scenario that fails is
 * reported as failed and the others still run; the exit code is 0 once
 * the table is printed, 1 if the bench itself could not run, 2 without
 * root.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { haveCommand, isRoot, Lab, sweepStale } from '../helpers/netns.js';
import { median, oneLine, summarize, type CpuReport } from './measure.js';
import {
  discoveryJson,
  discoveryLines,
  runDiscoveryBench,
  type DiscoveryResult,
} from './discovery-bench.js';
import {
  CIRCUIT_HOPS,
  createBase,
  defaultScenarios,
  runScenario,
  SCENARIO_PLAIN_ROUTED,
  SCENARIO_SHALLOT_3HOP,
  SCENARIO_SHALLOT_DIRECT,
  SCENARIO_WIREGUARD,
  type Scenario,
} from './scenarios.js';

const OPTIONS = {
  iperfRuns: 3,
  iperfSeconds: 5,
  pingCount: 20,
  pingIntervalS: 0.05,
  pingWarmup: 100,
};
const RATIO_TARGET = 0.75;
const RATIO_3HOP_TARGET = 0.5;
const RTT_PER_HOP_TARGET_MS = 0.5;

/** Command → Debian package providing it. */
const PACKAGES: Record<string, string> = {
  ip: 'iproute2',
  ss: 'iproute2',
  ping: 'iputils-ping',
  iperf3: 'iperf3',
  'wireguard-go': 'wireguard-go',
  wg: 'wireguard-tools',
  nft: 'nftables',
};
/** Without these nothing can be measured. */
const ESSENTIAL = ['ip', 'ss', 'ping', 'iperf3'];

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

function log(line: string): void {
  console.log(line);
}

function aptGet(args: string[]): boolean {
  try {
    execFileSync('apt-get', args, {
      stdio: ['ignore', 'inherit', 'inherit'],
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    });
    return true;
  } catch {
    return false;
  }
}

/** Install the packages of missing commands; returns the commands still missing. */
function ensureTools(): string[] {
  const missing = Object.keys(PACKAGES).filter((cmd) => !haveCommand(cmd));
  if (missing.length === 0) {
    log(`bench: tools present (${Object.keys(PACKAGES).join(', ')})`);
    return [];
  }
  const pkgs = [...new Set(missing.map((cmd) => PACKAGES[cmd] as string))];
  log(`bench: installing ${pkgs.join(' ')} (missing: ${missing.join(', ')})`);
  const install = ['install', '-y', '--no-install-recommends', ...pkgs];
  if (!aptGet(install)) {
    log('bench: apt-get install failed; running apt-get update and retrying');
    aptGet(['update']);
    if (!aptGet(install)) log('bench: apt-get install failed again');
  }
  const still = missing.filter((cmd) => !haveCommand(cmd));
  if (still.length > 0) log(`bench: still missing: ${still.join(', ')}`);
  return still;
}

interface Row {
  name: string;
  ok: boolean;
  error?: string;
  mbps: number[];
  rttMs: number[];
  rttAvgMs: number;
  seconds: number;
  /** RTT-only row (a scenario's baseline): no throughput was measured. */
  rttOnly?: boolean;
  /** What the row measures, when the name alone does not say. */
  note?: string;
  cpu?: CpuReport;
}

function fmtMbps(x: number): string {
  if (!Number.isFinite(x)) return '-';
  return x >= 100 ? x.toFixed(0) : x.toFixed(1);
}

function fmtMs(x: number): string {
  return Number.isFinite(x) ? x.toFixed(3) : '-';
}

function printTable(rows: Row[]): void {
  const head = ['scenario', 'TCP Mbit/s (median, min-max)', 'ping RTT ms (median)'];
  const body = rows.map((r) => {
    if (!r.ok) return [r.name, `failed: ${r.error ?? 'unknown'}`, ''];
    if (r.rttOnly) return [r.name, 'not measured', fmtMs(median(r.rttMs))];
    const s = summarize(r.mbps);
    return [
      r.name,
      `${fmtMbps(s.median)} (${fmtMbps(s.min)}-${fmtMbps(s.max)})`,
      fmtMs(median(r.rttMs)),
    ];
  });
  // A failure message spans the last two columns; it does not set their width.
  const width = head.map((h, i) =>
    Math.max(h.length, ...rows.map((r, j) => (r.ok || i === 0 ? (body[j]?.[i] ?? '').length : 0))),
  );
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(width[i] ?? 0)))
      .join(' | ')
      .trimEnd();
  console.log('');
  console.log(line(head));
  console.log(width.map((w) => '-'.repeat(w)).join('-+-'));
  for (const [j, cells] of body.entries()) {
    const r = rows[j] as Row;
    console.log(r.ok ? line(cells) : `${(cells[0] ?? '').padEnd(width[0] ?? 0)} | ${cells[1]}`);
  }
  const notes = rows.filter((r) => r.note !== undefined);
  if (notes.length > 0) {
    console.log('');
    for (const r of notes) console.log(`${r.name}: ${r.note}`);
  }
}

/** Per scenario, the processes that used at least 1% of a CPU during its iperf3 runs. */
function printCpu(rows: Row[]): void {
  const withCpu = rows.filter((r) => r.cpu !== undefined);
  if (withCpu.length === 0) return;
  const cpus = withCpu[0]?.cpu?.cpus ?? os.cpus().length;
  console.log(
    `\nCPU during the iperf3 runs (% of one CPU, top's convention; the host has ${cpus} CPUs):`,
  );
  for (const r of withCpu) {
    const c = r.cpu as CpuReport;
    const procs = c.processes
      .filter((p) => p.percent >= 1)
      .map(
        (p) =>
          `${p.label} ${p.percent.toFixed(0)}%${p.processes > 1 ? ` (${p.processes} procs)` : ''}`,
      );
    const host = Number.isFinite(c.hostBusyPercent)
      ? `host ${c.hostBusyPercent.toFixed(0)}% busy, irq+softirq ${c.hostIrqPercent.toFixed(0)}%`
      : 'host load n/a';
    const outsideTotal = c.outside.reduce((a, p) => a + p.percent, 0);
    const outsideTop = c.outside
      .filter((p) => p.percent >= 2)
      .slice(0, 4)
      .map((p) => `${p.label} ${p.percent.toFixed(0)}%`);
    console.log(`  ${r.name} (${host}): ${procs.join(', ') || 'nothing above 1%'}`);
    console.log(
      `    outside the bench namespaces: ${outsideTotal.toFixed(0)}%` +
        (outsideTop.length ? ` (${outsideTop.join(', ')})` : ''),
    );
  }
}

interface Ratio {
  of: string;
  to: string;
  value: number | null;
  target: number;
  met: boolean | null;
}

/** A figure compared with its target, for the summary below the table. */
interface Check {
  label: string;
  value: number | null;
  /** Digits after the point when printed. */
  digits: number;
  unit: string;
  /** value must be >= target ('min') or <= target ('max'). */
  kind: 'min' | 'max';
  target: number;
  met: boolean | null;
  /** Why value is null, or how it was computed. */
  detail: string;
}

function okRow(rows: Row[], name: string): Row | undefined {
  return rows.find((r) => r.name === name && r.ok);
}

function whyMissing(rows: Row[], names: string[]): string {
  const why = names.map((n) => {
    const r = rows.find((x) => x.name === n);
    return r === undefined ? `${n} not run` : r.ok ? null : `${n} failed`;
  });
  return why.filter(Boolean).join(', ') || 'no finite value';
}

function throughputRatio(rows: Row[], of: string, to: string, target: number): Ratio {
  const num = okRow(rows, of);
  const den = okRow(rows, to);
  let value: number | null = null;
  if (num && den) {
    const v = median(num.mbps) / median(den.mbps);
    if (Number.isFinite(v)) value = v;
  }
  return { of, to, value, target, met: value === null ? null : value >= target };
}

function ratioCheck(r: Ratio, rows: Row[]): Check {
  return {
    label: `throughput ${r.of} / ${r.to}`,
    value: r.value,
    digits: 2,
    unit: '',
    kind: 'min',
    target: r.target,
    met: r.met,
    detail: r.value === null ? whyMissing(rows, [r.of, r.to]) : 'medians',
  };
}

/** (median RTT over the circuit - median RTT of the plainly routed path) / hops. */
function rttPerHopCheck(rows: Row[]): Check {
  const circ = okRow(rows, SCENARIO_SHALLOT_3HOP);
  const plain = okRow(rows, SCENARIO_PLAIN_ROUTED);
  let value: number | null = null;
  let detail = whyMissing(rows, [SCENARIO_PLAIN_ROUTED, SCENARIO_SHALLOT_3HOP]);
  if (circ && plain) {
    const a = median(circ.rttMs);
    const b = median(plain.rttMs);
    const v = (a - b) / CIRCUIT_HOPS;
    if (Number.isFinite(v)) {
      value = v;
      detail = `(${fmtMs(a)} - ${fmtMs(b)}) / ${CIRCUIT_HOPS}`;
    }
  }
  return {
    label: `RTT added per hop, ${SCENARIO_SHALLOT_3HOP} vs ${SCENARIO_PLAIN_ROUTED}`,
    value,
    digits: 3,
    unit: ' ms',
    kind: 'max',
    target: RTT_PER_HOP_TARGET_MS,
    met: value === null ? null : value <= RTT_PER_HOP_TARGET_MS,
    detail,
  };
}

function printChecks(checks: Check[]): void {
  console.log('');
  for (const c of checks) {
    const target = `target ${c.kind === 'min' ? '>=' : '<='} ${c.target}${c.unit}`;
    if (c.value === null) {
      console.log(`${c.label}: n/a (${c.detail}); ${target}`);
    } else {
      const verdict = c.met ? 'met' : 'NOT met';
      console.log(
        `${c.label}: ${c.value.toFixed(c.digits)}${c.unit} (${target}: ${verdict}; ${c.detail})`,
      );
    }
  }
}

async function main(): Promise<number> {
  if (!isRoot()) {
    console.error('bench: needs root (network namespaces, TUN devices); run it as root');
    return 2;
  }
  const t0 = Date.now();
  const missing = ensureTools();
  const essentialMissing = ESSENTIAL.filter((c) => missing.includes(c));
  if (essentialMissing.length > 0) {
    console.error(`bench: cannot run without ${essentialMissing.join(', ')}`);
    return 1;
  }

  sweepStale();
  const lab = new Lab();
  const tmpDir = mkdtempSync(path.join(os.tmpdir(), 'shallot-bench-'));
  const hooks: (() => void)[] = [() => rmSync(tmpDir, { recursive: true, force: true })];
  let cleaned = false;
  const cleanup = async (): Promise<void> => {
    if (cleaned) return;
    cleaned = true;
    await lab.cleanup();
    // A process spawned while the first pass ran is caught by the second.
    await lab.cleanup();
    for (const fn of hooks.splice(0).reverse()) {
      try {
        fn();
      } catch (err) {
        console.error(`bench: cleanup: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
  };
  let interrupted = false;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (interrupted) process.exit(130);
    interrupted = true;
    console.error(`\nbench: ${sig}, cleaning up`);
    void cleanup().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const rows: Row[] = [];
  let discovery: DiscoveryResult | null = null;
  try {
    const base = createBase(lab, repoRoot, tmpDir, (fn) => hooks.push(fn));
    log(
      `bench: namespaces ${base.a.ns} (${base.a.addr}) and ${base.b.ns} (${base.b.addr}); ` +
        `iperf3 ${OPTIONS.iperfRuns} x ${OPTIONS.iperfSeconds} s, ping ${OPTIONS.pingCount} x ${OPTIONS.pingIntervalS} s after ${OPTIONS.pingWarmup} uncounted (10 ms apart)`,
    );
    const scenarios: Scenario[] = defaultScenarios();
    for (const sc of scenarios) {
      const started = Date.now();
      log(`bench: ${sc.name}`);
      const lacking = (sc.requires ?? []).filter((c) => !haveCommand(c));
      if (lacking.length > 0) {
        const error = `needs ${lacking.join(', ')}`;
        log(`  failed: ${error}`);
        rows.push({
          name: sc.name,
          ok: false,
          error,
          mbps: [],
          rttMs: [],
          rttAvgMs: NaN,
          seconds: 0,
        });
        continue;
      }
      try {
        const res = await runScenario(lab, base, sc, {
          ...OPTIONS,
          log,
          onBaseline: (b) =>
            rows.push({
              name: b.name,
              ok: true,
              mbps: [],
              rttMs: b.ping.times,
              rttAvgMs: b.ping.avgMs,
              seconds: 0,
              rttOnly: true,
              note: `ping only, in ${sc.name}'s topology (client -> router -> destination) before its tunnel is up`,
            }),
        });
        rows.push({
          name: sc.name,
          ok: true,
          mbps: res.mbps,
          rttMs: res.rttMs,
          rttAvgMs: res.rttAvgMs,
          ...(res.cpu ? { cpu: res.cpu } : {}),
          seconds: (Date.now() - started) / 1000,
        });
      } catch (err) {
        const error = oneLine(err instanceof Error ? err.message : String(err), 300);
        log(`  failed: ${error}`);
        rows.push({
          name: sc.name,
          ok: false,
          error,
          mbps: [],
          rttMs: [],
          rttAvgMs: NaN,
          seconds: (Date.now() - started) / 1000,
        });
      }
      if (interrupted) break;
    }
    if (!interrupted) {
      log('bench: discovery (private DHT: relay lookup, first circuit cold and warm)');
      discovery = await runDiscoveryBench(lab, {
        repoRoot,
        tmpDir,
        log,
        interrupted: () => interrupted,
      });
    }
  } finally {
    if (!interrupted) await cleanup();
  }
  if (interrupted) return 130; // the signal handler exits once cleanup is done

  printTable(rows);
  printCpu(rows);
  const r = throughputRatio(rows, SCENARIO_SHALLOT_DIRECT, SCENARIO_WIREGUARD, RATIO_TARGET);
  const r3 = throughputRatio(rows, SCENARIO_SHALLOT_3HOP, SCENARIO_WIREGUARD, RATIO_3HOP_TARGET);
  const checks = [ratioCheck(r, rows), ratioCheck(r3, rows), rttPerHopCheck(rows)];
  printChecks(checks);
  if (discovery) {
    console.log('');
    for (const line of discoveryLines(discovery)) console.log(line);
  }
  const totalS = (Date.now() - t0) / 1000;
  console.log(`\nbench: done in ${totalS.toFixed(0)} s`);

  const json = {
    date: new Date().toISOString(),
    host: {
      cpus: os.cpus().length,
      kernel: os.release(),
      node: process.version,
    },
    options: OPTIONS,
    scenarios: rows.map((row) => {
      const s = summarize(row.mbps);
      return {
        name: row.name,
        ok: row.ok,
        ...(row.error !== undefined ? { error: row.error } : {}),
        ...(row.rttOnly ? { rttOnly: true } : {}),
        mbps: row.mbps.map((x) => Math.round(x * 10) / 10),
        mbpsMedian: row.ok && !row.rttOnly ? Math.round(s.median * 10) / 10 : null,
        mbpsMin: row.ok && !row.rttOnly ? Math.round(s.min * 10) / 10 : null,
        mbpsMax: row.ok && !row.rttOnly ? Math.round(s.max * 10) / 10 : null,
        rttMs: row.rttMs,
        rttMedianMs: row.ok ? median(row.rttMs) : null,
        rttAvgMs: row.ok && Number.isFinite(row.rttAvgMs) ? row.rttAvgMs : null,
        seconds: Math.round(row.seconds * 10) / 10,
        ...(row.cpu
          ? {
              cpu: {
                seconds: Math.round(row.cpu.seconds * 10) / 10,
                hostBusyPercent: Number.isFinite(row.cpu.hostBusyPercent)
                  ? Math.round(row.cpu.hostBusyPercent)
                  : null,
                hostIrqPercent: Number.isFinite(row.cpu.hostIrqPercent)
                  ? Math.round(row.cpu.hostIrqPercent)
                  : null,
                processes: row.cpu.processes
                  .filter((p) => p.percent >= 1)
                  .map((p) => ({ ...p, percent: Math.round(p.percent) })),
                outsidePercent: Math.round(row.cpu.outside.reduce((a, p) => a + p.percent, 0)),
                outside: row.cpu.outside
                  .filter((p) => p.percent >= 2)
                  .map((p) => ({ ...p, percent: Math.round(p.percent) })),
              },
            }
          : {}),
      };
    }),
    ratio: r,
    ratio3Hop: r3,
    checks: checks.map((c) => ({
      label: c.label,
      value: c.value,
      kind: c.kind,
      target: c.target,
      met: c.met,
      detail: c.detail,
    })),
    discovery: discovery ? discoveryJson(discovery) : null,
    totalSeconds: Math.round(totalS),
  };
  console.log(`BENCH_JSON ${JSON.stringify(json)}`);
  return 0;
}

main().then(
  (code) => {
    if (code !== 130) process.exitCode = code;
  },
  (err: unknown) => {
    console.error(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exitCode = 1;
  },
);
