/**
 * Discovery benchmark: how fast a client finds the relays of a network
 * through a private DHT and builds its first circuit, cold (empty state
 * directory: it must look the relays up in the DHT) and warm (the state
 * directory of a previous run: its relays-cache.txt lets it build at once).
 *
 * Topology, like `shallot testnet` (src/testnet/testnet.ts) but in a Lab's
 * namespaces so that it never meets a testnet that is up: a router
 * namespace (ip_forward on) and one namespace per host, each on its own /16
 * (the client's path selection wants the hops in different /16s):
 *
 *   boot   10.60.0.2  shallot bootstrap --listen 10.60.0.2:6881
 *   relayN 10.6N.0.2  shallot relay --bootstrap ... --network NAME (N = 1..3)
 *   exit   10.64.0.2  shallot exit ... --allow 10.65.0.0/16
 *   dest   10.65.0.2  nothing but its kernel (answers the sanity ping)
 *   client 10.66.0.2  shallot client --bootstrap ... --network NAME (full tunnel)
 *
 * Figures: the DHT lookup time the client itself logs (`found N relays in X
 * ms`, cold runs), and the time from spawning `shallot client` to its
 * 'circuit ready' line, median of `runs` cold runs (each with a new empty
 * state directory) and `runs` warm runs (each reusing the state directory of
 * the run before it, the first one that of the last cold run). The client is
 * stopped with SIGTERM, and waited for, between runs.
 *
 * runDiscoveryBench() never throws: a failure comes back as ok: false with
 * the figures measured so far. Everything it starts belongs to the Lab
 * (Lab.cleanup() kills it and deletes the namespaces) and its files are
 * under tmpDir. Run on its own (as root) with
 * `node dist/test/bench/discovery-bench.js`.
 */
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { haveCommand, isRoot, Lab, sweepStale, waitFor } from '../helpers/netns.js';
import { median, oneLine, pingOnce } from './measure.js';

export const DISCOVERY_COLD_TARGET_S = 5;
export const DISCOVERY_WARM_TARGET_S = 1;
export const DISCOVERY_RUNS = 3;

const DHT_PORT = 6881;
const LINK_PORT = 7000;
const POOL = '10.200.0.0/16';
const CLIENT_DEV = 'shallot0';
const EXIT_DEV = 'shexit0';
const BOOT_TIMEOUT_MS = 10_000;
const PUBLISH_TIMEOUT_MS = 30_000;
/** Bounds of one client run: generous next to the targets, small next to the bench. */
const COLD_TIMEOUT_MS = 20_000;
const WARM_TIMEOUT_MS = 10_000;
const STOP_GRACE_MS = 5000;
/** The client's relay cache in its state directory (src/discovery/finder.ts). */
const CACHE_FILE = 'relays-cache.txt';

type Role = 'boot' | 'relay' | 'exit' | 'dest' | 'client';
interface Host {
  key: string;
  role: Role;
  /** Short namespace name (the Lab adds its prefix). */
  short: string;
  addr: string;
}

const HOSTS: Host[] = [
  { key: 'boot', role: 'boot', short: 'dsboot', addr: '10.60.0.2' },
  { key: 'relay1', role: 'relay', short: 'dsr1', addr: '10.61.0.2' },
  { key: 'relay2', role: 'relay', short: 'dsr2', addr: '10.62.0.2' },
  { key: 'relay3', role: 'relay', short: 'dsr3', addr: '10.63.0.2' },
  { key: 'exit', role: 'exit', short: 'dsexit', addr: '10.64.0.2' },
  { key: 'dest', role: 'dest', short: 'dsdest', addr: '10.65.0.2' },
  { key: 'client', role: 'client', short: 'dsc', addr: '10.66.0.2' },
];
const ROUTER = 'dsrt';

/** One `shallot client` run: spawn to 'circuit ready'. */
export interface ClientRun {
  kind: 'cold' | 'warm';
  /**
   * What the client started with: an empty state directory (cold), the
   * state directory of the run before (warm), or a new one holding only the
   * relays-cache.txt of the last cold run (warm, the fallback when the
   * client fails with a previous run's state directory).
   */
  state: 'empty' | 'previous-run' | 'relays-cache-only';
  /** Seconds from spawn to the 'circuit ready' line; null if it never came. */
  seconds: number | null;
  /** From the client's `found N relays in X ms` (cold runs). */
  lookupMs: number | null;
  relaysFound: number | null;
  /** Warm runs: the client said it built from its cache. */
  fromCache: boolean;
  /** Seconds from SIGTERM to its exit (SIGKILL after STOP_GRACE_MS). */
  stopSeconds: number | null;
  /** SIGTERM was not enough to stop it within the grace period. */
  killed: boolean;
  /** Why the run gave no figure. */
  error?: string;
}

export interface DiscoveryResult {
  ok: boolean;
  error?: string;
  runs: ClientRun[];
  lookupMedianMs: number | null;
  coldMedianS: number | null;
  warmMedianS: number | null;
  coldMet: boolean | null;
  warmMet: boolean | null;
  /** The state the warm figures were measured with (see ClientRun.state). */
  warmState: 'previous-run' | 'relays-cache-only' | null;
  /** Why a warm start with the previous run's state directory failed, if it did. */
  warmStateDirFailure: string | null;
  /** A ping from the client to the destination through the first circuit. */
  sanityPing: boolean | null;
  /** Setup: namespaces, keys, nodes up and published in the DHT. */
  setupSeconds: number;
  seconds: number;
}

export interface DiscoveryOptions {
  repoRoot: string;
  /** Scratch directory (removed by the caller). */
  tmpDir: string;
  log(line: string): void;
  runs?: number;
  /** Polled between steps: stop early (the caller cleans up). */
  interrupted?: () => boolean;
}

type Proc = ReturnType<Lab['spawn']>;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function exited(p: Proc): boolean {
  return p.exitCode !== null || p.signalCode !== null;
}

/** The last meaningful lines of a process's output, on one line. */
function tail(text: string, n = 3): string {
  return oneLine(
    text
      .split('\n')
      .filter((l) => l.trim() !== '' && !/^\s+at /.test(l) && !/^Node\.js v\d/.test(l))
      .slice(-n)
      .join(' | '),
    240,
  );
}

function checkAlive(name: string, p: Proc): void {
  if (!exited(p)) return;
  const how = p.exitCode !== null ? `code ${p.exitCode}` : `signal ${p.signalCode}`;
  throw new Error(`${name} exited (${how}): ${tail(p.output()) || '(no output)'}`);
}

function medianOrNull(xs: (number | null)[]): number | null {
  const v = xs.filter((x): x is number => x !== null && Number.isFinite(x));
  return v.length > 0 ? median(v) : null;
}

function net16(addr: string): string {
  return addr.split('.').slice(0, 2).join('.');
}

/** Build the overlay, time the client runs, stop what it started. */
export async function runDiscoveryBench(
  lab: Lab,
  opts: DiscoveryOptions,
): Promise<DiscoveryResult> {
  const t0 = performance.now();
  const runs: ClientRun[] = [];
  const nRuns = opts.runs ?? DISCOVERY_RUNS;
  const stopped = () => opts.interrupted?.() === true;
  let setupSeconds = 0;
  let sanityPing: boolean | null = null;
  let warmState: 'previous-run' | 'relays-cache-only' = 'previous-run';
  let warmStateDirFailure: string | null = null;
  const procs: { name: string; p: Proc }[] = [];
  let error: string | undefined;
  try {
    const cli = path.join(opts.repoRoot, 'dist', 'src', 'cli', 'main.js');
    for (const cmd of ['ip', 'nft', 'ping']) {
      if (!haveCommand(cmd)) throw new Error(`needs the '${cmd}' command`);
    }
    const root = path.join(opts.tmpDir, 'discovery');
    mkdirSync(root, { recursive: true, mode: 0o700 });
    const network = `benchdisc${process.pid}`;
    const ns: Record<string, string> = {};
    const byKey = (k: string): Host => HOSTS.find((h) => h.key === k) as Host;
    const dirOf = (k: string): string => path.join(root, k);

    const router = lab.ns(ROUTER);
    lab.sh(router, 'sysctl -qw net.ipv4.ip_forward=1');
    HOSTS.forEach((h, i) => {
      ns[h.key] = lab.ns(h.short);
      const net = net16(h.addr);
      lab.veth(router, `d${i}`, `${net}.0.1/16`, ns[h.key] as string, 'eth0', `${h.addr}/16`);
      lab.sh(ns[h.key] as string, `ip route add default via ${net}.0.1`);
    });

    const nodes = HOSTS.filter((h) => h.role === 'relay' || h.role === 'exit');
    await Promise.all(
      nodes.map(async (h) => {
        mkdirSync(dirOf(h.key), { recursive: true, mode: 0o700 });
        const out = await lab.exec(
          ns[h.key] as string,
          process.execPath,
          [cli, 'keygen', '--state', dirOf(h.key)],
          30_000,
        );
        if (out.code !== 0) {
          throw new Error(`shallot keygen (${h.key}) exited ${out.code}: ${tail(out.stderr)}`);
        }
      }),
    );

    const boot = byKey('boot');
    const bootAddr = `${boot.addr}:${DHT_PORT}`;
    const bootProc = lab.spawn(ns.boot as string, process.execPath, [
      cli,
      'bootstrap',
      '--listen',
      bootAddr,
    ]);
    procs.push({ name: 'bootstrap', p: bootProc });
    await waitFor(
      'the DHT bootstrap node',
      () => {
        checkAlive('bootstrap', bootProc);
        return bootProc.output().includes('bootstrap node on');
      },
      BOOT_TIMEOUT_MS,
      50,
    );

    const dest = byKey('dest');
    for (const h of nodes) {
      const args = [
        cli,
        h.role,
        '--state',
        dirOf(h.key),
        '--listen',
        `${h.addr}:${LINK_PORT}`,
        '--bootstrap',
        bootAddr,
        '--network',
        network,
        '--allow-private-extend',
      ];
      if (h.role === 'exit') {
        args.push('--pool', POOL, '--allow', `${net16(dest.addr)}.0.0/16`, '--dev', EXIT_DEV);
      }
      procs.push({ name: h.key, p: lab.spawn(ns[h.key] as string, process.execPath, args) });
    }
    const published = (name: string): boolean =>
      (procs.find((x) => x.name === name) as { p: Proc }).p
        .output()
        .includes('published descriptor in the DHT');
    try {
      await waitFor(
        'relays and exit to publish their descriptors in the DHT',
        () => {
          if (stopped()) throw new Error('interrupted');
          for (const x of procs) checkAlive(x.name, x.p);
          return nodes.every((h) => published(h.key));
        },
        PUBLISH_TIMEOUT_MS,
        50,
      );
    } catch (err) {
      const late = nodes.filter((h) => !published(h.key)).map((h) => h.key);
      const msg = err instanceof Error ? err.message : String(err);
      throw new Error(`${msg}${late.length ? ` (not published: ${late.join(', ')})` : ''}`);
    }
    setupSeconds = (performance.now() - t0) / 1000;
    opts.log(
      `  overlay up in ${setupSeconds.toFixed(1)} s: bootstrap ${bootAddr}, ` +
        `${nodes.length - 1} relays + 1 exit published in network ${network}`,
    );

    const clientArgs = (dir: string): string[] => [
      cli,
      'client',
      '--state',
      dir,
      '--bootstrap',
      bootAddr,
      '--network',
      network,
      '--dev',
      CLIENT_DEV,
    ];

    /** Spawn the client, wait for 'circuit ready' (timed from the spawn), run `then`, stop it. */
    const clientRun = async (
      kind: 'cold' | 'warm',
      state: ClientRun['state'],
      dir: string,
      timeoutMs: number,
      then?: (p: Proc) => Promise<void>,
    ): Promise<ClientRun> => {
      const run: ClientRun = {
        kind,
        state,
        seconds: null,
        lookupMs: null,
        relaysFound: null,
        fromCache: false,
        stopSeconds: null,
        killed: false,
      };
      const ready = { at: null as number | null };
      const started = performance.now();
      const p = lab.spawn(ns.client as string, process.execPath, clientArgs(dir));
      let seen = '';
      p.stdout?.on('data', (d: Buffer) => {
        if (ready.at !== null) return;
        seen += d.toString();
        if (seen.includes('circuit ready')) ready.at = performance.now();
      });
      try {
        await waitFor(
          `the client's 'circuit ready' (${kind})`,
          () => {
            if (stopped()) throw new Error('interrupted');
            checkAlive(`shallot client (${kind})`, p);
            // A failed command prints 'shallot: ...' (its log lines start with a time).
            const failed = /^shallot: .*/m.exec(p.output());
            if (failed && ready.at === null) {
              throw new Error(`shallot client (${kind}) failed: ${oneLine(failed[0], 200)}`);
            }
            return ready.at !== null;
          },
          timeoutMs,
          10,
        );
        run.seconds = ((ready.at ?? performance.now()) - started) / 1000;
        const out = p.output();
        const m = /found (\d+) relays in (\d+) ms/.exec(out);
        if (m) {
          run.relaysFound = Number(m[1]);
          run.lookupMs = Number(m[2]);
        }
        run.fromCache = /\d+ relays in the cache/.test(out);
        if (then) await then(p);
      } catch (err) {
        const msg = err instanceof Error ? err.message : String(err);
        run.error = oneLine(
          msg.startsWith('timed out')
            ? `${msg}; client: ${tail(p.output()) || '(no output)'}`
            : msg,
          300,
        );
        throw new Error(run.error);
      } finally {
        const stopAt = performance.now();
        await lab.stop(p, STOP_GRACE_MS);
        run.stopSeconds = (performance.now() - stopAt) / 1000;
        run.killed = p.signalCode === 'SIGKILL';
        runs.push(run);
      }
      return run;
    };

    const fmt = (r: ClientRun): string => {
      const s = r.seconds === null ? 'no circuit' : `circuit ready after ${r.seconds.toFixed(3)} s`;
      const lookup =
        r.lookupMs !== null ? `; DHT lookup found ${r.relaysFound} relays in ${r.lookupMs} ms` : '';
      const cache =
        r.kind === 'warm' ? (r.fromCache ? '; built from the cache' : '; NOT from the cache') : '';
      const stop =
        r.stopSeconds === null
          ? ''
          : r.killed
            ? `; still running ${(STOP_GRACE_MS / 1000).toFixed(0)} s after SIGTERM: SIGKILL`
            : `; exited ${r.stopSeconds.toFixed(2)} s after SIGTERM`;
      return `${s}${lookup}${cache}${stop}`;
    };

    let lastDir = '';
    for (let i = 1; i <= nRuns && !stopped(); i += 1) {
      lastDir = path.join(root, `client-cold${i}`);
      mkdirSync(lastDir, { recursive: true, mode: 0o700 });
      const r = await clientRun(
        'cold',
        'empty',
        lastDir,
        COLD_TIMEOUT_MS,
        i === 1
          ? async (p) => {
              // Once, not timed: the circuit carries traffic to the destination.
              const deadline = Date.now() + 5000;
              sanityPing = false;
              while (Date.now() < deadline && !exited(p)) {
                if (await pingOnce(lab, ns.client as string, dest.addr)) {
                  sanityPing = true;
                  break;
                }
                await sleep(100);
              }
            }
          : undefined,
      );
      opts.log(
        `  cold ${i}/${nRuns}: ${fmt(r)}${i === 1 ? `; ping through it ${sanityPing ? 'ok' : 'FAILED'}` : ''}`,
      );
    }
    // Warm: each run restarts the client on the state directory of the run
    // before. Should that fail, the warm figures are taken from new state
    // directories holding only the last cold run's relays-cache.txt, and
    // the failure is reported.
    const coldDir = lastDir;
    for (let i = 1; i <= nRuns && !stopped(); i += 1) {
      let r: ClientRun;
      if (warmState === 'previous-run') {
        try {
          r = await clientRun('warm', 'previous-run', lastDir, WARM_TIMEOUT_MS);
        } catch (err) {
          if (stopped()) throw err;
          warmStateDirFailure = err instanceof Error ? err.message : String(err);
          warmState = 'relays-cache-only';
          opts.log(`  warm ${i}/${nRuns} with the previous run's state directory: FAILED`);
          opts.log(`    ${warmStateDirFailure}`);
          opts.log(`  warm runs again, each in a new state directory with only relays-cache.txt:`);
          i = 0;
          continue;
        }
      } else {
        lastDir = path.join(root, `client-warm${i}`);
        mkdirSync(lastDir, { recursive: true, mode: 0o700 });
        copyFileSync(path.join(coldDir, CACHE_FILE), path.join(lastDir, CACHE_FILE));
        r = await clientRun('warm', 'relays-cache-only', lastDir, WARM_TIMEOUT_MS);
      }
      opts.log(`  warm ${i}/${nRuns}: ${fmt(r)}`);
    }
    if (stopped()) throw new Error('interrupted');
  } catch (err) {
    error = oneLine(err instanceof Error ? err.message : String(err), 400);
  } finally {
    // Newest first; the Lab's cleanup also catches whatever is left.
    for (const x of procs.splice(0).reverse()) await lab.stop(x.p, 3000);
  }

  const cold = runs.filter((r) => r.kind === 'cold');
  const warm = runs.filter((r) => r.kind === 'warm' && r.state === warmState);
  const coldMedianS = medianOrNull(cold.map((r) => r.seconds));
  const warmMedianS = medianOrNull(warm.map((r) => r.seconds));
  if (!error && warmStateDirFailure !== null) {
    error = `the client failed to start on the previous run's state directory: ${warmStateDirFailure}`;
  }
  if (!error && sanityPing === false) error = 'no ping reply through the first circuit';
  if (!error && warm.some((r) => r.seconds !== null && !r.fromCache)) {
    error = 'a warm run did not build from the cache';
  }
  return {
    ok: error === undefined,
    ...(error !== undefined ? { error } : {}),
    runs,
    lookupMedianMs: medianOrNull(cold.map((r) => r.lookupMs)),
    coldMedianS,
    warmMedianS,
    coldMet: coldMedianS === null ? null : coldMedianS < DISCOVERY_COLD_TARGET_S,
    warmMet: warmMedianS === null ? null : warmMedianS < DISCOVERY_WARM_TARGET_S,
    warmState: warm.length > 0 ? warmState : null,
    warmStateDirFailure,
    sanityPing,
    setupSeconds: Math.round(setupSeconds * 10) / 10,
    seconds: Math.round((performance.now() - t0) / 100) / 10,
  };
}

/** The summary lines, e.g. `discovery: lookup 18 ms (median), first circuit cold 0.42 s, ...`. */
export function discoveryLines(r: DiscoveryResult): string[] {
  const s = (x: number | null, unit: string, digits: number): string =>
    x === null ? 'n/a' : `${x.toFixed(digits)}${unit}`;
  const verdict = (met: boolean | null): string => (met === null ? 'n/a' : met ? 'met' : 'NOT met');
  const both =
    r.coldMet === true && r.warmMet === true
      ? 'met'
      : `cold ${verdict(r.coldMet)}, warm ${verdict(r.warmMet)}`;
  const warmHow =
    r.warmState === 'relays-cache-only' ? ' (new state dir with relays-cache.txt only)' : '';
  const lines = [
    `discovery: lookup ${s(r.lookupMedianMs, ' ms', 0)} (median), first circuit cold ` +
      `${s(r.coldMedianS, ' s', 2)}, warm ${s(r.warmMedianS, ' s', 2)}${warmHow} ` +
      `(targets < ${DISCOVERY_COLD_TARGET_S} s, < ${DISCOVERY_WARM_TARGET_S} s: ${both})`,
  ];
  const list = (xs: ClientRun[], f: (x: ClientRun) => string): string =>
    xs.map(f).join(', ') || '-';
  const secs = (x: ClientRun): string => (x.seconds === null ? 'failed' : x.seconds.toFixed(2));
  const cold = r.runs.filter((x) => x.kind === 'cold');
  const warm = r.runs.filter((x) => x.kind === 'warm');
  if (r.runs.length > 0) {
    lines.push(
      `  per run, s from spawning the client to 'circuit ready': cold ${list(cold, secs)}; ` +
        `warm ${list(warm, (x) => `${secs(x)}${x.state === 'relays-cache-only' ? '*' : ''}`)}` +
        `${warm.some((x) => x.state === 'relays-cache-only') ? ' (* relays-cache.txt only)' : ''}; ` +
        `lookups ${list(cold, (x) => (x.lookupMs === null ? '-' : String(x.lookupMs)))} ms`,
    );
  }
  const killed = r.runs.filter((x) => x.killed).length;
  if (killed > 0) {
    lines.push(
      `  ${killed} of ${r.runs.length} clients still ran ${STOP_GRACE_MS / 1000} s after SIGTERM (then SIGKILL)`,
    );
  }
  if (!r.ok) lines.push(`  discovery: ${r.error ?? 'failed'}`);
  return lines;
}

/** The figures for BENCH_JSON. */
export function discoveryJson(r: DiscoveryResult): Record<string, unknown> {
  const round = (x: number | null, f: number): number | null =>
    x === null ? null : Math.round(x * f) / f;
  return {
    ok: r.ok,
    ...(r.error !== undefined ? { error: r.error } : {}),
    lookupMedianMs: r.lookupMedianMs,
    coldMedianS: round(r.coldMedianS, 1000),
    warmMedianS: round(r.warmMedianS, 1000),
    targets: { coldS: DISCOVERY_COLD_TARGET_S, warmS: DISCOVERY_WARM_TARGET_S },
    coldMet: r.coldMet,
    warmMet: r.warmMet,
    warmState: r.warmState,
    warmStateDirFailure: r.warmStateDirFailure,
    runs: r.runs.map((x) => ({
      ...x,
      seconds: round(x.seconds, 1000),
      stopSeconds: round(x.stopSeconds, 100),
    })),
    stopGraceSeconds: STOP_GRACE_MS / 1000,
    sanityPing: r.sanityPing,
    setupSeconds: r.setupSeconds,
    seconds: r.seconds,
  };
}

// --- on its own: node dist/test/bench/discovery-bench.js (as root) ---------------------

async function standalone(): Promise<number> {
  if (!isRoot()) {
    console.error('discovery-bench: needs root (network namespaces, TUN devices)');
    return 2;
  }
  sweepStale();
  const lab = new Lab();
  const tmpDir = mkdtempSync(path.join(os.tmpdir(), 'shallot-discovery-'));
  let cleaned: Promise<void> | null = null;
  const cleanup = (): Promise<void> =>
    (cleaned ??= (async () => {
      await lab.cleanup();
      await lab.cleanup();
      rmSync(tmpDir, { recursive: true, force: true });
    })());
  let interrupted = false;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (interrupted) process.exit(130);
    interrupted = true;
    console.error(`\ndiscovery-bench: ${sig}, cleaning up`);
    void cleanup().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
  let r: DiscoveryResult;
  try {
    console.log('bench: discovery through a private DHT');
    r = await runDiscoveryBench(lab, {
      repoRoot,
      tmpDir,
      log: (l) => console.log(l),
      interrupted: () => interrupted,
    });
  } finally {
    if (!interrupted) await cleanup();
  }
  if (interrupted) return 130;
  for (const l of discoveryLines(r)) console.log(l);
  console.log(`DISCOVERY_JSON ${JSON.stringify(discoveryJson(r))}`);
  return r.ok ? 0 : 1;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  standalone().then(
    (code) => {
      if (code !== 130) process.exitCode = code;
    },
    (err: unknown) => {
      console.error(
        `discovery-bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`,
      );
      process.exitCode = 1;
    },
  );
}
