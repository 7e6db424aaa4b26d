/**
 * Loader and type contract for the two small native addons.
 *
 * shallot_dtls: OpenSSL's DTLS 1.2 (the OpenSSL that Node carries) over a
 * custom datagram BIO. JavaScript owns the UDP socket; the addon only turns
 * datagrams into records and back. It owns no policy: which peer may
 * connect, what identity is expected and what the bytes mean are decided
 * above it.
 *
 * shallot_tun: open a Linux TUN device and move batches of packets between
 * it and JavaScript, polled by libuv on Node's own loop.
 *
 * Packed batches: everywhere a batch of packets or datagrams crosses the
 * boundary it is one Buffer holding, back to back, [u16 big-endian length]
 * [bytes]. One call per batch, no object per packet.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

export interface DtlsContextOptions {
  /** PEM of the link certificate (ECDSA P-256, self-signed). */
  certPem: string;
  /** PEM of its private key. */
  keyPem: string;
  /**
   * Largest datagram DTLS may emit (bytes of UDP payload). Records and
   * handshake fragments never exceed it.
   */
  mtu: number;
}

/** Results of DtlsContext.listen. */
export const LISTEN_DROP = 0;
/** listen() returned a positive byte count: a HelloVerifyRequest to send back. */
export const LISTEN_VERIFIED = -2;

export interface NativeDtlsContext {
  /**
   * Install the cookie secrets (32 bytes each). Cookies are HMAC-SHA256 over
   * the peer key under `current`; a cookie made under `previous` still
   * verifies, so rotation never rejects a handshake in flight.
   */
  setCookieSecrets(current: Buffer, previous: Buffer | null): void;
  /**
   * Stateless listen step for one datagram from a peer with no session.
   * `peerKey` identifies the remote address (any bytes, e.g. "ip:port").
   * Returns n > 0: a HelloVerifyRequest of n bytes was written to `out`;
   * LISTEN_DROP (0): nothing to do (not a ClientHello, bad cookie, garbage);
   * LISTEN_VERIFIED (-2): the ClientHello carried a valid cookie: call
   * accept() now to get the server session that continues it.
   * Allocates no per-peer state in any case but LISTEN_VERIFIED.
   */
  listen(datagram: Buffer, peerKey: Buffer, out: Buffer): number;
  /** The session for the ClientHello that listen() just verified. */
  accept(): NativeDtlsSession;
  /** A client (dialer) session; call pump() to emit the ClientHello. */
  connect(): NativeDtlsSession;
}

export interface NativeDtlsSession {
  /**
   * Feed one received datagram (or null to just drive the handshake).
   * Decrypted application records are written to `out` packed
   * ([u16 len][bytes] each). Returns the number of bytes written to `out`
   * (0 if none), or -1 when the session has failed or been closed by the
   * peer (see error()). Bad or replayed records are dropped silently by
   * DTLS and do not fail the session.
   */
  receive(datagram: Buffer | null, out: Buffer): number;
  /**
   * Drive the handshake with no input (what connect() refers to: emits the
   * ClientHello); a no-op once established. Returns 0, or -1 if the session
   * has failed. Then call flush().
   */
  pump(): number;
  /**
   * Encrypt a packed batch (`len` bytes of `packed`), one record per
   * packet, and write the resulting datagrams packed into `out`. Returns
   * bytes written to `out`, or -1 if the session is not established or
   * failed. Packets larger than maxPlaintext() are skipped.
   */
  sendBatch(packed: Buffer, len: number, out: Buffer): number;
  /**
   * Move datagrams DTLS queued on its own (handshake flights,
   * retransmissions, alerts) into `out`, packed. Returns bytes written
   * (0 if none). What does not fit stays queued.
   */
  flush(out: Buffer): number;
  /** ms until handleTimeout() should run, or -1 if no timer is armed. */
  timeoutMs(): number;
  /** Run DTLS's retransmission timer; returns -1 if the handshake gave up. */
  handleTimeout(): number;
  /** True once the handshake has completed. */
  established(): boolean;
  /** Largest plaintext one record may carry without exceeding the mtu. */
  maxPlaintext(): number;
  /** DER of the peer's certificate, or null before the handshake is done. */
  peerCertificate(): Buffer | null;
  /** RFC 5705 exporter: `length` bytes under `label`, no context. */
  exportKeyingMaterial(label: string, length: number): Buffer;
  /**
   * Lower the handshake datagram size (before the first flight; the full
   * mtu applies once established): a re-key handshake travels inside
   * another session's records. Returns 0, or -1 if out of range or too late.
   */
  limitHandshakeMtu(mtu: number): number;
  /**
   * TESTS ONLY: master secret (48 bytes) || client random (32) || server
   * random (32) of an established session, or null unless the environment
   * has SHALLOT_DTLS_TEST_SECRETS=1. Lets a test play the attacker who
   * seized a node's memory.
   */
  testSecrets(): Buffer | null;
  /** Negotiated cipher suite name (OpenSSL name). */
  cipher(): string;
  /** Last error text (OpenSSL reason or alert), or '' if none. */
  error(): string;
  /** Queue a close_notify (then flush()), and stop accepting records. */
  shutdown(): void;
  /** Free the SSL object now (idempotent; also happens on GC). */
  free(): void;
}

export interface NativeDtls {
  DtlsContext: new (options: DtlsContextOptions) => NativeDtlsContext;
  /** A fresh ECDSA P-256 key and a self-signed certificate for it (PEM). */
  generateCertificate(): { keyPem: string; certPem: string };
  /** SHA-256 of the DER of a PEM certificate. */
  certificateFingerprint(certPem: string): Buffer;
  /** DER of a PEM certificate. */
  certificateDer(certPem: string): Buffer;
}

export interface NativeTun {
  /**
   * Open /dev/net/tun as IFF_TUN | IFF_NO_PI, non-blocking, with the given
   * name (may contain %d). Returns the fd and the name the kernel chose.
   * With `vnetHdr` (IFF_VNET_HDR) every packet written must start with a
   * 10-byte virtio_net_hdr (see src/tun/offload.ts), which lets a write
   * carry a coalesced TCP run the kernel segments (GSO); reads strip the
   * header and refuse (stats().offloaded) any packet whose header asks for
   * segmentation or a checksum, which the kernel never sends while no
   * offload is enabled with TUNSETOFFLOAD (none is).
   */
  open(name: string, vnetHdr?: boolean): { fd: number; name: string };
  /**
   * Start polling `fd` on Node's loop. On every wake-up up to `maxBatch`
   * packets are read into one reused Buffer, packed, and `onPackets(buf,
   * len, count)` is called once; `buf` is only valid during the call.
   * Packets longer than `maxPacket` are dropped and counted.
   * Limits: maxBatch 1..4096, maxPacket 1..65535, maxBatch * (maxPacket + 2)
   * <= 64 MiB. Throws (code ERR_TUN_ALREADY_READING) if `fd` is already
   * being read. An fd not from open() (e.g. inherited) is adopted. If
   * onPackets throws, the error goes to process 'uncaughtException' and
   * reading goes on. stopReading()/close() may be called from onPackets.
   */
  startReading(
    fd: number,
    maxBatch: number,
    maxPacket: number,
    onPackets: (buf: Buffer, len: number, count: number) => void,
  ): void;
  /** Stop polling `fd` (idempotent). */
  stopReading(fd: number): void;
  /**
   * Write a packed batch of `len` bytes, one write() per packet. Returns
   * the number of packets written; those refused with EAGAIN are dropped.
   * A malformed batch (a length running past `len`) throws RangeError and
   * writes nothing; zero-length packets are skipped; packets the kernel
   * refuses otherwise are counted in stats().writeErrors.
   */
  writeBatch(fd: number, packed: Buffer, len: number): number;
  /** Counters of the reader: packets read, dropped (too long), read errors. */
  stats(fd: number): {
    read: number;
    oversize: number;
    errors: number;
    /** Packets writeBatch() wrote to this fd. */
    written: number;
    /** Packets writeBatch() dropped because the kernel said EAGAIN/ENOBUFS. */
    writeDropped: number;
    /** Packets the kernel refused otherwise (e.g. EINVAL: not IPv4/IPv6; EIO: link down). */
    writeErrors: number;
    /** Reads refused because their virtio_net_hdr asked for an offload (vnetHdr only). */
    offloaded: number;
    /**
     * True while the fd is polled. A read error that cannot clear (device
     * deleted, bad fd) stops polling by itself: `errors` grows, this turns
     * false and `lastError` says why; stopReading()/close() as usual.
     */
    reading: boolean;
    /** strerror() of the last read error, or '' if none. */
    lastError: string;
  };
  /**
   * Close the fd (stops polling first). stats() and close() throw (code
   * ERR_TUN_UNKNOWN_FD) for an fd this addon did not open or read, so a
   * second close() cannot close an unrelated file that reused the number.
   */
  close(fd: number): void;
}

/** Records of NativeUdp.startReading: [u8 4][addr 4][u16 port][u16 len][u16 seg] before the bytes. */
export const UDP_RECORD_HEADER_V4 = 11;
/** [u8 6][addr 16][u32 scope id][u16 port][u16 len][u16 seg] before the bytes. */
export const UDP_RECORD_HEADER_V6 = 27;

export interface NativeUdp {
  /**
   * A non-blocking UDP socket (IPV6_V6ONLY for family 6) bound to
   * `host:port` (an IP literal; a link-local IPv6 address may carry
   * "%interface"; port 0 picks one). SO_RCVBUF and SO_SNDBUF are set to
   * `bufferBytes` (0: leave the defaults), with the FORCE variants first so
   * that root passes net.core.*mem_max; the kernel reports double the value
   * it grants, as usual. A failed bind throws an Error with Node's `code`
   * ('EADDRINUSE', 'EADDRNOTAVAIL', ...), `errno` and `syscall`; a host
   * that is not an address of that family throws TypeError.
   * `gso` (default true): send runs of equal-size datagrams to one
   * destination as one UDP GSO message (UDP_SEGMENT) when the kernel has it;
   * a message the kernel refuses turns it off for the socket and is sent
   * datagram by datagram instead.
   * `gro` (default false): let the kernel deliver a run of datagrams from
   * one source as one record (UDP_GRO; see startReading).
   */
  open(
    family: 4 | 6,
    host: string,
    port: number,
    bufferBytes: number,
    gso?: boolean,
    gro?: boolean,
  ): {
    fd: number;
    /** The bound port. */
    port: number;
    /** The bound address, as Node's socket.address() prints it. */
    address: string;
    recvBufferBytes: number;
    sendBufferBytes: number;
    /** True if sends use UDP GSO. */
    gso: boolean;
    /** True if the kernel took UDP_GRO. */
    gro: boolean;
  };
  /**
   * Start polling `fd` on Node's loop. A wake-up runs up to 4 recvmmsg()
   * calls of up to `maxBatch` datagrams each (fewer when the queue runs
   * dry) and calls `onDatagrams(buf, len, count)` once per call that got
   * any. `buf` is one reused Buffer, valid only during the call (so is any
   * view of it); its `len` bytes are `count` records back to back:
   *   IPv4: [u8 4][addr 4][u16 port][u16 len][u16 seg][bytes]
   *   IPv6: [u8 6][addr 16][u32 scope id][u16 port][u16 len][u16 seg][bytes]
   * (big-endian). `seg` is 0 for one datagram; on a socket opened with
   * `gro` a record may be a run the kernel coalesced, of datagrams of `seg`
   * bytes each but the last (which may be shorter). Datagrams longer than
   * `maxDatagram` (runs whose `seg` is) are consumed, dropped and counted
   * (stats().oversize). Limits: maxBatch 1..1024, maxDatagram 1..65535,
   * maxBatch * (slot + 27) <= 64 MiB, where slot is maxDatagram, or 65535
   * with gro. Throws (code
   * ERR_UDP_ALREADY_READING) if `fd` is already being read. If onDatagrams
   * throws, the error goes to process 'uncaughtException' and reading goes
   * on. stopReading()/close() may be called from onDatagrams.
   */
  startReading(
    fd: number,
    maxBatch: number,
    maxDatagram: number,
    onDatagrams: (buf: Buffer, len: number, count: number) => void,
  ): void;
  /** Stop polling `fd` (idempotent). */
  stopReading(fd: number): void;
  /**
   * Send every datagram of a packed batch ([u16 len][bytes]..., `len`
   * bytes of `packed`) to one destination with sendmmsg(), up to 64
   * messages per call (a message is one datagram, or with GSO a run of up
   * to 64 equal-size ones), partial sends retried. `addr` is 4 (family 4) or 16 (family 6)
   * bytes; `scopeId` (default 0) is the IPv6 interface index. Returns the
   * number of datagrams sent. When the kernel says EAGAIN/ENOBUFS the rest
   * of the batch is dropped (stats().sendDropped); a datagram refused
   * otherwise (EMSGSIZE, ENETUNREACH, EPERM, a destination of the other
   * family...) is counted in stats().sendErrors and the rest go on. A
   * malformed batch (a length running past `len`) throws RangeError and
   * sends nothing. The batch buffer may be reused as soon as this returns.
   */
  sendBatch(
    fd: number,
    packed: Buffer,
    len: number,
    family: 4 | 6,
    addr: Buffer,
    port: number,
    scopeId?: number,
  ): number;
  /**
   * Send several packed batches to several destinations in one go, as
   * sendBatch does. `buf` holds `len` bytes of groups, back to back:
   *   IPv4: [u8 4][addr 4][u16 port][u32 n][n bytes of a packed batch]
   *   IPv6: [u8 6][addr 16][u32 scope id][u16 port][u32 n][n bytes ...]
   * (big-endian). Everything is validated first: a malformed buffer throws
   * RangeError and sends nothing. Returns the number of datagrams sent.
   */
  sendGroups(fd: number, buf: Buffer, len: number): number;
  /** Send one datagram, as sendBatch does; returns 1 if sent, else 0. */
  sendTo(
    fd: number,
    data: Buffer,
    family: 4 | 6,
    addr: Buffer,
    port: number,
    scopeId?: number,
  ): number;
  /** Counters of the socket. */
  stats(fd: number): {
    /** Datagrams delivered to onDatagrams. */
    received: number;
    /** Datagrams dropped for being longer than maxDatagram. */
    oversize: number;
    /** Receive errors. */
    errors: number;
    /** onDatagrams calls: received / callbacks is the mean batch. */
    callbacks: number;
    /** Datagrams the kernel accepted. */
    sent: number;
    /** Datagrams dropped because the kernel said EAGAIN/ENOBUFS. */
    sendDropped: number;
    /** Datagrams the kernel refused otherwise. */
    sendErrors: number;
    /**
     * True while the fd is polled. An error that cannot clear stops
     * polling by itself: `errors` grows, this turns false and `lastError`
     * says why.
     */
    reading: boolean;
    /** strerror() of the last receive error, or '' if none. */
    lastError: string;
    /** strerror() of the last send error (not EAGAIN/ENOBUFS), or ''. */
    lastSendError: string;
    /** True while sends use UDP GSO. */
    gso: boolean;
    /** GSO messages sent (each more than one datagram). */
    gsoSends: number;
    /** GSO messages the kernel refused (then sent datagram by datagram). */
    gsoFallbacks: number;
    /** strerror() of why GSO is off, or '' (on, or not asked for). */
    gsoError: string;
  };
  /**
   * Close the fd (stops polling first). Every call but stopReading()
   * throws (code ERR_UDP_UNKNOWN_FD) for an fd this addon did not open, so
   * a second close() cannot close an unrelated file that reused the number.
   */
  close(fd: number): void;
  /**
   * An IP literal as bytes ("fe80::1%eth0" gives its interface index as
   * scopeId), or null if `host` is not one. For cache misses only.
   */
  parseAddress(host: string): { family: 4 | 6; addr: Buffer; scopeId: number } | null;
  /**
   * Address bytes as Node prints rinfo.address (a link-local IPv6 address
   * with a scope id gets "%interface"). For cache misses only.
   */
  formatAddress(family: 4 | 6, addr: Buffer, scopeId: number): string;
}

const here = path.dirname(fileURLToPath(import.meta.url));
// dist/src/native -> repository root
const root = path.resolve(here, '..', '..', '..');
const require = createRequire(import.meta.url);

let dtls: NativeDtls | undefined;
let tun: NativeTun | undefined;
let udp: NativeUdp | undefined;

export function loadDtls(): NativeDtls {
  dtls ??= require(path.join(root, 'build', 'Release', 'shallot_dtls.node')) as NativeDtls;
  return dtls;
}

export function loadTun(): NativeTun {
  tun ??= require(path.join(root, 'build', 'Release', 'shallot_tun.node')) as NativeTun;
  return tun;
}

export function loadUdp(): NativeUdp {
  udp ??= require(path.join(root, 'build', 'Release', 'shallot_udp.node')) as NativeUdp;
  return udp;
}
