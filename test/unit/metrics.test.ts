import assert from 'node:assert/strict';
import net from 'node:net';
import { test } from 'node:test';
import { ShallotError } from '../../src/errors.js';
import {
  escapeLabelValue,
  isLoopbackHost,
  renderMetrics,
  snakeCase,
  startMetricsServer,
} from '../../src/metrics/prometheus.js';

const REMOTE_REFUSAL =
  'metrics must bind to localhost (127.0.0.1 or ::1); exposing them elsewhere needs --metrics-allow-remote';

function isOneLineUserError(e: unknown): boolean {
  return e instanceof ShallotError && e.kind === 'user' && !e.message.includes('\n');
}

/** A relay+exit status as node-commands.ts publishes it. */
function relayStatus(): Record<string, unknown> {
  return {
    role: 'exit',
    state: 'running',
    pid: 4242,
    id: 'b3f1c2',
    updatedAt: '2025-01-01T00:00:00.000Z',
    memory: { rss: 52_428_800 },
    circuits: 3,
    relay: {
      cellsIn: 1200,
      cellsOut: 1150,
      circuitsCreated: 4,
      circuitsClosed: 1,
      extends: 2,
      extendFailures: 0,
      drops: { unknownCircuit: 1, badTag: 0, replay: 2, badCell: 0, notExit: 0 },
    },
    link: {
      address: { host: '0.0.0.0', port: 7000 },
      counters: {
        rxDatagrams: 5000,
        txDatagrams: 4900,
        helloVerifySent: 7,
        linksAccepted: 3,
        linksUp: 3,
        linksDown: 1,
        drops: { garbage: 12, noLink: 0, peerLimit: 0, unauthenticated: 1, badMessage: 0 },
        authFailures: 0,
        unauthorized: 0,
      },
      peers: [
        {
          id: 'aa11',
          address: '10.0.0.2:7000',
          role: 'listener',
          state: 'up',
          cipher: 'TLS_CHACHA20_POLY1305_SHA256',
          upForMs: 60_000,
          lastHeardMsAgo: 12,
          rxPackets: 800,
          txPackets: 790,
          rxBytes: 1_000_000,
          txBytes: 990_000,
        },
        {
          id: null,
          address: '[fd00::3]:7000',
          role: 'dialer',
          state: 'handshake',
          cipher: null,
          upForMs: 0,
          lastHeardMsAgo: 300,
          rxPackets: 1,
          txPackets: 2,
          rxBytes: 150,
          txBytes: 300,
        },
      ],
      dialing: [{ address: '10.0.0.9:7000', expectedId: 'cc33', lastFailure: null }],
    },
    exit: {
      toInternet: 400,
      fromInternet: 380,
      leases: 2,
      drops: { noLease: 0, policy: 5 },
      rejectsByReason: { private: 4, 'own-address': 1 },
    },
    leases: [{ address: '10.200.0.2', circuit: true }],
  };
}

test('known answer for a small nested status', () => {
  const text = renderMetrics({
    role: 'relay',
    state: 'running',
    id: 'n1',
    pid: 7,
    memory: { rss: 1024 },
    circuits: 3,
    relay: { cellsIn: 10, cellsOut: 9, drops: { badTag: 1 } },
    link: {
      counters: { rxDatagrams: 5, drops: { garbage: 2 } },
      peers: [
        { id: 'p2', address: '10.0.0.2:7000', state: 'up', upForMs: 1500, rxBytes: 100 },
        { id: null, address: '10.0.0.3:7000', state: 'handshake', upForMs: 0, rxBytes: 0 },
      ],
    },
  });
  assert.equal(
    text,
    [
      '# TYPE shallot_circuits gauge',
      'shallot_circuits 3',
      '# TYPE shallot_info gauge',
      'shallot_info{role="relay",id="n1"} 1',
      '# TYPE shallot_link_counters_drops_garbage counter',
      'shallot_link_counters_drops_garbage 2',
      '# TYPE shallot_link_counters_rx_datagrams counter',
      'shallot_link_counters_rx_datagrams 5',
      '# TYPE shallot_link_peer_rx_bytes counter',
      'shallot_link_peer_rx_bytes{peer="10.0.0.3:7000",state="handshake"} 0',
      'shallot_link_peer_rx_bytes{peer="p2",state="up"} 100',
      '# TYPE shallot_link_peer_up_for_ms gauge',
      'shallot_link_peer_up_for_ms{peer="10.0.0.3:7000",state="handshake"} 0',
      'shallot_link_peer_up_for_ms{peer="p2",state="up"} 1500',
      '# TYPE shallot_memory_rss gauge',
      'shallot_memory_rss 1024',
      '# TYPE shallot_pid gauge',
      'shallot_pid 7',
      '# TYPE shallot_relay_cells_in counter',
      'shallot_relay_cells_in 10',
      '# TYPE shallot_relay_cells_out counter',
      'shallot_relay_cells_out 9',
      '# TYPE shallot_relay_drops_bad_tag counter',
      'shallot_relay_drops_bad_tag 1',
      '',
    ].join('\n'),
  );
});

test('a realistic status renders valid exposition text', () => {
  const text = renderMetrics(relayStatus());
  assert.ok(text.endsWith('\n'));
  const lines = text.slice(0, -1).split('\n');
  const typed = new Map<string, string>();
  const sample =
    /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*\})? (-?[0-9.e+]+)$/;
  for (const line of lines) {
    const t = /^# TYPE (\S+) (counter|gauge)$/.exec(line);
    if (t) {
      assert.ok(!typed.has(t[1] as string), `TYPE twice for ${t[1]}`);
      typed.set(t[1] as string, t[2] as string);
      continue;
    }
    const m = sample.exec(line);
    assert.ok(m, `not a valid sample line: ${line}`);
    assert.ok(typed.has(m[1] as string), `sample before its TYPE: ${line}`);
  }
  for (const expected of [
    'shallot_info{role="exit",id="b3f1c2"} 1',
    'shallot_memory_rss 52428800',
    'shallot_relay_cells_in 1200',
    'shallot_relay_drops_replay 2',
    'shallot_link_counters_hello_verify_sent 7',
    'shallot_link_address_port 7000',
    'shallot_link_peer_rx_bytes{peer="aa11",state="up"} 1000000',
    'shallot_link_peer_tx_packets{peer="[fd00::3]:7000",state="handshake"} 2',
    'shallot_link_peer_last_heard_ms_ago{peer="aa11",state="up"} 12',
    'shallot_exit_to_internet 400',
    'shallot_exit_drops_policy 5',
    'shallot_exit_rejects_by_reason_own_address 1',
  ]) {
    assert.ok(lines.includes(expected), `missing: ${expected}\n${text}`);
  }
  // Strings, booleans and nulls other than role/labels are skipped.
  assert.ok(!/updated_at|cipher|_state |state_|lease_circuit|dialing|_role /.test(text), text);
  assert.equal(typed.get('shallot_link_peer_rx_bytes'), 'counter');
  assert.equal(typed.get('shallot_link_peer_up_for_ms'), 'gauge');
});

test('counter vs gauge typing', () => {
  const text = renderMetrics({
    a: { drops: { x: 1, nested: { y: 1 } }, counters: { z: 1 } },
    b: {
      cellsIn: 1,
      cellsOut: 1,
      helloVerifySent: 1,
      packetsReceived: 1,
      rxDatagrams: 1,
      txBytes: 1,
      rx: 1,
      circuits: 1,
      login: 1,
      rxxCount: 1,
      upForMs: 1,
      timeout: 1,
    },
    memory: { rss: 1 },
  });
  const types = Object.fromEntries(
    [...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1], m[2]]),
  );
  assert.deepEqual(types, {
    shallot_a_counters_z: 'counter',
    shallot_a_drops_nested_y: 'counter',
    shallot_a_drops_x: 'counter',
    shallot_b_cells_in: 'counter',
    shallot_b_cells_out: 'counter',
    shallot_b_circuits: 'gauge',
    shallot_b_hello_verify_sent: 'counter',
    shallot_b_login: 'gauge',
    shallot_b_packets_received: 'counter',
    shallot_b_rx: 'counter',
    shallot_b_rx_datagrams: 'counter',
    shallot_b_rxx_count: 'gauge',
    shallot_b_timeout: 'gauge',
    shallot_b_tx_bytes: 'counter',
    shallot_b_up_for_ms: 'gauge',
    shallot_memory_rss: 'gauge',
  });
});

test('label values are escaped: backslash, double quote, newline', () => {
  assert.equal(escapeLabelValue('a\\b"c\nd'), 'a\\\\b\\"c\\nd');
  const text = renderMetrics({
    role: 'relay\n"x"',
    id: 'C:\\node',
    link: { peers: [{ id: 'p"1\\\n', state: 'up', rxBytes: 3 }] },
  });
  assert.ok(text.includes('shallot_info{role="relay\\n\\"x\\"",id="C:\\\\node"} 1\n'), text);
  assert.ok(text.includes('shallot_link_peer_rx_bytes{peer="p\\"1\\\\\\n",state="up"} 3\n'), text);
  // Every line is one line: no raw newline leaked from a label.
  for (const line of text.split('\n')) {
    if (line !== '') assert.match(line, /^(# TYPE \S+ (counter|gauge)|shallot_\S*( |\{.*\} )\d+)$/);
  }
});

test('names: snake_case and sanitising', () => {
  assert.equal(snakeCase('rxDatagrams'), 'rx_datagrams');
  assert.equal(snakeCase('lastHeardMsAgo'), 'last_heard_ms_ago');
  assert.equal(snakeCase('HTTPRequests'), 'http_requests');
  assert.equal(snakeCase('own-address'), 'own_address');
  assert.equal(snakeCase('a.b c/d'), 'a_b_c_d');
  assert.equal(snakeCase('v4'), 'v4');
  const text = renderMetrics({ 'weird key!': { 'x--y': 1 }, é: 2, memory: { '%': 3 } });
  assert.equal(text, '# TYPE shallot_weird_key_x_y gauge\nshallot_weird_key_x_y 1\n');
});

test('output is deterministic and sorted regardless of key and peer order', () => {
  const a = relayStatus();
  const b = relayStatus();
  const link = b.link as { peers: unknown[] };
  link.peers.reverse();
  const shuffled = Object.fromEntries(Object.entries(b).reverse());
  const first = renderMetrics(a);
  assert.equal(renderMetrics(shuffled), first);
  assert.equal(renderMetrics(a), first);
  const names = first
    .split('\n')
    .filter((l) => l.startsWith('# TYPE '))
    .map((l) => l.split(' ')[2] as string);
  assert.deepEqual(names, [...names].sort());
  assert.equal(new Set(names).size, names.length);
});

test('non-finite numbers, non-plain objects, duplicates and cycles are skipped', () => {
  const cyclic: Record<string, unknown> = { n: 1 };
  cyclic.self = cyclic;
  const text = renderMetrics({
    nan: NaN,
    inf: Infinity,
    flag: true,
    nothing: null,
    buf: Buffer.from([1, 2, 3]),
    map: new Map([['a', 1]]),
    list: [1, 2, 3],
    zero: -0,
    half: 0.5,
    cyclic,
    'a-b': 1,
    a_b: 2,
    peers: [{ id: 'x', v: 1 }, { id: 'x', v: 2 }, { v: 3 }],
  });
  assert.equal(
    text,
    [
      '# TYPE shallot_a_b gauge',
      'shallot_a_b 1',
      '# TYPE shallot_cyclic_n gauge',
      'shallot_cyclic_n 1',
      '# TYPE shallot_half gauge',
      'shallot_half 0.5',
      '# TYPE shallot_peer_v gauge',
      'shallot_peer_v{peer="2"} 3',
      'shallot_peer_v{peer="x"} 1',
      '# TYPE shallot_zero gauge',
      'shallot_zero 0',
      '',
    ].join('\n'),
  );
  assert.equal(renderMetrics({}), '');
});

test('isLoopbackHost', () => {
  for (const h of [
    '127.0.0.1',
    '127.1.2.3',
    '::1',
    '[::1]',
    '0:0:0:0:0:0:0:1',
    '::ffff:127.0.0.1',
  ]) {
    assert.ok(isLoopbackHost(h), h);
  }
  assert.ok(isLoopbackHost('localhost'));
  for (const h of [
    '0.0.0.0',
    '::',
    '[::]',
    '10.0.0.1',
    '::2',
    'fe80::1',
    '::ffff:10.0.0.1',
    'example.com',
    '',
  ]) {
    assert.ok(!isLoopbackHost(h), h);
  }
});

test('server answers /metrics on 127.0.0.1, 404 elsewhere, 405 for other methods', async () => {
  let scrapes = 0;
  const server = await startMetricsServer({
    host: '127.0.0.1',
    port: 0,
    snapshot: () => {
      scrapes += 1;
      return { role: 'relay', id: 'n1', circuits: scrapes };
    },
  });
  try {
    assert.equal(server.address.host, '127.0.0.1');
    assert.ok(server.address.port > 0);
    const base = `http://127.0.0.1:${server.address.port}`;

    const ok = await fetch(`${base}/metrics`);
    assert.equal(ok.status, 200);
    assert.match(ok.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    assert.equal(
      await ok.text(),
      '# TYPE shallot_circuits gauge\nshallot_circuits 1\n# TYPE shallot_info gauge\nshallot_info{role="relay",id="n1"} 1\n',
    );
    const again = await fetch(`${base}/metrics?scrape=2`);
    assert.match(await again.text(), /^shallot_circuits 2$/m);

    const missing = await fetch(`${base}/`);
    assert.equal(missing.status, 404);
    await missing.text();
    const missing2 = await fetch(`${base}/metricsx`);
    assert.equal(missing2.status, 404);
    await missing2.text();

    const post = await fetch(`${base}/metrics`, { method: 'POST', body: 'x'.repeat(100_000) });
    assert.equal(post.status, 405);
    assert.equal(post.headers.get('allow'), 'GET, HEAD');
    await post.text();
    const del = await fetch(`${base}/metrics`, { method: 'DELETE' });
    assert.equal(del.status, 405);
    await del.text();
    assert.equal(scrapes, 2);
  } finally {
    await server.close();
  }
});

test('a failing snapshot is a 500, not a crash', async () => {
  const server = await startMetricsServer({
    host: '127.0.0.1',
    port: 0,
    snapshot: () => {
      throw new Error('boom');
    },
  });
  try {
    const res = await fetch(`http://127.0.0.1:${server.address.port}/metrics`);
    assert.equal(res.status, 500);
    assert.doesNotMatch(await res.text(), /boom/);
  } finally {
    await server.close();
  }
});

test('refuses non-loopback addresses unless allowRemote', async () => {
  for (const host of ['0.0.0.0', '::', '192.0.2.1']) {
    await assert.rejects(
      startMetricsServer({ host, port: 0, snapshot: () => ({}) }),
      (e: unknown) => isOneLineUserError(e) && (e as Error).message === REMOTE_REFUSAL,
    );
  }
  const remote = await startMetricsServer({
    host: '0.0.0.0',
    port: 0,
    allowRemote: true,
    snapshot: () => ({ circuits: 1 }),
  });
  try {
    assert.equal(remote.address.host, '0.0.0.0');
    const res = await fetch(`http://127.0.0.1:${remote.address.port}/metrics`);
    assert.equal(res.status, 200);
    await res.text();
  } finally {
    await remote.close();
  }
  await assert.rejects(
    startMetricsServer({ host: '127.0.0.1', port: 70000, snapshot: () => ({}) }),
    isOneLineUserError,
  );
});

test('a port in use is a one-line user error; close() frees the port', async () => {
  const first = await startMetricsServer({ host: '127.0.0.1', port: 0, snapshot: () => ({}) });
  const port = first.address.port;
  // A kept-alive client connection must not hold close() up.
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  await res.text();
  await assert.rejects(
    startMetricsServer({ host: '127.0.0.1', port, snapshot: () => ({}) }),
    (e: unknown) => isOneLineUserError(e) && /already in use/.test((e as Error).message),
  );
  await first.close();
  await first.close(); // idempotent
  const probe = net.createServer();
  await new Promise<void>((resolve, reject) => {
    probe.once('error', reject);
    probe.listen(port, '127.0.0.1', () => resolve());
  });
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  const second = await startMetricsServer({ host: '127.0.0.1', port, snapshot: () => ({}) });
  assert.equal(second.address.port, port);
  await second.close();
});

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => resolve(s));
    s.once('error', reject);
  });
}

function closed(s: net.Socket, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    if (s.destroyed) return resolve(true);
    const t = setTimeout(() => resolve(false), ms);
    s.once('close', () => {
      clearTimeout(t);
      resolve(true);
    });
    s.on('error', () => undefined);
    s.resume(); // read to the end, or a paused socket never sees the server close it
  });
}

test('at most 8 connections at once', async () => {
  const server = await startMetricsServer({ host: '127.0.0.1', port: 0, snapshot: () => ({}) });
  const port = server.address.port;
  const held: net.Socket[] = [];
  try {
    for (let i = 0; i < 8; i++) held.push(await connect(port));
    await new Promise((r) => setTimeout(r, 100));
    const ninth = await connect(port);
    ninth.write('GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n');
    let got = '';
    ninth.on('data', (d: Buffer) => (got += d.toString()));
    assert.equal(await closed(ninth, 2000), true);
    assert.equal(got, '');
    for (const s of held) s.destroy();
    held.length = 0;
    await new Promise((r) => setTimeout(r, 100));
    const res = await fetch(`http://127.0.0.1:${port}/metrics`);
    assert.equal(res.status, 200);
    await res.text();
  } finally {
    for (const s of held) s.destroy();
    await server.close();
  }
});

test('a client that never finishes its headers is cut off after about 5 s', async () => {
  const server = await startMetricsServer({ host: '127.0.0.1', port: 0, snapshot: () => ({}) });
  try {
    const s = await connect(server.address.port);
    s.write('GET /metrics HTTP/1.1\r\nHost: x\r\n');
    const started = Date.now();
    assert.equal(await closed(s, 9000), true);
    const took = Date.now() - started;
    assert.ok(took >= 4500 && took < 8000, `closed after ${took} ms`);
  } finally {
    await server.close();
  }
});

test('binds to ::1 and answers HEAD like GET without a body', async (t) => {
  let server;
  try {
    server = await startMetricsServer({ host: '::1', port: 0, snapshot: () => ({ circuits: 1 }) });
  } catch (e) {
    if (e instanceof ShallotError && /not an address/.test(e.message)) {
      t.skip('no IPv6 loopback here');
      return;
    }
    throw e;
  }
  try {
    assert.equal(server.address.host, '::1');
    const res = await fetch(`http://[::1]:${server.address.port}/metrics`, { method: 'HEAD' });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    assert.equal(await res.text(), '');
  } finally {
    await server.close();
  }
});
