/**
 * `shallot testnet` as a newcomer runs it: up, up again (refused), status,
 * exec a download in the client's namespace, down, and down with nothing
 * up. The testnet has fixed names (shtn-* namespaces, one state
 * directory), so the test first removes any testnet left on this machine
 * and always ends with `down`.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { e2eSkipReason } from '../helpers/netns.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..', '..');
const CLI = path.join(root, 'dist', 'src', 'cli', 'main.js');
const TRAFFIC = path.join(root, 'dist', 'src', 'testnet', 'demo-traffic.js');
const STATE = fs.existsSync('/run') ? '/run/shallot-testnet' : '/tmp/shallot-testnet';
const DEST = '10.20.0.2';
const URL = `http://${DEST}:8080/download`;
const DEST6 = 'fd00:20::2';

const skip = e2eSkipReason(['nft', 'ping']);

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function shallot(args: string[], timeoutMs = 60_000): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [CLI, ...args],
      { timeout: timeoutMs, encoding: 'utf8', maxBuffer: 16 << 20 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : null) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

function testnetNamespaces(): string[] {
  return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter((n) => n.startsWith('shtn-'));
}

function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\S+ \(.*\) [ZX]/.test(stat);
  } catch {
    return false;
  }
}

const show = (r: Run) => `exit ${r.code}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`;

describe('shallot testnet', { skip: skip ?? false, timeout: 180_000 }, () => {
  let pids: number[] = [];

  before(async () => {
    await shallot(['testnet', 'down'], 30_000);
  });

  after(async () => {
    await shallot(['testnet', 'down'], 30_000);
  });

  it('up builds the overlay, shows a circuit and a download, and prints the URL', async () => {
    const r = await shallot(['testnet', 'up'], 90_000);
    assert.equal(r.code, 0, show(r));
    assert.match(r.stdout, /circuit ready/, show(r));
    assert.match(r.stdout, /identical to the server's \/sha/, show(r));
    assert.match(r.stdout, /the same sha256 over IPv6/, show(r));
    assert.ok(r.stdout.includes(`ping -6 -c 3 ${DEST6}`), show(r));
    assert.ok(r.stdout.includes(URL), show(r));
    assert.ok(r.stdout.includes(`shallot testnet exec client -- `), show(r));
    const doc = JSON.parse(fs.readFileSync(path.join(STATE, 'testnet.json'), 'utf8')) as {
      nodes: { name: string; role: string; pidFile: string }[];
    };
    assert.deepEqual(
      doc.nodes.filter((n) => n.role === 'relay').map((n) => n.name),
      ['relay1', 'relay2', 'relay3'],
    );
    pids = doc.nodes.map((n) => Number(fs.readFileSync(n.pidFile, 'utf8').trim()));
    assert.ok(pids.length >= 6 && pids.every(alive), `processes ${pids.join(' ')} run`);
  });

  it('up again is refused with exit code 2 and creates nothing', async () => {
    const before = testnetNamespaces().sort();
    const doc = fs.readFileSync(path.join(STATE, 'testnet.json'), 'utf8');
    const r = await shallot(['testnet', 'up'], 30_000);
    assert.equal(r.code, 2, show(r));
    assert.match(r.stderr, /a testnet is already up: 'shallot testnet down' first/);
    assert.equal(r.stderr.trim().split('\n').length, 1, 'one line');
    assert.deepEqual(testnetNamespaces().sort(), before);
    assert.equal(fs.readFileSync(path.join(STATE, 'testnet.json'), 'utf8'), doc);
    assert.ok(pids.every(alive), 'the running testnet is untouched');
  });

  it("status lists every node and the client's circuit", async () => {
    const r = await shallot(['testnet', 'status'], 30_000);
    assert.equal(r.code, 0, show(r));
    for (const name of ['relay1', 'relay2', 'relay3', 'exit1', 'dest', 'client'])
      assert.match(r.stdout, new RegExp(`^${name} .*running`, 'm'), show(r));
    assert.match(
      r.stdout,
      /circuit ready; inner address 10\.200\.\d+\.\d+ and fd00:200::[0-9a-f]+/,
      show(r),
    );
    assert.match(r.stdout, /hops: \S+ [\d.:]+ -> \S+ [\d.:]+ -> exit1 10\.151\.0\.2:7000/, show(r));
  });

  it("exec runs a command in the client's namespace, through the circuit", async () => {
    const got = await shallot([
      'testnet',
      'exec',
      'client',
      '--',
      process.execPath,
      TRAFFIC,
      'fetch',
      URL,
    ]);
    assert.equal(got.code, 0, show(got));
    const [bytes, , digest] = got.stdout.trim().split(' ');
    assert.equal(Number(bytes), 16 << 20, show(got));
    const sum = await shallot([
      'testnet',
      'exec',
      'dest',
      '--',
      process.execPath,
      TRAFFIC,
      'text',
      `http://${DEST}:8080/sha`,
    ]);
    assert.equal(digest, sum.stdout.trim(), show(sum));
    // The client namespace has no way out but the circuit: the exit carried it.
    const st = await shallot(['testnet', 'status'], 30_000);
    const m = /to the internet (\d+) packets, from it (\d+)/.exec(st.stdout);
    assert.ok(m && Number(m[2]) > 1000, show(st));
    // IPv6 crosses the circuit too: the client's IPv6 goes into the TUN, and
    // the destination answers the exit's IPv6 address (it has no route to the pool).
    const route6 = await shallot([
      'testnet',
      'exec',
      'client',
      '--',
      'ip',
      '-6',
      'route',
      'get',
      DEST6,
    ]);
    assert.match(route6.stdout, /dev shallot0/, show(route6));
    const ping6 = await shallot([
      'testnet',
      'exec',
      'client',
      '--',
      'ping',
      '-6',
      '-c',
      '2',
      '-W',
      '2',
      DEST6,
    ]);
    assert.equal(ping6.code, 0, show(ping6));
    const code = await shallot(['testnet', 'exec', 'client', '--', 'sh', '-c', 'exit 3']);
    assert.equal(code.code, 3, 'the command exit code is passed on');
  });

  it('down stops every process and removes the namespaces and the state', async () => {
    const r = await shallot(['testnet', 'down'], 30_000);
    assert.equal(r.code, 0, show(r));
    assert.deepEqual(testnetNamespaces(), []);
    assert.deepEqual(pids.filter(alive), [], 'no process of the testnet is left');
    assert.equal(fs.existsSync(STATE), false, `${STATE} is gone`);
  });

  it('down with nothing up says so and exits 0', async () => {
    const r = await shallot(['testnet', 'down'], 30_000);
    assert.equal(r.code, 0, show(r));
    assert.match(r.stdout, /no testnet is up/);
  });
});
