// The exit's own UDP services (link and DHT ports) are reachable from its
// circuits, so a client can refresh its exit's descriptor; nothing else of
// the exit is.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ExitPolicy } from '../../exit/policy.js';
import { parseCidr } from '../../src/net/cidr.js';

function packet(proto: number, dst: number[], port: number): Buffer {
  const p = Buffer.alloc(28);
  p[0] = 0x45;
  p.writeUInt16BE(28, 2);
  p[9] = proto;
  Buffer.from([10, 200, 0, 2]).copy(p, 12);
  Buffer.from(dst).copy(p, 16);
  p.writeUInt16BE(40000, 20);
  p.writeUInt16BE(port, 22);
  return p;
}

test('own UDP services are accepted; other ports, TCP and loopback stay rejected', () => {
  const own = parseCidr('10.5.0.2/16');
  const policy = new ExitPolicy({
    ownNetworks: [own],
    ownUdpServices: { addresses: [own], ports: [7000, 7001] },
  });
  const decide = (p: Buffer) => policy.decide(p, 0, p.length).verdict;
  assert.equal(decide(packet(17, [10, 5, 0, 2], 7000)), 'accept');
  assert.equal(decide(packet(17, [10, 5, 0, 2], 7001)), 'accept');
  assert.equal(decide(packet(17, [10, 5, 0, 2], 53)), 'reject');
  assert.equal(decide(packet(6, [10, 5, 0, 2], 7000)), 'reject');
  assert.equal(decide(packet(17, [10, 5, 0, 3], 7000)), 'reject', 'only the address itself');
  assert.equal(decide(packet(17, [127, 0, 0, 1], 7000)), 'reject');
  const none = new ExitPolicy({ ownNetworks: [own] });
  assert.equal(none.decide(packet(17, [10, 5, 0, 2], 7000), 0, 28).verdict, 'reject');
});
