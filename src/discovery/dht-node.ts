/**
 * A node of the BitTorrent mainline DHT (bittorrent-dht), with the calls
 * shallot needs as promises with deadlines: announce and look up the
 * network's info-hash, put and get BEP 44 mutable items signed by the node
 * identity.
 *
 * What the DHT returns is untrusted: announced peers are hints, items are
 * checked by the caller (signature, expiry, address) before any use.
 * Library quirks handled here (MEASURED.md): an 'error' event must have a
 * listener or it kills the process; the routing table is saved and
 * restored so that a restart survives a dead bootstrap node; destroy()
 * releases the socket.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import DHT from 'bittorrent-dht';
import sodium from 'sodium-native';
import type { Identity } from '../identity.js';
import { signDetached } from '../identity.js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';

/** The mainline DHT's public bootstrap nodes: used only without --bootstrap. */
export const MAINLINE_BOOTSTRAP = [
  'router.bittorrent.com:6881',
  'router.utorrent.com:6881',
  'dht.transmissionbt.com:6881',
];
export const DHT_QUERY_TIMEOUT_MS = 1500;
export const LOOKUP_TIMEOUT_MS = 10_000;
export const PUT_TIMEOUT_MS = 15_000;
export const MAX_PEERS_PER_LOOKUP = 256;
export const MAX_SAVED_NODES = 200;

/** The info-hash relays of a network announce on: SHA-1 of a fixed prefix and the name. */
export function networkInfoHash(network: string): Buffer {
  return createHash('sha1').update(`shallot network v1:${network}`).digest();
}

/** BEP 44 target of a mutable item without salt: SHA-1 of the public key. */
export function mutableTarget(publicKey: Buffer): Buffer {
  return createHash('sha1').update(publicKey).digest();
}

function verify(signature: Buffer, message: Buffer, publicKey: Buffer): boolean {
  try {
    return (
      signature.length === 64 &&
      publicKey.length === 32 &&
      sodium.crypto_sign_verify_detached(signature, message, publicKey)
    );
  } catch {
    return false;
  }
}

export interface DhtNodeOptions {
  /** "host:port" strings; false for a bootstrap node that needs none. */
  bootstrap: string[] | false;
  host: string;
  port: number;
  log?: Logger;
  /** File to save the routing table in (restored at start). */
  nodesFile?: string;
  /** Announced peers expire after this long (the library keeps them forever by default). */
  maxAgeMs?: number;
}

export interface DhtCounters {
  announces: number;
  announceFailures: number;
  lookups: number;
  puts: number;
  putFailures: number;
  gets: number;
  getMisses: number;
  lastPublishAt: string | null;
}

export class DhtNode {
  private dht: DHT | undefined;
  readonly counters: DhtCounters = {
    announces: 0,
    announceFailures: 0,
    lookups: 0,
    puts: 0,
    putFailures: 0,
    gets: 0,
    getMisses: 0,
    lastPublishAt: null,
  };
  private readonly log: Logger;

  constructor(private readonly options: DhtNodeOptions) {
    this.log = options.log ?? silentLogger;
  }

  start(): Promise<void> {
    const dht = new DHT({
      bootstrap: this.options.bootstrap,
      host: false,
      timeout: DHT_QUERY_TIMEOUT_MS,
      maxAge: this.options.maxAgeMs ?? 30 * 60_000,
      verify,
    });
    this.dht = dht;
    dht.on('warning', () => undefined);
    return new Promise((resolve, reject) => {
      const onError = (e: Error) => reject(e);
      dht.once('error', onError);
      dht.listen(this.options.port, this.options.host, () => {
        dht.off('error', onError);
        dht.on('error', (e: Error) => this.log.warn(`dht: ${e.message}`));
        // Only now: addNode pings, and a ping before listen() would bind
        // the socket to a random port (and make listen() throw).
        this.restoreNodes(dht);
        resolve();
      });
    });
  }

  address(): { host: string; port: number } {
    const a = this.dht?.address();
    return { host: a?.address ?? '', port: a?.port ?? 0 };
  }

  nodeCount(): number {
    try {
      return this.dht?.nodes.count() ?? 0;
    } catch {
      return 0;
    }
  }

  /** Wait until the routing table has at least one node (or time out). */
  async waitForNodes(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (this.nodeCount() === 0) {
      if (Date.now() > deadline) return false;
      await new Promise((r) => setTimeout(r, 50));
    }
    return true;
  }

  /**
   * bittorrent-dht reuses the node list of a target's last lookup for 5
   * minutes; a relay's first one, at start, knows only the bootstrap node.
   * Forget it so that every announce and put looks up the closest nodes
   * afresh (otherwise only the bootstrap node would hold our items).
   */
  private forgetTable(target: Buffer): void {
    const tables = (this.dht as unknown as { _tables?: { remove?: (k: string) => void } })?._tables;
    try {
      tables?.remove?.(target.toString('hex'));
    } catch {
      /* private API changed: announces then reuse the cached nodes */
    }
  }

  announce(infoHash: Buffer, port: number): Promise<boolean> {
    const dht = this.dht;
    if (!dht) return Promise.resolve(false);
    this.forgetTable(infoHash);
    return withDeadline(LOOKUP_TIMEOUT_MS, false, (done) =>
      dht.announce(infoHash, port, (err) => {
        if (err) {
          this.counters.announceFailures += 1;
          this.log.debug(`dht announce failed: ${err.message}`);
        } else this.counters.announces += 1;
        done(!err);
      }),
    );
  }

  /** Peers announced on `infoHash` (deduplicated, bounded). */
  lookup(infoHash: Buffer): Promise<{ host: string; port: number }[]> {
    const dht = this.dht;
    if (!dht) return Promise.resolve([]);
    this.counters.lookups += 1;
    const found = new Map<string, { host: string; port: number }>();
    const onPeer = (peer: { host: string; port: number }, hash: Buffer) => {
      if (!Buffer.isBuffer(hash) || !hash.equals(infoHash)) return;
      if (found.size >= MAX_PEERS_PER_LOOKUP) return;
      if (typeof peer.host !== 'string' || !Number.isInteger(peer.port)) return;
      found.set(`${peer.host}:${peer.port}`, { host: peer.host, port: peer.port });
    };
    dht.on('peer', onPeer);
    return withDeadline(LOOKUP_TIMEOUT_MS, undefined, (done) =>
      dht.lookup(infoHash, () => done(undefined)),
    ).then(() => {
      dht.off('peer', onPeer);
      return [...found.values()];
    });
  }

  /** Publish `value` as the mutable item of `identity` with sequence number `seq`. */
  putMutable(identity: Identity, value: Buffer, seq: number): Promise<boolean> {
    const dht = this.dht;
    if (!dht) return Promise.resolve(false);
    this.forgetTable(mutableTarget(identity.publicKey));
    return withDeadline(PUT_TIMEOUT_MS, false, (done) =>
      dht.put(
        {
          k: identity.publicKey,
          seq,
          v: value,
          sign: (m: Buffer) => signDetached(identity.secretKey, m),
        },
        (err) => {
          // 302 (sequence not newer) means the same item is already stored.
          const ok = !err || /302|sequence/i.test(err.message);
          if (ok) {
            this.counters.puts += 1;
            this.counters.lastPublishAt = new Date().toISOString();
          } else {
            this.counters.putFailures += 1;
            this.log.debug(`dht put failed: ${err?.message}`);
          }
          done(ok);
        },
      ),
    );
  }

  /** The current mutable item of `publicKey`, fetched from the network (not a local copy). */
  getMutable(publicKey: Buffer): Promise<{ value: Buffer; seq: number } | null> {
    const dht = this.dht;
    if (!dht) return Promise.resolve(null);
    this.counters.gets += 1;
    return withDeadline<{ value: Buffer; seq: number } | null>(LOOKUP_TIMEOUT_MS, null, (done) =>
      dht.get(mutableTarget(publicKey), { cache: false }, (err, res) => {
        if (err || !res || !Buffer.isBuffer(res.v) || !res.k || !publicKey.equals(res.k)) {
          this.counters.getMisses += 1;
          done(null);
          return;
        }
        done({ value: res.v, seq: typeof res.seq === 'number' ? res.seq : 0 });
      }),
    );
  }

  private restoreNodes(dht: DHT): void {
    const file = this.options.nodesFile;
    if (!file) return;
    try {
      const list = JSON.parse(fs.readFileSync(file, 'utf8')) as unknown;
      if (!Array.isArray(list)) return;
      for (const n of list.slice(0, MAX_SAVED_NODES)) {
        const node = n as { host?: unknown; port?: unknown };
        if (typeof node.host === 'string' && typeof node.port === 'number') {
          dht.addNode({ host: node.host, port: node.port });
        }
      }
    } catch {
      /* no saved table */
    }
  }

  saveNodes(): void {
    const file = this.options.nodesFile;
    if (!file || !this.dht) return;
    try {
      const nodes = this.dht
        .toJSON()
        .nodes.slice(0, MAX_SAVED_NODES)
        .map((n) => ({ host: n.host, port: n.port }));
      if (nodes.length === 0) return;
      fs.writeFileSync(file, JSON.stringify(nodes) + '\n', { mode: 0o600 });
    } catch {
      /* best effort */
    }
  }

  stop(): void {
    const dht = this.dht;
    this.dht = undefined;
    if (!dht) return;
    this.saveNodesFrom(dht);
    try {
      dht.destroy();
    } catch {
      /* already destroyed */
    }
  }

  private saveNodesFrom(dht: DHT): void {
    const keep = this.dht;
    this.dht = dht;
    this.saveNodes();
    this.dht = keep;
  }

  describe(): object {
    return { nodes: this.nodeCount(), address: this.address(), ...this.counters };
  }
}

/** Run `start(done)`; resolve with its value, or with `fallback` after `ms`. */
function withDeadline<T>(
  ms: number,
  fallback: T,
  start: (done: (v: T) => void) => void,
): Promise<T> {
  return new Promise((resolve) => {
    let settled = false;
    const timer = setTimeout(() => finish(fallback), ms);
    timer.unref(); // a pending lookup must not keep a stopping process alive
    const finish = (v: T) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(v);
    };
    try {
      start(finish);
    } catch {
      finish(fallback);
    }
  });
}
