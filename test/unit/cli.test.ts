// The real `shallot` command as a child process: key management, the
// refusal of unsafe key files, one-line errors for every kind of bad input,
// --help, and --config. Nothing here needs root; run as root, the --config
// test drops to nobody for its child so that it still sees the non-root path.
import assert from 'node:assert/strict';
import { spawnSync, type SpawnSyncOptions } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { commands } from '../../src/cli/commands.js';
import type { CommandSpec } from '../../src/cli/args.js';

const here = path.dirname(fileURLToPath(import.meta.url));
// dist/test/unit -> dist/src/cli/main.js
const CLI = path.resolve(here, '..', '..', 'src', 'cli', 'main.js');
const NOBODY = 65534;
const isRoot = process.getuid?.() === 0;

const tmpRoots: string[] = [];
after(() => {
  for (const d of tmpRoots) fs.rmSync(d, { recursive: true, force: true });
});

function tmp(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'shallot-cli-'));
  tmpRoots.push(d);
  return d;
}

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

function shallot(args: string[], options: SpawnSyncOptions = {}): Result {
  const r = spawnSync(process.execPath, [CLI, ...args], {
    encoding: 'utf8',
    timeout: 30_000,
    env: { ...process.env, NODE_OPTIONS: '' },
    ...options,
  });
  if (r.error) throw r.error;
  return { code: r.status, stdout: String(r.stdout), stderr: String(r.stderr) };
}

function lastLine(text: string): string {
  const lines = text.trimEnd().split('\n');
  return lines[lines.length - 1] ?? '';
}

/** A user error: exit 2, exactly one line on stderr, no stack trace. */
function assertUserError(r: Result, pattern: RegExp, what: string): void {
  const lines = r.stderr.trimEnd().split('\n');
  assert.equal(r.code, 2, `${what}: exit code (stderr: ${r.stderr})`);
  assert.ok(!/^ {4}at /m.test(r.stderr), `${what}: stack trace printed:\n${r.stderr}`);
  assert.equal(lines.length, 1, `${what}: one line expected, got:\n${r.stderr}`);
  assert.match(lines[0] as string, /^shallot: /, what);
  assert.match(lines[0] as string, pattern, what);
}

function mode(p: string): number {
  return fs.statSync(p).mode & 0o777;
}

const KEY_FILES = ['identity.key', 'onion.key', 'link-key.pem', 'link-cert.pem'];
const SOME_ID = 'ab'.repeat(32);
const OTHER_ID = 'CD'.repeat(32);

test('keygen creates a 0700 state directory of 0600 files and prints the node id last', () => {
  const dir = path.join(tmp(), 'nested', 'state');
  const r = shallot(['keygen', '--state', dir]);
  assert.equal(r.code, 0, r.stderr);
  const id = lastLine(r.stdout);
  assert.match(id, /^[0-9a-f]{64}$/, 'node id on the last line');
  assert.equal(mode(dir), 0o700, 'state directory mode');
  for (const f of KEY_FILES) assert.equal(mode(path.join(dir, f)), 0o600, `${f} mode`);

  const again = shallot(['id', '--state', dir]);
  assert.equal(again.code, 0, again.stderr);
  assert.equal(lastLine(again.stdout), id, 'id prints the same id');
  assert.equal(again.stdout.trim(), id, 'id prints the id alone');
});

test('a second keygen needs --force; with it the id changes', () => {
  const dir = path.join(tmp(), 'state');
  const first = lastLine(shallot(['keygen', '--state', dir]).stdout);

  const refused = shallot(['keygen', '--state', dir]);
  assertUserError(refused, /--force/, 'keygen over an identity');
  assert.equal(lastLine(shallot(['id', '--state', dir]).stdout), first, 'id unchanged');

  const forced = shallot(['keygen', '--state', dir, '--force']);
  assert.equal(forced.code, 0, forced.stderr);
  const second = lastLine(forced.stdout);
  assert.match(second, /^[0-9a-f]{64}$/);
  assert.notEqual(second, first, 'a new identity');
  assert.equal(lastLine(shallot(['id', '--state', dir]).stdout), second);
  for (const f of KEY_FILES)
    assert.equal(mode(path.join(dir, f)), 0o600, `${f} mode after --force`);
});

test('secret key files readable by group or others are refused', () => {
  const dir = path.join(tmp(), 'state');
  assert.equal(shallot(['keygen', '--state', dir]).code, 0);
  for (const [file, m] of [
    ['identity.key', 0o644],
    ['identity.key', 0o640],
    ['onion.key', 0o604],
    ['link-key.pem', 0o640],
  ] as const) {
    const p = path.join(dir, file);
    fs.chmodSync(p, m);
    const r = shallot(['id', '--state', dir]);
    assertUserError(r, /chmod 600/, `${file} mode ${m.toString(8)}`);
    assert.ok(r.stderr.includes(file), `the message names ${file}`);
    fs.chmodSync(p, 0o600);
  }
  assert.equal(shallot(['id', '--state', dir]).code, 0, 'accepted again at 0600');
});

test('bad input: exit 2, one line, no stack trace', () => {
  const base = tmp();
  const state = path.join(base, 'state');
  const file = (name: string, text: string) => {
    const p = path.join(base, name);
    fs.writeFileSync(p, text);
    return p;
  };
  const notYaml = file('bad.yaml', 'listen: [10.0.0.1:7000\nstate: {');
  const unknownKey = file('unknown.yaml', 'state: /tmp/x\nbogus: 1\n');
  const listItem = file('list.yaml', '- state\n- listen\n');
  const tunnel = (...extra: string[]) => ['tunnel', '--state', state, ...extra];
  const listen = ['--listen', '127.0.0.1:7000'];
  const cases: [string, string[], RegExp][] = [
    ['unknown command', ['frobnicate'], /unknown command 'frobnicate'/],
    ['unknown option', ['keygen', '--bogus'], /unknown option --bogus/],
    ['unknown option (tunnel)', tunnel('--colour', 'red'), /unknown option --colour/],
    ['stray argument', ['id', 'state'], /unexpected argument 'state'/],
    ['option without its value', ['keygen', '--state'], /--state needs a value/],
    ['flag with a value', ['keygen', '--state', state, '--force=yes'], /--force takes no value/],
    ['missing --state (keygen)', ['keygen'], /--state is required/],
    ['missing --state (id)', ['id'], /--state is required/],
    ['missing --state (tunnel)', ['tunnel', ...listen], /--state is required/],
    ['no identity yet', ['id', '--state', state], /no identity in .*shallot keygen/],
    ['no status', ['status', '--state', state], /no status in/],
    ['tunnel without --address', tunnel(...listen, '--peer', SOME_ID), /--address is required/],
    [
      'CIDR without a prefix',
      tunnel(...listen, '--address', '10.9.0.1', '--peer', SOME_ID),
      /needs a prefix length/,
    ],
    [
      'CIDR prefix too long',
      tunnel(...listen, '--address', '10.9.0.1/33', '--peer', SOME_ID),
      /bad prefix length/,
    ],
    [
      'CIDR that is no address',
      tunnel(...listen, '--address', 'banana/24', '--peer', SOME_ID),
      /not an IPv4 or IPv6 address/,
    ],
    [
      'two IPv4 prefixes',
      tunnel(...listen, '--address', '10.9.0.1/24,10.9.1.1/24', '--peer', SOME_ID),
      /at most one IPv4/,
    ],
    [
      'HOST:PORT without a port',
      tunnel('--listen', '127.0.0.1', '--address', '10.9.0.1/24', '--peer', SOME_ID),
      /must be HOST:PORT/,
    ],
    [
      'HOST:PORT with a name',
      tunnel('--listen', 'localhost:7000', '--address', '10.9.0.1/24', '--peer', SOME_ID),
      /not an IP address/,
    ],
    [
      'HOST:PORT with a bad port',
      tunnel('--connect', '192.0.2.1:70000', '--address', '10.9.0.1/24', '--peer', SOME_ID),
      /bad port/,
    ],
    [
      'bad peer id',
      tunnel(...listen, '--address', '10.9.0.1/24', '--peer', 'abc123'),
      /peer id 'abc123' is not a node id/,
    ],
    [
      'both --listen and --connect',
      tunnel(
        ...listen,
        '--connect',
        '192.0.2.1:7000',
        '--address',
        '10.9.0.1/24',
        '--peer',
        SOME_ID,
      ),
      /exactly one of --listen/,
    ],
    [
      '--connect with two peers',
      tunnel(
        '--connect',
        '192.0.2.1:7000',
        '--address',
        '10.9.0.1/24',
        '--peer',
        `${SOME_ID},${OTHER_ID}`,
      ),
      /exactly one --peer/,
    ],
    [
      'listener with no peer',
      tunnel(...listen, '--address', '10.9.0.1/24'),
      /--peer ID.*--any-peer/,
    ],
    [
      'bad --dead-after',
      tunnel(...listen, '--address', '10.9.0.1/24', '--peer', SOME_ID, '--dead-after', 'soon'),
      /--dead-after must be a number/,
    ],
    ['bad --log-level', tunnel(...listen, '--log-level', 'loud'), /--log-level must be/],
    ['config file that is not YAML', ['tunnel', '--config', notYaml], /not valid YAML/],
    [
      'config file with an unknown key',
      ['tunnel', '--config', unknownKey],
      /unknown setting 'bogus'/,
    ],
    ['config file that is a list', ['tunnel', '--config', listItem], /must be a mapping/],
    [
      'config file that does not exist',
      ['tunnel', '--config', path.join(base, 'missing.yaml')],
      /cannot read config file .*missing\.yaml/,
    ],
    ['bad --megabytes', ['demo', '--megabytes', '0'], /--megabytes must be/],
  ];
  for (const [what, args, pattern] of cases) {
    assertUserError(shallot(args), pattern, what);
  }
  assert.ok(!fs.existsSync(state), 'no bad command created the state directory');
});

const specs: CommandSpec[] = commands.map((c) => c.spec);

test('--help: the overview lists the commands; each command documents its options', () => {
  for (const args of [['--help'], ['-h'], ['help'], []]) {
    const r = shallot(args);
    assert.equal(r.code, 0, `shallot ${args.join(' ')}`);
    assert.match(r.stdout, /^Commands:$/m);
  }
  const overview = shallot(['--help']).stdout;
  const section = overview.split(/^Commands:$/m)[1]?.split(/\n\s*\n/)[0] ?? '';
  const listed = [...section.matchAll(/^ {2}(\S+) {2,}\S/gm)].map((m) => m[1] as string);
  assert.deepEqual(
    [...listed].sort(),
    specs.map((s) => s.name).sort(),
    'the overview lists exactly the commands',
  );
  for (const name of listed) {
    const spec = specs.find((s) => s.name === name) as CommandSpec;
    for (const args of [
      [name, '--help'],
      [name, '-h'],
      ['help', name],
      [name, '--state', '/x', '--help'],
    ]) {
      const r = shallot(args);
      assert.equal(r.code, 0, `shallot ${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stderr, '', `shallot ${args.join(' ')} writes nothing to stderr`);
      assert.match(
        r.stdout,
        new RegExp(`^shallot ${name}: `),
        `help of ${name} starts with its name`,
      );
      assert.match(r.stdout, /^Usage:$/m);
      for (const o of spec.options) {
        assert.match(
          r.stdout,
          new RegExp(`^ {2}--${o.name}\\b`, 'm'),
          `${name} --help mentions --${o.name}`,
        );
      }
    }
  }
});

/**
 * A state directory with an identity and a YAML config for `tunnel`. Run as
 * root, everything belongs to nobody, who then runs the command.
 */
function configFixture(yaml: (state: string) => string): {
  config: string;
  options: SpawnSyncOptions;
} {
  const base = tmp();
  const options: SpawnSyncOptions = isRoot
    ? { uid: NOBODY, gid: NOBODY, cwd: base }
    : { cwd: base };
  if (isRoot) fs.chownSync(base, NOBODY, NOBODY);
  const state = path.join(base, 'state');
  const k = shallot(['keygen', '--state', state], options);
  assert.equal(k.code, 0, k.stderr);
  const config = path.join(base, 'tunnel.yaml');
  fs.writeFileSync(config, yaml(state), { mode: 0o644 });
  return { config, options };
}

const tunDeviceMissing = !fs.existsSync('/dev/net/tun');

test(
  '--config supplies state, listen, address and peer: tunnel gets past validation to "needs root"',
  { skip: tunDeviceMissing ? 'no /dev/net/tun on this host' : false },
  () => {
    const { config, options } = configFixture(
      (state) =>
        `# a tunnel listener\nstate: ${state}\nlisten: 127.0.0.1:17999\naddress: 10.99.0.1/24\npeer:\n  - ${SOME_ID}\n`,
    );
    const r = shallot(['tunnel', '--config', config], options);
    assertUserError(r, /needs root \(CAP_NET_ADMIN\)/, 'tunnel from a config file, not root');
  },
);

test(
  'the command line wins over the config file',
  { skip: tunDeviceMissing ? 'no /dev/net/tun on this host' : false },
  () => {
    const { config, options } = configFixture(
      (state) =>
        `state: ${state}\nlisten: not-an-address\naddress: 10.99.0.1/24\npeer: ${SOME_ID}\n`,
    );
    const bad = shallot(['tunnel', '--config', config], options);
    assertUserError(bad, /--listen 'not-an-address' must be HOST:PORT/, 'config value used');
    const r = shallot(['tunnel', '--config', config, '--listen', '127.0.0.1:17998'], options);
    assertUserError(r, /needs root/, 'command line value used instead');
  },
);
