/**
 * Network-namespace laboratory for end-to-end tests and the benchmark.
 *
 * A Lab owns every namespace, veth pair and process it creates, and
 * cleanup() removes them all (also after a failure: tests call it from an
 * `after` hook). Namespace names carry the owning pid, so a later run can
 * sweep the leftovers of a crashed one (sweepStale).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';

export function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

export function haveCommand(cmd: string): boolean {
  for (const dir of (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':')) {
    if (existsSync(`${dir}/${cmd}`)) return true;
  }
  return false;
}

/** Why an end-to-end test cannot run here, or null if it can. */
export function e2eSkipReason(extra: string[] = []): string | null {
  if (!isRoot()) return 'needs root (network namespaces, TUN); CI runs it as root';
  for (const cmd of ['ip', ...extra]) {
    if (!haveCommand(cmd)) return `needs the '${cmd}' command (see .ci/run for the packages)`;
  }
  return null;
}

function run(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function tryRun(cmd: string, args: string[]): void {
  try {
    run(cmd, args);
  } catch {
    /* already gone */
  }
}

/** Delete namespaces named by a Lab whose owning process no longer exists. */
export function sweepStale(): void {
  let list = '';
  try {
    list = run('ip', ['netns', 'list']);
  } catch {
    return;
  }
  for (const line of list.split('\n')) {
    const name = line.split(' ')[0] ?? '';
    const m = /^shl\d*-(\d+)-/.exec(name);
    if (!m) continue;
    const pid = Number(m[1]);
    let alive = true;
    try {
      process.kill(pid, 0);
    } catch {
      alive = false;
    }
    if (!alive) tryRun('ip', ['netns', 'del', name]);
  }
}

export interface Output {
  code: number | null;
  stdout: string;
  stderr: string;
}

let labCount = 0;

export class Lab {
  readonly prefix: string;
  private readonly namespaces: string[] = [];
  private readonly procs = new Set<ChildProcess>();

  constructor() {
    labCount += 1;
    this.prefix = `shl${labCount}-${process.pid}-`;
  }

  /** Create a namespace with loopback up; returns its full name. */
  ns(short: string): string {
    const name = this.prefix + short;
    run('ip', ['netns', 'add', name]);
    this.namespaces.push(name);
    this.sh(name, 'ip link set lo up');
    return name;
  }

  /** A veth pair between two namespaces, each end with an address (CIDR), up. */
  veth(nsA: string, ifA: string, cidrA: string, nsB: string, ifB: string, cidrB: string): void {
    const tmpA = `v${process.pid % 100000}a${labCount}`;
    const tmpB = `v${process.pid % 100000}b${labCount}`;
    run('ip', ['link', 'add', tmpA, 'type', 'veth', 'peer', 'name', tmpB]);
    run('ip', ['link', 'set', tmpA, 'netns', nsA]);
    run('ip', ['link', 'set', tmpB, 'netns', nsB]);
    this.sh(nsA, `ip link set ${tmpA} name ${ifA} && ip link set ${ifA} up`);
    this.sh(nsB, `ip link set ${tmpB} name ${ifB} && ip link set ${ifB} up`);
    if (cidrA) this.sh(nsA, `ip addr add ${cidrA} dev ${ifA}`);
    if (cidrB) this.sh(nsB, `ip addr add ${cidrB} dev ${ifB}`);
  }

  /** Run a shell command in a namespace synchronously; throws on failure. */
  sh(ns: string, command: string): string {
    return run('ip', ['netns', 'exec', ns, 'sh', '-c', command]);
  }

  /** Run a command in a namespace to completion (bounded by timeoutMs). */
  exec(
    ns: string,
    cmd: string,
    args: string[],
    timeoutMs = 30_000,
    input?: string,
  ): Promise<Output> {
    return new Promise((resolve) => {
      const child = spawn('ip', ['netns', 'exec', ns, cmd, ...args], {
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      this.procs.add(child);
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      if (input !== undefined) child.stdin.end(input);
      else child.stdin.end();
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      child.on('close', (code) => {
        clearTimeout(timer);
        this.procs.delete(child);
        resolve({ code, stdout, stderr });
      });
    });
  }

  /** Start a long-running process in a namespace; killed by cleanup(). */
  spawn(ns: string, cmd: string, args: string[]): ChildProcess & { output: () => string } {
    const child = spawn('ip', ['netns', 'exec', ns, cmd, ...args], {
      stdio: ['pipe', 'pipe', 'pipe'],
    }) as ChildProcess & { output: () => string };
    let out = '';
    child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
    child.output = () => out;
    this.procs.add(child);
    child.on('close', () => this.procs.delete(child));
    return child;
  }

  /** Stop a process started by spawn(): SIGTERM, then SIGKILL after graceMs. */
  async stop(child: ChildProcess, graceMs = 3000): Promise<number | null> {
    if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
    return new Promise((resolve) => {
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      child.once('close', (code) => {
        clearTimeout(timer);
        resolve(code);
      });
      child.kill('SIGTERM');
    });
  }

  /** Kill every process and delete every namespace this lab made. */
  async cleanup(): Promise<void> {
    await Promise.all([...this.procs].map((p) => this.stop(p, 2000)));
    for (const name of this.namespaces.splice(0)) {
      // Processes started by `ip netns exec` under a shell may outlive it.
      try {
        const pids = run('ip', ['netns', 'pids', name]).split('\n').filter(Boolean);
        for (const pid of pids) tryRun('kill', ['-9', pid]);
      } catch {
        /* namespace already gone */
      }
      tryRun('ip', ['netns', 'del', name]);
    }
  }
}

/** Wait until `predicate` holds, polling every intervalMs, or throw after timeoutMs. */
export async function waitFor(
  what: string,
  predicate: () => boolean | Promise<boolean>,
  timeoutMs = 15_000,
  intervalMs = 100,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await predicate()) return;
    if (Date.now() > deadline)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
