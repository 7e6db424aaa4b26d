/** `shallot status`: what a running node reports in its state directory. */
import { errors } from '../errors.js';
import { readStatus } from '../status-file.js';
import { parseArgs, requireString, type CommandSpec } from './args.js';

export const statusSpec: CommandSpec = {
  name: 'status',
  summary: 'show a running node: links, circuits and traffic counters',
  usage: ['shallot status --state DIR [--json]'],
  options: [
    { name: 'state', type: 'string', value: 'DIR', help: 'state directory of the running node' },
    { name: 'json', type: 'flag', help: 'print the raw status as JSON' },
  ],
};

interface PeerView {
  id: string | null;
  address: string;
  state: string;
  cipher: string | null;
  lastHeardMsAgo: number;
  rxPackets: number;
  txPackets: number;
  rxBytes: number;
  txBytes: number;
}

type Obj = Record<string, unknown>;

function alive(pid: unknown): boolean {
  if (typeof pid !== 'number') return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function counters(label: string, o: unknown): string | null {
  if (!o || typeof o !== 'object') return null;
  const parts: string[] = [];
  for (const [k, v] of Object.entries(o as Obj)) {
    if (typeof v === 'number') parts.push(`${k} ${v}`);
    else if (v && typeof v === 'object' && k === 'drops') {
      parts.push(...Object.entries(v as Obj).map(([dk, dv]) => `drop.${dk} ${String(dv)}`));
    }
  }
  return parts.length ? `${label}: ${parts.join(', ')}` : null;
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
  const lines: string[] = [];
  lines.push(
    `${String(s.role)} ${s.id ? String(s.id) + ' ' : ''}${running ? 'running' : 'NOT running'} ` +
      `(pid ${String(s.pid)}, updated ${String(s.updatedAt)})`,
  );
  if (s.device)
    lines.push(
      `device ${String(s.device)}${Array.isArray(s.addresses) ? '  inner ' + s.addresses.join(', ') : ''}`,
    );
  const circuit = s.circuit as
    | {
        state: string;
        hops: { id: string; address?: { host: string; port: number }; exit: boolean }[];
      }
    | null
    | undefined;
  if (s.role === 'client') {
    const lease = s.lease as { v4: string; v6?: string } | null;
    const inner = lease ? lease.v4 + (lease.v6 ? ` and ${lease.v6}` : '') : '(none yet)';
    lines.push(`inner address ${inner}`);
    if (circuit) {
      lines.push(`circuit ${circuit.state}:`);
      circuit.hops.forEach((h, i) =>
        lines.push(
          `  hop ${i + 1}: ${h.id} ${h.address ? `${h.address.host}:${h.address.port}` : ''}${h.exit && i === circuit.hops.length - 1 ? ' (exit)' : ''}`,
        ),
      );
    } else lines.push('circuit: none (building)');
    if (s.lastRejection) lines.push(`last refusal by the exit: ${String(s.lastRejection)}`);
  }
  if (typeof s.circuits === 'number') lines.push(`circuits: ${s.circuits}`);
  const link = s.link as
    { peers?: PeerView[]; counters?: Obj; address?: { host: string; port: number } } | undefined;
  if (link?.peers) {
    lines.push(
      `links: ${link.peers.length}${link.address ? ` (udp ${link.address.host}:${link.address.port})` : ''}`,
    );
    for (const peer of link.peers) {
      lines.push(
        `  ${peer.id ?? '(unauthenticated)'} ${peer.address} ${peer.state} ${peer.cipher ?? ''} ` +
          `rx ${peer.rxPackets}/${peer.rxBytes} B, tx ${peer.txPackets}/${peer.txBytes} B, ` +
          `heard ${(peer.lastHeardMsAgo / 1000).toFixed(1)} s ago`,
      );
    }
  }
  for (const [label, key] of [
    ['tunnel', 'tunnel'],
    ['client', 'client'],
    ['relay', 'relay'],
    ['exit', 'exit'],
  ] as const) {
    const line = counters(label, s[key]);
    if (line) lines.push(line);
  }
  const linkLine = counters('link', link?.counters);
  if (linkLine) lines.push(linkLine);
  console.log(lines.join('\n'));
  return running ? 0 : 1;
}
