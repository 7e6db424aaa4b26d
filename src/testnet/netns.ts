/**
 * Network namespaces for the local demo and testnet: create, join with
 * veth pairs, run commands inside, and remove everything again. Names are
 * fixed per use (e.g. "shallot-demo-a") so a later run can remove what a
 * crashed one left behind.
 *
 * The synchronous commands go through a CommandRunner (the last, optional
 * parameter; the real one by default); the long-running processes that
 * nsSpawn and nsExec start are not commands of that kind and spawn directly.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { errors } from '../errors.js';
import { CommandError, systemRunner, type CommandRunner } from '../sys/command-runner.js';

function run(runner: CommandRunner, cmd: string, args: string[]): string {
  try {
    return runner.run(cmd, args).stdout;
  } catch (e) {
    if (e instanceof CommandError && e.missing)
      throw errors.badConfig(`the '${cmd}' command is missing (apt-get install iproute2)`);
    throw e;
  }
}

export function listNamespaces(runner: CommandRunner = systemRunner): string[] {
  return run(runner, 'ip', ['netns', 'list'])
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter(Boolean);
}

/** Kill every process in a namespace and delete it (no error if absent). */
export function removeNamespace(name: string, runner: CommandRunner = systemRunner): void {
  if (!listNamespaces(runner).includes(name)) return;
  try {
    for (const pid of run(runner, 'ip', ['netns', 'pids', name]).split('\n').filter(Boolean)) {
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
    run(runner, 'ip', ['netns', 'del', name]);
  } catch {
    /* raced with another remover */
  }
}

export function addNamespace(name: string, runner: CommandRunner = systemRunner): void {
  run(runner, 'ip', ['netns', 'add', name]);
  nsRun(name, 'ip', ['link', 'set', 'lo', 'up'], runner);
}

export function nsRun(
  ns: string,
  cmd: string,
  args: string[],
  runner: CommandRunner = systemRunner,
): string {
  return run(runner, 'ip', ['netns', 'exec', ns, cmd, ...args]);
}

/** A veth pair between two namespaces with an address on each end, up. */
export function addVeth(
  nsA: string,
  ifA: string,
  cidrA: string,
  nsB: string,
  ifB: string,
  cidrB: string,
  runner: CommandRunner = systemRunner,
): void {
  const tmp = `shv${process.pid % 100000}`;
  run(runner, 'ip', ['link', 'add', `${tmp}a`, 'type', 'veth', 'peer', 'name', `${tmp}b`]);
  run(runner, 'ip', ['link', 'set', `${tmp}a`, 'netns', nsA]);
  run(runner, 'ip', ['link', 'set', `${tmp}b`, 'netns', nsB]);
  nsRun(nsA, 'ip', ['link', 'set', `${tmp}a`, 'name', ifA], runner);
  nsRun(nsB, 'ip', ['link', 'set', `${tmp}b`, 'name', ifB], runner);
  nsRun(nsA, 'ip', ['addr', 'add', cidrA, 'dev', ifA], runner);
  nsRun(nsB, 'ip', ['addr', 'add', cidrB, 'dev', ifB], runner);
  nsRun(nsA, 'ip', ['link', 'set', ifA, 'up'], runner);
  nsRun(nsB, 'ip', ['link', 'set', ifB, 'up'], runner);
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
