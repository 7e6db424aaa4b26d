// Link re-keying (issue 9, hole 2, link half; docs/protocol.md 4.4) over the
// in-memory network with real DTLS and a 1 s interval: nothing is lost
// across re-keys under load, and a node whose memory is seized after a
// re-key cannot decrypt link records captured before it.
import { manualTime } from '../helpers/manual-clock.js';
import assert from 'node:assert/strict';
import { createDecipheriv, createHmac } from 'node:crypto';
import { after, test } from 'node:test';
import { ephemeralIdentity } from '../../src/identity.js';
import { LinkEndpoint, type LinkEndpointOptions, type LinkPeer } from '../../src/link/endpoint.js';
import { MSG_DATA } from '../../src/link/messages.js';
import { MemoryNetwork, UdpTransport } from '../../src/link/transport.js';
import type { NativeDtlsSession } from '../../src/native/binding.js';
import { waitFor } from '../helpers/netns.js';

// Lets sessions export their secrets (read by the addon at each call).
process.env.SHALLOT_DTLS_TEST_SECRETS = '1';

const endpoints: LinkEndpoint[] = [];
after(() => endpoints.forEach((e) => e.stop()));

interface Side {
  ep: LinkEndpoint;
  id: string;
  up: LinkPeer[];
  down: string[];
  got: number[];
}

async function side(
  net: MemoryNetwork,
  host: string,
  port: number,
  listen: boolean,
  extra: Partial<LinkEndpointOptions>,
): Promise<Side> {
  const identity = ephemeralIdentity();
  const s: Side = {
    ep: undefined as unknown as LinkEndpoint,
    id: identity.id,
    up: [],
    down: [],
    got: [],
  };
  s.ep = new LinkEndpoint({
    identity,
    transport: net.transport(host, port),
    listen: listen ? { allowedIds: null } : null,
    onPeerUp: (p) => s.up.push(p),
    onPeerDown: (_p, reason) => s.down.push(reason),
    onMessage: (_p, _t, buf, o, len) => {
      if (len >= 4) s.got.push(buf.readUInt32BE(o));
    },
    ...extra,
  });
  endpoints.push(s.ep);
  await s.ep.start();
  return s;
}

async function pair(
  net: MemoryNetwork,
  n: number,
  extra: Partial<LinkEndpointOptions>,
): Promise<{ dialer: Side; listener: Side }> {
  const listener = await side(net, `10.0.30.${2 * n + 1}`, 7000, true, extra);
  const dialer = await side(net, `10.0.30.${2 * n + 2}`, 40000, false, extra);
  dialer.ep.dial(`10.0.30.${2 * n + 1}`, 7000, listener.id);
  await waitFor('up', () => dialer.up.length === 1 && listener.up.length === 1, 5000, 5);
  return { dialer, listener };
}

/** DATA messages carrying u32 sequence numbers from..from+count, padded to `size`. */
function batch(from: number, count: number, size: number): [Buffer, number] {
  const b = Buffer.alloc(count * (2 + size));
  for (let i = 0; i < count; i += 1) {
    const o = i * (2 + size);
    b.writeUInt16BE(size, o);
    b[o + 2] = MSG_DATA;
    b.writeUInt32BE(from + i, o + 3);
    b.write('MARKER-plaintext', o + 7, 'latin1');
  }
  return [b, b.length];
}

test('re-keys every second under load lose nothing, in either direction', async (t) => {
  const net = new MemoryNetwork();
  const { dialer, listener } = await pair(net, 0, { rekeyAfterMs: 1000, rekeyOverlapMs: 500 });
  const d = dialer.up[0] as LinkPeer;
  const l = listener.up[0] as LinkPeer;
  const exporterBefore = d.session.exportKeyingMaterial('EXPORTER-test', 32);
  let sent = 0;
  const timer = setInterval(() => {
    const [b, len] = batch(sent, 16, 600);
    assert.ok(dialer.ep.sendMessages(d, b, len, 16));
    assert.ok(listener.ep.sendMessages(l, b, len, 16));
    sent += 16;
  }, 2);
  await new Promise((r) => setTimeout(r, 4500));
  clearInterval(timer);
  await waitFor(
    'everything delivered',
    () => dialer.got.length >= sent && listener.got.length >= sent,
    3000,
    10,
  );
  const c = [dialer.ep.counters, listener.ep.counters];
  assert.ok(
    c.every((x) => x.rekeys >= 3),
    `re-keys: ${c.map((x) => x.rekeys).join(', ')}`,
  );
  assert.deepEqual([dialer.down, listener.down], [[], []], 'the link never went down');
  const expect = Array.from({ length: sent }, (_, i) => i);
  assert.deepEqual(
    [...dialer.got].sort((a, b) => a - b),
    expect,
    'dialer received every record once',
  );
  assert.deepEqual(
    [...listener.got].sort((a, b) => a - b),
    expect,
    'listener received every record once',
  );
  assert.notDeepEqual(d.session.exportKeyingMaterial('EXPORTER-test', 32), exporterBefore);
  t.diagnostic(
    `${sent} records each way, re-keys ${c.map((x) => x.rekeys).join('/')}, ` +
      `records in flight at a switch decrypted by the old session: ` +
      `${c.map((x) => x.previousSessionDatagrams).join('/')}, failed attempts ${c.map((x) => x.rekeyFailures).join('/')}`,
  );
});

/** TLS 1.2 PRF with HMAC-SHA256 (RFC 5246 5). */
function prf(secret: Buffer, label: string, seed: Buffer, length: number): Buffer {
  const s = Buffer.concat([Buffer.from(label, 'latin1'), seed]);
  const out: Buffer[] = [];
  let a = s;
  let have = 0;
  while (have < length) {
    a = createHmac('sha256', secret).update(a).digest();
    const block = createHmac('sha256', secret)
      .update(Buffer.concat([a, s]))
      .digest();
    out.push(block);
    have += block.length;
  }
  return Buffer.concat(out).subarray(0, length);
}

interface Keys {
  keys: Buffer[];
  ivs: Buffer[];
}

/** ECDHE-ECDSA-CHACHA20-POLY1305 write keys and IVs of both sides, from the seized secrets. */
function keysOf(secrets: Buffer): Keys {
  const master = secrets.subarray(0, 48);
  const clientRandom = secrets.subarray(48, 80);
  const serverRandom = secrets.subarray(80, 112);
  const kb = prf(master, 'key expansion', Buffer.concat([serverRandom, clientRandom]), 88);
  return {
    keys: [kb.subarray(0, 32), kb.subarray(32, 64)],
    ivs: [kb.subarray(64, 76), kb.subarray(76, 88)],
  };
}

/** Decrypt one DTLS 1.2 ChaCha20-Poly1305 record (RFC 7905) with either side's key, or null. */
function decrypt(record: Buffer, k: Keys): Buffer | null {
  const len = record.readUInt16BE(11);
  if (record.length !== 13 + len || len < 16) return null;
  const seq64 = record.subarray(3, 11); // epoch || sequence number
  for (let side = 0; side < 2; side += 1) {
    const nonce = Buffer.from(k.ivs[side] as Buffer);
    for (let i = 0; i < 8; i += 1) nonce[4 + i] = (nonce[4 + i] as number) ^ (seq64[i] as number);
    const aad = Buffer.alloc(13);
    seq64.copy(aad, 0);
    record.copy(aad, 8, 0, 3);
    aad.writeUInt16BE(len - 16, 11);
    const d = createDecipheriv('chacha20-poly1305', k.keys[side] as Buffer, nonce, {
      authTagLength: 16,
    });
    d.setAAD(aad, { plaintextLength: len - 16 });
    d.setAuthTag(record.subarray(13 + len - 16));
    const plain = d.update(record.subarray(13, 13 + len - 16));
    try {
      d.final();
      return plain;
    } catch {
      // not this side's key
    }
  }
  return null;
}

/** Every session a seized endpoint holds in memory right now. */
function sessionsInMemory(ep: LinkEndpoint): NativeDtlsSession[] {
  return [...ep.peers.values()].flatMap((p) =>
    [p.session, p.previous, p.next].filter((s): s is NativeDtlsSession => Boolean(s)),
  );
}

/**
 * Capture the link's application records for 300 ms while DATA flows,
 * wait `waitMs`, then seize both endpoints' memory and count the captured
 * records the seized keys decrypt.
 */
async function seizeAfter(n: number, rekeyAfterMs: number, waitMs: number): Promise<number> {
  const net = new MemoryNetwork();
  const captured: Buffer[] = [];
  const { dialer, listener } = await pair(net, n, { rekeyAfterMs, rekeyOverlapMs: 300 });
  assert.equal(dialer.up[0]?.session.cipher(), 'ECDHE-ECDSA-CHACHA20-POLY1305');
  net.tap = (_fh, _fp, _h, _p, data) => {
    if (data[0] === 23 && data.length > 29) captured.push(Buffer.from(data));
  };
  let sent = 0;
  const timer = setInterval(() => {
    const [b, len] = batch(sent, 4, 100);
    dialer.ep.sendMessages(dialer.up[0] as LinkPeer, b, len, 4);
    listener.ep.sendMessages(listener.up[0] as LinkPeer, b, len, 4);
    sent += 4;
  }, 5);
  await new Promise((r) => setTimeout(r, 300));
  clearInterval(timer);
  net.tap = null;
  await new Promise((r) => setTimeout(r, waitMs));
  assert.ok(captured.length > 50, `captured ${captured.length} records`);
  const seized = [...sessionsInMemory(dialer.ep), ...sessionsInMemory(listener.ep)];
  let opened = 0;
  for (const s of seized) {
    const secrets = s.testSecrets();
    assert.ok(secrets, 'the test export works');
    const k = keysOf(secrets);
    for (const r of captured) {
      const plain = decrypt(r, k);
      if (plain && plain.includes('MARKER-plaintext')) opened += 1;
    }
  }
  dialer.ep.stop();
  listener.ep.stop();
  return opened;
}

test('a node seized after a re-key cannot decrypt link records captured before it', async () => {
  // The attack works on a link that does not re-key: it validates the decryptor.
  const control = await seizeAfter(1, 0, 2500);
  assert.ok(control > 50, `without re-keying the seized keys open ${control} captured records`);
  // Re-keys at 1 s and 2 s; the old sessions are freed 300 ms after each.
  const opened = await seizeAfter(2, 1000, 2500);
  assert.equal(opened, 0, `the seized keys open ${opened} records captured before the re-key`);
});

test('re-keys complete through 20% loss, and the link stays up', async () => {
  let seed = 7;
  const net = new MemoryNetwork(() => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  const { dialer, listener } = await pair(net, 3, { rekeyAfterMs: 1000 });
  net.lossRate = 0.2;
  let sent = 0;
  const timer = setInterval(() => {
    const [b, len] = batch(sent, 2, 200);
    dialer.ep.sendMessages(dialer.up[0] as LinkPeer, b, len, 2);
    listener.ep.sendMessages(listener.up[0] as LinkPeer, b, len, 2);
    sent += 2;
  }, 10);
  try {
    await waitFor(
      'two re-keys at both ends',
      () => dialer.ep.counters.rekeys >= 2 && listener.ep.counters.rekeys >= 2,
      30_000,
      20,
    );
  } catch (e) {
    const c = [dialer.ep.counters, listener.ep.counters];
    throw new Error(
      `${(e as Error).message}: re-keys ${c.map((x) => x.rekeys).join('/')}, ` +
        `abandoned ${c.map((x) => x.rekeyFailures).join('/')}, down ${[...dialer.down, ...listener.down].join('; ')}`,
    );
  } finally {
    clearInterval(timer);
  }
  assert.deepEqual([dialer.down, listener.down], [[], []], 'the link never went down');
  // With 20% loss about 80% arrive: the re-keys cost nothing beyond the loss.
  for (const s of [dialer, listener])
    assert.ok(s.got.length > sent * 0.7, `${s.got.length} of ${sent}`);
});

test('a peer that never re-keys loses the link at the deadline (virtual clock)', async () => {
  const net = new MemoryNetwork();
  let now = 5_000_000;
  const clock = manualTime(() => now);
  const listener = await side(net, '10.0.30.99', 7000, true, { clock, rekeyAfterMs: 1000 });
  // A dialer that never starts a re-key (as an old or hostile peer would).
  const dialer = await side(net, '10.0.30.100', 40000, false, { clock, rekeyAfterMs: 0 });
  dialer.ep.dial('10.0.30.99', 7000, listener.id);
  await waitFor('up', () => dialer.up.length === 1 && listener.up.length === 1, 5000, 5);
  // 30 s of grace after the 1 s interval, in 2 s steps with keepalives flowing.
  for (let step = 0; step < 15; step += 1) {
    now += 2000;
    dialer.ep.tick();
    listener.ep.tick();
    await new Promise((r) => setTimeout(r, 5));
  }
  assert.deepEqual(listener.down, [], 'still up 30 s after the interval');
  now += 2000;
  listener.ep.tick();
  assert.deepEqual(listener.down, ['link not re-keyed in time']);
});

test('a link re-keys after its record count, long before its interval', async () => {
  const net = new MemoryNetwork();
  const { dialer, listener } = await pair(net, 4, { rekeyAfterRecords: 2000 });
  let sent = 0;
  const deadline = Date.now() + 10_000;
  while (dialer.ep.counters.rekeys < 2 && Date.now() < deadline) {
    const [b, len] = batch(sent, 50, 100);
    dialer.ep.sendMessages(dialer.up[0] as LinkPeer, b, len, 50);
    sent += 50;
    await new Promise((r) => setTimeout(r, 10));
  }
  await waitFor('delivered', () => listener.got.length >= sent, 3000, 10);
  // The default interval is 120 s: only the count can have triggered these.
  assert.ok(dialer.ep.counters.rekeys >= 2, `re-keys: ${dialer.ep.counters.rekeys}`);
  assert.equal(new Set(listener.got).size, sent, 'nothing lost');
});

test('re-keys over real UDP on loopback lose nothing', async () => {
  const mk = (port: number, listen: boolean): Side => {
    const identity = ephemeralIdentity();
    const s: Side = {
      ep: undefined as unknown as LinkEndpoint,
      id: identity.id,
      up: [],
      down: [],
      got: [],
    };
    s.ep = new LinkEndpoint({
      identity,
      transport: new UdpTransport('127.0.0.1', port),
      listen: listen ? { allowedIds: null } : null,
      rekeyAfterMs: 1000,
      onPeerUp: (p) => s.up.push(p),
      onPeerDown: (_p, reason) => s.down.push(reason),
      onMessage: (_p, _t, buf, o, len) => {
        if (len >= 4) s.got.push(buf.readUInt32BE(o));
      },
    });
    endpoints.push(s.ep);
    return s;
  };
  const listener = mk(0, true);
  await listener.ep.start();
  const dialer = mk(0, false);
  await dialer.ep.start();
  const at = (listener.ep.describe() as { address: { port: number } }).address;
  dialer.ep.dial('127.0.0.1', at.port, listener.id);
  await waitFor('up', () => dialer.up.length === 1 && listener.up.length === 1, 5000, 5);
  let sent = 0;
  const timer = setInterval(() => {
    const [b, len] = batch(sent, 8, 1000);
    dialer.ep.sendMessages(dialer.up[0] as LinkPeer, b, len, 8);
    listener.ep.sendMessages(listener.up[0] as LinkPeer, b, len, 8);
    sent += 8;
  }, 3);
  await new Promise((r) => setTimeout(r, 3500));
  clearInterval(timer);
  await waitFor(
    'delivered',
    () => dialer.got.length >= sent && listener.got.length >= sent,
    3000,
    10,
  );
  assert.ok(
    dialer.ep.counters.rekeys >= 2 && listener.ep.counters.rekeys >= 2,
    'two re-keys or more',
  );
  assert.deepEqual([dialer.down, listener.down], [[], []]);
  assert.equal(new Set(dialer.got).size, sent);
  assert.equal(new Set(listener.got).size, sent);
  dialer.ep.stop();
  listener.ep.stop();
});
