/**
 * Inner address leases of an exit: each session (circuit) gets one IPv4
 * address from the pool, and an IPv6 address too if the exit has an IPv6
 * pool. Replies coming back from the kernel are mapped to their session by
 * destination address (lookupV4/lookupV6, keyed like src/net/ip-packet.ts).
 *
 * Host index 0 (the network), 1 (the exit's own TUN address, the gateway)
 * and the last one (IPv4 broadcast; for IPv6 kept free for symmetry) are
 * never leased. A session's IPv6 address has the same host index as its
 * IPv4 one. New leases take the next free index round-robin, so a freed
 * address is reused as late as possible: conntrack entries and in-flight
 * replies for the old session then have time to die out.
 */
import { errors } from '../src/errors.js';
import { type Cidr } from '../src/net/cidr.js';

export interface AddressPoolOptions {
  /** At most this many leases at once (also bounded by the pool size). */
  maxLeases: number;
  /** expire() frees leases not leased or touched for longer than this. */
  idleExpiryMs: number;
}

export interface Lease {
  v4: Buffer;
  v6: Buffer | null;
}

interface Entry {
  key: string;
  index: number;
  v4: Buffer;
  v4Key: number;
  v6: Buffer | null;
  v6Key: string | null;
  lastUsed: number;
  lease: Lease;
}

const DEFAULTS: AddressPoolOptions = { maxLeases: 1024, idleExpiryMs: 10 * 60_000 };

/** The network address (host bits cleared) of a CIDR. */
function networkOf(cidr: Cidr): Buffer {
  const out = Buffer.from(cidr.address);
  let bits = cidr.prefix;
  for (let i = 0; i < out.length; i += 1) {
    const m = bits >= 8 ? 0xff : bits <= 0 ? 0 : (0xff << (8 - bits)) & 0xff;
    out[i] = (out[i] as number) & m;
    bits -= 8;
  }
  return out;
}

/** network + index, for an index below 2^32 that fits in the host bits. */
function withIndex(network: Buffer, index: number): Buffer {
  const out = Buffer.from(network);
  const at = out.length - 4;
  out.writeUInt32BE((out.readUInt32BE(at) | index) >>> 0, at);
  return out;
}

export class AddressPool {
  private readonly net4: Buffer;
  private readonly net6: Buffer | null;
  /** Host indices [first, last] may be leased. */
  private readonly first = 2;
  private readonly last: number;
  private readonly capacity: number;
  private readonly idleExpiryMs: number;
  private readonly byKey = new Map<string, Entry>();
  private readonly byIndex = new Map<number, Entry>();
  private readonly byV4 = new Map<number, string>();
  private readonly byV6 = new Map<string, string>();
  private cursor: number;

  constructor(v4: Cidr, v6?: Cidr, options: AddressPoolOptions = DEFAULTS) {
    if (v4.family !== 4) throw errors.badConfig(`exit pool ${v4.text} is not an IPv4 network`);
    if (v4.prefix > 30) {
      throw errors.badConfig(`exit pool ${v4.text} is too small (at most /30)`);
    }
    if (v6 && v6.family !== 6) {
      throw errors.badConfig(`exit pool ${v6.text} is not an IPv6 network`);
    }
    if (v6 && v6.prefix > 126) {
      throw errors.badConfig(`exit pool ${v6.text} is too small (at most /126)`);
    }
    const { maxLeases, idleExpiryMs } = options;
    if (!Number.isInteger(maxLeases) || maxLeases < 1) {
      throw errors.badConfig(`the exit's lease limit must be a positive integer, not ${maxLeases}`);
    }
    if (!(idleExpiryMs > 0)) {
      throw errors.badConfig(`the exit's lease idle expiry must be positive, not ${idleExpiryMs}`);
    }
    this.net4 = networkOf(v4);
    this.net6 = v6 ? networkOf(v6) : null;
    // Last host index: one below the all-ones host part.
    let last = 2 ** (32 - v4.prefix) - 2;
    if (v6 && 128 - v6.prefix < 32) last = Math.min(last, 2 ** (128 - v6.prefix) - 2);
    this.last = last;
    this.capacity = Math.min(maxLeases, last - this.first + 1);
    this.idleExpiryMs = idleExpiryMs;
    this.cursor = this.first;
  }

  /** The exit's own TUN address (first host of the pool), never leased. */
  gatewayV4(): Buffer {
    return withIndex(this.net4, 1);
  }

  gatewayV6(): Buffer | null {
    return this.net6 ? withIndex(this.net6, 1) : null;
  }

  /** Number of current leases. */
  get size(): number {
    return this.byKey.size;
  }

  /** Most leases the pool can hold at once. */
  get maxLeases(): number {
    return this.capacity;
  }

  /**
   * The lease of `sessionKey` (refreshed) or a new one; null when the pool
   * is full. The returned buffers are shared: do not modify them.
   */
  lease(sessionKey: string, now: number): Lease | null {
    const existing = this.byKey.get(sessionKey);
    if (existing) {
      existing.lastUsed = now;
      return existing.lease;
    }
    if (this.byKey.size >= this.capacity) return null;
    // size < capacity <= number of indices, so a free index exists.
    let index = this.cursor;
    while (this.byIndex.has(index)) index = index >= this.last ? this.first : index + 1;
    this.cursor = index >= this.last ? this.first : index + 1;
    const v4 = withIndex(this.net4, index);
    const v6 = this.net6 ? withIndex(this.net6, index) : null;
    const entry: Entry = {
      key: sessionKey,
      index,
      v4,
      v4Key: v4.readUInt32BE(0),
      v6,
      v6Key: v6 ? v6.toString('hex') : null,
      lastUsed: now,
      lease: { v4, v6 },
    };
    this.byKey.set(sessionKey, entry);
    this.byIndex.set(index, entry);
    this.byV4.set(entry.v4Key, sessionKey);
    if (entry.v6Key !== null) this.byV6.set(entry.v6Key, sessionKey);
    return entry.lease;
  }

  /** Mark a lease used (e.g. on traffic); false if the key has none. */
  touch(sessionKey: string, now: number): boolean {
    const e = this.byKey.get(sessionKey);
    if (!e) return false;
    e.lastUsed = now;
    return true;
  }

  /** Free a lease; false if the key had none. */
  release(sessionKey: string): boolean {
    const e = this.byKey.get(sessionKey);
    if (!e) return false;
    this.byKey.delete(sessionKey);
    this.byIndex.delete(e.index);
    this.byV4.delete(e.v4Key);
    if (e.v6Key !== null) this.byV6.delete(e.v6Key);
    return true;
  }

  /** Free leases idle for longer than idleExpiryMs; returns their keys. */
  expire(now: number): string[] {
    const freed: string[] = [];
    for (const e of this.byKey.values()) {
      if (now - e.lastUsed > this.idleExpiryMs) freed.push(e.key);
    }
    for (const k of freed) this.release(k);
    return freed;
  }

  /** Session holding an IPv4 address (as an unsigned 32-bit number). */
  lookupV4(address: number): string | undefined {
    return this.byV4.get(address);
  }

  /** Session holding an IPv6 address (as 32 hex digits, lower case). */
  lookupV6(hex: string): string | undefined {
    return this.byV6.get(hex);
  }
}
