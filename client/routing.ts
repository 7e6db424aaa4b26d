/**
 * The client's routes: which traffic enters the onion circuit's TUN device.
 *
 * Full mode works as wg-quick does, simplified: first pin the guard (the
 * circuit's first hop, reached over UDP through the physical network) to
 * its current path with a host route, so the link's own datagrams never
 * loop into the tunnel; then cover the whole address space with two
 * half-routes (0.0.0.0/1 and 128.0.0.0/1, and ::/1 and 8000::/1 when the
 * client has an inner IPv6 address). Being more specific than the default
 * route they win over it without deleting it, and they vanish with the TUN.
 * IPv6 without an inner IPv6 address is the kill switch's business.
 *
 * Split mode routes only the listed prefixes into the TUN (plus the guard
 * host route if the guard lies inside one of them).
 *
 * Every route added is recorded; stop() deletes exactly those, newest
 * first, each by its full specification (prefix, gateway, device), so a
 * route somebody else added is never touched.
 */
import net from 'node:net';
import { errors, ShallotError } from '../src/errors.js';
import { cidrContains, type Cidr, formatIp, parseIp } from '../src/net/cidr.js';
import { systemRunner, type CommandRunner } from '../src/sys/command-runner.js';
import { ip } from '../src/tun/iproute.js';

export type RoutingMode = { kind: 'full' } | { kind: 'split'; cidrs: Cidr[] };

export interface ClientRoutingOptions {
  tunName: string;
  guard: { host: string; port: number };
  mode: RoutingMode;
  innerV4?: Cidr;
  innerV6?: Cidr;
  /** Runs `ip` (default: the real one; tests pass a RecordingRunner). */
  runner?: CommandRunner;
}

/** One route as this module adds and deletes it. */
export interface RouteSpec {
  family: 4 | 6;
  /** Network prefix with host bits cleared, e.g. "10.81.0.0/24". */
  dst: string;
  dev: string;
  via?: string;
  role: 'guard' | 'tunnel';
}

/** The part of `ip -j route get ADDR` this module uses. */
export interface RouteLookup {
  dst: string;
  dev: string;
  gateway?: string;
  /** "unicast" when ip leaves it out; "local" for an address of this host. */
  type: string;
}

const DEVICE_NAME = /^[A-Za-z0-9_.-]{1,15}$/;

/** Validate a device name for use on an `ip` or `nft` command line. */
export function checkDeviceName(name: string, what = 'TUN device'): void {
  if (!DEVICE_NAME.test(name)) {
    throw errors.badArgument(
      `${what} name '${name}' must be 1-15 letters, digits, '-', '_' or '.'`,
    );
  }
}

/** Validate the guard's address: an IP literal and a port. */
export function checkGuard(guard: { host: string; port: number }): void {
  if (!net.isIP(guard.host)) {
    throw errors.badArgument(
      `guard address '${guard.host}' is not an IP address (names are not resolved)`,
    );
  }
  if (!Number.isInteger(guard.port) || guard.port < 1 || guard.port > 65535) {
    throw errors.badArgument(`guard port '${guard.port}' is out of range (1-65535)`);
  }
}

/** "10.81.0.77/24" → "10.81.0.0/24": ip refuses prefixes with host bits set. */
export function networkText(c: Cidr): string {
  const out = Buffer.from(c.address);
  let bits = c.prefix;
  for (let i = 0; i < out.length; i += 1) {
    const mask = bits >= 8 ? 0xff : bits <= 0 ? 0 : (0xff << (8 - bits)) & 0xff;
    out[i] = (out[i] as number) & mask;
    bits -= 8;
  }
  return `${formatIp(out)}/${c.prefix}`;
}

function halves(family: 4 | 6): [string, string] {
  return family === 4 ? ['0.0.0.0/1', '128.0.0.0/1'] : ['::/1', '8000::/1'];
}

/**
 * The routes into the TUN for a mode, in the order they are added. A split
 * prefix of length 0 becomes the two halves (a /0 would collide with the
 * default route); duplicates are dropped.
 */
export function planTunnelRoutes(tunName: string, mode: RoutingMode, innerV6?: Cidr): RouteSpec[] {
  const out: RouteSpec[] = [];
  const add = (family: 4 | 6, dst: string) => {
    if (!out.some((r) => r.family === family && r.dst === dst)) {
      out.push({ family, dst, dev: tunName, role: 'tunnel' });
    }
  };
  if (mode.kind === 'full') {
    for (const d of halves(4)) add(4, d);
    if (innerV6) for (const d of halves(6)) add(6, d);
    return out;
  }
  if (mode.cidrs.length === 0) {
    throw errors.badConfig('split routing needs at least one prefix to route into the tunnel');
  }
  for (const c of mode.cidrs) {
    if (c.prefix === 0) for (const d of halves(c.family)) add(c.family, d);
    else add(c.family, networkText(c));
  }
  return out;
}

function specCidr(spec: RouteSpec): { address: Buffer; prefix: number } {
  const [addr, prefix] = spec.dst.split('/');
  return { address: parseIp(addr ?? '') ?? Buffer.alloc(0), prefix: Number(prefix) };
}

/** True if any tunnel route would capture traffic to the guard. */
export function guardNeedsHostRoute(guardHost: string, tunnelRoutes: RouteSpec[]): boolean {
  const g = parseIp(guardHost);
  if (!g) return false;
  return tunnelRoutes.some((r) => {
    const c = specCidr(r);
    return cidrContains({ family: r.family, address: c.address, prefix: c.prefix, text: r.dst }, g);
  });
}

/** Parse `ip -j route get ADDR` output (an array of one object). */
export function parseRouteGet(json: string): RouteLookup {
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch {
    throw errors.system('ip -j route get', `unparsable output: ${json.trim().slice(0, 80)}`);
  }
  const first: unknown = Array.isArray(parsed) ? parsed[0] : undefined;
  if (!first || typeof first !== 'object') {
    throw errors.system('ip -j route get', 'no route in the output');
  }
  const r = first as Record<string, unknown>;
  if (typeof r.dst !== 'string' || typeof r.dev !== 'string') {
    throw errors.system('ip -j route get', 'the route names no destination or device');
  }
  return {
    dst: r.dst,
    dev: r.dev,
    ...(typeof r.gateway === 'string' ? { gateway: r.gateway } : {}),
    type: typeof r.type === 'string' ? r.type : 'unicast',
  };
}

/**
 * The host route that keeps the guard on its current path, or null when the
 * guard is an address of this very host (its traffic never leaves).
 */
export function guardHostRoute(
  guardHost: string,
  lookup: RouteLookup,
  tunName: string,
): RouteSpec | null {
  if (lookup.type === 'local') return null;
  if (lookup.type !== 'unicast') {
    throw errors.badConfig(
      `the guard ${guardHost} is unreachable here (its route is of type '${lookup.type}')`,
    );
  }
  if (lookup.dev === tunName) {
    throw errors.badConfig(
      `the route to the guard ${guardHost} already goes through the tunnel device ${tunName}: ` +
        'the guard must be reachable over the physical network',
    );
  }
  const family = net.isIPv6(guardHost) ? 6 : 4;
  const dst = `${formatIp(parseIp(guardHost) as Buffer)}/${family === 4 ? 32 : 128}`;
  return {
    family,
    dst,
    dev: lookup.dev,
    ...(lookup.gateway !== undefined ? { via: lookup.gateway } : {}),
    role: 'guard',
  };
}

/** The `ip` arguments that add or delete a route exactly as specified. */
export function routeArgs(spec: RouteSpec, action: 'add' | 'del'): string[] {
  return [
    spec.family === 6 ? '-6' : '-4',
    'route',
    action,
    spec.dst,
    ...(spec.via !== undefined ? ['via', spec.via] : []),
    'dev',
    spec.dev,
  ];
}

/** Route text as `ip route` prints it, for describe() and messages. */
export function routeText(spec: RouteSpec): string {
  return `${spec.dst}${spec.via !== undefined ? ` via ${spec.via}` : ''} dev ${spec.dev}`;
}

/** Deleting these means the route is already gone (or its device is). */
const ALREADY_GONE = /No such process|Cannot find device|No such device/;
const EXISTS = /File exists/;

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export class ClientRouting {
  private readonly opts: ClientRoutingOptions;
  private readonly runner: CommandRunner;
  /** Routes this instance added, oldest first. */
  private readonly added: RouteSpec[] = [];
  /** The guard route that was already there (so not ours to delete), if any. */
  private guardRouteFound: RouteSpec | null = null;
  private started = false;

  constructor(opts: ClientRoutingOptions) {
    checkDeviceName(opts.tunName);
    checkGuard(opts.guard);
    if (opts.innerV4 && opts.innerV4.family !== 4) {
      throw errors.badArgument(`inner IPv4 address '${opts.innerV4.text}' is not IPv4`);
    }
    if (opts.innerV6 && opts.innerV6.family !== 6) {
      throw errors.badArgument(`inner IPv6 address '${opts.innerV6.text}' is not IPv6`);
    }
    this.opts = opts;
    this.runner = opts.runner ?? systemRunner;
    // Plan once now so a bad mode is reported at construction.
    this.plan();
  }

  private plan(): RouteSpec[] {
    const tunnel = planTunnelRoutes(this.opts.tunName, this.opts.mode, this.opts.innerV6);
    const g = this.opts.guard.host;
    const hostLen = net.isIPv6(g) ? 128 : 32;
    const gAddr = formatIp(parseIp(g) as Buffer);
    if (tunnel.some((r) => r.dst === `${gAddr}/${hostLen}`)) {
      throw errors.badConfig(
        `the guard ${g} cannot itself be routed into the tunnel (it carries the tunnel)`,
      );
    }
    return tunnel;
  }

  /**
   * Add the routes. Looks up the guard's path before anything is changed;
   * on failure removes whatever it had added and rethrows.
   */
  start(): void {
    if (this.started) return;
    const tunnel = this.plan();
    this.started = true;
    try {
      if (guardNeedsHostRoute(this.opts.guard.host, tunnel)) this.pinGuard();
      for (const spec of tunnel) {
        try {
          ip(routeArgs(spec, 'add'), this.runner);
        } catch (e) {
          if (EXISTS.test(messageOf(e))) {
            throw errors.badConfig(
              `a route to ${spec.dst} already exists (another VPN, or a stale shallot?): ` +
                `see 'ip ${spec.family === 6 ? '-6 ' : ''}route show ${spec.dst}'`,
            );
          }
          throw e;
        }
        this.added.push(spec);
      }
    } catch (e) {
      try {
        this.stop();
      } catch {
        /* the original error matters more */
      }
      throw e;
    }
  }

  private pinGuard(): void {
    const host = this.opts.guard.host;
    let lookup: RouteLookup;
    try {
      lookup = parseRouteGet(ip(['-j', 'route', 'get', host], this.runner));
    } catch (e) {
      if (e instanceof ShallotError && e.kind === 'user') throw e;
      throw errors.system(`finding the route to the guard ${host}`, e);
    }
    const spec = guardHostRoute(host, lookup, this.opts.tunName);
    if (!spec) return;
    try {
      ip(routeArgs(spec, 'add'), this.runner);
      this.added.push(spec);
    } catch (e) {
      // The lookup already used that host route (the most specific one), so
      // it keeps the guard outside the tunnel; it is not ours to delete.
      if (!EXISTS.test(messageOf(e))) throw e;
      this.guardRouteFound = spec;
    }
  }

  /**
   * Delete the routes this instance added, newest first. Routes already gone
   * (or whose device is gone) are fine; other failures are reported after
   * trying them all, and the failed ones are kept for another stop().
   */
  stop(): void {
    const failed: RouteSpec[] = [];
    const why: string[] = [];
    while (this.added.length > 0) {
      const spec = this.added.pop() as RouteSpec;
      try {
        ip(routeArgs(spec, 'del'), this.runner);
      } catch (e) {
        const m = messageOf(e);
        if (ALREADY_GONE.test(m)) continue;
        failed.unshift(spec);
        why.push(m);
      }
    }
    this.added.push(...failed);
    this.guardRouteFound = null;
    this.started = failed.length > 0;
    if (why.length > 0) {
      throw errors.system(
        `removing ${why.length} route(s)`,
        why.map((w) => w.split('\n')[0]).join('; '),
      );
    }
  }

  describe(): object {
    const o = this.opts;
    const guardRoute = this.added.find((r) => r.role === 'guard') ?? this.guardRouteFound;
    return {
      tun: o.tunName,
      guard: net.isIPv6(o.guard.host)
        ? `[${o.guard.host}]:${o.guard.port}`
        : `${o.guard.host}:${o.guard.port}`,
      mode: o.mode.kind,
      ...(o.mode.kind === 'split' ? { cidrs: o.mode.cidrs.map((c) => c.text) } : {}),
      ...(o.innerV4 ? { innerV4: o.innerV4.text } : {}),
      ...(o.innerV6 ? { innerV6: o.innerV6.text } : {}),
      active: this.started,
      guardRoute: guardRoute
        ? { route: routeText(guardRoute), addedByUs: this.added.includes(guardRoute) }
        : null,
      routes: this.added.map(routeText),
    };
  }
}
