/**
 * Path selection and entry guards.
 *
 * A path is guard, middle(s), exit: distinct relays, no two in the same
 * IPv4 /16 (nor the same IPv6 /32), the exit an exit. The guard comes from
 * persistent guard state (guards.ts, Tor's guard specification): a client
 * keeps meeting the same few first hops instead of a new one per circuit,
 * which limits how often it chooses a hostile guard.
 */
import { randomInt } from 'node:crypto';
import type { Descriptor } from '../src/descriptor/descriptor.js';
import { errors, ShallotError } from '../src/errors.js';
import { parseIp } from '../src/net/cidr.js';
import { GuardList, type GuardChoice } from './guards.js';

export { GuardList };
/** At most this many relays of one IPv4 /24 (IPv6 /48) take part in a path choice. */
export const MAX_PER_NET24 = 2;

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
  random?: ((n: number) => number) | undefined;
  /** The time for the guard state (ms). */
  now: number;
}

const randomBelow = (n: number): number => randomInt(n);

/** No guard may be tried now (the network looks down): wait until `untilMs`. */
export class GuardWait extends ShallotError {
  constructor(
    readonly untilMs: number,
    reason: string,
  ) {
    super('GUARD_WAIT', 'transient', reason);
  }
}

/**
 * Keep the guard state's view of the relay list current (listing marks,
 * expiry, sampling when needed) while no path is being chosen: the client
 * calls this from its tick so that a guard gone for good is replaced even
 * while a circuit runs.
 */
export function updateGuards(
  relays: Descriptor[],
  guards: GuardList,
  now: number,
  rnd: (n: number) => number = randomBelow,
): Set<string> {
  const sampled = new Set(guards.guards);
  const relaysOnly = relays.filter((r) => r.roles.relay);
  const candidates = [
    ...relaysOnly.filter((r) => sampled.has(r.id)),
    ...capPerNet24(
      relaysOnly.filter((r) => !sampled.has(r.id)),
      rnd,
    ),
  ];
  guards.update(
    candidates.map((r) => ({ id: r.id, exit: r.roles.exit })),
    now,
    rnd,
  );
  return new Set(candidates.map((r) => r.id));
}

export function selectPath(relays: Descriptor[], guards: GuardList, o: PathOptions): Descriptor[] {
  const rnd = o.random ?? randomBelow;
  const now = o.now;
  // The sampled guards and a requested exit are exempt from the /24 cap.
  const sampled = new Set(guards.guards);
  const fresh = relays.filter((r) => !o.avoid.has(r.id) || sampled.has(r.id));
  const pinned = fresh.filter((r) => sampled.has(r.id) || r.id === o.exitId);
  const usable = [
    ...pinned,
    ...capPerNet24(
      fresh.filter((r) => !pinned.includes(r)),
      rnd,
    ),
  ];
  const middles = usable.filter((r) => !o.avoid.has(r.id));
  const exits = middles.filter((r) => r.roles.exit && (!o.exitId || r.id === o.exitId));
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
  // Guard: from the guard state (sampled set, primaries, retries).
  const byId = new Map(usable.map((r) => [r.id, r]));
  const candidates = usable.filter((r) => r.roles.relay);
  if (!candidates.some((r) => fits(r, [exit]))) throw notEnough(o);
  guards.update(
    candidates.map((r) => ({ id: r.id, exit: r.roles.exit })),
    now,
    rnd,
  );
  const choice: GuardChoice = guards.choose(
    new Set(candidates.map((r) => r.id)),
    (id) => {
      const r = byId.get(id);
      return r !== undefined && fits(r, [exit]);
    },
    now,
  );
  if (choice.kind === 'wait') throw new GuardWait(choice.untilMs, choice.reason);
  const guard = byId.get(choice.id) as Descriptor;
  const path = [guard];
  nets.add(familyNet(guard));
  while (path.length < o.hops - 1) {
    const taken = [...path, exit];
    const pool = middles.filter((r) => fits(r, taken));
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
