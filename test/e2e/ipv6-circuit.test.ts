/**
 * IPv6 inside a 3-hop circuit, end to end: real shallot processes, TUN
 * devices, DTLS links over IPv4, kernel routing and IPv6 masquerade at the
 * exit, and a destination that has no IPv4 address at all.
 *
 *   C  10.1.0.2  fd01::2 (client)       R1 10.2.0.2  R2 10.3.0.2 (relays)
 *   E  10.5.0.2  fd05::2 (exit, --pool6 fd99::/64)
 *   D            fd07::2 (destination: IPv6 only)
 *   all joined by router ns "R" (10.N.0.1 and fd0N::1 on its side of each link)
 *
 * The router has no route to the exit's pool fd99::/64, so D can answer
 * only the exit's own address: a reply reaching the client proves the
 * exit masqueraded it. With one relay stopped no 3-hop path exists, so the
 * circuit stays down and the kill switch is what keeps C's IPv6 in.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { dtlsRecords, readPcap } from '../helpers/pcap.js';
import { e2eSkipReason, Lab, sweepStale, waitFor } from '../helpers/netns.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..', '..');
const CLI = path.join(root, 'dist', 'src', 'cli', 'main.js');
const TRAFFIC = path.join(here, 'fixtures', 'traffic.js');
const NODE = process.execPath;
const MARKER = 'IPV6-CIRCUIT-PLAINTEXT-7c3a';
const NET = 'e2etest6';
const TUN = 'shallot0';
const D6 = 'fd07::2';
const E6 = 'fd05::2';
const C6 = 'fd01::2';
const POOL6 = 'fd99::/64';
const DOWNLOAD_BYTES = 4 << 20;
/** tcpdump filter: ICMPv6 router and neighbour discovery (types 133-137), link-local only. */
const NEIGHBOUR_DISCOVERY = '(icmp6 and ip6[40] >= 133 and ip6[40] <= 137)';

const skip = e2eSkipReason(['ping', 'tcpdump', 'nft']);

type Proc = ReturnType<Lab['spawn']>;

/** The 16 bytes of an IPv6 address (full or :: form). */
function v6Bytes(text: string): Buffer {
  const [head, tail] = text.split('::') as [string, string | undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g as string, 16), i * 2));
  return out;
}

describe('IPv6 through a 3-hop circuit', { skip: skip ?? false, timeout: 600_000 }, () => {
  const lab = new Lab();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'shallot-ipv6-'));
  const ns: Record<string, string> = {};
  const ids: Record<string, string> = {};
  const procs: Record<string, Proc> = {};
  const addr: Record<string, { v4: string | null; v6: string | null; link: number }> = {
    C: { v4: '10.1.0.2', v6: C6, link: 1 },
    R1: { v4: '10.2.0.2', v6: null, link: 2 },
    R2: { v4: '10.3.0.2', v6: null, link: 3 },
    E: { v4: '10.5.0.2', v6: E6, link: 5 },
    D: { v4: null, v6: D6, link: 7 },
  };
  const relaysFile = path.join(tmp, 'relays.txt');
  const dirOf = (n: string) => path.join(tmp, n);
  const statusOf = async (n: string, dir = dirOf(n)) =>
    JSON.parse(
      (await lab.exec(ns[n] as string, NODE, [CLI, 'status', '--state', dir, '--json'])).stdout,
    ) as Record<string, unknown>;
  const ping6 = async (target: string, count = 1, extra: string[] = []) =>
    (
      await lab.exec(
        ns.C as string,
        'ping',
        ['-6', '-c', String(count), '-W', '2', '-i', '0.3', ...extra, target],
        20_000,
      )
    ).code === 0;
  const routeGet6 = (dst: string) => lab.sh(ns.C as string, `ip -6 route get ${dst}`).trim();
  const relayArgs = (n: string, role: 'relay' | 'exit') => [
    CLI,
    role,
    '--no-dht',
    '--state',
    dirOf(n),
    '--listen',
    `${addr[n]?.v4}:7000`,
    '--network',
    NET,
    // The overlay runs on private addresses (protocol 7.4.2).
    '--allow-private-extend',
    ...(role === 'exit'
      ? ['--pool', '10.200.0.0/16', '--pool6', POOL6, '--allow', 'fd07::/64', '--dev', 'shexit0']
      : []),
  ];
  const startClient = (dir: string, extra: string[] = []) =>
    lab.spawn(ns.C as string, NODE, [
      CLI,
      'client',
      '--state',
      dir,
      '--relays',
      relaysFile,
      '--network',
      NET,
      '--exit',
      ids.E as string,
      '--dev',
      TUN,
      ...extra,
    ]);
  /** Start tcpdump writing `file` in namespace n; resolves once it listens. */
  const capture = async (n: string, file: string, extra: string[] = []) => {
    const p = lab.spawn(ns[n] as string, 'tcpdump', [
      '-i',
      'eth0',
      '-U',
      '-s',
      '0',
      ...extra,
      '-w',
      file,
    ]);
    await waitFor(`tcpdump in ${n}`, () => p.output().includes('listening on'), 10_000);
    return p;
  };
  /** Lines tcpdump prints for the packets of `file` that match `filter`. */
  const readWith = (file: string, filter: string) =>
    execFileSync('tcpdump', ['-r', file, '-nn', filter], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    })
      .split('\n')
      .filter((l) => l.trim() !== '');
  const guardAndMiddle = async () => {
    const st = await statusOf('C');
    const hops = (st.circuit as { hops: { id: string; address: { host: string } }[] }).hops;
    const byAddr = Object.fromEntries(Object.entries(addr).map(([k, v]) => [v.v4, k]));
    return {
      guard: byAddr[hops[0]!.address.host] as string,
      middle: byAddr[hops[1]!.address.host] as string,
    };
  };

  before(async () => {
    sweepStale();
    ns.R = lab.ns('R');
    lab.sh(ns.R, 'sysctl -qw net.ipv4.ip_forward=1 && sysctl -qw net.ipv6.conf.all.forwarding=1');
    for (const [n, a] of Object.entries(addr)) {
      ns[n] = lab.ns(n);
      const i = a.link;
      lab.veth(
        ns.R,
        `r${i}`,
        a.v4 ? `10.${i}.0.1/16` : '',
        ns[n] as string,
        'eth0',
        a.v4 ? `${a.v4}/16` : '',
      );
      if (a.v4) lab.sh(ns[n] as string, `ip route add default via 10.${i}.0.1`);
      // The relays are IPv4 only: no IPv6 at all, not even the kernel's own
      // router solicitations, so any IPv6 on their links would stand out.
      if (!a.v6) lab.sh(ns[n] as string, 'sysctl -qw net.ipv6.conf.all.disable_ipv6=1');
      if (a.v6) {
        lab.sh(ns.R, `ip -6 addr add fd0${i}::1/64 dev r${i} nodad`);
        lab.sh(
          ns[n] as string,
          `ip -6 addr add ${a.v6}/64 dev eth0 nodad && ip -6 route add default via fd0${i}::1`,
        );
      }
    }
    for (const n of ['R1', 'R2', 'E']) {
      const out = execFileSync(NODE, [CLI, 'keygen', '--state', dirOf(n)], { encoding: 'utf8' });
      ids[n] = out.trim().split('\n').pop() as string;
    }
    procs.R1 = lab.spawn(ns.R1 as string, NODE, relayArgs('R1', 'relay'));
    procs.R2 = lab.spawn(ns.R2 as string, NODE, relayArgs('R2', 'relay'));
    procs.E = lab.spawn(ns.E as string, NODE, relayArgs('E', 'exit'));
    try {
      await waitFor(
        'descriptors',
        () => ['R1', 'R2', 'E'].every((n) => fs.existsSync(path.join(dirOf(n), 'descriptor.txt'))),
        20_000,
      );
    } catch (e) {
      const out = ['R1', 'E'].map((n) => `${n}: ${(procs[n] as Proc).output().slice(-600)}`);
      throw new Error(`${(e as Error).message}; ${out.join('; ')}`);
    }
    const lines = ['R1', 'R2', 'E'].map((n) =>
      fs.readFileSync(path.join(dirOf(n), 'descriptor.txt'), 'utf8').trim(),
    );
    fs.writeFileSync(relaysFile, `# test overlay\n${lines.join('\n')}\n`);
    procs.D1 = lab.spawn(ns.D as string, NODE, [
      TRAFFIC,
      'http-serve',
      '8080',
      String(DOWNLOAD_BYTES),
      MARKER,
    ]);
    procs.D2 = lab.spawn(ns.D as string, NODE, [TRAFFIC, 'udp-whoami-serve', '8082']);
    procs.D3 = lab.spawn(ns.D as string, NODE, [TRAFFIC, 'udp-echo-serve', '8084']);
    await waitFor(
      'the destination servers',
      () => ['D1', 'D2', 'D3'].every((n) => (procs[n] as Proc).output().includes('ready')),
      15_000,
    );
    // Without shallot, C reaches D over the physical path: what fails later
    // is kept in by shallot, not unreachable anyway.
    await waitFor('C to reach D over IPv6 directly', () => ping6(D6), 15_000, 300);
    assert.match(routeGet6(D6), /via fd01::1 dev eth0/);
    procs.C = startClient(dirOf('C'));
    await waitFor(
      'a circuit',
      () => (procs.C as Proc).output().includes('circuit ready'),
      30_000,
      200,
    );
  });

  after(async () => {
    await lab.cleanup();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('the exit leases an IPv6 address, and the client puts it on its TUN and routes ::/0 into it', async () => {
    let lease: { v4: string; v6?: string } | null = null;
    await waitFor('the lease in the client status', async () => {
      lease = (await statusOf('C')).lease as { v4: string; v6?: string } | null;
      return lease !== null;
    });
    const v6 = (lease as { v6?: string } | null)?.v6 ?? '';
    assert.ok(v6, `the client holds an IPv6 lease: ${JSON.stringify(lease)}`);
    assert.ok(v6.startsWith('fd99::'), `from the exit's --pool6: ${v6}`);
    const mtu = Number(/mtu (\d+)/.exec(lab.sh(ns.C as string, `ip link show ${TUN}`))?.[1]);
    assert.ok(mtu >= 1280, `the TUN's MTU ${mtu} is at least IPv6's minimum`);
    assert.match(
      lab.sh(ns.C as string, `ip -6 addr show dev ${TUN}`),
      new RegExp(`inet6 ${v6}/128`),
    );
    const routes = lab.sh(ns.C as string, 'ip -6 route show');
    assert.match(routes, new RegExp(`^::/1 dev ${TUN}`, 'm'));
    assert.match(routes, new RegExp(`^8000::/1 dev ${TUN}`, 'm'));
    assert.match(routeGet6(D6), new RegExp(`^${D6} from :: dev ${TUN} .*src ${v6}`));
    assert.match(
      lab.sh(ns.E as string, 'ip -6 addr show dev shexit0'),
      /inet6 fd99::1\/64/,
      "the exit's TUN holds the pool's gateway address",
    );
    const ex = await statusOf('E');
    const leases = ex.leases as { v6?: string }[];
    assert.ok(
      leases.some((l) => l.v6 === v6),
      `the exit lists the lease: ${JSON.stringify(leases)}`,
    );
  });

  it('carries ping -6, a download checked by SHA-256 and UDP; the destination sees the exit', async () => {
    const { middle } = await guardAndMiddle();
    const files = { C: path.join(tmp, 'c.pcap'), M: path.join(tmp, 'm.pcap'), D: '' };
    files.D = path.join(tmp, 'd.pcap');
    const dumps = [
      await capture('C', files.C, ['-Q', 'out']),
      await capture(middle, files.M),
      await capture('D', files.D),
    ];
    assert.ok(await ping6(D6, 3), 'ping -6 through the circuit');
    const expected = execFileSync(NODE, [TRAFFIC, 'sha', String(DOWNLOAD_BYTES), MARKER], {
      encoding: 'utf8',
    }).trim();
    const got = await lab.exec(
      ns.C as string,
      NODE,
      [TRAFFIC, 'http-get', `http://[${D6}]:8080/data`],
      120_000,
    );
    assert.equal(got.stdout.trim(), `${DOWNLOAD_BYTES} ${expected}`, got.stderr);
    const rt = await lab.exec(
      ns.C as string,
      NODE,
      [TRAFFIC, 'udp-roundtrip', D6, '8084', '20', MARKER],
      30_000,
    );
    assert.equal(rt.stdout.trim(), 'ok 20', rt.stderr);
    const who = await lab.exec(
      ns.C as string,
      NODE,
      [TRAFFIC, 'udp-ask', D6, '8082', 'who'],
      20_000,
    );
    assert.equal(who.stdout.trim(), E6, "the destination sees the exit's IPv6 address");
    await new Promise((r) => setTimeout(r, 500));
    for (const d of dumps) await lab.stop(d);

    // The destination: every IPv6 packet to it came from the exit's address.
    const toD = readWith(files.D, `ip6 and dst host ${D6} and not ${NEIGHBOUR_DISCOVERY}`);
    assert.ok(toD.length > 100, `the traffic reached D (${toD.length} packets)`);
    const sources = new Set(toD.map((l) => /IP6 ([0-9a-f:]+?)(\.\d+)? > /.exec(l)?.[1]));
    assert.deepEqual([...sources], [E6], 'D saw only the exit as the source');

    // The client's physical link: only the DTLS link to its guard leaves it.
    const capC = readPcap(files.C);
    assert.deepEqual(readWith(files.C, 'ip6'), [], 'no IPv6 leaves C outside the tunnel');
    const d6 = v6Bytes(D6);
    assert.equal(capC.raw.indexOf(d6), -1, "the destination's address never on C's link");

    // The middle relay: only DTLS records, never the destination's address
    // nor the payload, and no IPv6 at all (the links run over IPv4).
    const capM = readPcap(files.M);
    const bytes = capM.udp.reduce((sum, f) => sum + f.payload.length, 0);
    assert.ok(bytes > DOWNLOAD_BYTES, `the download crossed the middle (${bytes} bytes)`);
    for (const f of capM.udp) {
      const records = dtlsRecords(f.payload);
      assert.ok(records && records.length > 0, `a UDP datagram that is not DTLS: ${f.src}`);
      for (const r of records) assert.equal(r.version, 0xfefd, 'DTLS 1.2 records');
    }
    assert.deepEqual(readWith(files.M, 'not udp and not arp'), [], 'nothing but UDP (and ARP)');
    assert.equal(capM.raw.indexOf(d6), -1, "the destination's address never at the middle");
    assert.equal(capM.raw.indexOf(MARKER), -1, 'no plaintext at the middle');
  });

  it('kill switch: with the guard stopped no IPv6 leaves the client, through the TUN or around it', async () => {
    const { guard } = await guardAndMiddle();
    const blockedNow = async () =>
      Number(
        ((await statusOf('C')).killSwitch as { blockedPackets?: number } | null)?.blockedPackets,
      );
    const blocked0 = await blockedNow();
    await lab.stop(procs[guard] as Proc, 5000);
    // Only two relays besides the exit: without the guard no 3-hop path exists.
    await waitFor(
      'the circuit to go down',
      async () => {
        const c = (await statusOf('C')).circuit as { state: string } | null;
        return c === null || c.state !== 'ready';
      },
      20_000,
      300,
    );
    const file = path.join(tmp, 'ks.pcap');
    const dump = await capture('C', file, ['-Q', 'out']);
    assert.equal(await ping6(D6, 3), false, 'ping -6 fails while the circuit is down');
    assert.equal(
      await ping6(D6, 3, ['-I', 'eth0']),
      false,
      'ping -6 bound to the physical device (around the TUN routes) fails too',
    );
    const rt = await lab.exec(
      ns.C as string,
      NODE,
      [TRAFFIC, 'udp-roundtrip', D6, '8084', '2', MARKER],
      4000,
    );
    assert.notEqual(rt.stdout.trim(), 'ok 2', 'no UDP round trip either');
    const got = await lab.exec(
      ns.C as string,
      NODE,
      [TRAFFIC, 'http-get', `http://[${D6}]:8080/data`],
      5000,
    );
    assert.notEqual(got.code, 0, 'no TCP connection');
    await new Promise((r) => setTimeout(r, 500));
    await lab.stop(dump);
    assert.deepEqual(readWith(file, `ip6 and dst host ${D6}`), [], 'no IPv6 to D left eth0');
    assert.deepEqual(readWith(file, 'ip6'), [], 'no IPv6 at all left eth0');
    let blocked = blocked0;
    await waitFor(
      'the kill switch counter in the status',
      async () => {
        blocked = await blockedNow();
        return blocked > blocked0;
      },
      5000,
      300,
    ).catch(() => undefined);
    assert.ok(blocked > blocked0, `the kill switch dropped them (${blocked0} -> ${blocked})`);

    // The guard comes back: so does IPv6 through the circuit.
    procs[guard] = lab.spawn(ns[guard] as string, NODE, relayArgs(guard, 'relay'));
    await waitFor('IPv6 through a circuit again', () => ping6(D6), 90_000, 1000);
  });

  it('split mode routes only the listed IPv6 prefix into the circuit', async () => {
    assert.equal(await lab.stop(procs.C as Proc, 5000), 0);
    assert.doesNotMatch(lab.sh(ns.C as string, 'ip -6 route show'), /::\/1|8000::\/1/);
    procs.C = startClient(path.join(tmp, 'C-split'), ['--split', 'fd07::/64']);
    await waitFor(
      'a split-mode circuit',
      () => (procs.C as Proc).output().includes('circuit ready'),
      60_000,
      200,
    );
    assert.match(routeGet6(D6), new RegExp(`dev ${TUN}`), 'the listed prefix enters the TUN');
    assert.match(routeGet6(E6), /via fd01::1 dev eth0/, 'other IPv6 keeps the physical path');
    assert.ok(await ping6(D6, 2), 'ping -6 through the circuit');
    const who = await lab.exec(
      ns.C as string,
      NODE,
      [TRAFFIC, 'udp-ask', D6, '8082', 'who'],
      20_000,
    );
    assert.equal(who.stdout.trim(), E6, 'the destination sees the exit');
    assert.equal(await lab.stop(procs.C as Proc, 5000), 0);
    assert.doesNotMatch(lab.sh(ns.C as string, 'ip -6 route show'), /fd07::\/64 dev/);
    assert.doesNotMatch(lab.sh(ns.C as string, 'ip link show'), new RegExp(TUN));
  });

  it('a client on a host with IPv6 turned off still gets its circuit, IPv4 only', async () => {
    const off = (v: 0 | 1) =>
      lab.sh(
        ns.C as string,
        `sysctl -qw net.ipv6.conf.all.disable_ipv6=${v} net.ipv6.conf.default.disable_ipv6=${v}`,
      );
    await lab.stop(procs.C as Proc, 5000); // the one TUN name: one client at a time
    off(1);
    try {
      const c = startClient(path.join(tmp, 'C-no6'));
      await waitFor(
        'a circuit without IPv6',
        () => c.output().includes('circuit ready: inner address'),
        30_000,
      ).catch((e: Error) => {
        throw new Error(`${e.message}; client: ${c.output().slice(-800)}`);
      });
      assert.match(c.output(), /no IPv6 through the circuit/);
      assert.doesNotMatch(c.output(), /circuit ready: inner address \S+ and /);
      assert.match(lab.sh(ns.C as string, `ip -4 addr show dev ${TUN}`), /inet 10\.200\./);
      assert.equal(await lab.stop(c, 5000), 0);
    } finally {
      off(0);
    }
  });

  it('the exit removes its IPv6 NAT and restores IPv6 forwarding on stop', async () => {
    assert.equal(await lab.stop(procs.E as Proc, 5000), 0);
    assert.doesNotMatch(lab.sh(ns.E as string, 'nft list tables'), /shallot/);
    assert.equal(lab.sh(ns.E as string, 'cat /proc/sys/net/ipv6/conf/all/forwarding').trim(), '0');
  });
});
