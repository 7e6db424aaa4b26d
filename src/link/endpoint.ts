/**
 * A link endpoint: one datagram socket, many DTLS 1.2 links to peers, in
 * both the dialing and the listening role, demultiplexed by remote
 * address.
 *
 * Invariants:
 * - Nothing is allocated for a remote address before it returns a valid
 *   DTLS cookie (the native listen step is stateless).
 * - No application data crosses a link before both sides' AUTH messages
 *   (src/link/auth.ts) were verified: the dialer checks that the peer is
 *   the node id it asked for; the listener checks the dialer's id against
 *   its allowed set.
 * - At most MAX_PEERS links exist; every link is dropped when its
 *   handshake, authentication or liveness timer expires.
 * - All timers run from one coarse tick (LINK_TICK_MS) and an injected
 *   clock.
 * - Re-keying (docs/protocol.md 4.4) is make-before-break: the dialer runs
 *   a fresh DTLS handshake inside the current session (REKEY messages),
 *   switches its sending to the new session once it is established, and
 *   the listener switches when the first record of the new session
 *   arrives. A received datagram goes to the current session first; one
 *   that yields nothing there is tried on the pending successor (listener)
 *   and then on the previous session, which only decrypts and is freed
 *   REKEY_OVERLAP_MS after the switch. At most three sessions per link.
 */
import { randomBytes } from 'node:crypto';
import type { Identity } from '../identity.js';
import { nodeIdOf } from '../identity.js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import {
  LISTEN_VERIFIED,
  loadDtls,
  type NativeDtlsContext,
  type NativeDtlsSession,
} from '../native/binding.js';
import { EXPORTER_BYTES, EXPORTER_LABEL, signAuth, verifyAuth } from './auth.js';
import * as C from './constants.js';
import {
  CloseReason,
  type CloseReasonCode,
  closeReasonText,
  AUTH_VERSION,
  authVersionOf,
  decodeAuth,
  decodeClose,
  decodeRekey,
  encodeAuth,
  encodeClose,
  KEEPALIVE,
  MSG_AUTH,
  MSG_CLOSE,
  MSG_DATA,
  MSG_KEEPALIVE,
  MSG_REKEY,
  ROLE_DIALER,
  ROLE_LISTENER,
} from './messages.js';
import { countPacked, type DatagramTransport } from './transport.js';
import { isKeyQuery, KeyQueryResponder } from '../discovery/key-query.js';
import { realClock, type Clock, type TimerHandle } from '../time/clock.js';

export type LinkState = 'handshake' | 'auth' | 'up' | 'closed';

export class LinkPeer {
  state: LinkState = 'handshake';
  /** Node id of the peer once its AUTH verified. */
  id: string | null = null;
  /** Attributes the peer sent in its AUTH. */
  attributes: Buffer | null = null;
  exporter: Buffer | null = null;
  authMessage: Buffer | null = null;
  gotAuth = false;
  lastAuthSentAt = 0;
  lastReceivedAt: number;
  lastSentAt: number;
  upSince = 0;
  rxPackets = 0;
  txPackets = 0;
  rxBytes = 0;
  txBytes = 0;
  /** For the layer above (e.g. the tunnel's inner addresses). */
  context: unknown = undefined;
  /** The certificate the peer's AUTH vouched for; every re-key must show it again. */
  peerCertDer: Buffer | null = null;
  /** When the current session was established, and records it carried since. */
  sessionSince: number;
  sessionRecords = 0;
  /** The session before the last re-key: decrypts stragglers until previousUntil. */
  previous: NativeDtlsSession | null = null;
  previousUntil = 0;
  /** A successor session in its handshake (or, at the listener, awaiting its first record). */
  next: NativeDtlsSession | null = null;
  nextStartedAt = 0;
  /** Dialer: no re-key attempt before this time (after a failure). */
  rekeyNotBefore = 0;
  /** Listener: when it last accepted a successor's ClientHello. */
  lastRekeyAcceptAt = -Infinity;
  rekeys = 0;

  constructor(
    readonly key: string,
    readonly host: string,
    readonly port: number,
    /** Our role on this link. */
    readonly role: 'dialer' | 'listener',
    /** The session records are sent on; replaced at each re-key. */
    public session: NativeDtlsSession,
    readonly createdAt: number,
    /** Node id the dialer expects (null on the listening side). */
    readonly expectedId: string | null,
  ) {
    this.lastReceivedAt = createdAt;
    this.lastSentAt = createdAt;
    this.sessionSince = createdAt;
  }

  get label(): string {
    return `${this.id ? this.id.slice(0, 16) : '?'}@${formatHostPort(this.host, this.port)}`;
  }
}

export function formatHostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

export interface LinkCounters {
  rxDatagrams: number;
  txDatagrams: number;
  helloVerifySent: number;
  linksAccepted: number;
  linksUp: number;
  linksDown: number;
  /** Drops by reason. */
  drops: {
    garbage: number;
    noLink: number;
    peerLimit: number;
    unauthenticated: number;
    badMessage: number;
    oversize: number;
  };
  authFailures: number;
  unauthorized: number;
  keyQueries: number;
  /** ClientHellos from an address this node was dialing at the same time. */
  crossedDials: number;
  /** Re-keys completed (this side switched to a new session), and abandoned attempts. */
  rekeys: number;
  rekeyFailures: number;
  /** Datagrams decrypted by the session before the last re-key (in flight at the switch). */
  previousSessionDatagrams: number;
}

export interface LinkEndpointOptions {
  identity: Identity;
  transport: DatagramTransport;
  log?: Logger;
  /** Time and timers (default: the real clock). */
  clock?: Clock;
  /** Accept incoming links. `allowedIds` null means any authenticated node id. */
  listen?: { allowedIds: Set<string> | null } | null;
  /** Attributes sent in our AUTH to a peer (e.g. our inner addresses). */
  attributes?: () => Buffer;
  /**
   * Called when a peer's AUTH verified, before the link is up. Return a
   * close reason to refuse it (e.g. its inner address is taken).
   */
  admit?: (peer: LinkPeer) => CloseReasonCode | null;
  onPeerUp?: (peer: LinkPeer) => void;
  onPeerDown?: (peer: LinkPeer, reason: string) => void;
  /**
   * One application message (type >= 0x10: DATA, circuit messages) on an
   * up link: `buf[offset, offset+len)` is the body after the type byte,
   * valid during the call (it may be modified in place).
   */
  onMessage?: (peer: LinkPeer, type: number, buf: Buffer, offset: number, len: number) => void;
  /**
   * Called after each batch of received datagrams was delivered (the
   * flush point: what the batch produced leaves together).
   */
  onReceiveDone?: () => void;
  deadPeerAfterMs?: number;
  keepaliveIntervalMs?: number;
  /** Re-key interval (REKEY_AFTER_MS); 0 turns re-keying off (tests only). */
  rekeyAfterMs?: number;
  /** How long the old session decrypts after a re-key (REKEY_OVERLAP_MS). */
  rekeyOverlapMs?: number;
  /** Records on one session that trigger a re-key (REKEY_AFTER_RECORDS). */
  rekeyAfterRecords?: number;
  maxPeers?: number;
  datagramBytes?: number;
}

interface DialTarget {
  host: string;
  port: number;
  key: string;
  expectedId: string;
  backoffMs: number;
  nextAttemptAt: number;
  lastFailure: string;
  /** Redial forever (tunnels, a client's guard) or give up when the link goes (relay extends). */
  persistent: boolean;
}

export class LinkEndpoint {
  readonly counters: LinkCounters = {
    rxDatagrams: 0,
    txDatagrams: 0,
    helloVerifySent: 0,
    linksAccepted: 0,
    linksUp: 0,
    linksDown: 0,
    drops: { garbage: 0, noLink: 0, peerLimit: 0, unauthenticated: 0, badMessage: 0, oversize: 0 },
    authFailures: 0,
    unauthorized: 0,
    keyQueries: 0,
    crossedDials: 0,
    rekeys: 0,
    rekeyFailures: 0,
    previousSessionDatagrams: 0,
  };
  readonly peers = new Map<string, LinkPeer>();
  private readonly dialTargets = new Map<string, DialTarget>();
  private readonly ctx: NativeDtlsContext;
  private readonly ownCertDer: Buffer;
  /** This node's id (hex), for the crossed-dial tie-break. */
  private readonly ownId: string;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly now: () => number;
  private readonly rxBuf = Buffer.alloc(65_536);
  private readonly txBuf = Buffer.alloc(C.SEND_BATCH_PACKETS * (C.LINK_DATAGRAM_BYTES + 2) * 2);
  private readonly recordBuf = Buffer.alloc(C.LINK_DATAGRAM_BYTES + 2);
  /** Handshake datagrams of successor sessions, and what they decrypt (nothing used). */
  private readonly rekeyBuf = Buffer.alloc(65_536);
  private readonly rekeyOut = Buffer.alloc(65_536);
  private tickTimer: TimerHandle | undefined;
  private cookieRotatedAt = 0;
  private cookieSecret = randomBytes(32);
  private started = false;
  private readonly deadPeerAfterMs: number;
  private readonly keepaliveIntervalMs: number;
  private readonly maxPeers: number;
  private readonly rekeyAfterMs: number;
  private readonly rekeyOverlapMs: number;
  private readonly rekeyAfterRecords: number;
  /** Answer to the discovery key query (listening nodes only). */
  private readonly keyAnswer: KeyQueryResponder | null;

  constructor(private readonly options: LinkEndpointOptions) {
    const dtls = loadDtls();
    this.log = options.log ?? silentLogger;
    this.clock = options.clock ?? realClock;
    this.now = () => this.clock.now();
    this.deadPeerAfterMs = options.deadPeerAfterMs ?? C.DEAD_PEER_AFTER_MS;
    this.keepaliveIntervalMs = options.keepaliveIntervalMs ?? C.KEEPALIVE_INTERVAL_MS;
    this.maxPeers = options.maxPeers ?? C.MAX_PEERS;
    this.rekeyAfterMs = options.rekeyAfterMs ?? C.REKEY_AFTER_MS;
    this.rekeyOverlapMs = options.rekeyOverlapMs ?? C.REKEY_OVERLAP_MS;
    this.rekeyAfterRecords = options.rekeyAfterRecords ?? C.REKEY_AFTER_RECORDS;
    this.ctx = new dtls.DtlsContext({
      certPem: options.identity.link.certPem,
      keyPem: options.identity.link.keyPem,
      mtu: options.datagramBytes ?? C.LINK_DATAGRAM_BYTES,
    });
    this.ctx.setCookieSecrets(this.cookieSecret, null);
    this.ownCertDer = dtls.certificateDer(options.identity.link.certPem);
    this.ownId = options.identity.id;
    this.keyAnswer = options.listen
      ? new KeyQueryResponder(options.identity.publicKey, options.identity.secretKey)
      : null;
  }

  /** Bind the transport and start the tick. */
  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    this.cookieRotatedAt = this.now();
    await this.options.transport.start(
      (d, h, p) => this.onDatagram(d, h, p),
      () => this.options.onReceiveDone?.(),
    );
    this.tickTimer = this.clock.setRepeating(C.LINK_TICK_MS, () => this.tick());
  }

  /** Close every link (sending CLOSE), stop timers, release the socket. */
  stop(): void {
    if (!this.started) return;
    this.started = false;
    this.tickTimer?.cancel();
    this.tickTimer = undefined;
    this.dialTargets.clear();
    for (const peer of [...this.peers.values()]) this.drop(peer, 'stopping', CloseReason.normal);
    this.options.transport.close();
  }

  /** Keep a link to `host:port`, which must prove node id `expectedId`; redial on loss. */
  dial(
    host: string,
    port: number,
    expectedId: string,
    options: { persistent?: boolean } = {},
  ): void {
    const key = peerKey(host, port);
    const existing = this.dialTargets.get(key);
    if (existing) {
      // A newer request for another id at this address wins once the
      // current attempt ends (a wrong id must not poison the address).
      existing.expectedId = expectedId;
      return;
    }
    this.dialTargets.set(key, {
      host,
      port,
      key,
      expectedId,
      backoffMs: C.RECONNECT_MIN_MS,
      nextAttemptAt: 0,
      lastFailure: '',
      persistent: options.persistent ?? true,
    });
    this.connect(this.dialTargets.get(key) as DialTarget);
  }

  /**
   * Give up a dial made with `persistent: false` that is no longer wanted
   * (a relay's extend that ended before the link came up): forget the
   * target, and drop its link if it is not up yet, so that abandoned
   * handshakes do not hold link slots until they time out.
   */
  cancelDial(host: string, port: number): void {
    const key = peerKey(host, port);
    const target = this.dialTargets.get(key);
    if (!target || target.persistent) return;
    this.dialTargets.delete(key);
    const peer = this.peers.get(key);
    if (peer && peer.role === 'dialer' && peer.state !== 'up') {
      this.drop(peer, 'dial abandoned', null);
    }
  }

  /** Peers whose links are up. */
  upPeers(): LinkPeer[] {
    return [...this.peers.values()].filter((p) => p.state === 'up');
  }

  /**
   * Send a packed batch of link messages ([u16 len][type][body]...) to an
   * up peer, one DTLS record each. Returns false if the link is not up.
   */
  sendMessages(peer: LinkPeer, packed: Buffer, len: number, count: number): boolean {
    if (peer.state !== 'up') return false;
    const n = peer.session.sendBatch(packed, len, this.txBuf);
    if (n < 0) {
      this.drop(peer, `DTLS failure: ${peer.session.error() || 'send failed'}`, null);
      return false;
    }
    this.transmit(peer, n);
    peer.txPackets += count;
    peer.txBytes += len;
    peer.sessionRecords += count;
    return true;
  }

  // --- receive path -------------------------------------------------------

  private onDatagram(data: Buffer, host: string, port: number): void {
    this.counters.rxDatagrams += 1;
    if (this.keyAnswer && isKeyQuery(data)) {
      // Stateless, signed within a budget, shorter than the question.
      this.counters.keyQueries += 1;
      const answer = this.keyAnswer.respond(data, this.now());
      if (answer) this.options.transport.sendOne(answer, host, port);
      return;
    }
    const key = peerKey(host, port);
    const peer = this.peers.get(key);
    if (peer) {
      if (peer.role === 'listener' && peer.state !== 'handshake' && isClientHello(data)) {
        // The same address starts over (the peer restarted on its port).
        // A replayed ClientHello must not tear down a live link: only a
        // link that has gone quiet for longer than a keepalive period is
        // replaced, and only once the new handshake returns a cookie.
        if (this.now() - peer.lastReceivedAt > this.keepaliveIntervalMs + 1000) {
          this.listenStep(data, host, port, key, peer, 'peer restarted its link');
        } else {
          this.counters.drops.garbage += 1;
        }
        return;
      }
      if (peer.role === 'dialer' && peer.state === 'handshake' && isClientHello(data)) {
        // Crossed dials: both ends dial each other at once (two relays
        // extending to each other), each ClientHello lands in the other
        // end's dialing session and both handshakes would fail. The end
        // with the higher node id gives way and answers as a listener
        // (stateless cookie first: its own dial is dropped only for a
        // ClientHello that proved its address); the lower one keeps
        // dialing and ignores the other's ClientHellos.
        this.counters.crossedDials += 1;
        if (this.options.listen && peer.expectedId !== null && this.ownId > peer.expectedId) {
          this.listenStep(data, host, port, key, peer, 'crossed dial: answering theirs');
        }
        return;
      }
      if (!saneDatagram(data)) {
        this.counters.drops.garbage += 1;
        return;
      }
      this.pump(peer, data);
      return;
    }
    if (!this.options.listen) {
      this.counters.drops.noLink += 1;
      return;
    }
    this.listenStep(data, host, port, key, null);
  }

  private listenStep(
    data: Buffer,
    host: string,
    port: number,
    key: string,
    existing: LinkPeer | null,
    replacing = '',
  ): void {
    if (!existing && this.peers.size >= this.maxPeers) {
      this.counters.drops.peerLimit += 1;
      return;
    }
    const n = this.ctx.listen(data, Buffer.from(key), this.txBuf);
    if (n > 0) {
      this.counters.helloVerifySent += 1;
      this.options.transport.sendOne(this.txBuf.subarray(0, n), host, port);
      this.counters.txDatagrams += 1;
      return;
    }
    if (n !== LISTEN_VERIFIED) {
      this.counters.drops.garbage += 1;
      return;
    }
    if (existing) this.drop(existing, replacing, null);
    const session = this.ctx.accept();
    const peer = new LinkPeer(key, host, port, 'listener', session, this.now(), null);
    this.peers.set(key, peer);
    this.counters.linksAccepted += 1;
    this.pump(peer, null);
  }

  /** Feed one datagram (or none) to a link and act on what comes out. */
  private pump(peer: LinkPeer, data: Buffer | null): void {
    let r = peer.session.receive(data, this.rxBuf);
    this.flushHandshake(peer);
    if (r < 0) {
      this.drop(peer, `link failed: ${peer.session.error() || 'DTLS error'}`, null);
      return;
    }
    if (r === 0 && data !== null && (peer.next || peer.previous)) r = this.receiveOther(peer, data);
    if (peer.state === 'handshake' && peer.session.established()) this.onEstablished(peer);
    if (r === 0) return;
    peer.lastReceivedAt = this.now();
    let o = 0;
    while (o + 2 <= r && peer.state !== 'closed') {
      const len = this.rxBuf.readUInt16BE(o);
      o += 2;
      if (len === 0 || o + len > r) break;
      peer.sessionRecords += 1;
      this.onMessage(peer, o, len);
      o += len;
    }
  }

  /**
   * A datagram the current session made nothing of: the first record of the
   * successor the listener holds (then switch to it), or a straggler of the
   * previous session. Neither ever fails the link.
   */
  private receiveOther(peer: LinkPeer, data: Buffer): number {
    const next = peer.next;
    if (next && next.established()) {
      const r = next.receive(data, this.rxBuf);
      if (r > 0) {
        if (this.switchTo(peer, next)) return r;
        return 0;
      }
      if (r < 0) this.abandonRekey(peer, next.error() || 'DTLS error');
    }
    const previous = peer.previous;
    if (previous) {
      const r = previous.receive(data, this.rxBuf);
      if (r > 0) {
        this.counters.previousSessionDatagrams += 1;
        return r;
      }
      if (r < 0) {
        previous.free();
        peer.previous = null;
      }
    }
    return 0;
  }

  private onMessage(peer: LinkPeer, o: number, len: number): void {
    const buf = this.rxBuf;
    const type = buf[o] as number;
    if (type >= MSG_DATA) {
      if (peer.state !== 'up') {
        this.counters.drops.unauthenticated += 1;
        return;
      }
      peer.rxPackets += 1;
      peer.rxBytes += len - 1;
      this.options.onMessage?.(peer, type, buf, o + 1, len - 1);
      return;
    }
    switch (type) {
      case MSG_KEEPALIVE:
        return;
      case MSG_REKEY: {
        const datagram = peer.state === 'up' ? decodeRekey(buf, o, len) : null;
        if (datagram === null) {
          this.counters.drops.badMessage += 1;
          return;
        }
        this.onRekey(peer, datagram);
        return;
      }
      case MSG_AUTH:
        this.onAuth(peer, o, len);
        return;
      case MSG_CLOSE: {
        const reason = decodeClose(buf, o, len);
        if (reason === null) {
          this.counters.drops.badMessage += 1;
          return;
        }
        this.drop(peer, `peer closed the link: ${closeReasonText(reason)}`, null, reason);
        return;
      }
      default:
        this.counters.drops.badMessage += 1;
    }
  }

  // --- handshake and authentication -------------------------------------

  private onEstablished(peer: LinkPeer): void {
    peer.state = 'auth';
    peer.sessionSince = this.now();
    peer.exporter = peer.session.exportKeyingMaterial(EXPORTER_LABEL, EXPORTER_BYTES);
    const role = peer.role === 'dialer' ? ROLE_DIALER : ROLE_LISTENER;
    const attributes = this.options.attributes?.() ?? Buffer.alloc(0);
    const id = this.options.identity;
    peer.authMessage = encodeAuth({
      role,
      publicKey: id.publicKey,
      signature: signAuth(id.secretKey, role, this.ownCertDer, peer.exporter, attributes),
      attributes,
    });
    this.sendAuth(peer);
  }

  private sendAuth(peer: LinkPeer): void {
    if (!peer.authMessage) return;
    peer.lastAuthSentAt = this.now();
    this.sendControl(peer, peer.authMessage);
  }

  private onAuth(peer: LinkPeer, o: number, len: number): void {
    if (peer.state === 'handshake' || !peer.exporter) return;
    if (peer.gotAuth) {
      // The peer resends its AUTH while it lacks ours: answer it again, but
      // at most once per resend period, or two sides that both have each
      // other's AUTH would answer each other forever.
      if (this.now() - peer.lastAuthSentAt >= C.AUTH_RESEND_MS) this.sendAuth(peer);
      return;
    }
    const msg = decodeAuth(this.rxBuf, o, len);
    const theirRole = peer.role === 'dialer' ? ROLE_LISTENER : ROLE_DIALER;
    if (!msg || msg.role !== theirRole) {
      this.counters.authFailures += 1;
      const version = authVersionOf(this.rxBuf, o, len);
      this.drop(
        peer,
        version !== null && version !== AUTH_VERSION
          ? `the peer speaks protocol version ${version}, this node ${AUTH_VERSION}`
          : 'malformed AUTH from peer',
        CloseReason.badAuth,
      );
      return;
    }
    const claimed = nodeIdOf(msg.publicKey);
    if (peer.expectedId !== null && claimed !== peer.expectedId) {
      this.counters.authFailures += 1;
      this.drop(
        peer,
        `peer id mismatch: expected ${peer.expectedId.slice(0, 16)}..., the peer is ${claimed.slice(0, 16)}...`,
        CloseReason.badAuth,
      );
      return;
    }
    const cert = peer.session.peerCertificate();
    if (
      !cert ||
      !verifyAuth(msg.publicKey, msg.signature, msg.role, cert, peer.exporter, msg.attributes)
    ) {
      this.counters.authFailures += 1;
      this.drop(peer, `bad AUTH signature from ${claimed.slice(0, 16)}...`, CloseReason.badAuth);
      return;
    }
    const allowed = this.options.listen?.allowedIds;
    if (peer.role === 'listener' && allowed && !allowed.has(claimed)) {
      this.counters.unauthorized += 1;
      this.drop(peer, `refused unauthorised node ${claimed}`, CloseReason.unauthorized);
      return;
    }
    peer.id = claimed;
    peer.peerCertDer = cert;
    peer.attributes = msg.attributes;
    peer.gotAuth = true;
    const refusal = this.options.admit?.(peer) ?? null;
    if (refusal !== null) {
      this.drop(peer, `refused ${peer.label}: ${closeReasonText(refusal)}`, refusal);
      return;
    }
    // One link per node id: a newer authenticated link replaces an older one.
    for (const other of this.peers.values()) {
      if (other !== peer && other.id === claimed && other.state === 'up') {
        this.drop(other, 'replaced by a newer link from the same node', CloseReason.replaced);
      }
    }
    peer.state = 'up';
    peer.upSince = this.now();
    this.counters.linksUp += 1;
    const target = this.dialTargets.get(peer.key);
    if (target) target.lastFailure = '';
    this.log.info(`link up: ${peer.label} (${peer.role}, ${peer.session.cipher()})`);
    this.options.onPeerUp?.(peer);
  }

  // --- re-keying (docs/protocol.md 4.4) -----------------------------------

  /** Dialer: start a successor session; its ClientHello goes out in REKEY. */
  private startRekey(peer: LinkPeer): void {
    const next = this.ctx.connect();
    if (next.limitHandshakeMtu(C.REKEY_HANDSHAKE_MTU) < 0 || next.pump() < 0) {
      next.free();
      peer.rekeyNotBefore = this.now() + C.REKEY_RETRY_MS;
      this.counters.rekeyFailures += 1;
      return;
    }
    peer.next = next;
    peer.nextStartedAt = this.now();
    this.flushRekey(peer, next);
  }

  /** One handshake datagram of a successor session, from inside the current one. */
  private onRekey(peer: LinkPeer, datagram: Buffer): void {
    if (peer.role === 'listener' && isClientHello(datagram)) {
      // A new attempt (or a retransmitted hello): stateless until the
      // cookie returns, as on the wire; a verified one replaces what is pending.
      const n = this.ctx.listen(datagram, Buffer.from(peer.key), this.rekeyBuf);
      if (n > 0) {
        this.sendRekeyDatagram(peer, this.rekeyBuf, 0, n);
        return;
      }
      if (n !== LISTEN_VERIFIED || this.now() - peer.lastRekeyAcceptAt < C.REKEY_MIN_GAP_MS) {
        // Each accepted hello costs a full handshake: a peer gets two a second.
        this.counters.drops.garbage += 1;
        return;
      }
      peer.lastRekeyAcceptAt = this.now();
      peer.next?.free();
      const next = this.ctx.accept();
      peer.next = next;
      peer.nextStartedAt = this.now();
      if (next.limitHandshakeMtu(C.REKEY_HANDSHAKE_MTU) < 0) {
        this.abandonRekey(peer, 'cannot size the handshake');
        return;
      }
      this.feedNext(peer, next, null);
      return;
    }
    const next = peer.next;
    if (!next) {
      this.counters.drops.garbage += 1; // a late retransmission
      return;
    }
    this.feedNext(peer, next, datagram);
    // The dialer switches as soon as its side is done: the listener
    // finished first (it sent the last flight), so it holds the new keys.
    if (peer.role === 'dialer' && peer.next === next && next.established()) {
      if (this.switchTo(peer, next)) this.sendControl(peer, KEEPALIVE);
    }
  }

  private feedNext(peer: LinkPeer, next: NativeDtlsSession, datagram: Buffer | null): void {
    const r = next.receive(datagram, this.rekeyOut);
    this.flushRekey(peer, next);
    if (r < 0) this.abandonRekey(peer, next.error() || 'DTLS error');
  }

  /**
   * Make `next` the session records are sent on. The peer must show the
   * certificate its AUTH vouched for: the new handshake's CertificateVerify
   * then proves the same key as the AUTH did. Returns false if the link
   * was dropped instead.
   */
  private switchTo(peer: LinkPeer, next: NativeDtlsSession): boolean {
    const cert = next.peerCertificate();
    if (!cert || !peer.peerCertDer || !cert.equals(peer.peerCertDer)) {
      this.counters.authFailures += 1;
      this.drop(peer, 'the peer showed another certificate in a re-key', CloseReason.badAuth);
      return false;
    }
    peer.previous?.free();
    peer.previous = peer.session;
    peer.previousUntil = this.now() + this.rekeyOverlapMs;
    peer.session = next;
    peer.next = null;
    peer.sessionSince = this.now();
    peer.sessionRecords = 0;
    peer.rekeys += 1;
    this.counters.rekeys += 1;
    return true;
  }

  private abandonRekey(peer: LinkPeer, why: string): void {
    if (!peer.next) return;
    peer.next.free();
    peer.next = null;
    peer.rekeyNotBefore = this.now() + C.REKEY_RETRY_MS;
    this.counters.rekeyFailures += 1;
    this.log.debug(`re-key of ${peer.label} abandoned: ${why}`);
  }

  /** Send what a successor session queued, each datagram in one REKEY message. */
  private flushRekey(peer: LinkPeer, next: NativeDtlsSession): void {
    for (;;) {
      const len = next.flush(this.rekeyBuf);
      if (len <= 0) return;
      for (let o = 0; o + 2 <= len;) {
        const n = this.rekeyBuf.readUInt16BE(o);
        o += 2;
        if (o + n > len) break;
        this.sendRekeyDatagram(peer, this.rekeyBuf, o, n);
        o += n;
      }
    }
  }

  private sendRekeyDatagram(peer: LinkPeer, from: Buffer, offset: number, n: number): void {
    if (peer.state !== 'up' || n + 3 > this.recordBuf.length) return;
    this.recordBuf.writeUInt16BE(n + 1, 0);
    this.recordBuf[2] = MSG_REKEY;
    from.copy(this.recordBuf, 3, offset, offset + n);
    const out = peer.session.sendBatch(this.recordBuf, n + 3, this.txBuf);
    if (out > 0) this.transmit(peer, out);
  }

  /** The re-key timers of an up link; false if the link was dropped. */
  private rekeyTick(peer: LinkPeer, now: number): boolean {
    if (this.rekeyAfterMs <= 0) return true;
    if (now - peer.sessionSince > this.rekeyAfterMs + C.REKEY_REJECT_GRACE_MS) {
      this.drop(peer, 'link not re-keyed in time', null);
      return false;
    }
    if (peer.previous && now >= peer.previousUntil) {
      peer.previous.free();
      peer.previous = null;
    }
    const next = peer.next;
    if (next) {
      if (now - peer.nextStartedAt > C.REKEY_HANDSHAKE_TIMEOUT_MS) {
        this.abandonRekey(peer, 'handshake timed out');
      } else if (!next.established() && next.timeoutMs() === 0) {
        if (next.handleTimeout() < 0) this.abandonRekey(peer, 'handshake gave up');
        else this.flushRekey(peer, next);
      }
    } else if (
      peer.role === 'dialer' &&
      now >= peer.rekeyNotBefore &&
      (now - peer.sessionSince >= this.rekeyAfterMs ||
        peer.sessionRecords >= this.rekeyAfterRecords)
    ) {
      this.startRekey(peer);
    }
    return peer.state === 'up';
  }

  // --- sending -------------------------------------------------------------

  /** Send one control message on a link in the auth or up state. */
  private sendControl(peer: LinkPeer, message: Buffer): void {
    if (peer.state === 'handshake' || peer.state === 'closed') return;
    if (message.length + 2 > this.recordBuf.length) return;
    this.recordBuf.writeUInt16BE(message.length, 0);
    message.copy(this.recordBuf, 2);
    const n = peer.session.sendBatch(this.recordBuf, message.length + 2, this.txBuf);
    if (n > 0) this.transmit(peer, n);
  }

  private transmit(peer: LinkPeer, n: number): void {
    this.options.transport.sendPacked(this.txBuf, n, peer.host, peer.port);
    this.counters.txDatagrams += countPacked(this.txBuf, n);
    peer.lastSentAt = this.now();
  }

  private flushHandshake(peer: LinkPeer): void {
    for (;;) {
      const n = peer.session.flush(this.txBuf);
      if (n <= 0) return;
      this.options.transport.sendPacked(this.txBuf, n, peer.host, peer.port);
      this.counters.txDatagrams += countPacked(this.txBuf, n);
    }
  }

  // --- lifecycle of links --------------------------------------------------

  private connect(target: DialTarget): void {
    if (this.peers.has(target.key)) return;
    if (this.peers.size >= this.maxPeers) {
      target.nextAttemptAt = this.now() + target.backoffMs;
      return;
    }
    const session = this.ctx.connect();
    const peer = new LinkPeer(
      target.key,
      target.host,
      target.port,
      'dialer',
      session,
      this.now(),
      target.expectedId,
    );
    this.peers.set(target.key, peer);
    this.pump(peer, null);
  }

  /**
   * Tear a link down: optionally tell the peer why (an authenticated
   * CLOSE), free its DTLS state, notify above, schedule a redial.
   */
  private drop(
    peer: LinkPeer,
    reason: string,
    tellPeer: CloseReasonCode | null,
    theirReason?: number,
  ): void {
    if (peer.state === 'closed') return;
    const wasUp = peer.state === 'up';
    if (tellPeer !== null) this.sendControl(peer, encodeClose(tellPeer));
    peer.session.shutdown();
    this.flushHandshake(peer);
    peer.state = 'closed';
    peer.session.free();
    peer.previous?.free();
    peer.previous = null;
    peer.next?.free();
    peer.next = null;
    if (this.peers.get(peer.key) === peer) this.peers.delete(peer.key);
    const target = this.dialTargets.get(peer.key);
    if (target && !target.persistent) {
      this.dialTargets.delete(peer.key);
      if (wasUp || peer.gotAuth) this.log.info(`link to ${peer.label} closed: ${reason}`);
    } else if (target) {
      const stable = wasUp && this.now() - peer.upSince > this.deadPeerAfterMs;
      target.backoffMs = stable
        ? C.RECONNECT_MIN_MS
        : Math.min(target.backoffMs * 2, C.RECONNECT_MAX_MS);
      target.nextAttemptAt = this.now() + (stable ? 0 : target.backoffMs);
      if (target.lastFailure !== reason) {
        target.lastFailure = reason;
        this.log.warn(`link to ${peer.label} down: ${reason}; retrying`);
      }
      if (theirReason === CloseReason.unauthorized || theirReason === CloseReason.badAuth) {
        target.backoffMs = C.RECONNECT_MAX_MS;
      }
    } else if (wasUp || peer.gotAuth || tellPeer === CloseReason.unauthorized) {
      this.log.warn(`link to ${peer.label} down: ${reason}`);
    }
    if (wasUp) {
      this.counters.linksDown += 1;
      this.options.onPeerDown?.(peer, reason);
    }
  }

  /** The one coarse timer: DTLS retransmission, timeouts, keepalive, redial. */
  tick(): void {
    const now = this.now();
    if (now - this.cookieRotatedAt >= C.COOKIE_ROTATE_MS) {
      const previous = this.cookieSecret;
      this.cookieSecret = randomBytes(32);
      this.ctx.setCookieSecrets(this.cookieSecret, previous);
      this.cookieRotatedAt = now;
    }
    for (const peer of [...this.peers.values()]) {
      if (peer.state === 'handshake') {
        if (now - peer.createdAt > C.HANDSHAKE_TIMEOUT_MS) {
          this.drop(peer, 'DTLS handshake timed out', null);
          continue;
        }
        const t = peer.session.timeoutMs();
        if (t === 0) {
          if (peer.session.handleTimeout() < 0) {
            this.drop(peer, 'DTLS handshake gave up', null);
            continue;
          }
          this.flushHandshake(peer);
        }
      } else if (peer.state === 'auth') {
        if (now - peer.createdAt > C.HANDSHAKE_TIMEOUT_MS + C.AUTH_TIMEOUT_MS) {
          this.drop(peer, 'peer never authenticated', null);
          continue;
        }
        if (now - peer.lastAuthSentAt >= C.AUTH_RESEND_MS) this.sendAuth(peer);
      } else if (peer.state === 'up') {
        if (now - peer.lastReceivedAt > this.deadPeerAfterMs) {
          this.drop(
            peer,
            `peer dead: nothing heard for ${Math.round((now - peer.lastReceivedAt) / 1000)} s`,
            null,
          );
          continue;
        }
        if (!this.rekeyTick(peer, now)) continue;
        if (now - peer.lastSentAt >= this.keepaliveIntervalMs) this.sendControl(peer, KEEPALIVE);
      }
    }
    for (const target of this.dialTargets.values()) {
      if (!this.peers.has(target.key) && now >= target.nextAttemptAt) {
        target.nextAttemptAt = now + target.backoffMs;
        this.connect(target);
      }
    }
  }

  /** A summary for status output. */
  describe(): object {
    return {
      address: this.options.transport.address(),
      counters: this.counters,
      socket: this.options.transport.stats?.() ?? null,
      peers: [...this.peers.values()].map((p) => ({
        id: p.id,
        address: formatHostPort(p.host, p.port),
        role: p.role,
        state: p.state,
        cipher: p.state === 'up' ? p.session.cipher() : null,
        upForMs: p.state === 'up' ? this.now() - p.upSince : 0,
        lastHeardMsAgo: this.now() - p.lastReceivedAt,
        rxPackets: p.rxPackets,
        txPackets: p.txPackets,
        rxBytes: p.rxBytes,
        txBytes: p.txBytes,
        rekeys: p.rekeys,
        sessionAgeMs: p.state === 'up' ? this.now() - p.sessionSince : 0,
      })),
      dialing: [...this.dialTargets.values()].map((t) => ({
        address: formatHostPort(t.host, t.port),
        expectedId: t.expectedId,
        lastFailure: t.lastFailure || null,
      })),
    };
  }
}

function peerKey(host: string, port: number): string {
  return `${host}|${port}`;
}

/**
 * Strict framing check before a datagram reaches OpenSSL: whole DTLS
 * records back to back, and no protected record (epoch > 0) shorter than
 * an AEAD tag. OpenSSL 3.0 answers a too-short ChaCha20-Poly1305 record
 * with a fatal internal-error alert (openssl/openssl#25290), so one
 * spoofed 14-byte datagram would otherwise kill a link.
 */
export function saneDatagram(d: Buffer): boolean {
  let o = 0;
  while (o < d.length) {
    if (o + 13 > d.length) return false;
    const len = d.readUInt16BE(o + 11);
    if (o + 13 + len > d.length) return false;
    if ((d[o + 3] !== 0 || d[o + 4] !== 0) && len < 16) return false;
    o += 13 + len;
  }
  return d.length > 0;
}

/**
 * True if a datagram starts with a DTLS handshake record of epoch 0 that
 * holds a ClientHello: content type 22, epoch bytes 3-4 zero, handshake
 * type 1 at byte 13.
 */
export function isClientHello(d: Buffer): boolean {
  return d.length > 13 && d[0] === 22 && d[3] === 0 && d[4] === 0 && d[13] === 1;
}
