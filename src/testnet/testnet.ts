/**
 * A whole shallot overlay on one machine, for trying it out (`shallot
 * testnet`): network namespaces joined by a router namespace, each node on
 * its own /16, real shallot processes started detached so they outlive the
 * command that built them.
 *
 *   shtn-router: ip_forward on, 10.X.0.1 on its side of every link
 *   shtn-boot    10.10.0.2   DHT bootstrap node (UDP 6881)
 *   shtn-relayI  10.(100+I).0.2   relays (UDP 7000)
 *   shtn-exitJ   10.(150+J).0.2   exits (UDP 7000, client pool 10.200.0.0/16)
 *   shtn-dest    10.20.0.2   destination: HTTP on 8080 (/download, /sha)
 *   shtn-client  10.30.0.2   client: full tunnel through a circuit, kill switch on
 *
 * The destination, the exits and the client also have IPv6 (fd00:X::2/64,
 * the router fd00:X::1, X the same number as in 10.X): the exits lease
 * IPv6 from POOL6 and masquerade it, so IPv6 crosses the circuit too. The
 * links between relays stay on IPv4.
 *
 * Everything is recorded under one fixed directory (testnet.json, and one
 * subdirectory per node with its state, log and pid file) and every
 * namespace is named shtn-*, so `down` finds it all again, also after a
 * crash of an earlier run.
 */
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { errors, ShallotError } from '../errors.js';
import { systemRunner, type CommandRunner } from '../sys/command-runner.js';
import { addNamespace, addVeth, listNamespaces, nsExec, nsRun, removeNamespace } from './netns.js';

/**
 * Discovery. true: the nodes find each other through a private DHT (a
 * `shallot bootstrap` node, --bootstrap everywhere); false: no DHT, the
 * testnet collects the relays' descriptors into a file for the client's
 * --relays.
 */
export const USE_DHT = true;

export const NETWORK = 'testnet';
export const NS_PREFIX = 'shtn-';
export const ROUTER_NS = `${NS_PREFIX}router`;
export const POOL = '10.200.0.0/16';
export const POOL6 = 'fd00:200::/64';
/** A kernel booted with ipv6.disable=1 has no IPv6 at all: the testnet is then IPv4 only. */
const HAVE_IPV6 = fs.existsSync('/proc/net/if_inet6');
export const LINK_PORT = 7000;
export const DHT_PORT = 6881;
export const HTTP_PORT = 8080;
export const DOWNLOAD_BYTES = 16 << 20;
export const MAX_RELAYS = 20;
export const MAX_EXITS = 10;
const DOC_FILE = 'testnet.json';
const RELAYS_FILE = 'relays.txt';
const STOP_GRACE_MS = 5000;

const here = path.dirname(fileURLToPath(import.meta.url));
export const CLI = path.resolve(here, '..', 'cli', 'main.js');
export const TRAFFIC = path.join(here, 'demo-traffic.js');

export type Role = 'bootstrap' | 'relay' | 'exit' | 'dest' | 'client';

export interface TestnetNode {
  name: string;
  role: Role;
  namespace: string;
  /** Its address on the link to the router (10.X.0.2). */
  address: string;
  /** Its IPv6 address (fd00:X::2) for the roles that have one, else null. */
  address6?: string | null;
  gateway: string;
  subnet: string;
  /** The UDP (or, for dest, TCP) port it listens on, if any. */
  port: number | null;
  /** Its directory: shallot state, node.log, node.pid. */
  dir: string;
  log: string;
  pidFile: string;
  /** Node id (relays and exits). */
  id: string | null;
  pid: number | null;
  command: string[];
}

export interface TestnetDoc {
  version: 1;
  createdAt: string;
  network: string;
  discovery: 'dht' | 'relays-file';
  cli: string;
  router: { namespace: string };
  pool: string;
  pool6?: string;
  url: string;
  /** The destination's URL over IPv6 (absent in a testnet of an older version). */
  url6?: string;
  relaysFile: string | null;
  nodes: TestnetNode[];
}

/** Where a testnet keeps its state: tmpfs /run, which a reboot empties as it does namespaces. */
export function stateRoot(): string {
  return fs.existsSync('/run') ? '/run/shallot-testnet' : '/tmp/shallot-testnet';
}

export function readDoc(): TestnetDoc | null {
  try {
    return JSON.parse(fs.readFileSync(path.join(stateRoot(), DOC_FILE), 'utf8')) as TestnetDoc;
  } catch {
    return null;
  }
}

function writeDoc(doc: TestnetDoc): void {
  const file = path.join(stateRoot(), DOC_FILE);
  fs.writeFileSync(`${file}.tmp`, JSON.stringify(doc, null, 2) + '\n');
  fs.renameSync(`${file}.tmp`, file);
}

export function testnetNamespaces(runner: CommandRunner = systemRunner): string[] {
  return listNamespaces(runner).filter((n) => n.startsWith(NS_PREFIX));
}

// --- processes -----------------------------------------------------------------

/** A process exists and is not a zombie. */
export function alive(pid: number | null | undefined): boolean {
  if (!pid) return false;
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/** Is `pid` a process of a testnet (its command line names shallot's CLI or traffic script)? */
function isOurs(pid: number): boolean {
  try {
    const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return cmdline.includes(CLI) || cmdline.includes(TRAFFIC);
  } catch {
    return false;
  }
}

function readPid(file: string): number | null {
  try {
    const n = Number(fs.readFileSync(file, 'utf8').trim());
    return Number.isInteger(n) && n > 1 ? n : null;
  } catch {
    return null;
  }
}

function namespacePids(ns: string, runner: CommandRunner): number[] {
  try {
    const r = runner.run('ip', ['netns', 'pids', ns], { allowFail: true });
    if (r.status !== 0) return [];
    return r.stdout
      .split('\n')
      .map((l) => Number(l.trim()))
      .filter((n) => Number.isInteger(n) && n > 1);
  } catch {
    return [];
  }
}

/** The last lines of a node's log, indented, for error messages. */
export function logTail(file: string, lines = 12): string {
  let text = '';
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return '    (no log)';
  }
  const tail = text.trimEnd().split('\n').slice(-lines);
  return tail.length && tail[0] ? tail.map((l) => `    ${l}`).join('\n') : '    (log is empty)';
}

/** Run a command to completion, bounded in time (not in a namespace). */
function execHost(
  cmd: string,
  args: string[],
  timeoutMs: number,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

// --- the plan --------------------------------------------------------------------

export function plan(relays: number, exits: number): TestnetNode[] {
  const root = stateRoot();
  const node = (name: string, role: Role, net: number, port: number | null): TestnetNode => {
    const dir = path.join(root, name);
    return {
      name,
      role,
      namespace: `${NS_PREFIX}${name === 'bootstrap' ? 'boot' : name}`,
      address: `10.${net}.0.2`,
      address6:
        HAVE_IPV6 && (role === 'dest' || role === 'exit' || role === 'client')
          ? `fd00:${net}::2`
          : null,
      gateway: `10.${net}.0.1`,
      subnet: `10.${net}.0.0/16`,
      port,
      dir,
      log: path.join(dir, 'node.log'),
      pidFile: path.join(dir, 'node.pid'),
      id: null,
      pid: null,
      command: [],
    };
  };
  const nodes: TestnetNode[] = [];
  if (USE_DHT) nodes.push(node('boot', 'bootstrap', 10, DHT_PORT));
  for (let i = 1; i <= relays; i += 1) nodes.push(node(`relay${i}`, 'relay', 100 + i, LINK_PORT));
  for (let j = 1; j <= exits; j += 1) nodes.push(node(`exit${j}`, 'exit', 150 + j, LINK_PORT));
  nodes.push(node('dest', 'dest', 20, HTTP_PORT));
  nodes.push(node('client', 'client', 30, null));
  return nodes;
}

// --- up ------------------------------------------------------------------------------

export interface Progress {
  /** A step: one line. */
  step(text: string): void;
  /** A detail line under a step. */
  detail(text: string): void;
  /** Start waiting for something: a line ending in dots while it lasts. */
  wait(what: string): { tick(): void; done(text: string): void };
}

export interface UpResult {
  doc: TestnetDoc;
  circuit: { hops: { name: string; id: string; address: string; exit: boolean }[]; inner: string };
  download: { bytes: number; seconds: number; mbits: number; sha256: string; matches: boolean };
}

/** A user error: a testnet exists already (refuse, change nothing). */
export function alreadyUp(): ShallotError {
  return errors.badArgument("a testnet is already up: 'shallot testnet down' first");
}

class NodeFailed extends Error {}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class TestnetBuilder {
  private doc: TestnetDoc | null = null;
  private aborting = false;
  private readonly exited = new Map<string, string>();

  constructor(
    private readonly progress: Progress,
    /** Runs ip and sysctl (default: the real one). */
    private readonly runner: CommandRunner = systemRunner,
  ) {}

  /**
   * Build the testnet and show traffic through it. On failure everything
   * built so far is removed and the error names the failing node with the
   * tail of its log.
   */
  async up(relays: number, exits: number): Promise<UpResult> {
    if (readDoc() || testnetNamespaces(this.runner).length > 0) throw alreadyUp();
    const root = stateRoot();
    // Leftovers of a run that died before it wrote anything that counts.
    fs.rmSync(root, { recursive: true, force: true });
    fs.mkdirSync(root, { recursive: true, mode: 0o755 });
    const nodes = plan(relays, exits);
    const doc: TestnetDoc = {
      version: 1,
      createdAt: new Date().toISOString(),
      network: NETWORK,
      discovery: USE_DHT ? 'dht' : 'relays-file',
      cli: CLI,
      router: { namespace: ROUTER_NS },
      pool: POOL,
      ...(HAVE_IPV6 ? { pool6: POOL6 } : {}),
      url: `http://${byRole(nodes, 'dest').address}:${HTTP_PORT}/download`,
      ...(HAVE_IPV6
        ? { url6: `http://[${byRole(nodes, 'dest').address6 ?? ''}]:${HTTP_PORT}/download` }
        : {}),
      relaysFile: USE_DHT ? null : path.join(root, RELAYS_FILE),
      nodes,
    };
    // Claim the testnet: the exclusive create is what a second `up` racing us trips over.
    try {
      fs.writeFileSync(path.join(root, DOC_FILE), JSON.stringify(doc, null, 2) + '\n', {
        flag: 'wx',
      });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw alreadyUp();
      throw e;
    }
    this.doc = doc;
    try {
      return await this.build(doc);
    } catch (e) {
      if (this.aborting) throw e;
      this.doc = null;
      this.progress.step('up failed: removing what it built');
      await teardown((t) => this.progress.detail(t), this.runner);
      const why = e instanceof Error ? e.message : String(e);
      if (e instanceof ShallotError) throw e;
      throw errors.system('shallot testnet up', `${why}\n(everything it built has been removed)`);
    }
  }

  /** For an interrupted `up`: remove everything built so far (nothing once it is complete). */
  async abort(): Promise<void> {
    if (!this.doc) return;
    this.aborting = true;
    this.doc = null;
    await teardown((t) => this.progress.detail(t), this.runner);
  }

  private async build(doc: TestnetDoc): Promise<UpResult> {
    const p = this.progress;
    const nodes = doc.nodes;
    const relayNodes = nodes.filter((n) => n.role === 'relay' || n.role === 'exit');
    const dest = byRole(nodes, 'dest');
    const client = byRole(nodes, 'client');
    const boot = USE_DHT ? byRole(nodes, 'bootstrap') : null;

    p.step(
      `creating namespaces: router ${ROUTER_NS} (ip_forward on) and ${nodes.length} hosts, each on its own /16`,
    );
    const run = this.runner;
    addNamespace(ROUTER_NS, run);
    nsRun(ROUTER_NS, 'sysctl', ['-qw', 'net.ipv4.ip_forward=1'], run);
    if (HAVE_IPV6) nsRun(ROUTER_NS, 'sysctl', ['-qw', 'net.ipv6.conf.all.forwarding=1'], run);
    const width = Math.max(...nodes.map((n) => n.namespace.length));
    for (const n of nodes) {
      addNamespace(n.namespace, run);
      addVeth(ROUTER_NS, n.name, `${n.gateway}/16`, n.namespace, 'eth0', `${n.address}/16`, run);
      nsRun(n.namespace, 'ip', ['route', 'add', 'default', 'via', n.gateway], run);
      if (n.address6) {
        // nodad: usable at once (nothing else is on a veth pair).
        const gw6 = n.address6.replace(/2$/, '1');
        nsRun(ROUTER_NS, 'ip', ['-6', 'addr', 'add', `${gw6}/64`, 'dev', n.name, 'nodad'], run);
        nsRun(
          n.namespace,
          'ip',
          ['-6', 'addr', 'add', `${n.address6}/64`, 'dev', 'eth0', 'nodad'],
          run,
        );
        nsRun(n.namespace, 'ip', ['-6', 'route', 'add', 'default', 'via', gw6], run);
      }
      fs.mkdirSync(n.dir, { recursive: true, mode: 0o700 });
      const a = `${n.address}${n.address6 ? ` ${n.address6}` : ''}`;
      p.detail(`${n.namespace.padEnd(width)}  ${a.padEnd(24)}  ${describeRole(n)}`);
    }

    p.step(`creating node identities: shallot keygen --state ${stateRoot()}/NAME`);
    await Promise.all(
      relayNodes.map(async (n) => {
        const r = await execHost(process.execPath, [CLI, 'keygen', '--state', n.dir], 20_000);
        if (r.code !== 0)
          throw errors.system(`shallot keygen --state ${n.dir}`, (r.stderr || r.stdout).trim());
        n.id = r.stdout.trim().split('\n').pop() ?? null;
      }),
    );
    for (const n of relayNodes) p.detail(`${n.name.padEnd(8)} ${n.id ?? '?'}`);
    writeDoc(doc);

    const bootstrap = boot ? ['--bootstrap', `${boot.address}:${DHT_PORT}`] : [];
    if (boot) {
      p.step(`starting the DHT bootstrap node of the private network in ${boot.namespace}`);
      this.start(boot, [
        'bootstrap',
        '--listen',
        `${boot.address}:${DHT_PORT}`,
        '--state',
        boot.dir,
      ]);
      p.detail(commandLine(boot));
      await this.waitFor('it to listen', [boot], () => logHas(boot, 'bootstrap node on'), 10_000);
    }

    const nRelays = relayNodes.filter((n) => n.role === 'relay').length;
    const nExits = relayNodes.length - nRelays;
    p.step(
      `starting ${nRelays} relay${nRelays === 1 ? '' : 's'} and ${nExits} exit${nExits === 1 ? '' : 's'} ` +
        `(network "${NETWORK}"${boot ? `, bootstrap ${boot.address}:${DHT_PORT}` : ''})`,
    );
    for (const n of relayNodes) {
      const base = [
        '--state',
        n.dir,
        '--listen',
        `${n.address}:${LINK_PORT}`,
        '--network',
        NETWORK,
        ...(boot ? bootstrap : ['--no-dht']),
        // The testnet's relays are on 10.x: let them extend to each other.
        '--allow-private-extend',
      ];
      if (n.role === 'relay') this.start(n, ['relay', ...base]);
      else
        this.start(n, [
          'exit',
          ...base,
          '--pool',
          POOL,
          ...(n.address6 ? ['--pool6', POOL6] : []),
          '--allow',
          dest.address6 ? `${dest.subnet},${dest.address6}/64` : dest.subnet,
          '--dev',
          'shexit0',
        ]);
    }
    p.detail(commandLine(relayNodes[0]));
    await this.waitFor(
      `their descriptors (${relayNodes.length})`,
      relayNodes,
      () => relayNodes.every((n) => fs.existsSync(path.join(n.dir, 'descriptor.txt'))),
      30_000,
      (pending) =>
        relayNodes.find((n) => !fs.existsSync(path.join(n.dir, 'descriptor.txt'))) ?? pending,
    );
    if (boot) {
      await this.waitFor(
        'them to publish their descriptors in the DHT',
        relayNodes,
        () => relayNodes.every((n) => logHas(n, 'published descriptor in the DHT')),
        45_000,
        (first) => relayNodes.find((n) => !logHas(n, 'published descriptor in the DHT')) ?? first,
      );
    }
    if (doc.relaysFile) {
      const lines = relayNodes.map((n) =>
        fs.readFileSync(path.join(n.dir, 'descriptor.txt'), 'utf8').trim(),
      );
      fs.writeFileSync(
        doc.relaysFile,
        `# shallot testnet: the relays' descriptors (shallot descriptor --state DIR)\n${lines.join('\n')}\n`,
      );
      p.detail(`descriptors collected in ${doc.relaysFile} for the client's --relays`);
    }

    p.step(
      `starting the destination: HTTP on ${dest.address}:${HTTP_PORT} (${DOWNLOAD_BYTES >> 20} MiB at /download)`,
    );
    this.start(dest, [TRAFFIC, 'serve', String(HTTP_PORT), String(DOWNLOAD_BYTES)], false);
    await this.waitFor('the HTTP server', [dest], () => logHas(dest, 'ready'), 10_000);

    p.step(`starting the client in ${client.namespace}: full tunnel on shallot0, kill switch on`);
    this.start(client, [
      'client',
      '--state',
      client.dir,
      '--network',
      NETWORK,
      ...(doc.relaysFile ? ['--relays', doc.relaysFile] : bootstrap),
      '--dev',
      'shallot0',
    ]);
    p.detail(commandLine(client));
    await this.waitFor('a circuit', [client], () => logHas(client, 'circuit ready'), 60_000);
    writeDoc(doc);

    // status.json is rewritten once a second: wait for the one that shows the circuit.
    let st: Record<string, unknown> | null = null;
    for (let i = 0; i < 20; i += 1) {
      st = await nodeStatus(client);
      const circ = st?.circuit as { state?: string } | null | undefined;
      if (circ?.state === 'ready' && st?.lease) break;
      await sleep(250);
    }
    const c = st?.circuit as { hops?: { id: string; address?: Addr; exit: boolean }[] } | null;
    const lease = st?.lease as { v4?: string; v6?: string } | null | undefined;
    const hops = (c?.hops ?? []).map((h) => ({
      name: nodes.find((n) => n.id === h.id)?.name ?? '?',
      id: h.id,
      address: h.address ? `${h.address.host}:${h.address.port}` : '?',
      exit: h.exit,
    }));
    const inner = `${lease?.v4 ?? '?'}${lease?.v6 ? ` and ${lease.v6}` : ''}`;
    p.step(`circuit ready: the client's inner addresses are ${inner}; its hops:`);
    hops.forEach((h, i) =>
      p.detail(
        `${i + 1}. ${h.name.padEnd(8)} ${h.address.padEnd(16)} ${h.id.slice(0, 16)}...${h.exit && i === hops.length - 1 ? '  (exit)' : ''}`,
      ),
    );

    p.step(`downloading ${doc.url} in ${client.namespace}, through the circuit`);
    const got = await nsExec(
      client.namespace,
      process.execPath,
      [TRAFFIC, 'fetch', doc.url],
      120_000,
    );
    const [bytesText, msText, digest] = got.stdout.trim().split(' ');
    if (got.code !== 0 || !bytesText || !msText || !digest) {
      throw new NodeFailed(
        `the download through the circuit failed: ${(got.stderr || got.stdout).trim() || 'no output'}\n` +
          `  client log ${client.log}:\n${logTail(client.log)}`,
      );
    }
    const sum = await nsExec(
      client.namespace,
      process.execPath,
      [TRAFFIC, 'text', doc.url.replace(/\/download$/, '/sha')],
      20_000,
    );
    const bytes = Number(bytesText);
    const seconds = Number(msText) / 1000;
    const mbits = (bytes * 8) / seconds / 1e6;
    const matches = digest === sum.stdout.trim();
    p.detail(`${bytes} bytes in ${seconds.toFixed(2)} s: ${mbits.toFixed(1)} Mbit/s`);
    if (!matches) {
      throw new NodeFailed(
        `the download's sha256 ${digest} differs from the server's /sha (${sum.stdout.trim() || sum.stderr.trim()})`,
      );
    }
    p.detail(`sha256 ${digest}: identical to the server's /sha`);
    if (doc.url6) {
      const sha6 = doc.url6.replace(/\/download$/, '/sha');
      p.step(`over IPv6: ${sha6} in ${client.namespace}, through the circuit`);
      const six = await nsExec(client.namespace, process.execPath, [TRAFFIC, 'text', sha6], 20_000);
      if (six.code !== 0 || six.stdout.trim() !== digest) {
        throw new NodeFailed(
          `IPv6 through the circuit failed: ${(six.stderr || six.stdout).trim() || 'no output'}\n` +
            `  client log ${client.log}:\n${logTail(client.log)}`,
        );
      }
      p.detail(`the same sha256 over IPv6, from the exit's IPv6 address`);
    }
    this.doc = null; // built: from here on it outlives us
    return {
      doc,
      circuit: { hops, inner },
      download: { bytes, seconds, mbits, sha256: digest, matches },
    };
  }

  /** Start a node detached (it outlives this process), output to its log file. */
  private start(n: TestnetNode, args: string[], viaCli = true): void {
    const doc = this.doc as TestnetDoc;
    const argv = viaCli ? [CLI, ...args] : args;
    n.command = ['ip', 'netns', 'exec', n.namespace, process.execPath, ...argv];
    const fd = fs.openSync(n.log, 'a', 0o600);
    let child;
    try {
      // `ip netns exec` execs the command itself: the pid is the node's.
      child = spawn('ip', ['netns', 'exec', n.namespace, process.execPath, ...argv], {
        detached: true,
        stdio: ['ignore', fd, fd],
      });
    } finally {
      fs.closeSync(fd);
    }
    child.on('exit', (code, signal) =>
      this.exited.set(n.name, signal ? `killed by ${signal}` : `exited with code ${code}`),
    );
    child.on('error', (e) => this.exited.set(n.name, `could not start: ${e.message}`));
    child.unref();
    n.pid = child.pid ?? null;
    if (n.pid) fs.writeFileSync(n.pidFile, `${n.pid}\n`);
    writeDoc(doc);
  }

  /** Throw if a node's process has ended. */
  private check(n: TestnetNode): void {
    const why = this.exited.get(n.name) ?? (n.pid && !alive(n.pid) ? 'exited' : null);
    if (why) {
      throw new NodeFailed(
        `${n.name} (${n.role} in ${n.namespace}) ${why}; the end of ${n.log}:\n${logTail(n.log)}`,
      );
    }
  }

  private async waitFor(
    what: string,
    watch: TestnetNode[],
    ready: () => boolean,
    timeoutMs: number,
    blame?: (fallback: TestnetNode) => TestnetNode,
  ): Promise<void> {
    const started = Date.now();
    const w = this.progress.wait(what);
    for (;;) {
      try {
        if (this.aborting) throw new NodeFailed('interrupted');
        for (const n of watch) this.check(n);
      } catch (e) {
        w.done('failed');
        throw e;
      }
      if (ready()) break;
      if (Date.now() - started > timeoutMs) {
        w.done('timed out');
        const n = blame ? blame(watch[0] as TestnetNode) : (watch[0] as TestnetNode);
        throw new NodeFailed(
          `timed out after ${timeoutMs / 1000} s waiting for ${what}; the end of ${n.name}'s log ${n.log}:\n${logTail(n.log)}`,
        );
      }
      w.tick();
      await sleep(250);
    }
    w.done(`ok (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  }
}

type Addr = { host: string; port: number };

function byRole(nodes: TestnetNode[], role: Role): TestnetNode {
  const n = nodes.find((x) => x.role === role);
  if (!n) throw new Error(`no ${role} in the plan`);
  return n;
}

function logHas(n: TestnetNode, text: string): boolean {
  try {
    return fs.readFileSync(n.log, 'utf8').includes(text);
  } catch {
    return false;
  }
}

function describeRole(n: TestnetNode): string {
  switch (n.role) {
    case 'bootstrap':
      return `DHT bootstrap node, UDP ${DHT_PORT}`;
    case 'relay':
      return `relay, UDP ${LINK_PORT}`;
    case 'exit':
      return `exit, UDP ${LINK_PORT}, client pool ${POOL}${n.address6 ? ` ${POOL6}` : ''}`;
    case 'dest':
      return `destination, HTTP ${HTTP_PORT}`;
    case 'client':
      return 'client';
  }
}

/** A node's command line as a person would type it (shallot for the CLI). */
export function commandLine(n: TestnetNode | undefined): string {
  if (!n) return '';
  const argv = n.command.slice(4);
  const i = argv.indexOf(CLI);
  const shown = i >= 0 ? ['shallot', ...argv.slice(i + 1)] : argv.slice(1);
  return `${n.namespace}: ${shown.join(' ')}`;
}

// --- status ------------------------------------------------------------------------

/** `shallot status --state DIR --json` run in the node's namespace; null if none. */
export async function nodeStatus(n: TestnetNode): Promise<Record<string, unknown> | null> {
  if (n.role === 'dest') return null;
  const r = await nsExec(
    n.namespace,
    process.execPath,
    [CLI, 'status', '--state', n.dir, '--json'],
    10_000,
  );
  try {
    return JSON.parse(r.stdout) as Record<string, unknown>;
  } catch {
    return null;
  }
}

// --- down ------------------------------------------------------------------------------

export interface DownReport {
  wasUp: boolean;
  stopped: number;
  killed: number;
  namespaces: string[];
  removedDir: boolean;
}

/**
 * Stop every process of the testnet (SIGTERM, SIGKILL after 5 s), also
 * whatever else runs in its namespaces, delete the shtn-* namespaces and
 * the state directory. Works from testnet.json, from the pid files alone
 * and from the namespaces alone (after a crash).
 */
export async function teardown(
  say: (text: string) => void,
  runner: CommandRunner = systemRunner,
): Promise<DownReport> {
  const root = stateRoot();
  const doc = readDoc();
  const namespaces = testnetNamespaces(runner);
  const haveDir = fs.existsSync(root);
  const report: DownReport = {
    wasUp: doc !== null || namespaces.length > 0 || haveDir,
    stopped: 0,
    killed: 0,
    namespaces,
    removedDir: false,
  };
  if (!report.wasUp) return report;

  const pids = new Set<number>();
  const candidates: number[] = [];
  for (const n of doc?.nodes ?? []) if (n.pid) candidates.push(n.pid);
  if (haveDir) {
    let entries: string[] = [];
    try {
      entries = fs.readdirSync(root);
    } catch {
      /* removed meanwhile */
    }
    for (const entry of entries) {
      const pid = readPid(path.join(root, entry, 'node.pid'));
      if (pid) candidates.push(pid);
    }
  }
  // A recorded pid counts only while it is still one of ours (pids get reused).
  for (const pid of candidates) if (alive(pid) && isOurs(pid)) pids.add(pid);
  for (const ns of namespaces)
    for (const pid of namespacePids(ns, runner)) if (alive(pid)) pids.add(pid);
  pids.delete(process.pid);

  if (pids.size > 0) {
    say(`stopping ${pids.size} process${pids.size === 1 ? '' : 'es'} (SIGTERM)`);
    for (const pid of pids) signal(pid, 'SIGTERM');
    const deadline = Date.now() + STOP_GRACE_MS;
    while ([...pids].some(alive) && Date.now() < deadline) await sleep(100);
    const left = [...pids].filter(alive);
    if (left.length > 0) {
      say(`${left.length} still running after ${STOP_GRACE_MS / 1000} s: SIGKILL`);
      for (const pid of left) signal(pid, 'SIGKILL');
      report.killed = left.length;
    }
    report.stopped = pids.size - report.killed;
  }
  if (namespaces.length > 0) {
    say(`deleting namespaces ${namespaces.join(' ')}`);
    // Kills anything that started in them meanwhile, then deletes them.
    for (const ns of namespaces) removeNamespace(ns, runner);
  }
  if (haveDir) {
    say(`removing ${root}`);
    fs.rmSync(root, { recursive: true, force: true });
    report.removedDir = true;
  }
  return report;
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    /* gone */
  }
}

// --- exec ------------------------------------------------------------------------------

/** Run a command in a node's namespace with this terminal; resolves with its exit code. */
export function execIn(namespace: string, argv: string[]): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn('ip', ['netns', 'exec', namespace, ...argv], { stdio: 'inherit' });
    // The terminal's Ctrl-C reaches the command; this process waits for it to end.
    const ignore = () => undefined;
    process.on('SIGINT', ignore);
    child.on('error', (e) => {
      process.off('SIGINT', ignore);
      console.error(`shallot: cannot run ip netns exec: ${e.message}`);
      resolve(127);
    });
    child.on('exit', (code, sig) => {
      process.off('SIGINT', ignore);
      resolve(code ?? 128 + (sig ? (os.constants.signals[sig] ?? 0) : 0));
    });
  });
}
