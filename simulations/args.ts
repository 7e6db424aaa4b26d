/**
 * Command line of the overlay simulator. Every option has a default and a
 * bound; a mistake becomes a SimArgError (one line, no stack trace).
 */
import { CIRCUIT_MTU } from '../src/circuit/cells.js';
import { PAYLOAD_HEADER_BYTES, UDP4_HEADER_BYTES } from './packets.js';

export type KillMode = 'crash' | 'stop';
export type KillPick = 'random' | 'busy';

export interface SimOptions {
  relays: number;
  exits: number;
  clients: number;
  /** Loss rate of every datagram on the in-memory network. */
  loss: number;
  /** Run time in wall seconds, counted from the moment the clients start. */
  seconds: number;
  seed: number;
  /** Fraction of the (non-exit) relays killed mid-run. */
  kill: number;
  /** When, as a fraction of the run. */
  killAt: number;
  killMode: KillMode;
  killPick: KillPick;
  /** Packets per second each client sends while it has a circuit. */
  rate: number;
  /** UDP payload bytes of each packet. */
  size: number;
  /** Number of distinct IPv4 /16s the relays and exits are spread over. */
  nets: number;
  /** Seconds between progress lines (0: none). */
  progress: number;
  /** Print every client's own progress notes (circuit lost, build failed). */
  verbose: boolean;
}

export class SimArgError extends Error {}

export const DEFAULTS: SimOptions = {
  relays: 30,
  exits: 4,
  clients: 20,
  loss: 0.01,
  seconds: 20,
  seed: 1,
  kill: 0.1,
  killAt: 0.25,
  killMode: 'crash',
  killPick: 'random',
  rate: 20,
  size: 64,
  nets: 6,
  progress: 1,
  verbose: false,
};

/** The most packets per second all clients together may offer. */
export const MAX_OFFERED_PPS = 20_000;
const MAX_SIZE = CIRCUIT_MTU - UDP4_HEADER_BYTES;

interface NumberSpec {
  key: keyof SimOptions;
  min: number;
  max: number;
  integer: boolean;
  help: string;
}

const NUMBERS: Record<string, NumberSpec> = {
  relays: { key: 'relays', min: 2, max: 1000, integer: true, help: 'non-exit relays' },
  exits: { key: 'exits', min: 1, max: 100, integer: true, help: 'exits' },
  clients: { key: 'clients', min: 1, max: 1000, integer: true, help: 'clients' },
  loss: { key: 'loss', min: 0, max: 0.5, integer: false, help: 'datagram loss rate, 0 to 0.5' },
  seconds: { key: 'seconds', min: 1, max: 600, integer: false, help: 'run time (wall seconds)' },
  seed: { key: 'seed', min: 0, max: 2 ** 32 - 1, integer: true, help: 'seed of the simulator' },
  kill: { key: 'kill', min: 0, max: 0.9, integer: false, help: 'fraction of relays killed' },
  'kill-at': { key: 'killAt', min: 0.05, max: 0.95, integer: false, help: 'when (run fraction)' },
  rate: { key: 'rate', min: 0, max: 1000, integer: false, help: 'packets/s per client' },
  size: {
    key: 'size',
    min: PAYLOAD_HEADER_BYTES,
    max: MAX_SIZE,
    integer: true,
    help: 'UDP payload bytes',
  },
  nets: { key: 'nets', min: 3, max: 64, integer: true, help: 'IPv4 /16s of relays and exits' },
  progress: { key: 'progress', min: 0, max: 600, integer: false, help: 'seconds between lines' },
};

export const USAGE = `Usage: node dist/simulations/overlay.js [OPTIONS]

The real shallot node code (links with DTLS, relays, exits, clients) over
the in-memory network: clients build 3-hop circuits and send UDP packets
to an echo host behind their exit; some relays are killed mid-run.

Options (default in brackets):
  --relays N       non-exit relays, 2-1000 [${DEFAULTS.relays}]
  --exits M        exits, 1-100 [${DEFAULTS.exits}]
  --clients K      clients, 1-1000 [${DEFAULTS.clients}]
  --loss P         loss rate of every datagram, 0-0.5 [${DEFAULTS.loss}]
  --seconds S      run time in wall seconds from the clients' start, 1-600 [${DEFAULTS.seconds}]
  --seed X         seed for loss, kills and traffic, 0-4294967295 [${DEFAULTS.seed}]
  --kill F         fraction of non-exit relays killed mid-run, 0-0.9 [${DEFAULTS.kill}]
  --kill-at T      when, as a fraction of the run, 0.05-0.95; the kill also
                   waits for every client's first circuit (to 0.9 of the run) [${DEFAULTS.killAt}]
  --kill-mode MODE crash (silent: the relay stops answering) or stop (clean
                   shutdown: DESTROY and CLOSE go out) [${DEFAULTS.killMode}]
  --kill-pick PICK random relays, or the busy ones (most circuits) [${DEFAULTS.killPick}]
  --rate R         packets per second per client with a circuit, 0-1000 [${DEFAULTS.rate}]
  --size B         UDP payload bytes, ${PAYLOAD_HEADER_BYTES}-${MAX_SIZE} [${DEFAULTS.size}]
  --nets G         IPv4 /16s the relays and exits are spread over, 3-64 [${DEFAULTS.nets}]
  --progress SEC   seconds between progress lines, 0 for none [${DEFAULTS.progress}]
  --verbose        also print the clients' own notes (paths, hops, circuit lost, build failed)
  --help           this text

A crashed relay is noticed through timers (a client: 8 s without an answer;
a link: 10 s of silence), so with --kill-mode crash leave about 15 s of
run after the kill to see the rebuilds.

Output: progress lines, a summary, then one line "SIM_JSON {...}".
Exit status: 0 on success, 1 if an invariant failed (a circuit reused a
/16 or a relay) or on an internal error, 2 on a bad argument.`;

function parseNumber(name: string, text: string, spec: NumberSpec): number {
  const t = text.trim();
  if (!/^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/.test(t)) {
    throw new SimArgError(`--${name}: '${text}' is not a number`);
  }
  const v = Number(t);
  if (spec.integer && !Number.isInteger(v)) {
    throw new SimArgError(`--${name}: '${text}' is not a whole number`);
  }
  if (!(v >= spec.min && v <= spec.max)) {
    throw new SimArgError(`--${name} must be between ${spec.min} and ${spec.max}, not ${text}`);
  }
  return v;
}

/** Parse argv (without node and the script); null means --help was asked for. */
export function parseSimArgs(argv: string[]): SimOptions | null {
  const o: SimOptions = { ...DEFAULTS };
  const seen = new Set<string>();
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i] as string;
    if (arg === '--help' || arg === '-h') return null;
    if (arg === '--verbose') {
      o.verbose = true;
      continue;
    }
    if (!arg.startsWith('--') || arg === '--') {
      throw new SimArgError(`unexpected argument '${arg}' (see --help)`);
    }
    const eq = arg.indexOf('=');
    const name = eq >= 0 ? arg.slice(2, eq) : arg.slice(2);
    if (!Object.hasOwn(NUMBERS, name) && name !== 'kill-mode' && name !== 'kill-pick') {
      throw new SimArgError(`unknown option --${name} (see --help)`);
    }
    let value: string;
    if (eq >= 0) value = arg.slice(eq + 1);
    else {
      const next = argv[i + 1];
      if (next === undefined || /^--[a-z]/.test(next)) {
        throw new SimArgError(`--${name} needs a value`);
      }
      value = next;
      i += 1;
    }
    if (seen.has(name)) throw new SimArgError(`--${name} given twice`);
    seen.add(name);
    const spec = Object.hasOwn(NUMBERS, name) ? NUMBERS[name] : undefined;
    if (spec) {
      (o as unknown as Record<string, number>)[spec.key] = parseNumber(name, value, spec);
    } else if (name === 'kill-mode') {
      if (value !== 'crash' && value !== 'stop') {
        throw new SimArgError(`--kill-mode must be crash or stop, not '${value}'`);
      }
      o.killMode = value;
    } else {
      if (value !== 'random' && value !== 'busy') {
        throw new SimArgError(`--kill-pick must be random or busy, not '${value}'`);
      }
      o.killPick = value;
    }
  }
  if (o.clients * o.rate > MAX_OFFERED_PPS) {
    throw new SimArgError(
      `--clients x --rate is ${o.clients * o.rate} packets/s; at most ${MAX_OFFERED_PPS} in one process`,
    );
  }
  return o;
}
