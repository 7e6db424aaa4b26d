/**
 * The relay side of discovery: announce the link port on the network's
 * info-hash and publish the signed descriptor as this identity's BEP 44
 * mutable item (sequence number = the descriptor's publication time, so
 * every new descriptor supersedes the last). Both are repeated well
 * before the DHT forgets them (nodes drop items after about 2 hours) and
 * at once whenever the descriptor changes.
 */
import type { Identity } from '../identity.js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { DhtNode, networkInfoHash } from './dht-node.js';

export const REPUBLISH_MS = 10 * 60_000;
const RETRY_MS = 5_000;

export interface PublisherOptions {
  dht: DhtNode;
  identity: Identity;
  network: string;
  linkPort: number;
  /** The current descriptor (wire form) and its publication time. */
  descriptor: () => { wire: Buffer; published: number };
  republishMs?: number;
  log?: Logger;
}

export class DescriptorPublisher {
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private busy = false;
  published = false;

  constructor(private readonly options: PublisherOptions) {}

  start(): void {
    void this.publishNow();
  }

  /** Announce and put now; on failure retry soon, on success after the republish period. */
  async publishNow(): Promise<boolean> {
    if (this.stopped || this.busy) return false;
    this.busy = true;
    if (this.timer) clearTimeout(this.timer);
    const o = this.options;
    const log = o.log ?? silentLogger;
    let ok = false;
    try {
      const d = o.descriptor();
      const [announced, put] = await Promise.all([
        o.dht.announce(networkInfoHash(o.network), o.linkPort),
        o.dht.putMutable(o.identity, d.wire, d.published),
      ]);
      ok = announced && put;
      if (ok && !this.published) log.info(`published descriptor in the DHT (network ${o.network})`);
      if (!ok) log.debug(`DHT publish incomplete (announce ${announced}, put ${put}); retrying`);
      this.published ||= ok;
    } finally {
      this.busy = false;
    }
    if (!this.stopped) {
      this.timer = setTimeout(
        () => void this.publishNow(),
        ok ? (o.republishMs ?? REPUBLISH_MS) : RETRY_MS,
      );
    }
    return ok;
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }
}
