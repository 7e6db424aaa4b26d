/**
 * `shallot relay`, `shallot exit` and `shallot descriptor`: argument
 * handling and lifecycle around the role classes in relay/ and exit/.
 * Everything a command sets up (devices, routes, nftables tables) it
 * removes again on SIGINT/SIGTERM.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AddressPool } from '../../exit/address-pool.js';
import { ExitHandler } from '../../exit/exit-node.js';
import { ExitNat } from '../../exit/nat.js';
import { ExitPolicy, parseAllowList, parsePolicyFile } from '../../exit/policy.js';
import { fileOnionKeys, RelayMaintenance } from '../../relay/maintenance.js';
import { RelayNode } from '../../relay/relay-node.js';
import { CIRCUIT_MTU } from '../circuit/cells.js';
import { descriptorToText, signDescriptor } from '../descriptor/descriptor.js';
import { DhtNode } from '../discovery/dht-node.js';
import { DescriptorPublisher } from '../discovery/publisher.js';
import { errors } from '../errors.js';
import { loadIdentity, ONION_KEY_ROTATE_S, type Identity } from '../identity.js';
import { formatHostPort } from '../link/endpoint.js';
import { UdpTransport } from '../link/transport.js';
import { type Logger } from '../log.js';
import { formatIp, parseCidr, parseHostPort, type Cidr } from '../net/cidr.js';
import { configureInterface } from '../tun/iproute.js';
import { LinuxTun } from '../tun/linux-tun.js';
import { parseArgs, requireString, type CommandSpec, type Parsed } from './args.js';
import {
  bindError,
  bootstrapList,
  common,
  dhtOptions,
  loggerFor,
  networkName,
  parsed,
  startReporting,
  untilSignal,
} from './node-common.js';

const DESCRIPTOR_FILE = 'descriptor.txt';
const DESCRIPTOR_LIFETIME_S = 24 * 3600;
const DESCRIPTOR_REFRESH_MS = 3600_000;

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
  {
    name: 'allow-private-extend',
    type: 'flag',
    help: 'extend circuits to loopback, private, link-local addresses and this host (test networks only)',
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

export const descriptorSpec: CommandSpec = {
  name: 'descriptor',
  summary: "print a relay's current signed descriptor (one line, for a client's --relays file)",
  usage: ['shallot descriptor --state DIR'],
  options: [common.state],
};

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
  const warning = advertiseWarning(advertise, listen, localAddresses());
  if (warning) log.warn(warning);
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
    // Relays on private addresses (a testnet) must say so: by default an
    // EXTEND to loopback, a private network or this host is refused.
    allowPrivateExtend: p['allow-private-extend'] === true,
    ownAddresses: [...localAddresses(), advertise.host],
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
  // Onion key rotation and descriptor renewal (relay/maintenance.ts); the
  // publisher, once there, is told of every new descriptor.
  let publisher: DescriptorPublisher | null = null;
  const maintenance = new RelayMaintenance({
    node: s.node,
    keys: fileOnionKeys(s.dir, s.identity),
    rotateAfterMs: s.onionRotateS * 1000,
    renewAfterMs: Math.min(DESCRIPTOR_REFRESH_MS, Math.floor((s.lifetimeS * 1000) / 3)),
    publish: () => {
      publishDescriptor(s, policy);
      void publisher?.publishNow();
    },
    log: s.log,
  });
  maintenance.start();
  let dht: DhtNode | null = null;
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
      maintenance.stop();
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
    maintenance.stop();
    publisher?.stop();
    dht?.stop();
    s.node.stop();
    extraStop();
    throw e;
  }
  return untilSignal(s.log, () => {
    maintenance.stop();
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
/** Every address of this host's interfaces. */
function localAddresses(): string[] {
  return Object.values(os.networkInterfaces()).flatMap((l) => (l ?? []).map((a) => a.address));
}

/**
 * Why clients may not reach this relay at the address its descriptor
 * lists, or null. Clients accept a relay only if its key query is answered
 * from the listed address and port, so a mismatch shows up for them only
 * as a rejected relay (finder counter address-mismatch): say it here.
 */
export function advertiseWarning(
  advertise: { host: string; port: number },
  listen: { host: string; port: number },
  local: string[],
): string | null {
  const shown = `--advertise ${formatHostPort(advertise.host, advertise.port)}`;
  const wildcard = listen.host === '0.0.0.0' || listen.host === '::';
  if (!local.includes(advertise.host)) {
    return (
      `${shown}: not an address of this host; clients must reach this relay there, ` +
      `so a port forward or 1:1 NAT to ${formatHostPort(listen.host, listen.port)} is needed`
    );
  }
  if (!wildcard && advertise.host !== listen.host) {
    return `${shown}: this relay listens on ${listen.host} only, so clients will not reach it there`;
  }
  if (advertise.port !== listen.port) {
    return `${shown}: this relay listens on port ${listen.port}, so clients need a port forward`;
  }
  return null;
}

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
  const stale = ExitNat.removeStale();
  if (stale.length > 0) {
    s.log.info(`removed the nftables tables of exits that died: ${stale.join(', ')}`);
  }
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
