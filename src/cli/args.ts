/**
 * Command-line parsing: each command declares its options once, and the
 * same table drives parsing, the YAML config file and --help. Mistakes
 * become one-line user errors.
 */
import fs from 'node:fs';
import YAML from 'yaml';
import { errors } from '../errors.js';

export interface OptionSpec {
  name: string;
  /** string: one value; list: comma-separated or repeated; flag: boolean. */
  type: 'string' | 'list' | 'flag';
  value?: string;
  help: string;
  /** Excluded from the config file (e.g. --config itself). */
  cliOnly?: boolean;
}

export interface CommandSpec {
  name: string;
  summary: string;
  usage: string[];
  options: OptionSpec[];
  details?: string;
  examples?: string[];
}

export type Parsed = Record<string, string | string[] | boolean | undefined>;

export function parseArgs(spec: CommandSpec, argv: string[]): Parsed {
  const out: Parsed = {};
  const byName = new Map(spec.options.map((o) => [o.name, o]));
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i] as string;
    if (!arg.startsWith('--')) {
      throw errors.badArgument(
        `unexpected argument '${arg}' for 'shallot ${spec.name}' (see shallot ${spec.name} --help)`,
      );
    }
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    const opt = byName.get(name);
    if (!opt) {
      throw errors.badArgument(
        `unknown option --${name} for 'shallot ${spec.name}' (see shallot ${spec.name} --help)`,
      );
    }
    if (opt.type === 'flag') {
      if (eq >= 0) throw errors.badArgument(`--${name} takes no value`);
      out[name] = true;
      continue;
    }
    let value: string | undefined;
    if (eq >= 0) value = arg.slice(eq + 1);
    else {
      value = argv[i + 1];
      i += 1;
    }
    if (value === undefined || value === '' || (eq < 0 && value.startsWith('--'))) {
      throw errors.badArgument(`--${name} needs a value: --${name} ${opt.value ?? 'VALUE'}`);
    }
    if (opt.type === 'list') {
      const prev = (out[name] as string[] | undefined) ?? [];
      out[name] = [...prev, ...splitList(value)];
    } else {
      if (out[name] !== undefined) throw errors.badArgument(`--${name} given twice`);
      out[name] = value;
    }
  }
  return out;
}

function splitList(v: string): string[] {
  return v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

/**
 * Merge a YAML config file under the command-line values: the file holds
 * the same option names (e.g. `listen: 10.0.0.1:7000`, `peer: [ID, ID]`).
 */
export function mergeConfigFile(spec: CommandSpec, parsed: Parsed, file: string): Parsed {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw errors.badConfig(
      `cannot read config file ${file}: ${(e as NodeJS.ErrnoException).code ?? e}`,
    );
  }
  let doc: unknown;
  try {
    doc = YAML.parse(text);
  } catch (e) {
    const first = (e as Error).message.split('\n')[0];
    throw errors.badConfig(`config file ${file} is not valid YAML: ${first}`);
  }
  if (doc === null || doc === undefined) return parsed;
  if (typeof doc !== 'object' || Array.isArray(doc)) {
    throw errors.badConfig(`config file ${file} must be a mapping of option: value`);
  }
  const out: Parsed = { ...parsed };
  const byName = new Map(spec.options.filter((o) => !o.cliOnly).map((o) => [o.name, o]));
  for (const [key, raw] of Object.entries(doc as Record<string, unknown>)) {
    const opt = byName.get(key);
    if (!opt) throw errors.badConfig(`unknown setting '${key}' in ${file}`);
    if (out[key] !== undefined) continue; // the command line wins
    if (opt.type === 'flag') {
      if (typeof raw !== 'boolean')
        throw errors.badConfig(`'${key}' in ${file} must be true or false`);
      out[key] = raw;
    } else if (opt.type === 'list') {
      const items = Array.isArray(raw) ? raw : [raw];
      if (!items.every((x) => typeof x === 'string' || typeof x === 'number')) {
        throw errors.badConfig(`'${key}' in ${file} must be a string or a list of strings`);
      }
      out[key] = items.flatMap((x) => splitList(String(x)));
    } else {
      if (typeof raw !== 'string' && typeof raw !== 'number') {
        throw errors.badConfig(`'${key}' in ${file} must be a single value`);
      }
      out[key] = String(raw);
    }
  }
  return out;
}

export function formatHelp(spec: CommandSpec): string {
  const lines = [`shallot ${spec.name}: ${spec.summary}`, '', 'Usage:'];
  for (const u of spec.usage) lines.push(`  ${u}`);
  if (spec.details) lines.push('', spec.details);
  if (spec.options.length) {
    lines.push('', 'Options:');
    const rows = spec.options.map((o) => [
      `--${o.name}${o.type === 'flag' ? '' : ' ' + (o.value ?? 'VALUE')}`,
      o.help,
    ]);
    const width = Math.max(...rows.map((r) => (r[0] as string).length));
    for (const [a, b] of rows) lines.push(`  ${(a as string).padEnd(width)}  ${b}`);
  }
  if (spec.examples?.length) {
    lines.push('', 'Examples:');
    for (const e of spec.examples) lines.push(`  ${e}`);
  }
  return lines.join('\n');
}

export function requireString(p: Parsed, name: string, hint: string): string {
  const v = p[name];
  if (typeof v !== 'string') throw errors.badArgument(`--${name} is required: ${hint}`);
  return v;
}
