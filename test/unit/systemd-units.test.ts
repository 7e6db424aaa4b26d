// The systemd units in contrib/systemd, one per role. Each must pass
// `systemd-analyze verify` without a word (it warns about unknown keys and
// bad values but still exits 0, so any output counts as a failure); its
// ExecStart must be a shallot command whose options the real CLI parser
// accepts, with the example YAML beside the unit read as the --config file
// it stands for; and it must hold exactly the capabilities its role needs,
// with the sandboxing that fits what the role does to the host.
//
// ExecStart is /usr/bin/env (shallot is looked up on PATH), which exists
// wherever systemd does, so verify runs on the units as shipped: it fails
// only if the program named by ExecStart is missing, and that would be a
// real fault of the unit. Where systemd-analyze is not installed that part
// is skipped (CI installs the systemd package for it).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { mergeConfigFile, parseArgs, requireString, type Parsed } from '../../src/cli/args.js';
import { commands } from '../../src/cli/commands.js';
import { loggerFor, networkName } from '../../src/cli/node-common.js';
import { parseCidr, parseHostPort } from '../../src/net/cidr.js';

const here = path.dirname(fileURLToPath(import.meta.url));
// dist/test/unit -> contrib/systemd
const UNITS = path.resolve(here, '..', '..', '..', 'contrib', 'systemd');

/**
 * What each role does to the host (see the units' comments, and the exit's
 * and client's code: LinuxTun.open, the ip and nft runners, ExitNat's
 * forwarding sysctls), hence what its unit must allow and nothing more.
 */
const ROLES = {
  relay: { caps: [] as string[], tun: false, writesSysctl: false, required: ['listen'] },
  exit: { caps: ['CAP_NET_ADMIN'], tun: true, writesSysctl: true, required: ['listen', 'pool'] },
  client: { caps: ['CAP_NET_ADMIN'], tun: true, writesSysctl: false, required: [] as string[] },
} as const;
type Role = keyof typeof ROLES;

type Unit = Map<string, Map<string, string[]>>;

/** A unit file's sections and, per key, every assignment in order. */
function parseUnit(text: string): Unit {
  const unit: Unit = new Map();
  let section: Map<string, string[]> | null = null;
  const lines = text.replace(/\\\n/g, ' ').split('\n');
  for (const raw of lines) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const head = /^\[(.+)\]$/.exec(line);
    if (head) {
      section = new Map();
      unit.set(head[1] as string, section);
      continue;
    }
    const eq = line.indexOf('=');
    assert.ok(section && eq > 0, `not a key=value line inside a section: ${line}`);
    const key = line.slice(0, eq).trim();
    section.set(key, [...(section.get(key) ?? []), line.slice(eq + 1).trim()]);
  }
  return unit;
}

function values(unit: Unit, key: string, sectionName = 'Service'): string[] {
  return unit.get(sectionName)?.get(key) ?? [];
}

function only(unit: Unit, key: string): string | undefined {
  const v = values(unit, key);
  assert.ok(v.length <= 1, `${key}= is assigned ${v.length} times`);
  return v[0];
}

/** A capability list as systemd folds it: an empty assignment resets it, others add. */
function capabilities(unit: Unit, key: string): string[] {
  const set = new Set<string>();
  for (const v of values(unit, key)) {
    assert.ok(!v.startsWith('~'), `${key}=${v}: name what is kept, not what is dropped`);
    if (v === '') set.clear();
    for (const c of v.split(/\s+/).filter(Boolean)) set.add(c);
  }
  return [...set].sort();
}

function loadUnit(role: Role): { file: string; unit: Unit } {
  const file = path.join(UNITS, `shallot-${role}.service`);
  return { file, unit: parseUnit(fs.readFileSync(file, 'utf8')) };
}

function systemdAnalyzeMissing(): string | null {
  const r = spawnSync('systemd-analyze', ['--version'], { encoding: 'utf8' });
  if (r.error)
    return `systemd-analyze is not installed (${(r.error as NodeJS.ErrnoException).code})`;
  return null;
}

const noAnalyze = systemdAnalyzeMissing();

for (const role of Object.keys(ROLES) as Role[]) {
  const want = ROLES[role];
  describe(`shallot-${role}.service`, () => {
    it('passes systemd-analyze verify without a warning', { skip: noAnalyze ?? false }, () => {
      const { file } = loadUnit(role);
      const r = spawnSync('systemd-analyze', ['verify', '--man=no', file], { encoding: 'utf8' });
      assert.equal(r.status, 0, `systemd-analyze verify ${file}:\n${r.stdout}${r.stderr}`);
      assert.equal(`${r.stdout}${r.stderr}`.trim(), '', `systemd-analyze verify ${file} warns`);
    });

    it('runs a shallot command whose options the CLI accepts', () => {
      const { unit } = loadUnit(role);
      const exec = only(unit, 'ExecStart');
      assert.ok(exec, 'no ExecStart=');
      assert.doesNotMatch(exec, /["'$%]/, 'plain words only: this test splits on spaces');
      const [program, shallot, command, ...argv] = exec.split(/\s+/);
      assert.deepEqual([program, shallot, command], ['/usr/bin/env', 'shallot', role]);
      const spec = commands.find((c) => c.spec.name === role)?.spec;
      assert.ok(spec, `no 'shallot ${role}' command`);
      let p: Parsed = parseArgs(spec, argv);

      // The state directory is the one systemd makes and lets the node write.
      const stateDirs = values(unit, 'StateDirectory');
      assert.deepEqual(stateDirs, [`shallot-${role}`]);
      assert.equal(p.state, `/var/lib/shallot-${role}`);

      // --config names /etc/shallot/ROLE.yaml; the example beside the unit stands in for it.
      assert.equal(p.config, `/etc/shallot/${role}.yaml`);
      p = mergeConfigFile(spec, p, path.join(UNITS, `${role}.yaml`));
      for (const name of want.required) requireString(p, name, 'in the example YAML');
      for (const name of ['listen', 'advertise', 'dht-listen', 'metrics']) {
        const v = p[name];
        if (typeof v === 'string') parseHostPort(v, `--${name}`);
      }
      for (const name of ['pool', 'pool6']) {
        const v = p[name];
        if (typeof v === 'string') parseCidr(v, `--${name}`);
      }
      networkName(p);
      loggerFor(p);
    });

    it(`holds exactly ${want.caps.join(', ') || 'no capability'}, as a dynamic user`, () => {
      const { unit } = loadUnit(role);
      assert.ok(values(unit, 'CapabilityBoundingSet').length > 0, 'CapabilityBoundingSet= unset');
      assert.deepEqual(capabilities(unit, 'CapabilityBoundingSet'), [...want.caps]);
      assert.deepEqual(capabilities(unit, 'AmbientCapabilities'), [...want.caps]);
      assert.equal(only(unit, 'DynamicUser'), 'yes');
      assert.equal(only(unit, 'User'), undefined, 'a fixed User= instead of the dynamic one');
      assert.equal(only(unit, 'NoNewPrivileges'), 'yes');
      assert.equal(only(unit, 'ProtectSystem'), 'strict');
      assert.equal(only(unit, 'Restart'), 'on-failure');
    });

    it('sandboxes devices and kernel tunables as far as the role allows', () => {
      const { unit } = loadUnit(role);
      if (want.tun) {
        // PrivateDevices= would hide /dev/net/tun.
        assert.notEqual(only(unit, 'PrivateDevices'), 'yes');
        assert.equal(only(unit, 'DevicePolicy'), 'closed');
        assert.deepEqual(values(unit, 'DeviceAllow'), ['/dev/net/tun rw']);
      } else {
        assert.equal(only(unit, 'PrivateDevices'), 'yes');
        assert.deepEqual(values(unit, 'DeviceAllow'), []);
      }
      // ProtectKernelTunables= makes /proc/sys read-only: the exit writes
      // /proc/sys/net/ipv4/ip_forward (and the IPv6 one) to forward.
      assert.equal(only(unit, 'ProtectKernelTunables'), want.writesSysctl ? undefined : 'yes');
      assert.deepEqual(values(unit, 'RestrictAddressFamilies'), [
        'AF_INET AF_INET6 AF_NETLINK AF_UNIX',
      ]);
    });
  });
}
