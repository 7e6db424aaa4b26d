/**
 * Onion circuits end to end: real shallot processes (a client, three
 * relays, two exits), real TUN devices, DTLS, kernel routing and NAT, each
 * host in its own namespace on its own /16, joined by a router namespace.
 *
 *   C 10.1.0.2 (client)      R1 10.2.0.2  R2 10.3.0.2  R3 10.4.0.2 (relays)
 *   E1 10.5.0.2  E2 10.6.0.2 (exits)      D 10.7.0.2 (destination)
 *   O 10.8.0.2 (a private host the exits' --allow does not name)
 *   all joined by router ns "R" (10.N.0.1 on its side of each link)
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { readPcap } from '../helpers/pcap.js';
import { e2eSkipReason, Lab, sweepStale, waitFor } from '../helpers/netns.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..', '..');
const CLI = path.join(root, 'dist', 'src', 'cli', 'main.js');
const TRAFFIC = path.join(here, 'fixtures', 'traffic.js');
const NODE = process.execPath;
const MARKER = 'CIRCUIT-PLAINTEXT-MARKER-5e1d';
const NET = 'e2etest';

const skip = e2eSkipReason(['ping', 'tcpdump', 'nft']);

type Proc = ReturnType<Lab['spawn']>;

describe('onion circuits through three hops', { skip: skip ?? false, timeout: 600_000 }, () => {
  const lab = new Lab();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'shallot-circ-'));
  const ns: Record<string, string> = {};
  const ids: Record<string, string> = {};
  const procs: Record<string, Proc> = {};
  const addr: Record<string, string> = {
    C: '10.1.0.2',
    R1: '10.2.0.2',
    R2: '10.3.0.2',
    R3: '10.4.0.2',
    E1: '10.5.0.2',
    E2: '10.6.0.2',
    D: '10.7.0.2',
    O: '10.8.0.2',
  };
  const relaysFile = path.join(tmp, 'relays.txt');
  const dirOf = (n: string) => path.join(tmp, n);
  const statusOf = async (n: string) =>
    JSON.parse(
      (await lab.exec(ns[n] as string, NODE, [CLI, 'status', '--state', dirOf(n), '--json']))
        .stdout,
    ) as Record<string, unknown>;
  const ping = async (target: string, count = 1) =>
    (
      await lab.exec(
        ns.C as string,
        'ping',
        ['-c', String(count), '-W', '2', '-i', '0.3', target],
        20_000,
      )
    ).code === 0;
  const startClient = () =>
    lab.spawn(ns.C as string, NODE, [
      CLI,
      'client',
      '--state',
      dirOf('C'),
      '--relays',
      relaysFile,
      '--network',
      NET,
      '--exit',
      ids.E1 as string,
      '--dev',
      'shallot0',
    ]);

  before(async () => {
    sweepStale();
    ns.R = lab.ns('R');
    lab.sh(ns.R, 'sysctl -qw net.ipv4.ip_forward=1');
    Object.keys(addr).forEach((n, i) => {
      ns[n] = lab.ns(n);
      const net = (addr[n] as string).split('.').slice(0, 2).join('.');
      lab.veth(ns.R as string, `r${i}`, `${net}.0.1/16`, ns[n] as string, 'eth0', `${addr[n]}/16`);
      lab.sh(ns[n] as string, `ip route add default via ${net}.0.1`);
    });
    for (const n of ['R1', 'R2', 'R3', 'E1', 'E2']) {
      const out = execFileSync(NODE, [CLI, 'keygen', '--state', dirOf(n)], { encoding: 'utf8' });
      ids[n] = out.trim().split('\n').pop() as string;
    }
    for (const n of ['R1', 'R2', 'R3']) {
      procs[n] = lab.spawn(ns[n] as string, NODE, [
        CLI,
        'relay',
        '--allow-private-extend',
        '--no-dht',
        '--state',
        dirOf(n),
        '--listen',
        `${addr[n]}:7000`,
        '--network',
        NET,
      ]);
    }
    for (const n of ['E1', 'E2']) {
      procs[n] = lab.spawn(ns[n] as string, NODE, [
        CLI,
        'exit',
        '--allow-private-extend',
        '--no-dht',
        '--state',
        dirOf(n),
        '--listen',
        `${addr[n]}:7000`,
        '--network',
        NET,
        '--pool',
        '10.200.0.0/16',
        '--allow',
        '10.7.0.0/16',
        '--dev',
        'shexit0',
      ]);
    }
    try {
      await waitFor(
        'descriptors',
        () =>
          ['R1', 'R2', 'R3', 'E1', 'E2'].every((n) =>
            fs.existsSync(path.join(dirOf(n), 'descriptor.txt')),
          ),
        20_000,
      );
    } catch (e) {
      const out = ['R1', 'E1'].map((n) => `${n}: ${(procs[n] as Proc).output().slice(-400)}`);
      throw new Error(`${(e as Error).message}; ${out.join('; ')}`);
    }
    const lines = ['R1', 'R2', 'R3', 'E1', 'E2'].map((n) =>
      fs.readFileSync(path.join(dirOf(n), 'descriptor.txt'), 'utf8').trim(),
    );
    fs.writeFileSync(relaysFile, `# test overlay\n${lines.join('\n')}\n`);
    procs.D1 = lab.spawn(ns.D as string, NODE, [
      TRAFFIC,
      'http-serve',
      '8080',
      String(8 << 20),
      MARKER,
    ]);
    procs.D2 = lab.spawn(ns.D as string, NODE, [TRAFFIC, 'udp-whoami-serve', '8082']);
    procs.D3 = lab.spawn(ns.D as string, NODE, [
      TRAFFIC,
      'http-serve-slow',
      '8083',
      String(6 << 20),
      '400',
      MARKER,
    ]);
    procs.D4 = lab.spawn(ns.D as string, NODE, [TRAFFIC, 'udp-echo-serve', '8084']);
    procs.O = lab.spawn(ns.O as string, NODE, [TRAFFIC, 'udp-echo-serve', '8084']);
    procs.C = startClient();
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

  it('carries ping, an HTTP download and UDP through the circuit; the destination sees the exit', async () => {
    assert.ok(await ping(addr.D as string, 3), 'ping through the circuit');
    const expected = execFileSync(NODE, [TRAFFIC, 'sha', String(8 << 20), MARKER], {
      encoding: 'utf8',
    }).trim();
    const got = await lab.exec(
      ns.C as string,
      NODE,
      [TRAFFIC, 'http-get', `http://${addr.D}:8080/data`],
      120_000,
    );
    assert.equal(got.stdout.trim(), `${8 << 20} ${expected}`, got.stderr);
    const rt = await lab.exec(
      ns.C as string,
      NODE,
      [TRAFFIC, 'udp-roundtrip', addr.D as string, '8084', '20', MARKER],
      30_000,
    );
    assert.equal(rt.stdout.trim(), 'ok 20', rt.stderr);
    const who = await lab.exec(
      ns.C as string,
      NODE,
      [TRAFFIC, 'udp-ask', addr.D as string, '8082', 'who'],
      20_000,
    );
    assert.equal(who.stdout.trim(), addr.E1, 'the destination sees the exit as the source');
    const st = await statusOf('C');
    const hops = (st.circuit as { hops: { id: string }[] }).hops.map((h) => h.id);
    assert.equal(hops.length, 3);
    assert.equal(hops[2], ids.E1);
  });

  it('shows no plaintext on any link; the guard link never the destination, the exit link never the client', async () => {
    const st = await statusOf('C');
    const hops = (st.circuit as { hops: { id: string; address: { host: string } }[] }).hops;
    const guard = hops[0]!.address.host;
    const middle = hops[1]!.address.host;
    const byAddr = Object.fromEntries(Object.entries(addr).map(([k, v]) => [v, k]));
    const dumps: Record<string, { proc: Proc; file: string }> = {};
    for (const n of ['C', byAddr[guard] as string, byAddr[middle] as string, 'E1']) {
      const file = path.join(tmp, `${n}.pcap`);
      dumps[n] = {
        file,
        proc: lab.spawn(ns[n] as string, 'tcpdump', ['-i', 'eth0', '-U', '-s', '0', '-w', file]),
      };
    }
    await waitFor(
      'tcpdump',
      () => Object.values(dumps).every((d) => d.proc.output().includes('listening on')),
      10_000,
    );
    const got = await lab.exec(
      ns.C as string,
      NODE,
      [TRAFFIC, 'http-get', `http://${addr.D}:8080/data`],
      120_000,
    );
    assert.equal(got.code, 0);
    const rt = await lab.exec(
      ns.C as string,
      NODE,
      [TRAFFIC, 'udp-roundtrip', addr.D as string, '8084', '10', MARKER],
      30_000,
    );
    assert.equal(rt.stdout.trim(), 'ok 10');
    await new Promise((r) => setTimeout(r, 500));
    for (const d of Object.values(dumps)) await lab.stop(d.proc);
    const dst = Buffer.from((addr.D as string).split('.').map(Number));
    const client = Buffer.from((addr.C as string).split('.').map(Number));
    for (const [n, d] of Object.entries(dumps)) {
      const cap = readPcap(d.file);
      // Bytes, not frames: with UDP GSO one frame may hold a run of
      // datagrams. The 8 MiB download crossed every one of these links.
      const wireBytes = cap.udp.reduce((sum, f) => sum + f.payload.length, 0);
      assert.ok(wireBytes > 8 << 20, `${n}: capture holds the transfer (${wireBytes} bytes)`);
      if (n !== 'E1') {
        assert.equal(cap.raw.indexOf(MARKER), -1, `${n}: no plaintext marker anywhere`);
        continue;
      }
      // The exit's own leg to the destination is the internet side, in
      // the clear as with any exit; its overlay link must not be.
      const link = cap.udp.filter((f) => f.srcPort === 7000 || f.dstPort === 7000);
      const linkBytes = link.reduce((sum, f) => sum + f.payload.length, 0);
      assert.ok(linkBytes > 8 << 20, `the exit link carried the transfer (${linkBytes} bytes)`);
      for (const f of link)
        assert.equal(f.payload.indexOf(MARKER), -1, 'no marker on the exit link');
      for (const f of cap.udp) {
        if (f.dstPort === 7000 || f.srcPort === 7000) {
          assert.notEqual(f.src, addr.C, 'the exit link never carries the client address');
          assert.notEqual(f.dst, addr.C);
          assert.equal(f.payload.indexOf(client), -1, 'nor inside the payload');
        }
      }
    }
    const capC = readPcap(dumps.C!.file);
    for (const f of capC.udp) {
      assert.ok(
        f.dst === guard || f.src === guard,
        `client talks only to its guard (${f.src} -> ${f.dst})`,
      );
      assert.equal(
        f.payload.indexOf(dst),
        -1,
        'the guard link never carries the destination address',
      );
    }
    // Each relay's own view names only its neighbours.
    const middleName = byAddr[middle] as string;
    const view = await statusOf(middleName);
    const peers = (view.link as { peers: { address: string }[] }).peers.map(
      (p) => p.address.split(':')[0],
    );
    assert.ok(peers.includes(guard) && peers.includes(addr.E1 as string), `middle sees ${peers}`);
    assert.ok(
      !peers.includes(addr.C as string) && !peers.includes(addr.D as string),
      'middle never sees the ends',
    );
  });

  it('refuses a private destination outside --allow, tells the client why, and logs no payload', async () => {
    const r = await lab.exec(
      ns.C as string,
      NODE,
      [TRAFFIC, 'udp-roundtrip', addr.O as string, '8084', '3', MARKER],
      15_000,
    );
    assert.notEqual(r.code, 0, 'the other private host is unreachable');
    assert.equal(await ping(addr.O as string, 1), false);
    await waitFor(
      'the refusal in the client status',
      async () => {
        const st = await statusOf('C');
        return String(st.lastRejection ?? '').includes(addr.O as string);
      },
      10_000,
    );
    assert.match((procs.C as Proc).output(), /the exit refused traffic: private 10\.8\.0\.2/);
    assert.equal((procs.E1 as Proc).output().indexOf(MARKER), -1, 'the exit logs no payload');
  });

  it('rebuilds through another middle to the same exit when the middle dies, and a long TCP transfer finishes intact', async () => {
    const before_ = await statusOf('C');
    const hops = (before_.circuit as { hops: { id: string; address: { host: string } }[] }).hops;
    const byAddr = Object.fromEntries(Object.entries(addr).map(([k, v]) => [v, k]));
    const middleName = byAddr[hops[1]!.address.host] as string;
    const lease = (before_.lease as { v4: string }).v4;
    const expected = execFileSync(NODE, [TRAFFIC, 'sha', String(6 << 20), MARKER], {
      encoding: 'utf8',
    }).trim();
    const download = lab.exec(
      ns.C as string,
      NODE,
      [TRAFFIC, 'http-get', `http://${addr.D}:8083/data`],
      180_000,
    );
    await new Promise((r) => setTimeout(r, 3000));
    (procs[middleName] as Proc).kill('SIGKILL');
    const got = await download;
    assert.equal(got.stdout.trim(), `${6 << 20} ${expected}`, `transfer intact: ${got.stderr}`);
    const after_ = await statusOf('C');
    const hops2 = (after_.circuit as { hops: { id: string }[] }).hops.map((h) => h.id);
    assert.notEqual(hops2[1], hops[1]!.id, 'a new middle');
    assert.equal(hops2[2], ids.E1, 'the same exit');
    assert.equal((after_.lease as { v4: string }).v4, lease, 'the same inner address');
  });

  it('kill switch: with the guard unreachable nothing but link traffic leaves the client', async () => {
    const relayAddrs = new Set(['R1', 'R2', 'R3', 'E1', 'E2'].map((n) => addr[n]));
    const file = path.join(tmp, 'ks.pcap');
    // Cut the client off from every relay at the router.
    lab.sh(ns.R as string, 'ip link set r0 down');
    const dump = lab.spawn(ns.C as string, 'tcpdump', ['-i', 'eth0', '-U', '-s', '0', '-w', file]);
    await waitFor('tcpdump', () => dump.output().includes('listening on'), 10_000);
    await new Promise((r) => setTimeout(r, 9000)); // the circuit is declared dead
    assert.equal(await ping(addr.D as string, 3), false);
    await lab.exec(
      ns.C as string,
      NODE,
      [TRAFFIC, 'udp-roundtrip', addr.D as string, '8084', '2', MARKER],
      4000,
    );
    await lab.stop(dump);
    const cap = readPcap(file);
    for (const f of cap.udp) {
      assert.ok(
        relayAddrs.has(f.dst) && f.dstPort === 7000,
        `only link traffic leaves: ${f.dst}:${f.dstPort}`,
      );
    }
    assert.equal(cap.frames - cap.udp.length <= 5, true, 'no other packets (a few ARP at most)');
    lab.sh(ns.R as string, 'ip link set r0 up');
    await waitFor('a circuit again', () => ping(addr.D as string), 60_000, 500);
  });

  it('removes everything on stop: devices, routes, nftables tables', async () => {
    assert.equal(await lab.stop(procs.C as Proc, 5000), 0);
    assert.doesNotMatch(lab.sh(ns.C as string, 'ip link show'), /shallot0/);
    assert.doesNotMatch(lab.sh(ns.C as string, 'nft list tables'), /shallot/);
    assert.match(lab.sh(ns.C as string, 'ip route'), /^default via 10\.1\.0\.1/m);
    assert.doesNotMatch(lab.sh(ns.C as string, 'ip route'), /0\.0\.0\.0\/1|128\.0\.0\.0\/1/);
    assert.equal(await lab.stop(procs.E1 as Proc, 5000), 0);
    assert.doesNotMatch(lab.sh(ns.E1 as string, 'nft list tables'), /shallot/);
    assert.doesNotMatch(lab.sh(ns.E1 as string, 'ip link show'), /shexit0/);
  });
});
