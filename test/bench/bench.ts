/**
 * `npm run bench`: throughput and RTT of a plain veth, wireguard-go and
 * shallot between two network namespaces on this machine.
 *
 * Needs root. Installs the tools it lacks (Debian packages), runs every
 * scenario of scenarios.ts, prints a table and the ratio shallot /
 * wireguard-go, and prints the results as JSON on the last line, prefixed
 * with `BENCH_JSON `. A scenario that fails is reported as failed and the
 * others still run; the exit code is 0 once the table is printed, 1 if the
 * bench itself could not run, 2 without root.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { haveCommand, isRoot, Lab, sweepStale } from '../helpers/netns.js';
import { median, oneLine, summarize } from './measure.js';
import {
  createBase,
  defaultScenarios,
  runScenario,
  SCENARIO_SHALLOT_DIRECT,
  SCENARIO_WIREGUARD,
  type Scenario,
} from './scenarios.js';

const OPTIONS = {
  iperfRuns: 3,
  iperfSeconds: 5,
  pingCount: 20,
  pingIntervalS: 0.05,
};
const RATIO_TARGET = 0.75;

/** Command → Debian package providing it. */
const PACKAGES: Record<string, string> = {
  ip: 'iproute2',
  ss: 'iproute2',
  ping: 'iputils-ping',
  iperf3: 'iperf3',
  'wireguard-go': 'wireguard-go',
  wg: 'wireguard-tools',
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
    log('bench: tools present (ip, ss, ping, iperf3, wireguard-go, wg)');
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
}

interface Ratio {
  of: string;
  to: string;
  value: number | null;
  target: number;
  met: boolean | null;
}

function ratio(rows: Row[]): Ratio {
  const num = rows.find((r) => r.name === SCENARIO_SHALLOT_DIRECT);
  const den = rows.find((r) => r.name === SCENARIO_WIREGUARD);
  let value: number | null = null;
  if (num?.ok && den?.ok) {
    const v = median(num.mbps) / median(den.mbps);
    if (Number.isFinite(v)) value = v;
  }
  return {
    of: SCENARIO_SHALLOT_DIRECT,
    to: SCENARIO_WIREGUARD,
    value,
    target: RATIO_TARGET,
    met: value === null ? null : value >= RATIO_TARGET,
  };
}

function printRatio(r: Ratio, rows: Row[]): void {
  const label = `throughput ${r.of} / ${r.to}`;
  if (r.value === null) {
    const why = rows
      .filter((x) => x.name === r.of || x.name === r.to)
      .filter((x) => !x.ok)
      .map((x) => `${x.name} failed`);
    console.log(`\n${label}: n/a (${why.join(', ') || 'missing scenario'}); target >= ${r.target}`);
  } else {
    const verdict = r.met ? 'met' : 'NOT met';
    console.log(`\n${label}: ${r.value.toFixed(2)} (target >= ${r.target}: ${verdict})`);
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
  try {
    const base = createBase(lab, repoRoot, tmpDir, (fn) => hooks.push(fn));
    log(
      `bench: namespaces ${base.a.ns} (${base.a.addr}) and ${base.b.ns} (${base.b.addr}); ` +
        `iperf3 ${OPTIONS.iperfRuns} x ${OPTIONS.iperfSeconds} s, ping ${OPTIONS.pingCount} x ${OPTIONS.pingIntervalS} s`,
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
        const res = await runScenario(lab, base, sc, { ...OPTIONS, log });
        rows.push({ name: sc.name, ok: true, ...res, seconds: (Date.now() - started) / 1000 });
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
  } finally {
    if (!interrupted) await cleanup();
  }
  if (interrupted) return 130; // the signal handler exits once cleanup is done

  printTable(rows);
  const r = ratio(rows);
  printRatio(r, rows);
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
        mbps: row.mbps.map((x) => Math.round(x * 10) / 10),
        mbpsMedian: row.ok ? Math.round(s.median * 10) / 10 : null,
        mbpsMin: row.ok ? Math.round(s.min * 10) / 10 : null,
        mbpsMax: row.ok ? Math.round(s.max * 10) / 10 : null,
        rttMs: row.rttMs,
        rttMedianMs: row.ok ? median(row.rttMs) : null,
        rttAvgMs: row.ok && Number.isFinite(row.rttAvgMs) ? row.rttAvgMs : null,
        seconds: Math.round(row.seconds * 10) / 10,
      };
    }),
    ratio: r,
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
