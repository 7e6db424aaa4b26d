// Which EXTEND targets a relay refuses by default (docs/protocol.md section 7.4).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { addressScope, extendRefusal } from '../../src/net/address-scope.js';
import { parseIp } from '../../src/net/cidr.js';

const ip = (t: string): Buffer => parseIp(t) as Buffer;

test('address scopes: every non-public range, and addresses that embed an IPv4 one', () => {
  const cases: [string, string][] = [
    ['0.0.0.0', 'unspecified'],
    ['0.1.2.3', 'unspecified'],
    ['127.0.0.1', 'loopback'],
    ['127.255.255.254', 'loopback'],
    ['10.0.0.1', 'private'],
    ['172.16.0.1', 'private'],
    ['172.31.255.255', 'private'],
    ['172.32.0.1', 'public'],
    ['192.168.1.1', 'private'],
    ['100.64.0.1', 'private'],
    ['100.127.255.255', 'private'],
    ['100.128.0.1', 'public'],
    ['169.254.1.1', 'link-local'],
    ['224.0.0.1', 'multicast'],
    ['239.255.255.250', 'multicast'],
    ['240.0.0.1', 'reserved'],
    ['255.255.255.255', 'reserved'],
    ['198.51.100.7', 'public'],
    ['8.8.8.8', 'public'],
    ['::', 'unspecified'],
    ['::1', 'loopback'],
    ['fc00::1', 'private'],
    ['fd12:3456::1', 'private'],
    ['fe80::1', 'link-local'],
    ['ff02::1', 'multicast'],
    ['::ffff:127.0.0.1', 'loopback'],
    ['::ffff:10.1.2.3', 'private'],
    ['::ffff:8.8.8.8', 'public'],
    ['64:ff9b::10.0.0.1', 'private'],
    ['64:ff9b::8.8.8.8', 'public'],
    ['64:ff9b:1::1', 'private'],
    ['2002:7f00:1::1', 'loopback'],
    ['2002:0a00:0001::1', 'private'],
    ['2002:0808:0808::1', 'public'],
    ['::10.0.0.1', 'reserved'],
    ['2001:db8::1', 'public'],
    ['2a00:1450::1', 'public'],
  ];
  for (const [text, scope] of cases) assert.equal(addressScope(ip(text)), scope, text);
  assert.equal(addressScope(Buffer.alloc(5)), 'reserved');
});

test('extendRefusal: non-public and own addresses refused unless allowed', () => {
  const own = [ip('203.0.113.5'), ip('2001:db8::5')];
  assert.equal(extendRefusal(ip('203.0.113.6'), own, false), null);
  assert.equal(extendRefusal(ip('203.0.113.5'), own, false), 'own address');
  assert.equal(extendRefusal(ip('::ffff:203.0.113.5'), own, false), 'own address');
  assert.equal(extendRefusal(ip('2001:db8::5'), own, false), 'own address');
  assert.equal(extendRefusal(ip('127.0.0.1'), own, false), 'loopback');
  assert.equal(extendRefusal(ip('10.1.0.2'), own, false), 'private');
  for (const t of ['127.0.0.1', '10.1.0.2', '::1', '203.0.113.5', 'fe80::1']) {
    assert.equal(extendRefusal(ip(t), own, true), null, t);
  }
});
