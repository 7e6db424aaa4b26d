/**
 * Unit tests of the benchmark's pure parsers (no root needed):
 * `node --test dist/test/bench/measure.test.js`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { median, oneLine, parseIperf3Json, parsePingOutput, summarize } from '../bench/measure.js';

const PING_OK = `PING 10.90.0.2 (10.90.0.2) 56(84) bytes of data.
64 bytes from 10.90.0.2: icmp_seq=1 ttl=64 time=0.081 ms
64 bytes from 10.90.0.2: icmp_seq=2 ttl=64 time=0.040 ms
64 bytes from 10.90.0.2: icmp_seq=2 ttl=64 time=0.500 ms (DUP!)
64 bytes from 10.90.0.2: icmp_seq=3 ttl=64 time=0.052 ms
64 bytes from 10.90.0.2: icmp_seq=4 ttl=64 time=1.10 ms

--- 10.90.0.2 ping statistics ---
4 packets transmitted, 4 received, +1 duplicates, 0% packet loss, time 152ms
rtt min/avg/max/mdev = 0.040/0.318/1.100/0.452 ms
`;

const PING_LOSS = `PING 10.92.0.2 (10.92.0.2) 56(84) bytes of data.

--- 10.92.0.2 ping statistics ---
3 packets transmitted, 0 received, 100% packet loss, time 2040ms

`;

test('median and summarize', () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.ok(Number.isNaN(median([])));
  assert.deepEqual(summarize([5, 1, 3]), { median: 3, min: 1, max: 5 });
  const empty = summarize([]);
  assert.ok(Number.isNaN(empty.median) && Number.isNaN(empty.min) && Number.isNaN(empty.max));
});

test('parsePingOutput: per-packet times, duplicates excluded, median and avg', () => {
  const r = parsePingOutput(PING_OK);
  assert.deepEqual(r.times, [0.081, 0.04, 0.052, 1.1]);
  assert.equal(r.transmitted, 4);
  assert.equal(r.received, 4);
  assert.equal(r.medianMs, (0.052 + 0.081) / 2);
  assert.equal(r.avgMs, 0.318);
});

test('parsePingOutput: total loss', () => {
  const r = parsePingOutput(PING_LOSS);
  assert.deepEqual(r.times, []);
  assert.equal(r.transmitted, 3);
  assert.equal(r.received, 0);
  assert.ok(Number.isNaN(r.medianMs));
  assert.ok(Number.isNaN(r.avgMs));
});

test('parsePingOutput: busybox format', () => {
  const r = parsePingOutput(`PING 10.0.0.1 (10.0.0.1): 56 data bytes
64 bytes from 10.0.0.1: seq=0 ttl=64 time=0.100 ms
64 bytes from 10.0.0.1: seq=1 ttl=64 time=0.300 ms

--- 10.0.0.1 ping statistics ---
2 packets transmitted, 2 packets received, 0% packet loss
round-trip min/avg/max = 0.100/0.200/0.300 ms
`);
  assert.deepEqual(r.times, [0.1, 0.3]);
  assert.equal(r.received, 2);
  assert.equal(r.avgMs, 0.2);
});

test('parseIperf3Json: receiver throughput in Mbit/s', () => {
  const doc = {
    start: {},
    intervals: [],
    end: {
      sum_sent: { bits_per_second: 16e9 },
      sum_received: { bits_per_second: 15_500_000_000 },
    },
  };
  assert.equal(parseIperf3Json(JSON.stringify(doc)), 15500);
});

test('parseIperf3Json: errors', () => {
  assert.throws(
    () => parseIperf3Json(JSON.stringify({ start: {}, error: 'unable to connect to server' })),
    /iperf3: unable to connect to server/,
  );
  assert.throws(() => parseIperf3Json(''), /no JSON/);
  assert.throws(() => parseIperf3Json('{"end":{}}'), /sum_received/);
});

test('oneLine', () => {
  assert.equal(oneLine('a\n  b\tc\n'), 'a b c');
  assert.equal(oneLine('x'.repeat(20), 10), 'xxxxxxx...');
});
