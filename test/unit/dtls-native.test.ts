/**
 * The native DTLS binding, end to end: in-process handshakes wired by
 * passing datagrams, the stateless cookie listener, loss, replay, tamper,
 * garbage, and interop with `openssl s_server` / `s_client` over real UDP.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  loadDtls,
  LISTEN_DROP,
  LISTEN_VERIFIED,
  type NativeDtlsContext,
  type NativeDtlsSession,
} from '../../src/native/binding.js';

const D = loadDtls();
const SUITES = [
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
];
const idA = D.generateCertificate();
const idB = D.generateCertificate();
const out = Buffer.alloc(65536);
const app = Buffer.alloc(65536);

function unpack(buf: Buffer, len: number): Buffer[] {
  const list: Buffer[] = [];
  for (let off = 0; off + 2 <= len;) {
    const n = buf.readUInt16BE(off);
    list.push(Buffer.from(buf.subarray(off + 2, off + 2 + n)));
    off += 2 + n;
  }
  return list;
}

function pack(packets: Buffer[]): Buffer {
  return Buffer.concat(
    packets.flatMap((p) => {
      const h = Buffer.alloc(2);
      h.writeUInt16BE(p.length);
      return [h, p];
    }),
  );
}

const flush = (s: NativeDtlsSession): Buffer[] => unpack(out, s.flush(out));

/** Deliver datagrams; returns the application packets that came out. */
function deliver(to: NativeDtlsSession, datagrams: Buffer[]): Buffer[] {
  const got: Buffer[] = [];
  for (const d of datagrams) {
    const n = to.receive(d, app);
    assert.ok(n >= 0, `receive failed: ${to.error()}`);
    got.push(...unpack(app, n));
  }
  return got;
}

function contexts(mtu = 1400): { server: NativeDtlsContext; client: NativeDtlsContext } {
  return {
    server: new D.DtlsContext({ ...idA, mtu }),
    client: new D.DtlsContext({ ...idB, mtu }),
  };
}

/** ClientHello(s) through listen() until verified; returns the accepted session. */
function listenUntilVerified(
  ctx: NativeDtlsContext,
  client: NativeDtlsSession,
  peer: Buffer,
): NativeDtlsSession {
  const hvr = Buffer.alloc(2048);
  for (let round = 0; round < 4; round++) {
    for (const d of flush(client)) {
      const r = ctx.listen(d, peer, hvr);
      if (r === LISTEN_VERIFIED) {
        const server = ctx.accept();
        assert.equal(server.receive(null, app), 0);
        return server;
      }
      assert.ok(r > 0, 'expected a HelloVerifyRequest');
      assert.equal(client.receive(hvr.subarray(0, r), app), 0);
    }
  }
  throw new Error('listen never verified');
}

function finish(client: NativeDtlsSession, server: NativeDtlsSession): void {
  for (let i = 0; i < 10 && !(client.established() && server.established()); i++) {
    deliver(client, flush(server));
    deliver(server, flush(client));
  }
  assert.ok(client.established(), `client: ${client.error()}`);
  assert.ok(server.established(), `server: ${server.error()}`);
  deliver(client, flush(server));
}

function handshake(mtu = 1400): { client: NativeDtlsSession; server: NativeDtlsSession } {
  const ctx = contexts(mtu);
  const client = ctx.client.connect();
  assert.equal(client.pump(), 0);
  const server = listenUntilVerified(ctx.server, client, Buffer.from('127.0.0.1:5000'));
  finish(client, server);
  return { client, server };
}

/** Encrypt packets a -> datagrams. */
function seal(from: NativeDtlsSession, packets: Buffer[]): Buffer[] {
  const p = pack(packets);
  const n = from.sendBatch(p, p.length, out);
  assert.ok(n >= 0, from.error());
  return unpack(out, n);
}

test('handshake: cookie exchange, mutual certificates, exporter, suite', () => {
  const { client, server } = handshake();
  assert.deepEqual(client.peerCertificate(), D.certificateDer(idA.certPem));
  assert.deepEqual(server.peerCertificate(), D.certificateDer(idB.certPem));
  const label = 'EXPORTER-shallot-link';
  assert.deepEqual(client.exportKeyingMaterial(label, 32), server.exportKeyingMaterial(label, 32));
  assert.notDeepEqual(client.exportKeyingMaterial(label, 32), client.exportKeyingMaterial('x', 32));
  assert.ok(SUITES.includes(client.cipher()), client.cipher());
  assert.equal(client.cipher(), server.cipher());
  assert.equal(client.error(), '');
  assert.equal(client.timeoutMs(), -1);
  const fp = D.certificateFingerprint(idA.certPem);
  assert.equal(fp.length, 32);
  assert.notDeepEqual(fp, D.certificateFingerprint(idB.certPem));
  client.free();
  client.free();
  assert.equal(client.established(), false);
  assert.equal(client.peerCertificate(), null);
  server.free();
});

test('application data both ways; replay and tamper are dropped', () => {
  const { client, server } = handshake();
  const max = client.maxPlaintext();
  assert.ok(max >= 1400 - 37 && max <= 1400 - 29, `maxPlaintext ${max}`);
  const packets = [randomBytes(1), randomBytes(max), randomBytes(700), randomBytes(max + 1)];
  const dgs = seal(client, packets);
  assert.equal(dgs.length, 3, 'the oversize packet is skipped');
  assert.ok(dgs.every((d) => d.length <= 1400));
  assert.deepEqual(deliver(server, dgs), packets.slice(0, 3));
  const back = [Buffer.from('pong')];
  const [reply] = seal(server, back);
  assert.ok(reply);
  assert.deepEqual(deliver(client, [reply]), back);

  assert.deepEqual(deliver(client, [reply]), [], 'replayed datagram yields nothing');
  const [next] = seal(server, [Buffer.from('tamper me')]);
  assert.ok(next);
  const bad = Buffer.from(next);
  bad[bad.length - 5]! ^= 0x10;
  assert.deepEqual(deliver(client, [bad]), [], 'tampered datagram yields nothing');
  assert.deepEqual(deliver(client, [next]), [Buffer.from('tamper me')]);
  assert.ok(client.established());

  // A record that does not fit the caller's out buffer is dropped, never overflowed.
  const [big] = seal(client, [randomBytes(500)]);
  const small = Buffer.alloc(100);
  assert.equal(server.receive(big!, small), 0);
  assert.ok(server.established());
});

test('garbage: 10,000 random or truncated datagrams into listen() and receive()', () => {
  const ctx = contexts();
  const client = ctx.client.connect();
  client.pump();
  const [ch] = flush(client);
  assert.ok(ch);
  const peer = Buffer.from('198.51.100.1:443');
  const hvr = Buffer.alloc(2048);
  const r = ctx.server.listen(ch, peer, hvr);
  assert.ok(r > 0);
  client.receive(hvr.subarray(0, r), app);
  const [ch2] = flush(client);
  assert.ok(ch2);
  for (let i = 0; i < 10_000; i++) {
    let d: Buffer;
    if (i % 2 === 0) {
      d = randomBytes(i % 1500);
      if (i % 4 === 0 && d.length > 0) d[0] = 22; // looks like a handshake record
    } else {
      const src = i % 4 === 1 ? ch : ch2;
      d = src.subarray(0, i % src.length);
    }
    assert.equal(ctx.server.listen(d, peer, hvr), LISTEN_DROP);
  }
  // the genuine hello still completes afterwards
  assert.equal(ctx.server.listen(ch2, peer, hvr), LISTEN_VERIFIED);
  const server = ctx.server.accept();
  server.receive(null, app);
  finish(client, server);

  const [real] = seal(client, [randomBytes(300)]);
  assert.ok(real);
  for (let i = 0; i < 10_000; i++) {
    let d: Buffer;
    if (i % 3 === 0) d = randomBytes(i % 1500);
    else if (i % 3 === 1) d = real.subarray(0, i % real.length);
    else {
      d = Buffer.from(real);
      d[i % d.length]! ^= 1 + (i % 255);
    }
    assert.equal(server.receive(d, app), 0);
  }
  assert.ok(server.established());
  const msg = [Buffer.from('still alive')];
  assert.deepEqual(deliver(server, seal(client, msg)), msg);
  assert.deepEqual(deliver(client, seal(server, msg)), msg);
});

test('cookie rotation: one rotation keeps a HelloVerifyRequest valid, two do not', () => {
  const s1 = Buffer.alloc(32, 1);
  const s2 = Buffer.alloc(32, 2);
  const s3 = Buffer.alloc(32, 3);
  const peer = Buffer.from('203.0.113.9:9');
  const hvr = Buffer.alloc(2048);
  for (const rotations of [1, 2]) {
    const ctx = contexts();
    ctx.server.setCookieSecrets(s1, null);
    const client = ctx.client.connect();
    client.pump();
    const r = ctx.server.listen(flush(client)[0]!, peer, hvr);
    assert.ok(r > 0);
    client.receive(hvr.subarray(0, r), app);
    ctx.server.setCookieSecrets(s2, s1);
    if (rotations === 2) ctx.server.setCookieSecrets(s3, s2);
    const res = ctx.server.listen(flush(client)[0]!, peer, hvr);
    if (rotations === 1) {
      assert.equal(res, LISTEN_VERIFIED);
      const server = ctx.server.accept();
      server.receive(null, app);
      finish(client, server);
    } else {
      assert.ok(res > 0, 'expected a fresh HelloVerifyRequest, not a verification');
    }
  }
  const ctx = contexts();
  assert.throws(() => ctx.server.setCookieSecrets(Buffer.alloc(31), null), RangeError);
  assert.throws(() => ctx.server.accept(), /accept/);
});

test('handshake survives lost flights via timeoutMs/handleTimeout', async () => {
  const ctx = contexts();
  const peer = Buffer.from('lossy');
  const client = ctx.client.connect();
  client.pump();
  assert.equal(flush(client).length, 1, 'first ClientHello lost');
  let wait = client.timeoutMs();
  assert.ok(wait >= 0 && wait <= 1000, `timeoutMs ${wait}`);
  await new Promise((r) => setTimeout(r, wait + 10));
  assert.equal(client.handleTimeout(), 0);
  const server = listenUntilVerified(ctx.server, client, peer);
  assert.ok(flush(server).length > 0, 'server flight lost');
  wait = Math.max(server.timeoutMs(), client.timeoutMs());
  assert.ok(wait >= 0 && wait <= 1000, `timeoutMs ${wait}`);
  await new Promise((r) => setTimeout(r, wait + 10));
  assert.equal(server.handleTimeout(), 0);
  assert.equal(client.handleTimeout(), 0);
  finish(client, server);
});

test('shutdown sends close_notify; the peer reports it', () => {
  const { client, server } = handshake();
  client.shutdown();
  const p = pack([Buffer.from('late')]);
  assert.equal(client.sendBatch(p, p.length, out), -1);
  const alert = flush(client);
  assert.equal(alert.length, 1);
  assert.equal(server.receive(alert[0]!, app), -1);
  assert.equal(server.error(), 'closed by peer');
  assert.equal(server.established(), true);
});

test('arguments are checked', () => {
  const { client } = handshake();
  const p = pack([Buffer.from('x')]);
  assert.throws(() => client.sendBatch(p, p.length + 1, out), RangeError);
  assert.throws(() => client.sendBatch(p, -1, out), RangeError);
  assert.throws(() => client.sendBatch(p, 1.5, out), RangeError);
  assert.throws(() => client.receive('x' as unknown as Buffer, out), TypeError);
  assert.throws(() => client.flush(null as unknown as Buffer), TypeError);
  assert.throws(() => client.exportKeyingMaterial('l', 0), RangeError);
  assert.throws(() => D.certificateDer('not a pem'), /PEM/);
  assert.throws(() => new D.DtlsContext({ ...idA, mtu: 100 }), RangeError);
  assert.throws(() => new D.DtlsContext({ certPem: idA.certPem, keyPem: idB.keyPem, mtu: 1400 }));
  const ctx = contexts();
  assert.throws(() => ctx.server.listen(p, Buffer.alloc(0), out), RangeError);
  // a truncated batch tail is ignored, not read past
  assert.equal(client.sendBatch(Buffer.from([0, 9, 1, 2]), 4, out), 0);
  assert.equal(client.sendBatch(p, 0, out), 0);
});

test('throughput of sendBatch + receive, 1400-byte packets', (t) => {
  const { client, server } = handshake(1472);
  const batch = pack(Array.from({ length: 32 }, () => randomBytes(1400)));
  const recv = Buffer.alloc(65536);
  let records = 0;
  const start = process.hrtime.bigint();
  let elapsed = 0;
  while (elapsed < 0.5) {
    const n = client.sendBatch(batch, batch.length, out);
    for (let off = 0; off + 2 <= n;) {
      const len = out.readUInt16BE(off);
      records += server.receive(out.subarray(off + 2, off + 2 + len), recv) > 0 ? 1 : 0;
      off += 2 + len;
    }
    elapsed = Number(process.hrtime.bigint() - start) / 1e9;
  }
  t.diagnostic(`${client.cipher()}: ${Math.round(records / elapsed)} records/s`);
  assert.ok(records > 0);
});

// ---- interop with the openssl command line over real UDP -----------------

const hasOpenssl = spawnSync('openssl', ['version']).status === 0;
const skip = hasOpenssl ? false : 'the openssl binary is not installed';

/** Drive a session over a socket: receive, flush, retransmission timer. */
class Driver {
  private timer: NodeJS.Timeout | undefined;
  readonly received: Buffer[] = [];
  constructor(
    readonly session: NativeDtlsSession,
    private readonly send: (d: Buffer) => void,
  ) {}
  input(d: Buffer | null): void {
    const n = this.session.receive(d, app);
    if (n > 0) this.received.push(...unpack(app, n));
    this.pumpOut();
  }
  write(packets: Buffer[]): void {
    const p = pack(packets);
    const n = this.session.sendBatch(p, p.length, out);
    for (const d of unpack(out, n)) this.send(d);
  }
  pumpOut(): void {
    for (const d of flush(this.session)) this.send(d);
    clearTimeout(this.timer);
    const ms = this.session.timeoutMs();
    if (ms >= 0) {
      this.timer = setTimeout(() => {
        this.session.handleTimeout();
        this.pumpOut();
      }, ms);
    }
  }
  stop(): void {
    clearTimeout(this.timer);
  }
}

async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function tmpIdentity(): { dir: string; cert: string; key: string } {
  const dir = mkdtempSync(path.join(tmpdir(), 'shallot-dtls-'));
  const id = D.generateCertificate();
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  writeFileSync(cert, id.certPem);
  writeFileSync(key, id.keyPem, { mode: 0o600 });
  return { dir, cert, key };
}

async function freeUdpPort(): Promise<number> {
  const s = dgram.createSocket('udp4');
  await new Promise<void>((r) => s.bind(0, '127.0.0.1', r));
  const { port } = s.address();
  await new Promise<void>((r) => s.close(r));
  return port;
}

function collect(child: ChildProcess): { text: () => string } {
  let text = '';
  child.stdout?.on('data', (b: Buffer) => (text += b.toString()));
  child.stderr?.on('data', (b: Buffer) => (text += b.toString()));
  return { text: () => text };
}

test('interop: shallot client against openssl s_server', { skip, timeout: 20_000 }, async () => {
  const id = tmpIdentity();
  const port = await freeUdpPort();
  // stdin stays an open pipe: s_server quits at EOF. -listen: the
  // stateless DTLSv1_listen cookie exchange, as shallot listeners do; a
  // shallot client accepts only servers that go on with the record numbers
  // of its ClientHello (protocol 3, "Epoch 0"), which DTLSv1_listen does.
  const srv = spawn(
    'openssl',
    [
      's_server',
      '-dtls1_2',
      '-listen',
      '-accept',
      `127.0.0.1:${port}`,
      '-Verify',
      '1',
      '-cert',
      id.cert,
      '-key',
      id.key,
    ],
    { stdio: ['pipe', 'pipe', 'pipe'] },
  );
  const log = collect(srv);
  const sock = dgram.createSocket('udp4');
  let driver: Driver | undefined;
  try {
    await until(() => log.text().includes('ACCEPT'), 's_server ACCEPT');
    const ctx = new D.DtlsContext({ ...idB, mtu: 1400 });
    await new Promise<void>((r) => sock.connect(port, '127.0.0.1', r));
    const d = new Driver(ctx.connect(), (dg) => sock.send(dg));
    driver = d;
    sock.on('message', (m) => d.input(m));
    d.input(null);
    await until(() => d.session.established(), 'handshake with s_server');
    assert.ok(SUITES.includes(d.session.cipher()));
    assert.deepEqual(d.session.peerCertificate(), D.certificateDer(readFileSync(id.cert, 'utf8')));
    d.write([Buffer.from('hello from shallot\n')]);
    await until(() => log.text().includes('hello from shallot'), 's_server to print our line');
    srv.stdin?.write('hello from s_server\n');
    await until(
      () => Buffer.concat(d.received).toString().includes('hello from s_server'),
      'line from s_server',
    );
  } finally {
    driver?.stop();
    sock.close();
    srv.kill();
    rmSync(id.dir, { recursive: true, force: true });
  }
});

test(
  'interop: openssl s_client against a shallot listener',
  { skip, timeout: 20_000 },
  async () => {
    const id = tmpIdentity();
    const ctx = new D.DtlsContext({ ...idA, mtu: 1400 });
    const sock = dgram.createSocket('udp4');
    await new Promise<void>((r) => sock.bind(0, '127.0.0.1', r));
    const { port } = sock.address();
    const sessions = new Map<string, Driver>();
    const hvr = Buffer.alloc(2048);
    sock.on('message', (m, rinfo) => {
      const key = `${rinfo.address}:${rinfo.port}`;
      const known = sessions.get(key);
      if (known) return known.input(m);
      const r = ctx.listen(m, Buffer.from(key), hvr);
      if (r > 0) sock.send(hvr.subarray(0, r), rinfo.port, rinfo.address);
      if (r !== LISTEN_VERIFIED) return;
      const d = new Driver(ctx.accept(), (dg) => sock.send(dg, rinfo.port, rinfo.address));
      sessions.set(key, d);
      d.input(null);
    });
    const cli = spawn(
      'openssl',
      [
        's_client',
        '-dtls1_2',
        '-connect',
        `127.0.0.1:${port}`,
        '-cert',
        id.cert,
        '-key',
        id.key,
        '-quiet',
      ],
      { stdio: ['pipe', 'pipe', 'pipe'] },
    );
    const log = collect(cli);
    try {
      await until(
        () => [...sessions.values()].some((d) => d.session.established()),
        'handshake with s_client',
      );
      const d = [...sessions.values()][0]!;
      assert.ok(SUITES.includes(d.session.cipher()));
      assert.deepEqual(
        d.session.peerCertificate(),
        D.certificateDer(readFileSync(id.cert, 'utf8')),
      );
      cli.stdin?.write('hello from s_client\n');
      await until(
        () => Buffer.concat(d.received).toString().includes('hello from s_client'),
        'line from s_client',
      );
      d.write([Buffer.from('hello from shallot\n')]);
      await until(() => log.text().includes('hello from shallot'), 's_client to print our line');
    } finally {
      for (const d of sessions.values()) d.stop();
      sock.close();
      cli.kill();
      rmSync(id.dir, { recursive: true, force: true });
    }
  },
);
