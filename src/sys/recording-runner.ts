/**
 * The in-memory twin of the control-plane seam: a CommandRunner and Sysctls
 * that run nothing. It records every command (with its stdin) and every
 * sysctl write in one ordered log, and answers from a script: the first
 * rule whose matcher fits gives the reply, else success with empty output.
 * A scripted failure throws the very CommandError the real runner would
 * (same message, same `missing`), so a module's error handling and clean-up
 * run as they would against the real tools. Like wireguard-go's tuntest:
 * the plans are tested without root, the real kernel in the e2e tests.
 */
import { commandFailed, commandLine, commandMissing } from './command-runner.js';
import type { CommandRunner, RunOptions, RunResult } from './command-runner.js';
import type { Sysctls } from './sysctl.js';

export interface RecordedCommand {
  cmd: string;
  args: string[];
  input?: string;
  /** `cmd args...` joined by spaces, what a matcher string is compared to. */
  line: string;
}

export interface ScriptedReply {
  stdout?: string;
  stderr?: string;
  /** Exit status; non-zero fails (throws unless allowFail). Default 0. */
  status?: number;
  /** Behave as if the binary were not installed. */
  missing?: boolean;
}

/** A command line prefix, a pattern, or a predicate. */
export type Matcher = string | RegExp | ((c: RecordedCommand) => boolean);

interface Rule {
  match: (c: RecordedCommand) => boolean;
  reply: ScriptedReply | ((c: RecordedCommand) => ScriptedReply);
  /** Replies left; Infinity for a standing rule. */
  left: number;
}

/** Kept bounded so a runaway loop in a test fails instead of eating memory. */
const MAX_LOG = 100_000;

function matcher(m: Matcher): (c: RecordedCommand) => boolean {
  if (typeof m === 'string') return (c) => c.line === m || c.line.startsWith(`${m} `);
  if (m instanceof RegExp) return (c) => m.test(c.line);
  return m;
}

export class RecordingRunner implements CommandRunner, Sysctls {
  /** Commands in the order they ran. */
  readonly commands: RecordedCommand[] = [];
  /** Commands and sysctl writes, in order: "nft -f -", "sysctl /proc/...=1". */
  readonly log: string[] = [];
  private readonly rules: Rule[] = [];
  private readonly sysctlValues = new Map<string, string>();
  private readonly sysctlFailures = new Map<string, { code: string; op: 'read' | 'write' }>();

  /**
   * Answer commands that match with `reply` (a function sees the command).
   * `times` limits how often (default: always). Earlier rules win.
   */
  on(
    m: Matcher,
    reply: ScriptedReply | ((c: RecordedCommand) => ScriptedReply),
    times = Infinity,
  ): this {
    this.rules.push({ match: matcher(m), reply, left: times });
    return this;
  }

  run(cmd: string, args: readonly string[], opts: RunOptions = {}): RunResult {
    const c: RecordedCommand = {
      cmd,
      args: [...args],
      ...(opts.input !== undefined ? { input: opts.input } : {}),
      line: commandLine(cmd, args),
    };
    this.commands.push(c);
    this.append(c.line);
    const rule = this.rules.find((r) => r.left > 0 && r.match(c));
    let reply: ScriptedReply = {};
    if (rule) {
      rule.left -= 1;
      reply = typeof rule.reply === 'function' ? rule.reply(c) : rule.reply;
    }
    if (reply.missing) throw commandMissing(cmd, args);
    const status = reply.status ?? 0;
    const stderr = reply.stderr ?? '';
    if (status !== 0 && !opts.allowFail) throw commandFailed(cmd, args, status, stderr);
    return { stdout: reply.stdout ?? '', stderr, status };
  }

  /** The command lines run so far (optionally only those of one binary). */
  lines(cmd?: string): string[] {
    return this.commands.filter((c) => cmd === undefined || c.cmd === cmd).map((c) => c.line);
  }

  // --- sysctls -------------------------------------------------------------------

  /** Set a sysctl's current value (as the kernel would have it). */
  setSysctl(path: string, value: string): this {
    this.sysctlValues.set(path, value);
    return this;
  }

  /** Make writes (or reads) of `path` fail with this errno code (e.g. 'EACCES'). */
  failSysctl(path: string, code: string, op: 'read' | 'write' = 'write'): this {
    this.sysctlFailures.set(path, { code, op });
    return this;
  }

  sysctl(path: string): string | undefined {
    return this.sysctlValues.get(path);
  }

  read(path: string): string {
    this.fail(path, 'read');
    const v = this.sysctlValues.get(path);
    if (v === undefined) throw errno('ENOENT', 'open', path);
    return v;
  }

  write(path: string, value: string): void {
    this.append(`sysctl ${path}=${value}`);
    this.fail(path, 'write');
    if (!this.sysctlValues.has(path)) throw errno('ENOENT', 'open', path);
    this.sysctlValues.set(path, value);
  }

  private fail(path: string, op: 'read' | 'write'): void {
    const f = this.sysctlFailures.get(path);
    if (f && f.op === op) throw errno(f.code, 'open', path);
  }

  private append(line: string): void {
    if (this.log.length >= MAX_LOG) throw new Error(`RecordingRunner: more than ${MAX_LOG} calls`);
    this.log.push(line);
  }
}

function errno(code: string, syscall: string, path: string): NodeJS.ErrnoException {
  const e: NodeJS.ErrnoException = new Error(`${code}: ${syscall} '${path}'`);
  e.code = code;
  e.syscall = syscall;
  e.path = path;
  return e;
}
