/**
 * `shallot testnet up|status|exec|down`: a whole overlay on this machine in
 * network namespaces (see testnet.ts for the layout). `up` leaves it
 * running, `down` removes it, also after a crash.
 */
import { parseArgs, type CommandSpec } from '../cli/args.js';
import { errors } from '../errors.js';
import { systemRunner } from '../sys/command-runner.js';
import {
  alive,
  DOWNLOAD_BYTES,
  execIn,
  MAX_EXITS,
  MAX_RELAYS,
  NETWORK,
  nodeStatus,
  readDoc,
  stateRoot,
  TestnetBuilder,
  testnetNamespaces,
  teardown,
  TRAFFIC,
  type Progress,
  type TestnetDoc,
  type TestnetNode,
} from './testnet.js';

const DEFAULT_RELAYS = 3;
const DEFAULT_EXITS = 1;

export const testnetSpec: CommandSpec = {
  name: 'testnet',
  summary: 'a whole overlay on this machine (namespaces): relays, exits, a client, a web server',
  usage: [
    'shallot testnet up [--relays N] [--exits M]',
    'shallot testnet status',
    'shallot testnet exec NODE -- COMMAND [ARGS...]',
    'shallot testnet down',
  ],
  details:
    'Builds a small shallot network on this machine, so you can watch onion routing work\n' +
    'before you run nodes on real hosts. Needs root (namespaces, TUN devices, nftables).\n' +
    '\n' +
    '  up      creates network namespaces joined by a router namespace (shtn-router), each\n' +
    '          host on its own /16: N relays (shtn-relay1.., 10.101.0.2..), M exits (shtn-exit1..,\n' +
    '          10.151.0.2..), a destination running a web server (shtn-dest, 10.20.0.2:8080,\n' +
    `          ${DOWNLOAD_BYTES >> 20} MiB at /download) and a client (shtn-client, 10.30.0.2). It starts real\n` +
    `          shallot relay/exit/client processes (network "${NETWORK}") that keep running after\n` +
    '          it returns, waits for the client to build a circuit guard -> middle -> exit, shows\n' +
    "          the circuit's hops and a download through it. All of the client namespace's\n" +
    '          traffic goes through the circuit (full tunnel, kill switch on). The destination,\n' +
    '          the exits and the client have IPv6 too (fd00:20::2 is the destination): IPv6\n' +
    "          crosses the circuit as well, from an address of the exits' pool fd00:200::/64.\n" +
    '  status  each node: role, namespace, address, running or not, and its counters; the\n' +
    "          client's circuit and inner address.\n" +
    "  exec    runs COMMAND inside a node's namespace (NODE: client, dest, relay1, exit1, ...).\n" +
    '          From the client, it goes through the overlay.\n' +
    '  down    stops every process (SIGTERM, SIGKILL after 5 s), deletes the shtn-* namespaces\n' +
    '          and the state; also cleans up after a crash. Nothing up: says so.\n' +
    '\n' +
    `State, logs and pid files: ${stateRoot()}/ (testnet.json, one directory per node).`,
  options: [
    {
      name: 'relays',
      type: 'string',
      value: 'N',
      help: `up: number of relays, 2-${MAX_RELAYS} (default ${DEFAULT_RELAYS})`,
    },
    {
      name: 'exits',
      type: 'string',
      value: 'M',
      help: `up: number of exits, 1-${MAX_EXITS} (default ${DEFAULT_EXITS})`,
    },
  ],
  examples: [
    'shallot testnet up',
    'shallot testnet exec client -- curl -o /dev/null http://10.20.0.2:8080/download',
    'shallot testnet exec client -- ping -c 3 10.20.0.2',
    'shallot testnet exec client -- ping -6 -c 3 fd00:20::2',
    'shallot testnet status',
    'shallot testnet exec relay1 -- ss -uan',
    'shallot testnet down',
  ],
};

const upSpec: CommandSpec = {
  name: 'testnet up',
  summary: testnetSpec.summary,
  usage: [testnetSpec.usage[0] as string],
  options: testnetSpec.options,
};
const noOptions = (name: string): CommandSpec => ({
  name: `testnet ${name}`,
  summary: testnetSpec.summary,
  usage: [],
  options: [],
});

function requireRoot(): void {
  if (process.getuid?.() !== 0)
    throw errors.needRoot('shallot testnet (network namespaces, TUN devices, nftables)');
}

function count(v: unknown, name: string, min: number, max: number, dflt: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max)
    throw errors.badArgument(`--${name} must be a whole number from ${min} to ${max}`);
  return n;
}

export async function testnetCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  switch (sub) {
    case 'up':
      return up(rest);
    case 'status':
      parseArgs(noOptions('status'), rest);
      requireRoot();
      return status();
    case 'exec':
      return exec(rest);
    case 'down':
      parseArgs(noOptions('down'), rest);
      requireRoot();
      return down();
    case undefined:
      throw errors.badArgument(
        "shallot testnet needs a subcommand: up, status, exec or down (see 'shallot testnet --help')",
      );
    default:
      throw errors.badArgument(
        `unknown subcommand '${sub}' for 'shallot testnet': up, status, exec or down`,
      );
  }
}

// --- output ---------------------------------------------------------------------

function progress(): Progress {
  return {
    step: (text) => console.log(`==> ${text}`),
    detail: (text) => console.log(`    ${text}`),
    wait(what) {
      process.stdout.write(`    waiting for ${what} `);
      let ticks = 0;
      return {
        tick: () => {
          if (++ticks % 2 === 0) process.stdout.write('.');
        },
        done: (text) => process.stdout.write(` ${text}\n`),
      };
    },
  };
}

const haveCurl = (() => {
  try {
    return systemRunner.run('sh', ['-c', 'command -v curl'], { allowFail: true }).status === 0;
  } catch {
    return false;
  }
})();

// --- up -----------------------------------------------------------------------------

async function up(argv: string[]): Promise<number> {
  const p = parseArgs(upSpec, argv);
  const relays = count(p.relays, 'relays', 2, MAX_RELAYS, DEFAULT_RELAYS);
  const exits = count(p.exits, 'exits', 1, MAX_EXITS, DEFAULT_EXITS);
  requireRoot();
  const builder = new TestnetBuilder(progress());
  let interrupted = false;
  const onSignal = () => {
    if (interrupted) return;
    interrupted = true;
    console.log('\n==> interrupted: removing what was built');
    void builder.abort().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const r = await builder.up(relays, exits);
    const url = r.doc.url;
    const fetchCmd = haveCurl ? `curl -o /dev/null ${url}` : `node ${TRAFFIC} fetch ${url}`;
    console.log(`==> the testnet is up; the destination's URL is ${url}`);
    console.log('    Try it from the client (everything it sends goes through the circuit):');
    console.log(`      shallot testnet exec client -- ${fetchCmd}`);
    console.log(
      '      shallot testnet exec client -- ping -c 3 ' + url.split('/')[2]?.split(':')[0],
    );
    const dest6 = /^http:\/\/\[([0-9a-f:]+)\]/.exec(r.doc.url6 ?? '')?.[1];
    if (dest6) console.log(`      shallot testnet exec client -- ping -6 -c 3 ${dest6}`);
    console.log('    shallot testnet status     nodes, circuits and counters');
    console.log('    shallot testnet down       stop everything and remove the namespaces');
    console.log(`    logs and state: ${stateRoot()}/NODE/node.log`);
    return 0;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

// --- status ----------------------------------------------------------------------

type Obj = Record<string, unknown>;

function obj(v: unknown): Obj {
  return v && typeof v === 'object' ? (v as Obj) : {};
}

function num(v: unknown): number {
  return typeof v === 'number' ? v : 0;
}

function drops(v: unknown): string {
  const entries = Object.entries(obj(v)).filter(([, n]) => num(n) > 0);
  const total = entries.reduce((a, [, n]) => a + num(n), 0);
  return total === 0
    ? 'drops 0'
    : `drops ${total} (${entries.map(([k, n]) => `${k} ${num(n)}`).join(', ')})`;
}

function counterLines(n: TestnetNode, s: Obj | null, doc: TestnetDoc): string[] {
  if (n.role === 'dest') return [`serves ${doc.url} and /sha`];
  if (!s) return ['(no status yet)'];
  const out: string[] = [];
  if (n.role === 'relay' || n.role === 'exit') {
    const r = obj(s.relay);
    out.push(
      `circuits ${num(s.circuits)}; cells in ${num(r.cellsIn)}, out ${num(r.cellsOut)}; ${drops(r.drops)}`,
    );
    if (n.role === 'exit') {
      const x = obj(s.exit);
      out.push(
        `to the internet ${num(x.toInternet)} packets, from it ${num(x.fromInternet)}; ` +
          `leases ${num(x.leases)}; ${drops(x.drops)}`,
      );
    }
  } else if (n.role === 'client') {
    const c = s.circuit ? obj(s.circuit) : null;
    const lease = s.lease ? obj(s.lease) : null;
    const k = obj(s.client);
    out.push(
      `circuit ${c ? String(c.state) : 'none (building)'}; inner address ${lease ? String(lease.v4) + (lease.v6 ? ` and ${String(lease.v6)}` : '') : '(none yet)'}`,
    );
    if (c) {
      const hops = (Array.isArray(c.hops) ? c.hops : []).map((h) => {
        const hop = obj(h);
        const a = obj(hop.address);
        const name = doc.nodes.find((x) => x.id === hop.id)?.name ?? String(hop.id).slice(0, 12);
        return `${name} ${String(a.host)}:${String(a.port)}`;
      });
      out.push(`hops: ${hops.join(' -> ')}`);
      out.push(`cells in ${num(c.cellsIn)}, out ${num(c.cellsOut)}; ${drops(k.drops)}`);
    } else out.push(drops(k.drops));
    if (s.lastRejection) out.push(`last refusal by the exit: ${String(s.lastRejection)}`);
  }
  if (s.dht && typeof s.dht === 'object') {
    const d = obj(s.dht);
    out.push(
      `DHT: ${num(d.nodes)} nodes known` +
        (n.role === 'relay' || n.role === 'exit'
          ? d.published === true
            ? '; descriptor published'
            : '; descriptor NOT published yet'
          : ''),
    );
  }
  return out;
}

async function status(): Promise<number> {
  const doc = readDoc();
  if (!doc) {
    const left = testnetNamespaces();
    if (left.length > 0) {
      console.log(
        `no testnet is up, but namespaces of a broken one are left (${left.join(' ')}): 'shallot testnet down' removes them`,
      );
    } else console.log("no testnet is up: start one with 'shallot testnet up'");
    return 1;
  }
  const statuses = await Promise.all(doc.nodes.map((n) => nodeStatus(n)));
  const live = testnetNamespaces();
  console.log(
    `testnet up since ${doc.createdAt}: network "${doc.network}", ` +
      (doc.discovery === 'dht' ? 'discovery through the DHT' : `relays file ${doc.relaysFile}`) +
      `; state in ${stateRoot()}`,
  );
  const w = {
    name: Math.max(4, ...doc.nodes.map((n) => n.name.length)),
    role: 9,
    ns: Math.max(9, ...doc.nodes.map((n) => n.namespace.length)),
    addr: Math.max(7, ...doc.nodes.map((n) => addrOf(n).length)),
  };
  console.log(
    `${'NODE'.padEnd(w.name)}  ${'ROLE'.padEnd(w.role)}  ${'NAMESPACE'.padEnd(w.ns)}  ${'ADDRESS'.padEnd(w.addr)}  STATE`,
  );
  let allRunning = true;
  doc.nodes.forEach((n, i) => {
    const running = alive(n.pid) && live.includes(n.namespace);
    if (!running) allRunning = false;
    console.log(
      `${n.name.padEnd(w.name)}  ${n.role.padEnd(w.role)}  ${n.namespace.padEnd(w.ns)}  ${addrOf(n).padEnd(w.addr)}  ` +
        (running ? `running (pid ${n.pid})` : 'NOT running') +
        (running ? '' : `: see ${n.log}`),
    );
    for (const line of counterLines(n, statuses[i] ?? null, doc))
      console.log(`${' '.repeat(w.name + 2)}${line}`);
  });
  return allRunning ? 0 : 1;
}

function addrOf(n: TestnetNode): string {
  return n.port ? `${n.address}:${n.port}` : n.address;
}

// --- exec -----------------------------------------------------------------------------

async function exec(argv: string[]): Promise<number> {
  const [name, ...after] = argv;
  const cmd = after[0] === '--' ? after.slice(1) : after;
  if (!name || name.startsWith('-') || cmd.length === 0) {
    throw errors.badArgument(
      'usage: shallot testnet exec NODE -- COMMAND [ARGS...]  (NODE: client, dest, relay1, exit1, ...)',
    );
  }
  requireRoot();
  const doc = readDoc();
  if (!doc) throw errors.badArgument("no testnet is up: start one with 'shallot testnet up'");
  const node =
    doc.nodes.find((n) => n.name === name || n.namespace === name) ??
    (name === 'router' || name === doc.router.namespace
      ? { namespace: doc.router.namespace }
      : null);
  if (!node) {
    throw errors.badArgument(
      `no node '${name}' in the testnet: ${doc.nodes.map((n) => n.name).join(', ')} or router`,
    );
  }
  return execIn(node.namespace, cmd);
}

// --- down ----------------------------------------------------------------------------

async function down(): Promise<number> {
  const r = await teardown((text) => console.log(`==> ${text}`));
  if (!r.wasUp) {
    console.log('no testnet is up: nothing to remove');
    return 0;
  }
  console.log('==> the testnet is down');
  return 0;
}
