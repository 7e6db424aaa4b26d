/** `shallot tunnel`: direct mode, a DTLS tunnel between TUN devices. */
import { DirectTunnel, TUNNEL_MTU, type TunnelMode } from '../direct/tunnel.js';
import { errors } from '../errors.js';
import { loadIdentity, parseNodeId } from '../identity.js';
import { UdpTransport } from '../link/transport.js';
import { createLogger, type LogLevel } from '../log.js';
import { parseCidr, parseHostPort, type Cidr } from '../net/cidr.js';
import { STATUS_INTERVAL_MS, writeStatus } from '../status-file.js';
import { configureInterface } from '../tun/iproute.js';
import { LinuxTun } from '../tun/linux-tun.js';
import {
  mergeConfigFile,
  parseArgs,
  requireString,
  type CommandSpec,
  type Parsed,
} from './args.js';

export const tunnelSpec: CommandSpec = {
  name: 'tunnel',
  summary: 'run an encrypted point-to-point tunnel (direct mode) between TUN devices',
  usage: [
    'shallot tunnel --state DIR --listen HOST:PORT --address CIDR --peer ID[,ID...]',
    'shallot tunnel --state DIR --connect HOST:PORT --address CIDR --peer ID',
    'shallot tunnel --config FILE',
  ],
  details:
    'One side listens, the others connect. Links are DTLS 1.2 over UDP (ECDHE, ChaCha20-Poly1305\n' +
    'or AES-GCM); each end proves its node id, and a connection to or from any other id is refused.\n' +
    "The listener gives each peer the inner address it claims inside the listener's prefix and\n" +
    'accepts from a peer only packets sourced from that address. Needs root (a TUN device).\n' +
    `Inner MTU ${TUNNEL_MTU}: a full packet plus DTLS fits one 1452-byte link datagram.\n` +
    'Peers are declared dead after --dead-after seconds without a word (keepalives every\n' +
    '--keepalive seconds), and a connecting side redials on its own. Ctrl-C stops it and removes\n' +
    'the device. The config file is YAML with the same names, e.g. "listen: 0.0.0.0:7000".',
  options: [
    { name: 'state', type: 'string', value: 'DIR', help: 'state directory (from shallot keygen)' },
    {
      name: 'listen',
      type: 'string',
      value: 'HOST:PORT',
      help: 'accept peers on this UDP address',
    },
    { name: 'connect', type: 'string', value: 'HOST:PORT', help: 'connect to a listening peer' },
    {
      name: 'peer',
      type: 'list',
      value: 'ID[,ID...]',
      help: 'node id(s) of the peer(s): the one to connect to, or those allowed to connect',
    },
    {
      name: 'any-peer',
      type: 'flag',
      help: 'listener: accept any node id (each still proves its id; addresses stay exclusive)',
    },
    {
      name: 'address',
      type: 'list',
      value: 'CIDR[,CIDR]',
      help: 'inner address(es) of this end, IPv4 and/or IPv6, e.g. 10.9.0.1/24,fd09::1/64',
    },
    { name: 'dev', type: 'string', value: 'NAME', help: 'TUN device name (default shallot%d)' },
    {
      name: 'keepalive',
      type: 'string',
      value: 'SECONDS',
      help: 'send a keepalive after this much silence (default 2.5)',
    },
    {
      name: 'dead-after',
      type: 'string',
      value: 'SECONDS',
      help: 'declare the peer dead after this much silence (default 10)',
    },
    {
      name: 'log-level',
      type: 'string',
      value: 'LEVEL',
      help: 'debug, info (default), warn, error',
    },
    {
      name: 'config',
      type: 'string',
      value: 'FILE',
      help: 'YAML file with any of these options',
      cliOnly: true,
    },
  ],
  examples: [
    'shallot tunnel --state /var/lib/shallot --listen 0.0.0.0:7000 --address 10.9.0.1/24 --peer 3f2a...',
    'shallot tunnel --state /var/lib/shallot --connect 198.51.100.7:7000 --address 10.9.0.2/24 --peer 9c41...',
  ],
};

function seconds(p: Parsed, name: string): number | undefined {
  const v = p[name];
  if (v === undefined) return undefined;
  const n = Number(v);
  if (typeof v !== 'string' || !Number.isFinite(n) || n <= 0 || n > 3600) {
    throw errors.badArgument(`--${name} must be a number of seconds between 0 and 3600`);
  }
  return Math.round(n * 1000);
}

function parseIds(list: string[]): string[] {
  return list.map((text) => {
    const id = parseNodeId(text);
    if (!id) {
      throw errors.badArgument(
        `peer id '${text}' is not a node id (64 hex digits, as printed by shallot keygen / shallot id)`,
      );
    }
    return id.toString('hex');
  });
}

function parseAddresses(list: string[] | undefined): Cidr[] {
  if (!list || list.length === 0) {
    throw errors.badArgument(
      '--address is required: the inner address of this end, e.g. 10.9.0.1/24',
    );
  }
  const out = list.map((a) => parseCidr(a, '--address'));
  if (
    out.filter((a) => a.family === 4).length > 1 ||
    out.filter((a) => a.family === 6).length > 1
  ) {
    throw errors.badArgument('--address takes at most one IPv4 and one IPv6 prefix');
  }
  return out;
}

export async function tunnelCommand(argv: string[]): Promise<number> {
  let p = parseArgs(tunnelSpec, argv);
  if (typeof p.config === 'string') p = mergeConfigFile(tunnelSpec, p, p.config);
  const dir = requireString(p, 'state', 'the state directory made by shallot keygen');
  const level = (p['log-level'] ?? 'info') as LogLevel;
  if (!['debug', 'info', 'warn', 'error'].includes(level)) {
    throw errors.badArgument('--log-level must be debug, info, warn or error');
  }
  const log = createLogger(level);
  if ((p.listen === undefined) === (p.connect === undefined)) {
    throw errors.badArgument('give exactly one of --listen HOST:PORT or --connect HOST:PORT');
  }
  const addresses = parseAddresses(p.address as string[] | undefined);
  const ids = parseIds((p.peer as string[] | undefined) ?? []);
  let mode: TunnelMode;
  let bind: { host: string; port: number };
  if (typeof p.listen === 'string') {
    bind = parseHostPort(p.listen, '--listen');
    if (ids.length === 0 && p['any-peer'] !== true) {
      throw errors.badArgument(
        '--peer ID[,ID...] names who may connect (or --any-peer to accept any node)',
      );
    }
    mode = { kind: 'listen', allowedIds: p['any-peer'] === true ? null : new Set(ids) };
  } else {
    const target = parseHostPort(p.connect as string, '--connect');
    if (ids.length !== 1)
      throw errors.badArgument(
        '--connect needs exactly one --peer ID: the node id of the listener',
      );
    if (p['any-peer'] === true) throw errors.badArgument('--any-peer only applies to --listen');
    bind = { host: target.host.includes(':') ? '::' : '0.0.0.0', port: 0 };
    mode = { kind: 'connect', host: target.host, port: target.port, peerId: ids[0] as string };
  }
  const deadPeerAfterMs = seconds(p, 'dead-after');
  const keepaliveIntervalMs = seconds(p, 'keepalive');
  const identity = loadIdentity(dir);

  const device = LinuxTun.open(typeof p.dev === 'string' ? p.dev : 'shallot%d', TUNNEL_MTU);
  let tunnel: DirectTunnel | undefined;
  try {
    configureInterface(
      device.name,
      addresses.map((a) => a.text),
      TUNNEL_MTU,
    );
    tunnel = new DirectTunnel({
      identity,
      transport: new UdpTransport(bind.host, bind.port),
      device,
      addresses,
      mode,
      log,
      ...(deadPeerAfterMs !== undefined ? { deadPeerAfterMs } : {}),
      ...(keepaliveIntervalMs !== undefined ? { keepaliveIntervalMs } : {}),
    });
    try {
      await tunnel.start();
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EADDRINUSE')
        throw errors.badArgument(`UDP ${bind.host}:${bind.port} is already in use`);
      if (code === 'EADDRNOTAVAIL')
        throw errors.badArgument(`${bind.host} is not an address of this host`);
      throw e;
    }
  } catch (e) {
    tunnel?.stop();
    device.close();
    throw e;
  }
  const t = tunnel;
  const local = t.endpoint.describe() as { address: { host: string; port: number } };
  log.info(
    `node ${identity.id} tunnel on ${device.name} (${addresses.map((a) => a.text).join(', ')}, mtu ${TUNNEL_MTU}); ` +
      (mode.kind === 'listen'
        ? `listening on ${local.address.host}:${local.address.port}`
        : `connecting to ${mode.host}:${mode.port}`),
  );
  const publish = (state: string) =>
    writeStatus(dir, {
      role: 'tunnel',
      state,
      pid: process.pid,
      id: identity.id,
      device: device.name,
      updatedAt: new Date().toISOString(),
      memory: { rss: process.memoryUsage().rss, heapUsed: process.memoryUsage().heapUsed },
      ...t.describe(),
      deviceStats: device.stats(),
    });
  publish('running');
  const timer = setInterval(() => publish('running'), STATUS_INTERVAL_MS);
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info(`${signal}: stopping, removing ${device.name}`);
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
      clearInterval(timer);
      t.stop();
      publish('stopped');
      resolve();
    };
    const onInt = () => stop('SIGINT');
    const onTerm = () => stop('SIGTERM');
    process.on('SIGINT', onInt);
    process.on('SIGTERM', onTerm);
  });
  return 0;
}
