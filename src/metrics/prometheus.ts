/**
 * Prometheus metrics: the node's once-a-second status object rendered in
 * the text exposition format (version 0.0.4), and a small loopback-only
 * HTTP server answering `GET /metrics` with it.
 *
 * Rendering rules (`renderMetrics`):
 *  - Every finite number at a path becomes `shallot_<path>`: path segments
 *    snake_cased (camelCase → camel_case, anything outside [a-zA-Z0-9_]
 *    → `_`, runs of `_` collapsed; a key left empty is skipped) and
 *    joined by `_`.
 *    `{ link: { counters: { rxDatagrams: 5 } } }` → `shallot_link_counters_rx_datagrams 5`.
 *  - Type: `counter` when any enclosing object is named `drops` or
 *    `counters`, or the last segment reads `*_in`, `*_out`, `*_sent`,
 *    `*_received` (cellsIn, helloVerifySent) or `rx_*` / `tx_*`
 *    (rxBytes); `gauge` otherwise. Names get no `_total` suffix.
 *  - Arrays of objects become labelled series. The array's name is made
 *    singular (`peers` → `peer`) and is both the path segment and a label
 *    whose value is the element's `id`, else its `address`, else its
 *    index; an element's string `state` becomes a `state` label.
 *    `link.peers[{id: 'ab', state: 'up', rxBytes: 9}]` →
 *    `shallot_link_peer_rx_bytes{peer="ab",state="up"} 9`.
 *  - Strings, booleans, null, arrays of non-objects and non-plain objects
 *    (Buffer, Map, class instances) are skipped, except a top-level string
 *    `role`, which becomes `shallot_info{role="relay",id="<top-level id>"} 1`.
 *  - Output is sorted by metric name, then by label set; each family has
 *    one `# TYPE` line. When two paths map to the same series (e.g. keys
 *    `a-b` and `a_b`, or two peers with one id) the first one wins, so a
 *    scrape never holds a duplicate series.
 */
import http from 'node:http';
import net from 'node:net';
import { errors } from '../errors.js';
import { parseIp } from '../net/cidr.js';

export const METRICS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';
export const METRICS_PATH = '/metrics';

const PREFIX = 'shallot';
/** Deeper than any status object; guards against runaway or cyclic input. */
const MAX_DEPTH = 12;
const HEADERS_TIMEOUT_MS = 5_000;
const REQUEST_TIMEOUT_MS = 10_000;
const SOCKET_IDLE_MS = 10_000;
const MAX_CONNECTIONS = 8;
const MAX_HEADER_BYTES = 8 * 1024;

type MetricType = 'counter' | 'gauge';

interface Family {
  type: MetricType;
  /** Rendered label set ('' or '{a="b"}') → value. */
  samples: Map<string, number>;
}

type Labels = [name: string, value: string][];

/** Snake_case one path segment: camelCase split, other characters to `_`. */
export function snakeCase(key: string): string {
  return key
    .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
    .replace(/([A-Z]+)([A-Z][a-z])/g, '$1_$2')
    .toLowerCase()
    .replace(/[^a-z0-9_]/g, '_')
    .replace(/_+/g, '_')
    .replace(/^_|_$/g, '');
}

/** Label value escaping of the text format: backslash, double quote, newline. */
export function escapeLabelValue(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

function singular(segment: string): string {
  if (segment.endsWith('sses')) return segment.slice(0, -2);
  if (segment.length > 1 && segment.endsWith('s') && !segment.endsWith('ss')) {
    return segment.slice(0, -1);
  }
  return segment;
}

function metricType(segments: string[]): MetricType {
  const last = segments[segments.length - 1] ?? '';
  for (let i = 0; i < segments.length - 1; i++) {
    if (segments[i] === 'drops' || segments[i] === 'counters') return 'counter';
  }
  if (/(^|_)(in|out|sent|received)$/.test(last)) return 'counter';
  if (/^(rx|tx)(_|$)/.test(last)) return 'counter';
  return 'gauge';
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v) as unknown;
  return proto === Object.prototype || proto === null;
}

function renderLabels(labels: Labels): string {
  if (labels.length === 0) return '';
  return `{${labels.map(([k, v]) => `${k}="${escapeLabelValue(v)}"`).join(',')}}`;
}

function withLabel(labels: Labels, name: string, value: string): Labels {
  return [...labels.filter(([k]) => k !== name), [name, value]];
}

function formatValue(n: number): string {
  return Object.is(n, -0) ? '0' : String(n);
}

class Collector {
  readonly families = new Map<string, Family>();
  private readonly seen = new Set<object>();

  add(name: string, type: MetricType, labels: Labels, value: number): void {
    let family = this.families.get(name);
    if (!family) {
      family = { type, samples: new Map() };
      this.families.set(name, family);
    }
    const key = renderLabels(labels);
    if (!family.samples.has(key)) family.samples.set(key, value);
  }

  walk(value: unknown, segments: string[], labels: Labels, depth: number): void {
    if (typeof value === 'number') {
      if (Number.isFinite(value) && segments.length > 0) {
        const name = [PREFIX, ...segments].join('_').replace(/_+/g, '_');
        this.add(name, metricType(segments), labels, value);
      }
      return;
    }
    if (depth >= MAX_DEPTH || typeof value !== 'object' || value === null) return;
    if (this.seen.has(value)) return;
    this.seen.add(value);
    try {
      if (Array.isArray(value)) this.walkArray(value, segments, labels, depth);
      else if (isPlainObject(value)) {
        for (const [k, v] of Object.entries(value)) {
          const seg = snakeCase(k);
          if (seg !== '') this.walk(v, [...segments, seg], labels, depth + 1);
        }
      }
    } finally {
      this.seen.delete(value);
    }
  }

  private walkArray(items: unknown[], segments: string[], labels: Labels, depth: number): void {
    const last = segments[segments.length - 1];
    if (last === undefined) return;
    const one = singular(last);
    const path = [...segments.slice(0, -1), one];
    items.forEach((item, index) => {
      if (!isPlainObject(item)) return;
      const ident = [item.id, item.address].find((x) => typeof x === 'string' && x !== '');
      let l = withLabel(labels, one, typeof ident === 'string' ? ident : String(index));
      if (typeof item.state === 'string') l = withLabel(l, 'state', item.state);
      this.walk(item, path, l, depth + 1);
    });
  }
}

/** The status object in Prometheus text format 0.0.4 (see the rules above). */
export function renderMetrics(status: Record<string, unknown>): string {
  const c = new Collector();
  if (typeof status.role === 'string') {
    const labels: Labels = [['role', status.role]];
    if (typeof status.id === 'string') labels.push(['id', status.id]);
    c.add(`${PREFIX}_info`, 'gauge', labels, 1);
  }
  c.walk(status, [], [], 0);
  const names = [...c.families.keys()].sort(compare);
  const out: string[] = [];
  for (const name of names) {
    const family = c.families.get(name) as Family;
    out.push(`# TYPE ${name} ${family.type}`);
    for (const key of [...family.samples.keys()].sort(compare)) {
      out.push(`${name}${key} ${formatValue(family.samples.get(key) as number)}`);
    }
  }
  return out.length === 0 ? '' : out.join('\n') + '\n';
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

// --- HTTP server ---------------------------------------------------------------

export interface MetricsServerOptions {
  host: string;
  port: number;
  /** The current status object; called once per scrape. */
  snapshot: () => Record<string, unknown>;
  /** Allow a non-loopback bind address (--metrics-allow-remote). */
  allowRemote?: boolean;
}

export interface MetricsServer {
  close(): Promise<void>;
  /** The bound address (port 0 in the options becomes the real port). */
  address: { host: string; port: number };
}

/** 127.0.0.0/8, ::1, ::ffff:127.x.x.x (brackets allowed), or `localhost`. */
export function isLoopbackHost(host: string): boolean {
  if (host === 'localhost') return true;
  const ip = parseIp(host.replace(/^\[(.*)\]$/, '$1'));
  if (!ip) return false;
  if (ip.length === 4) return ip[0] === 127;
  const zeros = ip.subarray(0, 10).every((b) => b === 0);
  if (zeros && ip[10] === 0 && ip[11] === 0) {
    return ip.subarray(12, 15).every((b) => b === 0) && ip[15] === 1;
  }
  return zeros && ip[10] === 0xff && ip[11] === 0xff && ip[12] === 127;
}

function hostPort(host: string, port: number): string {
  return net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
}

function listenError(e: unknown, host: string, port: number): Error {
  const code = (e as NodeJS.ErrnoException).code;
  const where = `TCP ${hostPort(host, port)}`;
  if (code === 'EADDRINUSE') return errors.badArgument(`metrics: ${where} is already in use`);
  if (code === 'EADDRNOTAVAIL') {
    return errors.badArgument(`metrics: ${host} is not an address of this host`);
  }
  if (code === 'EACCES') {
    return errors.badArgument(`metrics: no permission to bind ${where} (use a port >= 1024)`);
  }
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') {
    return errors.badArgument(`metrics: cannot resolve ${host}`);
  }
  return errors.system(`metrics: binding ${where}`, e);
}

function reply(
  res: http.ServerResponse,
  status: number,
  body: string,
  headers: Record<string, string> = {},
): void {
  res.writeHead(status, {
    'content-type': status === 200 ? METRICS_CONTENT_TYPE : 'text/plain; charset=utf-8',
    'content-length': String(Buffer.byteLength(body)),
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(body);
}

function handle(
  req: http.IncomingMessage,
  res: http.ServerResponse,
  snapshot: () => Record<string, unknown>,
): void {
  // The body is never read: a request that has one gets its connection
  // closed after the answer instead of being drained for keep-alive.
  const hasBody =
    req.headers['transfer-encoding'] !== undefined ||
    (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0');
  const close: Record<string, string> = hasBody ? { connection: 'close' } : {};
  const url = req.url ?? '';
  const q = url.indexOf('?');
  const pathname = q < 0 ? url : url.slice(0, q);
  if (pathname !== METRICS_PATH) {
    reply(res, 404, 'not found: metrics are at /metrics\n', close);
    return;
  }
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    reply(res, 405, 'method not allowed\n', { allow: 'GET, HEAD', connection: 'close' });
    return;
  }
  let body: string;
  try {
    body = renderMetrics(snapshot());
  } catch {
    reply(res, 500, 'status unavailable\n', close);
    return;
  }
  reply(res, 200, body, close);
}

/**
 * Serve `GET /metrics` on host:port. Refuses a non-loopback address unless
 * `allowRemote`; bind failures are one-line user errors. Bounded: 5 s for
 * the request headers, 8 connections at once, no request body read.
 */
export async function startMetricsServer(options: MetricsServerOptions): Promise<MetricsServer> {
  const { host, port, snapshot } = options;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw errors.badArgument(`metrics: port ${port} is out of range (0-65535)`);
  }
  if (!options.allowRemote && !isLoopbackHost(host)) {
    throw errors.badArgument(
      'metrics must bind to localhost (127.0.0.1 or ::1); exposing them elsewhere needs --metrics-allow-remote',
    );
  }
  const bindHost = host.replace(/^\[(.*)\]$/, '$1');
  const server = http.createServer(
    {
      headersTimeout: HEADERS_TIMEOUT_MS,
      requestTimeout: REQUEST_TIMEOUT_MS,
      // Timeouts are enforced by a periodic sweep, 30 s apart by default.
      connectionsCheckingInterval: 1_000,
      maxHeaderSize: MAX_HEADER_BYTES,
    },
    (req, res) => handle(req, res, snapshot),
  );
  server.maxConnections = MAX_CONNECTIONS;
  server.maxRequestsPerSocket = 100;
  server.timeout = SOCKET_IDLE_MS;

  await new Promise<void>((resolve, reject) => {
    const onError = (e: unknown) => reject(listenError(e, bindHost, port));
    server.once('error', onError);
    server.listen({ host: bindHost, port, exclusive: true }, () => {
      server.off('error', onError);
      resolve();
    });
  });
  // After a successful bind, a server error must not take the node down.
  server.on('error', () => undefined);

  const bound = server.address() as net.AddressInfo;
  let closing: Promise<void> | null = null;
  return {
    address: { host: bound.address, port: bound.port },
    close: () => {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      return closing;
    },
  };
}
