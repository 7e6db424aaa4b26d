/**
 * `shallot client`: argument handling and lifecycle around client/:
 * the TUN, routes, kill switch and circuit; all removed again on
 * SIGINT/SIGTERM.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ClientNode } from '../../client/client-node.js';
import { KillSwitch } from '../../client/kill-switch.js';
import { ClientHost } from '../../client/host-network.js';
import { CIRCUIT_MTU, MAX_HOPS } from '../circuit/cells.js';
import { type Descriptor } from '../descriptor/descriptor.js';
import { loadRelayFile } from '../descriptor/relay-list.js';
import { DhtNode } from '../discovery/dht-node.js';
import { RelayFinder } from '../discovery/finder.js';
import { errors } from '../errors.js';
import { parseNodeId } from '../identity.js';
import { UdpTransport } from '../link/transport.js';
import { formatIp, parseCidr, parseIp } from '../net/cidr.js';
import { ip } from '../tun/iproute.js';
import { LinuxTun } from '../tun/linux-tun.js';
import { requireString, type CommandSpec } from './args.js';
import {
  bootstrapList,
  common,
  dhtOptions,
  loggerFor,
  networkName,
  parsed,
  startReporting,
  untilSignal,
} from './node-common.js';

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
  // chosen, the link to the guard (client/host-network.ts).
  const host = new ClientHost({
    tunName: device.name,
    split: split.length ? split : null,
    killSwitch: killSwitchOn,
    allowUdpSourcePorts: allowPorts,
    log,
  });
  host.start();
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
          host.stop();
          device.close();
          throw errors.badConfig(
            `found only ${n} relays of network '${network}' in the DHT: is --bootstrap right?`,
          );
        }
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }
  const node = new ClientNode({
    relays,
    transport: new UdpTransport('0.0.0.0', 0),
    device,
    hops,
    exitId,
    stateDir: dir,
    allowSameSubnet: p['allow-same-subnet'] === true,
    // In full-tunnel mode only the current guard is reachable outside the
    // tunnel (kill switch, host route): other guards are tried by builds.
    retryGuardLinks: split.length > 0,
    log,
    onProgress: (text) => log.info(text),
    onGuard: (guard) => {
      const a = guard.addresses[0];
      if (a) host.onGuard(a);
    },
    onCircuit: (_path, lease) => {
      host.onCircuit(lease);
      const v6 = host.v6 ? ` and ${formatIp(host.v6.address)}` : '';
      process.stdout.write(`circuit ready: inner address ${formatIp(lease.v4)}${v6}\n`);
    },
  });
  const stopAll = () => {
    stopDiscovery();
    node.stop();
    host.stop();
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
      killSwitch: host.killSwitchOn ? { blockedPackets: host.blockedPackets() } : null,
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
