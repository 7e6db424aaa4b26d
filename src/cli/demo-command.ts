/**
 * `shallot demo`: the main job on an embedded default, on one machine.
 * Builds two network namespaces joined by a veth pair, runs a shallot
 * tunnel between them (real TUN devices, real DTLS over real UDP), pings
 * and downloads through it, shows both ends' status, then removes
 * everything. Circuits through relays replace this once they exist.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { errors } from '../errors.js';
import { keygen } from '../identity.js';
import { addNamespace, addVeth, nsExec, nsSpawn, removeNamespace } from '../testnet/netns.js';
import { parseArgs, type CommandSpec } from './args.js';

export const demoSpec: CommandSpec = {
  name: 'demo',
  summary: 'show a tunnel working: two namespaces, a ping and a download through shallot',
  usage: ['shallot demo [--megabytes N] [--keep]'],
  details:
    'Needs root (namespaces, TUN devices) and iproute2. Creates namespaces shallot-demo-a and\n' +
    'shallot-demo-b joined by a veth pair (10.201.0.1 and .2), gives each a node identity, starts\n' +
    '`shallot tunnel` in both (inner 10.9.9.1 and 10.9.9.2), then pings and downloads through the\n' +
    'tunnel. Everything is removed at the end, also on Ctrl-C. With --keep the tunnel stays up\n' +
    'until Ctrl-C, so you can try it: ip netns exec shallot-demo-a ping 10.9.9.2',
  options: [
    { name: 'megabytes', type: 'string', value: 'N', help: 'size of the download (default 32)' },
    { name: 'keep', type: 'flag', help: 'keep the tunnel up until Ctrl-C' },
  ],
};

const NS_A = 'shallot-demo-a';
const NS_B = 'shallot-demo-b';

const here = path.dirname(fileURLToPath(import.meta.url));
const CLI = path.join(here, 'main.js');
const TRAFFIC = path.join(here, '..', 'testnet', 'demo-traffic.js');

function step(text: string): void {
  console.log(`==> ${text}`);
}

async function waitUntil(
  what: string,
  check: () => Promise<boolean>,
  timeoutMs: number,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let dots = 0;
  while (!(await check())) {
    if (Date.now() > deadline) {
      process.stdout.write('\n');
      throw errors.system('demo', `timed out after ${timeoutMs / 1000} s waiting for ${what}`);
    }
    if (process.stdout.isTTY) process.stdout.write(dots++ === 0 ? `    waiting for ${what} ` : '.');
    await new Promise((r) => setTimeout(r, 250));
  }
  if (dots > 0 && process.stdout.isTTY) process.stdout.write('\n');
}

export async function demoCommand(argv: string[]): Promise<number> {
  const p = parseArgs(demoSpec, argv);
  const mb = p.megabytes === undefined ? 32 : Number(p.megabytes);
  if (!Number.isInteger(mb) || mb < 1 || mb > 1024) {
    throw errors.badArgument('--megabytes must be a whole number from 1 to 1024');
  }
  if (process.getuid?.() !== 0)
    throw errors.needRoot('shallot demo (network namespaces, TUN devices)');

  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'shallot-demo-'));
  const children: ReturnType<typeof nsSpawn>[] = [];
  const cleanup = () => {
    for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
    removeNamespace(NS_A);
    removeNamespace(NS_B);
    fs.rmSync(tmp, { recursive: true, force: true });
  };
  const onSignal = () => {
    console.log('\n==> interrupted: removing the demo namespaces');
    cleanup();
    process.exit(130);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    removeNamespace(NS_A);
    removeNamespace(NS_B);
    step('creating namespaces shallot-demo-a (10.201.0.1) and shallot-demo-b (10.201.0.2)');
    addNamespace(NS_A);
    addNamespace(NS_B);
    addVeth(NS_A, 'eth0', '10.201.0.1/24', NS_B, 'eth0', '10.201.0.2/24');

    step('creating a node identity for each end');
    const idA = keygen(path.join(tmp, 'a')).id;
    const idB = keygen(path.join(tmp, 'b')).id;
    console.log(`    a: ${idA}\n    b: ${idB}`);

    step(
      'starting shallot tunnel: b listens on 10.201.0.2:7000, a connects (DTLS 1.2, ids checked)',
    );
    const b = nsSpawn(NS_B, process.execPath, [
      CLI,
      'tunnel',
      '--state',
      path.join(tmp, 'b'),
      '--listen',
      '10.201.0.2:7000',
      '--address',
      '10.9.9.2/24',
      '--peer',
      idA,
      '--dev',
      'shallot0',
    ]);
    const a = nsSpawn(NS_A, process.execPath, [
      CLI,
      'tunnel',
      '--state',
      path.join(tmp, 'a'),
      '--connect',
      '10.201.0.2:7000',
      '--address',
      '10.9.9.1/24',
      '--peer',
      idB,
      '--dev',
      'shallot0',
    ]);
    children.push(a, b);
    const server = nsSpawn(NS_B, process.execPath, [TRAFFIC, 'serve', '8080', String(mb << 20)]);
    children.push(server);
    for (const c of [a, b]) {
      c.on('exit', (code) => {
        if (code !== null && code !== 0)
          console.error(`shallot exited (${code}): ${c.output().trim()}`);
      });
    }
    await waitUntil(
      'the link to come up',
      async () => (await nsExec(NS_A, 'ping', ['-c', '1', '-W', '1', '10.9.9.2'], 3000)).code === 0,
      20_000,
    );
    step('link up. ping 10.9.9.2 from a, through the tunnel:');
    const ping = await nsExec(NS_A, 'ping', ['-c', '5', '-i', '0.2', '10.9.9.2'], 10_000);
    console.log(
      ping.stdout
        .trim()
        .split('\n')
        .map((l) => `    ${l}`)
        .join('\n'),
    );

    step(
      `downloading ${mb} MiB over HTTP from b (http://10.9.9.2:8080/download) through the tunnel`,
    );
    await waitUntil('the HTTP server', async () => server.output().includes('ready'), 10_000);
    const got = await nsExec(
      NS_A,
      process.execPath,
      [TRAFFIC, 'fetch', 'http://10.9.9.2:8080/download'],
      120_000,
    );
    const sum = await nsExec(
      NS_A,
      process.execPath,
      [TRAFFIC, 'text', 'http://10.9.9.2:8080/sha'],
      10_000,
    );
    const [bytes, ms, digest] = got.stdout.trim().split(' ');
    if (got.code !== 0 || !bytes || !ms)
      throw errors.system('demo download', got.stderr.trim() || 'failed');
    const mbit = (Number(bytes) * 8) / (Number(ms) / 1000) / 1e6;
    console.log(
      `    ${bytes} bytes in ${(Number(ms) / 1000).toFixed(2)} s: ${mbit.toFixed(0)} Mbit/s`,
    );
    if (digest !== sum.stdout.trim()) {
      throw errors.system(
        'demo download',
        `sha256 ${digest} differs from the server's ${sum.stdout.trim()}`,
      );
    }
    console.log(`    sha256 ${digest}: identical to what the server sent`);

    step('status of a (shallot status --state ...):');
    const st = await nsExec(
      NS_A,
      process.execPath,
      [CLI, 'status', '--state', path.join(tmp, 'a')],
      5000,
    );
    console.log(
      st.stdout
        .trim()
        .split('\n')
        .map((l) => `    ${l}`)
        .join('\n'),
    );

    if (p.keep === true) {
      step(`tunnel up: try 'ip netns exec ${NS_A} ping 10.9.9.2'. Ctrl-C removes everything.`);
      await new Promise(() => undefined);
    }
    step('removing namespaces, devices and processes');
    return 0;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    cleanup();
  }
}
