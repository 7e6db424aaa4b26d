/**
 * Path selection and entry guards.
 *
 * A path is guard, middle(s), exit: distinct relays, no two in the same
 * IPv4 /16 (nor the same IPv6 /32), the exit an exit. The guard comes from
 * a small persistent list kept in the state directory (Tor's entry-guard
 * idea): a client keeps meeting the same few first hops instead of a new
 * one per circuit, which limits how often it chooses a hostile guard.
 */
import { randomInt } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Descriptor } from '../src/descriptor/descriptor.js';
import { errors } from '../src/errors.js';
import { parseIp } from '../src/net/cidr.js';

export const MAX_GUARDS = 3;
/** At most this many relays of one IPv4 /24 (IPv6 /48) take part in a path choice. */
export const MAX_PER_NET24 = 2;
const GUARDS_FILE = 'guards.json';

/** The network a relay counts as for diversity: its IPv4 /16 or IPv6 /32. */
export function familyNet(d: Descriptor): string {
  const a = d.addresses[0];
  const ip = a ? parseIp(a.host) : null;
  if (!ip) return `?${d.id}`;
  return ip.length === 4 ? `${ip[0]}.${ip[1]}` : ip.subarray(0, 4).toString('hex');
}

/** The /24 (IPv6 /48) a relay's first address is in. */
export function net24(d: Descriptor): string {
  const a = d.addresses[0];
  const ip = a ? parseIp(a.host) : null;
  if (!ip) return `?${d.id}`;
  return ip.length === 4 ? `${ip[0]}.${ip[1]}.${ip[2]}` : ip.subarray(0, 6).toString('hex');
}

/**
 * Keep at most MAX_PER_NET24 relays per /24, chosen at random: whoever
 * floods the DHT with relays from one network gains little.
 */
export function capPerNet24(relays: Descriptor[], rnd: (n: number) => number): Descriptor[] {
  const shuffled = [...relays];
  for (let i = shuffled.length - 1; i > 0; i -= 1) {
    const j = rnd(i + 1);
    [shuffled[i], shuffled[j]] = [shuffled[j] as Descriptor, shuffled[i] as Descriptor];
  }
  const count = new Map<string, number>();
  return shuffled.filter((r) => {
    const k = net24(r);
    const n = count.get(k) ?? 0;
    count.set(k, n + 1);
    return n < MAX_PER_NET24;
  });
}

export interface PathOptions {
  hops: number;
  exitId?: string | undefined;
  /** Relays not to use now (recently failed). */
  avoid: Set<string>;
  /** Test only: allow relays in one /16. */
  allowSameSubnet: boolean;
  random?: (n: number) => number;
}

export class GuardList {
  guards: string[] = [];

  constructor(private readonly dir: string | null) {
    if (!dir) return;
    try {
      const doc = JSON.parse(fs.readFileSync(path.join(dir, GUARDS_FILE), 'utf8')) as {
        guards?: unknown;
      };
      if (Array.isArray(doc.guards)) {
        this.guards = doc.guards
          .filter((g): g is string => typeof g === 'string' && /^[0-9a-f]{64}$/.test(g))
          .slice(0, MAX_GUARDS);
      }
    } catch {
      /* no guards yet */
    }
  }

  save(): void {
    if (!this.dir) return;
    const file = path.join(this.dir, GUARDS_FILE);
    fs.writeFileSync(file, JSON.stringify({ guards: this.guards }, null, 2) + '\n', {
      mode: 0o600,
    });
  }

  add(id: string): void {
    if (this.guards.includes(id)) return;
    this.guards.push(id);
    if (this.guards.length > MAX_GUARDS) this.guards.shift();
    this.save();
  }
}

export function selectPath(relays: Descriptor[], guards: GuardList, o: PathOptions): Descriptor[] {
  const rnd = o.random ?? ((n: number) => randomInt(n));
  // Chosen guards and a requested exit are exempt from the /24 cap.
  const fresh = relays.filter((r) => !o.avoid.has(r.id));
  const pinned = fresh.filter((r) => guards.guards.includes(r.id) || r.id === o.exitId);
  const usable = [
    ...pinned,
    ...capPerNet24(
      fresh.filter((r) => !pinned.includes(r)),
      rnd,
    ),
  ];
  const exits = usable.filter((r) => r.roles.exit && (!o.exitId || r.id === o.exitId));
  if (exits.length === 0) {
    throw errors.badConfig(
      o.exitId
        ? `exit ${o.exitId.slice(0, 16)}... is not among the usable relays`
        : 'no usable exit among the known relays',
    );
  }
  const exit = exits[rnd(exits.length)] as Descriptor;
  if (o.hops === 1) return [exit];
  const nets = new Set([familyNet(exit)]);
  const fits = (r: Descriptor, taken: Descriptor[]) =>
    r.roles.relay &&
    !taken.some((t) => t.id === r.id) &&
    (o.allowSameSubnet || !nets.has(familyNet(r)));
  // Guard: the first listed guard that fits, else a new one.
  const byId = new Map(usable.map((r) => [r.id, r]));
  let guard = guards.guards.map((g) => byId.get(g)).find((r) => r && fits(r, [exit]));
  if (!guard) {
    const candidates = usable.filter((r) => fits(r, [exit]) && !r.roles.exit);
    const pool = candidates.length > 0 ? candidates : usable.filter((r) => fits(r, [exit]));
    if (pool.length === 0) throw notEnough(o);
    guard = pool[rnd(pool.length)] as Descriptor;
    guards.add(guard.id);
  }
  const path = [guard];
  nets.add(familyNet(guard));
  while (path.length < o.hops - 1) {
    const taken = [...path, exit];
    const pool = usable.filter((r) => fits(r, taken));
    if (pool.length === 0) throw notEnough(o);
    const m = pool[rnd(pool.length)] as Descriptor;
    path.push(m);
    nets.add(familyNet(m));
  }
  path.push(exit);
  return path;
}

function notEnough(o: PathOptions) {
  return errors.badConfig(
    `not enough usable relays for a ${o.hops}-hop path in distinct /16 networks` +
      (o.allowSameSubnet ? '' : ' (testing on one network? --allow-same-subnet)'),
  );
}
