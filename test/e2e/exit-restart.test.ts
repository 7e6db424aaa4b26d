/**
 * An exit killed with SIGKILL cannot remove its nftables table nor turn
 * IP forwarding back off; the next exit started on the machine does both
 * (the table's comment says what forwarding was), works, and leaves
 * nothing behind when it stops. (The TUN device goes with the process.)
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { keygen } from '../../src/identity.js';
import { e2eSkipReason, Lab, waitFor } from '../helpers/netns.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const CLI = path.join(here, '..', '..', 'src', 'cli', 'main.js');
const NODE = process.execPath;
const skip = e2eSkipReason(['nft']);

describe('exit killed and restarted', { skip: skip ?? false, timeout: 120_000 }, () => {
  const lab = new Lab();
  let ns = '';
  let tmp = '';

  before(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'shallot-exitrestart-'));
    keygen(path.join(tmp, 'exit'));
    ns = lab.ns('x');
    lab.veth(ns, 'eth0', '10.61.0.2/24', lab.ns('r'), 'eth0', '10.61.0.1/24');
  });

  after(async () => {
    await lab.cleanup();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  const tables = () =>
    lab
      .sh(ns, 'nft list tables')
      .split('\n')
      .map((l) => l.trim().replace(/^table inet /, ''))
      .filter((t) => t.startsWith('shallot_exit_'));
  const devices = () =>
    lab
      .sh(ns, 'ip -br link')
      .split('\n')
      .filter((l) => l.startsWith('shexit'));
  const startExit = () =>
    lab.spawn(ns, NODE, [
      CLI,
      'exit',
      '--allow-private-extend',
      '--no-dht',
      '--state',
      path.join(tmp, 'exit'),
      '--listen',
      '10.61.0.2:7000',
      '--pool',
      '10.210.0.0/24',
      '--dev',
      'shexit0',
    ]);

  it("the next exit removes the dead one's table, and its own when it stops", async () => {
    const forwarding = () => lab.sh(ns, 'cat /proc/sys/net/ipv4/ip_forward').trim();
    lab.sh(ns, 'echo 0 > /proc/sys/net/ipv4/ip_forward');
    const first = startExit();
    await waitFor('first exit up', () => first.output().includes('exit on shexit0'), 20_000, 50);
    const firstTable = `shallot_exit_${first.pid}`;
    assert.deepEqual(tables(), [firstTable]);
    first.kill('SIGKILL');
    await waitFor(
      'first exit gone',
      () => first.exitCode !== null || first.signalCode !== null,
      5000,
      20,
    );
    assert.deepEqual(tables(), [firstTable], 'a killed exit leaves its table');
    assert.equal(forwarding(), '1', '... and forwarding on');
    await waitFor('its device gone with it', () => devices().length === 0, 5000, 50);

    const second = startExit();
    await waitFor('second exit up', () => second.output().includes('exit on shexit0'), 20_000, 50);
    assert.match(
      second.output(),
      new RegExp(`removed the nftables tables of exits that died: ${firstTable}`),
    );
    assert.deepEqual(tables(), [`shallot_exit_${second.pid}`], "only the live exit's table");
    assert.equal(await lab.stop(second), 0, second.output());
    assert.deepEqual(tables(), [], 'nothing left after a clean stop');
    assert.deepEqual(devices(), []);
    assert.equal(forwarding(), '0', 'forwarding back to what it was before the first exit');
  });
});
