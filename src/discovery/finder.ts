/**
 * The client side of discovery: find the relays of a network through the
 * DHT, keep a bounded, verified cache of their descriptors on disk, and
 * refresh it in the background.
 *
 * For each peer announced on the network's info-hash: ask it for its key
 * (key-query.ts), fetch the descriptor stored under that key (BEP 44),
 * and keep it only if its signature and expiry check out, it is for this
 * network, and it lists the announced address. Everything rejected is
 * counted by reason. The cache survives restarts (descriptors are
 * re-verified when loaded), so a client can build its first circuit with
 * no DHT at all.
 */
import dgram from 'node:dgram';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import {
  descriptorFromText,
  descriptorToText,
  verifyDescriptor,
  type Descriptor,
} from '../descriptor/descriptor.js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { DhtNode, networkInfoHash } from './dht-node.js';
import { decodeKeyAnswer, encodeKeyQuery } from './key-query.js';

export const CACHE_FILE = 'relays-cache.txt';
export const MAX_CACHED_RELAYS = 1000;
export const KEY_QUERY_TIMEOUT_MS = 1000;
export const KEY_QUERY_TRIES = 2;
const FETCH_CONCURRENCY = 16;

export interface FinderCounters {
  refreshes: number;
  lastRefreshAt: string | null;
  lastRefreshMs: number;
  peersSeen: number;
  keyAnswers: number;
  noKeyAnswer: number;
  itemsMissing: number;
  accepted: number;
  rejected: Record<string, number>;
}

export interface RelayFinderOptions {
  dht: DhtNode;
  network: string;
  stateDir: string | null;
  log?: Logger;
  now?: () => number;
}

interface Entry {
  descriptor: Descriptor;
  wire: Buffer;
}

export class RelayFinder {
  readonly counters: FinderCounters = {
    refreshes: 0,
    lastRefreshAt: null,
    lastRefreshMs: 0,
    peersSeen: 0,
    keyAnswers: 0,
    noKeyAnswer: 0,
    itemsMissing: 0,
    accepted: 0,
    rejected: {},
  };
  private readonly cache = new Map<string, Entry>();
  private readonly log: Logger;
  private readonly now: () => number;
  private socket4: dgram.Socket | undefined;
  private socket6: dgram.Socket | undefined;
  private stopped = false;
  private readonly waiting = new Map<string, (key: Buffer | null) => void>();
  private refreshing: Promise<number> | null = null;

  constructor(private readonly options: RelayFinderOptions) {
    this.log = options.log ?? silentLogger;
    this.now = options.now ?? Date.now;
  }

  private nowS(): number {
    return Math.floor(this.now() / 1000);
  }

  /** Load the on-disk cache (each descriptor verified again). Returns how many are usable. */
  loadCache(): number {
    const dir = this.options.stateDir;
    if (!dir) return 0;
    let text = '';
    try {
      text = fs.readFileSync(path.join(dir, CACHE_FILE), 'utf8');
    } catch {
      return 0;
    }
    for (const line of text.split('\n').slice(0, MAX_CACHED_RELAYS)) {
      const wire = descriptorFromText(line.trim());
      if (!wire) continue;
      const r = verifyDescriptor(wire, { now: this.nowS(), network: this.options.network });
      if (r.ok) this.keep(r.descriptor, r.wire);
    }
    return this.cache.size;
  }

  private saveCache(): void {
    const dir = this.options.stateDir;
    if (!dir) return;
    const file = path.join(dir, CACHE_FILE);
    const lines = [...this.cache.values()].map((e) => descriptorToText(e.wire));
    try {
      fs.writeFileSync(`${file}.tmp`, lines.join('\n') + '\n', { mode: 0o600 });
      fs.renameSync(`${file}.tmp`, file);
    } catch {
      /* best effort: the cache is an optimisation */
    }
  }

  private keep(d: Descriptor, wire: Buffer): void {
    const old = this.cache.get(d.id);
    if (old && old.descriptor.published >= d.published) return;
    if (!old && this.cache.size >= MAX_CACHED_RELAYS) return;
    this.cache.set(d.id, { descriptor: d, wire });
  }

  /** The cached descriptors that have not expired. */
  relays(): Descriptor[] {
    const now = this.nowS();
    const out: Descriptor[] = [];
    for (const [id, e] of this.cache) {
      if (e.descriptor.expires <= now) this.cache.delete(id);
      else out.push(e.descriptor);
    }
    return out;
  }

  private reject(reason: string): void {
    this.counters.rejected[reason] = (this.counters.rejected[reason] ?? 0) + 1;
  }

  /** One discovery round; concurrent callers share it. Resolves with the number of relays known. */
  refresh(): Promise<number> {
    this.refreshing ??= this.refreshOnce().finally(() => {
      this.refreshing = null;
    });
    return this.refreshing;
  }

  private async refreshOnce(): Promise<number> {
    const started = this.now();
    const peers = await this.options.dht.lookup(networkInfoHash(this.options.network));
    this.counters.peersSeen += peers.length;
    let next = 0;
    const worker = async () => {
      while (next < peers.length) {
        const peer = peers[next++] as { host: string; port: number };
        await this.fetchOne(peer.host, peer.port);
      }
    };
    await Promise.all(Array.from({ length: FETCH_CONCURRENCY }, worker));
    this.counters.refreshes += 1;
    this.counters.lastRefreshAt = new Date().toISOString();
    this.counters.lastRefreshMs = this.now() - started;
    this.saveCache();
    const n = this.relays().length;
    this.log.debug(`discovery: ${peers.length} announced, ${n} relays known`);
    return n;
  }

  private async fetchOne(host: string, port: number): Promise<void> {
    const key = await this.queryKey(host, port);
    if (!key) {
      this.counters.noKeyAnswer += 1;
      return;
    }
    this.counters.keyAnswers += 1;
    const item = await this.options.dht.getMutable(key);
    if (!item) {
      this.counters.itemsMissing += 1;
      return;
    }
    const r = verifyDescriptor(item.value, { now: this.nowS(), network: this.options.network });
    if (!r.ok) {
      this.reject(r.reason);
      return;
    }
    if (!r.descriptor.publicKey.equals(key)) {
      this.reject('wrong-key');
      return;
    }
    if (!r.descriptor.addresses.some((a) => a.host === host && a.port === port)) {
      this.reject('address-mismatch');
      return;
    }
    this.counters.accepted += 1;
    this.keep(r.descriptor, r.wire);
  }

  /** Bind the IPv4 query socket now; returns its port (for the kill switch). */
  bind(): Promise<number> {
    const s = this.socketFor('0.0.0.0');
    return new Promise((resolve) => {
      s.bind(0, () => resolve(s.address().port));
    });
  }

  private socketFor(host: string): dgram.Socket {
    const v6 = net.isIPv6(host);
    let s = v6 ? this.socket6 : this.socket4;
    if (!s) {
      s = dgram.createSocket(v6 ? 'udp6' : 'udp4');
      s.on('error', () => undefined);
      s.on('message', (m, r) => {
        const k = decodeKeyAnswer(m);
        const w = this.waiting.get(`${r.address}|${r.port}`);
        if (k && w) w(k);
      });
      s.unref();
      if (v6) this.socket6 = s;
      else this.socket4 = s;
    }
    return s;
  }

  private queryKey(host: string, port: number): Promise<Buffer | null> {
    if (this.stopped || !net.isIP(host) || port < 1 || port > 65535) return Promise.resolve(null);
    const id = `${host}|${port}`;
    if (this.waiting.has(id)) return Promise.resolve(null);
    const socket = this.socketFor(host);
    return new Promise((resolve) => {
      let tries = 0;
      const send = () => {
        tries += 1;
        try {
          socket.send(encodeKeyQuery(), port, host);
        } catch {
          // The socket was closed under us (stop() while a query waits).
          finish(null);
        }
      };
      const timer = setInterval(() => {
        if (tries >= KEY_QUERY_TRIES) finish(null);
        else send();
      }, KEY_QUERY_TIMEOUT_MS / KEY_QUERY_TRIES);
      const finish = (k: Buffer | null) => {
        clearInterval(timer);
        this.waiting.delete(id);
        resolve(k);
      };
      this.waiting.set(id, (k) => finish(k));
      send();
    });
  }

  stop(): void {
    this.stopped = true;
    // Pending key queries end now (their timers with them): none sends on
    // a closed socket.
    for (const w of [...this.waiting.values()]) w(null);
    for (const s of [this.socket4, this.socket6]) {
      try {
        s?.close();
      } catch {
        /* closed */
      }
    }
    this.socket4 = this.socket6 = undefined;
  }

  describe(): object {
    return {
      cached: this.cache.size,
      known: this.relays().map((d) => ({ id: d.id, address: d.addresses[0], exit: d.roles.exit })),
      ...this.counters,
    };
  }
}
