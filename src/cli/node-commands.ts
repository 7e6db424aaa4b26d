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
import { errors } from '../errors.js';
import { loadIdentity, parseNodeId, type Identity } from '../identity.js';
import { UdpTransport } from '../link/transport.js';
import { createLogger, type Logger, type LogLevel } from '../log.js';
import { formatIp, parseCidr, parseHostPort, type Cidr } from '../net/cidr.js';
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
  config: {
    name: 'config',
    type: 'string',
    value: 'FILE',
    help: 'YAML file with any of these options',
    cliOnly: true,
  },
} as const;

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
  common.network,
  common.logLevel,
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
  usage: ['shallot client --state DIR --relays FILE [--hops N] [--exit ID] [--split CIDR,...]'],
  details:
    'Builds a circuit guard -> middle -> exit from the relays in FILE (lines from shallot\n' +
    'descriptor), then routes all traffic into it (full tunnel: a host route keeps the link to\n' +
    'the guard outside) or only --split networks. In full-tunnel mode a kill switch (nftables)\n' +
    'lets nothing out but the link to the guard while no circuit is up. The client shows the\n' +
    `network only a throw-away identity. Inner MTU ${CIRCUIT_MTU}. Needs root.`,
  options: [
    common.state,
    { name: 'relays', type: 'string', value: 'FILE', help: 'relay descriptors, one per line' },
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
  const identity = loadIdentity(dir);
  const node = new RelayNode({
    identity,
    transport: new UdpTransport(listen.host, listen.port),
    log,
  });
  return { identity, node, dir, log, listen, advertise, bandwidth, network };
}

function publishDescriptor(s: RelaySetup, exitPolicy: string | null): string {
  const now = Math.floor(Date.now() / 1000);
  const wire = signDescriptor(s.identity, {
    addresses: [s.advertise],
    roles: { relay: true, exit: exitPolicy !== null },
    policy: exitPolicy ?? '',
    bandwidth: s.bandwidth,
    published: now,
    expires: now + DESCRIPTOR_LIFETIME_S,
    network: s.network,
  });
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
  publishDescriptor(s, policy);
  s.log.info(
    `${role} ${s.identity.id} listening on ${s.listen.host}:${s.listen.port}; descriptor in ${path.join(s.dir, DESCRIPTOR_FILE)}`,
  );
  const publish = (state: string) =>
    writeStatus(s.dir, {
      role,
      state,
      pid: process.pid,
      id: s.identity.id,
      updatedAt: new Date().toISOString(),
      memory: { rss: process.memoryUsage().rss },
      ...s.node.describe(),
      ...(exit ? exit.describe() : {}),
    });
  publish('running');
  const statusTimer = setInterval(() => publish('running'), STATUS_INTERVAL_MS);
  const refresh = setInterval(() => publishDescriptor(s, policy), DESCRIPTOR_REFRESH_MS);
  return untilSignal(s.log, () => {
    clearInterval(statusTimer);
    clearInterval(refresh);
    s.node.stop();
    extraStop();
    publish('stopped');
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
  const policy = new ExitPolicy({ allow, rules, ownNetworks: own });
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
  const relaysFile = requireString(
    p,
    'relays',
    'a file of relay descriptors (lines from shallot descriptor)',
  );
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
  const killSwitchOn = split.length === 0 && p['no-kill-switch'] !== true;
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const load = () => {
    const r = loadRelayFile(relaysFile, { now: Math.floor(Date.now() / 1000), network });
    return r;
  };
  const first = load();
  const rejected = Object.entries(first.counts).filter(([, n]) => n > 0);
  log.info(
    `${first.relays.length} relays from ${relaysFile}` +
      (rejected.length ? ` (ignored: ${rejected.map(([k, n]) => `${n} ${k}`).join(', ')})` : ''),
  );
  if (first.relays.length === 0)
    throw errors.badConfig(`no usable relay descriptor in ${relaysFile}`);
  let relays: Descriptor[] = first.relays;
  const reload = setInterval(() => {
    try {
      relays = load().relays;
    } catch {
      /* keep the last good list */
    }
  }, 60_000);

  KillSwitch.removeStale();
  const device = LinuxTun.open(typeof p.dev === 'string' ? p.dev : 'shallot%d', CIRCUIT_MTU);
  ip(['link', 'set', 'dev', device.name, 'mtu', String(CIRCUIT_MTU), 'up']);
  let killSwitch: KillSwitch | null = null;
  let routing: ClientRouting | null = null;
  let guardKey = '';
  let addressed = false;
  const guardOf = (d: Descriptor) => {
    const a = d.addresses[0] as { host: string; port: number };
    return { host: a.host, port: a.port };
  };
  const node = new ClientNode({
    relays: () => relays,
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
        // The new table first, then the old one away: never a moment without.
        const next = new KillSwitch({
          tunName: device.name,
          guard: g,
          tableName: `shallot_client_${process.pid}${killSwitch ? 'b' : ''}`.slice(0, 40),
        });
        next.start();
        killSwitch?.stop();
        killSwitch = next;
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
    clearInterval(reload);
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
  const publish = (state: string) =>
    writeStatus(dir, {
      role: 'client',
      state,
      pid: process.pid,
      device: device.name,
      updatedAt: new Date().toISOString(),
      memory: { rss: process.memoryUsage().rss },
      killSwitch: killSwitchOn ? { blockedPackets: safeBlocked(killSwitch) } : null,
      ...node.describe(),
    });
  publish('running');
  const timer = setInterval(() => publish('running'), STATUS_INTERVAL_MS);
  return untilSignal(log, () => {
    clearInterval(timer);
    stopAll();
    publish('stopped');
  });
}

function safeBlocked(k: KillSwitch | null): number | null {
  try {
    return k ? k.blockedPackets() : null;
  } catch {
    return null;
  }
}
