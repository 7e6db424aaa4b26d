import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ShallotError } from '../../src/errors.js';
import { cidrContains, formatIp, parseCidr, parseHostPort, parseIp } from '../../src/net/cidr.js';

test('parse and format IPv4 and IPv6', () => {
  assert.equal(parseCidr('10.9.0.1/24').text, '10.9.0.1/24');
  assert.equal(parseCidr('fd00:0:0::1/64').text, 'fd00::1/64');
  assert.equal(formatIp(parseIp('2001:db8::ff00:42:8329') as Buffer), '2001:db8::ff00:42:8329');
  assert.equal(formatIp(parseIp('::ffff:10.1.2.3') as Buffer), '::ffff:a01:203');
  assert.equal(formatIp(parseIp('::') as Buffer), '::');
});

test('containment', () => {
  const net = parseCidr('10.9.0.1/24');
  assert.ok(cidrContains(net, parseIp('10.9.0.200') as Buffer));
  assert.ok(!cidrContains(net, parseIp('10.9.1.1') as Buffer));
  assert.ok(!cidrContains(net, parseIp('fd00::1') as Buffer));
  assert.ok(cidrContains(parseCidr('fd00::1/64'), parseIp('fd00::abcd') as Buffer));
  assert.ok(cidrContains(parseCidr('10.9.0.1/23'), parseIp('10.9.1.9') as Buffer));
  assert.ok(cidrContains(parseCidr('0.0.0.0/0'), parseIp('1.2.3.4') as Buffer));
});

test('bad input is a one-line user error', () => {
  for (const bad of ['10.9.0.1', '10.9.0.1/33', 'fd00::1/129', 'host/24', '10.9.0/24', '']) {
    assert.throws(
      () => parseCidr(bad),
      (e: unknown) => e instanceof ShallotError && e.kind === 'user' && !e.message.includes('\n'),
    );
  }
  assert.deepEqual(parseHostPort('[fd00::1]:7000', 'x'), { host: 'fd00::1', port: 7000 });
  assert.deepEqual(parseHostPort('10.0.0.1:1', 'x'), { host: '10.0.0.1', port: 1 });
  for (const bad of ['10.0.0.1', '10.0.0.1:0', '10.0.0.1:70000', 'example.com:80', 'fd00::1:80']) {
    assert.throws(() => parseHostPort(bad, '--listen'), ShallotError);
  }
});
