/*
 * dtls_core: DTLS 1.2 over OpenSSL 3.0 with a datagram-preserving BIO.
 *
 * Pure C, no N-API, so the same file builds into the Node addon (against
 * Node's own OpenSSL) and into a standalone sanitizer harness (against the
 * system libssl). The caller owns the UDP socket: it feeds datagrams in and
 * takes datagrams out. Nothing here decides who may connect.
 *
 * Packed batches are [u16 big-endian length][bytes] back to back.
 * Every function takes its buffers as (pointer, capacity) and never writes
 * past the capacity; byte counts are returned as int (capacities above
 * INT_MAX are treated as INT_MAX).
 */
#ifndef SHALLOT_DTLS_CORE_H
#define SHALLOT_DTLS_CORE_H

#include <stddef.h>
#include <stdint.h>

#define DTLS_LISTEN_DROP 0
#define DTLS_LISTEN_VERIFIED (-2)
#define DTLS_SECRET_LEN 32
#define DTLS_FINGERPRINT_LEN 32
/* The mtu range: DTLS cannot work below 256 (OpenSSL's floor), UDP above 65507. */
#define DTLS_MIN_MTU 256
#define DTLS_MAX_MTU 65507

typedef struct dtls_ctx dtls_ctx;
typedef struct dtls_sess dtls_sess;

/* Context: certificate, key, mtu, cookie secrets and the one listen SSL. */
dtls_ctx *dtls_ctx_new(const char *cert_pem, size_t cert_len, const char *key_pem,
                       size_t key_len, int mtu, char *err, size_t err_cap);
void dtls_ctx_free(dtls_ctx *c);
/* prev may be NULL. Returns 0, or -1 if a secret is not DTLS_SECRET_LEN bytes. */
int dtls_ctx_set_cookie_secrets(dtls_ctx *c, const uint8_t *cur, size_t cur_len,
                                const uint8_t *prev, size_t prev_len);
/* n > 0: a HelloVerifyRequest of n bytes is in out; DTLS_LISTEN_DROP;
 * DTLS_LISTEN_VERIFIED: call dtls_ctx_accept before the next listen. */
int dtls_ctx_listen(dtls_ctx *c, const uint8_t *dgram, size_t len, const uint8_t *peer,
                    size_t peer_len, uint8_t *out, size_t cap);
/* NULL if listen did not just return DTLS_LISTEN_VERIFIED (or out of memory). */
dtls_sess *dtls_ctx_accept(dtls_ctx *c);
dtls_sess *dtls_ctx_connect(dtls_ctx *c);

/* Sessions stay valid after their context is freed. */
/* Lower the handshake datagram size to mtu (DTLS_MIN_MTU or more) before the
 * session sends its first flight, e.g. to tunnel a re-key handshake inside
 * another session's records; the full mtu applies once established.
 * Returns 0, or -1 if mtu is out of range or the handshake is done. */
int dtls_sess_limit_handshake_mtu(dtls_sess *s, int mtu);
int dtls_sess_pump(dtls_sess *s);
int dtls_sess_receive(dtls_sess *s, const uint8_t *dgram, size_t len, uint8_t *out, size_t cap);
int dtls_sess_send_batch(dtls_sess *s, const uint8_t *in, size_t len, uint8_t *out, size_t cap);
int dtls_sess_flush(dtls_sess *s, uint8_t *out, size_t cap);
long dtls_sess_timeout_ms(dtls_sess *s);
int dtls_sess_handle_timeout(dtls_sess *s);
int dtls_sess_established(const dtls_sess *s);
int dtls_sess_max_plaintext(const dtls_sess *s);
/* DER length (copied only if it fits in cap; out may be NULL), -1 if none. */
int dtls_sess_peer_cert(dtls_sess *s, uint8_t *out, size_t cap);
int dtls_sess_export(dtls_sess *s, const char *label, size_t label_len, uint8_t *out, size_t len);
/* TESTS ONLY: master secret (48) || client random (32) || server random (32)
 * into out (cap >= DTLS_TEST_SECRETS_LEN), so a test can play the attacker
 * who seized a node's memory. Returns DTLS_TEST_SECRETS_LEN, or -1 unless
 * the environment has SHALLOT_DTLS_TEST_SECRETS=1 and the session is up. */
#define DTLS_TEST_SECRETS_LEN 112
int dtls_sess_test_secrets(dtls_sess *s, uint8_t *out, size_t cap);
const char *dtls_sess_cipher(const dtls_sess *s);
const char *dtls_sess_error(const dtls_sess *s);
void dtls_sess_shutdown(dtls_sess *s);
/* Frees the SSL now; the handle stays usable (every call then fails). */
void dtls_sess_close(dtls_sess *s);
void dtls_sess_free(dtls_sess *s);

/* Fresh P-256 key and self-signed certificate; both strings malloc'd. */
int dtls_generate_certificate(char **key_pem, char **cert_pem);
/* DER length (copied only if it fits in cap; out may be NULL), -1 if not a PEM certificate. */
int dtls_certificate_der(const char *pem, size_t len, uint8_t *out, size_t cap);
int dtls_certificate_fingerprint(const char *pem, size_t len, uint8_t out[DTLS_FINGERPRINT_LEN]);

#endif
