/**
 * Linkability by the session key (issue 9, hole 9): the client used one
 * 16-byte session key per process and showed it to every exit, so when its
 * exit went away the next exit saw the same key the first one had: two
 * exits could link one client. Now each exit gets its own key, and a
 * rebuild to the same exit presents the same one (same lease, same inner
 * address). Real relay, exit and client code over the in-memory network.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Lease } from '../../client/client-node.js';
import type { Descriptor } from '../../src/descriptor/descriptor.js';
import { AddressPool } from '../../exit/address-pool.js';
import { MemoryNetwork } from '../../src/link/transport.js';
import { makeClient, startNode, stopNode, type SimNode } from '../../simulations/world.js';

async function until(what: string, ok: () => boolean, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test('two exits see unrelated session keys; the same exit sees the same key again', async () => {
  // Which pool (exit) saw which session key.
  const seen = new Map<AddressPool, Set<string>>();
  const lease = AddressPool.prototype.lease;
  AddressPool.prototype.lease = function (this: AddressPool, key: string, now: number) {
    let s = seen.get(this);
    if (!s) seen.set(this, (s = new Set()));
    s.add(key);
    return lease.call(this, key, now);
  };
  const net = new MemoryNetwork();
  const nodes: SimNode[] = [];
  let client: ReturnType<typeof makeClient> | null = null;
  try {
    for (let k = 0; k < 6; k += 1) nodes.push(await startNode(net, k, 6, k >= 4));
    const [exitA, exitB] = nodes.slice(4) as [SimNode, SimNode];
    let live = nodes.map((n) => n.desc);
    const circuits: Array<{ path: Descriptor[]; lease: Lease }> = [];
    client = makeClient(net, 0, [], {
      onCircuit: (path, l) => circuits.push({ path, lease: l }),
      onEcho: () => undefined,
    });
    // Exit B is hidden until the middle has gone, so the first exit is A.
    (client.node as unknown as { options: { relays: () => Descriptor[] } }).options.relays = () =>
      live.filter((d) => d.id !== exitB.id || live.length < 6);
    await client.node.start();
    await until('a first circuit', () => circuits.length === 1);
    const first = circuits[0] as { path: Descriptor[]; lease: Lease };
    const firstExit = first.path[2] as Descriptor;
    assert.equal(firstExit.id, exitA.id);
    // A middle goes: rebuilt to the same exit with the same key and address.
    const middle = nodes.find((n) => n.id === first.path[1]?.id) as SimNode;
    live = live.filter((d) => d.id !== middle.id);
    stopNode(middle);
    middle.killed = true;
    await until('a rebuild to the same exit', () => circuits.length === 2);
    const second = circuits[1] as { path: Descriptor[]; lease: Lease };
    assert.equal(second.path[2]?.id, exitA.id);
    assert.ok(second.lease.v4.equals(first.lease.v4), 'same inner address');
    const keysA = seen.get(poolOf(exitA));
    assert.equal(keysA?.size, 1, 'exit A saw one session key for both circuits');
    // Exit A goes: the next exit must not see A's key.
    live = live.filter((d) => d.id !== exitA.id);
    stopNode(exitA);
    exitA.killed = true;
    await until('a circuit through the other exit', () => circuits.length === 3);
    assert.equal(circuits[2]?.path[2]?.id, exitB.id);
    const keysB = seen.get(poolOf(exitB));
    assert.equal(keysB?.size, 1);
    const [a] = [...(keysA as Set<string>)];
    const [b] = [...(keysB as Set<string>)];
    assert.notEqual(a, b, 'exit B is shown a new session key, not the one exit A saw');
  } finally {
    AddressPool.prototype.lease = lease;
    client?.node.stop();
    for (const n of nodes) if (!n.killed) stopNode(n);
  }
});

function poolOf(n: SimNode): AddressPool {
  return (n.exit as unknown as { pool: AddressPool }).pool;
}
