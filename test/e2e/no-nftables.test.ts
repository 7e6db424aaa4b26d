/**
 * On a machine without nftables (Debian's `nftables` not installed) the
 * exit and the full-tunnel client refuse to start with one line that says
 * what to install: no stack trace, no device or route left behind, and the
 * client never routes traffic outside a kill switch it could not install.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { descriptorToText, signDescriptor } from '../../src/descriptor/descriptor.js';
import { keygen } from '../../src/identity.js';
import { e2eSkipReason } from '../helpers/netns.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const CLI = path.join(here, '..', '..', 'src', 'cli', 'main.js');
const skip = e2eSkipReason();
const NS = `shnonft-${process.pid}`;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run the CLI in NS with a PATH that has `ip` and nothing else. */
function inNamespace(bin: string, args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      'ip',
      ['netns', 'exec', NS, 'env', `PATH=${bin}`, process.execPath, CLI, ...args],
      { timeout: 30_000, encoding: 'utf8' },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : null) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

function links(): string[] {
  return execFileSync('ip', ['-n', NS, '-br', 'link'], { encoding: 'utf8' })
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter((n) => n !== '');
}

function routes(): string {
  return execFileSync('ip', ['-n', NS, 'route'], { encoding: 'utf8' });
}

describe('without nftables', { skip: skip ?? false, timeout: 120_000 }, () => {
  let tmp = '';
  let bin = '';

  before(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'shallot-nonft-'));
    bin = path.join(tmp, 'bin');
    fs.mkdirSync(bin);
    fs.symlinkSync(
      execFileSync('sh', ['-c', 'command -v ip'], { encoding: 'utf8' }).trim(),
      path.join(bin, 'ip'),
    );
    execFileSync('ip', ['netns', 'add', NS]);
    execFileSync('ip', ['-n', NS, 'link', 'set', 'lo', 'up']);
    // A default route, as the client takes one over in full-tunnel mode.
    execFileSync('ip', ['-n', NS, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth1']);
    execFileSync('ip', ['-n', NS, 'addr', 'add', '10.231.0.2/24', 'dev', 'eth0']);
    execFileSync('ip', ['-n', NS, 'link', 'set', 'eth0', 'up']);
    execFileSync('ip', ['-n', NS, 'route', 'add', 'default', 'via', '10.231.0.1']);
  });

  after(() => {
    try {
      execFileSync('ip', ['netns', 'del', NS]);
    } catch {
      /* already gone */
    }
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('the exit says to install nftables, in one line, and leaves no device', async () => {
    const state = path.join(tmp, 'exit');
    keygen(state);
    const before = links();
    const r = await inNamespace(bin, [
      'exit',
      '--allow-private-extend',
      '--state',
      state,
      '--listen',
      '127.0.0.1:7999',
      '--pool',
      '10.222.0.0/24',
      '--no-dht',
    ]);
    assert.equal(r.code, 2, r.stderr);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(
      lines[0] as string,
      /^shallot: the exit needs nftables: apt-get install nftables$/,
    );
    assert.deepEqual(links(), before, 'no TUN device left');
  });

  it('the client says so too, before it touches routes or devices', async () => {
    const state = path.join(tmp, 'client');
    keygen(state);
    // Three relays and an exit, each on its own /16 (never dialled).
    const now = Math.floor(Date.now() / 1000);
    const lines = ['1', '2', '3', '4'].map((n) => {
      const id = keygen(path.join(tmp, `r${n}`));
      return descriptorToText(
        signDescriptor(id, {
          addresses: [{ host: `10.24${n}.0.2`, port: 7000 }],
          roles: { relay: true, exit: n === '4' },
          policy: '',
          bandwidth: 100,
          published: now,
          expires: now + 3600,
          network: 'shallot',
        }),
      );
    });
    const relays = path.join(tmp, 'relays.txt');
    fs.writeFileSync(relays, lines.join('\n') + '\n');
    const linksBefore = links();
    const routesBefore = routes();
    const r = await inNamespace(bin, ['client', '--state', state, '--relays', relays]);
    assert.equal(r.code, 2, r.stderr);
    assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
    assert.match(r.stderr, /^shallot: the kill switch needs nftables: apt-get install nftables$/m);
    assert.deepEqual(links(), linksBefore, 'no TUN device left');
    assert.equal(routes(), routesBefore, 'routes unchanged');
  });
});
