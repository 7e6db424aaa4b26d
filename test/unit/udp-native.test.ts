/**
 * Tests of the native UDP addon (build/Release/shallot_udp.node) and of
 * UdpTransport, the datagram seam built on it.
 *
 * Two layers, as in tun-native.test.ts:
 *  1. In this process: the API shape, argument checking, the packed-batch
 *     parser of sendBatch, unknown fds, address parsing and formatting.
 *  2. A child process (no privileges needed): two transports on 127.0.0.1
 *     (and ::1 when the host has it) exchanging batches, bind errors,
 *     oversize datagrams, GSO, staged sends, a throwing receiver, close and
 *     stopReading from inside the callback. The child is this very file run
 *     with SHUDP_CHILD=1: it prints one line `SHUDP_RESULT <json>` with the
 *     outcome of each step and the parent turns every step into a test. It
 *     runs apart because a throwing receiver must reach process
 *     'uncaughtException', which the test runner would count as a failure,
 *     and so that test/native/udp_valgrind.sh can run it under valgrind.
 *  3. As root, a child (SHUDP_CHILD=mtu) in a network namespace whose
 *     loopback MTU is below the GSO segment size: the kernel refuses the GSO
 *     message and the addon falls back to plain sends.
 */
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { loadUdp, type NativeUdp } from '../../src/native/binding.js';
import { SOCKET_BUFFER_BYTES, UdpTransport } from '../../src/link/transport.js';

const THIS_FILE = fileURLToPath(import.meta.url);
const RESULT_MARK = 'SHUDP_RESULT ';
const CHILD_TIMEOUT_MS = 60_000;
/** Children stretch their waits by this (test/native/udp_valgrind.sh sets it). */
const TIME_SCALE = Math.max(1, Number(process.env.SHUDP_TIME_SCALE ?? '1') || 1);
const STEP_TIMEOUT_MS = 10_000 * TIME_SCALE;

function pack(datagrams: Buffer[]): Buffer {
  const out = Buffer.alloc(datagrams.reduce((n, p) => n + 2 + p.length, 0));
  let off = 0;
  for (const p of datagrams) {
    off = out.writeUInt16BE(p.length, off);
    off += p.copy(out, off);
  }
  return out;
}

const LO4 = Buffer.from([127, 0, 0, 1]);

interface DatagramRecord {
  family: number;
  addr: Buffer;
  port: number;
  data: Buffer;
  /** The segment size of the coalesced run it came in (0: none). */
  seg: number;
}

/**
 * The datagrams of one onDatagrams call (copied), a coalesced run (UDP
 * GRO) split into its datagrams, each marked with the run's `seg`.
 */
function records(buf: Buffer, len: number, count: number): DatagramRecord[] {
  const out: DatagramRecord[] = [];
  let o = 0;
  for (let i = 0; i < count; i++) {
    const family = buf.readUInt8(o);
    const alen = family === 4 ? 4 : 20;
    const addr = Buffer.from(buf.subarray(o + 1, o + 1 + alen));
    const port = buf.readUInt16BE(o + 1 + alen);
    const n = buf.readUInt16BE(o + 3 + alen);
    const seg = buf.readUInt16BE(o + 5 + alen);
    const start = o + 7 + alen;
    assert.ok(start + n <= len, 'record inside len');
    assert.ok(seg === 0 || seg < n, 'a run is longer than one segment');
    const step = seg || n;
    for (let d = start; d === start || d < start + n; d += Math.max(step, 1)) {
      const data = Buffer.from(buf.subarray(d, Math.min(d + step, start + n)));
      out.push({ family, addr, port, data, seg });
    }
    o = start + n;
  }
  assert.equal(o, len, 'count records fill len exactly');
  return out;
}

function expectCode(code: string) {
  return (err: unknown): boolean => {
    assert.equal((err as { code?: string }).code, code, String(err));
    return true;
  };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------
// Child-side helpers

interface StepResult {
  name: string;
  ok: boolean;
  error?: string;
  info?: unknown;
}

class Steps {
  readonly list: StepResult[] = [];

  async run(name: string, fn: () => unknown): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    try {
      const info = await Promise.race([
        Promise.resolve().then(fn),
        new Promise((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`step timed out after ${STEP_TIMEOUT_MS} ms`)),
            STEP_TIMEOUT_MS,
          );
        }),
      ]);
      this.list.push({ name, ok: true, info });
      return true;
    } catch (err) {
      const e = err as Error;
      this.list.push({ name, ok: false, error: e.stack ?? String(err) });
      return false;
    } finally {
      clearTimeout(timer);
    }
  }
}

interface Received {
  data: Buffer;
  host: string;
  port: number;
  /** The ArrayBuffer the view pointed into (the addon's reused buffer). */
  backing: ArrayBufferLike;
}

/** A started transport and what it received (copied: the view is only lent). */
class Peer {
  readonly got: Received[] = [];
  hook: ((data: Buffer, host: string, port: number) => void) | undefined;

  constructor(readonly t: UdpTransport) {}

  static async start(host: string, port = 0): Promise<Peer> {
    const p = new Peer(new UdpTransport(host, port));
    await p.t.start((data, h, port) => {
      p.got.push({ data: Buffer.from(data), host: h, port, backing: data.buffer });
      p.hook?.(data, h, port);
    });
    return p;
  }

  get port(): number {
    return this.t.address().port;
  }

  async waitFor(what: string, pred: (r: Received) => boolean, n = 1, ms = 5000) {
    const deadline = Date.now() + ms * TIME_SCALE;
    for (;;) {
      const m = this.got.filter(pred);
      if (m.length >= n) return m;
      if (Date.now() > deadline)
        throw new Error(`timed out waiting for ${n} x ${what}: got ${m.length}`);
      await sleep(5);
    }
  }
}

const text = (s: string) => (r: Received) => r.data.toString() === s;

async function v6Available(): Promise<boolean> {
  try {
    const u = loadUdp();
    const s = u.open(6, '::1', 0, 0);
    u.close(s.fd);
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------
// Child: transports on the loopback (no privileges)

async function child(udp: NativeUdp): Promise<StepResult[]> {
  const steps = new Steps();
  let a: Peer | undefined;
  let b: Peer | undefined;

  const started = await steps.run(
    'two transports bind 127.0.0.1; address() has the port',
    async () => {
      a = await Peer.start('127.0.0.1');
      b = await Peer.start('127.0.0.1');
      for (const p of [a, b]) {
        assert.equal(p.t.address().host, '127.0.0.1');
        assert.ok(p.port > 0 && p.port < 65536, `port ${p.port}`);
        assert.equal(p.t.stats().reading, true);
      }
      assert.notEqual(a.port, b.port);
      // The buffers asked for (the kernel reports double what it grants).
      const s = udp.open(4, '127.0.0.1', 0, SOCKET_BUFFER_BYTES);
      udp.close(s.fd);
      if (process.getuid?.() === 0) {
        assert.equal(s.recvBufferBytes, 2 * SOCKET_BUFFER_BYTES, 'SO_RCVBUFFORCE as root');
        assert.equal(s.sendBufferBytes, 2 * SOCKET_BUFFER_BYTES, 'SO_SNDBUFFORCE as root');
      }
      return { a: a.port, b: b.port, recvBufferBytes: s.recvBufferBytes };
    },
  );
  if (!started || !a || !b) return steps.list;
  const A = a;
  const B = b;

  await steps.run('sendPacked: 200 datagrams arrive intact, in batches', async () => {
    const sent: Buffer[] = [];
    for (let i = 0; i < 200; i++) {
      const d = Buffer.alloc(16 + ((i * 37) % (1452 - 16)), i & 0xff);
      d.write(`dg-${i}-`, 0);
      sent.push(d);
    }
    const packed = pack(sent);
    const before = B.t.stats();
    A.t.sendPacked(packed, packed.length, '127.0.0.1', B.port);
    packed.fill(0); // the batch buffer may be reused as soon as sendPacked returns
    const got = await B.waitFor(
      'the 200 datagrams',
      (r) => r.data.toString().startsWith('dg-'),
      200,
    );
    assert.equal(got.length, 200, 'each datagram once');
    const byName = new Map(got.map((r) => [r.data.toString('latin1', 0, 8).split('-')[1], r]));
    for (let i = 0; i < 200; i++) {
      const r = byName.get(String(i));
      assert.ok(r, `datagram ${i} arrived`);
      assert.ok(r.data.equals(sent[i] as Buffer), `datagram ${i} intact`);
      assert.equal(r.host, '127.0.0.1');
      assert.equal(r.port, A.port);
    }
    const after = B.t.stats();
    const callbacks = after.callbacks - before.callbacks;
    const received = after.received - before.received;
    assert.equal(received, 200);
    assert.ok(callbacks < received, `batched: ${received} datagrams in ${callbacks} callbacks`);
    assert.equal(new Set(got.map((r) => r.backing)).size, 1, 'views of one reused buffer');
    assert.equal(A.t.stats().sent, 200);
    return { callbacks, received };
  });

  await steps.run('sendOne both ways', async () => {
    A.t.sendOne(Buffer.from('one-a-to-b'), '127.0.0.1', B.port);
    const [r] = await B.waitFor('one-a-to-b', text('one-a-to-b'));
    assert.equal(r?.port, A.port);
    B.t.sendOne(Buffer.from('one-b-to-a'), '127.0.0.1', A.port);
    const [q] = await A.waitFor('one-b-to-a', text('one-b-to-a'));
    assert.equal(q?.host, '127.0.0.1');
    assert.equal(q?.port, B.port);
  });

  await steps.run('bind errors carry Node codes: EADDRINUSE, EADDRNOTAVAIL', async () => {
    await assert.rejects(
      new UdpTransport('127.0.0.1', B.port).start(() => {}),
      (err: unknown) => {
        const e = err as NodeJS.ErrnoException;
        assert.equal(e.code, 'EADDRINUSE');
        assert.equal(e.syscall, 'bind');
        assert.ok(e instanceof Error);
        return true;
      },
    );
    // 192.0.2.1 (TEST-NET-1) is not an address of this host.
    await assert.rejects(
      new UdpTransport('192.0.2.1', 0).start(() => {}),
      expectCode('EADDRNOTAVAIL'),
    );
  });

  await steps.run(
    'an oversize datagram (60 KB) is dropped and counted; the next arrive',
    async () => {
      const before = B.t.stats().oversize;
      A.t.sendOne(Buffer.alloc(60_000, 0x5a), '127.0.0.1', B.port);
      const packed = pack([Buffer.from('after-oversize-1'), Buffer.from('after-oversize-2')]);
      A.t.sendPacked(packed, packed.length, '127.0.0.1', B.port);
      await B.waitFor('after-oversize-1', text('after-oversize-1'));
      await B.waitFor('after-oversize-2', text('after-oversize-2'));
      assert.equal(B.t.stats().oversize, before + 1);
      assert.ok(!B.got.some((r) => r.data.length > 2048), 'nothing oversize delivered');
    },
  );

  await steps.run('empty datagrams and full-size ones pass', async () => {
    const big = Buffer.alloc(2048, 0x42);
    const packed = pack([Buffer.alloc(0), big, Buffer.from('sized-end')]);
    A.t.sendPacked(packed, packed.length, '127.0.0.1', B.port);
    await B.waitFor('sized-end', text('sized-end'));
    assert.ok(
      B.got.some((r) => r.data.length === 0),
      'the empty datagram',
    );
    assert.ok(
      B.got.some((r) => r.data.equals(big)),
      'a datagram filling a whole slot',
    );
  });

  await steps.run(
    'GSO (native, on request): a run of equal-size datagrams arrives intact, in order',
    async () => {
      const tx = udp.open(4, '127.0.0.1', 0, 1 << 20, true);
      const rx = udp.open(4, '127.0.0.1', 0, 1 << 22, false);
      const got: Buffer[] = [];
      udp.startReading(rx.fd, 64, 2048, (buf, len, count) => {
        for (const r of records(buf, len, count)) got.push(r.data);
      });
      try {
        assert.equal(udp.stats(rx.fd).gso, false, 'gso: false is honoured');
        const run = Array.from({ length: 100 }, (_, i) => {
          const d = Buffer.alloc(i === 99 ? 700 : 1400, i);
          d.write(`gso-${i}-`, 0);
          return d;
        });
        const packed = pack(run);
        assert.equal(udp.sendBatch(tx.fd, packed, packed.length, 4, LO4, rx.port), 100);
        for (let i = 0; i < 400 && got.length < 100; i++) await sleep(5);
        assert.equal(got.length, 100);
        got.forEach((d, i) =>
          assert.ok(d.equals(run[i] as Buffer), `datagram ${i} intact, in order`),
        );
        const s = udp.stats(tx.fd);
        assert.equal(s.sent, 100);
        // 45 x 1400 bytes fit one GSO message: 45 + 45 + 10.
        if (tx.gso) assert.equal(s.gsoSends, 3, 'sent as three GSO messages');
        return { gso: tx.gso, gsoSends: s.gsoSends, gsoError: s.gsoError };
      } finally {
        udp.close(tx.fd);
        udp.close(rx.fd);
      }
    },
  );

  await steps.run(
    'GRO (native, on request): runs arrive coalesced, split into the datagrams sent, in order',
    async () => {
      const tx = udp.open(4, '127.0.0.1', 0, 1 << 20, true);
      const rx = udp.open(4, '127.0.0.1', 0, 1 << 22, false, true);
      const got: DatagramRecord[] = [];
      udp.startReading(rx.fd, 8, 1400, (buf, len, count) => {
        for (const r of records(buf, len, count)) got.push(r);
      });
      try {
        // Runs of 1400 (the last 700), then one of 1401 bytes: every
        // datagram of that one is longer than maxDatagram, so the run is
        // dropped and counted as its datagrams.
        const run = Array.from({ length: 100 }, (_, i) => {
          const d = Buffer.alloc(i === 99 ? 700 : 1400, i);
          d.write(`gro-${i}-`, 0);
          return d;
        });
        const packed = pack(run);
        assert.equal(udp.sendBatch(tx.fd, packed, packed.length, 4, LO4, rx.port), 100);
        const long = pack(Array.from({ length: 10 }, () => Buffer.alloc(1401, 7)));
        assert.equal(udp.sendBatch(tx.fd, long, long.length, 4, LO4, rx.port), 10);
        for (
          let i = 0;
          i < 400 && udp.stats(rx.fd).received + udp.stats(rx.fd).oversize < 110;
          i++
        ) {
          await sleep(5);
        }
        assert.equal(got.length, 100);
        got.forEach((r, i) =>
          assert.ok(r.data.equals(run[i] as Buffer), `datagram ${i} intact, in order`),
        );
        const s = udp.stats(rx.fd);
        assert.equal(s.received, 100, 'received counts datagrams, not runs');
        assert.equal(s.oversize, 10, 'a run of long datagrams: each one counted');
        if (rx.gro && tx.gso) {
          assert.ok(
            got.some((r) => r.seg === 1400),
            'the kernel coalesced at least one run',
          );
        }
        return { gro: rx.gro, runs: new Set(got.map((r) => r.seg)).size };
      } finally {
        udp.close(tx.fd);
        udp.close(rx.fd);
      }
    },
  );

  await steps.run(
    'sends from inside the receiver are staged, in order, until the batch ends',
    async () => {
      const before = B.t.stats();
      B.hook = (data, host, port) => {
        const t = data.toString();
        if (t.startsWith('echo-')) {
          const back = Buffer.from(`back-${t.slice(5)}`);
          // Both kinds of send, and the view must not be needed after the call.
          if (Number(t.slice(5)) % 2 === 0) B.t.sendOne(back, host, port);
          else B.t.sendPacked(pack([back]), back.length + 2, host, port);
        }
      };
      try {
        const packed = pack(Array.from({ length: 60 }, (_, i) => Buffer.from(`echo-${i}`)));
        A.t.sendPacked(packed, packed.length, '127.0.0.1', B.port);
        const got = await A.waitFor('60 echoes', (r) => r.data.toString().startsWith('back-'), 60);
        assert.deepEqual(
          got.map((r) => r.data.toString()),
          Array.from({ length: 60 }, (_, i) => `back-${i}`),
        );
        const after = B.t.stats();
        assert.equal(after.sent - before.sent, 60);
      } finally {
        B.hook = undefined;
      }
    },
  );

  await steps.run(
    'equal-size sends to one peer staged during a batch leave as GSO runs',
    async () => {
      const before = B.t.stats();
      B.hook = (data, host, port) => {
        const t = data.toString('latin1', 0, 8);
        if (t.startsWith('gsorun-')) {
          const back = Buffer.alloc(1000, data[7]);
          back.write('gsoback', 0, 'latin1');
          B.t.sendPacked(pack([back]), back.length + 2, host, port);
        }
      };
      try {
        const packed = pack(
          Array.from({ length: 40 }, (_, i) => {
            const d = Buffer.alloc(100, i);
            d.write('gsorun-', 0, 'latin1');
            return d;
          }),
        );
        A.t.sendPacked(packed, packed.length, '127.0.0.1', B.port);
        const got = await A.waitFor(
          '40 replies',
          (r) => r.data.toString('latin1', 0, 7) === 'gsoback',
          40,
        );
        got.forEach((r, i) => assert.equal(r.data[7], i, `reply ${i} in order`));
        const after = B.t.stats();
        assert.equal(after.sent - before.sent, 40);
        if (after.gso) assert.ok(after.gsoSends > before.gsoSends, 'at least one GSO run');
        return {
          gsoSends: after.gsoSends - before.gsoSends,
          callbacks: after.callbacks - before.callbacks,
        };
      } finally {
        B.hook = undefined;
      }
    },
  );

  await steps.run('bad destinations are counted, not thrown', () => {
    const before = A.t.sendErrors;
    A.t.sendOne(Buffer.from('x'), '::1', B.port); // an IPv4 socket cannot reach it
    A.t.sendOne(Buffer.from('x'), 'not-an-address', B.port);
    const packed = pack([Buffer.from('y'), Buffer.from('z')]);
    A.t.sendPacked(packed, packed.length, '::1', B.port);
    assert.equal(A.t.sendErrors, before + 4);
  });

  await steps.run('a malformed packed batch throws RangeError and sends nothing', () => {
    const bad = Buffer.concat([pack([Buffer.from('never-sent')]), Buffer.from([0x00, 0x40, 1])]);
    const before = A.t.stats().sent;
    assert.throws(() => A.t.sendPacked(bad, bad.length, '127.0.0.1', B.port), RangeError);
    assert.equal(A.t.stats().sent, before);
  });

  await steps.run('IPv6 on ::1: batches both ways (skipped without ::1)', async () => {
    if (!(await v6Available())) return { skipped: 'no ::1 on this host' };
    const c = await Peer.start('::1');
    const d = await Peer.start('::1');
    try {
      assert.equal(c.t.address().host, '::1');
      const packed = pack(Array.from({ length: 50 }, (_, i) => Buffer.from(`v6-${i}`)));
      c.t.sendPacked(packed, packed.length, '::1', d.port);
      const got = await d.waitFor(
        '50 v6 datagrams',
        (r) => r.data.toString().startsWith('v6-'),
        50,
      );
      for (const r of got) {
        assert.equal(r.host, '::1');
        assert.equal(r.port, c.port);
      }
      d.t.sendOne(Buffer.from('v6-back'), '::1', c.port);
      const [r] = await c.waitFor('v6-back', text('v6-back'));
      assert.equal(r?.host, '::1');
      assert.equal(r?.port, d.port);
      // Staged sends (group headers with a scope id) over IPv6.
      d.hook = (data, host, port) => {
        if (data.toString() === 'v6-ping') d.t.sendOne(Buffer.from('v6-pong'), host, port);
      };
      c.t.sendOne(Buffer.from('v6-ping'), '::1', d.port);
      await c.waitFor('v6-pong', text('v6-pong'));
      return { callbacks: d.t.stats().callbacks };
    } finally {
      c.t.close();
      d.t.close();
    }
  });

  await steps.run('a throwing receiver: the batch goes on, the error is uncaught', async () => {
    const caught: unknown[] = [];
    const onUncaught = (err: unknown) => caught.push(err);
    process.on('uncaughtException', onUncaught);
    try {
      B.hook = (data) => {
        if (data.toString() === 'throw-1') throw new Error('boom from the receiver');
      };
      const packed = pack([Buffer.from('throw-1'), Buffer.from('throw-2'), Buffer.from('throw-3')]);
      A.t.sendPacked(packed, packed.length, '127.0.0.1', B.port);
      await B.waitFor('throw-3', text('throw-3'));
      await B.waitFor('throw-2', text('throw-2'));
      for (let i = 0; i < 200 && caught.length === 0; i++) await sleep(5);
      assert.equal(caught.length, 1);
      assert.match(String(caught[0]), /boom from the receiver/);
      B.hook = undefined;
      A.t.sendOne(Buffer.from('after-throw'), '127.0.0.1', B.port);
      await B.waitFor('after-throw', text('after-throw'));
      assert.equal(B.t.stats().reading, true);
    } finally {
      B.hook = undefined;
      process.off('uncaughtException', onUncaught);
    }
  });

  await steps.run('close() inside the receiver ends the batch; close() is idempotent', async () => {
    const c = await Peer.start('127.0.0.1');
    c.hook = (data, host, port) => {
      if (data.toString() === 'close-3') {
        c.t.sendOne(Buffer.from('bye-from-c'), host, port); // staged: close() sends it
        c.t.close();
      }
    };
    const packed = pack(Array.from({ length: 10 }, (_, i) => Buffer.from(`close-${i}`)));
    A.t.sendPacked(packed, packed.length, '127.0.0.1', c.port);
    await c.waitFor('close-3', text('close-3'));
    await A.waitFor('bye-from-c', text('bye-from-c'));
    await sleep(50 * TIME_SCALE);
    assert.ok(c.got.length <= 4, `nothing after close: got ${c.got.length}`);
    c.t.close();
    c.t.close();
    c.t.sendOne(Buffer.from('ignored'), '127.0.0.1', A.port); // a no-op once closed
    c.t.sendPacked(packed, packed.length, '127.0.0.1', A.port);
    const s = c.t.stats();
    assert.equal(s.reading, false);
    assert.ok(s.received >= 4);
    assert.equal(c.t.address().port > 0, true, 'address() still reports the last port');
  });

  await steps.run('native: stopReading and close inside the callback', async () => {
    const s = udp.open(4, '127.0.0.1', 0, 0);
    const dst = Buffer.from([127, 0, 0, 1]);
    let calls = 0;
    let action: 'stop' | 'close' | undefined = 'stop';
    const onDatagrams = (): void => {
      calls++;
      if (action === 'stop') {
        udp.stopReading(s.fd);
        udp.stopReading(s.fd); // idempotent
      } else if (action === 'close') {
        udp.close(s.fd);
      }
      action = undefined;
    };
    udp.startReading(s.fd, 4, 100, onDatagrams);
    assert.throws(
      () => udp.startReading(s.fd, 4, 100, onDatagrams),
      expectCode('ERR_UDP_ALREADY_READING'),
    );
    udp.sendTo(s.fd, Buffer.from('stop-1'), 4, dst, s.port);
    for (let i = 0; i < 400 && calls === 0; i++) await sleep(5);
    assert.equal(calls, 1);
    udp.sendTo(s.fd, Buffer.from('while-stopped'), 4, dst, s.port);
    await sleep(50 * TIME_SCALE);
    assert.equal(calls, 1, 'no callback after stopReading');
    assert.equal(udp.stats(s.fd).reading, false);
    action = 'close';
    udp.startReading(s.fd, 4, 100, onDatagrams); // the queued datagram wakes it
    for (let i = 0; i < 400 && calls === 1; i++) await sleep(5);
    assert.equal(calls, 2);
    assert.throws(() => udp.stats(s.fd), expectCode('ERR_UDP_UNKNOWN_FD'));
    assert.throws(() => udp.close(s.fd), expectCode('ERR_UDP_UNKNOWN_FD'));
    udp.stopReading(s.fd); // a no-op
  });

  await steps.run(
    'native: a detached (transferred) buffer is replaced, not written to',
    async () => {
      const s = udp.open(4, '127.0.0.1', 0, 0);
      const dst = Buffer.from([127, 0, 0, 1]);
      const seen: string[] = [];
      let transferred = false;
      udp.startReading(s.fd, 4, 100, (buf, len, count) => {
        for (const r of records(buf, len, count)) seen.push(r.data.toString('latin1'));
        if (!transferred) {
          try {
            structuredClone(buf.buffer, { transfer: [buf.buffer as ArrayBuffer] });
            transferred = buf.length === 0;
          } catch {
            /* not transferable: nothing to test, still fine */
          }
        }
      });
      try {
        udp.sendTo(s.fd, Buffer.from('detach-1'), 4, dst, s.port);
        for (let i = 0; i < 400 && seen.length < 1; i++) await sleep(5);
        udp.sendTo(s.fd, Buffer.from('detach-2'), 4, dst, s.port);
        for (let i = 0; i < 400 && seen.length < 2; i++) await sleep(5);
        assert.deepEqual(seen, ['detach-1', 'detach-2']);
        return { transferred };
      } finally {
        udp.close(s.fd);
      }
    },
  );

  await steps.run('native: malformed groups and bad arguments are refused', () => {
    const s = udp.open(4, '127.0.0.1', 0, 0);
    try {
      const g = Buffer.concat([
        Buffer.from([4, 127, 0, 0, 1, 0, 9, 0, 0, 0, 5]),
        pack([Buffer.from('abc')]),
      ]);
      assert.equal(udp.sendGroups(s.fd, g, g.length), 1);
      for (const cut of [1, 10, 12, 15]) {
        assert.throws(() => udp.sendGroups(s.fd, g, cut), RangeError, `cut at ${cut}`);
      }
      const bad = Buffer.from(g);
      bad[0] = 5;
      assert.throws(() => udp.sendGroups(s.fd, bad, bad.length), /bad group header/);
      assert.equal(udp.parseAddress('fe80::1%nonexistent0')?.scopeId ?? 0, 0);
      assert.equal(udp.parseAddress('x'.repeat(200)), null);
      assert.throws(() => udp.formatAddress(6, Buffer.alloc(4), 0), RangeError);
      assert.equal(udp.stats(s.fd).sent, 1);
    } finally {
      udp.close(s.fd);
    }
  });

  await steps.run('close() both transports', () => {
    A.t.close();
    B.t.close();
    A.t.close();
    assert.equal(A.t.stats().reading, false);
  });
  return steps.list;
}

// ---------------------------------------------------------------------------
// Child: GSO refused by the kernel (root: run inside a namespace whose
// loopback has an MTU of 1300, below the segment size)

async function mtuChild(udp: NativeUdp): Promise<StepResult[]> {
  const steps = new Steps();
  await steps.run('a refused GSO message is sent datagram by datagram; GSO turns off', async () => {
    const tx = udp.open(4, '127.0.0.1', 0, 1 << 20, true);
    const rx = udp.open(4, '127.0.0.1', 0, 1 << 22, false);
    const got: Buffer[] = [];
    udp.startReading(rx.fd, 64, 2048, (buf, len, count) => {
      for (const r of records(buf, len, count)) got.push(r.data);
    });
    try {
      if (!tx.gso) return { skipped: 'no UDP GSO in this kernel' };
      const run = Array.from({ length: 10 }, (_, i) => Buffer.alloc(1400, i));
      const packed = pack(run);
      assert.equal(udp.sendBatch(tx.fd, packed, packed.length, 4, LO4, rx.port), 10);
      let s = udp.stats(tx.fd);
      assert.equal(s.gso, false, 'GSO is off after the refusal');
      assert.equal(s.gsoFallbacks, 1);
      assert.notEqual(s.gsoError, '');
      assert.equal(udp.sendBatch(tx.fd, packed, packed.length, 4, LO4, rx.port), 10);
      s = udp.stats(tx.fd);
      assert.equal(s.sent, 20);
      assert.equal(s.gsoSends, 0);
      for (let i = 0; i < 400 && got.length < 20; i++) await sleep(5);
      assert.equal(got.length, 20, 'every datagram arrived (fragmented by IP)');
      got.forEach((d, i) => assert.ok(d.equals(run[i % 10] as Buffer), `datagram ${i} intact`));
      return { gsoError: s.gsoError };
    } finally {
      udp.close(tx.fd);
      udp.close(rx.fd);
    }
  });
  return steps.list;
}

// ---------------------------------------------------------------------------
// Parent

const CHILD_STEPS = [
  'two transports bind 127.0.0.1; address() has the port',
  'sendPacked: 200 datagrams arrive intact, in batches',
  'sendOne both ways',
  'bind errors carry Node codes: EADDRINUSE, EADDRNOTAVAIL',
  'an oversize datagram (60 KB) is dropped and counted; the next arrive',
  'empty datagrams and full-size ones pass',
  'GSO (native, on request): a run of equal-size datagrams arrives intact, in order',
  'sends from inside the receiver are staged, in order, until the batch ends',
  'equal-size sends to one peer staged during a batch leave as GSO runs',
  'bad destinations are counted, not thrown',
  'a malformed packed batch throws RangeError and sends nothing',
  'IPv6 on ::1: batches both ways (skipped without ::1)',
  'a throwing receiver: the batch goes on, the error is uncaught',
  'close() inside the receiver ends the batch; close() is idempotent',
  'native: stopReading and close inside the callback',
  'native: a detached (transferred) buffer is replaced, not written to',
  'native: malformed groups and bad arguments are refused',
  'close() both transports',
];

const MTU_STEPS = ['a refused GSO message is sent datagram by datagram; GSO turns off'];

interface ChildOutcome {
  steps: Map<string, StepResult>;
  failure: string | undefined;
}

async function runChild(mode: string, cmd: string, args: string[]): Promise<ChildOutcome> {
  const env: NodeJS.ProcessEnv = { ...process.env, SHUDP_CHILD: mode };
  delete env.NODE_TEST_CONTEXT;
  delete env.NODE_OPTIONS;
  const res = await new Promise<{ err: Error | null; stdout: string; stderr: string }>(
    (resolve) => {
      execFile(
        cmd,
        args,
        { env, timeout: CHILD_TIMEOUT_MS, killSignal: 'SIGKILL', maxBuffer: 16 << 20 },
        (err, stdout, stderr) => resolve({ err, stdout, stderr }),
      );
    },
  );
  const line = res.stdout.split('\n').find((l) => l.startsWith(RESULT_MARK));
  const steps = new Map<string, StepResult>();
  if (line === undefined) {
    const why = res.err ? res.err.message : 'no result line';
    return { steps, failure: `child failed: ${why}\n${res.stderr}\n${res.stdout}` };
  }
  for (const s of JSON.parse(line.slice(RESULT_MARK.length)) as StepResult[]) steps.set(s.name, s);
  return { steps, failure: res.err ? `child exited badly: ${res.err.message}` : undefined };
}

function registerTests(): void {
  describe('shallot_udp in this process', () => {
    const udp = loadUdp();
    const loose = udp as unknown as Record<string, (...args: unknown[]) => unknown>;
    const call =
      (fn: string, ...args: unknown[]) =>
      () =>
        loose[fn]?.(...args);
    const lo = Buffer.from([127, 0, 0, 1]);

    it('exports the NativeUdp API', () => {
      for (const fn of [
        'open',
        'startReading',
        'stopReading',
        'sendBatch',
        'sendGroups',
        'sendTo',
        'stats',
        'close',
        'parseAddress',
        'formatAddress',
      ]) {
        assert.equal(typeof loose[fn], 'function', fn);
      }
    });

    it('rejects wrong argument types with TypeError and bad values with RangeError', () => {
      const cb = () => {};
      assert.throws(call('open'), TypeError);
      assert.throws(call('open', 5, '127.0.0.1', 0, 0), RangeError);
      assert.throws(call('open', 4, 42, 0, 0), TypeError);
      assert.throws(call('open', 4, '127.0.0.1', 70000, 0), RangeError);
      assert.throws(call('open', 4, '127.0.0.1', 0, -1), RangeError);
      assert.throws(call('open', 4, '::1', 0, 0), expectCode('ERR_INVALID_ARG_VALUE'));
      assert.throws(call('open', 6, '127.0.0.1', 0, 0), expectCode('ERR_INVALID_ARG_VALUE'));
      assert.throws(call('open', 4, 'localhost', 0, 0), TypeError);
      assert.throws(call('startReading', '3', 8, 1500, cb), TypeError);
      assert.throws(call('startReading', 3, 8, 1500, 'cb'), TypeError);
      assert.throws(call('startReading', 3, 0, 1500, cb), RangeError);
      assert.throws(call('startReading', 3, 8, 70000, cb), RangeError);
      assert.throws(call('startReading', 3, 1024, 65535, cb), RangeError);
      assert.throws(call('stopReading', null), TypeError);
      assert.throws(call('stopReading', 1.5), RangeError);
      assert.throws(call('sendBatch', 3, 'abc', 3, 4, lo, 1), TypeError);
      assert.throws(call('sendBatch', 3, Buffer.alloc(4), 5, 4, lo, 1), RangeError);
      assert.throws(call('sendBatch', 3, Buffer.alloc(4), 4, 4, Buffer.alloc(16), 1), RangeError);
      assert.throws(call('sendBatch', 3, Buffer.alloc(4), 4, 6, lo, 1), RangeError);
      assert.throws(call('sendBatch', 3, Buffer.alloc(4), 4, 4, lo, 65536), RangeError);
      assert.throws(call('sendBatch', 3, Buffer.alloc(4), 4, 4, lo, 1, -1), RangeError);
      assert.throws(call('sendTo', 3, Buffer.alloc(65536), 4, lo, 1), RangeError);
      assert.throws(call('stats'), TypeError);
      assert.throws(call('close', 2 ** 40), RangeError);
      assert.throws(call('formatAddress', 4, Buffer.alloc(16), 0), RangeError);
    });

    it('refuses fds it did not open; stopReading of one is a no-op', () => {
      for (const fn of ['stats', 'close']) {
        assert.throws(call(fn, 1), expectCode('ERR_UDP_UNKNOWN_FD'));
      }
      assert.throws(
        call('startReading', 1, 8, 1500, () => {}),
        expectCode('ERR_UDP_UNKNOWN_FD'),
      );
      const one = pack([Buffer.from('x')]);
      assert.throws(
        call('sendBatch', 1, one, one.length, 4, lo, 9),
        expectCode('ERR_UDP_UNKNOWN_FD'),
      );
      assert.throws(call('sendTo', 1, one, 4, lo, 9), expectCode('ERR_UDP_UNKNOWN_FD'));
      udp.stopReading(1);
    });

    it('sendBatch parses packed batches with bounds checks', () => {
      const s = udp.open(4, '127.0.0.1', 0, 0);
      try {
        const three = pack([Buffer.from('one'), Buffer.alloc(0), Buffer.alloc(1400, 7)]);
        assert.equal(udp.sendBatch(s.fd, three, three.length, 4, lo, s.port), 3);
        assert.equal(udp.sendBatch(s.fd, three, 0, 4, lo, s.port), 0);
        assert.equal(udp.sendBatch(s.fd, three, 5, 4, lo, s.port), 1, 'len bounds the batch');
        assert.throws(() => udp.sendBatch(s.fd, three, 4, 4, lo, s.port), RangeError);
        assert.throws(() => udp.sendBatch(s.fd, three, 6, 4, lo, s.port), RangeError);
        const lying = Buffer.from([0xff, 0xff, 1, 2, 3]);
        assert.throws(() => udp.sendBatch(s.fd, lying, 5, 4, lo, s.port), /claims 65535 bytes/);
        assert.throws(
          () => udp.sendBatch(s.fd, Buffer.from([0]), 1, 4, lo, s.port),
          /truncated length prefix/,
        );
        // More than one sendmmsg() chunk (64) in one batch.
        const many = pack(Array.from({ length: 150 }, (_, i) => Buffer.from(`m${i}`)));
        assert.equal(udp.sendBatch(s.fd, many, many.length, 4, lo, s.port), 150);
        assert.equal(udp.stats(s.fd).sent, 3 + 1 + 150);
        // The other family is refused per datagram, counted, not thrown.
        assert.equal(udp.sendBatch(s.fd, three, three.length, 6, Buffer.alloc(16), 1), 0);
        assert.equal(udp.stats(s.fd).sendErrors, 3);
      } finally {
        udp.close(s.fd);
      }
    });

    it('sendGroups sends to several destinations; a malformed buffer sends nothing', () => {
      const s = udp.open(4, '127.0.0.1', 0, 0);
      const t = udp.open(4, '127.0.0.1', 0, 0);
      try {
        const group = (port: number, datagrams: Buffer[]) => {
          const packed = pack(datagrams);
          const head = Buffer.alloc(11);
          head[0] = 4;
          lo.copy(head, 1);
          head.writeUInt16BE(port, 5);
          head.writeUInt32BE(packed.length, 7);
          return Buffer.concat([head, packed]);
        };
        const two = Buffer.concat([
          group(s.port, [Buffer.from('a'), Buffer.from('b')]),
          group(t.port, [Buffer.from('c')]),
        ]);
        assert.equal(udp.sendGroups(s.fd, two, two.length), 3);
        assert.equal(udp.sendGroups(s.fd, two, 0), 0);
        assert.throws(() => udp.sendGroups(s.fd, two, two.length - 1), RangeError);
        assert.throws(() => udp.sendGroups(s.fd, two, 5), /bad group header/);
        const lying = group(s.port, [Buffer.from('x')]);
        lying.writeUInt32BE(1000, 7);
        assert.throws(() => udp.sendGroups(s.fd, lying, lying.length), /bad group header/);
        const inner = group(s.port, [Buffer.from('x')]);
        inner.writeUInt16BE(9, 11); // the datagram claims more than the group holds
        assert.throws(() => udp.sendGroups(s.fd, inner, inner.length), /claims 9 bytes/);
        const v6 = Buffer.concat([Buffer.alloc(27), pack([Buffer.from('z')])]);
        v6[0] = 6; // to an IPv4 socket: refused per datagram, counted
        v6.writeUInt16BE(9, 21);
        v6.writeUInt32BE(3, 23);
        assert.equal(udp.sendGroups(s.fd, v6, v6.length), 0);
        assert.equal(udp.stats(s.fd).sent, 3);
        assert.equal(udp.stats(s.fd).sendErrors, 1);
      } finally {
        udp.close(s.fd);
        udp.close(t.fd);
      }
    });

    it('parses and formats addresses as Node does', () => {
      assert.deepEqual(udp.parseAddress('192.0.2.7'), {
        family: 4,
        addr: Buffer.from([192, 0, 2, 7]),
        scopeId: 0,
      });
      const v6 = udp.parseAddress('2001:db8::1');
      assert.equal(v6?.family, 6);
      assert.equal(v6?.addr.toString('hex'), '20010db8000000000000000000000001');
      for (const bad of ['', 'localhost', '1.2.3', '1.2.3.4.5', '::g', 'x'.repeat(300), 'a\0b']) {
        assert.equal(udp.parseAddress(bad), null, JSON.stringify(bad));
      }
      const lo6 = udp.parseAddress('fe80::1%lo');
      assert.equal(lo6?.scopeId, 1, 'the loopback interface is index 1');
      for (const host of [
        '0.0.0.0',
        '10.1.2.3',
        '::',
        '::1',
        '2001:db8::1:0:0:1',
        '::ffff:1.2.3.4',
      ]) {
        const p = udp.parseAddress(host);
        assert.ok(p);
        assert.equal(udp.formatAddress(p.family, p.addr, p.scopeId), host);
      }
      assert.equal(udp.formatAddress(6, lo6?.addr ?? Buffer.alloc(16), 1), 'fe80::1%lo');
    });
  });

  describe('UdpTransport on the loopback (child process)', () => {
    let outcome: ChildOutcome | undefined;
    before(async () => {
      outcome = await runChild('1', process.execPath, [THIS_FILE]);
    });
    for (const name of CHILD_STEPS) {
      it(name, { timeout: CHILD_TIMEOUT_MS + 5000 }, () => checkStep(outcome, name));
    }
  });

  describe('GSO refused, in a network namespace with a small MTU (root)', () => {
    const ns = `shudp-${process.pid}`;
    let skipReason = netnsSkipReason();
    let created = false;
    let outcome: ChildOutcome | undefined;

    before(async () => {
      if (skipReason !== undefined) return;
      spawnSync('ip', ['netns', 'del', ns], { timeout: 5000 }); // leftover of a crashed run
      const add = spawnSync('ip', ['netns', 'add', ns], { encoding: 'utf8', timeout: 5000 });
      if (add.status !== 0) {
        skipReason = `needs network namespaces: ip netns add failed: ${add.stderr.trim()}`;
        return;
      }
      created = true;
      const lo = spawnSync('ip', ['-n', ns, 'link', 'set', 'lo', 'up', 'mtu', '1300'], {
        encoding: 'utf8',
        timeout: 5000,
      });
      assert.equal(lo.status, 0, `ip link set lo: ${lo.stderr}`);
      outcome = await runChild('mtu', 'ip', ['netns', 'exec', ns, process.execPath, THIS_FILE]);
    });

    after(() => {
      if (created) {
        const del = spawnSync('ip', ['netns', 'del', ns], { encoding: 'utf8', timeout: 5000 });
        assert.equal(del.status, 0, `ip netns del ${ns}: ${del.stderr}`);
      }
    });

    for (const name of MTU_STEPS) {
      it(name, { timeout: CHILD_TIMEOUT_MS + 5000 }, (t) => {
        if (skipReason !== undefined) {
          t.skip(skipReason);
          return;
        }
        checkStep(outcome, name);
      });
    }
  });
}

function checkStep(outcome: ChildOutcome | undefined, name: string): void {
  assert.ok(outcome, 'child did not run');
  const s = outcome.steps.get(name);
  if (s === undefined) assert.fail(outcome.failure ?? `step "${name}" did not run`);
  if (!s.ok) assert.fail(`${name}: ${s.error}`);
}

function netnsSkipReason(): string | undefined {
  if (process.platform !== 'linux') return 'needs Linux';
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) {
    return 'needs root: network namespaces need CAP_SYS_ADMIN';
  }
  const r = spawnSync('ip', ['-V'], { encoding: 'utf8', timeout: 5000 });
  if (r.error !== undefined || r.status !== 0) return 'needs iproute2: `ip` is not available';
  return undefined;
}

// ---------------------------------------------------------------------------
// Child entry point

if (process.env.SHUDP_CHILD !== undefined) {
  const list =
    process.env.SHUDP_CHILD === 'mtu' ? await mtuChild(loadUdp()) : await child(loadUdp());
  process.stdout.write(`${RESULT_MARK}${JSON.stringify(list)}\n`, () => process.exit(0));
} else {
  registerTests();
}
