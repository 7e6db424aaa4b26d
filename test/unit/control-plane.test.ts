/**
 * The control plane over the recording twin (src/sys/recording-runner.ts):
 * what the kill switch, the exit NAT, the client's routes, the interface
 * set-up and the namespace helpers would run, and above all that what each
 * adds it removes again, also when a command fails half-way. The nft
 * commands are answered by a small table model (test/helpers/nft-model.ts).
 * No root: the same code meets the real kernel in test/e2e/.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { KillSwitch, NFT_MISSING } from '../../client/kill-switch.js';
import { ClientRouting } from '../../client/routing.js';
import { ExitNat } from '../../exit/nat.js';
import { ShallotError } from '../../src/errors.js';
import { parseCidr } from '../../src/net/cidr.js';
import { RecordingRunner } from '../../src/sys/recording-runner.js';
import { addNamespace, addVeth, removeNamespace } from '../../src/testnet/netns.js';
import { configureInterface, IP_MISSING } from '../../src/tun/iproute.js';
import { NftModel } from '../helpers/nft-model.js';

const V4 = '/proc/sys/net/ipv4/ip_forward';
const V6 = '/proc/sys/net/ipv6/conf/all/forwarding';

function withNft(): { r: RecordingRunner; nft: NftModel } {
  const nft = new NftModel();
  const r = new RecordingRunner().on('nft', (c) => nft.reply(c));
  return { r, nft };
}

function thrown(f: () => unknown): ShallotError {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof ShallotError, String(e));
    return e;
  }
  assert.fail('did not throw');
}

const guard = { host: '192.0.2.7', port: 7000 };

describe('kill switch over the twin', () => {
  it('start then stop: one transaction each, the second deletes exactly the table the first made', () => {
    const { r, nft } = withNft();
    nft.tables.set('someone_else', '');
    const ks = new KillSwitch({
      tunName: 'shc0',
      guard,
      tableName: 'shallot_client_t1',
      runner: r,
    });
    ks.start();
    assert.deepEqual(nft.names(), ['shallot_client_t1', 'someone_else']);
    assert.match(
      nft.tables.get('shallot_client_t1') ?? '',
      /ip daddr 192\.0\.2\.7 udp dport 7000 accept/,
    );
    assert.equal(ks.started, true);
    ks.stop();
    assert.deepEqual(nft.names(), ['someone_else'], 'only its own table is gone');
    assert.deepEqual(r.lines(), ['nft -f -', 'nft -f -']);
    assert.equal(ks.started, false);
    // Stopping again (the table already gone) still succeeds.
    ks.stop();
    assert.deepEqual(nft.names(), ['someone_else']);
  });

  it('start replaces a same-named leftover instead of failing', () => {
    const { r, nft } = withNft();
    nft.tables.set('shallot_client_t2', 'table inet shallot_client_t2 {\n}');
    new KillSwitch({
      tunName: 'shc0',
      guard: null,
      tableName: 'shallot_client_t2',
      runner: r,
    }).start();
    assert.match(nft.tables.get('shallot_client_t2') ?? '', /counter name "leak_blocked" drop/);
  });

  it('removeStale deletes the tables of dead processes only', () => {
    const { r, nft } = withNft();
    for (const t of ['shallot_client_111', 'shallot_client_222', 'shallot_exit_111', 'other']) {
      nft.tables.set(t, '');
    }
    KillSwitch.removeStale(r, (pid) => pid === 222);
    assert.deepEqual(nft.names(), ['other', 'shallot_client_222', 'shallot_exit_111']);
  });

  it('reads the counter; nothing runs while off', () => {
    const r = new RecordingRunner().on('nft -j list counter', {
      stdout: JSON.stringify({ nftables: [{ counter: { name: 'leak_blocked', packets: 42 } }] }),
    });
    const ks = new KillSwitch({
      tunName: 'shc0',
      guard,
      tableName: 'shallot_client_t3',
      runner: r,
    });
    assert.equal(ks.blockedPackets(), 0);
    assert.deepEqual(r.lines(), []);
    ks.start();
    assert.equal(ks.blockedPackets(), 42);
    assert.equal(r.lines()[1], 'nft -j list counter inet shallot_client_t3 leak_blocked');
  });

  it('missing nft, missing privilege and other failures: one line each, and it stays off', () => {
    const ks = (reply: object) =>
      new KillSwitch({
        tunName: 'shc0',
        guard,
        tableName: 'shallot_client_t4',
        runner: new RecordingRunner().on('nft', reply),
      });
    const a = ks({ missing: true });
    let e = thrown(() => a.start());
    assert.equal(e.message, NFT_MISSING);
    assert.equal(e.kind, 'user');
    assert.equal(a.started, false);
    e = thrown(() =>
      ks({ status: 1, stderr: 'Error: Could not process rule: Operation not permitted\n' }).start(),
    );
    assert.equal(e.code, 'NEED_ROOT');
    assert.equal(e.message, 'the kill switch needs root (CAP_NET_ADMIN): run it with sudo');
    e = thrown(() => ks({ status: 1, stderr: '/dev/stdin:9:3-9: Error: syntax error\n' }).start());
    assert.equal(e.message, 'nft -f -: /dev/stdin:9:3-9: Error: syntax error');
    assert.equal(e.kind, 'internal');
  });
});

function exitNat(r: RecordingRunner, v6 = true): ExitNat {
  return new ExitNat({
    tunName: 'shx0',
    poolV4: parseCidr('10.70.0.0/24'),
    ...(v6 ? { poolV6: parseCidr('fd70::/64') } : {}),
    tableName: 'shallot_exit_t1',
    runner: r,
    sysctls: r,
  });
}

describe('exit NAT over the twin', () => {
  it('start then stop: the table added is deleted and both sysctls are put back', () => {
    const { r, nft } = withNft();
    r.setSysctl(V4, '0').setSysctl(V6, '0');
    const nat = exitNat(r);
    nat.start();
    assert.deepEqual(nft.names(), ['shallot_exit_t1']);
    assert.match(
      nft.tables.get('shallot_exit_t1') ?? '',
      /comment "shallot exit; forwarding was 0 0"/,
    );
    assert.equal(r.sysctl(V4), '1');
    assert.equal(r.sysctl(V6), '1');
    nat.start(); // a second start does nothing
    nat.stop();
    assert.deepEqual(nft.names(), []);
    assert.equal(r.sysctl(V4), '0');
    assert.equal(r.sysctl(V6), '0');
    assert.deepEqual(r.log, [
      'nft -f -',
      `sysctl ${V4}=1`,
      `sysctl ${V6}=1`,
      'nft delete table inet shallot_exit_t1',
      `sysctl ${V6}=0`,
      `sysctl ${V4}=0`,
    ]);
    nat.stop(); // idempotent: nothing more runs
    assert.equal(r.log.length, 6);
  });

  it('a failing sysctl write half-way through start rolls back what was done', () => {
    const { r, nft } = withNft();
    r.setSysctl(V4, '0').setSysctl(V6, '0').failSysctl(V6, 'EACCES');
    const nat = exitNat(r);
    const e = thrown(() => nat.start());
    assert.equal(
      e.message,
      'the exit (IP forwarding) needs root (CAP_NET_ADMIN): run it with sudo',
    );
    assert.deepEqual(nft.names(), [], 'the table is removed again');
    assert.equal(r.sysctl(V4), '0', 'IPv4 forwarding is put back');
    assert.deepEqual(r.log, [
      'nft -f -',
      `sysctl ${V4}=1`,
      `sysctl ${V6}=1`,
      `sysctl ${V4}=0`,
      'nft delete table inet shallot_exit_t1',
    ]);
    // Not started: stop() has nothing to undo.
    nat.stop();
    assert.equal(r.log.length, 5);
  });

  it('forwarding that was already on is left alone, and so is one changed since', () => {
    const { r } = withNft();
    r.setSysctl(V4, '1');
    const a = exitNat(r, false);
    a.start();
    a.stop();
    assert.deepEqual(r.log, ['nft -f -', 'nft delete table inet shallot_exit_t1']);
    assert.equal(r.sysctl(V4), '1');

    const { r: r2 } = withNft();
    r2.setSysctl(V4, '0');
    const b = exitNat(r2, false);
    b.start();
    r2.setSysctl(V4, '0'); // someone turned it off meanwhile
    b.stop();
    assert.equal(r2.log.filter((l) => l.startsWith('sysctl')).length, 1, 'not written back');
  });

  it('missing nft fails before any sysctl is touched; a table deleted by someone else is fine', () => {
    const r = new RecordingRunner().on('nft', { missing: true }).setSysctl(V4, '0');
    const e = thrown(() => exitNat(r, false).start());
    assert.equal(e.message, 'the exit needs nftables: apt-get install nftables');
    assert.equal(e.kind, 'user');
    assert.equal(r.sysctl(V4), '0');
    assert.deepEqual(r.log, ['nft -f -']);

    const { r: r2, nft } = withNft();
    r2.setSysctl(V4, '0');
    const nat = exitNat(r2, false);
    nat.start();
    nft.tables.clear();
    nat.stop();
    assert.equal(r2.sysctl(V4), '0');
  });

  it('removeStale deletes dead exits’ tables and restores their forwarding once none is alive', () => {
    const { r, nft } = withNft();
    r.setSysctl(V4, '0').setSysctl(V6, '0');
    const dead = exitNat(r);
    // The dead exit's table as its start() left it (tableName shallot_exit_t1 is not a pid).
    dead.start();
    nft.tables.set('shallot_exit_111', nft.tables.get('shallot_exit_t1') ?? '');
    nft.tables.delete('shallot_exit_t1');
    nft.tables.set('other', '');
    assert.deepEqual(
      ExitNat.removeStale(undefined, { runner: r, sysctls: r, isAlive: () => false }),
      ['shallot_exit_111'],
    );
    assert.deepEqual(nft.names(), ['other']);
    assert.equal(r.sysctl(V4), '0');
    assert.equal(r.sysctl(V6), '0');

    // With a live exit still there, forwarding stays on.
    r.setSysctl(V4, '1');
    nft.tables.set('shallot_exit_111', 'comment "shallot exit; forwarding was 0 -"');
    nft.tables.set('shallot_exit_222', '');
    const removed = ExitNat.removeStale(undefined, {
      runner: r,
      sysctls: r,
      isAlive: (pid) => pid === 222,
    });
    assert.deepEqual(removed, ['shallot_exit_111']);
    assert.deepEqual(nft.names(), ['other', 'shallot_exit_222']);
    assert.equal(r.sysctl(V4), '1');
  });
});

describe('client routes over the twin', () => {
  const routeGet = JSON.stringify([{ dst: '192.0.2.7', dev: 'eth0', gateway: '10.0.0.1' }]);

  function routing(r: RecordingRunner): ClientRouting {
    return new ClientRouting({
      tunName: 'shc0',
      guard,
      mode: { kind: 'full' },
      innerV6: parseCidr('fd09::2/128'),
      runner: r,
    });
  }

  /** Every `route add X` has a `route del X` after it, in reverse order. */
  function assertPaired(lines: string[]): void {
    const adds = lines.filter((l) => / route add /.test(l)).map((l) => l.replace(' add ', ' '));
    const dels = lines.filter((l) => / route del /.test(l)).map((l) => l.replace(' del ', ' '));
    assert.deepEqual(dels, [...adds].reverse(), lines.join('\n'));
  }

  it('start pins the guard and adds the halves; stop deletes exactly those, newest first', () => {
    const r = new RecordingRunner().on('ip -j route get', { stdout: routeGet });
    const rt = routing(r);
    rt.start();
    assert.deepEqual(r.lines(), [
      'ip -j route get 192.0.2.7',
      'ip -4 route add 192.0.2.7/32 via 10.0.0.1 dev eth0',
      'ip -4 route add 0.0.0.0/1 dev shc0',
      'ip -4 route add 128.0.0.0/1 dev shc0',
      'ip -6 route add ::/1 dev shc0',
      'ip -6 route add 8000::/1 dev shc0',
    ]);
    rt.stop();
    assert.equal(r.lines().length, 11);
    assertPaired(r.lines());
    rt.stop(); // nothing left to delete
    assert.equal(r.lines().length, 11);
  });

  it('a route add failing half-way removes the routes already added, and says why', () => {
    const r = new RecordingRunner()
      .on('ip -j route get', { stdout: routeGet })
      .on('ip -6 route add ::/1', { status: 2, stderr: 'RTNETLINK answers: Permission denied\n' });
    const e = thrown(() => routing(r).start());
    assert.equal(e.message, 'ip -6 route add ::/1 dev shc0: RTNETLINK answers: Permission denied');
    assert.deepEqual(r.lines().slice(5), [
      'ip -4 route del 128.0.0.0/1 dev shc0',
      'ip -4 route del 0.0.0.0/1 dev shc0',
      'ip -4 route del 192.0.2.7/32 via 10.0.0.1 dev eth0',
    ]);
    // The failed add is not deleted (it was never there).
    assertPaired(r.lines().filter((l) => !l.includes('::/1')));
  });

  it('an existing route is a user error naming it; routes already gone are fine on stop', () => {
    const r = new RecordingRunner()
      .on('ip -j route get', { stdout: routeGet })
      .on('ip -4 route add 0.0.0.0/1', { status: 2, stderr: 'RTNETLINK answers: File exists\n' });
    const e = thrown(() => routing(r).start());
    assert.equal(e.kind, 'user');
    assert.match(e.message, /^a route to 0\.0\.0\.0\/1 already exists/);
    assert.deepEqual(r.lines().slice(3), ['ip -4 route del 192.0.2.7/32 via 10.0.0.1 dev eth0']);

    const r2 = new RecordingRunner()
      .on('ip -j route get', { stdout: routeGet })
      .on('ip -6 route del', { status: 2, stderr: 'Cannot find device "shc0"\n' });
    const rt = routing(r2);
    rt.start();
    assert.doesNotThrow(() => rt.stop());
    assert.equal((rt.describe() as { active: boolean }).active, false);
  });

  it('a delete that fails for another reason is reported and kept for the next stop', () => {
    const r = new RecordingRunner()
      .on('ip -j route get', { stdout: routeGet })
      .on('ip -4 route del 0.0.0.0/1', { status: 2, stderr: 'RTNETLINK answers: Busy\n' }, 1);
    const rt = routing(r);
    rt.start();
    const e = thrown(() => rt.stop());
    assert.equal(
      e.message,
      'removing 1 route(s): ip -4 route del 0.0.0.0/1 dev shc0: RTNETLINK answers: Busy',
    );
    assertPaired(r.lines());
    // The next stop retries only the route that is still there.
    rt.stop();
    assert.deepEqual(r.lines().slice(11), ['ip -4 route del 0.0.0.0/1 dev shc0']);
  });
});

describe('interfaces and namespaces over the twin', () => {
  it('configureInterface: mtu, each address, up; a missing ip names iproute2', () => {
    const r = new RecordingRunner();
    configureInterface('shx0', ['10.70.0.1/24', 'fd70::1/64'], 1380, r);
    assert.deepEqual(r.lines(), [
      'ip link set dev shx0 mtu 1380',
      'ip addr add 10.70.0.1/24 dev shx0',
      'ip -6 addr add fd70::1/64 dev shx0',
      'ip link set dev shx0 up',
    ]);
    const e = thrown(() =>
      configureInterface('shx0', [], 1380, new RecordingRunner().on('ip', { missing: true })),
    );
    assert.equal(e.message, IP_MISSING);
    assert.equal(e.kind, 'user');
  });

  it('a namespace and a veth pair, then removal, as ip commands', () => {
    const r = new RecordingRunner()
      .on('ip netns list', { stdout: 'shtn-a (id: 3)\nshtn-b\n' })
      .on('ip netns pids', { stdout: '' });
    addNamespace('shtn-a', r);
    addVeth('shtn-a', 'eth0', '10.1.0.2/16', 'shtn-b', 'eth0', '10.1.0.1/16', r);
    const tmp = `shv${process.pid % 100000}`;
    assert.deepEqual(r.lines().slice(0, 5), [
      'ip netns add shtn-a',
      'ip netns exec shtn-a ip link set lo up',
      `ip link add ${tmp}a type veth peer name ${tmp}b`,
      `ip link set ${tmp}a netns shtn-a`,
      `ip link set ${tmp}b netns shtn-b`,
    ]);
    assert.equal(r.lines().length, 11);
    removeNamespace('shtn-a', r);
    assert.deepEqual(r.lines().slice(11), [
      'ip netns list',
      'ip netns pids shtn-a',
      'ip netns del shtn-a',
    ]);
    // An absent namespace: only looked up.
    removeNamespace('shtn-zzz', r);
    assert.deepEqual(r.lines().slice(14), ['ip netns list']);
    const e = thrown(() => addNamespace('x', new RecordingRunner().on('ip', { missing: true })));
    assert.equal(e.message, "the 'ip' command is missing (apt-get install iproute2)");
  });
});
