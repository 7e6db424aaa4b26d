/**
 * The client's routes and kill switch, for real, in network namespaces:
 *
 *   C (client)  eth0 10.80.0.2/24 fd80::2/64 ---veth--- R (router) ec 10.80.0.1/24 fd80::1/64
 *                                                          eg 10.81.0.1/24 fd81::1/64 ---veth--- G eth0
 *   G (guard host) 10.81.0.2/24 fd81::2/64, UDP echo on 7000
 *
 * Routes and nftables are per namespace, so ClientRouting, KillSwitch and a
 * real TUN device (LinuxTun, shc0) live in a child node process inside C,
 * driven over its stdin/stdout with one JSON line per request and reply.
 * Captures on C's eth0 (outgoing only) show what would have left the host.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { e2eSkipReason, Lab, sweepStale, waitFor } from '../helpers/netns.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = path.resolve(here, '..', '..');
const TRAFFIC = path.join(here, 'fixtures', 'traffic.js');
const NODE = process.execPath;
const MARKER = 'SHALLOT-CLIENT-ROUTING-e2e';
const GUARD = { host: '10.81.0.2', port: 7000 };
const TUN = 'shc0';

const skip = e2eSkipReason(['nft', 'ping', 'tcpdump']);

const mod = (p: string) => JSON.stringify(pathToFileURL(path.join(dist, p)).href);

/**
 * The child inside C. Requests: {id, op, args}; replies: {id, ok, result}
 * or {id, ok: false, error, code}. It prints "ready" first, and on stdin's
 * end or SIGTERM undoes everything it set up.
 */
const CHILD = `
import dgram from 'node:dgram';
import readline from 'node:readline';
import { ClientRouting } from ${mod('client/routing.js')};
import { KillSwitch } from ${mod('client/kill-switch.js')};
import { parseCidr } from ${mod('src/net/cidr.js')};
import { LinuxTun } from ${mod('src/tun/linux-tun.js')};
import { configureInterface } from ${mod('src/tun/iproute.js')};

let tun = null;
let routing = null;
let ks = null;
let tunPackets = 0;
const tunDsts = new Set();

function dstOf(p) {
  if (p.length >= 20 && p[0] >> 4 === 4) return [...p.subarray(16, 20)].join('.');
  if (p.length >= 40 && p[0] >> 4 === 6) {
    const g = [];
    for (let i = 24; i < 40; i += 2) g.push(p.readUInt16BE(i).toString(16));
    return g.join(':');
  }
  return '?';
}

const ops = {
  'tun-open': ({ name, addresses }) => {
    tun = LinuxTun.open(name, 2048);
    configureInterface(tun.name, addresses, 1400);
    tun.start((packed, len, count) => {
      tunPackets += count;
      for (let o = 0; o + 2 <= len; ) {
        const l = packed.readUInt16BE(o);
        tunDsts.add(dstOf(packed.subarray(o + 2, o + 2 + l)));
        o += 2 + l;
      }
    });
    return tun.name;
  },
  'tun-stats': () => ({ packets: tunPackets, dsts: [...tunDsts] }),
  'routing-start': ({ mode, cidrs, innerV4, innerV6 }) => {
    routing = new ClientRouting({
      tunName: ${JSON.stringify(TUN)},
      guard: ${JSON.stringify(GUARD)},
      mode: mode === 'full' ? { kind: 'full' } : { kind: 'split', cidrs: cidrs.map((c) => parseCidr(c)) },
      ...(innerV4 ? { innerV4: parseCidr(innerV4) } : {}),
      ...(innerV6 ? { innerV6: parseCidr(innerV6) } : {}),
    });
    routing.start();
    return routing.describe();
  },
  'routing-stop': () => {
    routing.stop();
    return routing.describe();
  },
  'ks-start': ({ allowLan }) => {
    ks = new KillSwitch({
      tunName: ${JSON.stringify(TUN)},
      guard: ${JSON.stringify(GUARD)},
      allowLoopback: true,
      allowLan: (allowLan ?? []).map((c) => parseCidr(c)),
    });
    ks.start();
    return { table: ks.table };
  },
  'ks-blocked': () => ks.blockedPackets(),
  'ks-stop': () => ks.stop(),
  'ks-remove-stale': () => KillSwitch.removeStale(),
  'udp-send': ({ host, port }) =>
    new Promise((resolve) => {
      const s = dgram.createSocket('udp4');
      s.send(Buffer.from(${JSON.stringify(MARKER)}), port, host, (err) => {
        s.close();
        resolve(err ? err.code ?? err.message : 'sent');
      });
    }),
};

function cleanup() {
  for (const f of [() => routing?.stop(), () => ks?.stop(), () => tun?.close()]) {
    try { f(); } catch (e) { console.error('cleanup:', e.message); }
  }
}

process.on('SIGTERM', () => { cleanup(); process.exit(0); });
const rl = readline.createInterface({ input: process.stdin });
rl.on('line', async (line) => {
  const { id, op, args } = JSON.parse(line);
  try {
    const result = await ops[op](args ?? {});
    process.stdout.write(JSON.stringify({ id, ok: true, result: result ?? null }) + '\\n');
  } catch (e) {
    process.stdout.write(JSON.stringify({ id, ok: false, error: e.message, code: e.code }) + '\\n');
  }
});
rl.on('close', () => { cleanup(); process.exit(0); });
console.log('ready');
`;

interface Reply {
  id: number;
  ok: boolean;
  result?: unknown;
  error?: string;
  code?: string;
}

class Child {
  private next = 1;
  private buf = '';
  private readonly waiting = new Map<number, (r: Reply) => void>();
  ready = false;

  constructor(readonly proc: ChildProcess & { output: () => string }) {
    proc.stdout?.on('data', (d: Buffer) => {
      this.buf += d.toString();
      let nl: number;
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, nl).trim();
        this.buf = this.buf.slice(nl + 1);
        if (line === 'ready') this.ready = true;
        else if (line.startsWith('{')) {
          const r = JSON.parse(line) as Reply;
          this.waiting.get(r.id)?.(r);
          this.waiting.delete(r.id);
        }
      }
    });
  }

  /** A request; resolves with the reply (ok or not), rejects on timeout. */
  request(op: string, args: object = {}, timeoutMs = 20_000): Promise<Reply> {
    const id = this.next++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(
          new Error(`child: no reply to ${op} in ${timeoutMs} ms; output: ${this.proc.output()}`),
        );
      }, timeoutMs);
      this.waiting.set(id, (r) => {
        clearTimeout(timer);
        resolve(r);
      });
      this.proc.stdin?.write(`${JSON.stringify({ id, op, args })}\n`);
    });
  }

  /** A request that must succeed; returns its result. */
  async call<T = unknown>(op: string, args: object = {}): Promise<T> {
    const r = await this.request(op, args);
    if (!r.ok) throw new Error(`child ${op} failed: ${r.error ?? '?'}`);
    return r.result as T;
  }
}

interface Described {
  active: boolean;
  guardRoute: { route: string; addedByUs: boolean } | null;
  routes: string[];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('client routing and kill switch', { skip: skip ?? false, timeout: 300_000 }, () => {
  const lab = new Lab();
  let nsC = '';
  let nsR = '';
  let nsG = '';
  let child: Child;
  let baseline = '';

  const routeGet = (dst: string) => lab.sh(nsC, `ip route get ${dst}`).trim();
  const routes = () => lab.sh(nsC, 'ip -4 route show; ip -6 route show');
  const tables = () => lab.sh(nsC, 'nft list tables');
  const ping = async (dst: string, count = 1) =>
    (await lab.exec(nsC, 'ping', ['-c', String(count), '-W', '1', '-i', '0.2', dst], 15_000))
      .code === 0;
  const udpRoundtrip = async () => {
    const r = await lab.exec(
      nsC,
      NODE,
      [TRAFFIC, 'udp-roundtrip', GUARD.host, String(GUARD.port), '3', MARKER],
      20_000,
    );
    return r.stdout.trim() === 'ok 3';
  };

  /** Outgoing packets on C's eth0 (tcpdump lines) during `action` and until `ms` have passed. */
  async function captureOut(action: () => Promise<void>, ms = 3000): Promise<string[]> {
    const dump = lab.spawn(nsC, 'tcpdump', ['-i', 'eth0', '-nn', '-l', '-Q', 'out']);
    await waitFor('tcpdump to listen', () => dump.output().includes('listening on'), 10_000);
    const t0 = Date.now();
    await action();
    await sleep(Math.max(0, ms - (Date.now() - t0)));
    await lab.stop(dump);
    return dump
      .output()
      .split('\n')
      .filter((l) => / IP6? /.test(l));
  }

  before(async () => {
    sweepStale();
    nsC = lab.ns('C');
    nsR = lab.ns('R');
    nsG = lab.ns('G');
    lab.veth(nsC, 'eth0', '10.80.0.2/24', nsR, 'ec', '10.80.0.1/24');
    lab.veth(nsR, 'eg', '10.81.0.1/24', nsG, 'eth0', '10.81.0.2/24');
    lab.sh(nsC, 'ip -6 addr add fd80::2/64 dev eth0 nodad');
    lab.sh(nsR, 'ip -6 addr add fd80::1/64 dev ec nodad && ip -6 addr add fd81::1/64 dev eg nodad');
    lab.sh(nsG, 'ip -6 addr add fd81::2/64 dev eth0 nodad');
    lab.sh(nsC, 'ip route add default via 10.80.0.1 && ip -6 route add default via fd80::1');
    lab.sh(nsG, 'ip route add default via 10.81.0.1 && ip -6 route add default via fd81::1');
    lab.sh(nsR, 'sysctl -qw net.ipv4.ip_forward=1 && sysctl -qw net.ipv6.conf.all.forwarding=1');
    // A route somebody else owns: nothing here may touch it.
    lab.sh(nsC, 'ip route add 192.0.2.0/24 via 10.80.0.1');

    const echo = lab.spawn(nsG, NODE, [TRAFFIC, 'udp-echo-serve', String(GUARD.port)]);
    await waitFor('the guard host UDP echo', () => echo.output().includes('ready'));
    child = new Child(lab.spawn(nsC, NODE, ['--input-type=module', '-e', CHILD]));
    await waitFor('the client child', () => child.ready, 15_000);
    await waitFor('C to reach G', () => ping(GUARD.host), 10_000, 200);
    // IPv6 needs the link-local addresses past duplicate address detection.
    await waitFor('C to reach G over IPv6', () => ping('fd81::2'), 15_000, 200);
  });

  after(async () => {
    await lab.cleanup();
  });

  it('baseline: C reaches G over IPv4 and IPv6, through eth0', async () => {
    assert.ok(await ping(GUARD.host, 2), 'ping 10.81.0.2');
    assert.ok(await ping('fd81::2', 2), 'ping fd81::2');
    assert.match(routeGet('1.1.1.1'), /via 10\.80\.0\.1 dev eth0/);
    assert.ok(await udpRoundtrip(), 'UDP to the guard port and back');
  });

  it('the kill switch, on before any circuit (no TUN yet), lets only the guard link out and counts the rest', async () => {
    const { table } = await child.call<{ table: string }>('ks-start');
    assert.match(tables(), new RegExp(`table inet ${table}\\b`));
    assert.equal(await child.call('ks-blocked'), 0);

    let roundtrip = false;
    let otherPort = '';
    const before4 = { guard: 0, other: 0, v6: 0, udp: 0 };
    const lines = await captureOut(async () => {
      assert.ok(!(await ping(GUARD.host)), 'ping to the guard host is blocked');
      before4.guard = await child.call<number>('ks-blocked');
      assert.ok(!(await ping('10.81.0.9')), 'ping elsewhere is blocked');
      before4.other = await child.call<number>('ks-blocked');
      assert.ok(!(await ping('fd81::2')), 'IPv6 is blocked');
      before4.v6 = await child.call<number>('ks-blocked');
      otherPort = await child.call<string>('udp-send', { host: GUARD.host, port: 7001 });
      before4.udp = await child.call<number>('ks-blocked');
      roundtrip = await udpRoundtrip();
    });
    assert.equal(otherPort, 'EPERM', 'UDP to another port of the guard host is refused');
    assert.ok(roundtrip, 'UDP to GUARD_IP:GUARD_PORT goes out and its answers come back');
    assert.deepEqual(
      lines.filter((l) => /ICMP/.test(l)),
      [],
      'no ICMP or ICMPv6 leaves eth0',
    );
    assert.deepEqual(
      lines.filter((l) => /\.7001: /.test(l)),
      [],
      'no datagram to port 7001 leaves eth0',
    );
    assert.ok(
      lines.some((l) => / > 10\.81\.0\.2\.7000: /.test(l)),
      `the guard link's datagrams do leave eth0:\n${lines.join('\n')}`,
    );
    assert.ok(before4.guard >= 1, `blocked packets counted (${before4.guard})`);
    assert.ok(before4.other > before4.guard, 'the second ping counted');
    assert.ok(before4.v6 > before4.other, 'the IPv6 ping counted');
    assert.ok(before4.udp > before4.v6, 'the UDP datagram counted');
    assert.ok(await ping('127.0.0.1'), 'loopback stays open');
  });

  it('full mode: the guard stays on eth0, everything else enters the TUN, and nothing leaks', async () => {
    await child.call('tun-open', { name: TUN, addresses: ['10.9.0.2/24', 'fd09::2/64'] });
    baseline = routes();
    const d = await child.call<Described>('routing-start', {
      mode: 'full',
      innerV4: '10.9.0.2/24',
      innerV6: 'fd09::2/64',
    });
    assert.deepEqual(d.guardRoute, {
      route: '10.81.0.2/32 via 10.80.0.1 dev eth0',
      addedByUs: true,
    });
    assert.deepEqual(d.routes, [
      '10.81.0.2/32 via 10.80.0.1 dev eth0',
      `0.0.0.0/1 dev ${TUN}`,
      `128.0.0.0/1 dev ${TUN}`,
      `::/1 dev ${TUN}`,
      `8000::/1 dev ${TUN}`,
    ]);
    assert.match(routeGet(GUARD.host), /^10\.81\.0\.2 via 10\.80\.0\.1 dev eth0/);
    assert.match(routeGet('10.81.0.9'), new RegExp(`^10\\.81\\.0\\.9 dev ${TUN}`));
    assert.match(routeGet('1.1.1.1'), new RegExp(`^1\\.1\\.1\\.1 dev ${TUN}`));
    assert.match(routeGet('2001:db8::1'), new RegExp(`dev ${TUN}`));
    assert.match(routeGet('fd81::2'), new RegExp(`dev ${TUN}`), 'IPv6 enters the TUN too');
    assert.match(lab.sh(nsC, 'ip route show default'), /default via 10\.80\.0\.1 dev eth0/);

    const blocked0 = await child.call<number>('ks-blocked');
    const tun0 = (await child.call<{ packets: number }>('tun-stats')).packets;
    let roundtrip = false;
    const lines = await captureOut(async () => {
      await ping('10.81.0.9', 3);
      await ping('1.1.1.1', 2);
      await ping('fd81::2', 2);
      roundtrip = await udpRoundtrip();
      assert.ok(!(await ping(GUARD.host)), 'ICMP to the guard host itself is blocked');
    });
    const tun = await child.call<{ packets: number; dsts: string[] }>('tun-stats');
    assert.ok(tun.packets - tun0 >= 7, `pings entered the TUN (${tun.packets - tun0} packets)`);
    for (const dst of ['10.81.0.9', '1.1.1.1', 'fd81:0:0:0:0:0:0:2']) {
      assert.ok(tun.dsts.includes(dst), `${dst} seen in the TUN: ${tun.dsts.join(' ')}`);
    }
    assert.ok(roundtrip, 'the guard link still works');
    assert.deepEqual(
      lines.filter((l) => /ICMP/.test(l)),
      [],
      'no ICMP leaves eth0',
    );
    assert.ok(
      lines.some((l) => / > 10\.81\.0\.2\.7000: /.test(l)),
      'the link leaves eth0',
    );
    assert.ok(
      lines.every((l) => / > 10\.81\.0\.2\.7000: /.test(l)),
      `nothing but the link leaves eth0:\n${lines.join('\n')}`,
    );
    const blocked = await child.call<number>('ks-blocked');
    assert.ok(
      blocked > blocked0,
      `the blocked ping to the guard host counted (${blocked0} → ${blocked})`,
    );
  });

  it('without the kill switch, traffic to the guard host uses the host route outside the tunnel', async () => {
    await child.call('ks-stop');
    assert.doesNotMatch(tables(), /shallot_client_/, 'the table is gone');
    assert.equal(await child.call('ks-blocked'), 0, 'no counter once stopped');
    const tun0 = (await child.call<{ packets: number }>('tun-stats')).packets;
    const lines = await captureOut(async () => {
      assert.ok(await ping(GUARD.host, 2), 'ping to the guard host works, via eth0');
      await ping('10.81.0.9', 2);
    }, 1000);
    assert.ok(lines.some((l) => /> 10\.81\.0\.2: ICMP echo request/.test(l)));
    assert.ok(!lines.some((l) => /10\.81\.0\.9/.test(l)), 'other traffic still enters the TUN');
    const tun = (await child.call<{ packets: number }>('tun-stats')).packets;
    assert.ok(tun - tun0 >= 2, 'pings to 10.81.0.9 entered the TUN');
  });

  it('stop() removes exactly the routes it added, and is idempotent', async () => {
    const d = await child.call<Described>('routing-stop');
    assert.equal(d.active, false);
    assert.deepEqual(d.routes, []);
    assert.equal(routes(), baseline, 'the routing table is back to what it was');
    assert.match(routes(), /192\.0\.2\.0\/24 via 10\.80\.0\.1 dev eth0/, 'the foreign route stays');
    assert.match(routeGet('1.1.1.1'), /via 10\.80\.0\.1 dev eth0/);
    assert.ok(await ping(GUARD.host, 2), 'ping 10.81.0.2 works again');
    assert.ok(await ping('10.81.0.1'), 'and the router too');
    await child.call('routing-stop');
    assert.equal(routes(), baseline, 'a second stop() changes nothing');
  });

  it('split mode routes only the listed prefixes into the TUN, pinning the guard if inside one', async () => {
    const d = await child.call<Described>('routing-start', {
      mode: 'split',
      cidrs: ['10.81.0.77/24', '198.51.100.0/24'],
    });
    assert.deepEqual(d.routes, [
      '10.81.0.2/32 via 10.80.0.1 dev eth0',
      `10.81.0.0/24 dev ${TUN}`,
      `198.51.100.0/24 dev ${TUN}`,
    ]);
    assert.match(routeGet('10.81.0.9'), new RegExp(`^10\\.81\\.0\\.9 dev ${TUN}`));
    assert.match(routeGet('198.51.100.5'), new RegExp(`dev ${TUN}`));
    assert.match(routeGet(GUARD.host), /via 10\.80\.0\.1 dev eth0/);
    assert.match(routeGet('1.1.1.1'), /via 10\.80\.0\.1 dev eth0/, 'the rest keeps the default');
    assert.match(routeGet('10.81.0.1'), new RegExp(`dev ${TUN}`));
    assert.ok(await ping(GUARD.host), 'the guard stays reachable outside');
    await child.call('routing-stop');
    assert.equal(routes(), baseline);

    const d2 = await child.call<Described>('routing-start', {
      mode: 'split',
      cidrs: ['198.51.100.0/24'],
    });
    assert.equal(d2.guardRoute, null, 'no host route when no listed prefix holds the guard');
    assert.deepEqual(d2.routes, [`198.51.100.0/24 dev ${TUN}`]);
    await child.call('routing-stop');
    assert.equal(routes(), baseline);
  });

  it('a conflicting route makes start() fail with a clear error and undo what it added', async () => {
    lab.sh(nsC, 'ip route add 128.0.0.0/1 via 10.80.0.1');
    try {
      const r = await child.request('routing-start', { mode: 'full' });
      assert.equal(r.ok, false);
      assert.match(r.error ?? '', /a route to 128\.0\.0\.0\/1 already exists/);
      assert.ok(!(r.error ?? '').includes('\n'), 'one line');
      assert.match(routes(), /128\.0\.0\.0\/1 via 10\.80\.0\.1 dev eth0/, 'theirs untouched');
    } finally {
      lab.sh(nsC, 'ip route del 128.0.0.0/1 via 10.80.0.1');
    }
    assert.equal(routes(), baseline, 'the guard route and 0.0.0.0/1 were rolled back');
  });

  it('removeStale() deletes the tables of dead clients only', async () => {
    // Above the largest possible pid (2^22), so never alive.
    lab.sh(nsC, 'nft add table inet shallot_client_4194999');
    lab.sh(nsC, `nft add table inet shallot_client_${process.pid}`);
    const { table } = await child.call<{ table: string }>('ks-start');
    await child.call('ks-remove-stale');
    const t = tables();
    assert.doesNotMatch(t, /shallot_client_4194999/, 'the dead one is gone');
    assert.match(t, new RegExp(`shallot_client_${process.pid}\\b`), 'a live owner keeps its table');
    assert.match(t, new RegExp(`${table}\\b`), 'the running switch keeps its table');
    lab.sh(nsC, `nft delete table inet shallot_client_${process.pid}`);
    await child.call('ks-stop');
    assert.doesNotMatch(tables(), /shallot_client_/);
    await child.call('ks-stop');
  });
});
