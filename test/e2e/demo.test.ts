/**
 * `shallot demo`, as a user runs it: a direct tunnel between two network
 * namespaces carries a ping and a checked download, prints the status, and
 * removes everything it made.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { e2eSkipReason } from '../helpers/netns.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const CLI = path.join(here, '..', '..', 'src', 'cli', 'main.js');
const skip = e2eSkipReason(['ping']);

function demoLeftovers(): string[] {
  const ns = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter((n) => n.startsWith('shallot-demo-'));
  const procs = execFileSync('ps', ['-eo', 'args'], { encoding: 'utf8' })
    .split('\n')
    .filter((l) => l.includes('main.js tunnel') && l.includes('shallot-demo'));
  return [...ns, ...procs];
}

describe('shallot demo', { skip: skip ?? false, timeout: 180_000 }, () => {
  it('runs a direct tunnel end to end and leaves nothing behind', async () => {
    assert.deepEqual(demoLeftovers(), [], 'nothing from an earlier demo');
    const run = await new Promise<{ code: number | null; out: string }>((resolve) => {
      execFile(
        process.execPath,
        [CLI, 'demo'],
        { timeout: 120_000, encoding: 'utf8', maxBuffer: 16 << 20 },
        (err, stdout, stderr) => {
          const code = err ? (typeof err.code === 'number' ? err.code : null) : 0;
          resolve({ code, out: stdout + stderr });
        },
      );
    });
    assert.equal(run.code, 0, run.out);
    assert.match(run.out, /5 packets transmitted, 5 received, 0% packet loss/);
    assert.match(run.out, /identical to what the server sent/);
    assert.match(run.out, /links: 1 .*\n.* up ECDHE-ECDSA-/);
    assert.deepEqual(demoLeftovers(), [], 'namespaces and processes removed');
  });
});
