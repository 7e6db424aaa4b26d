/**
 * The one seam between the control plane and the host's tools (`ip`, `nft`,
 * `sysctl`, `sh`): every synchronous command the node runs goes through a
 * CommandRunner. The real one is systemRunner (execFileSync, no shell); the
 * twin is RecordingRunner (./recording-runner.ts), which records what would
 * have run and answers from a script, so the plans and their clean-up can be
 * tested without root.
 *
 * A command that fails throws a CommandError whose message is one line,
 * "CMD ARGS: REASON", REASON being the first line of its stderr that starts
 * with "Error:" (nft puts its verdict there) or else the first line of it:
 * never a stack trace or Node's "Command failed" wrapper. A missing binary
 * is a CommandError with `missing` set, which callers turn into their own
 * "apt-get install ..." sentence. With `allowFail` a non-zero exit is
 * returned as `status` instead of thrown (a missing binary or a timeout is
 * still thrown: neither has an exit status to look at).
 */
import { execFileSync } from 'node:child_process';
import { ShallotError } from '../errors.js';

export interface RunOptions {
  /** Written to the command's stdin (otherwise stdin is /dev/null). */
  input?: string;
  /** Return a non-zero exit status instead of throwing. */
  allowFail?: boolean;
  /** Kill the command (SIGTERM) after this long and throw. */
  timeoutMs?: number;
}

export interface RunResult {
  stdout: string;
  stderr: string;
  /** The exit status: 0 unless allowFail let a failure through. */
  status: number;
}

export interface CommandRunner {
  run(cmd: string, args: readonly string[], opts?: RunOptions): RunResult;
}

export class CommandError extends ShallotError {
  readonly command: string;
  readonly args: readonly string[];
  /** Exit status, or null for a missing binary, a timeout or a signal. */
  readonly status: number | null;
  readonly stderr: string;
  /** The one line of stderr (or a description) that the message ends in. */
  readonly reason: string;
  /** The binary is not installed (ENOENT). */
  readonly missing: boolean;
  readonly timedOut: boolean;

  constructor(f: {
    command: string;
    args: readonly string[];
    status: number | null;
    stderr: string;
    reason: string;
    missing?: boolean;
    timedOut?: boolean;
  }) {
    const missing = f.missing ?? false;
    super(
      missing ? 'COMMAND_MISSING' : 'SYSTEM',
      missing ? 'user' : 'internal',
      missing
        ? `the '${f.command}' command is missing`
        : `${commandLine(f.command, f.args)}: ${f.reason}`,
    );
    this.name = 'CommandError';
    this.command = f.command;
    this.args = f.args;
    this.status = f.status;
    this.stderr = f.stderr;
    this.reason = f.reason;
    this.missing = missing;
    this.timedOut = f.timedOut ?? false;
  }
}

/** "ip -6 route add ::/1 dev shallot0", as the messages show a command. */
export function commandLine(cmd: string, args: readonly string[]): string {
  return [cmd, ...args].join(' ');
}

/**
 * The line a failure is reported by: nft's "Error: ..." line if there is
 * one (it may follow the offending input echoed back), else the first line.
 */
export function failureReason(stderr: string, status: number | null, signal?: string): string {
  const lines = stderr.split('\n').map((l) => l.trim());
  const line = lines.find((l) => l.startsWith('Error:')) ?? lines.find((l) => l !== '');
  if (line) return line;
  if (signal) return `killed by ${signal}`;
  return `exited with status ${status ?? '?'}`;
}

/**
 * The error a failed command turns into (shared by both runners, so the
 * twin's failures look exactly like the real ones).
 */
export function commandFailed(
  cmd: string,
  args: readonly string[],
  status: number | null,
  stderr: string,
  signal?: string,
): CommandError {
  return new CommandError({
    command: cmd,
    args: [...args],
    status,
    stderr,
    reason: failureReason(stderr, status, signal),
  });
}

export function commandMissing(cmd: string, args: readonly string[]): CommandError {
  return new CommandError({
    command: cmd,
    args: [...args],
    status: null,
    stderr: '',
    reason: 'not installed',
    missing: true,
  });
}

interface ExecError {
  code?: string;
  status?: number | null;
  signal?: string | null;
  stdout?: string | Buffer | null;
  stderr?: string | Buffer | null;
}

const text = (v: string | Buffer | null | undefined): string =>
  v === undefined || v === null ? '' : typeof v === 'string' ? v : v.toString('utf8');

/** The real runner: execFileSync, no shell, stdout and stderr captured. */
export const systemRunner: CommandRunner = {
  run(cmd, args, opts = {}) {
    try {
      const stdout = execFileSync(cmd, args, {
        encoding: 'utf8',
        stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
        ...(opts.input !== undefined ? { input: opts.input } : {}),
        ...(opts.timeoutMs !== undefined ? { timeout: opts.timeoutMs } : {}),
      });
      return { stdout, stderr: '', status: 0 };
    } catch (e) {
      const err = e as ExecError;
      if (err.code === 'ENOENT') throw commandMissing(cmd, args);
      const stderr = text(err.stderr);
      if (err.code === 'ETIMEDOUT') {
        throw new CommandError({
          command: cmd,
          args: [...args],
          status: null,
          stderr,
          reason: `timed out after ${opts.timeoutMs ?? 0} ms`,
          timedOut: true,
        });
      }
      const status = typeof err.status === 'number' ? err.status : null;
      if (opts.allowFail && status !== null) {
        return { stdout: text(err.stdout), stderr, status };
      }
      if (status === null && !err.signal) {
        // It never ran (e.g. EACCES on the binary): Node's own message says why.
        throw commandFailed(
          cmd,
          args,
          null,
          stderr || (e instanceof Error ? e.message : String(e)),
        );
      }
      throw commandFailed(cmd, args, status, stderr, err.signal ?? undefined);
    }
  },
};
