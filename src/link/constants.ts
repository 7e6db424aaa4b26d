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
/** Packets per batch handed to DTLS in one native call. */
export const SEND_BATCH_PACKETS = 64;
