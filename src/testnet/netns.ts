/**
 * Network namespaces for the local demo and testnet: create, join with
 * veth pairs, run commands inside, and remove everything again. Names are
 * fixed per use (e.g. "shallot-demo-a") so a later run can remove what a
 * crashed one left behind.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { errors } from '../errors.js';

function run(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    const err = e as { stderr?: string; code?: string };
    if (err.code === 'ENOENT')
      throw errors.badConfig(`the '${cmd}' command is missing (apt-get install iproute2)`);
    throw errors.system(
      `${cmd} ${args.join(' ')}`,
      (err.stderr ?? String(e)).trim().split('\n')[0],
    );
  }
}

export function listNamespaces(): string[] {
  return run('ip', ['netns', 'list'])
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter(Boolean);
}

/** Kill every process in a namespace and delete it (no error if absent). */
export function removeNamespace(name: string): void {
  if (!listNamespaces().includes(name)) return;
  try {
    for (const pid of run('ip', ['netns', 'pids', name]).split('\n').filter(Boolean)) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  } catch {
    /* no pids */
  }
  try {
    run('ip', ['netns', 'del', name]);
  } catch {
    /* raced with another remover */
  }
}

export function addNamespace(name: string): void {
  run('ip', ['netns', 'add', name]);
  nsRun(name, 'ip', ['link', 'set', 'lo', 'up']);
}

export function nsRun(ns: string, cmd: string, args: string[]): string {
  return run('ip', ['netns', 'exec', ns, cmd, ...args]);
}

/** A veth pair between two namespaces with an address on each end, up. */
export function addVeth(
  nsA: string,
  ifA: string,
  cidrA: string,
  nsB: string,
  ifB: string,
  cidrB: string,
): void {
  const tmp = `shv${process.pid % 100000}`;
  run('ip', ['link', 'add', `${tmp}a`, 'type', 'veth', 'peer', 'name', `${tmp}b`]);
  run('ip', ['link', 'set', `${tmp}a`, 'netns', nsA]);
  run('ip', ['link', 'set', `${tmp}b`, 'netns', nsB]);
  nsRun(nsA, 'ip', ['link', 'set', `${tmp}a`, 'name', ifA]);
  nsRun(nsB, 'ip', ['link', 'set', `${tmp}b`, 'name', ifB]);
  nsRun(nsA, 'ip', ['addr', 'add', cidrA, 'dev', ifA]);
  nsRun(nsB, 'ip', ['addr', 'add', cidrB, 'dev', ifB]);
  nsRun(nsA, 'ip', ['link', 'set', ifA, 'up']);
  nsRun(nsB, 'ip', ['link', 'set', ifB, 'up']);
}

/** Start a process inside a namespace; output is collected for error reports. */
export function nsSpawn(
  ns: string,
  cmd: string,
  args: string[],
): ChildProcess & { output: () => string } {
  const child = spawn('ip', ['netns', 'exec', ns, cmd, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  }) as ChildProcess & { output: () => string };
  let out = '';
  const keep = (d: Buffer) => {
    out = (out + d.toString()).slice(-16_384);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  child.output = () => out;
  return child;
}

/** Run a process in a namespace to completion, bounded in time. */
export function nsExec(
  ns: string,
  cmd: string,
  args: string[],
  timeoutMs: number,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn('ip', ['netns', 'exec', ns, cmd, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}
