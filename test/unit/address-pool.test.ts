import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AddressPool } from '../../exit/address-pool.js';
import { ShallotError } from '../../src/errors.js';
import { formatIp, parseCidr } from '../../src/net/cidr.js';

const opts = { maxLeases: 1000, idleExpiryMs: 60_000 };

describe('address pool', () => {
  it('gateway is the first host and never leased; network and broadcast neither', () => {
    const pool = new AddressPool(parseCidr('10.70.0.77/29'), parseCidr('fd70::5/64'), opts);
    assert.equal(formatIp(pool.gatewayV4()), '10.70.0.73');
    assert.equal(formatIp(pool.gatewayV6() as Buffer), 'fd70::1');
    const got: string[] = [];
    for (let i = 0; i < 10; i += 1) {
      const l = pool.lease(`s${i}`, 0);
      if (l) got.push(`${formatIp(l.v4)} ${formatIp(l.v6 as Buffer)}`);
    }
    // A /29 has 8 addresses: .72 network, .73 gateway, .79 broadcast.
    assert.deepEqual(got, [
      '10.70.0.74 fd70::2',
      '10.70.0.75 fd70::3',
      '10.70.0.76 fd70::4',
      '10.70.0.77 fd70::5',
      '10.70.0.78 fd70::6',
    ]);
    assert.equal(pool.size, 5);
    assert.equal(pool.maxLeases, 5);
  });

  it('same key, same lease; lookups map replies back', () => {
    const pool = new AddressPool(parseCidr('10.70.0.0/24'), parseCidr('fd70::/64'), opts);
    const a = pool.lease('alice', 0);
    const b = pool.lease('bob', 0);
    assert.ok(a && b);
    assert.equal(pool.lease('alice', 5), a);
    assert.notEqual(formatIp(a.v4), formatIp(b.v4));
    assert.equal(pool.lookupV4(a.v4.readUInt32BE(0)), 'alice');
    assert.equal(pool.lookupV4(b.v4.readUInt32BE(0)), 'bob');
    assert.equal(pool.lookupV6((a.v6 as Buffer).toString('hex')), 'alice');
    assert.equal(pool.lookupV4(pool.gatewayV4().readUInt32BE(0)), undefined);
    assert.equal(pool.lookupV6('00'.repeat(16)), undefined);
    assert.equal(pool.size, 2);
  });

  it('IPv4 only', () => {
    const pool = new AddressPool(parseCidr('10.70.0.0/30'), undefined, opts);
    assert.equal(pool.gatewayV6(), null);
    const l = pool.lease('x', 0);
    assert.ok(l);
    assert.equal(formatIp(l.v4), '10.70.0.2');
    assert.equal(l.v6, null);
    assert.equal(pool.lease('y', 0), null);
  });

  it('exhaustion, release and reuse', () => {
    const pool = new AddressPool(parseCidr('10.70.0.0/28'), undefined, opts);
    const keys = Array.from({ length: 13 }, (_, i) => `k${i}`);
    for (const k of keys) assert.ok(pool.lease(k, 0), k);
    assert.equal(pool.size, 13);
    assert.equal(pool.lease('extra', 0), null);
    assert.equal(pool.size, 13);
    // Existing keys still get their lease when full.
    assert.ok(pool.lease('k3', 1));
    const freed = pool.lease('k3', 1) as { v4: Buffer };
    const freedAddress = formatIp(freed.v4);
    assert.equal(pool.release('k3'), true);
    assert.equal(pool.release('k3'), false);
    assert.equal(pool.lookupV4(freed.v4.readUInt32BE(0)), undefined);
    const again = pool.lease('extra', 2);
    assert.ok(again);
    assert.equal(formatIp(again.v4), freedAddress);
    assert.equal(pool.lookupV4(again.v4.readUInt32BE(0)), 'extra');
  });

  it('bounded by maxLeases', () => {
    const pool = new AddressPool(parseCidr('10.0.0.0/16'), parseCidr('fd00::/64'), {
      maxLeases: 3,
      idleExpiryMs: 1000,
    });
    assert.ok(pool.lease('a', 0));
    assert.ok(pool.lease('b', 0));
    assert.ok(pool.lease('c', 0));
    assert.equal(pool.lease('d', 0), null);
    assert.equal(pool.maxLeases, 3);
  });

  it('a small IPv6 pool bounds the pairs', () => {
    const pool = new AddressPool(parseCidr('10.0.0.0/24'), parseCidr('fd00::/126'), opts);
    assert.equal(pool.maxLeases, 1);
    const l = pool.lease('a', 0);
    assert.equal(formatIp(l?.v6 as Buffer), 'fd00::2');
    assert.equal(pool.lease('b', 0), null);
  });

  it('freed addresses are reused as late as possible', () => {
    const pool = new AddressPool(parseCidr('10.70.0.0/24'), undefined, opts);
    const first = formatIp((pool.lease('a', 0) as { v4: Buffer }).v4);
    pool.release('a');
    const second = formatIp((pool.lease('b', 0) as { v4: Buffer }).v4);
    assert.notEqual(first, second);
  });

  it('expiry frees idle leases only; touch and lease refresh', () => {
    const pool = new AddressPool(parseCidr('10.70.0.0/24'), parseCidr('fd70::/64'), {
      maxLeases: 10,
      idleExpiryMs: 1000,
    });
    const a = pool.lease('a', 0) as { v4: Buffer; v6: Buffer };
    pool.lease('b', 0);
    pool.lease('c', 0);
    assert.equal(pool.touch('b', 900), true);
    assert.equal(pool.touch('nobody', 800), false);
    pool.lease('c', 900); // refresh by leasing again
    assert.deepEqual(pool.expire(1000), []); // exactly the expiry: not yet
    assert.deepEqual(pool.expire(1001), ['a']);
    assert.equal(pool.size, 2);
    assert.equal(pool.lookupV4(a.v4.readUInt32BE(0)), undefined);
    assert.equal(pool.lookupV6(a.v6.toString('hex')), undefined);
    assert.deepEqual(pool.expire(1900).sort(), []);
    assert.deepEqual(pool.expire(1901).sort(), ['b', 'c']);
    assert.equal(pool.size, 0);
    // A new lease after expiry works and is a fresh address.
    const d = pool.lease('d', 2000);
    assert.ok(d);
    assert.equal(pool.lookupV4(d.v4.readUInt32BE(0)), 'd');
  });

  it('many sessions churning keep the maps consistent', () => {
    const pool = new AddressPool(parseCidr('10.8.0.0/26'), parseCidr('fd08::/64'), {
      maxLeases: 40,
      idleExpiryMs: 50,
    });
    const live = new Map<string, string>();
    let seed = 1;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) / (1 << 24);
    for (let t = 0; t < 20_000; t += 1) {
      const key = `s${Math.floor(rnd() * 120)}`;
      const op = rnd();
      if (op < 0.6) {
        const l = pool.lease(key, t);
        if (l) {
          const v4 = formatIp(l.v4);
          if (live.has(key)) assert.equal(live.get(key), v4);
          live.set(key, v4);
        } else {
          assert.equal(pool.size, 40);
          assert.ok(!live.has(key));
        }
      } else if (op < 0.8) {
        assert.equal(pool.release(key), live.delete(key));
      } else if (op < 0.85) {
        for (const k of pool.expire(t)) assert.ok(live.delete(k));
      } else {
        assert.equal(pool.touch(key, t), live.has(key));
      }
      assert.equal(pool.size, live.size);
    }
    // Every live lease is distinct, inside the pool, and maps back.
    const addrs = new Set(live.values());
    assert.equal(addrs.size, live.size);
    for (const [k, v4] of live) {
      const n = v4.split('.').map(Number);
      assert.equal(`${n[0]}.${n[1]}.${n[2]}`, '10.8.0');
      assert.ok((n[3] as number) >= 2 && (n[3] as number) <= 62, v4);
      const b = Buffer.from(n);
      assert.equal(pool.lookupV4(b.readUInt32BE(0)), k);
    }
  });

  it('bad configuration is a user error', () => {
    const bad: [string, string | undefined, { maxLeases: number; idleExpiryMs: number }][] = [
      ['10.0.0.0/31', undefined, opts],
      ['10.0.0.0/32', undefined, opts],
      ['fd00::/64', undefined, opts],
      ['10.0.0.0/24', '10.1.0.0/24', opts],
      ['10.0.0.0/24', 'fd00::/127', opts],
      ['10.0.0.0/24', undefined, { maxLeases: 0, idleExpiryMs: 1 }],
      ['10.0.0.0/24', undefined, { maxLeases: 1.5, idleExpiryMs: 1 }],
      ['10.0.0.0/24', undefined, { maxLeases: 1, idleExpiryMs: 0 }],
    ];
    for (const [v4, v6, o] of bad) {
      assert.throws(
        () => new AddressPool(parseCidr(v4), v6 ? parseCidr(v6) : undefined, o),
        (e: unknown) => e instanceof ShallotError && e.kind === 'user' && !e.message.includes('\n'),
        `${v4} ${v6}`,
      );
    }
  });
});
