/**
 * ClientNode.stop() while the client waits between failed circuit builds:
 * the wait ends with it, so no timer holds the process afterwards, and a
 * stop is not counted as a failure. Its own file: it counts the process's
 * timers, so no other node may run beside it.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ClientNode } from '../../client/client-node.js';
import {
  signDescriptor,
  verifyDescriptor,
  type Descriptor,
} from '../../src/descriptor/descriptor.js';
import { ephemeralIdentity } from '../../src/identity.js';
import { MemoryNetwork } from '../../src/link/transport.js';
import { MemoryDevice } from '../../src/tun/device.js';
import { waitFor } from '../helpers/netns.js';

/** A descriptor of a relay nobody runs. */
function ghost(i: number, exit: boolean): Descriptor {
  const now = Math.floor(Date.now() / 1000);
  const wire = signDescriptor(ephemeralIdentity(), {
    addresses: [{ host: `10.${40 + i}.0.2`, port: 7000 }],
    roles: { relay: true, exit },
    policy: exit ? 'accept 10.7.0.0/16' : '',
    bandwidth: 1000,
    published: now,
    expires: now + 3600,
    network: 'memtest',
  });
  const r = verifyDescriptor(wire, { now, network: 'memtest' });
  assert.ok(r.ok);
  return r.descriptor;
}

test('stop() during the wait between failed builds ends it: no timer outlives the client', async () => {
  const ghosts = [ghost(1, false), ghost(2, false), ghost(3, true)];
  const timeouts = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
  const before = timeouts();
  const client = new ClientNode({
    relays: () => ghosts,
    transport: new MemoryNetwork().transport('10.49.0.2', 40000),
    device: new MemoryDevice('c9'),
    hops: 3,
    stateDir: null,
  });
  await client.start();
  // The first build fails after the link step's timeout (no guard answers);
  // the client then waits 500 ms before the next.
  await waitFor('a failed build', () => client.counters.circuitFailures >= 1, 20_000, 10);
  const failures = client.counters.circuitFailures;
  client.stop();
  await new Promise((r) => setTimeout(r, 150));
  assert.equal(timeouts(), before, 'no retry timer left behind');
  assert.equal(client.counters.circuitFailures, failures, 'stopping is not a failure');
});
