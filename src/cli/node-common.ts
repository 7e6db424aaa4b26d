/**
 * What the node commands (relay, exit, client, bootstrap) share: option
 * specs, logging, signals, DHT bootstrap lists and status reporting.
 */
import { MAINLINE_BOOTSTRAP } from '../discovery/dht-node.js';
import { errors } from '../errors.js';
import { createLogger, type Logger, type LogLevel } from '../log.js';
import { parseHostPort } from '../net/cidr.js';
import { startMetricsServer, type MetricsServer } from '../metrics/prometheus.js';
import { STATUS_INTERVAL_MS, writeStatus } from '../status-file.js';
import { mergeConfigFile, parseArgs, type CommandSpec, type Parsed } from './args.js';

export const DEFAULT_NETWORK = 'shallot';

export const common = {
  state: {
    name: 'state',
    type: 'string',
    value: 'DIR',
    help: 'state directory (from shallot keygen)',
  },
  network: {
    name: 'network',
    type: 'string',
    value: 'NAME',
    help: `overlay network name (default ${DEFAULT_NETWORK})`,
  },
  logLevel: {
    name: 'log-level',
    type: 'string',
    value: 'LEVEL',
    help: 'debug, info (default), warn, error',
  },
  metrics: {
    name: 'metrics',
    type: 'string',
    value: 'HOST:PORT',
    help: 'serve Prometheus metrics at http://HOST:PORT/metrics (localhost only; off by default)',
  },
  metricsAllowRemote: {
    name: 'metrics-allow-remote',
    type: 'flag',
    help: 'let --metrics bind to a non-loopback address (anyone reaching it reads your counters)',
  },
  config: {
    name: 'config',
    type: 'string',
    value: 'FILE',
    help: 'YAML file with any of these options',
    cliOnly: true,
  },
} as const;

export const dhtOptions = [
  {
    name: 'bootstrap',
    type: 'list',
    value: 'HOST:PORT,...',
    help: 'DHT bootstrap nodes of a private network (default: the mainline DHT routers)',
  },
  {
    name: 'no-dht',
    type: 'flag',
    help: 'do not use the DHT (relays: no publishing; clients: --relays only)',
  },
] as const;

export function loggerFor(p: Parsed): Logger {
  const level = (p['log-level'] ?? 'info') as LogLevel;
  if (!['debug', 'info', 'warn', 'error'].includes(level)) {
    throw errors.badArgument('--log-level must be debug, info, warn or error');
  }
  return createLogger(level);
}

export function networkName(p: Parsed): string {
  const n = typeof p.network === 'string' ? p.network : DEFAULT_NETWORK;
  if (!/^[A-Za-z0-9._-]{1,32}$/.test(n))
    throw errors.badArgument('--network must be 1-32 letters, digits, ".", "_" or "-"');
  return n;
}

export function parsed(spec: CommandSpec, argv: string[]): Parsed {
  let p = parseArgs(spec, argv);
  if (typeof p.config === 'string') p = mergeConfigFile(spec, p, p.config);
  return p;
}

/** Wait for SIGINT/SIGTERM, then run `stop`. */
export function untilSignal(log: Logger, stop: () => void): Promise<number> {
  return new Promise((resolve) => {
    const handler = (signal: string) => {
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
      log.info(`${signal}: stopping`);
      try {
        stop();
      } finally {
        resolve(0);
      }
    };
    const onInt = () => handler('SIGINT');
    const onTerm = () => handler('SIGTERM');
    process.on('SIGINT', onInt);
    process.on('SIGTERM', onTerm);
  });
}

export function bindError(e: unknown, host: string, port: number): unknown {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'EADDRINUSE') return errors.badArgument(`UDP ${host}:${port} is already in use`);
  if (code === 'EADDRNOTAVAIL') return errors.badArgument(`${host} is not an address of this host`);
  return e;
}

export function bootstrapList(p: Parsed): string[] | false {
  const list = (p.bootstrap as string[] | undefined) ?? [];
  if (list.length === 0) return [...MAINLINE_BOOTSTRAP];
  return list.map((b) => {
    const hp = parseHostPort(b, '--bootstrap');
    return `${hp.host}:${hp.port}`;
  });
}

/**
 * Publish a node's status once a second in DIR/status.json and, with
 * --metrics, the same figures for Prometheus. Returns the stop function.
 */
export async function startReporting(
  p: Parsed,
  dir: string | null,
  snapshot: (state: string) => Record<string, unknown>,
): Promise<(finalState: string) => Promise<void>> {
  const publish = (state: string) => {
    if (dir) writeStatus(dir, snapshot(state));
  };
  publish('running');
  const timer = setInterval(() => publish('running'), STATUS_INTERVAL_MS);
  let server: MetricsServer | null = null;
  if (typeof p.metrics === 'string') {
    const hp = parseHostPort(p.metrics, '--metrics');
    try {
      server = await startMetricsServer({
        host: hp.host,
        port: hp.port,
        snapshot: () => snapshot('running'),
        allowRemote: p['metrics-allow-remote'] === true,
      });
    } catch (e) {
      clearInterval(timer);
      throw e;
    }
  }
  return async (finalState: string) => {
    clearInterval(timer);
    publish(finalState);
    await server?.close();
  };
}
