// Which EXTEND targets a relay refuses by default (docs/protocol.md section 7.4).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { addressScope, extendRefusal } from '../../src/net/address-scope.js';
import { parseIp } from '../../src/net/cidr.js';

const ip = (t: string): Buffer => parseIp(t) as Buffer;
const here = path.dirname(fileURLToPath(import.meta.url));
const doc = fs.readFileSync(path.resolve(here, '..', '..', '..', 'docs', 'protocol.md'), 'utf8');

test('vector extend-refused-v2: the scope of every listed address (docs/protocol.md 7.4.2)', () => {
  const m = /```vector extend-refused-v2\n([\s\S]*?)```/.exec(doc);
  assert.ok(m?.[1], 'docs/protocol.md has vector extend-refused-v2');
  let n = 0;
  for (const line of m[1].trim().split('\n')) {
    const i = line.indexOf(':');
    const scope = line.slice(0, i).trim();
    for (const text of line
      .slice(i + 1)
      .trim()
      .split(/\s+/)) {
      assert.equal(addressScope(ip(text)), scope, text);
      n += 1;
    }
  }
  assert.ok(n >= 35, `${n} addresses`);
  assert.equal(addressScope(Buffer.alloc(5)), 'reserved');
});

test('extendRefusal: non-public and own addresses refused unless allowed', () => {
  const own = [ip('203.0.113.5'), ip('2001:db8::5')];
  assert.equal(extendRefusal(ip('203.0.113.6'), own, false), null);
  assert.equal(extendRefusal(ip('203.0.113.5'), own, false), 'own address');
  assert.equal(extendRefusal(ip('::ffff:203.0.113.5'), own, false), 'own address');
  assert.equal(extendRefusal(ip('2001:db8::5'), own, false), 'own address');
  assert.equal(extendRefusal(ip('127.0.0.1'), own, false), 'loopback');
  assert.equal(extendRefusal(ip('10.1.0.2'), own, false), 'private');
  for (const t of ['127.0.0.1', '10.1.0.2', '::1', '203.0.113.5', 'fe80::1']) {
    assert.equal(extendRefusal(ip(t), own, true), null, t);
  }
});
