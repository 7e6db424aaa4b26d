// The exit's nftables plan (exit/nat.ts ruleset()), checked without root:
// test/e2e/exit-nat.test.ts applies it to a real kernel.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ExitNat } from '../../exit/nat.js';
import { parseCidr } from '../../src/net/cidr.js';

function forwardChain(ruleset: string): string[] {
  const lines = ruleset.split('\n').map((l) => l.trim());
  const start = lines.indexOf('chain forward {');
  assert.ok(start >= 0, ruleset);
  const end = lines.indexOf('}', start);
  return lines.slice(start + 1, end);
}

test('the forward chain drops what conntrack marks invalid, in and out of the TUN only', () => {
  const nat = new ExitNat({
    tunName: 'shx0',
    poolV4: parseCidr('10.70.0.1/24'),
    poolV6: parseCidr('fd70::1/64'),
    tableName: 'shallot_exit_test',
  });
  const chain = forwardChain(nat.ruleset());
  assert.deepEqual(chain, [
    'type filter hook forward priority filter; policy accept;',
    'ip saddr 10.70.0.0/24 iifname != "shx0" counter drop',
    'ip6 saddr fd70::/64 iifname != "shx0" counter drop',
    'iifname "shx0" ct state invalid counter drop',
    'oifname "shx0" ct state invalid counter drop',
  ]);
  // The nat chain is unchanged: masquerade only.
  assert.match(nat.ruleset(), /ip saddr 10\.70\.0\.0\/24 oifname != "shx0" masquerade/);
});
