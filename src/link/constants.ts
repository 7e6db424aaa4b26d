/**
 * Link-layer timing and size constants, with units in their names. These
 * are the defaults documented in docs/protocol.md ("Link timers").
 */

/** The one coarse tick that drives every link timer. */
export const LINK_TICK_MS = 100;
/** A DTLS handshake (cookie exchange included) must finish within this. */
export const HANDSHAKE_TIMEOUT_MS = 10_000;
/** After the handshake, both AUTH messages must have crossed within this. */
export const AUTH_TIMEOUT_MS = 5_000;
/** AUTH is resent this often until the peer's AUTH arrives (records can be lost). */
export const AUTH_RESEND_MS = 400;
/** Send a keepalive when nothing was sent to a peer for this long. */
export const KEEPALIVE_INTERVAL_MS = 2_500;
/** Declare a peer dead when nothing authentic was heard from it for this long. */
export const DEAD_PEER_AFTER_MS = 10_000;
/** Redial backoff after a failed or lost link: doubles from min to max. */
export const RECONNECT_MIN_MS = 500;
export const RECONNECT_MAX_MS = 8_000;
/** Cookie secrets rotate this often; the previous one stays valid one period. */
export const COOKIE_ROTATE_MS = 60_000;
/**
 * Re-keying (docs/protocol.md 4.4): the dialer starts a fresh DTLS session
 * inside the current one this long after the current one was established,
 * or after this many records on it, whichever comes first.
 */
export const REKEY_AFTER_MS = 120_000;
/**
 * RFC 8446 5.5 bounds AES-GCM at 2^24.5 full-size records per key; link
 * records are smaller, so 2^24 is well inside for all three suites.
 */
export const REKEY_AFTER_RECORDS = 2 ** 24;
/** Either side drops a link whose session is older than REKEY_AFTER_MS plus this. */
export const REKEY_REJECT_GRACE_MS = 30_000;
/** A re-key handshake not complete in this long is abandoned (and retried). */
export const REKEY_HANDSHAKE_TIMEOUT_MS = 5_000;
/**
 * The listener accepts a successor's verified ClientHello at most once per
 * this per link (a DTLS retransmission comes after 1 s at the earliest).
 */
export const REKEY_MIN_GAP_MS = 500;
/** Wait this long after a failed re-key before the next attempt. */
export const REKEY_RETRY_MS = 1_000;
/**
 * After the switch the old session still decrypts (never encrypts) for
 * this long, for records that were in flight; then it is freed.
 */
export const REKEY_OVERLAP_MS = 5_000;
/** Most links (in any state) one endpoint holds: about 55 KiB of DTLS state each. */
export const MAX_PEERS = 1024;
/**
 * Largest UDP payload a link sends: 1500-byte Ethernet minus IPv6 (40) and
 * UDP (8) headers, so a link datagram never fragments on IPv4 or IPv6.
 */
export const LINK_DATAGRAM_BYTES = 1452;
/** Worst-case DTLS 1.2 AEAD record overhead: header 13, explicit nonce 8, tag 16. */
export const DTLS_RECORD_OVERHEAD_BYTES = 37;
/** Largest link message: one datagram minus the record overhead. */
export const LINK_MESSAGE_BYTES = LINK_DATAGRAM_BYTES - DTLS_RECORD_OVERHEAD_BYTES;
/** Handshake datagrams of a re-key travel in a REKEY message: type byte plus datagram. */
export const REKEY_HANDSHAKE_MTU = LINK_MESSAGE_BYTES - 1;
/** Packets per batch handed to DTLS in one native call. */
export const SEND_BATCH_PACKETS = 64;
