/**
 * `shallot relay`, `shallot exit`, `shallot client` and `shallot
 * descriptor`: argument handling and lifecycle around the role classes in
 * relay/, exit/ and client/. Everything a command sets up (devices,
 * routes, nftables tables) it removes again on SIGINT/SIGTERM.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ClientNode } from '../../client/client-node.js';
import { KillSwitch } from '../../client/kill-switch.js';
import { ClientRouting } from '../../client/routing.js';
import { AddressPool } from '../../exit/address-pool.js';
import { ExitHandler } from '../../exit/exit-node.js';
import { ExitNat } from '../../exit/nat.js';
import { ExitPolicy, parseAllowList, parsePolicyFile } from '../../exit/policy.js';
import { RelayNode } from '../../relay/relay-node.js';
import { CIRCUIT_MTU, MAX_HOPS } from '../circuit/cells.js';
import { descriptorToText, signDescriptor, type Descriptor } from '../descriptor/descriptor.js';
import { loadRelayFile } from '../descriptor/relay-list.js';
import { DhtNode, MAINLINE_BOOTSTRAP } from '../discovery/dht-node.js';
import { RelayFinder } from '../discovery/finder.js';
import { DescriptorPublisher } from '../discovery/publisher.js';
import { errors } from '../errors.js';
import {
  loadIdentity,
  loadPreviousOnionKey,
  ONION_KEY_GRACE_S,
  ONION_KEY_ROTATE_S,
  onionKeyAgeS,
  parseNodeId,
  rotateOnionKey,
  type Identity,
} from '../identity.js';
import { UdpTransport } from '../link/transport.js';
import { createLogger, type Logger, type LogLevel } from '../log.js';
import { formatIp, parseCidr, parseHostPort, parseIp, type Cidr } from '../net/cidr.js';
import { startMetricsServer, type MetricsServer } from '../metrics/prometheus.js';
import { STATUS_INTERVAL_MS, writeStatus } from '../status-file.js';
import { configureInterface, ip } from '../tun/iproute.js';
import { LinuxTun } from '../tun/linux-tun.js';
import {
  mergeConfigFile,
  parseArgs,
  requireString,
  type CommandSpec,
  type Parsed,
} from './args.js';

export const DEFAULT_NETWORK = 'shallot';
const DESCRIPTOR_FILE = 'descriptor.txt';
const DESCRIPTOR_LIFETIME_S = 24 * 3600;
const DESCRIPTOR_REFRESH_MS = 3600_000;

const common = {
  state: {
    name: 'state',
    type: 'string',
    value: 'DIR',
    help: 'state directory (from shallot keygen)',
  },
  network: {
    name: 'network',
    type: 'string',
    value: 'NAME',
    help: `overlay network name (default ${DEFAULT_NETWORK})`,
  },
  logLevel: {
    name: 'log-level',
    type: 'string',
    value: 'LEVEL',
    help: 'debug, info (default), warn, error',
  },
  metrics: {
    name: 'metrics',
    type: 'string',
    value: 'HOST:PORT',
    help: 'serve Prometheus metrics at http://HOST:PORT/metrics (localhost only; off by default)',
  },
  metricsAllowRemote: {
    name: 'metrics-allow-remote',
    type: 'flag',
    help: 'let --metrics bind to a non-loopback address (anyone reaching it reads your counters)',
  },
  config: {
    name: 'config',
    type: 'string',
    value: 'FILE',
    help: 'YAML file with any of these options',
    cliOnly: true,
  },
} as const;

const dhtOptions = [
  {
    name: 'bootstrap',
    type: 'list',
    value: 'HOST:PORT,...',
    help: 'DHT bootstrap nodes of a private network (default: the mainline DHT routers)',
  },
  {
    name: 'no-dht',
    type: 'flag',
    help: 'do not use the DHT (relays: no publishing; clients: --relays only)',
  },
] as const;

const relayOptions = [
  common.state,
  { name: 'listen', type: 'string', value: 'HOST:PORT', help: 'UDP address for links' },
  {
    name: 'advertise',
    type: 'string',
    value: 'HOST:PORT',
    help: 'address written in the descriptor (default: the --listen address)',
  },
  {
    name: 'bandwidth',
    type: 'string',
    value: 'KBPS',
    help: 'advertised bandwidth in kB/s (default 10000)',
  },
  ...dhtOptions,
  {
    name: 'dht-listen',
    type: 'string',
    value: 'HOST:PORT',
    help: 'UDP address of the DHT node (default: the --listen host, port + 1)',
  },
  {
    name: 'descriptor-lifetime',
    type: 'string',
    value: 'SECONDS',
    help: 'descriptor validity (default 86400); it is renewed at a third of it',
  },
  {
    name: 'onion-rotate',
    type: 'string',
    value: 'SECONDS',
    help: 'replace the onion key this often (default 604800, a week); the old one works 1 day more',
  },
  common.network,
  common.logLevel,
  common.metrics,
  common.metricsAllowRemote,
  common.config,
] as const;

export const relaySpec: CommandSpec = {
  name: 'relay',
  summary: 'run a relay: forward onion cells between neighbours',
  usage: ['shallot relay --state DIR --listen HOST:PORT [--advertise HOST:PORT]'],
  details:
    'A relay peels one layer of each cell toward the exit and adds one toward the client; it\n' +
    'knows only the hop before and after. It writes its signed descriptor to DIR/descriptor.txt\n' +
    "(print it with 'shallot descriptor --state DIR'); clients list such lines in --relays FILE.",
  options: [...relayOptions],
};

export const exitSpec: CommandSpec = {
  name: 'exit',
  summary: 'run an exit: a relay that also sends client traffic to the internet (kernel NAT)',
  usage: [
    'shallot exit --state DIR --listen HOST:PORT --pool CIDR [--pool6 CIDR] [--allow CIDR[:PORTS],...] [--policy FILE]',
  ],
  details:
    'Each client session gets an inner address from --pool; only packets from that address are\n' +
    'accepted from it. Destinations: --allow entries first, then the --policy file (lines\n' +
    "'accept|reject CIDR[:PORT[-PORT]]'), then the defaults, which reject private, loopback,\n" +
    "link-local and multicast networks, this host's own networks and port 25. Loopback and\n" +
    "this host's addresses stay rejected whatever --allow says. Sets up IP forwarding and an\n" +
    'nftables masquerade table, removed on stop. Needs root and nftables.',
  options: [
    ...relayOptions,
    {
      name: 'pool',
      type: 'string',
      value: 'CIDR',
      help: 'IPv4 network for client addresses, e.g. 10.200.0.0/16',
    },
    {
      name: 'pool6',
      type: 'string',
      value: 'CIDR',
      help: 'IPv6 network for client addresses (optional)',
    },
    {
      name: 'allow',
      type: 'list',
      value: 'CIDR[:PORTS],...',
      help: 'destinations accepted ahead of the default rejects',
    },
    { name: 'policy', type: 'string', value: 'FILE', help: 'exit policy file' },
    { name: 'dev', type: 'string', value: 'NAME', help: 'TUN device name (default shexit%d)' },
  ],
};

export const clientSpec: CommandSpec = {
  name: 'client',
  summary: "run a client: send this host's traffic through an onion circuit",
  usage: [
    'shallot client --state DIR [--bootstrap HOST:PORT,...] [--hops N] [--exit ID] [--split CIDR,...]',
    'shallot client --state DIR --relays FILE ...',
  ],
  details:
    'Finds relays through the DHT (or takes them from --relays FILE, lines from shallot\n' +
    'descriptor), keeps them cached in DIR, builds a circuit guard -> middle -> exit, then routes all traffic into it (full tunnel: a host route keeps the link to\n' +
    'the guard outside) or only --split networks. In full-tunnel mode a kill switch (nftables)\n' +
    'lets nothing out but the link to the guard while no circuit is up. The client shows the\n' +
    `network only a throw-away identity. Inner MTU ${CIRCUIT_MTU}. Needs root.`,
  options: [
    common.state,
    {
      name: 'relays',
      type: 'string',
      value: 'FILE',
      help: 'relay descriptors, one per line (instead of discovery through the DHT)',
    },
    ...dhtOptions,
    {
      name: 'refresh',
      type: 'string',
      value: 'SECONDS',
      help: 'how often to look for relays in the DHT (default 300)',
    },
    { name: 'hops', type: 'string', value: 'N', help: `circuit length, 1-${MAX_HOPS} (default 3)` },
    { name: 'exit', type: 'string', value: 'ID', help: 'use this exit' },
    {
      name: 'split',
      type: 'list',
      value: 'CIDR,...',
      help: 'route only these networks through the circuit',
    },
    { name: 'dev', type: 'string', value: 'NAME', help: 'TUN device name (default shallot%d)' },
    {
      name: 'dns',
      type: 'list',
      value: 'IP,...',
      help: 'resolvers to reach through the circuit in --split mode (full tunnel: all DNS goes through it)',
    },
    {
      name: 'no-kill-switch',
      type: 'flag',
      help: 'full tunnel without the kill switch (not advised)',
    },
    {
      name: 'allow-same-subnet',
      type: 'flag',
      help: 'testing only: relays of a path may share a /16',
    },
    common.network,
    common.logLevel,
    common.metrics,
    common.metricsAllowRemote,
    common.config,
  ],
};

export const descriptorSpec: CommandSpec = {
  name: 'descriptor',
  summary: "print a relay's current signed descriptor (one line, for a client's --relays file)",
  usage: ['shallot descriptor --state DIR'],
  options: [common.state],
};

function loggerFor(p: Parsed): Logger {
  const level = (p['log-level'] ?? 'info') as LogLevel;
  if (!['debug', 'info', 'warn', 'error'].includes(level)) {
    throw errors.badArgument('--log-level must be debug, info, warn or error');
  }
  return createLogger(level);
}

function networkName(p: Parsed): string {
  const n = typeof p.network === 'string' ? p.network : DEFAULT_NETWORK;
  if (!/^[A-Za-z0-9._-]{1,32}$/.test(n))
    throw errors.badArgument('--network must be 1-32 letters, digits, ".", "_" or "-"');
  return n;
}

function parsed(spec: CommandSpec, argv: string[]): Parsed {
  let p = parseArgs(spec, argv);
  if (typeof p.config === 'string') p = mergeConfigFile(spec, p, p.config);
  return p;
}

/** Wait for SIGINT/SIGTERM, then run `stop`. */
function untilSignal(log: Logger, stop: () => void): Promise<number> {
  return new Promise((resolve) => {
    const handler = (signal: string) => {
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
      log.info(`${signal}: stopping`);
      try {
        stop();
      } finally {
        resolve(0);
      }
    };
    const onInt = () => handler('SIGINT');
    const onTerm = () => handler('SIGTERM');
    process.on('SIGINT', onInt);
    process.on('SIGTERM', onTerm);
  });
}

function bindError(e: unknown, host: string, port: number): unknown {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'EADDRINUSE') return errors.badArgument(`UDP ${host}:${port} is already in use`);
  if (code === 'EADDRNOTAVAIL') return errors.badArgument(`${host} is not an address of this host`);
  return e;
}

// --- relay and exit ----------------------------------------------------------

interface RelaySetup {
  parsed: Parsed;
  onionRotateS: number;
  dht: { bootstrap: string[] | false; listen: { host: string; port: number } } | null;
  lifetimeS: number;
  current: { wire: Buffer; published: number } | null;
  identity: Identity;
  node: RelayNode;
  dir: string;
  log: Logger;
  listen: { host: string; port: number };
  advertise: { host: string; port: number };
  bandwidth: number;
  network: string;
}

function relaySetup(p: Parsed): RelaySetup {
  const dir = requireString(p, 'state', 'the state directory made by shallot keygen');
  const log = loggerFor(p);
  const listen = parseHostPort(
    requireString(p, 'listen', 'the UDP address for links, e.g. 0.0.0.0:7000'),
    '--listen',
  );
  const advertise =
    typeof p.advertise === 'string' ? parseHostPort(p.advertise, '--advertise') : listen;
  if (advertise.host === '0.0.0.0' || advertise.host === '::') {
    throw errors.badArgument(
      '--listen is a wildcard address: give --advertise HOST:PORT for the descriptor',
    );
  }
  const bandwidth = p.bandwidth === undefined ? 10_000 : Number(p.bandwidth);
  if (!Number.isInteger(bandwidth) || bandwidth < 0 || bandwidth >= 2 ** 32) {
    throw errors.badArgument('--bandwidth must be a whole number of kB/s');
  }
  const network = networkName(p);
  const lifetimeS =
    p['descriptor-lifetime'] === undefined
      ? DESCRIPTOR_LIFETIME_S
      : Number(p['descriptor-lifetime']);
  if (!Number.isInteger(lifetimeS) || lifetimeS < 10 || lifetimeS > 7 * 24 * 3600) {
    throw errors.badArgument('--descriptor-lifetime must be 10 to 604800 seconds');
  }
  const dht = dhtChoice(p, listen);
  const onionRotateS =
    p['onion-rotate'] === undefined ? ONION_KEY_ROTATE_S : Number(p['onion-rotate']);
  if (!Number.isInteger(onionRotateS) || onionRotateS < 60) {
    throw errors.badArgument('--onion-rotate must be a whole number of seconds, at least 60');
  }
  const identity = loadIdentity(dir);
  const node = new RelayNode({
    identity,
    transport: new UdpTransport(listen.host, listen.port),
    log,
  });
  return {
    parsed: p,
    onionRotateS,
    identity,
    node,
    dir,
    log,
    listen,
    advertise,
    bandwidth,
    network,
    dht,
    lifetimeS,
    current: null,
  };
}

function bootstrapList(p: Parsed): string[] | false {
  const list = (p.bootstrap as string[] | undefined) ?? [];
  if (list.length === 0) return [...MAINLINE_BOOTSTRAP];
  return list.map((b) => {
    const hp = parseHostPort(b, '--bootstrap');
    return `${hp.host}:${hp.port}`;
  });
}

function dhtChoice(
  p: Parsed,
  listen: { host: string; port: number },
): { bootstrap: string[] | false; listen: { host: string; port: number } } | null {
  if (p['no-dht'] === true) {
    if (p.bootstrap !== undefined) {
      throw errors.badArgument('--bootstrap and --no-dht contradict each other');
    }
    return null;
  }
  const dl =
    typeof p['dht-listen'] === 'string'
      ? parseHostPort(p['dht-listen'], '--dht-listen')
      : { host: listen.host, port: listen.port < 65535 ? listen.port + 1 : 0 };
  return { bootstrap: bootstrapList(p), listen: dl };
}

function publishDescriptor(s: RelaySetup, exitPolicy: string | null): string {
  // A new publication time every time: it is also the BEP 44 sequence number.
  const now = Math.max(Math.floor(Date.now() / 1000), (s.current?.published ?? 0) + 1);
  const wire = signDescriptor(s.identity, {
    addresses: [s.advertise],
    roles: { relay: true, exit: exitPolicy !== null },
    policy: exitPolicy ?? '',
    bandwidth: s.bandwidth,
    published: now,
    expires: now + s.lifetimeS,
    network: s.network,
  });
  s.current = { wire, published: now };
  const text = descriptorToText(wire);
  const file = path.join(s.dir, DESCRIPTOR_FILE);
  fs.writeFileSync(`${file}.tmp`, text + '\n', { mode: 0o644 });
  fs.renameSync(`${file}.tmp`, file);
  return text;
}

async function runRelay(
  s: RelaySetup,
  role: string,
  exit: ExitHandler | null,
  policy: string | null,
  extraStop: () => void,
): Promise<number> {
  try {
    await s.node.start();
  } catch (e) {
    extraStop();
    throw bindError(e, s.listen.host, s.listen.port);
  }
  // Onion key rotation on a schedule; the previous key keeps working for
  // ONION_KEY_GRACE_S so circuits being built with the old descriptor succeed.
  const rotateIfDue = (): boolean => {
    if (onionKeyAgeS(s.dir) < s.onionRotateS) return false;
    const prev = rotateOnionKey(s.dir, s.identity);
    s.node.previousOnion = { ...prev, until: Date.now() + ONION_KEY_GRACE_S * 1000 };
    s.log.info('rotated the onion key; the previous one is honoured for 24 h');
    return true;
  };
  rotateIfDue();
  const previous = loadPreviousOnionKey(s.dir);
  if (previous && !s.node.previousOnion) s.node.previousOnion = previous;
  publishDescriptor(s, policy);
  let dht: DhtNode | null = null;
  let publisher: DescriptorPublisher | null = null;
  if (s.dht) {
    dht = new DhtNode({
      bootstrap: s.dht.bootstrap,
      host: s.dht.listen.host,
      port: s.dht.listen.port,
      log: s.log,
      nodesFile: path.join(s.dir, 'dht-nodes.json'),
      maxAgeMs: Math.max(60_000, s.lifetimeS * 1000),
    });
    try {
      await dht.start();
    } catch (e) {
      s.node.stop();
      extraStop();
      throw bindError(e, s.dht.listen.host, s.dht.listen.port);
    }
    publisher = new DescriptorPublisher({
      dht,
      identity: s.identity,
      network: s.network,
      linkPort: s.advertise.port,
      descriptor: () => s.current as { wire: Buffer; published: number },
      republishMs: Math.min(10 * 60_000, Math.floor((s.lifetimeS * 1000) / 3)),
      log: s.log,
    });
    publisher.start();
  }
  s.log.info(
    `${role} ${s.identity.id} listening on ${s.listen.host}:${s.listen.port}; descriptor in ${path.join(s.dir, DESCRIPTOR_FILE)}`,
  );
  let stopReporting: (state: string) => Promise<void>;
  try {
    stopReporting = await startReporting(s.parsed, s.dir, (state) => ({
      role,
      state,
      pid: process.pid,
      id: s.identity.id,
      updatedAt: new Date().toISOString(),
      memory: { rss: process.memoryUsage().rss },
      ...s.node.describe(),
      ...(exit ? exit.describe() : {}),
      dht: dht ? { ...dht.describe(), published: publisher?.published ?? false } : null,
    }));
  } catch (e) {
    publisher?.stop();
    dht?.stop();
    s.node.stop();
    extraStop();
    throw e;
  }
  // Renew the descriptor at a third of its lifetime, and publish the new
  // one; publish at once when the onion key rotates.
  const renewMs = Math.min(DESCRIPTOR_REFRESH_MS, Math.floor((s.lifetimeS * 1000) / 3));
  let lastRenew = Date.now();
  const refresh = setInterval(
    () => {
      const rotated = rotateIfDue();
      if (!rotated && Date.now() - lastRenew < renewMs) return;
      lastRenew = Date.now();
      publishDescriptor(s, policy);
      void publisher?.publishNow();
    },
    Math.min(renewMs, 30_000),
  );
  return untilSignal(s.log, () => {
    clearInterval(refresh);
    publisher?.stop();
    dht?.stop();
    s.node.stop();
    extraStop();
    void stopReporting('stopped');
  });
}

export async function relayCommand(argv: string[]): Promise<number> {
  const s = relaySetup(parsed(relaySpec, argv));
  return runRelay(s, 'relay', null, null, () => undefined);
}

/** Every address of this host with its prefix: the exit never forwards to them. */
function ownNetworks(): Cidr[] {
  const out: Cidr[] = [];
  for (const list of Object.values(os.networkInterfaces())) {
    for (const a of list ?? []) {
      if (a.cidr) out.push(parseCidr(a.cidr));
    }
  }
  return out;
}

export async function exitCommand(argv: string[]): Promise<number> {
  const p = parsed(exitSpec, argv);
  const s = relaySetup(p);
  const pool = parseCidr(
    requireString(p, 'pool', 'the IPv4 network for client addresses, e.g. 10.200.0.0/16'),
    '--pool',
  );
  const pool6 = typeof p.pool6 === 'string' ? parseCidr(p.pool6, '--pool6') : undefined;
  const allow = parseAllowList((p.allow as string[] | undefined) ?? []);
  const rules = typeof p.policy === 'string' ? parsePolicyFile(p.policy) : [];
  const own = [...ownNetworks(), pool, ...(pool6 ? [pool6] : [])];
  const ownAddresses = ownNetworks();
  const policy = new ExitPolicy({
    allow,
    rules,
    ownNetworks: own,
    // Clients look relays up through their circuit: let them reach this
    // exit's own link port (key query) and DHT node, nothing else of it.
    ownUdpServices: {
      addresses: ownAddresses,
      ports: [s.listen.port, ...(s.dht ? [s.dht.listen.port] : [])],
    },
  });
  const addresses = new AddressPool(pool, pool6);
  let summary = policy.summary();
  if (summary.length > 200) summary = summary.slice(0, 196) + ' ...';
  ExitNat.removeStale();
  const device = LinuxTun.open(typeof p.dev === 'string' ? p.dev : 'shexit%d', CIRCUIT_MTU);
  let nat: ExitNat | null = null;
  let exit: ExitHandler | null = null;
  try {
    const gw4 = `${formatIp(addresses.gatewayV4())}/${pool.prefix}`;
    const gw6 = addresses.gatewayV6();
    configureInterface(
      device.name,
      [gw4, ...(gw6 && pool6 ? [`${formatIp(gw6)}/${pool6.prefix}`] : [])],
      CIRCUIT_MTU,
    );
    nat = new ExitNat({ tunName: device.name, poolV4: pool, ...(pool6 ? { poolV6: pool6 } : {}) });
    nat.start();
    exit = new ExitHandler(s.node, device, addresses, policy, { log: s.log });
    s.node.lastHop = exit;
    exit.start();
  } catch (e) {
    nat?.stop();
    device.close();
    throw e;
  }
  const x = exit;
  const n = nat;
  s.log.info(
    `exit on ${device.name}: pool ${pool.text}${pool6 ? ' ' + pool6.text : ''}; policy: ${summary}`,
  );
  return runRelay(s, 'exit', x, summary, () => {
    x.stop();
    n.stop();
  });
}

export async function descriptorCommand(argv: string[]): Promise<number> {
  const p = parseArgs(descriptorSpec, argv);
  const dir = requireString(p, 'state', 'the state directory of a relay or exit');
  loadIdentity(dir); // a clear error if this is not a node's state directory
  const file = path.join(dir, DESCRIPTOR_FILE);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8').trim();
  } catch {
    throw errors.badArgument(
      `no descriptor in ${dir}: start 'shallot relay' or 'shallot exit' with --state ${dir} first`,
    );
  }
  console.log(text);
  return 0;
}

// --- client ------------------------------------------------------------------

export async function clientCommand(argv: string[]): Promise<number> {
  const p = parsed(clientSpec, argv);
  const dir = requireString(p, 'state', 'a state directory for guards and status');
  const log = loggerFor(p);
  const network = networkName(p);
  const relaysFile = typeof p.relays === 'string' ? p.relays : null;
  if (relaysFile && (p.bootstrap !== undefined || p['no-dht'] === true)) {
    throw errors.badArgument('--relays replaces the DHT: leave out --bootstrap and --no-dht');
  }
  if (!relaysFile && p['no-dht'] === true) {
    throw errors.badArgument(
      '--no-dht needs --relays FILE: the client must learn relays somewhere',
    );
  }
  const refreshS = p.refresh === undefined ? 300 : Number(p.refresh);
  if (!Number.isFinite(refreshS) || refreshS < 1 || refreshS > 86_400) {
    throw errors.badArgument('--refresh must be 1 to 86400 seconds');
  }
  const hops = p.hops === undefined ? 3 : Number(p.hops);
  if (!Number.isInteger(hops) || hops < 1 || hops > MAX_HOPS)
    throw errors.badArgument(`--hops must be 1 to ${MAX_HOPS}`);
  let exitId: string | undefined;
  if (typeof p.exit === 'string') {
    const id = parseNodeId(p.exit);
    if (!id) throw errors.badArgument(`--exit '${p.exit}' is not a node id (64 hex digits)`);
    exitId = id.toString('hex');
  }
  const split = ((p.split as string[] | undefined) ?? []).map((c) => parseCidr(c, '--split'));
  for (const d of (p.dns as string[] | undefined) ?? []) {
    const ipb = parseIp(d);
    if (!ipb) throw errors.badArgument(`--dns '${d}' is not an IP address`);
    // In split mode the resolver is routed into the circuit like the listed networks.
    if (split.length > 0) split.push(parseCidr(`${d}/${ipb.length === 4 ? 32 : 128}`, '--dns'));
  }
  const killSwitchOn = split.length === 0 && p['no-kill-switch'] !== true;
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  let relays: () => Descriptor[];
  let stopDiscovery = () => undefined as void;
  let allowPorts: number[] = [];
  let discovery: { dht: DhtNode; finder: RelayFinder } | null = null;
  if (relaysFile) {
    const load = () => loadRelayFile(relaysFile, { now: Math.floor(Date.now() / 1000), network });
    const first = load();
    const rejected = Object.entries(first.counts).filter(([, n]) => n > 0);
    log.info(
      `${first.relays.length} relays from ${relaysFile}` +
        (rejected.length ? ` (ignored: ${rejected.map(([k, n]) => `${n} ${k}`).join(', ')})` : ''),
    );
    if (first.relays.length === 0) {
      throw errors.badConfig(`no usable relay descriptor in ${relaysFile}`);
    }
    let list = first.relays;
    relays = () => list;
    const reload = setInterval(() => {
      try {
        list = load().relays;
      } catch {
        /* keep the last good list */
      }
    }, 60_000);
    stopDiscovery = () => clearInterval(reload);
  } else {
    const bootstrap = bootstrapList(p);
    const dht = new DhtNode({
      bootstrap,
      host: '0.0.0.0',
      port: 0,
      log,
      nodesFile: path.join(dir, 'dht-nodes.json'),
    });
    const finder = new RelayFinder({ dht, network, stateDir: dir, log });
    discovery = { dht, finder };
    await dht.start();
    allowPorts = [dht.address().port, await finder.bind()];
    relays = () => finder.relays();
    const timer = setInterval(() => void finder.refresh(), refreshS * 1000);
    stopDiscovery = () => {
      clearInterval(timer);
      finder.stop();
      dht.stop();
    };
  }

  KillSwitch.removeStale();
  const device = LinuxTun.open(typeof p.dev === 'string' ? p.dev : 'shallot%d', CIRCUIT_MTU);
  ip(['link', 'set', 'dev', device.name, 'mtu', String(CIRCUIT_MTU), 'up']);
  // From here on nothing leaves outside the tunnel but discovery and, once
  // chosen, the link to the guard.
  let killSwitch: KillSwitch | null = killSwitchOn
    ? installKillSwitch(device.name, null, allowPorts)
    : null;
  if (discovery) {
    const cached = discovery.finder.loadCache();
    if (cached >= hops) {
      log.info(`${cached} relays in the cache; refreshing from the DHT in the background`);
      void discovery.finder.refresh();
    } else {
      const started = Date.now();
      for (let attempt = 1; ; attempt += 1) {
        log.info(`looking up relays of network '${network}' in the DHT (attempt ${attempt})`);
        const n = await discovery.finder.refresh();
        if (n >= hops) {
          log.info(`found ${n} relays in ${Date.now() - started} ms`);
          break;
        }
        if (attempt >= 30) {
          stopDiscovery();
          killSwitch?.stop();
          device.close();
          throw errors.badConfig(
            `found only ${n} relays of network '${network}' in the DHT: is --bootstrap right?`,
          );
        }
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }
  let routing: ClientRouting | null = null;
  let guardKey = '';
  let addressed = false;
  const guardOf = (d: Descriptor) => {
    const a = d.addresses[0] as { host: string; port: number };
    return { host: a.host, port: a.port };
  };
  const node = new ClientNode({
    relays,
    transport: new UdpTransport('0.0.0.0', 0),
    device,
    hops,
    exitId,
    stateDir: dir,
    allowSameSubnet: p['allow-same-subnet'] === true,
    log,
    onProgress: (text) => log.info(text),
    onGuard: (guard) => {
      const g = guardOf(guard);
      const key = `${g.host}:${g.port}`;
      if (key === guardKey) return;
      guardKey = key;
      if (killSwitchOn) {
        // Same table name: nft replaces it in one transaction, never a gap.
        killSwitch = installKillSwitch(device.name, g, allowPorts);
      }
      if (routing) {
        routing.stop();
        routing = null;
      }
    },
    onCircuit: (_path, lease, _first) => {
      if (!addressed) {
        ip(['addr', 'add', `${formatIp(lease.v4)}/32`, 'dev', device.name]);
        if (lease.v6) ip(['-6', 'addr', 'add', `${formatIp(lease.v6)}/128`, 'dev', device.name]);
        addressed = true;
      }
      if (!routing) {
        const [host, port] = guardKey.split(/:(?=\d+$)/);
        routing = new ClientRouting({
          tunName: device.name,
          guard: { host: host as string, port: Number(port) },
          mode: split.length ? { kind: 'split', cidrs: split } : { kind: 'full' },
          ...(lease.v6 ? { innerV6: parseCidr(`${formatIp(lease.v6)}/128`) } : {}),
        });
        routing.start();
      }
      process.stdout.write(`circuit ready: inner address ${formatIp(lease.v4)}\n`);
    },
  });
  const stopAll = () => {
    stopDiscovery();
    node.stop();
    routing?.stop();
    killSwitch?.stop();
  };
  try {
    await node.start();
  } catch (e) {
    stopAll();
    throw e;
  }
  let stopReporting: (state: string) => Promise<void>;
  try {
    stopReporting = await startReporting(p, dir, (state) => ({
      role: 'client',
      state,
      pid: process.pid,
      device: device.name,
      updatedAt: new Date().toISOString(),
      memory: { rss: process.memoryUsage().rss },
      killSwitch: killSwitchOn ? { blockedPackets: safeBlocked(killSwitch) } : null,
      discovery: discovery
        ? { dht: discovery.dht.describe(), relays: discovery.finder.describe() }
        : { relaysFile },
      ...node.describe(),
    }));
  } catch (e) {
    stopAll();
    throw e;
  }
  return untilSignal(log, () => {
    stopAll();
    void stopReporting('stopped');
  });
}

function installKillSwitch(
  tunName: string,
  guard: { host: string; port: number } | null,
  allowUdpSourcePorts: number[],
): KillSwitch {
  const k = new KillSwitch({ tunName, guard, allowUdpSourcePorts });
  k.start();
  return k;
}

/**
 * Publish a node's status once a second in DIR/status.json and, with
 * --metrics, the same figures for Prometheus. Returns the stop function.
 */
async function startReporting(
  p: Parsed,
  dir: string | null,
  snapshot: (state: string) => Record<string, unknown>,
): Promise<(finalState: string) => Promise<void>> {
  const publish = (state: string) => {
    if (dir) writeStatus(dir, snapshot(state));
  };
  publish('running');
  const timer = setInterval(() => publish('running'), STATUS_INTERVAL_MS);
  let server: MetricsServer | null = null;
  if (typeof p.metrics === 'string') {
    const hp = parseHostPort(p.metrics, '--metrics');
    try {
      server = await startMetricsServer({
        host: hp.host,
        port: hp.port,
        snapshot: () => snapshot('running'),
        allowRemote: p['metrics-allow-remote'] === true,
      });
    } catch (e) {
      clearInterval(timer);
      throw e;
    }
  }
  return async (finalState: string) => {
    clearInterval(timer);
    publish(finalState);
    await server?.close();
  };
}

function safeBlocked(k: KillSwitch | null): number | null {
  try {
    return k ? k.blockedPackets() : null;
  } catch {
    return null;
  }
}

// --- bootstrap ---------------------------------------------------------------

export const bootstrapSpec: CommandSpec = {
  name: 'bootstrap',
  summary: 'run a DHT bootstrap node for a private overlay network',
  usage: ['shallot bootstrap --listen HOST:PORT [--state DIR]'],
  details:
    'A DHT node that needs no other: give its address to relays, exits and clients of a\n' +
    'private network with --bootstrap HOST:PORT. Production networks use the mainline DHT\n' +
    'and need none of their own.',
  options: [
    { name: 'listen', type: 'string', value: 'HOST:PORT', help: 'UDP address of the DHT node' },
    { name: 'state', type: 'string', value: 'DIR', help: 'where to write status.json (optional)' },
    common.logLevel,
    common.metrics,
    common.metricsAllowRemote,
  ],
  examples: ['shallot bootstrap --listen 10.0.0.1:6881'],
};

export async function bootstrapCommand(argv: string[]): Promise<number> {
  const p = parseArgs(bootstrapSpec, argv);
  const log = loggerFor(p);
  const listen = parseHostPort(
    requireString(p, 'listen', 'the UDP address, e.g. 10.0.0.1:6881'),
    '--listen',
  );
  const dir = typeof p.state === 'string' ? p.state : null;
  if (dir) fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const dht = new DhtNode({ bootstrap: false, host: listen.host, port: listen.port, log });
  try {
    await dht.start();
  } catch (e) {
    throw bindError(e, listen.host, listen.port);
  }
  log.info(`DHT bootstrap node on ${listen.host}:${listen.port}`);
  let stopReporting: (state: string) => Promise<void>;
  try {
    stopReporting = await startReporting(p, dir, (state) => ({
      role: 'bootstrap',
      state,
      pid: process.pid,
      updatedAt: new Date().toISOString(),
      memory: { rss: process.memoryUsage().rss },
      dht: dht.describe(),
    }));
  } catch (e) {
    dht.stop();
    throw e;
  }
  return untilSignal(log, () => {
    dht.stop();
    void stopReporting('stopped');
  });
}
