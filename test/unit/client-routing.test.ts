/**
 * The pure parts of the client's routing and kill switch: route planning,
 * `ip -j route get` parsing, the nft ruleset text and nft JSON parsing.
 * Nothing here needs root.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  COUNTER_NAME,
  KillSwitch,
  killSwitchRuleset,
  NFT_MISSING,
  parseCounterPackets,
  removeTableScript,
  staleTables,
  TABLE_PREFIX,
} from '../../client/kill-switch.js';
import {
  ClientRouting,
  guardHostRoute,
  guardNeedsHostRoute,
  networkText,
  parseRouteGet,
  planTunnelRoutes,
  routeArgs,
  routeText,
} from '../../client/routing.js';
import { ShallotError } from '../../src/errors.js';
import { parseCidr } from '../../src/net/cidr.js';

const userError = (e: unknown) =>
  e instanceof ShallotError && e.kind === 'user' && !e.message.includes('\n');

describe('route planning', () => {
  it('full mode: two IPv4 halves, IPv6 halves only with an inner IPv6 address', () => {
    assert.deepEqual(planTunnelRoutes('shc0', { kind: 'full' }).map(routeText), [
      '0.0.0.0/1 dev shc0',
      '128.0.0.0/1 dev shc0',
    ]);
    const v6 = planTunnelRoutes('shc0', { kind: 'full' }, parseCidr('fd09::2/64'));
    assert.deepEqual(
      v6.map((r) => `${r.family} ${routeText(r)}`),
      ['4 0.0.0.0/1 dev shc0', '4 128.0.0.0/1 dev shc0', '6 ::/1 dev shc0', '6 8000::/1 dev shc0'],
    );
    assert.ok(v6.every((r) => r.role === 'tunnel'));
  });

  it('split mode: network prefixes, deduplicated, /0 as two halves', () => {
    const routes = planTunnelRoutes('shc0', {
      kind: 'split',
      cidrs: [
        parseCidr('10.81.0.77/24'),
        parseCidr('10.81.0.0/24'),
        parseCidr('192.0.2.1/32'),
        parseCidr('2001:db8:1:2::99/48'),
        parseCidr('::/0'),
      ],
    });
    assert.deepEqual(routes.map(routeText), [
      '10.81.0.0/24 dev shc0',
      '192.0.2.1/32 dev shc0',
      '2001:db8:1::/48 dev shc0',
      '::/1 dev shc0',
      '8000::/1 dev shc0',
    ]);
    assert.throws(() => planTunnelRoutes('shc0', { kind: 'split', cidrs: [] }), userError);
  });

  it('network text clears host bits at odd prefix lengths', () => {
    assert.equal(networkText(parseCidr('10.81.255.254/17')), '10.81.128.0/17');
    assert.equal(networkText(parseCidr('10.1.2.3/0')), '0.0.0.0/0');
    assert.equal(networkText(parseCidr('10.1.2.3/32')), '10.1.2.3/32');
    assert.equal(networkText(parseCidr('fd00:abcd:ef12::1/36')), 'fd00:abcd:e000::/36');
  });

  it('the guard needs a host route exactly when a tunnel route covers it', () => {
    const full = planTunnelRoutes('shc0', { kind: 'full' });
    assert.ok(guardNeedsHostRoute('10.81.0.2', full));
    assert.ok(guardNeedsHostRoute('200.1.1.1', full));
    assert.ok(!guardNeedsHostRoute('fd00::2', full), 'no IPv6 tunnel route, no IPv6 host route');
    const split = (t: string) => planTunnelRoutes('shc0', { kind: 'split', cidrs: [parseCidr(t)] });
    assert.ok(guardNeedsHostRoute('10.81.0.2', split('10.81.0.0/24')));
    assert.ok(!guardNeedsHostRoute('10.81.0.2', split('10.82.0.0/16')));
    assert.ok(guardNeedsHostRoute('fd00::2', split('fd00::/8')));
  });

  it('route arguments name family, gateway and device, for add and delete alike', () => {
    const spec = { family: 4 as const, dst: '10.81.0.2/32', via: '10.80.0.1', dev: 'eth0' };
    assert.deepEqual(routeArgs({ ...spec, role: 'guard' }, 'add'), [
      '-4',
      'route',
      'add',
      '10.81.0.2/32',
      'via',
      '10.80.0.1',
      'dev',
      'eth0',
    ]);
    assert.deepEqual(routeArgs({ family: 6, dst: '::/1', dev: 'shc0', role: 'tunnel' }, 'del'), [
      '-6',
      'route',
      'del',
      '::/1',
      'dev',
      'shc0',
    ]);
  });

  it('the constructor validates its input with one-line user errors', () => {
    const ok = { tunName: 'shc0', guard: { host: '10.81.0.2', port: 7000 } };
    assert.doesNotThrow(() => new ClientRouting({ ...ok, mode: { kind: 'full' } }));
    for (const bad of [
      { ...ok, tunName: 'a name with spaces', mode: { kind: 'full' as const } },
      { ...ok, tunName: 'waytoolongdevicename', mode: { kind: 'full' as const } },
      { ...ok, guard: { host: 'guard.example', port: 7000 }, mode: { kind: 'full' as const } },
      { ...ok, guard: { host: '10.81.0.2', port: 0 }, mode: { kind: 'full' as const } },
      { ...ok, mode: { kind: 'split' as const, cidrs: [] } },
      { ...ok, mode: { kind: 'split' as const, cidrs: [parseCidr('10.81.0.2/32')] } },
      { ...ok, mode: { kind: 'full' as const }, innerV6: parseCidr('10.9.0.2/24') },
    ]) {
      assert.throws(() => new ClientRouting(bad), userError, JSON.stringify(bad));
    }
  });

  it('describe() before start reports the plan inactive', () => {
    const r = new ClientRouting({
      tunName: 'shc0',
      guard: { host: 'fd00::2', port: 7000 },
      mode: { kind: 'split', cidrs: [parseCidr('10.81.0.0/24')] },
      innerV4: parseCidr('10.9.0.2/24'),
    });
    assert.deepEqual(r.describe(), {
      tun: 'shc0',
      guard: '[fd00::2]:7000',
      mode: 'split',
      cidrs: ['10.81.0.0/24'],
      innerV4: '10.9.0.2/24',
      active: false,
      guardRoute: null,
      routes: [],
    });
    assert.doesNotThrow(() => r.stop(), 'stop() before start() is a no-op');
  });
});

describe('ip -j route get', () => {
  it('parses a route through a gateway, an on-link route and a local address', () => {
    assert.deepEqual(
      parseRouteGet(
        '[{"dst":"10.81.0.2","gateway":"10.80.0.1","dev":"eth0","prefsrc":"10.80.0.2","flags":[],"uid":0,"cache":[]}]\n',
      ),
      { dst: '10.81.0.2', gateway: '10.80.0.1', dev: 'eth0', type: 'unicast' },
    );
    assert.deepEqual(
      parseRouteGet('[{"dst":"10.80.0.7","dev":"eth0","prefsrc":"10.80.0.2","flags":[]}]'),
      { dst: '10.80.0.7', dev: 'eth0', type: 'unicast' },
    );
    assert.deepEqual(
      parseRouteGet(
        '[{"type":"local","dst":"10.80.0.2","dev":"lo","prefsrc":"10.80.0.2","flags":[],"cache":["local"]}]',
      ),
      { dst: '10.80.0.2', dev: 'lo', type: 'local' },
    );
    assert.deepEqual(
      parseRouteGet(
        '[{"dst":"2001:db8::1","from":"::","gateway":"fe80::1","dev":"wlan0","metric":1024,"flags":[],"pref":"medium"}]',
      ),
      { dst: '2001:db8::1', gateway: 'fe80::1', dev: 'wlan0', type: 'unicast' },
    );
  });

  it('refuses output it cannot use', () => {
    for (const bad of ['', 'not json', '[]', '{}', '[{"dst":"1.2.3.4"}]', '[null]']) {
      assert.throws(() => parseRouteGet(bad), ShallotError, bad);
    }
  });

  it('turns the lookup into the guard host route', () => {
    assert.deepEqual(
      guardHostRoute(
        '10.81.0.2',
        { dst: '10.81.0.2', gateway: '10.80.0.1', dev: 'eth0', type: 'unicast' },
        'shc0',
      ),
      { family: 4, dst: '10.81.0.2/32', via: '10.80.0.1', dev: 'eth0', role: 'guard' },
    );
    assert.deepEqual(
      guardHostRoute('10.80.0.7', { dst: '10.80.0.7', dev: 'eth0', type: 'unicast' }, 'shc0'),
      { family: 4, dst: '10.80.0.7/32', dev: 'eth0', role: 'guard' },
    );
    assert.deepEqual(
      guardHostRoute(
        'fd00:0::2',
        { dst: 'fd00::2', gateway: 'fe80::1', dev: 'eth0', type: 'unicast' },
        'shc0',
      ),
      { family: 6, dst: 'fd00::2/128', via: 'fe80::1', dev: 'eth0', role: 'guard' },
    );
    assert.equal(
      guardHostRoute('10.80.0.2', { dst: '10.80.0.2', dev: 'lo', type: 'local' }, 'shc0'),
      null,
    );
    assert.throws(
      () => guardHostRoute('1.2.3.4', { dst: '1.2.3.4', dev: 'shc0', type: 'unicast' }, 'shc0'),
      (e: unknown) => userError(e) && /through the tunnel/.test((e as Error).message),
    );
    assert.throws(
      () => guardHostRoute('1.2.3.4', { dst: '1.2.3.4', dev: 'lo', type: 'blackhole' }, 'shc0'),
      userError,
    );
  });
});

describe('kill switch ruleset', () => {
  const base = {
    table: 'shallot_client_42',
    tunName: 'shc0',
    guard: { host: '10.81.0.2', port: 7000 },
    allowLoopback: true,
    allowLan: [],
    allowDhcp: false,
  };

  it('is one transaction that replaces the table and drops all but lo, the TUN and the guard', () => {
    assert.equal(
      killSwitchRuleset(base),
      [
        'add table inet shallot_client_42',
        'delete table inet shallot_client_42',
        'table inet shallot_client_42 {',
        '\tcounter leak_blocked {',
        '\t}',
        '\tchain output {',
        '\t\ttype filter hook output priority 0; policy drop;',
        '\t\toif "lo" accept',
        '\t\toifname "shc0" accept',
        '\t\tip daddr 10.81.0.2 udp dport 7000 accept',
        '\t\tcounter name "leak_blocked" drop',
        '\t}',
        '}',
        '',
      ].join('\n'),
    );
  });

  it('never accepts established or related traffic', () => {
    assert.doesNotMatch(killSwitchRuleset(base), /ct state|established|related/);
  });

  it('adds LAN destinations, DHCP, and neighbour discovery for an IPv6 guard', () => {
    const text = killSwitchRuleset({
      ...base,
      guard: { host: 'fd00::2', port: 443 },
      allowLoopback: false,
      allowLan: [parseCidr('192.168.1.7/24'), parseCidr('fd80::1/64')],
      allowDhcp: true,
    });
    const rules = text
      .split('\n')
      .filter((l) => l.startsWith('\t\t') && !l.includes('type filter'))
      .map((l) => l.trim());
    assert.deepEqual(rules, [
      'oifname "shc0" accept',
      'ip6 daddr fd00::2 udp dport 443 accept',
      'ip daddr 192.168.1.0/24 accept',
      'ip6 daddr fd80::/64 accept',
      'meta nfproto ipv4 udp sport 68 udp dport 67 accept',
      'icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept',
      'counter name "leak_blocked" drop',
    ]);
  });

  it('removal is a transaction that succeeds when the table is already gone', () => {
    assert.equal(removeTableScript('t1'), 'add table inet t1\ndelete table inet t1\n');
  });

  it('validates names that end up in the nft script', () => {
    const ok = { tunName: 'shc0', guard: { host: '10.81.0.2', port: 7000 } };
    assert.equal(new KillSwitch(ok).table, `${TABLE_PREFIX}${process.pid}`);
    for (const bad of [
      { ...ok, tunName: 'shc0" accept; #' },
      { ...ok, tableName: 'bad name' },
      { ...ok, tableName: '1abc' },
      { ...ok, guard: { host: '10.81.0.2; drop', port: 7000 } },
      { ...ok, guard: { host: '10.81.0.2', port: 70000 } },
    ]) {
      assert.throws(() => new KillSwitch(bad), userError, JSON.stringify(bad));
    }
  });

  it('a missing nft is a one-line user error naming the package', () => {
    const path = process.env.PATH;
    process.env.PATH = '/nonexistent-shallot-test-dir';
    try {
      const ks = new KillSwitch({ tunName: 'shc0', guard: { host: '10.81.0.2', port: 7000 } });
      for (const f of [() => ks.start(), () => ks.stop(), () => KillSwitch.removeStale()]) {
        assert.throws(f, (e: unknown) => userError(e) && (e as Error).message === NFT_MISSING);
      }
    } finally {
      process.env.PATH = path;
    }
  });
});

describe('nft JSON', () => {
  it('reads the blocked-packet counter', () => {
    const json = JSON.stringify({
      nftables: [
        { metainfo: { version: '1.0.6', json_schema_version: 1 } },
        {
          counter: {
            family: 'inet',
            name: COUNTER_NAME,
            table: 'shallot_client_42',
            handle: 1,
            packets: 17,
            bytes: 1428,
          },
        },
      ],
    });
    assert.equal(parseCounterPackets(json), 17);
    assert.throws(() => parseCounterPackets('{"nftables":[{"metainfo":{}}]}'), ShallotError);
    assert.throws(() => parseCounterPackets('garbage'), ShallotError);
  });

  it('finds the tables of dead kill switches only', () => {
    const table = (family: string, name: string) => ({ table: { family, name, handle: 1 } });
    const json = JSON.stringify({
      nftables: [
        { metainfo: {} },
        table('inet', 'shallot_client_100'),
        table('inet', 'shallot_client_200'),
        table('ip', 'shallot_client_300'),
        table('inet', 'shallot_client_x1'),
        table('inet', 'nat'),
        table('inet', `shallot_client_${process.pid}`),
      ],
    });
    assert.deepEqual(
      staleTables(json, (pid) => pid === 200),
      ['shallot_client_100'],
    );
  });
});
