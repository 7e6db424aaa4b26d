/**
 * Direct mode end to end: real shallot processes in network namespaces,
 * real TUN devices, real UDP and DTLS.
 *
 *   B (10.50.1.2) ---veth--- L (10.50.1.1, 10.50.2.1, 10.50.3.1) ---veth--- C (10.50.2.2)
 *                                   |
 *                                 veth
 *                                   |
 *                             R (10.50.3.2): a rogue host
 *
 * L listens on UDP 7000 with inner 10.9.0.1/24 and fd09::1/64 and admits
 * B and C. B is 10.9.0.2 and fd09::2, C is 10.9.0.3.
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
const MARKER = 'SHALLOT-PLAINTEXT-MARKER-7f3c';

const skip = e2eSkipReason(['ping', 'tcpdump']);

function keygen(dir: string): string {
  const out = execFileSync(NODE, [CLI, 'keygen', '--state', dir], { encoding: 'utf8' });
  return out.trim().split('\n').pop() as string;
}

describe('direct mode tunnel', { skip: skip ?? false, timeout: 300_000 }, () => {
  const lab = new Lab();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'shallot-e2e-'));
  const dirs = {
    L: path.join(tmp, 'L'),
    B: path.join(tmp, 'B'),
    C: path.join(tmp, 'C'),
    R: path.join(tmp, 'R'),
  };
  const ids: Record<string, string> = {};
  let nsL = '';
  let nsB = '';
  let nsC = '';
  let nsR = '';
  let listener: ReturnType<Lab['spawn']>;
  let dialerB: ReturnType<Lab['spawn']>;

  const startListener = () =>
    lab.spawn(nsL, NODE, [
      CLI,
      'tunnel',
      '--state',
      dirs.L,
      '--listen',
      '0.0.0.0:7000',
      '--dev',
      'shl0',
      '--address',
      '10.9.0.1/24,fd09::1/64',
      '--peer',
      `${ids.B},${ids.C}`,
    ]);
  const startB = () =>
    lab.spawn(nsB, NODE, [
      CLI,
      'tunnel',
      '--state',
      dirs.B,
      '--connect',
      '10.50.1.1:7000',
      '--dev',
      'shb0',
      '--address',
      '10.9.0.2/24,fd09::2/64',
      '--peer',
      ids.L as string,
    ]);
  const ping = async (ns: string, target: string, count = 1) =>
    (await lab.exec(ns, 'ping', ['-c', String(count), '-W', '1', '-i', '0.2', target], 15_000))
      .code === 0;
  const status = async (dir: string) =>
    JSON.parse((await lab.exec(nsL, NODE, [CLI, 'status', '--state', dir, '--json'])).stdout) as {
      link: {
        counters: { drops: { garbage: number }; unauthorized: number };
        peers: { id: string; state: string }[];
      };
      memory: { rss: number };
    };

  before(async () => {
    sweepStale();
    for (const [k, d] of Object.entries(dirs)) ids[k] = keygen(d);
    nsL = lab.ns('L');
    nsB = lab.ns('B');
    nsC = lab.ns('C');
    nsR = lab.ns('R');
    lab.veth(nsL, 'eb', '10.50.1.1/24', nsB, 'eth0', '10.50.1.2/24');
    lab.veth(nsL, 'ec', '10.50.2.1/24', nsC, 'eth0', '10.50.2.2/24');
    lab.veth(nsL, 'er', '10.50.3.1/24', nsR, 'eth0', '10.50.3.2/24');
    listener = startListener();
    dialerB = startB();
    lab.spawn(nsC, NODE, [
      CLI,
      'tunnel',
      '--state',
      dirs.C,
      '--connect',
      '10.50.2.1:7000',
      '--dev',
      'shc0',
      '--address',
      '10.9.0.3/24',
      '--peer',
      ids.L as string,
    ]);
    await waitFor('B to reach L through the tunnel', () => ping(nsB, '10.9.0.1'), 20_000, 200);
  });

  after(async () => {
    await lab.cleanup();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('answers ping over IPv4 and IPv6, from two dialers at once', async () => {
    assert.ok(await ping(nsB, '10.9.0.1', 3), 'B pings L over IPv4');
    assert.ok(await ping(nsB, 'fd09::1', 3), 'B pings L over IPv6');
    await waitFor('C to reach L', () => ping(nsC, '10.9.0.1'), 15_000, 200);
    assert.ok(await ping(nsC, '10.9.0.1', 3), 'C pings L');
    assert.ok(await ping(nsB, '10.9.0.1', 2), 'B still pings L with C connected');
  });

  it('carries an HTTP download, an interactive TCP session and UDP, intact, and the wire shows only DTLS', async () => {
    const pcap = path.join(tmp, 'b.pcap');
    const dump = lab.spawn(nsB, 'tcpdump', ['-i', 'eth0', '-U', '-s', '0', '-w', pcap, 'udp']);
    await waitFor('tcpdump to start', () => dump.output().includes('listening on'), 10_000);
    const http = lab.spawn(nsL, NODE, [TRAFFIC, 'http-serve', '8080', String(4 << 20), MARKER]);
    const tcp = lab.spawn(nsL, NODE, [TRAFFIC, 'tcp-echo-serve', '8081']);
    const udp = lab.spawn(nsL, NODE, [TRAFFIC, 'udp-echo-serve', '8082']);
    await waitFor('servers', () => [http, tcp, udp].every((p) => p.output().includes('ready')));
    const expected = execFileSync(NODE, [TRAFFIC, 'sha', String(4 << 20), MARKER], {
      encoding: 'utf8',
    }).trim();
    const got = await lab.exec(
      nsB,
      NODE,
      [TRAFFIC, 'http-get', 'http://10.9.0.1:8080/data'],
      90_000,
    );
    assert.equal(got.code, 0, got.stderr);
    assert.equal(got.stdout.trim(), `${4 << 20} ${expected}`, 'download arrives intact');
    const got6 = await lab.exec(
      nsB,
      NODE,
      [TRAFFIC, 'http-get', 'http://[fd09::1]:8080/data'],
      90_000,
    );
    assert.equal(got6.stdout.trim(), `${4 << 20} ${expected}`, 'download over IPv6 arrives intact');
    const inter = await lab.exec(
      nsB,
      NODE,
      [TRAFFIC, 'tcp-interactive', '10.9.0.1', '8081', '50'],
      60_000,
    );
    assert.equal(inter.stdout.trim(), 'ok 50', inter.stderr);
    const rt = await lab.exec(
      nsB,
      NODE,
      [TRAFFIC, 'udp-roundtrip', '10.9.0.1', '8082', '20', MARKER],
      30_000,
    );
    assert.equal(rt.stdout.trim(), 'ok 20', rt.stderr);
    const rtC = await lab.exec(
      nsC,
      NODE,
      [TRAFFIC, 'udp-roundtrip', '10.9.0.1', '8082', '20', MARKER],
      30_000,
    );
    assert.equal(rtC.stdout.trim(), 'ok 20', rtC.stderr);
    await new Promise((r) => setTimeout(r, 500));
    await lab.stop(dump);

    const cap = readPcap(pcap);
    // Bytes, not frames: with UDP GSO a capture may show a run of
    // datagrams as one frame. Both 4 MiB downloads crossed this link.
    const wireBytes = cap.udp.reduce((n, f) => n + f.payload.length, 0);
    assert.ok(wireBytes > 2 * (4 << 20), `capture holds the transfer (${wireBytes} bytes)`);
    assert.equal(cap.raw.indexOf(MARKER), -1, 'the marker never appears on the wire');
    for (const f of cap.udp) {
      assert.ok(f.srcPort === 7000 || f.dstPort === 7000, 'only link traffic to the listener');
      const recs = dtlsRecords(f.payload);
      assert.ok(recs && recs.length > 0, 'every datagram is DTLS records');
      for (const r of recs) {
        assert.ok(r.type >= 20 && r.type <= 23, `content type ${r.type}`);
        // The first ClientHello may carry the DTLS 1.0 record version.
        assert.ok(
          r.version === 0xfefd || (r.type === 22 && r.version === 0xfeff),
          `version ${r.version.toString(16)}`,
        );
      }
    }
  });

  it('refuses a dialer that expects another node id, and an unauthorised node', async () => {
    const wrongId = lab.spawn(nsR, NODE, [
      CLI,
      'tunnel',
      '--state',
      dirs.R,
      '--connect',
      '10.50.3.1:7000',
      '--dev',
      'shr0',
      '--address',
      '10.9.0.66/24',
      '--peer',
      ids.C as string,
    ]);
    await waitFor(
      'the id mismatch to be reported',
      () => wrongId.output().includes('peer id mismatch'),
      15_000,
    );
    assert.equal(await ping(nsR, '10.9.0.1', 2), false, 'no packet gets through');
    await lab.stop(wrongId);

    const unauthorised = lab.spawn(nsR, NODE, [
      CLI,
      'tunnel',
      '--state',
      dirs.R,
      '--connect',
      '10.50.3.1:7000',
      '--dev',
      'shr0',
      '--address',
      '10.9.0.66/24',
      '--peer',
      ids.L as string,
    ]);
    await waitFor(
      'the refusal to be reported',
      () => unauthorised.output().includes('not authorised'),
      15_000,
    );
    assert.equal(await ping(nsR, '10.9.0.1', 2), false, 'no packet gets through');
    await lab.stop(unauthorised);
    assert.match(listener.output(), new RegExp(`refused unauthorised node ${ids.R}`));
    assert.ok((await status(dirs.L)).link.counters.unauthorized >= 1);
  });

  it('keeps serving through 10,000 random and truncated datagrams, counting the drops, memory flat', async () => {
    const before = await status(dirs.L);
    const g = await lab.exec(nsR, NODE, [TRAFFIC, 'garbage', '10.50.3.1', '7000', '10000'], 60_000);
    assert.equal(g.stdout.trim(), 'sent 10000', g.stderr);
    assert.ok(await ping(nsB, '10.9.0.1', 3), 'B still reaches L');
    await new Promise((r) => setTimeout(r, 1500));
    const afterGarbage = await status(dirs.L);
    const dropped = afterGarbage.link.counters.drops.garbage - before.link.counters.drops.garbage;
    assert.ok(dropped >= 9000, `garbage drops counted: ${dropped}`);
    const growth = afterGarbage.memory.rss - before.memory.rss;
    assert.ok(growth < 32 * 1024 * 1024, `memory growth ${growth} bytes`);
    assert.ok(listener.exitCode === null, 'listener alive');
  });

  it('reports a killed peer dead within the stated timeout and recovers when it returns', async () => {
    dialerB.kill('SIGKILL');
    const killedAt = Date.now();
    await waitFor(
      'L to report B dead',
      () => new RegExp(`peer ${ids.B} down: peer dead`).test(listener.output()),
      10_000 + 3_000,
      200,
    );
    assert.ok(Date.now() - killedAt <= 13_000);
    dialerB = startB();
    await waitFor('B to come back', () => ping(nsB, '10.9.0.1'), 20_000, 300);

    // Now the listener dies and returns: B notices and redials on its own.
    listener.kill('SIGKILL');
    await waitFor(
      'B to report L dead',
      () => /down: peer dead/.test(dialerB.output()),
      13_000,
      200,
    );
    listener = startListener();
    await waitFor('B to reconnect to the restarted L', () => ping(nsB, '10.9.0.1'), 25_000, 300);
  });

  it('stops cleanly on SIGTERM and removes its device', async () => {
    assert.match(lab.sh(nsB, 'ip link show'), /shb0/);
    const code = await lab.stop(dialerB);
    assert.equal(code, 0);
    assert.doesNotMatch(lab.sh(nsB, 'ip link show'), /shb0/);
  });
});
