/**
 * RelayFinder's key queries and shutdown: a client stopping while a key
 * query waits must not send on the closed socket (that threw
 * ERR_SOCKET_DGRAM_NOT_RUNNING from a timer and killed the process with
 * exit code 1 instead of a clean stop).
 */
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { test } from 'node:test';
import type { DhtNode } from '../../src/discovery/dht-node.js';
import { KEY_QUERY_TIMEOUT_MS, RelayFinder } from '../../src/discovery/finder.js';

test('stop() while a key query waits ends the query; nothing is sent after it', async () => {
  // A silent peer: it counts the queries it gets and never answers.
  const peer = dgram.createSocket('udp4');
  let queries = 0;
  peer.on('message', () => (queries += 1));
  await new Promise<void>((resolve) => peer.bind(0, '127.0.0.1', () => resolve()));
  const port = peer.address().port;
  const uncaught: unknown[] = [];
  const onUncaught = (e: unknown) => uncaught.push(e);
  process.on('uncaughtException', onUncaught);
  try {
    const finder = new RelayFinder({
      dht: {} as DhtNode,
      network: 'test',
      stateDir: null,
    });
    const query = (
      finder as unknown as { queryKey(h: string, p: number): Promise<Buffer[] | null> }
    ).queryKey('127.0.0.1', port);
    await new Promise((r) => setTimeout(r, 50));
    finder.stop();
    assert.equal(await query, null, 'the waiting query ends with no key');
    const seen = queries;
    // Past the retry interval and the whole timeout: no send, no throw.
    await new Promise((r) => setTimeout(r, KEY_QUERY_TIMEOUT_MS + 200));
    assert.equal(queries, seen, 'no query after stop()');
    assert.deepEqual(uncaught, []);
    assert.equal(
      await (
        finder as unknown as { queryKey(h: string, p: number): Promise<Buffer[] | null> }
      ).queryKey('127.0.0.1', port),
      null,
      'a query after stop() answers null at once',
    );
  } finally {
    process.off('uncaughtException', onUncaught);
    peer.close();
  }
});
