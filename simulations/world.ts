/**
 * Builds the simulated overlay the way test/unit/circuit-memory.test.ts
 * does, only more of it, on any clock (a VirtualClock with a MemoryNetwork
 * on the same clock: deterministic, time moves when the caller moves it): relays and exits with fresh identities and signed
 * (and verified) descriptors on one MemoryNetwork, each exit a RelayNode
 * with an ExitHandler on a MemoryDevice, and clients (ClientNode) that get
 * the list of descriptors. Everything is the real node code: DTLS through
 * the native addon, ntor handshakes, onion layers, exit policy and leases.
 *
 * Addresses: relays and exits are spread round-robin over `nets` IPv4 /16s
 * (100.64.0.0/16, 100.65.0.0/16, ...), each in its own /24 as long as a
 * /16 has fewer than 256 of them (then two per /24, which is still within
 * the path selector's cap of two per /24). Clients live in 10.9.0.0/16.
 * Behind every exit, 10.7.0.0/16 is the destination network (allowed by
 * the exit policy); leases come from 10.200.0.0/16.
 */
import { ClientNode, type Lease } from '../client/client-node.js';
import { AddressPool } from '../exit/address-pool.js';
import { ExitHandler } from '../exit/exit-node.js';
import { ExitPolicy, parseAllowList } from '../exit/policy.js';
import { RelayNode } from '../relay/relay-node.js';
import { signDescriptor, verifyDescriptor, type Descriptor } from '../src/descriptor/descriptor.js';
import { ephemeralIdentity, type Identity } from '../src/identity.js';
import type { MemoryNetwork } from '../src/link/transport.js';
import { parseCidr } from '../src/net/cidr.js';
import { realClock, type Clock } from '../src/time/clock.js';
import { ClientDevice, EchoHostDevice } from './packets.js';
import { type DialWatch, SimTransport } from './util.js';

export const NETWORK_NAME = 'sim';
export const RELAY_PORT = 7000;
export const CLIENT_PORT = 40000;
export const DESTINATION_NET = '10.7.0.0/16';
const LEASE_POOL = '10.200.0.1/16';

export interface SimNode {
  /** 0-based over relays then exits. */
  index: number;
  id: string;
  identity: Identity;
  host: string;
  /** The /16 it counts as ("100.64"). */
  net16: string;
  desc: Descriptor;
  node: RelayNode;
  transport: SimTransport;
  exit: ExitHandler | null;
  device: EchoHostDevice | null;
  killed: boolean;
}

/** Address of relay/exit number k: round-robin over the /16s, one /24 each while they last. */
export function nodeHost(k: number, nets: number): string {
  const j = Math.floor(k / nets);
  return `100.${64 + (k % nets)}.${j % 256}.${2 + Math.floor(j / 256)}`;
}

export function clientHost(i: number): string {
  return `10.9.${Math.floor(i / 250)}.${2 + (i % 250)}`;
}

/** The /16 of a dotted IPv4 address, computed here (not with client/path.ts) to check it. */
export function slash16(host: string): string {
  return host.split('.').slice(0, 2).join('.');
}

function describe(id: Identity, host: string, exit: boolean, clock: Clock): Descriptor {
  const now = Math.floor(clock.now() / 1000);
  const wire = signDescriptor(id, {
    addresses: [{ host, port: RELAY_PORT }],
    roles: { relay: true, exit },
    policy: exit ? `accept ${DESTINATION_NET}` : '',
    bandwidth: 1000,
    published: now,
    expires: now + 3600,
    network: NETWORK_NAME,
  });
  const r = verifyDescriptor(wire, { now, network: NETWORK_NAME });
  if (!r.ok) throw new Error(`a fresh descriptor failed verification: ${r.reason}`);
  return r.descriptor;
}

/** Start one relay (or exit) at address number k. */
export async function startNode(
  net: MemoryNetwork,
  k: number,
  nets: number,
  isExit: boolean,
  watch: DialWatch | null = null,
  clock: Clock = realClock,
): Promise<SimNode> {
  const identity = ephemeralIdentity();
  const host = nodeHost(k, nets);
  const transport = new SimTransport(net.transport(host, RELAY_PORT), watch);
  // Simulated relays live in 100.64/10: private, so extending there must be allowed.
  const node = new RelayNode({ identity, transport, allowPrivateExtend: true, clock });
  let exit: ExitHandler | null = null;
  let device: EchoHostDevice | null = null;
  if (isExit) {
    device = new EchoHostDevice(`exit${k}`);
    exit = new ExitHandler(
      node,
      device,
      new AddressPool(parseCidr(LEASE_POOL)),
      new ExitPolicy({
        allow: parseAllowList([DESTINATION_NET]),
        ownNetworks: [parseCidr(`${host}/16`)],
      }),
      { clock },
    );
    node.lastHop = exit;
  }
  await node.start();
  exit?.start();
  return {
    index: k,
    id: identity.id,
    identity,
    host,
    net16: slash16(host),
    desc: describe(identity, host, isExit, clock),
    node,
    transport,
    exit,
    device,
    killed: false,
  };
}

export function stopNode(n: SimNode): void {
  n.exit?.stop();
  n.node.stop();
}

export interface ClientHooks {
  onCircuit: (path: Descriptor[], lease: Lease) => void;
  onEcho: (sentAt: number) => void;
  onProgress?: (text: string) => void;
}

export interface SimClientParts {
  host: string;
  node: ClientNode;
  device: ClientDevice;
  transport: SimTransport;
}

/** A client (not started) that knows every descriptor. */
export function makeClient(
  net: MemoryNetwork,
  i: number,
  descriptors: Descriptor[],
  hooks: ClientHooks,
  clock: Clock = realClock,
): SimClientParts {
  const host = clientHost(i);
  const transport = new SimTransport(net.transport(host, CLIENT_PORT));
  const device = new ClientDevice(`c${i}`, i, hooks.onEcho);
  const node = new ClientNode({
    relays: () => descriptors,
    transport,
    device,
    hops: 3,
    stateDir: null,
    clock,
    onCircuit: (path, lease) => hooks.onCircuit(path, lease),
    onProgress: hooks.onProgress,
  });
  return { host, node, device, transport };
}
