/**
 * Two real clients behind one real exit; client A forges packets into its
 * circuit that the kernel's NAT at the exit would tie to client B's flow
 * (protocol 9.6, threat model 5). Real shallot processes, TUN devices,
 * DTLS, nftables, in namespaces joined by a router namespace R:
 *
 *   A 10.1.0.2 (client)   B 10.2.0.2 (client)   E 10.5.0.2 (exit)
 *   D 10.7.0.2 (destination, reached through --allow)
 *
 * The clients use 1-hop circuits (the exit is their guard): the hop count
 * changes nothing at the exit, and the test stays small. Leases are
 * predictable; A reads B's from B's status, as an attacker would guess it.
 * A's forged packets are written with a raw socket in A's namespace
 * (fixtures/raw-forge.py), so they enter A's TUN like any packet of A's.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { e2eSkipReason, Lab, sweepStale, waitFor } from '../helpers/netns.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..', '..');
const CLI = path.join(root, 'dist', 'src', 'cli', 'main.js');
const FORGE = path.join(root, 'test', 'e2e', 'fixtures', 'raw-forge.py');
const NODE = process.execPath;
const NET = 'icmptest';
const MARKER = 'OUT-OF-WINDOW-MARKER-77c1';

const skip = e2eSkipReason(['ping', 'tcpdump', 'nft', 'python3']);

type Proc = ReturnType<Lab['spawn']>;

/** UDP echo server: echoes every datagram. */
const UDP_ECHO = `
const s = require('node:dgram').createSocket('udp4');
s.on('message', (m, r) => s.send(m, r.port, r.address));
s.bind(Number(process.argv[1]), () => console.log('ready'));
`;

/**
 * B's flow: a connected UDP socket from a fixed port; one datagram every
 * 50 ms for DURATION ms. Prints "echo N" per echo, "error CODE" for any
 * error the kernel reports on the socket (an ICMP error reaching it), and
 * "sent N" at the end.
 */
const UDP_FLOW = `
const [host, port, sport, ms] = process.argv.slice(1);
const s = require('node:dgram').createSocket('udp4');
let n = 0;
s.on('message', () => console.log('echo'));
s.on('error', (e) => console.log('error ' + e.code));
s.bind(Number(sport), () => s.connect(Number(port), host, () => {
  console.log('connected');
  const t = setInterval(() => { n += 1; s.send('x' + n); }, 50);
  setTimeout(() => { clearInterval(t); setTimeout(() => { console.log('sent ' + n); process.exit(0); }, 500); }, Number(ms));
}));
`;

/** TCP server: prints "got MARKER" if the marker ever arrives. */
const TCP_SINK = `
const marker = process.argv[2];
require('node:net').createServer((c) => {
  c.on('data', (d) => { if (d.includes(marker)) console.log('got marker'); });
  c.on('error', () => {});
}).listen(Number(process.argv[1]), () => console.log('ready'));
`;

describe(
  'forged ICMP errors between two clients of one exit',
  { skip: skip ?? false, timeout: 240_000 },
  () => {
    const lab = new Lab();
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'shallot-icmp-'));
    const ns: Record<string, string> = {};
    const procs: Record<string, Proc> = {};
    const addr: Record<string, string> = {
      A: '10.1.0.2',
      B: '10.2.0.2',
      E: '10.5.0.2',
      D: '10.7.0.2',
    };
    const lease: Record<string, string> = {};
    const dirOf = (n: string) => path.join(tmp, n);
    const relaysFile = path.join(tmp, 'relays.txt');
    let exitId = '';

    const status = async (n: string) =>
      JSON.parse(
        (await lab.exec(ns[n] as string, NODE, [CLI, 'status', '--state', dirOf(n), '--json']))
          .stdout,
      ) as Record<string, unknown>;
    const startClient = (n: string) =>
      lab.spawn(ns[n] as string, NODE, [
        CLI,
        'client',
        '--state',
        dirOf(n),
        '--relays',
        relaysFile,
        '--network',
        NET,
        '--hops',
        '1',
        '--exit',
        exitId,
        '--dev',
        'shallot0',
      ]);
    /** tcpdump printing one line per packet, started and ready. */
    const dump = async (n: string, dev: string, filter: string): Promise<Proc> => {
      const p = lab.spawn(ns[n] as string, 'tcpdump', ['-n', '-l', '-i', dev, filter]);
      await waitFor(`tcpdump in ${n}`, () => p.output().includes('listening on'), 10_000);
      return p;
    };
    const forge = async (n: string, args: string[]) => {
      const r = await lab.exec(ns[n] as string, 'python3', [FORGE, ...args], 20_000);
      assert.equal(r.code, 0, `raw-forge ${args.join(' ')}: ${r.stdout}${r.stderr}`);
      return r.stdout;
    };
    const rejects = async () => {
      const st = await status('E');
      return ((st.exit as { rejectsByReason?: Record<string, number> } | undefined)
        ?.rejectsByReason ?? {}) as Record<string, number>;
    };

    before(async () => {
      sweepStale();
      ns.R = lab.ns('R');
      lab.sh(ns.R, 'sysctl -qw net.ipv4.ip_forward=1');
      Object.keys(addr).forEach((n, i) => {
        ns[n] = lab.ns(n);
        const net = (addr[n] as string).split('.').slice(0, 2).join('.');
        lab.veth(
          ns.R as string,
          `r${i}`,
          `${net}.0.1/16`,
          ns[n] as string,
          'eth0',
          `${addr[n]}/16`,
        );
        lab.sh(ns[n] as string, `ip route add default via ${net}.0.1`);
      });
      const out = execFileSync(NODE, [CLI, 'keygen', '--state', dirOf('E')], { encoding: 'utf8' });
      exitId = out.trim().split('\n').pop() as string;
      procs.E = lab.spawn(ns.E as string, NODE, [
        CLI,
        'exit',
        '--no-dht',
        '--state',
        dirOf('E'),
        '--listen',
        `${addr.E}:7000`,
        '--network',
        NET,
        '--pool',
        '10.200.0.0/16',
        '--allow',
        '10.7.0.0/16',
        '--dev',
        'shexit0',
      ]);
      await waitFor(
        'the exit descriptor',
        () => fs.existsSync(path.join(dirOf('E'), 'descriptor.txt')),
        20_000,
      );
      fs.writeFileSync(
        relaysFile,
        `${fs.readFileSync(path.join(dirOf('E'), 'descriptor.txt'), 'utf8').trim()}\n`,
      );
      procs.echo = lab.spawn(ns.D as string, NODE, ['-e', UDP_ECHO, '9000']);
      procs.sink = lab.spawn(ns.D as string, NODE, ['-e', TCP_SINK, '9001', MARKER]);
      procs.A = startClient('A');
      procs.B = startClient('B');
      for (const n of ['A', 'B']) {
        // The status file is rewritten once a second: read the lease from
        // the log line that announces the circuit (the log's line and the
        // CLI's both name the inner address) instead.
        const announced = () =>
          /circuit ready:.*inner address (\d+\.\d+\.\d+\.\d+)/.exec(
            (procs[n] as Proc).output(),
          )?.[1] ?? '';
        await waitFor(`client ${n}'s circuit`, () => announced() !== '', 30_000, 200);
        lease[n] = announced();
        assert.ok(lease[n], `client ${n} announced its inner address`);
      }
      await waitFor(
        'servers in D',
        () => procs.echo!.output().includes('ready') && procs.sink!.output().includes('ready'),
      );
    });

    after(async () => {
      await lab.cleanup();
      fs.rmSync(tmp, { recursive: true, force: true });
    });

    it("A's forged errors about B's flow reach neither D nor B; B's flow is unaffected; A's honest error passes", async (t) => {
      const atD = await dump('D', 'eth0', 'icmp');
      const atB = await dump('B', 'shallot0', 'icmp');
      const before_ = await rejects();
      const flow = lab.exec(
        ns.B as string,
        NODE,
        ['-e', UDP_FLOW, addr.D as string, '9000', '40123', '4000'],
        30_000,
      );
      await new Promise((r) => setTimeout(r, 800));
      // 1. Toward D, about D's packet to B: conntrack relates it to B's flow
      //    (original direction) and NATs it out as the exit's own error.
      await forge('A', [
        'icmp',
        lease.A!,
        addr.D!,
        '3',
        '3',
        '0',
        addr.D!,
        '9000',
        lease.B!,
        '40123',
      ]);
      // 2. The same with "fragmentation needed, MTU 576": D would lower its
      //    path MTU toward the exit, for every client.
      await forge('A', [
        'icmp',
        lease.A!,
        addr.D!,
        '3',
        '4',
        '576',
        addr.D!,
        '9000',
        lease.B!,
        '40123',
      ]);
      // 3. About the exit's NATed packet to D, and about B's packet to D (the
      //    reply direction, which would be turned back toward B). The kernel
      //    relates such an error only if its outer destination is the exit's
      //    own address, which the policy refuses anyway; still they are
      //    another client's flow and counted as such.
      await forge('A', [
        'icmp',
        lease.A!,
        addr.D!,
        '3',
        '3',
        '0',
        addr.E!,
        '40123',
        addr.D!,
        '9000',
      ]);
      await forge('A', [
        'icmp',
        lease.A!,
        addr.D!,
        '3',
        '3',
        '0',
        lease.B!,
        '40123',
        addr.D!,
        '9000',
      ]);
      // Control: A's own flow to D, and an honest error about D's packet to A.
      const own = await lab.exec(
        ns.A as string,
        NODE,
        ['-e', UDP_FLOW, addr.D as string, '9000', '40555', '300'],
        10_000,
      );
      assert.match(own.stdout, /echo/, `A's own flow works: ${own.stdout}`);
      await forge('A', [
        'icmp',
        lease.A!,
        addr.D!,
        '3',
        '3',
        '0',
        addr.D!,
        '9000',
        lease.A!,
        '40555',
        '1',
      ]);
      const b = await flow;
      await new Promise((r) => setTimeout(r, 500));
      await lab.stop(atD);
      await lab.stop(atB);
      // D keeps a path MTU per destination address: a forged "fragmentation
      // needed" would have lowered it for every client of the exit.
      const route = lab.sh(ns.D as string, `ip route get ${addr.E}`);
      const sent = Number(/sent (\d+)/.exec(b.stdout)?.[1]);
      const echoes = (b.stdout.match(/^echo$/gm) ?? []).length;
      t.diagnostic(
        `B: ${echoes} of ${sent} echoes; D saw:\n${atD.output()}\nB saw:\n${atB.output()}`,
      );
      const after_ = await rejects();
      t.diagnostic(
        `exit rejects before ${JSON.stringify(before_)} after ${JSON.stringify(after_)}`,
      );

      assert.doesNotMatch(
        atD.output(),
        /port 40123 unreachable|need to frag/,
        'no forged error reached D',
      );
      assert.doesNotMatch(b.stdout, /error/, `B's socket got an ICMP error: ${b.stdout}`);
      assert.ok(sent > 40 && echoes >= sent * 0.9, `B's flow: ${echoes} of ${sent} echoes`);
      assert.doesNotMatch(atB.output(), /ICMP/, 'no ICMP reached B');
      assert.doesNotMatch(route, /mtu 576/, `D's path MTU toward the exit: ${route}`);
      assert.match(
        atD.output(),
        /10\.5\.0\.2 > 10\.7\.0\.2: ICMP 10\.5\.0\.2 udp port 40555 unreachable/,
        "A's honest error about its own flow reached D, from the exit",
      );
      const foreign = (after_['icmp-foreign'] ?? 0) - (before_['icmp-foreign'] ?? 0);
      assert.equal(foreign, 12, 'each forged error counted as icmp-foreign');
    });

    it('a TCP segment far outside its window is dropped at the exit (ct state invalid)', async (t) => {
      const atD = await dump('D', 'eth0', 'tcp port 9001');
      await forge('A', ['oow-tcp', 'shallot0', addr.D!, '9001', MARKER]);
      await new Promise((r) => setTimeout(r, 500));
      await lab.stop(atD);
      const table = lab.sh(ns.E as string, 'nft list ruleset');
      t.diagnostic(`D saw:\n${atD.output()}\nexit ruleset:\n${table}`);
      // The handshake went through; the forged segment did not.
      assert.match(atD.output(), /Flags \[S\.\]/, 'the connection was made');
      assert.doesNotMatch(
        atD.output(),
        new RegExp(`seq \\d+:\\d+, ack`),
        'no data segment reached D',
      );
      assert.doesNotMatch(procs.sink!.output(), /got marker/);
      const m = /iifname "shexit0" ct state invalid counter packets (\d+)/.exec(table);
      assert.ok(m && Number(m[1]) >= 1, 'counted by the exit table');
    });
  },
);
