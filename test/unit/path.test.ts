// Path selection: distinct relays, distinct /16s, the exit an exit, guards
// kept, and the /24 cap against one network flooding the relay list.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { capPerNet24, familyNet, GuardList, MAX_PER_NET24, selectPath } from '../../client/path.js';
import type { Descriptor } from '../../src/descriptor/descriptor.js';
import { ShallotError } from '../../src/errors.js';

let n = 0;
function relay(host: string, exit = false): Descriptor {
  n += 1;
  const id = n.toString(16).padStart(64, '0');
  return {
    id,
    publicKey: Buffer.from(id, 'hex'),
    onionKey: Buffer.alloc(32),
    linkFingerprint: Buffer.alloc(32),
    addresses: [{ host, port: 7000 }],
    roles: { relay: true, exit },
    policy: '',
    bandwidth: 1,
    published: 0,
    expires: 2 ** 31,
    network: 't',
  };
}

test('a path has distinct relays in distinct /16s and ends at an exit', () => {
  const relays = [relay('10.1.0.2'), relay('10.2.0.2'), relay('10.3.0.2'), relay('10.4.0.2', true)];
  for (let i = 0; i < 50; i += 1) {
    const p = selectPath(relays, new GuardList(), {
      hops: 3,
      avoid: new Set(),
      allowSameSubnet: false,
      now: Date.now(),
    });
    assert.equal(p.length, 3);
    assert.equal(new Set(p.map((d) => d.id)).size, 3);
    assert.equal(new Set(p.map(familyNet)).size, 3);
    assert.ok(p[2]!.roles.exit);
  }
});

test('relays in one /16 do not make a path unless allowed for testing', () => {
  const relays = [relay('10.9.0.2'), relay('10.9.1.2'), relay('10.9.2.2', true)];
  assert.throws(
    () =>
      selectPath(relays, new GuardList(), {
        hops: 3,
        avoid: new Set(),
        allowSameSubnet: false,
        now: Date.now(),
      }),
    (e: unknown) => e instanceof ShallotError && /distinct \/16/.test(e.message),
  );
  const p = selectPath(relays, new GuardList(), {
    hops: 3,
    avoid: new Set(),
    allowSameSubnet: true,
    now: Date.now(),
  });
  assert.equal(p.length, 3);
});

test('the guard is kept across paths', () => {
  const relays = [
    relay('10.1.0.2'),
    relay('10.2.0.2'),
    relay('10.3.0.2'),
    relay('10.5.0.2'),
    relay('10.4.0.2', true),
  ];
  const guards = new GuardList();
  const first = selectPath(relays, guards, {
    hops: 3,
    avoid: new Set(),
    allowSameSubnet: false,
    now: Date.now(),
  });
  for (let i = 0; i < 30; i += 1) {
    const p = selectPath(relays, guards, {
      hops: 3,
      avoid: new Set(),
      allowSameSubnet: false,
      now: Date.now(),
    });
    assert.equal(p[0]!.id, first[0]!.id);
  }
});

test('no more than MAX_PER_NET24 relays of one /24 take part', () => {
  const flood = Array.from({ length: 50 }, (_, i) => relay(`10.66.6.${i + 2}`));
  const others = [relay('10.1.0.2'), relay('10.2.0.2')];
  let seed = 1;
  const rnd = (k: number) => (seed = (seed * 48271) % 2147483647) % k;
  const kept = capPerNet24([...flood, ...others], rnd);
  assert.equal(
    kept.filter((r) => r.addresses[0]!.host.startsWith('10.66.6.')).length,
    MAX_PER_NET24,
  );
  assert.equal(kept.length, MAX_PER_NET24 + 2);
});
