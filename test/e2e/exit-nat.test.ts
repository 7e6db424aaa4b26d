/**
 * ExitNat end to end: real nftables and forwarding in namespaces.
 *
 *   X (10.70.0.2) ---veth--- E (10.70.0.1 | 10.71.0.1) ---veth--- D (10.71.0.2)
 *      xe0            ex0                      ed0           de0
 *
 * X routes everything via E. D has NO route back to 10.70/16, so only
 * masquerade at E makes replies work. Instead of a TUN, E's veth toward X
 * (ex0) is the exit's `tunName`; the pool is 10.70.0.0/24. ExitNat runs in
 * a small controller process inside E (nftables and sysctls are per
 * network namespace), driven over stdin.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { ExitNat } from '../../exit/nat.js';
import { ShallotError } from '../../src/errors.js';
import { parseCidr } from '../../src/net/cidr.js';
import { e2eSkipReason, Lab, sweepStale, waitFor } from '../helpers/netns.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..', '..');
const NAT_JS = pathToFileURL(path.join(root, 'dist', 'exit', 'nat.js')).href;
const CIDR_JS = pathToFileURL(path.join(root, 'dist', 'src', 'net', 'cidr.js')).href;
const NODE = process.execPath;

const skip = e2eSkipReason(['nft', 'ping']);

/** Runs in E: "N start|stop|stale" on stdin, "done N ..." or "error N ..." out. */
const CONTROLLER = `
import readline from 'node:readline';
import { ExitNat } from ${JSON.stringify(NAT_JS)};
import { parseCidr } from ${JSON.stringify(CIDR_JS)};
const nat = new ExitNat({ tunName: 'ex0', poolV4: parseCidr('10.70.0.0/24') });
console.log('table ' + nat.tableName);
for await (const line of readline.createInterface({ input: process.stdin })) {
  const [n, cmd] = line.split(' ');
  try {
    let out = '';
    if (cmd === 'start') nat.start();
    else if (cmd === 'stop') nat.stop();
    else if (cmd === 'stale') out = JSON.stringify(ExitNat.removeStale());
    console.log('done ' + n + ' ' + out);
  } catch (e) {
    console.log('error ' + n + ' ' + e.message);
  }
}
`;

/** UDP echo server: prints each datagram's source address. */
const UDP_SERVER = `
const s = require('node:dgram').createSocket('udp4');
s.on('message', (m, r) => { console.log('from ' + r.address); s.send(m, r.port, r.address); });
s.bind(Number(process.argv[1]), () => console.log('listening'));
`;

/** UDP client: [bindAddress|-, host, port]; exit 0 on an echo within 2 s. */
const UDP_CLIENT = `
const [bind, host, port] = process.argv.slice(1);
const s = require('node:dgram').createSocket('udp4');
s.on('message', () => { console.log('echo'); process.exit(0); });
const go = () => s.send('hello', Number(port), host);
if (bind === '-') go(); else s.bind({ address: bind }, go);
setTimeout(() => { console.log('no echo'); process.exit(1); }, 2000);
`;

describe('exit NAT in namespaces', { skip: skip ?? false, timeout: 180_000 }, () => {
  const lab = new Lab();
  let nsX = '';
  let nsE = '';
  let nsD = '';
  let controller: ReturnType<Lab['spawn']>;
  let tableName = '';
  let seq = 0;

  /** Send a command to the controller in E and wait for its answer. */
  async function command(cmd: string): Promise<string> {
    seq += 1;
    const n = seq;
    controller.stdin?.write(`${n} ${cmd}\n`);
    const re = new RegExp(`^(done|error) ${n} (.*)$`, 'm');
    await waitFor(`controller '${cmd}'`, () => re.test(controller.output()), 20_000);
    const m = re.exec(controller.output()) as RegExpExecArray;
    if (m[1] === 'error') throw new Error(`controller ${cmd}: ${m[2]}`);
    return (m[2] ?? '').trim();
  }

  const ping = async (ns: string, dst: string): Promise<boolean> => {
    for (let i = 0; i < 3; i += 1) {
      const r = await lab.exec(ns, 'ping', ['-c', '1', '-W', '1', dst], 10_000);
      if (r.code === 0) return true;
    }
    return false;
  };
  const pingFails = async (ns: string, dst: string): Promise<boolean> => {
    const r = await lab.exec(ns, 'ping', ['-c', '2', '-i', '0.3', '-W', '1', dst], 10_000);
    return r.code !== 0;
  };
  const ipForward = () => lab.sh(nsE, 'cat /proc/sys/net/ipv4/ip_forward').trim();
  const tables = () => lab.sh(nsE, 'nft list tables');

  before(async () => {
    sweepStale();
    nsX = lab.ns('x');
    nsE = lab.ns('e');
    nsD = lab.ns('d');
    lab.veth(nsX, 'xe0', '10.70.0.2/24', nsE, 'ex0', '10.70.0.1/24');
    lab.veth(nsE, 'ed0', '10.71.0.1/24', nsD, 'de0', '10.71.0.2/24');
    lab.sh(nsX, 'ip route add default via 10.70.0.1');
    // A fresh namespace may inherit forwarding from the host: start from off.
    lab.sh(nsE, 'echo 0 > /proc/sys/net/ipv4/ip_forward');
    controller = lab.spawn(nsE, NODE, ['--input-type=module', '-e', CONTROLLER]);
    await waitFor('the controller in E', () => /^table \w+$/m.test(controller.output()));
    tableName = /^table (\w+)$/m.exec(controller.output())?.[1] as string;
  });

  after(async () => {
    await lab.cleanup();
  });

  it('without NAT, X cannot reach D (forwarding alone is not enough)', async () => {
    assert.equal(ipForward(), '0');
    assert.ok(await pingFails(nsX, '10.71.0.2'), 'ping works without forwarding?');
    lab.sh(nsE, 'echo 1 > /proc/sys/net/ipv4/ip_forward');
    try {
      assert.ok(await pingFails(nsX, '10.71.0.2'), 'D has a route back?');
    } finally {
      lab.sh(nsE, 'echo 0 > /proc/sys/net/ipv4/ip_forward');
    }
  });

  it('after start(), X reaches D and D sees the exit address', async () => {
    await command('start');
    await command('start'); // a second start does nothing
    assert.equal(ipForward(), '1');
    assert.match(tables(), new RegExp(`^table inet ${tableName}$`, 'm'));
    assert.ok(await ping(nsX, '10.71.0.2'), 'ping X -> D through the exit failed');

    const server = lab.spawn(nsD, NODE, ['-e', UDP_SERVER, '9999']);
    await waitFor('UDP server in D', () => server.output().includes('listening'));
    const r = await lab.exec(nsX, NODE, ['-e', UDP_CLIENT, '-', '10.71.0.2', '9999']);
    assert.equal(r.code, 0, `UDP X -> D: ${r.stdout}${r.stderr}`);
    assert.match(server.output(), /^from 10\.71\.0\.1$/m);
    assert.doesNotMatch(server.output(), /from 10\.70\./);
    await lab.stop(server);
  });

  it('packets from the pool that did not come in on the tun are dropped', async () => {
    // D pretends to be in the pool; give it a way to X, and turn off E's
    // reverse-path filter so that only the exit's rule can stop it.
    lab.sh(nsD, 'ip addr add 10.70.0.99/32 dev de0 && ip route add 10.70.0.2/32 via 10.71.0.1');
    lab.sh(nsE, 'for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > $f; done');
    const listener = lab.spawn(nsX, NODE, ['-e', UDP_SERVER, '9998']);
    await waitFor('UDP server in X', () => listener.output().includes('listening'));
    // Control: a non-pool source is forwarded (and not masqueraded toward the tun).
    await lab.exec(nsD, NODE, ['-e', UDP_CLIENT, '10.71.0.2', '10.70.0.2', '9998']);
    await waitFor('control datagram at X', () => listener.output().includes('from 10.71.0.2'));
    // Spoofed pool source from outside: dropped.
    await lab.exec(nsD, NODE, ['-e', UDP_CLIENT, '10.70.0.99', '10.70.0.2', '9998']);
    assert.doesNotMatch(listener.output(), /from 10\.70\.0\.99/);
    const chain = lab.sh(nsE, `nft list chain inet ${tableName} forward`);
    const dropped = /counter packets (\d+)/.exec(chain)?.[1];
    assert.ok(Number(dropped) >= 1, chain);
    await lab.stop(listener);
    lab.sh(nsD, 'ip route del 10.70.0.2/32 via 10.71.0.1 && ip addr del 10.70.0.99/32 dev de0');
  });

  it('after stop(), the table is gone, forwarding restored and X cannot reach D', async () => {
    await command('stop');
    await command('stop'); // idempotent
    assert.doesNotMatch(tables(), new RegExp(`\\b${tableName}\\b`));
    assert.equal(ipForward(), '0');
    assert.ok(await pingFails(nsX, '10.71.0.2'), 'ping still works after stop()');
  });

  it('removeStale() deletes the tables of dead exits only', async () => {
    const dead = Number(execFileSync('sh', ['-c', 'echo $$'], { encoding: 'utf8' }).trim());
    assert.throws(() => process.kill(dead, 0));
    lab.sh(nsE, `nft add table inet shallot_exit_${dead}`);
    lab.sh(nsE, `nft add table inet shallot_exit_${process.pid}`);
    lab.sh(nsE, 'nft add table inet someone_else_1');
    const removed = JSON.parse(await command('stale')) as string[];
    assert.deepEqual(removed, [`shallot_exit_${dead}`]);
    const left = tables();
    assert.doesNotMatch(left, new RegExp(`shallot_exit_${dead}\\b`));
    assert.match(left, new RegExp(`shallot_exit_${process.pid}\\b`));
    assert.match(left, /someone_else_1/);
  });
});

describe('exit NAT without nftables', () => {
  it('a missing nft binary is a one-line user error, and nothing changes', () => {
    const saved = process.env.PATH;
    process.env.PATH = '/nonexistent-shallot-test';
    try {
      const nat = new ExitNat({ tunName: 'shx0', poolV4: parseCidr('10.70.0.0/24') });
      assert.throws(
        () => nat.start(),
        (e: unknown) =>
          e instanceof ShallotError &&
          e.kind === 'user' &&
          e.message === 'the exit needs nftables: apt-get install nftables',
      );
      assert.doesNotThrow(() => nat.stop());
    } finally {
      process.env.PATH = saved;
    }
  });

  it('bad names are refused before anything runs', () => {
    const pool = parseCidr('10.70.0.0/24');
    for (const tunName of ['', 'a"b', 'x y', 'a-very-long-interface-name']) {
      assert.throws(() => new ExitNat({ tunName, poolV4: pool }), ShallotError);
    }
    assert.throws(
      () => new ExitNat({ tunName: 'shx0', poolV4: pool, tableName: 'x; flush ruleset' }),
      ShallotError,
    );
    assert.throws(
      () => new ExitNat({ tunName: 'shx0', poolV4: parseCidr('fd00::/64') }),
      ShallotError,
    );
    const rules = new ExitNat({
      tunName: 'shx0',
      poolV4: parseCidr('10.70.0.1/24'),
      poolV6: parseCidr('fd70::1/64'),
      outInterface: 'eth0',
      tableName: 'shallot_exit_test',
    }).ruleset();
    assert.match(rules, /ip saddr 10\.70\.0\.0\/24 oifname "eth0" masquerade/);
    assert.match(rules, /ip6 saddr fd70::\/64 iifname != "shx0" counter drop/);
  });
});
