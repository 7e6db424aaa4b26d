// What a client changes on its host (client/host-network.ts), planned
// without root over the recording twin: the kill switch is there before
// any guard, is replaced (never removed) when the guard changes, the inner
// addresses are added once, the routes follow the guard, and stop()
// removes everything it made, the routes before the kill switch.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ClientHost } from '../../client/host-network.js';
import { parseCidr } from '../../src/net/cidr.js';
import { RecordingRunner } from '../../src/sys/recording-runner.js';
import { NftModel } from '../helpers/nft-model.js';

const routeGet = (dst: string) =>
  JSON.stringify([{ dst, gateway: '10.0.0.1', dev: 'eth0', prefsrc: '10.0.0.2' }]);

function setup(): { r: RecordingRunner; nft: NftModel } {
  const nft = new NftModel();
  const r = new RecordingRunner()
    .on('nft', (c) => nft.reply(c))
    .on('ip -j route get', (c) => ({ stdout: routeGet(c.args[c.args.length - 1] as string) }));
  return { r, nft };
}

const lease = {
  v4: Buffer.from([10, 200, 0, 5]),
  v6: Buffer.from('fd700000000000000000000000000005', 'hex'),
};

describe('client host changes, full tunnel', () => {
  it('kill switch first, swapped in place per guard; addresses once; routes per guard; all undone', () => {
    const { r, nft } = setup();
    const host = new ClientHost({
      tunName: 'shc0',
      split: null,
      allowUdpSourcePorts: [40001],
      runner: r,
    });
    host.start();
    assert.equal(nft.names().length, 1, 'a kill switch before any guard');
    const table = nft.names()[0] as string;
    assert.doesNotMatch(nft.tables.get(table) ?? '', /192\.0\.2\./, 'no guard allowed yet');
    assert.equal(r.lines('ip').length, 0);

    host.onGuard({ host: '192.0.2.7', port: 7000 });
    assert.deepEqual(nft.names(), [table], 'the same table, replaced');
    assert.match(nft.tables.get(table) ?? '', /192\.0\.2\.7/);
    host.onCircuit(lease);
    const ipLines = r.lines('ip');
    assert.ok(ipLines.includes('ip addr add 10.200.0.5/32 dev shc0'), ipLines.join('\n'));
    assert.ok(ipLines.some((l) => l.startsWith('ip -6 addr add fd70::5/128 dev shc0')));
    assert.ok(ipLines.includes('ip -4 route add 192.0.2.7/32 via 10.0.0.1 dev eth0'));
    assert.equal(host.v6?.text, 'fd70::5/128');

    // A new circuit through another guard: the kill switch lets only it out,
    // the old guard's host route goes, the addresses stay.
    host.onGuard({ host: '198.51.100.9', port: 7000 });
    assert.deepEqual(nft.names(), [table]);
    assert.match(nft.tables.get(table) ?? '', /198\.51\.100\.9/);
    assert.doesNotMatch(nft.tables.get(table) ?? '', /192\.0\.2\.7/);
    assert.ok(r.lines('ip').includes('ip -4 route del 192.0.2.7/32 via 10.0.0.1 dev eth0'));
    host.onCircuit(lease);
    assert.equal(
      r.lines('ip').filter((l) => l.startsWith('ip addr add')).length,
      1,
      'addresses once',
    );
    assert.ok(r.lines('ip').includes('ip -4 route add 198.51.100.9/32 via 10.0.0.1 dev eth0'));

    // The same guard again changes nothing.
    const n = r.commands.length;
    host.onGuard({ host: '198.51.100.9', port: 7000 });
    assert.equal(r.commands.length, n);

    // Never a gap: every nft change so far was one whole-table transaction.
    assert.ok(
      r.lines('nft').every((l) => l === 'nft -f -'),
      r.lines('nft').join('\n'),
    );
    host.stop();
    assert.deepEqual(nft.names(), [], 'kill switch removed');
    const adds = r
      .lines('ip')
      .filter((l) => / route add /.test(l))
      .map((l) => l.replace(' add ', ' '));
    const dels = r
      .lines('ip')
      .filter((l) => / route del /.test(l))
      .map((l) => l.replace(' del ', ' '));
    assert.deepEqual([...dels].sort(), [...adds].sort(), 'every route added was deleted');
    const lastIndex = (f: (l: string) => boolean) =>
      r.lines().reduce((at, l, i) => (f(l) ? i : at), -1);
    const lastRouteDel = lastIndex((l) => / route del /.test(l));
    const tableGone = lastIndex((l) => l.startsWith('nft'));
    assert.ok(lastRouteDel < tableGone, 'routes go before the kill switch');
    // Events after stop change nothing.
    const m = r.commands.length;
    host.onGuard({ host: '203.0.113.1', port: 7000 });
    host.onCircuit(lease);
    assert.equal(r.commands.length, m);
  });

  it('without IPv6 on the host the client carries on with IPv4, and no IPv6 route enters the TUN', () => {
    const { r } = setup();
    r.on('ip -6 addr add', { status: 2, stderr: 'RTNETLINK answers: Permission denied\n' });
    const warnings: string[] = [];
    const host = new ClientHost({
      tunName: 'shc0',
      split: null,
      runner: r,
      log: { debug() {}, info() {}, warn: (m: string) => warnings.push(m), error() {} },
    });
    host.start();
    host.onGuard({ host: '192.0.2.7', port: 7000 });
    host.onCircuit(lease);
    assert.equal(host.v6, null);
    assert.match(warnings[0] ?? '', /no IPv6 through the circuit/);
    assert.ok(!r.lines('ip').some((l) => l.startsWith('ip -6 route add ::/1')));
    host.stop();
  });
});

describe('client host changes, split tunnel', () => {
  it('no kill switch; only the listed networks are routed into the TUN', () => {
    const { r, nft } = setup();
    const host = new ClientHost({
      tunName: 'shc0',
      split: [parseCidr('10.81.0.0/24')],
      runner: r,
    });
    host.start();
    host.onGuard({ host: '192.0.2.7', port: 7000 });
    host.onCircuit({ v4: lease.v4, v6: null });
    assert.deepEqual(nft.names(), []);
    assert.equal(r.lines('nft').length, 0);
    const routes = r.lines('ip').filter((l) => / route add /.test(l) && l.includes('dev shc0'));
    assert.deepEqual(routes, ['ip -4 route add 10.81.0.0/24 dev shc0']);
    host.stop();
    assert.ok(r.lines('ip').includes('ip -4 route del 10.81.0.0/24 dev shc0'));
  });
});
