/** `shallot status`: what a running node reports in its state directory. */
import { errors } from '../errors.js';
import { readStatus } from '../status-file.js';
import { parseArgs, requireString, type CommandSpec } from './args.js';

export const statusSpec: CommandSpec = {
  name: 'status',
  summary: 'show a running node: its links, peers and traffic counters',
  usage: ['shallot status --state DIR [--json]'],
  options: [
    { name: 'state', type: 'string', value: 'DIR', help: 'state directory of the running node' },
    { name: 'json', type: 'flag', help: 'print the raw status as JSON' },
  ],
};

interface PeerView {
  id: string | null;
  address: string;
  role: string;
  state: string;
  cipher: string | null;
  lastHeardMsAgo: number;
  rxPackets: number;
  txPackets: number;
  rxBytes: number;
  txBytes: number;
}

function alive(pid: unknown): boolean {
  if (typeof pid !== 'number') return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export async function statusCommand(argv: string[]): Promise<number> {
  const p = parseArgs(statusSpec, argv);
  const dir = requireString(p, 'state', 'the state directory of the node');
  const s = readStatus(dir);
  if (!s)
    throw errors.badArgument(`no status in ${dir}: is a shallot node running with --state ${dir}?`);
  const running = s.state === 'running' && alive(s.pid);
  if (p.json === true) {
    console.log(JSON.stringify({ ...s, running }, null, 2));
    return running ? 0 : 1;
  }
  const link = s.link as {
    counters: Record<string, unknown>;
    peers: PeerView[];
    address: { host: string; port: number };
  };
  const tunnel = s.tunnel as {
    fromDevice: number;
    toDevice: number;
    drops: Record<string, number>;
  };
  console.log(
    `node ${String(s.id)}  ${s.role} ${running ? 'running' : 'NOT running'} (pid ${String(s.pid)}, updated ${String(s.updatedAt)})`,
  );
  console.log(
    `device ${String(s.device)}  inner ${(s.addresses as string[]).join(', ')}  udp ${link.address.host}:${link.address.port}`,
  );
  console.log(`peers: ${link.peers.length}`);
  for (const peer of link.peers) {
    console.log(
      `  ${peer.id ?? '(unauthenticated)'} ${peer.address} ${peer.state} ${peer.cipher ?? ''} ` +
        `rx ${peer.rxPackets} pkts/${peer.rxBytes} B, tx ${peer.txPackets} pkts/${peer.txBytes} B, ` +
        `heard ${(peer.lastHeardMsAgo / 1000).toFixed(1)} s ago`,
    );
  }
  console.log(`packets: from device ${tunnel.fromDevice}, to device ${tunnel.toDevice}`);
  const drops = { ...tunnel.drops, ...(link.counters.drops as Record<string, number>) };
  console.log(
    'drops: ' +
      Object.entries(drops)
        .map(([k, v]) => `${k} ${v}`)
        .join(', '),
  );
  return running ? 0 : 1;
}
