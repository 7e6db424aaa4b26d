/**
 * Benchmark scenarios.
 *
 * Every scenario runs on the same base: two namespaces A and B joined by a
 * veth pair (10.90.0.1/24 and 10.90.0.2/24). A scenario builds whatever it
 * measures on top of that base in setup() (a tunnel, more namespaces for
 * relays, ...) and says where to measure: iperf3 server and ping target in
 * serverNs at `target`, client in clientNs. teardown() undoes setup(); it
 * must be safe to call after a setup() that failed halfway, and it runs
 * before the next scenario so that one tunnel's processes never compete for
 * CPU with the next one's measurement.
 *
 * To add a scenario, write a factory like the ones below and append it to
 * defaultScenarios(). A scenario may also measure a baseline of its own
 * topology in setup() (shallot-3hop pings the plainly routed path before
 * its client takes over the routes) and name the namespaces whose
 * processes' CPU use is reported during the throughput runs. Namespaces it creates
 * with lab.ns() are deleted by Lab.cleanup() at the end of the run; state
 * outside namespaces (files, sockets) goes in base.tmpDir or is registered
 * with base.onCleanup() so that an interrupted run removes it too.
 */
import { execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { waitFor, type Lab } from '../helpers/netns.js';
import {
  CpuSampler,
  oneLine,
  pingOnce,
  runIperf3,
  runPing,
  type CpuReport,
  type PingResult,
} from './measure.js';

export interface BenchNode {
  /** Full namespace name. */
  ns: string;
  /** Name of its veth end. */
  ifname: string;
  /** Its underlay address on the veth (no prefix length). */
  addr: string;
}

export interface Base {
  a: BenchNode;
  b: BenchNode;
  /** Root of the repository (where dist/ is). */
  repoRoot: string;
  /** Private scratch directory of this run, removed at the end. */
  tmpDir: string;
  /** Register a synchronous cleanup for state outside the namespaces; runs at exit and on SIGINT. */
  onCleanup(fn: () => void): void;
}

export interface Endpoints {
  /** Address measured against (iperf3 server and ping target), inside serverNs. */
  target: string;
  serverNs: string;
  clientNs: string;
  /** Namespaces whose processes' CPU use is sampled during the iperf3 runs (default: both ends). */
  namespaces?: string[];
}

export interface Baseline {
  /** Row name in the table, e.g. "plain-routed". */
  name: string;
  ping: PingResult;
}

export interface Scenario {
  name: string;
  /** Commands the scenario needs on PATH; it is reported failed without them. */
  requires?: string[];
  setup(lab: Lab, base: Base, opts: RunOptions): Promise<Endpoints>;
  teardown(lab: Lab, base: Base): Promise<void>;
}

export interface ScenarioResult {
  /** TCP throughput of each iperf3 run, Mbit/s. */
  mbps: number[];
  /** RTT of each ping reply, ms. */
  rttMs: number[];
  /** ping's own average RTT, ms. */
  rttAvgMs: number;
  /** CPU use per process over the iperf3 runs. */
  cpu?: CpuReport;
}

export interface RunOptions {
  iperfRuns: number;
  iperfSeconds: number;
  pingCount: number;
  pingIntervalS: number;
  /** Pings sent (10 ms apart) and not counted before the measured ones. */
  pingWarmup: number;
  /** Progress output (one line per step). */
  log(line: string): void;
  /**
   * A measurement of the scenario's own topology without the tunnel, taken
   * in setup() (reported as soon as it is taken, so that it survives a
   * failure of the rest of the scenario).
   */
  onBaseline?(b: Baseline): void;
}

export const SCENARIO_PLAIN = 'plain-veth';
export const SCENARIO_WIREGUARD = 'wireguard-go';
export const SCENARIO_SHALLOT_DIRECT = 'shallot-direct';
export const SCENARIO_SHALLOT_3HOP = 'shallot-3hop';
/** The baseline row of shallot-3hop: client to destination through the router, no tunnel. */
export const SCENARIO_PLAIN_ROUTED = 'plain-routed';
/** Hops of the shallot-3hop circuit: guard, middle, exit. */
export const CIRCUIT_HOPS = 3;

const BASE_A = { short: 'a', ifname: 'veth0', addr: '10.90.0.1', prefix: 24 };
const BASE_B = { short: 'b', ifname: 'veth0', addr: '10.90.0.2', prefix: 24 };

/** Build the two namespaces and the veth pair between them. */
export function createBase(
  lab: Lab,
  repoRoot: string,
  tmpDir: string,
  onCleanup: (fn: () => void) => void,
): Base {
  const nsA = lab.ns(BASE_A.short);
  const nsB = lab.ns(BASE_B.short);
  lab.veth(
    nsA,
    BASE_A.ifname,
    `${BASE_A.addr}/${BASE_A.prefix}`,
    nsB,
    BASE_B.ifname,
    `${BASE_B.addr}/${BASE_B.prefix}`,
  );
  return {
    a: { ns: nsA, ifname: BASE_A.ifname, addr: BASE_A.addr },
    b: { ns: nsB, ifname: BASE_B.ifname, addr: BASE_B.addr },
    repoRoot,
    tmpDir,
    onCleanup,
  };
}

/** Set up a scenario, measure RTT then throughput over it, tear it down. */
export async function runScenario(
  lab: Lab,
  base: Base,
  scenario: Scenario,
  opts: RunOptions,
): Promise<ScenarioResult> {
  try {
    const ep = await scenario.setup(lab, base, opts);
    if (opts.pingWarmup > 0) {
      // Discarded: the first packets through a fresh node run before V8
      // has optimised its packet path (and compete with that compilation).
      await runPing(lab, ep.clientNs, ep.target, { count: opts.pingWarmup, intervalS: 0.01 });
    }
    const ping = await runPing(lab, ep.clientNs, ep.target, {
      count: opts.pingCount,
      intervalS: opts.pingIntervalS,
    });
    opts.log(
      `  ping: ${ping.received}/${ping.transmitted} replies, median ${ping.medianMs.toFixed(3)} ms`,
    );
    const mbps: number[] = [];
    const shortName = (ns: string): string =>
      ns.startsWith(lab.prefix) ? ns.slice(lab.prefix.length) : ns;
    const sampler = new CpuSampler(
      new Map((ep.namespaces ?? [ep.clientNs, ep.serverNs]).map((ns) => [ns, shortName(ns)])),
    );
    sampler.start();
    let cpu: CpuReport;
    try {
      for (let i = 0; i < opts.iperfRuns; i++) {
        const m = await runIperf3(lab, ep.serverNs, ep.clientNs, ep.target, {
          seconds: opts.iperfSeconds,
        });
        opts.log(`  iperf3 run ${i + 1}/${opts.iperfRuns}: ${m.toFixed(0)} Mbit/s`);
        mbps.push(m);
      }
    } finally {
      cpu = sampler.stop();
    }
    const busiest = cpu.processes
      .slice(0, 4)
      .map((p) => `${p.label} ${p.percent.toFixed(0)}%`)
      .join(', ');
    const outside = cpu.outside.reduce((a, p) => a + p.percent, 0);
    opts.log(
      `  CPU during iperf3 (% of one CPU; host ${cpu.hostBusyPercent.toFixed(0)}% busy of ${cpu.cpus} CPUs): ` +
        `${busiest}; outside the bench namespaces ${outside.toFixed(0)}%`,
    );
    return {
      mbps,
      rttMs: ping.times,
      rttAvgMs: ping.avgMs,
      cpu,
    };
  } finally {
    await scenario.teardown(lab, base);
  }
}

/** Delete a link in a namespace if it still exists. */
function dropLink(lab: Lab, ns: string, ifname: string): void {
  try {
    lab.sh(ns, `ip link show dev ${ifname} >/dev/null 2>&1 && ip link del dev ${ifname} || true`);
  } catch {
    /* namespace gone */
  }
}

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

/**
 * Last `n` meaningful lines of a process's output, on one line: empty lines,
 * stack frames and Node's version trailer are left out, so a crash reads as
 * its error message.
 */
function tail(text: string, n = 3): string {
  return oneLine(
    text
      .split('\n')
      .filter((l) => l.trim() !== '' && !/^\s+at /.test(l) && !/^Node\.js v\d/.test(l))
      .slice(-n)
      .join(' | '),
    200,
  );
}

// ---------------------------------------------------------------------------
// plain veth
// ---------------------------------------------------------------------------

export function plainVeth(): Scenario {
  return {
    name: SCENARIO_PLAIN,
    async setup(lab, base) {
      await waitFor('veth to pass traffic', () => pingOnce(lab, base.a.ns, base.b.addr), 5000);
      return { target: base.b.addr, serverNs: base.b.ns, clientNs: base.a.ns };
    },
    async teardown() {
      /* the base is removed by Lab.cleanup */
    },
  };
}

// ---------------------------------------------------------------------------
// wireguard-go
// ---------------------------------------------------------------------------

const WG_SOCKET_DIR = '/var/run/wireguard';
const WG_PORT_A = 51820;
const WG_PORT_B = 51821;

/**
 * A key pair; the private key goes to a file (mode 0600) for `wg set ...
 * private-key FILE` (/dev/stdin does not work: Node's stdio are sockets).
 */
function wgKeyPair(keyFile: string): { keyFile: string; pub: string } {
  const priv = execFileSync('wg', ['genkey'], { encoding: 'utf8' }).trim();
  const pub = execFileSync('wg', ['pubkey'], { encoding: 'utf8', input: `${priv}\n` }).trim();
  writeFileSync(keyFile, `${priv}\n`, { mode: 0o600 });
  return { keyFile, pub };
}

export function wireguardGo(): Scenario {
  // wireguard-go's control sockets live in /var/run/wireguard, shared by
  // all namespaces: interface names must differ across namespaces (and
  // across concurrent runs, hence the pid).
  const tag = process.pid % 100000;
  const ifA = `wgb${tag}a`;
  const ifB = `wgb${tag}b`;
  const procs: { ns: string; ifname: string; child: ChildProcess }[] = [];
  const removeSockets = (): void => {
    for (const ifname of [ifA, ifB]) {
      rmSync(path.join(WG_SOCKET_DIR, `${ifname}.sock`), { force: true });
    }
  };
  let hookRegistered = false;
  let keyDir = '';

  async function startDaemon(lab: Lab, ns: string, ifname: string): Promise<void> {
    const child = lab.spawn(ns, 'env', ['WG_PROCESS_FOREGROUND=1', 'wireguard-go', ifname]);
    procs.push({ ns, ifname, child });
    await waitFor(
      `wireguard-go ${ifname}`,
      () => {
        if (exited(child))
          throw new Error(`wireguard-go ${ifname} exited: ${tail(child.output())}`);
        return existsSync(path.join(WG_SOCKET_DIR, `${ifname}.sock`));
      },
      10_000,
      50,
    );
  }

  async function configure(
    lab: Lab,
    ns: string,
    ifname: string,
    keyFile: string,
    port: number,
    peerPub: string,
    endpoint: string,
    peerInner: string,
    inner: string,
  ): Promise<void> {
    const out = await lab.exec(
      ns,
      'wg',
      [
        'set',
        ifname,
        'listen-port',
        String(port),
        'private-key',
        keyFile,
        'peer',
        peerPub,
        'endpoint',
        endpoint,
        'allowed-ips',
        `${peerInner}/32`,
      ],
      10_000,
    );
    if (out.code !== 0) throw new Error(`wg set ${ifname}: ${oneLine(out.stderr || out.stdout)}`);
    lab.sh(ns, `ip addr add ${inner}/24 dev ${ifname} && ip link set ${ifname} mtu 1420 up`);
  }

  return {
    name: SCENARIO_WIREGUARD,
    requires: ['wireguard-go', 'wg'],
    async setup(lab, base) {
      if (!hookRegistered) {
        base.onCleanup(removeSockets);
        hookRegistered = true;
      }
      removeSockets(); // stale ones of a crashed run with the same pid
      keyDir = path.join(base.tmpDir, 'wireguard');
      mkdirSync(keyDir, { recursive: true, mode: 0o700 });
      const ka = wgKeyPair(path.join(keyDir, 'a.key'));
      const kb = wgKeyPair(path.join(keyDir, 'b.key'));
      await startDaemon(lab, base.a.ns, ifA);
      await startDaemon(lab, base.b.ns, ifB);
      const innerA = '10.91.0.1';
      const innerB = '10.91.0.2';
      await configure(
        lab,
        base.a.ns,
        ifA,
        ka.keyFile,
        WG_PORT_A,
        kb.pub,
        `${base.b.addr}:${WG_PORT_B}`,
        innerB,
        innerA,
      );
      await configure(
        lab,
        base.b.ns,
        ifB,
        kb.keyFile,
        WG_PORT_B,
        ka.pub,
        `${base.a.addr}:${WG_PORT_A}`,
        innerA,
        innerB,
      );
      await waitFor('wireguard-go tunnel', () => pingOnce(lab, base.a.ns, innerB), 10_000);
      return { target: innerB, serverNs: base.b.ns, clientNs: base.a.ns };
    },
    async teardown(lab) {
      for (const p of procs.splice(0)) {
        await lab.stop(p.child, 2000);
        dropLink(lab, p.ns, p.ifname);
      }
      removeSockets();
      if (keyDir) rmSync(keyDir, { recursive: true, force: true });
    },
  };
}

// ---------------------------------------------------------------------------
// shallot, direct mode (one link, no relays)
// ---------------------------------------------------------------------------

const SHALLOT_PORT = 7000;
const SHALLOT_UP_TIMEOUT_MS = 20_000;

/** Path of the built CLI; throws if it is not built. */
function shallotCli(base: Base): string {
  const cli = path.join(base.repoRoot, 'dist', 'src', 'cli', 'main.js');
  if (!existsSync(cli)) {
    throw new Error(`shallot CLI not built (${path.relative(base.repoRoot, cli)} missing)`);
  }
  return cli;
}

/** `shallot keygen --state DIR` in ns; returns the node id it prints last. */
async function keygen(lab: Lab, ns: string, cli: string, dir: string): Promise<string> {
  const out = await lab.exec(ns, process.execPath, [cli, 'keygen', '--state', dir], 30_000);
  if (out.code !== 0) {
    throw new Error(`shallot keygen exited ${out.code}: ${tail(out.stderr || out.stdout)}`);
  }
  const id = out.stdout
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .pop();
  if (!id) throw new Error('shallot keygen printed no node id');
  return id;
}

/** Throw with the process's last output lines if it has exited. */
function checkAlive(role: string, p: ChildProcess & { output(): string }): void {
  if (!exited(p)) return;
  const how = p.exitCode !== null ? `code ${p.exitCode}` : `signal ${p.signalCode}`;
  throw new Error(`shallot ${role} exited (${how}): ${tail(p.output()) || '(no output)'}`);
}

export function shallotDirect(): Scenario {
  const procs: { ns: string; dev: string; child: ChildProcess }[] = [];
  let stateRoot = '';

  return {
    name: SCENARIO_SHALLOT_DIRECT,
    async setup(lab, base) {
      const cli = shallotCli(base);
      stateRoot = path.join(base.tmpDir, 'shallot');
      const dirA = path.join(stateRoot, 'a');
      const dirB = path.join(stateRoot, 'b');
      mkdirSync(dirA, { recursive: true, mode: 0o700 });
      mkdirSync(dirB, { recursive: true, mode: 0o700 });
      const idA = await keygen(lab, base.a.ns, cli, dirA);
      const idB = await keygen(lab, base.b.ns, cli, dirB);
      const innerA = '10.92.0.1';
      const innerB = '10.92.0.2';
      const devA = 'sha0';
      const devB = 'shb0';

      const server = lab.spawn(base.b.ns, process.execPath, [
        cli,
        'tunnel',
        '--state',
        dirB,
        '--listen',
        `${base.b.addr}:${SHALLOT_PORT}`,
        '--address',
        `${innerB}/24`,
        '--peer',
        idA,
        '--dev',
        devB,
      ]);
      procs.push({ ns: base.b.ns, dev: devB, child: server });
      const client = lab.spawn(base.a.ns, process.execPath, [
        cli,
        'tunnel',
        '--state',
        dirA,
        '--connect',
        `${base.b.addr}:${SHALLOT_PORT}`,
        '--peer',
        idB,
        '--address',
        `${innerA}/24`,
        '--dev',
        devA,
      ]);
      procs.push({ ns: base.a.ns, dev: devA, child: client });

      try {
        await waitFor(
          'shallot tunnel',
          async () => {
            checkAlive('listener (B)', server);
            checkAlive('connector (A)', client);
            return pingOnce(lab, base.a.ns, innerB);
          },
          SHALLOT_UP_TIMEOUT_MS,
          200,
        );
      } catch (err) {
        const msg = err instanceof Error ? err.message : String(err);
        if (msg.startsWith('timed out')) {
          throw new Error(
            `no ping to ${innerB} within ${SHALLOT_UP_TIMEOUT_MS / 1000} s; ` +
              `B: ${tail(server.output(), 2) || '(no output)'}; ` +
              `A: ${tail(client.output(), 2) || '(no output)'}`,
          );
        }
        throw err;
      }
      return { target: innerB, serverNs: base.b.ns, clientNs: base.a.ns };
    },
    async teardown(lab) {
      for (const p of procs.splice(0).reverse()) {
        await lab.stop(p.child, 3000);
        dropLink(lab, p.ns, p.dev);
      }
      if (stateRoot) rmSync(stateRoot, { recursive: true, force: true });
    },
  };
}

// ---------------------------------------------------------------------------
// shallot, 3-hop onion circuit (client -> guard -> middle -> exit -> destination)
// ---------------------------------------------------------------------------

/**
 * Hosts of the 3-hop topology, as in test/e2e/circuits.test.ts: each in
 * its own namespace on its own /16 (so that the client's path selection,
 * which wants the hops of a path in different /16s, accepts them), all
 * joined by a router namespace that forwards between them and holds
 * 10.N.0.1 on its side of each link. The relays file lists only R1, R2 and
 * E, so the circuit is {R1, R2} as guard and middle (either order), then E.
 */
const HOP3_HOSTS = [
  { key: 'C', short: 'h3c', addr: '10.31.0.2' }, // client
  { key: 'R1', short: 'h3r1', addr: '10.32.0.2' }, // relay
  { key: 'R2', short: 'h3r2', addr: '10.33.0.2' }, // relay
  { key: 'E', short: 'h3e', addr: '10.34.0.2' }, // exit
  { key: 'D', short: 'h3d', addr: '10.35.0.2' }, // destination: iperf3 server, ping target
] as const;
type Hop3Key = (typeof HOP3_HOSTS)[number]['key'];
const HOP3_ROUTER = 'h3rt';
const HOP3_POOL = '10.200.0.0/16';
const HOP3_CLIENT_DEV = 'shallot0';
const HOP3_EXIT_DEV = 'shexit0';
const HOP3_DESCRIPTOR_TIMEOUT_MS = 20_000;
const HOP3_CIRCUIT_TIMEOUT_MS = 30_000;

function net16(addr: string): string {
  return addr.split('.').slice(0, 2).join('.');
}

export function shallot3Hop(): Scenario {
  // Processes in start order; teardown stops them newest first (the client
  // before the relays, so that it removes its routes and kill switch while
  // its circuit is still there).
  const procs: { role: string; child: ChildProcess & { output(): string } }[] = [];
  let stateRoot = '';

  return {
    name: SCENARIO_SHALLOT_3HOP,
    requires: ['nft'],
    async setup(lab, base, opts) {
      const cli = shallotCli(base);
      // An overlay network name of this run only: a descriptor of another
      // run can never be taken for one of ours.
      const network = `bench${process.pid}`;
      stateRoot = path.join(base.tmpDir, 'shallot-3hop');
      const dirOf = (k: Hop3Key): string => path.join(stateRoot, k);
      const ns = {} as Record<Hop3Key, string>;
      const addr = {} as Record<Hop3Key, string>;

      const router = lab.ns(HOP3_ROUTER);
      lab.sh(router, 'sysctl -qw net.ipv4.ip_forward=1');
      HOP3_HOSTS.forEach((h, i) => {
        ns[h.key] = lab.ns(h.short);
        addr[h.key] = h.addr;
        const net = net16(h.addr);
        lab.veth(router, `r${i}`, `${net}.0.1/16`, ns[h.key], 'eth0', `${h.addr}/16`);
        lab.sh(ns[h.key], `ip route add default via ${net}.0.1`);
      });
      const namespaces = [router, ...HOP3_HOSTS.map((h) => ns[h.key])];

      // The plainly routed path first: once the client runs, its routes
      // send everything from C into the circuit.
      await waitFor('routed path C -> D', () => pingOnce(lab, ns.C, addr.D), 5000);
      const plain = await runPing(lab, ns.C, addr.D, {
        count: opts.pingCount,
        intervalS: opts.pingIntervalS,
      });
      opts.onBaseline?.({ name: SCENARIO_PLAIN_ROUTED, ping: plain });
      opts.log(
        `  ${SCENARIO_PLAIN_ROUTED} ping C -> router -> D (no tunnel): ${plain.received}/${plain.transmitted} replies, median ${plain.medianMs.toFixed(3)} ms`,
      );

      const ids = {} as Record<Hop3Key, string>;
      for (const k of ['R1', 'R2', 'E', 'C'] as const) {
        mkdirSync(dirOf(k), { recursive: true, mode: 0o700 });
      }
      for (const k of ['R1', 'R2', 'E'] as const) ids[k] = await keygen(lab, ns[k], cli, dirOf(k));

      for (const k of ['R1', 'R2'] as const) {
        const child = lab.spawn(ns[k], process.execPath, [
          cli,
          'relay',
          '--allow-private-extend',
          '--state',
          dirOf(k),
          '--listen',
          `${addr[k]}:${SHALLOT_PORT}`,
          '--network',
          network,
        ]);
        procs.push({ role: `relay ${k}`, child });
      }
      const exitProc = lab.spawn(ns.E, process.execPath, [
        cli,
        'exit',
        '--allow-private-extend',
        '--state',
        dirOf('E'),
        '--listen',
        `${addr.E}:${SHALLOT_PORT}`,
        '--network',
        network,
        '--pool',
        HOP3_POOL,
        '--allow',
        `${net16(addr.D)}.0.0/16`,
        '--dev',
        HOP3_EXIT_DEV,
      ]);
      procs.push({ role: 'exit E', child: exitProc });

      const descriptorOf = (k: Hop3Key): string => path.join(dirOf(k), 'descriptor.txt');
      await waitFor(
        'relay and exit descriptors',
        () => {
          for (const p of procs) checkAlive(p.role, p.child);
          return (['R1', 'R2', 'E'] as const).every((k) => existsSync(descriptorOf(k)));
        },
        HOP3_DESCRIPTOR_TIMEOUT_MS,
        100,
      );
      const relaysFile = path.join(stateRoot, 'relays.txt');
      const lines = (['R1', 'R2', 'E'] as const).map((k) =>
        readFileSync(descriptorOf(k), 'utf8').trim(),
      );
      writeFileSync(relaysFile, `# shallot bench overlay\n${lines.join('\n')}\n`);

      const client = lab.spawn(ns.C, process.execPath, [
        cli,
        'client',
        '--state',
        dirOf('C'),
        '--relays',
        relaysFile,
        '--network',
        network,
        '--exit',
        ids.E,
        '--dev',
        HOP3_CLIENT_DEV,
      ]);
      procs.push({ role: 'client C', child: client });
      try {
        await waitFor(
          "the client's 'circuit ready'",
          () => {
            for (const p of procs) checkAlive(p.role, p.child);
            return client.output().includes('circuit ready');
          },
          HOP3_CIRCUIT_TIMEOUT_MS,
          100,
        );
      } catch (err) {
        const msg = err instanceof Error ? err.message : String(err);
        if (!msg.startsWith('timed out')) throw err;
        throw new Error(
          `no circuit within ${HOP3_CIRCUIT_TIMEOUT_MS / 1000} s; ` +
            `C: ${tail(client.output(), 2) || '(no output)'}; ` +
            `E: ${tail(exitProc.output(), 2) || '(no output)'}`,
        );
      }

      // The circuit must be the one meant: three hops, ending at E. The
      // client rewrites its status file once a second, so the circuit may
      // show there a moment after 'circuit ready'.
      let hops: { id: string; address?: { host?: string } }[] = [];
      let statusText = '';
      try {
        await waitFor(
          "the circuit in the client's status",
          async () => {
            const st = await lab.exec(
              ns.C,
              process.execPath,
              [cli, 'status', '--state', dirOf('C'), '--json'],
              10_000,
            );
            statusText = st.stdout || st.stderr;
            try {
              const doc = JSON.parse(st.stdout) as {
                circuit?: { state?: string; hops?: typeof hops } | null;
              };
              hops = doc.circuit?.hops ?? [];
              return doc.circuit?.state === 'ready' && hops.length > 0;
            } catch {
              return false;
            }
          },
          5000,
          250,
        );
      } catch {
        if (hops.length === 0) {
          throw new Error(`no ready circuit in shallot status: ${tail(statusText)}`);
        }
      }
      const nameOf = (id: string): string =>
        (['R1', 'R2', 'E'] as const).find((k) => ids[k] === id) ?? id.slice(0, 8);
      if (hops.length !== CIRCUIT_HOPS || hops[CIRCUIT_HOPS - 1]?.id !== ids.E) {
        throw new Error(
          `expected a ${CIRCUIT_HOPS}-hop circuit ending at E, got ${hops.map((h) => nameOf(h.id)).join(' -> ') || 'none'}`,
        );
      }
      opts.log(
        `  circuit: C -> ${hops.map((h) => `${nameOf(h.id)} (${h.address?.host ?? '?'})`).join(' -> ')} -> D`,
      );
      await waitFor(
        'ping C -> D through the circuit',
        () => {
          for (const p of procs) checkAlive(p.role, p.child);
          return pingOnce(lab, ns.C, addr.D);
        },
        10_000,
        200,
      );
      return {
        target: addr.D,
        serverNs: ns.D,
        clientNs: ns.C,
        namespaces,
      };
    },
    async teardown(lab) {
      for (const p of procs.splice(0).reverse()) await lab.stop(p.child, 3000);
      // The namespaces (with the TUN devices and nftables tables in them)
      // go with Lab.cleanup at the end of the run.
      if (stateRoot) rmSync(stateRoot, { recursive: true, force: true });
    },
  };
}

/** The scenarios `npm run bench` runs, in order. */
export function defaultScenarios(): Scenario[] {
  return [plainVeth(), wireguardGo(), shallotDirect(), shallot3Hop()];
}
