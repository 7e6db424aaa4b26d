/**
 * Relay discovery end to end: real shallot processes and a private DHT.
 * The client is given only the bootstrap node's address; everything else
 * it learns from the DHT (announced link ports, key queries, BEP 44
 * descriptors), while a forger offers it forged descriptors throughout.
 *
 *   C 10.1.0.2 (client)          B 10.8.0.2 (DHT bootstrap, UDP 6881)
 *   R1 10.2.0.2  R2 10.3.0.2  R3 10.4.0.2 (relays)  R4 10.6.0.2 (joins later)
 *   E1 10.5.0.2 (exit, --allow 10.0.0.0/8)          D 10.7.0.2 (destination)
 *   F 10.9.0.2 (forger: DHT node on 6881, forged relays on 7000-7008)
 *   all joined by router ns "R" (10.N.0.1 on its side of each link)
 *
 * Relays publish descriptors valid for 30 s (renewed every 10 s), the exit
 * for 120 s (see EXIT_LIFETIME_S); the client looks in the DHT every 3 s.
 * The steps run in order on one overlay, ordered so that waits overlap:
 * (1) first circuit and traffic; (2) a relay off the circuit is killed and
 * leaves the client's known list when its descriptor expires, while R4
 * joins; (3) the middle is killed and the rebuilt circuit goes through R4;
 * (4) no forged descriptor was ever known or used, each forgery was
 * rejected for its own reason; (5) the bootstrap node dies: the circuit
 * keeps working and discovery goes on without it; (6) a restarted client
 * builds its circuit from its cache; (7) the client picked up the exit's
 * renewed descriptor.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { descriptorFromText, verifyDescriptor } from '../../src/descriptor/descriptor.js';
import { readStatus } from '../../src/status-file.js';
import { e2eSkipReason, Lab, sweepStale, waitFor } from '../helpers/netns.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..', '..');
const CLI = path.join(root, 'dist', 'src', 'cli', 'main.js');
const TRAFFIC = path.join(here, 'fixtures', 'traffic.js');
const FORGER = path.join(here, 'fixtures', 'forger.js');
const NODE = process.execPath;
const MARKER = 'DISCOVERY-MARKER-77c3';
const NET = 'disctest';
const LIFETIME_S = 30;
// The exit's descriptor lives longer (renewed every 40 s), long enough to
// outlast the run: once the circuit is up, the client's discovery traffic
// goes through the exit, which refuses traffic to its own address
// ('own-address'), so the client cannot fetch the exit's renewed
// descriptors (the last test checks that it does). With 30 s the exit would
// leave the client's known relays half a minute after the first circuit.
const EXIT_LIFETIME_S = 120;
const HTTP_BYTES = 4 << 20;

const skip = e2eSkipReason(['ping', 'nft']);

type Proc = ReturnType<Lab['spawn']>;

interface Addr {
  host: string;
  port: number;
}
interface Hop {
  id: string;
  address: Addr;
}
interface ClientStatus {
  pid?: number;
  running?: boolean;
  lastRejection?: string | null;
  discovery?: {
    dht?: { nodes: number };
    relays?: {
      cached: number;
      known: { id: string; address: Addr; exit: boolean }[];
      refreshes: number;
      accepted: number;
      rejected: Record<string, number>;
      noKeyAnswer: number;
      keyAnswers: number;
      peersSeen: number;
      itemsMissing: number;
    };
  };
  circuit?: { state: string; hops: Hop[] } | null;
  client?: { circuitsBuilt: number };
}
interface RelayStatus {
  id: string;
  dht: { nodes: number; published: boolean } | null;
}
interface Forgery {
  name: string;
  id: string;
  port: number;
  expect: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('relay discovery through a private DHT', { skip: skip ?? false, timeout: 300_000 }, () => {
  const lab = new Lab();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'shallot-disc-'));
  const ns: Record<string, string> = {};
  const ids: Record<string, string> = {};
  const procs: Record<string, Proc> = {};
  const addr: Record<string, string> = {
    C: '10.1.0.2',
    R1: '10.2.0.2',
    R2: '10.3.0.2',
    R3: '10.4.0.2',
    E1: '10.5.0.2',
    R4: '10.6.0.2',
    D: '10.7.0.2',
    B: '10.8.0.2',
    F: '10.9.0.2',
  };
  const BOOT = `${addr.B}:6881`;
  const dirOf = (n: string) => path.join(tmp, n);
  const nameOf = (id: string) => Object.keys(ids).find((n) => ids[n] === id) ?? id.slice(0, 12);
  let forgeries: Forgery[] = [];
  const t0 = Date.now();
  const times: Record<string, number> = {};
  const mark = (what: string) => {
    times[what] = (Date.now() - t0) / 1000;
  };

  // What the client ever reported, sampled from its status file (the file
  // `shallot status` reads) every 200 ms for the whole run.
  const seen = {
    samples: 0,
    knownIds: new Set<string>(),
    knownHosts: new Set<string>(),
    hopIds: new Set<string>(),
    lastKnownAt: new Map<string, number>(),
    /** The client's discovery state each time it changed (printed on failure). */
    timeline: [] as string[],
    /** What the exit refused to forward for the client (status lastRejection). */
    exitRefusals: new Set<string>(),
    lastLine: '',
  };
  let monitor: NodeJS.Timeout | undefined;
  const sample = () => {
    const s = readStatus(dirOf('C')) as ClientStatus | null;
    if (!s) return;
    seen.samples += 1;
    const now = Date.now();
    for (const k of s.discovery?.relays?.known ?? []) {
      seen.knownIds.add(k.id);
      seen.knownHosts.add(k.address.host);
      seen.lastKnownAt.set(k.id, now);
    }
    for (const h of s.circuit?.hops ?? []) seen.hopIds.add(h.id);
    if (s.lastRejection) seen.exitRefusals.add(s.lastRejection);
    const r = s.discovery?.relays;
    const line =
      `pid ${String(s.pid)} dht ${s.discovery?.dht?.nodes ?? '-'} nodes; refreshes ${r?.refreshes ?? '-'}, ` +
      `peers ${r?.peersSeen ?? '-'}, keys ${r?.keyAnswers ?? '-'}/${r?.noKeyAnswer ?? '-'} missing ${r?.itemsMissing ?? '-'}, ` +
      `accepted ${r?.accepted ?? '-'}; known ${(r?.known ?? []).map((k) => nameOf(k.id)).join(',')}; ` +
      `circuit ${(s.circuit?.hops ?? []).map((h) => nameOf(h.id)).join('-')}`;
    if (line !== seen.lastLine) {
      seen.lastLine = line;
      seen.timeline.push(`${((now - t0) / 1000).toFixed(1)} s: ${line}`);
    }
  };
  // Every client process's output (the client is restarted in step 6).
  const clientLogs: Proc[] = [];
  const clientLog = () => clientLogs.map((p) => p.output()).join('\n');

  const statusOf = async <T = ClientStatus>(n: string): Promise<T> => {
    const r = await lab.exec(ns[n] as string, NODE, [CLI, 'status', '--state', dirOf(n), '--json']);
    return JSON.parse(r.stdout) as T;
  };
  const known = async () => ((await statusOf('C')).discovery?.relays?.known ?? []).map((k) => k.id);
  const hopsOf = async () => ((await statusOf('C')).circuit?.hops ?? []).map((h) => h.id);
  const ping = async (target: string, count = 1) =>
    (
      await lab.exec(
        ns.C as string,
        'ping',
        ['-c', String(count), '-W', '2', '-i', '0.3', target],
        20_000,
      )
    ).code === 0;
  const download = async (bytes: number) => {
    const expected = execFileSync(NODE, [TRAFFIC, 'sha', String(bytes), MARKER], {
      encoding: 'utf8',
    }).trim();
    const port = bytes === HTTP_BYTES ? 8080 : 8081;
    const got = await lab.exec(
      ns.C as string,
      NODE,
      [TRAFFIC, 'http-get', `http://${addr.D}:${port}/data`],
      60_000,
    );
    assert.equal(got.stdout.trim(), `${bytes} ${expected}`, `HTTP download: ${got.stderr}`);
  };
  const startRelay = (n: string) => {
    procs[n] = lab.spawn(ns[n] as string, NODE, [
      CLI,
      'relay',
      '--allow-private-extend',
      '--state',
      dirOf(n),
      '--listen',
      `${addr[n]}:7000`,
      '--bootstrap',
      BOOT,
      '--network',
      NET,
      '--descriptor-lifetime',
      String(LIFETIME_S),
    ]);
  };
  const startClient = () => {
    const p = lab.spawn(ns.C as string, NODE, [
      CLI,
      'client',
      '--state',
      dirOf('C'),
      '--bootstrap',
      BOOT,
      '--network',
      NET,
      '--refresh',
      '3',
      '--dev',
      'shallot0',
    ]);
    clientLogs.push(p);
    procs.C = p;
    return p;
  };
  const published = async (n: string) => {
    const s = readStatus(dirOf(n)) as RelayStatus | null;
    return s?.dht?.published === true;
  };
  /** A descriptor line's node id and publication time (null if it does not verify). */
  const descriptorOf = (line: string) => {
    const wire = descriptorFromText(line);
    const r = wire
      ? verifyDescriptor(wire, { now: Math.floor(Date.now() / 1000), network: NET })
      : null;
    return r?.ok ? { id: r.descriptor.id, published: r.descriptor.published } : null;
  };
  const failWith = (e: unknown, names: string[]): never => {
    const tail = (text: string) =>
      text.length <= 3000 ? text : `${text.slice(0, 1500)}\n[...]\n${text.slice(-1500)}`;
    const out = names.map(
      (n) => `--- ${n}:\n${tail((procs[n] as Proc | undefined)?.output() ?? '')}`,
    );
    const timeline = names.includes('C')
      ? `\n--- client timeline:\n${seen.timeline.join('\n')}`
      : '';
    throw new Error(`${(e as Error).message}\n${out.join('\n')}${timeline}`);
  };

  // Step state shared between the tests (they run in order).
  let guard = '';
  let middle = '';
  let leaver = '';
  let bootstrapDiedAt = 0;
  let leaverGoneAt = 0;
  let exitFirstPublished = 0;

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
    for (const n of ['R1', 'R2', 'R3', 'E1', 'R4']) {
      const out = execFileSync(NODE, [CLI, 'keygen', '--state', dirOf(n)], { encoding: 'utf8' });
      ids[n] = out.trim().split('\n').pop() as string;
    }
    procs.B = lab.spawn(ns.B as string, NODE, [CLI, 'bootstrap', '--listen', BOOT]);
    await waitFor('the bootstrap node', () => procs.B!.output().includes('bootstrap node on'));
    for (const n of ['R1', 'R2', 'R3']) startRelay(n);
    procs.E1 = lab.spawn(ns.E1 as string, NODE, [
      CLI,
      'exit',
      '--allow-private-extend',
      '--state',
      dirOf('E1'),
      '--listen',
      `${addr.E1}:7000`,
      '--bootstrap',
      BOOT,
      '--network',
      NET,
      '--descriptor-lifetime',
      String(EXIT_LIFETIME_S),
      '--pool',
      '10.200.0.0/16',
      '--allow',
      '10.0.0.0/8',
      '--dev',
      'shexit0',
    ]);
    procs.D1 = lab.spawn(ns.D as string, NODE, [
      TRAFFIC,
      'http-serve',
      '8080',
      String(HTTP_BYTES),
      MARKER,
    ]);
    procs.D2 = lab.spawn(ns.D as string, NODE, [TRAFFIC, 'http-serve', '8081', '200000', MARKER]);
    // The forger replays and impersonates the exit: its descriptor file
    // exists once the exit has started.
    await waitFor('the exit descriptor', () =>
      fs.existsSync(path.join(dirOf('E1'), 'descriptor.txt')),
    );
    procs.F = lab.spawn(ns.F as string, NODE, [
      FORGER,
      BOOT,
      NET,
      addr.F as string,
      '7000',
      path.join(dirOf('E1'), 'descriptor.txt'),
    ]);
    try {
      await waitFor(
        'relays, exit and forger to publish in the DHT',
        async () =>
          (await Promise.all(['R1', 'R2', 'R3', 'E1'].map(published))).every(Boolean) &&
          /^ready$/m.test(procs.F!.output()),
        30_000,
        200,
      );
    } catch (e) {
      failWith(e, ['B', 'R1', 'E1', 'F']);
    }
    mark('published');
    exitFirstPublished =
      descriptorOf(fs.readFileSync(path.join(dirOf('E1'), 'descriptor.txt'), 'utf8'))?.published ??
      0;
    const line = /^forged (.*)$/m.exec(procs.F.output());
    forgeries = JSON.parse(line?.[1] ?? '[]') as Forgery[];
    assert.equal(forgeries.length, 9, 'the forger lists its forgeries');
    monitor = setInterval(sample, 200);
    startClient();
    try {
      await waitFor(
        'a circuit',
        () =>
          clientLog().includes('circuit ready') &&
          (readStatus(dirOf('C')) as ClientStatus | null)?.circuit?.state === 'ready',
        45_000,
        200,
      );
    } catch (e) {
      failWith(e, ['C', 'F']);
    }
    mark('first circuit');
  });

  after(async () => {
    if (monitor) clearInterval(monitor);
    console.log(`# discovery e2e timings (s since start): ${JSON.stringify(times)}`);
    await lab.cleanup();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('a client that knows only the bootstrap node reaches the destination through 3 hops', async () => {
    const log = clientLog();
    assert.match(log, /looking up relays of network 'disctest' in the DHT/);
    assert.doesNotMatch(log, /relays in the cache/, 'no cache on the first start');
    const st = await statusOf('C');
    const k = (st.discovery?.relays?.known ?? []).map((x) => x.id);
    for (const n of ['R1', 'R2', 'R3', 'E1']) assert.ok(k.includes(ids[n] as string), `${n} known`);
    assert.ok((st.discovery?.dht?.nodes ?? 0) > 0, 'the client has DHT nodes');
    const hops = (st.circuit?.hops ?? []).map((h) => h.id);
    assert.equal(hops.length, 3, 'a 3-hop circuit');
    assert.equal(hops[2], ids.E1, 'through the exit');
    for (const h of hops.slice(0, 2))
      assert.ok(['R1', 'R2', 'R3'].includes(nameOf(h)), `hop ${h} is a relay`);
    assert.ok(await ping(addr.D as string, 3), 'ping through the circuit');
    await download(HTTP_BYTES);
    [guard, middle] = hops as [string, string];
    mark('traffic checked');
  });

  it('a relay that leaves drops out of the known list once its descriptor expires; a new one joins', async () => {
    const st = await statusOf('C');
    assert.deepEqual(
      (st.circuit?.hops ?? []).map((h) => h.id),
      [guard, middle, ids.E1],
      'still the first circuit',
    );
    leaver = ['R1', 'R2', 'R3']
      .map((n) => ids[n] as string)
      .find((i) => i !== guard && i !== middle)!;
    const leaverName = nameOf(leaver);
    assert.ok((await known()).includes(leaver), 'the leaver is known before it leaves');
    const killedAt = Date.now();
    procs[leaverName]!.kill('SIGKILL');
    // R4 joins now: both waits overlap.
    startRelay('R4');
    mark(`killed ${leaverName}`);
    await waitFor(
      `${leaverName} to leave the known list`,
      async () => !(await known()).includes(leaver),
      LIFETIME_S * 1000 + 15_000,
      500,
    );
    const gone = (Date.now() - killedAt) / 1000;
    mark(`${leaverName} gone from known (${gone.toFixed(1)} s after kill)`);
    assert.ok(gone <= LIFETIME_S + 5, `gone within the descriptor lifetime (${gone} s)`);
    await waitFor(
      'R4 in the known list',
      async () => (await known()).includes(ids.R4 as string),
      30_000,
      500,
    );
    mark('R4 known');
    // It stays out: checked again after the next steps (from every sample
    // of the client's status since).
    leaverGoneAt = Date.now();
  });

  it('a relay that joins is chosen after it publishes: the middle dies and the new middle is R4', async () => {
    const st = await statusOf('C');
    // The logic holds only if nothing changed since step 1: the guard is
    // kept, the failed middle is avoided, the leaver is gone and the exit
    // cannot be a middle, so R4 is the only candidate.
    assert.deepEqual(
      (st.circuit?.hops ?? []).map((h) => h.id),
      [guard, middle, ids.E1],
    );
    assert.equal(st.client?.circuitsBuilt, 1, 'no rebuild since the first circuit');
    assert.deepEqual(
      (st.discovery?.relays?.known ?? []).map((x) => nameOf(x.id)).sort(),
      [nameOf(guard), nameOf(middle), 'E1', 'R4'].sort(),
      `the known relays (${JSON.stringify({
        lastRejection: st.lastRejection,
        noKeyAnswer: st.discovery?.relays?.noKeyAnswer,
        keyAnswers: st.discovery?.relays?.keyAnswers,
      })})`,
    );
    assert.equal(await published('R4'), true, 'R4 published its descriptor');
    assert.ok(!seen.hopIds.has(ids.R4 as string), 'R4 was not in a circuit before');
    const killedAt = Date.now();
    procs[nameOf(middle)]!.kill('SIGKILL');
    mark(`killed middle ${nameOf(middle)}`);
    try {
      await waitFor(
        'a rebuilt circuit',
        async () => {
          const s = await statusOf('C');
          return s.circuit?.state === 'ready' && s.circuit.hops[1]?.id !== middle;
        },
        45_000,
        500,
      );
    } catch (e) {
      failWith(e, ['C']);
    }
    mark(`rebuilt (${((Date.now() - killedAt) / 1000).toFixed(1)} s after kill)`);
    const hops = await hopsOf();
    assert.deepEqual(hops.map(nameOf), [nameOf(guard), 'R4', 'E1'], 'guard kept, R4 the middle');
    assert.ok(await ping(addr.D as string, 3), 'ping through the new circuit');
  });

  it('never uses a forged descriptor and counts each forgery under its reason', async () => {
    const st = await statusOf('C');
    const rejected = st.discovery?.relays?.rejected ?? {};
    const expected = [...new Set(forgeries.map((f) => f.expect))].sort();
    assert.deepEqual(expected, [
      'address-mismatch',
      'bad-signature',
      'expired',
      'malformed',
      'not-yet-valid',
      'oversize',
      'wrong-key',
      'wrong-network',
    ]);
    for (const reason of expected) {
      assert.ok((rejected[reason] ?? 0) >= 1, `rejected as ${reason}: ${JSON.stringify(rejected)}`);
    }
    // Nothing else was rejected: the genuine relays never were.
    assert.deepEqual(
      Object.keys(rejected).filter((r) => !expected.includes(r)),
      [],
      JSON.stringify(rejected),
    );
    // 'bad-signature' comes from two forgeries each round, the others from one.
    assert.ok((rejected['bad-signature'] ?? 0) >= 2);
    assert.ok(seen.samples > 100, `the monitor sampled the client (${seen.samples})`);
    const forgedIds = new Set(forgeries.map((f) => f.id));
    for (const id of forgedIds) {
      assert.ok(!seen.knownIds.has(id), `forged id ${id} never known`);
      assert.ok(!seen.hopIds.has(id), `forged id ${id} never a hop`);
    }
    assert.ok(!seen.knownHosts.has(addr.F as string), 'no known relay at the forger address');
    // The impersonated exit is known only at its own address.
    for (const k of st.discovery?.relays?.known ?? [])
      assert.equal(k.address.host, addr[nameOf(k.id)], `${nameOf(k.id)} at its own address`);
    // Every circuit the client tried: only genuine relays, never the forger.
    const builds = clientLog()
      .split('\n')
      .filter((l) => l.includes('building circuit:'));
    assert.ok(builds.length >= 2, 'the client logged its builds');
    for (const b of builds) {
      assert.ok(!b.includes(addr.F as string), `no build through the forger: ${b}`);
      for (const id of forgedIds) assert.ok(!b.includes(id.slice(0, 8)), b);
    }
    for (const id of seen.hopIds) assert.ok(Object.values(ids).includes(id), `hop ${id} genuine`);
    // The overlay keeps working.
    assert.ok(await ping(addr.D as string, 2));
    await download(200_000);
    console.log(`# rejected: ${JSON.stringify(rejected)}`);
  });

  it('survives the death of the bootstrap node: the circuit keeps working and discovery goes on', async () => {
    const before_ = await statusOf('C');
    const acceptedBefore = before_.discovery?.relays?.accepted ?? 0;
    procs.B!.kill('SIGKILL');
    await waitFor(
      'the bootstrap node to die',
      () => procs.B!.exitCode !== null || procs.B!.signalCode !== null,
    );
    bootstrapDiedAt = Date.now();
    mark('bootstrap killed');
    assert.ok(await ping(addr.D as string, 3), 'the existing circuit keeps working');
    // The dead middle leaves the known list (so a restarted client has
    // exactly the guard, R4 and the exit to build from) ...
    await waitFor(
      'the dead middle to leave the known list',
      async () => !(await known()).includes(middle),
      LIFETIME_S * 1000 + 15_000,
      500,
    );
    mark('dead middle gone from known');
    // ... while the live relays stay: a full descriptor lifetime after the
    // bootstrap died, their descriptors can only have come from the DHT
    // without it.
    await sleep(bootstrapDiedAt + (LIFETIME_S + 2) * 1000 - Date.now());
    const st = await statusOf('C');
    const names = (st.discovery?.relays?.known ?? []).map((k) => nameOf(k.id)).sort();
    if (JSON.stringify(names) !== JSON.stringify([nameOf(guard), 'E1', 'R4'].sort())) {
      failWith(
        new Error(`known relays ${LIFETIME_S + 2} s after the bootstrap died: ${names.join(',')}`),
        ['C'],
      );
    }
    assert.ok((st.discovery?.relays?.accepted ?? 0) > acceptedBefore, 'descriptors accepted since');
    assert.ok(
      (seen.lastKnownAt.get(leaver) ?? 0) < leaverGoneAt,
      'the relay that left never came back into the known list',
    );
    mark('discovery works without the bootstrap');
  });

  it('a restarted client builds its circuit from its cache with the bootstrap dead', async () => {
    const cacheFile = path.join(dirOf('C'), 'relays-cache.txt');
    assert.ok(fs.existsSync(cacheFile), 'the client keeps a relay cache');
    const old = procs.C!;
    const stopAt = Date.now();
    const code = await lab.stop(old, 15_000);
    mark(`client stopped (${((Date.now() - stopAt) / 1000).toFixed(1)} s after SIGTERM)`);
    assert.equal(code, 0, `the client stops cleanly: ${old.output().slice(-1500)}`);
    const fresh = startClient();
    try {
      await waitFor(
        'a circuit after the restart',
        () => {
          const st = readStatus(dirOf('C')) as ClientStatus | null;
          return (
            fresh.output().includes('circuit ready') &&
            st?.pid === fresh.pid &&
            st?.circuit?.state === 'ready'
          );
        },
        30_000,
        200,
      );
    } catch (e) {
      failWith(e, ['C']);
    }
    mark('circuit after restart');
    assert.match(
      fresh.output(),
      /\d+ relays in the cache; refreshing from the DHT in the background/,
    );
    assert.doesNotMatch(
      fresh.output(),
      /looking up relays/,
      'no DHT wait before the first circuit',
    );
    assert.equal(procs.B!.signalCode, 'SIGKILL', 'the bootstrap node is still dead');
    assert.ok(await ping(addr.D as string, 3), 'ping after the restart');
    const hops = await hopsOf();
    assert.deepEqual(hops.map(nameOf), [nameOf(guard), 'R4', 'E1'], 'the same guard, R4, the exit');
  });

  it('the client picks up the renewed descriptor of the exit it uses', async () => {
    const exitFile = path.join(dirOf('E1'), 'descriptor.txt');
    // The exit renews its descriptor every EXIT_LIFETIME_S / 3; give the
    // client's refreshes (every 3 s) 15 s to see the first renewal.
    const renewedBy = (exitFirstPublished + EXIT_LIFETIME_S / 3 + 15) * 1000;
    await sleep(renewedBy - Date.now());
    const current = descriptorOf(fs.readFileSync(exitFile, 'utf8'))?.published ?? 0;
    assert.ok(current > exitFirstPublished, 'the exit has renewed its descriptor');
    const cachedPublished = Math.max(
      0,
      ...fs
        .readFileSync(path.join(dirOf('C'), 'relays-cache.txt'), 'utf8')
        .split('\n')
        // Cache v2: the text descriptor, then its vetted addresses, tab-separated.
        .map((line) => descriptorOf(line.split('\t')[0] ?? ''))
        .filter((d) => d?.id === ids.E1)
        .map((d) => d?.published ?? 0),
    );
    assert.ok(
      cachedPublished > exitFirstPublished,
      `the client's cached exit descriptor is the first one (published ${cachedPublished}; ` +
        `the exit's current one ${current}); what the exit refused the client: ` +
        JSON.stringify([...seen.exitRefusals]),
    );
  });
});
