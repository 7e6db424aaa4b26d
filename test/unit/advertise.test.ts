/**
 * `shallot relay --advertise`: the relay warns at start when clients could
 * not reach it at the address its descriptor lists (they would only count
 * it as an address mismatch and never use it).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { advertiseWarning } from '../../src/cli/relay-commands.js';

const local = ['127.0.0.1', '10.1.0.2', '::1'];
const at = (host: string, port: number) => ({ host, port });

test('no warning when the advertised address is where the relay listens', () => {
  assert.equal(advertiseWarning(at('10.1.0.2', 7000), at('10.1.0.2', 7000), local), null);
  assert.equal(advertiseWarning(at('10.1.0.2', 7000), at('0.0.0.0', 7000), local), null);
});

test('a foreign address, another local address or another port: one line that says why', () => {
  const cases: [string, ReturnType<typeof at>, ReturnType<typeof at>, RegExp][] = [
    [
      'behind NAT',
      at('203.0.113.9', 7000),
      at('0.0.0.0', 7000),
      /not an address of this host.*port forward or 1:1 NAT to 0\.0\.0\.0:7000/,
    ],
    [
      'listens elsewhere',
      at('127.0.0.1', 7000),
      at('10.1.0.2', 7000),
      /listens on 10\.1\.0\.2 only/,
    ],
    ['another port', at('10.1.0.2', 443), at('0.0.0.0', 7000), /listens on port 7000/],
    [
      'IPv6',
      at('2001:db8::1', 7000),
      at('::', 7000),
      /^--advertise \[2001:db8::1\]:7000: not an address/,
    ],
  ];
  for (const [what, advertise, listen, re] of cases) {
    const w = advertiseWarning(advertise, listen, local);
    assert.ok(w !== null, what);
    assert.match(w, re, what);
    assert.ok(!w.includes('\n'), `${what}: one line`);
  }
});
