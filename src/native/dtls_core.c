/*
 * dtls_core.c: see dtls_core.h. Single-threaded use per context and per
 * session; the only shared state is the immutable BIO_METHOD.
 */
#include "dtls_core.h"

#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#define CIPHERS \
  "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384"
#define GROUPS "X25519:P-256"
#define COOKIE_LEN 32
/* Datagrams DTLS emits but the caller has not collected yet: a bound, not a
 * buffer size, so a caller that never flushes cannot grow memory forever. */
#define QUEUE_MAX (256 * 1024)
/* DTLS header 13 + explicit nonce 8 + tag 16: the worst case of our suites. */
#define WORST_OVERHEAD 37
#define MAX_PLAIN 16384
#define MAX_PEM (64 * 1024)
/* During the handshake OpenSSL stacks a 4 KiB BIO_f_buffer on our BIO and
 * packs a flight into one datagram up to the mtu; a datagram larger than
 * that buffer would reach us split in two. So handshake datagrams are
 * capped here and the full mtu applies once the handshake is done. */
#define HANDSHAKE_MTU 4096
/*
 * Epoch 0 (the handshake before ChangeCipherSpec) carries no MAC, so an
 * off-path attacker who knows the address pair can forge any of its
 * records, and OpenSSL aborts the handshake on a bad one or on an alert
 * (RFC 6347 4.1.2.7 says such records SHOULD be discarded). What the
 * attacker cannot know is the record sequence number: a client starts its
 * epoch-0 numbers at a random 48-bit offset (shifted on the way out), and
 * a DTLSv1_listen server answers with the numbers of the client's verified
 * ClientHello and counts on from there (RFC 6347 4.2.1). Each side then
 * drops, before OpenSSL sees it, any datagram with an epoch-0 record
 * outside EPOCH0_WINDOW numbers above that base: a forged record gets
 * through with probability 2^-38.
 */
#define SEQ_MASK 0xFFFFFFFFFFFFull
#define EPOCH0_WINDOW 1024

struct queue {
  uint8_t *buf; /* packed datagrams */
  size_t len, cap;
};

struct dtls_sess {
  SSL *ssl;
  dtls_ctx *owner;             /* set only while this is a context's listen SSL */
  const uint8_t *in;           /* datagram being fed, valid during one call */
  size_t in_len;
  const uint8_t *peer;         /* listen(): the peer key of this datagram */
  size_t peer_len;
  uint8_t cookie[COOKIE_LEN];  /* the cookie listen() verified */
  int has_cookie;
  struct queue q;
  int mtu, mtu_set, failed, closed; /* mtu_set: full mtu applied */
  int hs_mtu;                  /* handshake datagram size (<= HANDSHAKE_MTU) */
  uint64_t seq_base;           /* the peer's epoch-0 numbers lie in [base, base + window) */
  int seq_known;               /* client: always; server: once listen() verified */
  int seq_shift;               /* client: add seq_base to our own epoch-0 numbers */
  char err[192];
};

struct dtls_ctx {
  SSL_CTX *ssl_ctx;
  int mtu;
  uint8_t secret[2][DTLS_SECRET_LEN]; /* current, previous */
  int has_prev;
  int verified; /* listener holds a verified ClientHello */
  dtls_sess *listener;
  BIO_ADDR *client; /* DTLSv1_listen writes the (unknown) peer address here */
};

static int cap_int(size_t cap) { return cap > INT_MAX ? INT_MAX : (int)cap; }

static void set_text(char *dst, size_t cap, const char *a, const char *b) {
  size_t n = 0;
  for (; a && *a && n + 1 < cap; a++) dst[n++] = *a;
  for (; b && *b && n + 1 < cap; b++) dst[n++] = *b;
  dst[n] = '\0';
}

/* "what: <OpenSSL reason>" from the error queue, then empty the queue. */
static void error_text(char *dst, size_t cap, const char *what) {
  unsigned long e = ERR_peek_last_error();
  const char *r = e ? ERR_reason_error_string(e) : NULL;
  set_text(dst, cap, what, r ? ": " : NULL);
  if (r) set_text(dst + strlen(dst), cap - strlen(dst), r, NULL);
  ERR_clear_error();
}

static int fail(dtls_sess *s, const char *what) {
  s->failed = 1;
  error_text(s->err, sizeof s->err, what);
  return -1;
}

/* ---- datagram queue ---------------------------------------------------- */

static int queue_push(struct queue *q, const uint8_t *d, size_t n) {
  size_t need = q->len + 2 + n;
  if (n > 0xFFFF || need > QUEUE_MAX) return 0;
  if (need > q->cap) {
    size_t cap = q->cap ? q->cap : 4096;
    while (cap < need) cap *= 2;
    if (cap > QUEUE_MAX) cap = QUEUE_MAX;
    uint8_t *b = realloc(q->buf, cap);
    if (b == NULL) return 0;
    q->buf = b;
    q->cap = cap;
  }
  q->buf[q->len] = (uint8_t)(n >> 8);
  q->buf[q->len + 1] = (uint8_t)n;
  memcpy(q->buf + q->len + 2, d, n);
  q->len = need;
  return 1;
}

/* Move whole packed datagrams into out while they fit; the rest stays. */
static size_t queue_drain(struct queue *q, uint8_t *out, size_t cap) {
  size_t rd = 0;
  while (q->len - rd >= 2) {
    size_t n = 2 + ((size_t)q->buf[rd] << 8 | q->buf[rd + 1]);
    if (n > cap - rd) break; /* rd == bytes written so far */
    memcpy(out + rd, q->buf + rd, n);
    rd += n;
  }
  if (rd == 0) return 0; /* also covers buf == NULL */
  memmove(q->buf, q->buf + rd, q->len - rd);
  q->len -= rd;
  return rd;
}

/* ---- epoch-0 sequence numbers ------------------------------------------- */

static uint64_t rd48(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 6; i++) v = v << 8 | p[i];
  return v;
}

static void wr48(uint8_t *p, uint64_t v) {
  for (int i = 5; i >= 0; i--, v >>= 8) p[i] = (uint8_t)v;
}

/* Add base to the sequence number of every epoch-0 record of a datagram
 * (records of later epochs are MAC'd over theirs and stay as they are). */
static void shift_epoch0(uint8_t *d, size_t len, uint64_t base) {
  size_t o = 0;
  while (len - o >= 13) {
    size_t rl = ((size_t)d[o + 11] << 8) | d[o + 12];
    if (d[o + 3] == 0 && d[o + 4] == 0) wr48(d + o + 5, (rd48(d + o + 5) + base) & SEQ_MASK);
    if (len - o - 13 < rl) return;
    o += 13 + rl;
  }
}

/* Every epoch-0 record of a framed (datagram_sane) datagram is within the
 * window above base. */
static int epoch0_in_window(const uint8_t *d, size_t len, uint64_t base) {
  size_t o = 0;
  while (len - o >= 13) {
    size_t rl = ((size_t)d[o + 11] << 8) | d[o + 12];
    if (d[o + 3] == 0 && d[o + 4] == 0 && ((rd48(d + o + 5) - base) & SEQ_MASK) >= EPOCH0_WINDOW)
      return 0;
    if (len - o - 13 < rl) return 0;
    o += 13 + rl;
  }
  return 1;
}

/* ---- the datagram BIO --------------------------------------------------- */

static int bio_write(BIO *b, const char *data, int len) {
  dtls_sess *s = BIO_get_data(b);
  BIO_clear_retry_flags(b);
  if (s == NULL || data == NULL || len <= 0) return 0;
  /* A full queue drops the datagram and reports success, as a congested
   * link would: DTLS retransmits handshake flights itself. */
  if (queue_push(&s->q, (const uint8_t *)data, (size_t)len) && s->seq_shift)
    shift_epoch0(s->q.buf + s->q.len - (size_t)len, (size_t)len, s->seq_base);
  return len;
}

static int bio_read(BIO *b, char *buf, int len) {
  dtls_sess *s = BIO_get_data(b);
  BIO_clear_retry_flags(b);
  if (s == NULL || s->in == NULL || buf == NULL || len <= 0) {
    BIO_set_retry_read(b);
    return -1;
  }
  /* One datagram per read, truncated like recvfrom() if it does not fit. */
  size_t n = s->in_len < (size_t)len ? s->in_len : (size_t)len;
  memcpy(buf, s->in, n);
  s->in = NULL;
  s->in_len = 0;
  return (int)n;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr) {
  dtls_sess *s = BIO_get_data(b);
  switch (cmd) {
    case BIO_CTRL_FLUSH:
      return 1;
    case BIO_CTRL_DGRAM_QUERY_MTU: /* unused with SSL_OP_NO_QUERY_MTU, but truthful */
      return s ? s->mtu : 0;
    case BIO_CTRL_DGRAM_GET_MTU_OVERHEAD: /* the mtu option already is the UDP payload */
    case BIO_CTRL_WPENDING:               /* writes are queued whole, nothing held back */
    case BIO_CTRL_DGRAM_GET_PEER:         /* JS knows the peer; DTLSv1_listen clears it */
    default:
      return 0;
  }
}

static BIO_METHOD *g_method;
static pthread_once_t g_method_once = PTHREAD_ONCE_INIT;

static void method_init(void) {
  int index = BIO_get_new_index();
  if (index == -1) return;
  BIO_METHOD *m = BIO_meth_new(index | BIO_TYPE_SOURCE_SINK, "shallot-dgram");
  if (m == NULL) return;
  if (!BIO_meth_set_write(m, bio_write) || !BIO_meth_set_read(m, bio_read) ||
      !BIO_meth_set_ctrl(m, bio_ctrl)) {
    BIO_meth_free(m);
    return;
  }
  g_method = m;
}

static BIO_METHOD *bio_method(void) {
  if (pthread_once(&g_method_once, method_init) != 0) return NULL;
  return g_method;
}

/* ---- callbacks ---------------------------------------------------------- */

/* Identity is pinned above us (certificate DER + exporter-bound signature),
 * so any single self-signed certificate whose self-signature verifies is
 * acceptable; validity dates of a pinned key carry no meaning. */
static int verify_peer(int ok, X509_STORE_CTX *st) {
  X509 *cert = X509_STORE_CTX_get_current_cert(st);
  if (cert == NULL || X509_STORE_CTX_get_error_depth(st) != 0) return 0;
  if (ok) return 1;
  switch (X509_STORE_CTX_get_error(st)) {
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT: {
      EVP_PKEY *pk = X509_get0_pubkey(cert);
      return pk != NULL && X509_verify(cert, pk) == 1;
    }
    case X509_V_ERR_CERT_NOT_YET_VALID:
    case X509_V_ERR_CERT_HAS_EXPIRED:
      return 1;
    default:
      return 0;
  }
}

static int cookie_mac(const dtls_ctx *c, int which, const dtls_sess *s, uint8_t *out) {
  unsigned int n = 0;
  if (s->peer == NULL || s->peer_len == 0) return 0;
  if (HMAC(EVP_sha256(), c->secret[which], DTLS_SECRET_LEN, s->peer, s->peer_len, out, &n) ==
      NULL)
    return 0;
  return n == COOKIE_LEN;
}

static int cookie_generate(SSL *ssl, unsigned char *cookie, unsigned int *len) {
  dtls_sess *s = SSL_get_app_data(ssl);
  /* Only the listen SSL mints cookies: an accepted session never has to. */
  if (s == NULL || s->owner == NULL || !cookie_mac(s->owner, 0, s, cookie)) return 0;
  *len = COOKIE_LEN;
  return 1;
}

static int cookie_verify(SSL *ssl, const unsigned char *cookie, unsigned int len) {
  dtls_sess *s = SSL_get_app_data(ssl);
  uint8_t mac[COOKIE_LEN];
  if (s == NULL || cookie == NULL || len != COOKIE_LEN) return 0;
  /* The accepted session re-checks the ClientHello that listen() verified;
   * by then the secrets may have rotated, so compare with what passed. */
  if (s->owner == NULL) return s->has_cookie && CRYPTO_memcmp(cookie, s->cookie, len) == 0;
  for (int i = 0; i <= s->owner->has_prev; i++) {
    if (cookie_mac(s->owner, i, s, mac) && CRYPTO_memcmp(mac, cookie, len) == 0) {
      memcpy(s->cookie, cookie, len);
      s->has_cookie = 1;
      return 1;
    }
  }
  return 0;
}

/* ---- sessions ----------------------------------------------------------- */

static dtls_sess *sess_new(dtls_ctx *c, int server) {
  BIO_METHOD *m = bio_method();
  dtls_sess *s = calloc(1, sizeof *s);
  BIO *b = NULL;
  if (s == NULL || m == NULL) goto fail;
  s->mtu = c->mtu;
  if ((s->ssl = SSL_new(c->ssl_ctx)) == NULL || (b = BIO_new(m)) == NULL) goto fail;
  BIO_set_data(b, s);
  BIO_set_init(b, 1);
  SSL_set_bio(s->ssl, b, b); /* the SSL owns b from here */
  /* SSL_set_mtu reads the BIO's overhead, so it must follow SSL_set_bio. */
  s->hs_mtu = c->mtu < HANDSHAKE_MTU ? c->mtu : HANDSHAKE_MTU;
  if (!SSL_set_app_data(s->ssl, s) || SSL_set_mtu(s->ssl, s->hs_mtu) <= 0) goto fail;
  s->mtu_set = s->hs_mtu == c->mtu;
  if (server) {
    SSL_set_accept_state(s->ssl);
  } else {
    uint8_t r[6];
    if (RAND_bytes(r, sizeof r) != 1) goto fail;
    s->seq_base = rd48(r);
    s->seq_known = s->seq_shift = 1;
    SSL_set_connect_state(s->ssl);
  }
  return s;
fail:
  dtls_sess_free(s); /* b is either NULL or already owned by the SSL */
  ERR_clear_error();
  return NULL;
}

static int drive_handshake(dtls_sess *s) {
  int r = SSL_do_handshake(s->ssl);
  if (r == 1) {
    if (!s->mtu_set && SSL_set_mtu(s->ssl, s->mtu) <= 0) return fail(s, "cannot set mtu");
    s->mtu_set = 1;
    return 0;
  }
  int e = SSL_get_error(s->ssl, r);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
  return fail(s, "handshake failed");
}

/* Decrypt every record now available into out, packed. Records that do not
 * fit are dropped (as if lost): the loop must still run to WANT_READ so the
 * datagram is fully consumed and nothing is left half-read. */
static int read_records(dtls_sess *s, uint8_t *out, size_t cap) {
  uint8_t tmp[MAX_PLAIN];
  size_t off = 0;
  for (;;) {
    size_t room = cap - off >= 2 ? cap - off - 2 : 0;
    uint8_t *dst = room >= sizeof tmp ? out + off + 2 : tmp;
    int n = SSL_read(s->ssl, dst, (int)sizeof tmp);
    if (n > 0) {
      if ((size_t)n > room) continue;
      if (dst == tmp) memcpy(out + off + 2, tmp, (size_t)n);
      out[off] = (uint8_t)(n >> 8);
      out[off + 1] = (uint8_t)n;
      off += 2 + (size_t)n;
      continue;
    }
    int e = SSL_get_error(s->ssl, n);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return (int)off;
    if (e == SSL_ERROR_ZERO_RETURN) {
      s->closed = 1;
      set_text(s->err, sizeof s->err, "closed by peer", NULL);
      return -1;
    }
    return fail(s, "read failed");
  }
}

int dtls_sess_pump(dtls_sess *s) {
  if (s == NULL || s->ssl == NULL || s->failed || s->closed) return -1;
  if (SSL_is_init_finished(s->ssl)) return 0;
  ERR_clear_error();
  int rc = drive_handshake(s);
  ERR_clear_error();
  return rc;
}

/*
 * Strict framing before OpenSSL sees a datagram: whole records back to
 * back, and no protected record (epoch > 0) shorter than an AEAD tag.
 * OpenSSL 3.0 answers a too-short ChaCha20-Poly1305 record with a fatal
 * internal-error alert (openssl/openssl#25290): without this check one
 * spoofed 14-byte datagram would kill an established session.
 */
static int datagram_sane(const uint8_t *d, size_t len) {
  size_t o = 0;
  while (o < len) {
    if (len - o < 13) return 0;
    size_t rl = ((size_t)d[o + 11] << 8) | d[o + 12];
    if (len - o - 13 < rl) return 0;
    if ((d[o + 3] != 0 || d[o + 4] != 0) && rl < 16) return 0;
    o += 13 + rl;
  }
  return 1;
}

int dtls_sess_receive(dtls_sess *s, const uint8_t *dgram, size_t len, uint8_t *out, size_t cap) {
  if (s == NULL || s->ssl == NULL || s->failed || s->closed) return -1;
  if (len > 0 && (dgram == NULL || !datagram_sane(dgram, len))) return 0; /* dropped */
  /* No session reads epoch 0 before its base is known (accept() sets it). */
  if (len > 0 && (!s->seq_known || !epoch0_in_window(dgram, len, s->seq_base))) return 0;
  if (out == NULL) cap = 0;
  cap = (size_t)cap_int(cap);
  ERR_clear_error(); /* stale errors would confuse SSL_get_error */
  s->in = len > 0 ? dgram : NULL;
  s->in_len = s->in ? len : 0;
  int rc = 0;
  if (!SSL_is_init_finished(s->ssl)) rc = drive_handshake(s);
  if (rc == 0 && SSL_is_init_finished(s->ssl)) rc = read_records(s, out, cap);
  s->in = NULL;
  s->in_len = 0;
  ERR_clear_error(); /* dropped records leave reasons behind */
  return rc;
}

int dtls_sess_send_batch(dtls_sess *s, const uint8_t *in, size_t len, uint8_t *out, size_t cap) {
  if (s == NULL || s->ssl == NULL || s->failed || s->closed) return -1;
  if (!SSL_is_init_finished(s->ssl)) return -1;
  if (in == NULL) len = 0;
  if (out == NULL) cap = 0;
  cap = (size_t)cap_int(cap);
  size_t max = (size_t)dtls_sess_max_plaintext(s), off = 0, wr = 0;
  ERR_clear_error();
  while (len - off >= 2) {
    size_t n = (size_t)in[off] << 8 | in[off + 1];
    off += 2;
    if (n > len - off) break; /* truncated tail: not a packet */
    if (n > 0 && n <= max) {
      int r = SSL_write(s->ssl, in + off, (int)n);
      if (r <= 0) {
        int e = SSL_get_error(s->ssl, r);
        if (e != SSL_ERROR_WANT_WRITE && e != SSL_ERROR_WANT_READ) return fail(s, "write failed");
      }
    }
    off += n;
    /* Drain as we go so the queue only ever holds what out cannot. */
    wr += queue_drain(&s->q, out + wr, cap - wr);
  }
  ERR_clear_error();
  return (int)wr;
}

int dtls_sess_flush(dtls_sess *s, uint8_t *out, size_t cap) {
  if (s == NULL || out == NULL) return 0;
  return (int)queue_drain(&s->q, out, (size_t)cap_int(cap));
}

long dtls_sess_timeout_ms(dtls_sess *s) {
  struct timeval tv;
  if (s == NULL || s->ssl == NULL || s->failed) return -1;
  if (DTLSv1_get_timeout(s->ssl, &tv) != 1) return -1;
  return (long)tv.tv_sec * 1000L + ((long)tv.tv_usec + 999) / 1000;
}

int dtls_sess_handle_timeout(dtls_sess *s) {
  if (s == NULL || s->ssl == NULL || s->failed) return -1;
  ERR_clear_error();
  if (DTLSv1_handle_timeout(s->ssl) < 0) return fail(s, "handshake timed out");
  ERR_clear_error();
  return 0;
}

int dtls_sess_established(const dtls_sess *s) {
  return s != NULL && s->ssl != NULL && !s->failed && SSL_is_init_finished(s->ssl);
}

int dtls_sess_max_plaintext(const dtls_sess *s) {
  size_t n = 0;
  if (s == NULL) return 0;
  /* Exact once the suite is known (ChaCha has no explicit nonce). */
  if (s->ssl != NULL && s->mtu_set && SSL_get_current_cipher(s->ssl) != NULL)
    n = DTLS_get_data_mtu(s->ssl);
  if (n == 0) n = s->mtu > WORST_OVERHEAD ? (size_t)(s->mtu - WORST_OVERHEAD) : 0;
  return (int)(n > MAX_PLAIN ? MAX_PLAIN : n);
}

int dtls_sess_peer_cert(dtls_sess *s, uint8_t *out, size_t cap) {
  if (!dtls_sess_established(s)) return -1;
  X509 *x = SSL_get1_peer_certificate(s->ssl);
  int n = x ? i2d_X509(x, NULL) : -1;
  if (n > 0 && out != NULL && (size_t)n <= cap) {
    uint8_t *p = out;
    if (i2d_X509(x, &p) != n) n = -1;
  }
  X509_free(x);
  ERR_clear_error();
  return n > 0 ? n : -1;
}

int dtls_sess_export(dtls_sess *s, const char *label, size_t label_len, uint8_t *out, size_t len) {
  if (!dtls_sess_established(s) || label == NULL || out == NULL || len == 0) return -1;
  int ok = SSL_export_keying_material(s->ssl, out, len, label, label_len, NULL, 0, 0) == 1;
  ERR_clear_error();
  return ok ? 0 : -1;
}

int dtls_sess_limit_handshake_mtu(dtls_sess *s, int mtu) {
  if (s == NULL || s->ssl == NULL || s->failed || SSL_is_init_finished(s->ssl)) return -1;
  if (mtu < DTLS_MIN_MTU || mtu > s->hs_mtu) return -1;
  if (SSL_set_mtu(s->ssl, mtu) <= 0) {
    ERR_clear_error();
    return -1;
  }
  s->hs_mtu = mtu;
  s->mtu_set = 0; /* the full mtu is set when the handshake completes */
  return 0;
}

int dtls_sess_test_secrets(dtls_sess *s, uint8_t *out, size_t cap) {
  const char *on = getenv("SHALLOT_DTLS_TEST_SECRETS");
  if (on == NULL || strcmp(on, "1") != 0) return -1;
  if (!dtls_sess_established(s) || out == NULL || cap < DTLS_TEST_SECRETS_LEN) return -1;
  SSL_SESSION *ss = SSL_get_session(s->ssl);
  if (ss == NULL || SSL_SESSION_get_master_key(ss, out, 48) != 48 ||
      SSL_get_client_random(s->ssl, out + 48, 32) != 32 ||
      SSL_get_server_random(s->ssl, out + 80, 32) != 32)
    return -1;
  return DTLS_TEST_SECRETS_LEN;
}

const char *dtls_sess_cipher(const dtls_sess *s) {
  const SSL_CIPHER *c = s && s->ssl ? SSL_get_current_cipher(s->ssl) : NULL;
  const char *name = c ? SSL_CIPHER_get_name(c) : NULL;
  return name ? name : "";
}

const char *dtls_sess_error(const dtls_sess *s) { return s ? s->err : ""; }

void dtls_sess_shutdown(dtls_sess *s) {
  if (s == NULL || s->ssl == NULL || s->closed) return;
  ERR_clear_error();
  /* 0 means close_notify was queued and we do not wait for the reply. */
  if (SSL_is_init_finished(s->ssl) && SSL_shutdown(s->ssl) < 0 && s->err[0] == '\0')
    error_text(s->err, sizeof s->err, "shutdown failed");
  s->closed = 1;
  if (s->err[0] == '\0') set_text(s->err, sizeof s->err, "shut down", NULL);
  ERR_clear_error();
}

void dtls_sess_close(dtls_sess *s) {
  if (s == NULL) return;
  SSL_free(s->ssl); /* also frees the BIO */
  s->ssl = NULL;
  free(s->q.buf);
  s->q.buf = NULL;
  s->q.len = s->q.cap = 0;
}

void dtls_sess_free(dtls_sess *s) {
  dtls_sess_close(s);
  free(s);
}

/* ---- context ------------------------------------------------------------ */

/* Never prompt on a terminal for a passphrase: keys are unencrypted. */
static int no_password(char *buf, int size, int rw, void *u) { return -1; }

static X509 *read_cert(const char *pem, size_t len) {
  if (pem == NULL || len == 0 || len > MAX_PEM) return NULL;
  BIO *b = BIO_new_mem_buf(pem, (int)len);
  X509 *x = b ? PEM_read_bio_X509(b, NULL, no_password, NULL) : NULL;
  BIO_free(b);
  return x;
}

static int load_identity(SSL_CTX *x, const char *cert, size_t cl, const char *key, size_t kl) {
  X509 *c = read_cert(cert, cl);
  EVP_PKEY *k = NULL;
  if (key != NULL && kl > 0 && kl <= MAX_PEM) {
    BIO *b = BIO_new_mem_buf(key, (int)kl);
    k = b ? PEM_read_bio_PrivateKey(b, NULL, no_password, NULL) : NULL;
    BIO_free(b);
  }
  /* Only ECDSA suites are offered, so anything but an EC key cannot work. */
  int ok = c != NULL && k != NULL && EVP_PKEY_is_a(k, "EC") && SSL_CTX_use_certificate(x, c) == 1 &&
           SSL_CTX_use_PrivateKey(x, k) == 1 && SSL_CTX_check_private_key(x) == 1;
  X509_free(c);
  EVP_PKEY_free(k);
  return ok;
}

static dtls_sess *listener_new(dtls_ctx *c) {
  dtls_sess *s = sess_new(c, 1);
  if (s != NULL) s->owner = c;
  return s;
}

dtls_ctx *dtls_ctx_new(const char *cert_pem, size_t cert_len, const char *key_pem,
                       size_t key_len, int mtu, char *err, size_t err_cap) {
  const char *why = "out of memory";
  dtls_ctx *c = calloc(1, sizeof *c);
  if (c == NULL) goto fail;
  why = "mtu out of range";
  if (mtu < DTLS_MIN_MTU || mtu > DTLS_MAX_MTU) goto fail;
  c->mtu = mtu;
  why = "cannot create SSL_CTX";
  if ((c->ssl_ctx = SSL_CTX_new(DTLS_method())) == NULL) goto fail;
  SSL_CTX *x = c->ssl_ctx;
  why = "cannot configure DTLS 1.2";
  if (!SSL_CTX_set_min_proto_version(x, DTLS1_2_VERSION) ||
      !SSL_CTX_set_max_proto_version(x, DTLS1_2_VERSION) || !SSL_CTX_set_cipher_list(x, CIPHERS) ||
      !SSL_CTX_set1_groups_list(x, GROUPS))
    goto fail;
  why = "bad certificate or key (need a matching ECDSA pair in PEM)";
  if (!load_identity(x, cert_pem, cert_len, key_pem, key_len)) goto fail;
  /* The mtu is ours to set; no renegotiation, tickets or resumption: every
   * link handshake is a full one so the peer certificate is always fresh. */
  SSL_CTX_set_options(x, SSL_OP_NO_QUERY_MTU | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET |
                             SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_session_cache_mode(x, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_verify(x, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, verify_peer);
  SSL_CTX_set_cookie_generate_cb(x, cookie_generate);
  SSL_CTX_set_cookie_verify_cb(x, cookie_verify);
  why = "no randomness";
  if (RAND_bytes(c->secret[0], DTLS_SECRET_LEN) != 1) goto fail;
  why = "out of memory";
  if ((c->client = BIO_ADDR_new()) == NULL || (c->listener = listener_new(c)) == NULL) goto fail;
  ERR_clear_error();
  return c;
fail:
  if (err != NULL && err_cap > 0) error_text(err, err_cap, why);
  dtls_ctx_free(c);
  ERR_clear_error();
  return NULL;
}

void dtls_ctx_free(dtls_ctx *c) {
  if (c == NULL) return;
  dtls_sess_free(c->listener);
  BIO_ADDR_free(c->client);
  SSL_CTX_free(c->ssl_ctx); /* sessions hold their own reference */
  OPENSSL_cleanse(c->secret, sizeof c->secret);
  free(c);
}

int dtls_ctx_set_cookie_secrets(dtls_ctx *c, const uint8_t *cur, size_t cur_len,
                                const uint8_t *prev, size_t prev_len) {
  if (c == NULL || cur == NULL || cur_len != DTLS_SECRET_LEN) return -1;
  if (prev != NULL && prev_len != DTLS_SECRET_LEN) return -1;
  memcpy(c->secret[0], cur, DTLS_SECRET_LEN);
  if (prev != NULL) memcpy(c->secret[1], prev, DTLS_SECRET_LEN);
  c->has_prev = prev != NULL;
  return 0;
}

int dtls_ctx_listen(dtls_ctx *c, const uint8_t *dgram, size_t len, const uint8_t *peer,
                    size_t peer_len, uint8_t *out, size_t cap) {
  /* Only a handshake record (type 22, 13-byte header) can be a ClientHello:
   * anything else is dropped before touching the SSL. */
  if (c == NULL || c->listener == NULL || dgram == NULL || len < 13 || dgram[0] != 22) return 0;
  if (peer == NULL || peer_len == 0) return 0;
  dtls_sess *s = c->listener;
  c->verified = 0;
  s->in = dgram;
  s->in_len = len;
  s->peer = peer;
  s->peer_len = peer_len;
  s->has_cookie = 0;
  s->q.len = 0;
  ERR_clear_error();
  int r = DTLSv1_listen(s->ssl, c->client);
  s->in = NULL;
  s->in_len = 0;
  s->peer = NULL;
  s->peer_len = 0;
  ERR_clear_error();
  if (r == 1 && s->has_cookie) {
    /* DTLSv1_listen read the first record: the ClientHello whose cookie
     * verified. Its number is where the client's epoch 0 continues. */
    s->seq_base = rd48(dgram + 5);
    s->seq_known = 1;
    s->q.len = 0;
    c->verified = 1;
    return DTLS_LISTEN_VERIFIED;
  }
  /* At most one datagram (the HelloVerifyRequest) is queued; stateless, so
   * it is sent now or never. */
  int n = 0;
  if (s->q.len >= 2) {
    size_t dl = (size_t)s->q.buf[0] << 8 | s->q.buf[1];
    if (out != NULL && dl <= (size_t)cap_int(cap) && dl + 2 <= s->q.len) {
      memcpy(out, s->q.buf + 2, dl);
      n = (int)dl;
    }
  }
  s->q.len = 0;
  return n;
}

dtls_sess *dtls_ctx_accept(dtls_ctx *c) {
  if (c == NULL || !c->verified) return NULL;
  dtls_sess *fresh = listener_new(c);
  if (fresh == NULL) return NULL;
  dtls_sess *s = c->listener;
  c->listener = fresh;
  c->verified = 0;
  s->owner = NULL; /* from now on an ordinary server session */
  return s;
}

dtls_sess *dtls_ctx_connect(dtls_ctx *c) { return c ? sess_new(c, 0) : NULL; }

/* ---- certificates ------------------------------------------------------- */

static char *mem_string(BIO *b) {
  char *p = NULL;
  long n = BIO_get_mem_data(b, &p);
  if (n <= 0 || p == NULL) return NULL;
  char *s = malloc((size_t)n + 1);
  if (s == NULL) return NULL;
  memcpy(s, p, (size_t)n);
  s[n] = '\0';
  return s;
}

static int add_not_ca(X509 *x) {
  BASIC_CONSTRAINTS *bc = BASIC_CONSTRAINTS_new();
  if (bc == NULL) return 0;
  bc->ca = 0;
  int ok = X509_add1_ext_i2d(x, NID_basic_constraints, bc, 1, X509V3_ADD_DEFAULT) == 1;
  BASIC_CONSTRAINTS_free(bc);
  return ok;
}

int dtls_generate_certificate(char **key_pem, char **cert_pem) {
  if (key_pem == NULL || cert_pem == NULL) return -1;
  *key_pem = *cert_pem = NULL;
  EVP_PKEY *k = EVP_EC_gen("P-256");
  X509 *x = X509_new();
  BIGNUM *serial = BN_new();
  /* secmem: the key's PEM buffer is wiped when the BIO is freed. */
  BIO *kb = BIO_new(BIO_s_secmem()), *cb = BIO_new(BIO_s_mem());
  X509_NAME *name = x ? X509_get_subject_name(x) : NULL;
  int ok = k && x && serial && kb && cb && name && X509_set_version(x, X509_VERSION_3) &&
           BN_rand(serial, 127, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY) &&
           BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(x)) &&
           X509_gmtime_adj(X509_getm_notBefore(x), -86400L) &&
           X509_time_adj_ex(X509_getm_notAfter(x), 3652, -86400L, NULL) &&
           X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"shallot",
                                      -1, -1, 0) &&
           X509_set_issuer_name(x, name) && X509_set_pubkey(x, k) && add_not_ca(x) &&
           X509_sign(x, k, EVP_sha256()) > 0 &&
           PEM_write_bio_PrivateKey(kb, k, NULL, NULL, 0, NULL, NULL) && PEM_write_bio_X509(cb, x);
  if (ok) {
    *key_pem = mem_string(kb);
    *cert_pem = mem_string(cb);
    ok = *key_pem && *cert_pem;
  }
  if (!ok) {
    if (*key_pem) OPENSSL_cleanse(*key_pem, strlen(*key_pem));
    free(*key_pem);
    free(*cert_pem);
    *key_pem = *cert_pem = NULL;
  }
  BIO_free(kb);
  BIO_free(cb);
  BN_free(serial);
  X509_free(x);
  EVP_PKEY_free(k);
  ERR_clear_error();
  return ok ? 0 : -1;
}

int dtls_certificate_der(const char *pem, size_t len, uint8_t *out, size_t cap) {
  X509 *x = read_cert(pem, len);
  int n = x ? i2d_X509(x, NULL) : -1;
  if (n > 0 && out != NULL && (size_t)n <= cap) {
    uint8_t *p = out;
    if (i2d_X509(x, &p) != n) n = -1;
  }
  X509_free(x);
  ERR_clear_error();
  return n > 0 ? n : -1;
}

int dtls_certificate_fingerprint(const char *pem, size_t len, uint8_t out[DTLS_FINGERPRINT_LEN]) {
  X509 *x = read_cert(pem, len);
  unsigned int n = 0;
  int ok = x != NULL && out != NULL && X509_digest(x, EVP_sha256(), out, &n) == 1 &&
           n == DTLS_FINGERPRINT_LEN;
  X509_free(x);
  ERR_clear_error();
  return ok ? 0 : -1;
}
