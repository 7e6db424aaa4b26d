/**
 * Tests of the native TUN addon (build/Release/shallot_tun.node).
 *
 * Three layers:
 *  1. In this process, no privileges: the API shape, argument checking and
 *     the packed-batch parser of writeBatch (against /dev/null).
 *  2. A child process, no privileges: the reader machinery (uv_poll,
 *     reused buffer, oversize, throwing callback, stop/close inside the
 *     callback) over a FIFO adopted by startReading().
 *  3. A child process inside a fresh network namespace (root and iproute2
 *     needed, else skipped): a real TUN with IPv4 and IPv6 traffic.
 *
 * The children are this very file, run with SHTUN_CHILD=fifo|netns: they
 * print one line `SHTUN_RESULT <json>` with the outcome of each step and the
 * parent turns every step into a test. Children run apart because a throwing
 * onPackets must reach process 'uncaughtException', which the test runner
 * would otherwise count as a failure, and because the TUN must be opened
 * inside the namespace.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import net from 'node:net';
import { loadTun, type NativeTun } from '../../src/native/binding.js';
import { TcpCoalescer } from '../../src/tun/offload.js';
import { ACK, PSH, SYN, pack as tcpPack, tcpPacket, vnetEntries } from '../helpers/tcp-packets.js';

const THIS_FILE = fileURLToPath(import.meta.url);
const RESULT_MARK = 'SHTUN_RESULT ';
const CHILD_TIMEOUT_MS = 60_000;
/** Children stretch their waits by this (test/native/tun_valgrind.sh sets it). */
const TIME_SCALE = Math.max(1, Number(process.env.SHTUN_TIME_SCALE ?? '1') || 1);
const STEP_TIMEOUT_MS = 10_000 * TIME_SCALE;

// ---------------------------------------------------------------------------
// Packets

function pack(packets: Buffer[]): Buffer {
  const out = Buffer.alloc(packets.reduce((n, p) => n + 2 + p.length, 0));
  let off = 0;
  for (const p of packets) {
    off = out.writeUInt16BE(p.length, off);
    off += p.copy(out, off);
  }
  return out;
}

function unpack(buf: Buffer, len: number): Buffer[] {
  const out: Buffer[] = [];
  let off = 0;
  while (off < len) {
    const n = buf.readUInt16BE(off);
    if (off + 2 + n > len) throw new Error(`bad packed batch at ${off}`);
    out.push(Buffer.from(buf.subarray(off + 2, off + 2 + n)));
    off += 2 + n;
  }
  return out;
}

/** One's-complement sum of 16-bit words, folded, not inverted. */
function sum16(buf: Buffer, initial = 0): number {
  let sum = initial;
  for (let i = 0; i + 1 < buf.length; i += 2) sum += buf.readUInt16BE(i);
  if (buf.length % 2 === 1) sum += buf.readUInt8(buf.length - 1) << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

function ipv4Bytes(a: string): Buffer {
  return Buffer.from(a.split('.').map((x) => Number(x)));
}

function ipv6Bytes(a: string): Buffer {
  const [head = '', tail] = a.split('::');
  const h = head === '' ? [] : head.split(':');
  const t = tail === undefined || tail === '' ? [] : tail.split(':');
  const words = [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  const out = Buffer.alloc(16);
  words.forEach((w, i) => out.writeUInt16BE(parseInt(w, 16), i * 2));
  return out;
}

function ipv4Udp(src: string, dst: string, sport: number, dport: number, payload: Buffer): Buffer {
  const p = Buffer.alloc(28 + payload.length);
  p.writeUInt8(0x45, 0);
  p.writeUInt16BE(p.length, 2);
  p.writeUInt16BE(0x1234, 4);
  p.writeUInt16BE(0x4000, 6); // DF
  p.writeUInt8(64, 8);
  p.writeUInt8(17, 9);
  ipv4Bytes(src).copy(p, 12);
  ipv4Bytes(dst).copy(p, 16);
  p.writeUInt16BE(~sum16(p.subarray(0, 20)) & 0xffff, 10);
  p.writeUInt16BE(sport, 20);
  p.writeUInt16BE(dport, 22);
  p.writeUInt16BE(8 + payload.length, 24);
  // UDP checksum 0: none, allowed over IPv4.
  payload.copy(p, 28);
  return p;
}

function ipv6Udp(src: string, dst: string, sport: number, dport: number, payload: Buffer): Buffer {
  const udpLen = 8 + payload.length;
  const p = Buffer.alloc(40 + udpLen);
  p.writeUInt32BE(0x60000000, 0);
  p.writeUInt16BE(udpLen, 4);
  p.writeUInt8(17, 6);
  p.writeUInt8(64, 7);
  ipv6Bytes(src).copy(p, 8);
  ipv6Bytes(dst).copy(p, 24);
  p.writeUInt16BE(sport, 40);
  p.writeUInt16BE(dport, 42);
  p.writeUInt16BE(udpLen, 44);
  payload.copy(p, 48);
  // Mandatory over IPv6: pseudo-header (addresses, length, next header).
  const pseudo = Buffer.alloc(8);
  pseudo.writeUInt32BE(udpLen, 0);
  pseudo.writeUInt32BE(17, 4);
  let sum = sum16(p.subarray(8, 40));
  sum = sum16(pseudo, sum);
  sum = sum16(p.subarray(40), sum);
  const csum = ~sum & 0xffff;
  p.writeUInt16BE(csum === 0 ? 0xffff : csum, 46);
  return p;
}

interface UdpInfo {
  version: number;
  src: Buffer;
  dst: Buffer;
  sport: number;
  dport: number;
  payload: Buffer;
}

/** The UDP datagram in an IPv4/IPv6 packet, or null for anything else. */
function parseUdp(p: Buffer): UdpInfo | null {
  if (p.length < 1) return null;
  const version = p.readUInt8(0) >> 4;
  if (version === 4 && p.length >= 28) {
    const ihl = (p.readUInt8(0) & 0xf) * 4;
    if (p.readUInt8(9) !== 17 || p.length < ihl + 8) return null;
    assert.equal(p.readUInt16BE(2), p.length, 'IPv4 total length = packet length');
    assert.equal(sum16(p.subarray(0, ihl)), 0xffff, 'IPv4 header checksum');
    return {
      version,
      src: p.subarray(12, 16),
      dst: p.subarray(16, 20),
      sport: p.readUInt16BE(ihl),
      dport: p.readUInt16BE(ihl + 2),
      payload: p.subarray(ihl + 8, ihl + p.readUInt16BE(ihl + 4)),
    };
  }
  if (version === 6 && p.length >= 48) {
    if (p.readUInt8(6) !== 17) return null;
    assert.equal(p.readUInt16BE(4) + 40, p.length, 'IPv6 payload length');
    return {
      version,
      src: p.subarray(8, 24),
      dst: p.subarray(24, 40),
      sport: p.readUInt16BE(40),
      dport: p.readUInt16BE(42),
      payload: p.subarray(48, 40 + p.readUInt16BE(44)),
    };
  }
  return null;
}

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

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Collects what onPackets delivers (copied: the buffer is only lent). */
class Collector {
  readonly packets: Buffer[] = [];
  readonly batches: number[] = [];
  readonly buffers = new Set<Buffer>();
  calls = 0;
  problem: string | undefined;
  /** Runs inside the callback, before the packets are recorded. */
  hook: ((buf: Buffer, len: number, count: number) => void) | undefined;

  readonly onPackets = (buf: Buffer, len: number, count: number): void => {
    this.calls++;
    this.buffers.add(buf);
    try {
      assert.ok(Buffer.isBuffer(buf), 'buf is a Buffer');
      assert.ok(Number.isInteger(len) && len > 0 && len <= buf.length, `len ${len}`);
      const got = unpack(buf, len);
      assert.equal(got.length, count, 'count matches the packed packets');
      this.packets.push(...got);
      this.batches.push(count);
    } catch (err) {
      this.problem ??= (err as Error).message;
    }
    this.hook?.(buf, len, count);
  };

  async waitFor(what: string, pred: (p: Buffer) => boolean, n: number, ms = 5000) {
    const deadline = Date.now() + ms * TIME_SCALE;
    for (;;) {
      if (this.problem !== undefined) throw new Error(`onPackets: ${this.problem}`);
      const m = this.packets.filter(pred);
      if (m.length >= n) return m;
      if (Date.now() > deadline) {
        throw new Error(`timed out waiting for ${n} x ${what}: got ${m.length}`);
      }
      await sleep(5);
    }
  }
}

function expectCode(code: string) {
  return (err: unknown): boolean => {
    assert.equal((err as { code?: string }).code, code, String(err));
    return true;
  };
}

// ---------------------------------------------------------------------------
// Child: reader machinery over a FIFO (no privileges)

async function fifoChild(tun: NativeTun): Promise<StepResult[]> {
  const steps = new Steps();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shtun-fifo-'));
  const fifo = path.join(dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
  const fd = fs.openSync(fifo, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
  const c = new Collector();
  const send = (s: string | Buffer) => fs.writeSync(fd, typeof s === 'string' ? Buffer.from(s) : s);
  const is = (s: string) => (p: Buffer) => p.toString() === s;

  await steps.run('adopted fd: one wake-up, one callback, one reused buffer', async () => {
    tun.startReading(fd, 4, 100, c.onPackets);
    assert.throws(
      () => tun.startReading(fd, 4, 100, c.onPackets),
      expectCode('ERR_TUN_ALREADY_READING'),
    );
    send('hello');
    await c.waitFor('hello', is('hello'), 1);
    send('world');
    await c.waitFor('world', is('world'), 1);
    assert.equal(c.buffers.size, 1, 'the same Buffer every time');
    const [buf] = [...c.buffers];
    assert.equal(buf?.length, 4 * (100 + 2), 'maxBatch * (maxPacket + 2)');
    const s = tun.stats(fd);
    assert.equal(s.read, 2);
    assert.equal(s.reading, true);
  });

  await steps.run('a read longer than maxPacket is consumed, dropped and counted', async () => {
    const before = tun.stats(fd).oversize;
    send(Buffer.alloc(300, 0x41));
    await sleep(50);
    send('after-oversize');
    await c.waitFor('after-oversize', is('after-oversize'), 1);
    assert.equal(tun.stats(fd).oversize, before + 1);
    assert.ok(!c.packets.some((p) => p.length >= 100), 'nothing oversize delivered');
  });

  await steps.run('writeBatch on the fd is read back', async () => {
    assert.equal(tun.writeBatch(fd, pack([Buffer.from('via-write')]), 11), 1);
    await c.waitFor('via-write', is('via-write'), 1);
    assert.equal(tun.stats(fd).written, 1);
  });

  await steps.run('a throwing callback reaches uncaughtException; polling goes on', async () => {
    const caught: unknown[] = [];
    const onUncaught = (err: unknown) => caught.push(err);
    process.on('uncaughtException', onUncaught);
    try {
      c.hook = () => {
        c.hook = undefined;
        throw new Error('boom from onPackets');
      };
      send('throw-1');
      await c.waitFor('throw-1', is('throw-1'), 1);
      for (let i = 0; i < 200 && caught.length === 0; i++) await sleep(5);
      assert.equal(caught.length, 1);
      assert.match(String(caught[0]), /boom from onPackets/);
      send('after-throw');
      await c.waitFor('after-throw', is('after-throw'), 1);
      assert.equal(tun.stats(fd).reading, true);
    } finally {
      process.off('uncaughtException', onUncaught);
    }
  });

  await steps.run('a detached (transferred) buffer is replaced, not written to', async () => {
    let transferred = false;
    c.hook = (buf) => {
      c.hook = undefined;
      try {
        structuredClone(buf.buffer, { transfer: [buf.buffer as ArrayBuffer] });
        transferred = buf.length === 0;
      } catch {
        transferred = false; // not transferable: nothing to test, still fine
      }
    };
    send('detach-1');
    await c.waitFor('detach-1', is('detach-1'), 1);
    send('detach-2');
    await c.waitFor('detach-2', is('detach-2'), 1);
    return { transferred, buffers: c.buffers.size };
  });

  await steps.run('stopReading inside the callback, then start again at once', async () => {
    const calls = c.calls;
    c.hook = () => {
      c.hook = undefined;
      tun.stopReading(fd);
      tun.stopReading(fd); // idempotent
    };
    send('stop-1');
    await c.waitFor('stop-1', is('stop-1'), 1);
    await sleep(30);
    send('while-stopped');
    await sleep(100);
    assert.equal(c.calls, calls + 1, 'no callback after stopReading');
    assert.equal(tun.stats(fd).reading, false);
    tun.startReading(fd, 4, 100, c.onPackets);
    await c.waitFor('while-stopped', is('while-stopped'), 1);
  });

  await steps.run('close inside the callback; a second close is refused', async () => {
    c.hook = () => {
      c.hook = undefined;
      tun.close(fd);
    };
    send('close-1');
    await c.waitFor('close-1', is('close-1'), 1);
    assert.throws(() => tun.stats(fd), expectCode('ERR_TUN_UNKNOWN_FD'));
    assert.throws(() => tun.close(fd), expectCode('ERR_TUN_UNKNOWN_FD'));
    tun.stopReading(fd); // no-op
  });

  fs.rmSync(dir, { recursive: true, force: true });
  return steps.list;
}

// ---------------------------------------------------------------------------
// Child: a real TUN inside a network namespace (root)

function ip(...args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8', timeout: 5000 });
}

async function bound(type: 'udp4' | 'udp6', address: string) {
  const sock = dgram.createSocket(type);
  const received: { msg: Buffer; from: dgram.RemoteInfo }[] = [];
  sock.on('message', (msg, from) => received.push({ msg, from }));
  await new Promise<void>((resolve, reject) => {
    sock.once('error', reject);
    sock.bind({ address, port: 0 }, () => resolve());
  });
  const waitMessages = async (n: number, ms = 5000) => {
    const deadline = Date.now() + ms * TIME_SCALE;
    while (received.length < n) {
      if (Date.now() > deadline) throw new Error(`socket got ${received.length} of ${n}`);
      await sleep(5);
    }
    return received;
  };
  return { sock, port: sock.address().port, received, waitMessages };
}

async function netnsChild(tun: NativeTun): Promise<StepResult[]> {
  const steps = new Steps();
  let fd = -1;
  let name = '';
  const c = new Collector();
  const udpTo = (version: number, dst: Buffer, payload?: string) => (p: Buffer) => {
    const u = parseUdp(p);
    return (
      u !== null &&
      u.version === version &&
      u.dst.equals(dst) &&
      u.dport === 9999 &&
      (payload === undefined || u.payload.toString() === payload)
    );
  };
  const dst4 = ipv4Bytes('10.77.0.2');
  const dst6 = ipv6Bytes('fd77::2');

  const opened = await steps.run('open sh%d and configure it', () => {
    assert.throws(() => tun.open('x'.repeat(16)), RangeError);
    assert.throws(
      () => tun.open('bad/name'),
      (err: Error & { code?: string }) =>
        /TUNSETIFF 'bad\/name' failed: Invalid argument/.test(err.message) && err.code === 'EINVAL',
    );
    ({ fd, name } = tun.open('sh%d'));
    assert.match(name, /^sh\d+$/);
    ip('addr', 'add', '10.77.0.1/24', 'dev', name);
    ip('-6', 'addr', 'add', 'fd77::1/64', 'dev', name, 'nodad');
    ip('link', 'set', name, 'up', 'mtu', '1400');
    tun.startReading(fd, 64, 1500, c.onPackets);
    return { fd, name };
  });
  if (!opened) return steps.list;

  const s4 = await bound('udp4', '10.77.0.1');
  const s6 = await bound('udp6', 'fd77::1');

  await steps.run('IPv4: 200 UDP datagrams read from the TUN, in batches', async () => {
    const sent = new Set<string>();
    for (let i = 0; i < 200; i++) {
      const payload = `shallot-v4-${i}-${'x'.repeat(i % 50)}`;
      sent.add(payload);
      s4.sock.send(payload, 9999, '10.77.0.2');
    }
    const got = await c.waitFor('IPv4 UDP to 10.77.0.2:9999', udpTo(4, dst4), 200);
    const seen = new Set<string>();
    for (const p of got) {
      const u = parseUdp(p);
      assert.ok(u);
      assert.equal(p.readUInt8(9), 17, 'protocol 17');
      assert.deepEqual([...u.src], [10, 77, 0, 1]);
      assert.equal(u.sport, s4.port);
      seen.add(u.payload.toString());
    }
    assert.deepEqual([...seen].sort(), [...sent].sort(), 'every payload intact, once');
    const maxBatch = Math.max(...c.batches);
    assert.ok(maxBatch > 1, `some batch held more than one packet (max ${maxBatch})`);
    return { batches: c.batches.length, maxBatch };
  });

  await steps.run(
    'IPv4: a batch of crafted replies written to the TUN reaches the socket',
    async () => {
      const replies = [0, 1, 2].map((i) =>
        ipv4Udp('10.77.0.2', '10.77.0.1', 9999, s4.port, Buffer.from(`reply-${i}`)),
      );
      const packed = pack(replies);
      const before = tun.stats(fd).written;
      assert.equal(tun.writeBatch(fd, packed, packed.length), 3);
      const got = await s4.waitMessages(3);
      assert.deepEqual(got.map((m) => m.msg.toString()).sort(), ['reply-0', 'reply-1', 'reply-2']);
      for (const m of got) {
        assert.equal(m.from.address, '10.77.0.2');
        assert.equal(m.from.port, 9999);
      }
      assert.equal(tun.stats(fd).written, before + 3);
    },
  );

  await steps.run('IPv6: a UDP datagram read from the TUN; a reply written back', async () => {
    s6.sock.send('shallot-v6', 9999, 'fd77::2');
    const [p] = await c.waitFor('IPv6 UDP to fd77::2', udpTo(6, dst6, 'shallot-v6'), 1);
    assert.ok(p);
    assert.equal(p.readUInt8(0) >> 4, 6);
    assert.equal(p.readUInt8(6), 17, 'next header 17');
    assert.ok(p.subarray(8, 24).equals(ipv6Bytes('fd77::1')));
    const reply = pack([ipv6Udp('fd77::2', 'fd77::1', 9999, s6.port, Buffer.from('reply-v6'))]);
    assert.equal(tun.writeBatch(fd, reply, reply.length), 1);
    const [m] = await s6.waitMessages(1);
    assert.equal(m?.msg.toString(), 'reply-v6');
    assert.equal(m?.from.address, 'fd77::2');
  });

  await steps.run('writeBatch: malformed batch refused whole; non-IP packet counted', () => {
    const good = ipv4Udp('10.77.0.2', '10.77.0.1', 9999, s4.port, Buffer.from('never'));
    const bad = Buffer.concat([pack([good]), Buffer.from([0x00, 0x40, 0x45])]);
    const before = tun.stats(fd);
    assert.throws(() => tun.writeBatch(fd, bad, bad.length), RangeError);
    assert.equal(tun.stats(fd).written, before.written, 'nothing written');
    const junk = pack([Buffer.from([0x00, 1, 2, 3, 4, 5, 6, 7])]);
    assert.equal(tun.writeBatch(fd, junk, junk.length), 0);
    assert.equal(tun.stats(fd).writeErrors, before.writeErrors + 1);
  });

  await steps.run('oversize packets are dropped and counted in stats', async () => {
    tun.stopReading(fd);
    tun.startReading(fd, 8, 200, c.onPackets);
    const before = tun.stats(fd).oversize;
    s4.sock.send(Buffer.alloc(1000, 0x5a), 9999, '10.77.0.2');
    s4.sock.send('after-oversize', 9999, '10.77.0.2');
    await c.waitFor('after-oversize', udpTo(4, dst4, 'after-oversize'), 1);
    const s = tun.stats(fd);
    assert.ok(s.oversize >= before + 1, `oversize ${before} -> ${s.oversize}`);
    assert.ok(!c.packets.some((p) => p.length > 200 && udpTo(4, dst4)(p) && p.length > 1000));
    return s;
  });

  await steps.run('a throwing callback reaches uncaughtException; reading goes on', async () => {
    const caught: unknown[] = [];
    const onUncaught = (err: unknown) => caught.push(err);
    process.on('uncaughtException', onUncaught);
    try {
      c.hook = () => {
        c.hook = undefined;
        throw new Error('boom from onPackets');
      };
      s4.sock.send('throw-1', 9999, '10.77.0.2');
      await c.waitFor('throw-1', udpTo(4, dst4, 'throw-1'), 1);
      for (let i = 0; i < 200 && caught.length === 0; i++) await sleep(5);
      assert.match(String(caught[0]), /boom from onPackets/);
      s4.sock.send('after-throw', 9999, '10.77.0.2');
      await c.waitFor('after-throw', udpTo(4, dst4, 'after-throw'), 1);
    } finally {
      process.off('uncaughtException', onUncaught);
    }
  });

  await steps.run(
    'vnet header: reads come without it; a coalesced TCP run (GSO) reaches a TCP socket intact',
    async () => {
      const v = tun.open('shv%d', true);
      const cv = new Collector();
      const server = net.createServer();
      try {
        ip('addr', 'add', '10.78.0.1/24', 'dev', v.name);
        ip('link', 'set', v.name, 'up', 'mtu', '1400');
        tun.startReading(v.fd, 16, 1500, cv.onPackets);
        const chunks: Buffer[] = [];
        server.on('connection', (sock) => sock.on('data', (d) => chunks.push(d)));
        await new Promise<void>((resolve) => server.listen(0, '10.78.0.1', () => resolve()));
        const port = (server.address() as net.AddressInfo).port;
        // A TCP client played by hand from 10.78.0.2: SYN, read the SYN-ACK
        // (a plain IPv4 packet: the header was stripped), ACK.
        const seg = (seq: number, ack: number, flags: number, payload = Buffer.alloc(0)) =>
          tcpPacket({
            src: '10.78.0.2',
            dst: '10.78.0.1',
            sport: 40001,
            dport: port,
            seq,
            ack,
            flags,
            payload,
            window: 65535,
          });
        const write = (pkts: Buffer[]) => {
          const { buf, len } = tcpPack(pkts);
          const out = new TcpCoalescer().coalesce(buf, len);
          return { runs: vnetEntries(out.buf, out.len), n: tun.writeBatch(v.fd, out.buf, out.len) };
        };
        const isn = 1000;
        assert.equal(write([seg(isn, 0, SYN)]).n, 1);
        const [synAck] = await cv.waitFor(
          'SYN-ACK',
          (p) => p[0] === 0x45 && p[9] === 6 && ((p[33] as number) & 0x12) === 0x12,
          1,
        );
        assert.ok(synAck);
        const theirs = synAck.readUInt32BE(24);
        write([seg(isn + 1, theirs + 1, ACK)]);
        const data = Buffer.alloc(20 * 1000);
        for (let i = 0; i < data.length; i += 1) data[i] = (i * 31 + 7) & 0xff;
        const segs = Array.from({ length: 20 }, (_, i) =>
          seg(
            isn + 1 + i * 1000,
            theirs + 1,
            i === 19 ? ACK | PSH : ACK,
            data.subarray(i * 1000, (i + 1) * 1000),
          ),
        );
        const w = write(segs);
        assert.equal(w.runs.length, 1, 'one GSO entry');
        assert.equal(w.n, 1);
        const deadline = Date.now() + 5000 * TIME_SCALE;
        while (Buffer.concat(chunks).length < data.length && Date.now() < deadline) await sleep(5);
        assert.ok(Buffer.concat(chunks).equals(data), 'the bytes arrived intact, in order');
        assert.equal(tun.stats(v.fd).offloaded, 0);
        return { gsoBytes: w.runs[0]?.packet.length };
      } finally {
        server.close();
        tun.close(v.fd);
      }
    },
  );

  await steps.run('close inside the callback removes the interface', async () => {
    c.hook = () => {
      c.hook = undefined;
      tun.close(fd);
    };
    s4.sock.send('close-1', 9999, '10.77.0.2');
    await c.waitFor('close-1', udpTo(4, dst4, 'close-1'), 1);
    assert.throws(() => tun.stats(fd), expectCode('ERR_TUN_UNKNOWN_FD'));
    const r = spawnSync('ip', ['link', 'show', name], { encoding: 'utf8', timeout: 5000 });
    assert.notEqual(r.status, 0, 'interface gone after close');
  });

  await steps.run('deleting the interface stops the reader cleanly', async () => {
    const t = tun.open('shdel%d');
    const c2 = new Collector();
    tun.startReading(t.fd, 8, 1500, c2.onPackets);
    ip('link', 'del', t.name);
    for (let i = 0; i < 200 && tun.stats(t.fd).reading; i++) await sleep(5);
    const s = tun.stats(t.fd);
    tun.close(t.fd);
    assert.equal(s.reading, false, 'polling stopped');
    assert.ok(s.errors >= 1);
    return s;
  });

  s4.sock.close();
  s6.sock.close();
  return steps.list;
}

// ---------------------------------------------------------------------------
// Parent

interface ChildOutcome {
  steps: Map<string, StepResult>;
  failure: string | undefined;
}

async function runChild(cmd: string, args: string[], mode: string): Promise<ChildOutcome> {
  const env: NodeJS.ProcessEnv = { ...process.env, SHTUN_CHILD: mode };
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
    return { steps, failure: `child (${mode}) failed: ${why}\n${res.stderr}\n${res.stdout}` };
  }
  for (const s of JSON.parse(line.slice(RESULT_MARK.length)) as StepResult[]) steps.set(s.name, s);
  return { steps, failure: res.err ? `child exited badly: ${res.err.message}` : undefined };
}

function checkStep(outcome: ChildOutcome | undefined, name: string): void {
  assert.ok(outcome, 'child did not run');
  const s = outcome.steps.get(name);
  if (s === undefined) assert.fail(outcome.failure ?? `step "${name}" did not run`);
  if (!s.ok) assert.fail(`${name}: ${s.error}`);
}

const FIFO_STEPS = [
  'adopted fd: one wake-up, one callback, one reused buffer',
  'a read longer than maxPacket is consumed, dropped and counted',
  'writeBatch on the fd is read back',
  'a throwing callback reaches uncaughtException; polling goes on',
  'a detached (transferred) buffer is replaced, not written to',
  'stopReading inside the callback, then start again at once',
  'close inside the callback; a second close is refused',
];

const NETNS_STEPS = [
  'open sh%d and configure it',
  'IPv4: 200 UDP datagrams read from the TUN, in batches',
  'IPv4: a batch of crafted replies written to the TUN reaches the socket',
  'IPv6: a UDP datagram read from the TUN; a reply written back',
  'writeBatch: malformed batch refused whole; non-IP packet counted',
  'oversize packets are dropped and counted in stats',
  'a throwing callback reaches uncaughtException; reading goes on',
  'vnet header: reads come without it; a coalesced TCP run (GSO) reaches a TCP socket intact',
  'close inside the callback removes the interface',
  'deleting the interface stops the reader cleanly',
];

function netnsSkipReason(): string | undefined {
  if (process.platform !== 'linux') return 'needs Linux';
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) {
    return 'needs root: TUN devices and network namespaces need CAP_NET_ADMIN';
  }
  const r = spawnSync('ip', ['-V'], { encoding: 'utf8', timeout: 5000 });
  if (r.error !== undefined || r.status !== 0) return 'needs iproute2: `ip` is not available';
  if (!fs.existsSync('/dev/net/tun')) return 'needs /dev/net/tun';
  return undefined;
}

function registerTests(): void {
  describe('shallot_tun in this process (no privileges)', () => {
    const tun = loadTun();
    const loose = tun as unknown as Record<string, (...args: unknown[]) => unknown>;
    const call =
      (fn: string, ...args: unknown[]) =>
      () =>
        loose[fn]?.(...args);

    it('exports the NativeTun API', () => {
      for (const fn of ['open', 'startReading', 'stopReading', 'writeBatch', 'stats', 'close']) {
        assert.equal(typeof loose[fn], 'function', fn);
      }
    });

    it('rejects wrong argument types with TypeError and bad values with RangeError', () => {
      const cb = () => {};
      assert.throws(call('open'), TypeError);
      assert.throws(call('open', 42), TypeError);
      assert.throws(call('open', 'a'.repeat(16)), RangeError);
      assert.throws(call('open', 'a\0b'), RangeError);
      assert.throws(call('startReading', '3', 8, 1500, cb), TypeError);
      assert.throws(call('startReading', 3, 8, 1500, 'cb'), TypeError);
      assert.throws(call('startReading', 3, 8, 1500), TypeError);
      assert.throws(call('startReading', 3, 0, 1500, cb), RangeError);
      assert.throws(call('startReading', 3, 8, 70000, cb), RangeError);
      assert.throws(call('startReading', 3, 4096, 65535, cb), RangeError);
      assert.throws(call('startReading', -1, 8, 1500, cb), RangeError);
      assert.throws(call('stopReading', null), TypeError);
      assert.throws(call('stopReading', 1.5), RangeError);
      assert.throws(call('writeBatch', 3, 'abc', 3), TypeError);
      assert.throws(call('writeBatch', 3, Buffer.alloc(4), '4'), TypeError);
      assert.throws(call('writeBatch', 3, Buffer.alloc(4), 5), RangeError);
      assert.throws(call('writeBatch', 3, Buffer.alloc(4), NaN), RangeError);
      assert.throws(call('stats'), TypeError);
      assert.throws(call('stats', {}), TypeError);
      assert.throws(call('close', 2 ** 40), RangeError);
    });

    it('refuses fds it does not know; stopReading of one is a no-op', () => {
      assert.throws(call('stats', 1_000_000), expectCode('ERR_TUN_UNKNOWN_FD'));
      assert.throws(call('close', 1_000_000), expectCode('ERR_TUN_UNKNOWN_FD'));
      tun.stopReading(1_000_000);
    });

    it('startReading on an fd that cannot be polled throws and registers nothing', () => {
      const fd = fs.openSync('/dev/null', 'r');
      try {
        assert.throws(() => tun.startReading(fd, 8, 1500, () => {}), /cannot poll fd/);
        assert.throws(() => tun.stats(fd), expectCode('ERR_TUN_UNKNOWN_FD'));
      } finally {
        fs.closeSync(fd);
      }
    });

    it('writeBatch parses packed batches with bounds checks', () => {
      const fd = fs.openSync('/dev/null', 'w');
      try {
        const three = pack([Buffer.from('one'), Buffer.alloc(0), Buffer.alloc(1500, 7)]);
        assert.equal(tun.writeBatch(fd, three, three.length), 2, 'empty packets are skipped');
        assert.equal(tun.writeBatch(fd, three, 0), 0);
        assert.equal(tun.writeBatch(fd, three, 5), 1, 'len bounds the batch');
        assert.throws(() => tun.writeBatch(fd, three, 4), RangeError, 'len cuts a packet');
        assert.throws(() => tun.writeBatch(fd, three, 6), RangeError, 'len cuts a prefix');
        const lying = Buffer.from([0xff, 0xff, 1, 2, 3]);
        assert.throws(() => tun.writeBatch(fd, lying, lying.length), /claims 65535 bytes/);
        const odd = Buffer.from([0x00]);
        assert.throws(() => tun.writeBatch(fd, odd, 1), /truncated length prefix/);
        const view = pack([Buffer.from('abc')]).subarray(0);
        assert.equal(tun.writeBatch(fd, view, view.length), 1);
      } finally {
        fs.closeSync(fd);
      }
    });
  });

  describe('shallot_tun reader in a child process (no privileges)', () => {
    let outcome: ChildOutcome | undefined;
    before(async () => {
      outcome = await runChild(process.execPath, [THIS_FILE], 'fifo');
    });
    for (const name of FIFO_STEPS) {
      it(name, { timeout: CHILD_TIMEOUT_MS + 5000 }, () => checkStep(outcome, name));
    }
  });

  describe('shallot_tun on a real TUN in a network namespace (root)', () => {
    const ns = `shtun-${process.pid}`;
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
      outcome = await runChild('ip', ['netns', 'exec', ns, process.execPath, THIS_FILE], 'netns');
    });

    after(() => {
      if (created) {
        const del = spawnSync('ip', ['netns', 'del', ns], { encoding: 'utf8', timeout: 5000 });
        assert.equal(del.status, 0, `ip netns del ${ns}: ${del.stderr}`);
      }
    });

    for (const name of NETNS_STEPS) {
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

// ---------------------------------------------------------------------------
// Child entry point

if (process.env.SHTUN_CHILD !== undefined) {
  const mode = process.env.SHTUN_CHILD;
  const tun = loadTun();
  const list = mode === 'netns' ? await netnsChild(tun) : await fifoChild(tun);
  process.stdout.write(`${RESULT_MARK}${JSON.stringify(list)}\n`, () => process.exit(0));
} else {
  registerTests();
}
