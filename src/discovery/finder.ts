/**
 * The client side of discovery: find the relays of a network through the
 * DHT, keep a bounded, verified cache of their descriptors on disk, and
 * refresh it in the background.
 *
 * For each peer announced on the network's info-hash: ask it for its key
 * (key-query.ts: the answer is signed over the query's nonce, and answers
 * that do not verify are dropped while the query keeps waiting), fetch the
 * descriptor stored under that key (BEP 44), and keep it only if its
 * signature and expiry check out, it is for this network, and it lists the
 * announced address. Everything rejected is counted by reason.
 *
 * The relays it hands out list only the addresses that were vetted that
 * way (announced, answered for, listed), most recent first: a descriptor
 * may list others, but nothing checked them, so no client dials them.
 *
 * The cache survives restarts (descriptors are re-verified when loaded,
 * with their vetted addresses), so a client can build its first circuit
 * with no DHT at all.
 */
import { randomBytes } from 'node:crypto';
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
import { realClock, type Clock, type TimerHandle } from '../time/clock.js';
import { DhtNode, networkInfoHash } from './dht-node.js';
import { encodeKeyQuery, KEY_QUERY_NONCE_BYTES, verifyKeyAnswer } from './key-query.js';

export const CACHE_FILE = 'relays-cache.txt';
/** First line of the cache file; a file without it (version 1) is discarded. */
export const CACHE_HEADER = '# shallot relays cache v2';
export const MAX_CACHED_RELAYS = 1000;
export const KEY_QUERY_TIMEOUT_MS = 1000;
export const KEY_QUERY_TRIES = 2;
/** After the first valid key answer, other valid answers are taken for this long. */
export const KEY_ANSWER_GRACE_MS = 50;
/** Most distinct keys taken for one address (valid answers, so on-path senders only). */
export const MAX_KEYS_PER_ADDRESS = 4;
const FETCH_CONCURRENCY = 16;

export interface FinderCounters {
  refreshes: number;
  lastRefreshAt: string | null;
  lastRefreshMs: number;
  peersSeen: number;
  keyAnswers: number;
  /** Answers from a queried address whose signature did not verify (ignored). */
  badKeyAnswers: number;
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
  /** Time and timers (default: the real clock). */
  clock?: Clock;
}

interface Entry {
  descriptor: Descriptor;
  wire: Buffer;
  /** Addresses discovery vetted for it, most recent first (a subset of its list). */
  vetted: Array<{ host: string; port: number }>;
  /** What relays() hands out: the descriptor with only the vetted addresses. */
  view: Descriptor;
}

export class RelayFinder {
  readonly counters: FinderCounters = {
    refreshes: 0,
    lastRefreshAt: null,
    lastRefreshMs: 0,
    peersSeen: 0,
    keyAnswers: 0,
    badKeyAnswers: 0,
    noKeyAnswer: 0,
    itemsMissing: 0,
    accepted: 0,
    rejected: {},
  };
  private readonly cache = new Map<string, Entry>();
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly now: () => number;
  private socket4: dgram.Socket | undefined;
  private socket6: dgram.Socket | undefined;
  private stopped = false;
  private readonly waiting = new Map<
    string,
    { nonce: Buffer; add: (key: Buffer) => void; finish: () => void }
  >();
  private refreshing: Promise<number> | null = null;

  constructor(private readonly options: RelayFinderOptions) {
    this.log = options.log ?? silentLogger;
    this.clock = options.clock ?? realClock;
    this.now = () => this.clock.now();
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
    const lines = text.split('\n');
    if (lines[0]?.trim() !== CACHE_HEADER) {
      this.log.info(
        `${CACHE_FILE}: an older format without vetted addresses: discarded, relays are looked up again`,
      );
      return 0;
    }
    for (const line of lines.slice(1, MAX_CACHED_RELAYS + 1)) {
      const [text64, ...hostPorts] = line.trim().split('\t');
      const wire = descriptorFromText(text64 ?? '');
      if (!wire) continue;
      const r = verifyDescriptor(wire, { now: this.nowS(), network: this.options.network });
      if (!r.ok) continue;
      for (let i = hostPorts.length - 2; i >= 0; i -= 2) {
        const host = hostPorts[i] as string;
        const port = Number(hostPorts[i + 1]);
        if (net.isIP(host) && Number.isInteger(port)) this.keep(r.descriptor, r.wire, host, port);
      }
    }
    return this.cache.size;
  }

  private saveCache(): void {
    const dir = this.options.stateDir;
    if (!dir) return;
    const file = path.join(dir, CACHE_FILE);
    const lines = [...this.cache.values()].map((e) =>
      [descriptorToText(e.wire), ...e.vetted.flatMap((a) => [a.host, String(a.port)])].join('\t'),
    );
    try {
      fs.writeFileSync(`${file}.tmp`, [CACHE_HEADER, ...lines].join('\n') + '\n', {
        mode: 0o600,
      });
      fs.renameSync(`${file}.tmp`, file);
    } catch {
      /* best effort: the cache is an optimisation */
    }
  }

  /** Keep `d` with `host:port` vetted (announced there, answered for, listed). */
  private keep(d: Descriptor, wire: Buffer, host: string, port: number): void {
    const old = this.cache.get(d.id);
    if (!old && this.cache.size >= MAX_CACHED_RELAYS) return;
    const newer = !old || d.published > old.descriptor.published;
    const desc = newer ? d : (old as Entry).descriptor;
    const lists = (a: { host: string; port: number }) =>
      desc.addresses.some((x) => x.host === a.host && x.port === a.port);
    if (!lists({ host, port })) return;
    // Still listed by the kept descriptor, newest first, no duplicates.
    const vetted = [
      { host, port },
      ...(old?.vetted ?? []).filter((a) => (a.host !== host || a.port !== port) && lists(a)),
    ];
    this.cache.set(d.id, {
      descriptor: desc,
      wire: newer ? wire : (old as Entry).wire,
      vetted,
      view: { ...desc, addresses: vetted.map((a) => ({ ...a })) },
    });
  }

  /** The cached descriptors that have not expired. */
  relays(): Descriptor[] {
    const now = this.nowS();
    const out: Descriptor[] = [];
    for (const [id, e] of this.cache) {
      if (e.descriptor.expires <= now) this.cache.delete(id);
      else out.push(e.view);
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
    const keys = await this.queryKey(host, port);
    if (!keys) {
      this.counters.noKeyAnswer += 1;
      return;
    }
    // Usually one; more only if someone on the path answered with a key of
    // its own too: each is checked on its own, none shuts out another.
    for (const key of keys) await this.fetchFor(host, port, key);
  }

  private async fetchFor(host: string, port: number, key: Buffer): Promise<void> {
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
    this.keep(r.descriptor, r.wire, host, port);
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
        const w = this.waiting.get(`${r.address}|${r.port}`);
        if (!w) return;
        // Only an answer signed over this query's nonce ends the wait: a
        // racer's forgery is dropped and the real answer still counts.
        const k = verifyKeyAnswer(m, w.nonce);
        if (k) w.add(k);
        else this.counters.badKeyAnswers += 1;
      });
      s.unref();
      if (v6) this.socket6 = s;
      else this.socket4 = s;
    }
    return s;
  }

  /**
   * The keys that answered a query to `host:port` with a valid signature
   * over its nonce (null: none). The first valid answer starts a short
   * grace period (KEY_ANSWER_GRACE_MS) for others, up to
   * MAX_KEYS_PER_ADDRESS distinct keys: an answer arriving first wins
   * nothing over the real one.
   */
  private queryKey(host: string, port: number): Promise<Buffer[] | null> {
    if (this.stopped || !net.isIP(host) || port < 1 || port > 65535) return Promise.resolve(null);
    const id = `${host}|${port}`;
    if (this.waiting.has(id)) return Promise.resolve(null);
    const socket = this.socketFor(host);
    const nonce = randomBytes(KEY_QUERY_NONCE_BYTES);
    const query = encodeKeyQuery(nonce);
    return new Promise((resolve) => {
      let tries = 0;
      const keys: Buffer[] = [];
      let grace: TimerHandle | undefined;
      const send = () => {
        tries += 1;
        try {
          socket.send(query, port, host);
        } catch {
          // The socket was closed under us (stop() while a query waits).
          finish();
        }
      };
      const timer = this.clock.setRepeating(KEY_QUERY_TIMEOUT_MS / KEY_QUERY_TRIES, () => {
        if (tries >= KEY_QUERY_TRIES) finish();
        else if (keys.length === 0) send();
      });
      const finish = () => {
        timer.cancel();
        grace?.cancel();
        if (this.waiting.get(id)?.nonce === nonce) this.waiting.delete(id);
        resolve(keys.length > 0 ? keys : null);
      };
      const add = (k: Buffer) => {
        if (keys.some((x) => x.equals(k))) return;
        keys.push(k);
        if (keys.length >= MAX_KEYS_PER_ADDRESS) finish();
        else grace ??= this.clock.setTimer(KEY_ANSWER_GRACE_MS, finish);
      };
      this.waiting.set(id, { nonce, add, finish });
      send();
    });
  }

  stop(): void {
    this.stopped = true;
    // Pending key queries end now (their timers with them): none sends on
    // a closed socket.
    for (const w of [...this.waiting.values()]) w.finish();
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
      known: this.relays().map((d) => ({
        id: d.id,
        // The vetted address the client dials, then any others vetted.
        address: d.addresses[0],
        addresses: d.addresses,
        exit: d.roles.exit,
      })),
      ...this.counters,
    };
  }
}
