/*
 * Standalone harness for dtls_core.c, built with ASan/UBSan (run-asan.sh)
 * against the system libssl: handshakes, data, replays, garbage, cookie
 * rotation, timeouts and teardown in every order. Exits 0 when all pass.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "../../src/native/dtls_core.h"

#define CHECK(cond)                                                             \
  do {                                                                          \
    if (!(cond)) {                                                              \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      exit(1);                                                                  \
    }                                                                           \
  } while (0)

#define BUF 65536
static uint8_t out[BUF], app[BUF], hvr[4096];
static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint32_t rnd(void) { /* xorshift64: reproducible garbage */
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (uint32_t)(rng >> 16);
}

typedef struct {
  char *key, *cert;
} ident;

static ident make_ident(void) {
  ident id;
  CHECK(dtls_generate_certificate(&id.key, &id.cert) == 0);
  return id;
}

static dtls_ctx *make_ctx(const ident *id, int mtu) {
  char err[256];
  dtls_ctx *c =
      dtls_ctx_new(id->cert, strlen(id->cert), id->key, strlen(id->key), mtu, err, sizeof err);
  if (c == NULL) fprintf(stderr, "ctx: %s\n", err);
  CHECK(c != NULL);
  return c;
}

/* Iterate packed datagrams: *off advances; returns length or -1 at the end. */
static int next_dgram(const uint8_t *p, int len, int *off, const uint8_t **d) {
  if (*off + 2 > len) return -1;
  int n = p[*off] << 8 | p[*off + 1];
  CHECK(*off + 2 + n <= len);
  *d = p + *off + 2;
  *off += 2 + n;
  return n;
}

/* Like shuttle, for handshakes expected to fail: results are not checked. */
static void shuttle_any(dtls_sess *from, dtls_sess *to) {
  static uint8_t q[BUF];
  int len = dtls_sess_flush(from, q, sizeof q), off = 0, n;
  const uint8_t *d;
  while ((n = next_dgram(q, len, &off, &d)) >= 0)
    (void)dtls_sess_receive(to, d, (size_t)n, app, sizeof app);
}

/* listen() one datagram from `peer`, any HelloVerifyRequest into hvr. */
static int lsn(dtls_ctx *sc, const uint8_t *d, int n, const char *peer) {
  return dtls_ctx_listen(sc, d, (size_t)n, (const uint8_t *)peer, strlen(peer), hvr, sizeof hvr);
}

/* Move everything `from` has queued into `to`; returns datagrams moved. */
static int shuttle(dtls_sess *from, dtls_sess *to) {
  static uint8_t q[BUF];
  int len = dtls_sess_flush(from, q, sizeof q), off = 0, count = 0, n;
  const uint8_t *d;
  while ((n = next_dgram(q, len, &off, &d)) >= 0) {
    CHECK(dtls_sess_receive(to, d, (size_t)n, app, sizeof app) >= 0);
    count++;
  }
  return count;
}

/* Client hello(s) through listen() until verified; returns the accepted session. */
static dtls_sess *listen_until_verified(dtls_ctx *sc, dtls_sess *c, const char *peer) {
  for (int round = 0; round < 4; round++) {
    int len = dtls_sess_flush(c, out, sizeof out), off = 0, n;
    const uint8_t *d;
    while ((n = next_dgram(out, len, &off, &d)) >= 0) {
      int r = lsn(sc, d, n, peer);
      if (r == DTLS_LISTEN_VERIFIED) {
        dtls_sess *s = dtls_ctx_accept(sc);
        CHECK(s != NULL);
        CHECK(dtls_ctx_accept(sc) == NULL); /* only once per verified hello */
        CHECK(dtls_sess_pump(s) == 0);
        return s;
      }
      CHECK(r > 0); /* a HelloVerifyRequest */
      CHECK(dtls_sess_receive(c, hvr, (size_t)r, app, sizeof app) == 0);
    }
  }
  return NULL;
}

static void finish(dtls_sess *c, dtls_sess *s) {
  for (int i = 0; i < 10 && !(dtls_sess_established(c) && dtls_sess_established(s)); i++) {
    shuttle(s, c);
    shuttle(c, s);
  }
  CHECK(dtls_sess_established(c) && dtls_sess_established(s));
  shuttle(s, c); /* nothing must be left in flight */
}

static void handshake(dtls_ctx *sc, dtls_ctx *cc, const char *peer, dtls_sess **cs,
                      dtls_sess **ss) {
  dtls_sess *c = dtls_ctx_connect(cc);
  CHECK(c != NULL && dtls_sess_pump(c) == 0);
  dtls_sess *s = listen_until_verified(sc, c, peer);
  CHECK(s != NULL);
  finish(c, s);
  *cs = c;
  *ss = s;
}

/* Send one packet a -> b and check it arrives intact. Returns the datagram. */
static int send_one(dtls_sess *a, dtls_sess *b, const uint8_t *p, int n, uint8_t *dg) {
  static uint8_t packed[BUF];
  packed[0] = (uint8_t)(n >> 8);
  packed[1] = (uint8_t)n;
  memcpy(packed + 2, p, (size_t)n);
  int len = dtls_sess_send_batch(a, packed, (size_t)n + 2, out, sizeof out), off = 0;
  const uint8_t *d;
  int dl = next_dgram(out, len, &off, &d);
  CHECK(dl > n && off == len);
  memcpy(dg, d, (size_t)dl);
  int r = dtls_sess_receive(b, dg, (size_t)dl, app, sizeof app);
  CHECK(r == n + 2 && (app[0] << 8 | app[1]) == n && memcmp(app + 2, p, (size_t)n) == 0);
  return dl;
}

static void test_session_basics(const ident *a, const ident *b) {
  dtls_ctx *sc = make_ctx(a, 1400), *cc = make_ctx(b, 1400);
  dtls_sess *c, *s;
  uint8_t dg[2048], msg[1400], der[4096], e1[32], e2[32], fp[32];
  handshake(sc, cc, "10.0.0.1:1", &c, &s);

  /* peer certificates, fingerprints and exporters agree */
  int n = dtls_sess_peer_cert(c, der, sizeof der);
  CHECK(n > 0 && n == dtls_certificate_der(a->cert, strlen(a->cert), NULL, 0));
  CHECK(dtls_sess_peer_cert(c, der, 4) == n); /* too small: length only */
  CHECK(dtls_sess_peer_cert(s, NULL, 0) == dtls_certificate_der(b->cert, strlen(b->cert), NULL, 0));
  CHECK(dtls_certificate_fingerprint(a->cert, strlen(a->cert), fp) == 0);
  CHECK(dtls_certificate_der("junk", 4, der, sizeof der) == -1);
  CHECK(dtls_sess_export(c, "EXPORTER-x", 10, e1, sizeof e1) == 0);
  CHECK(dtls_sess_export(s, "EXPORTER-x", 10, e2, sizeof e2) == 0);
  CHECK(memcmp(e1, e2, sizeof e1) == 0);
  CHECK(strstr(dtls_sess_cipher(c), "ECDHE-ECDSA-") == dtls_sess_cipher(c));
  int max = dtls_sess_max_plaintext(c);
  CHECK(max >= 1400 - 37 && max <= 1400 - 29);

  /* data both ways, replay and tamper dropped, session unharmed */
  for (int i = 0; i < (int)sizeof msg; i++) msg[i] = (uint8_t)rnd();
  int dl = send_one(c, s, msg, max, dg);
  CHECK(dtls_sess_receive(s, dg, (size_t)dl, app, sizeof app) == 0); /* replay */
  dl = send_one(s, c, msg, 100, dg);
  dg[dl - 3] ^= 0x40;
  CHECK(dtls_sess_receive(c, dg, (size_t)dl, app, sizeof app) == 0); /* tampered */
  send_one(s, c, msg, 7, dg);

  /* oversize packets skipped, truncated batch tail ignored */
  static uint8_t packed[4096];
  packed[0] = (uint8_t)((max + 1) >> 8);
  packed[1] = (uint8_t)(max + 1);
  packed[max + 3] = 0;
  packed[max + 4] = 50; /* claims 50 bytes, has 3 */
  CHECK(dtls_sess_send_batch(c, packed, (size_t)max + 8, out, sizeof out) == 0);
  /* a record that does not fit the caller's out is dropped, not overflowed */
  dl = send_one(c, s, msg, 300, dg);
  dl = send_one(c, s, msg, 301, dg);
  CHECK(dtls_sess_receive(s, dg, (size_t)dl, app, 100) == 0); /* replay anyway: 0 */

  /* garbage, truncations and bit flips into an established session */
  for (int i = 0; i < 10000; i++) {
    uint8_t g[1600];
    int gl;
    if (i % 3 == 0) {
      gl = (int)(rnd() % sizeof g);
      for (int j = 0; j < gl; j++) g[j] = (uint8_t)rnd();
    } else {
      memcpy(g, dg, (size_t)dl);
      gl = i % 3 == 1 ? (int)(rnd() % (unsigned)dl) : dl;
      if (i % 3 == 2) g[rnd() % (unsigned)dl] ^= (uint8_t)(1 + rnd() % 255);
    }
    CHECK(dtls_sess_receive(s, g, (size_t)gl, app, sizeof app) == 0);
  }
  CHECK(dtls_sess_established(s));
  send_one(c, s, msg, 500, dg);
  send_one(s, c, msg, 500, dg);

  /* close_notify ends the peer's session */
  dtls_sess_shutdown(c);
  CHECK(dtls_sess_send_batch(c, packed, 0, out, sizeof out) == -1);
  int len = dtls_sess_flush(c, out, sizeof out), off = 0;
  const uint8_t *d;
  n = next_dgram(out, len, &off, &d);
  CHECK(n > 0 && dtls_sess_receive(s, d, (size_t)n, app, sizeof app) == -1);
  CHECK(strcmp(dtls_sess_error(s), "closed by peer") == 0);

  /* freeing the context first leaves sessions alone */
  dtls_ctx_free(sc);
  dtls_ctx_free(cc);
  dtls_sess_close(s);
  CHECK(dtls_sess_receive(s, dg, (size_t)dl, app, sizeof app) == -1);
  CHECK(dtls_sess_flush(s, out, sizeof out) == 0 && !dtls_sess_established(s));
  dtls_sess_free(s);
  dtls_sess_free(c);
}

static void test_listen_garbage(const ident *a, const ident *b) {
  dtls_ctx *sc = make_ctx(a, 1400), *cc = make_ctx(b, 1400);
  const char *peer = "192.0.2.7:4433";
  dtls_sess *c = dtls_ctx_connect(cc);
  CHECK(dtls_sess_pump(c) == 0);
  uint8_t ch[2048], ch2[2048];
  int len = dtls_sess_flush(c, out, sizeof out), off = 0;
  const uint8_t *d;
  int chl = next_dgram(out, len, &off, &d);
  CHECK(chl > 0);
  memcpy(ch, d, (size_t)chl);
  int r = lsn(sc, ch, chl, peer);
  CHECK(r > 0);
  CHECK(dtls_ctx_listen(sc, ch, (size_t)chl, (const uint8_t *)peer, strlen(peer), hvr, 10) == 0);
  CHECK(dtls_sess_receive(c, hvr, (size_t)r, app, sizeof app) == 0);
  len = dtls_sess_flush(c, out, sizeof out);
  off = 0;
  int ch2l = next_dgram(out, len, &off, &d);
  memcpy(ch2, d, (size_t)ch2l);

  for (int i = 0; i < 10000; i++) {
    uint8_t g[1600];
    int gl;
    if (i % 2 == 0) {
      gl = (int)(rnd() % sizeof g);
      for (int j = 0; j < gl; j++) g[j] = (uint8_t)rnd();
      if (i % 4 == 0 && gl > 0) g[0] = 22; /* look like a handshake record */
    } else {
      const uint8_t *src = i % 4 == 1 ? ch : ch2;
      gl = (int)(rnd() % (unsigned)(i % 4 == 1 ? chl : ch2l));
      memcpy(g, src, (size_t)gl);
    }
    CHECK(lsn(sc, g, gl, peer) ==
          DTLS_LISTEN_DROP);
  }
  /* bit flips: any answer but a crash; a still-valid hello may verify */
  for (int i = 0; i < 2000; i++) {
    uint8_t g[2048];
    memcpy(g, ch2, (size_t)ch2l);
    g[rnd() % (unsigned)ch2l] ^= (uint8_t)(1 + rnd() % 255);
    r = lsn(sc, g, ch2l, peer);
    CHECK(r >= 0 || r == DTLS_LISTEN_VERIFIED);
    if (r == DTLS_LISTEN_VERIFIED && i % 2) dtls_sess_free(dtls_ctx_accept(sc));
  }
  /* the right cookie from the wrong address is refused with a fresh HVR */
  r = lsn(sc, ch2, ch2l, "x");
  CHECK(r > 0);
  /* and the real one still completes */
  r = lsn(sc, ch2, ch2l, peer);
  CHECK(r == DTLS_LISTEN_VERIFIED);
  dtls_sess *s = dtls_ctx_accept(sc);
  CHECK(s != NULL && dtls_sess_pump(s) == 0);
  finish(c, s);
  dtls_sess_free(c);
  dtls_sess_free(s);
  /* a verified hello never accepted: freed with the context */
  dtls_sess *c2 = dtls_ctx_connect(cc);
  CHECK(dtls_sess_pump(c2) == 0);
  len = dtls_sess_flush(c2, out, sizeof out);
  off = 0;
  chl = next_dgram(out, len, &off, &d);
  r = lsn(sc, d, chl, peer);
  CHECK(r > 0 && dtls_sess_receive(c2, hvr, (size_t)r, app, sizeof app) == 0);
  len = dtls_sess_flush(c2, out, sizeof out);
  off = 0;
  chl = next_dgram(out, len, &off, &d);
  r = lsn(sc, d, chl, peer);
  CHECK(r == DTLS_LISTEN_VERIFIED);
  dtls_sess_free(c2);
  dtls_ctx_free(sc);
  dtls_ctx_free(cc);
}

static void test_cookie_rotation(const ident *a, const ident *b) {
  dtls_ctx *sc = make_ctx(a, 1400), *cc = make_ctx(b, 1400);
  uint8_t s1[32], s2[32], s3[32];
  for (int i = 0; i < 32; i++) s1[i] = 1, s2[i] = 2, s3[i] = 3;
  CHECK(dtls_ctx_set_cookie_secrets(sc, s1, 31, NULL, 0) == -1);
  CHECK(dtls_ctx_set_cookie_secrets(sc, s1, 32, NULL, 0) == 0);
  for (int rotations = 1; rotations <= 2; rotations++) {
    CHECK(dtls_ctx_set_cookie_secrets(sc, s1, 32, NULL, 0) == 0);
    dtls_sess *c = dtls_ctx_connect(cc);
    CHECK(dtls_sess_pump(c) == 0);
    int len = dtls_sess_flush(c, out, sizeof out), off = 0, n;
    const uint8_t *d;
    n = next_dgram(out, len, &off, &d);
    int r = lsn(sc, d, n, "p");
    CHECK(r > 0 && dtls_sess_receive(c, hvr, (size_t)r, app, sizeof app) == 0);
    CHECK(dtls_ctx_set_cookie_secrets(sc, s2, 32, s1, 32) == 0);
    if (rotations == 2) CHECK(dtls_ctx_set_cookie_secrets(sc, s3, 32, s2, 32) == 0);
    len = dtls_sess_flush(c, out, sizeof out);
    off = 0;
    n = next_dgram(out, len, &off, &d);
    r = lsn(sc, d, n, "p");
    if (rotations == 1) {
      CHECK(r == DTLS_LISTEN_VERIFIED);
      /* rotate again before the session reads its hello: still fine */
      CHECK(dtls_ctx_set_cookie_secrets(sc, s3, 32, s2, 32) == 0);
      dtls_sess *s = dtls_ctx_accept(sc);
      CHECK(s != NULL && dtls_sess_pump(s) == 0);
      finish(c, s);
      dtls_sess_free(s);
    } else {
      CHECK(r > 0); /* a fresh HelloVerifyRequest, not a verification */
    }
    dtls_sess_free(c);
  }
  dtls_ctx_free(sc);
  dtls_ctx_free(cc);
}

static void test_lost_flight(const ident *a, const ident *b) {
  dtls_ctx *sc = make_ctx(a, 1400), *cc = make_ctx(b, 1400);
  dtls_sess *c = dtls_ctx_connect(cc);
  CHECK(dtls_sess_pump(c) == 0);
  dtls_sess *s = listen_until_verified(sc, c, "lossy");
  CHECK(s != NULL);
  CHECK(dtls_sess_flush(s, out, sizeof out) > 0); /* server flight lost */
  long ts = dtls_sess_timeout_ms(s), tc = dtls_sess_timeout_ms(c);
  CHECK(ts >= 0 && tc >= 0 && ts <= 1000 && tc <= 1000);
  CHECK(dtls_sess_handle_timeout(s) == 0); /* not yet expired: no-op */
  usleep((useconds_t)((ts > tc ? ts : tc) + 20) * 1000);
  CHECK(dtls_sess_handle_timeout(c) == 0 && dtls_sess_handle_timeout(s) == 0);
  finish(c, s);
  CHECK(dtls_sess_timeout_ms(c) == -1);
  dtls_sess_free(c);
  dtls_sess_free(s);
  dtls_ctx_free(sc);
  dtls_ctx_free(cc);
}

/* Forged epoch-0 records (a fatal alert, a garbage handshake record) with
 * every small record number, and with the numbers the peer really uses but
 * cut short, at both ends of a handshake in progress: all dropped, and the
 * handshake completes. */
static void forge_epoch0(uint8_t *d, uint8_t type, uint64_t seq, const uint8_t *body, int n) {
  d[0] = type;
  d[1] = 0xfe;
  d[2] = 0xfd;
  d[3] = d[4] = 0;
  for (int i = 10; i >= 5; i--, seq >>= 8) d[i] = (uint8_t)seq;
  d[11] = (uint8_t)(n >> 8);
  d[12] = (uint8_t)n;
  memcpy(d + 13, body, (size_t)n);
}

static void test_epoch0_forgeries(const ident *a, const ident *b) {
  static const uint8_t alert[2] = {2, 40};
  uint8_t junk[40], d[64];
  for (size_t i = 0; i < sizeof junk; i++) junk[i] = (uint8_t)rnd();
  dtls_ctx *sc = make_ctx(a, 1400), *cc = make_ctx(b, 1400);
  dtls_sess *c = dtls_ctx_connect(cc);
  CHECK(dtls_sess_pump(c) == 0);
  dtls_sess *s = listen_until_verified(sc, c, "forged");
  CHECK(s != NULL);
  for (uint64_t seq = 0; seq < 64; seq++) {
    forge_epoch0(d, 21, seq, alert, 2);
    CHECK(dtls_sess_receive(c, d, 15, app, sizeof app) == 0);
    CHECK(dtls_sess_receive(s, d, 15, app, sizeof app) == 0);
    forge_epoch0(d, 22, seq, junk, (int)sizeof junk);
    CHECK(dtls_sess_receive(c, d, 13 + sizeof junk, app, sizeof app) == 0);
    CHECK(dtls_sess_receive(s, d, 13 + sizeof junk, app, sizeof app) == 0);
  }
  CHECK(!dtls_sess_established(c) && dtls_sess_error(c)[0] == '\0');
  CHECK(dtls_sess_error(s)[0] == '\0');
  finish(c, s);
  dtls_sess_free(c);
  dtls_sess_free(s);
  dtls_ctx_free(sc);
  dtls_ctx_free(cc);
}

/* A handshake limited to 300-byte datagrams (as a re-key inside another
 * session's records is), then the full mtu; the test secrets stay closed
 * without the environment switch. */
static void test_limited_handshake_mtu(const ident *a, const ident *b) {
  dtls_ctx *sc = make_ctx(a, 1400), *cc = make_ctx(b, 1400);
  dtls_sess *c = dtls_ctx_connect(cc);
  CHECK(dtls_sess_limit_handshake_mtu(c, DTLS_MIN_MTU - 1) == -1);
  CHECK(dtls_sess_limit_handshake_mtu(c, 1401) == -1);
  CHECK(dtls_sess_limit_handshake_mtu(c, 300) == 0);
  CHECK(dtls_sess_pump(c) == 0);
  dtls_sess *s = NULL;
  for (int round = 0; round < 4 && s == NULL; round++) {
    int len = dtls_sess_flush(c, out, sizeof out), off = 0, n;
    const uint8_t *d;
    while (s == NULL && (n = next_dgram(out, len, &off, &d)) >= 0) {
      int r = lsn(sc, d, n, "limited");
      if (r == DTLS_LISTEN_VERIFIED) {
        s = dtls_ctx_accept(sc);
        CHECK(s != NULL && dtls_sess_limit_handshake_mtu(s, 300) == 0);
        CHECK(dtls_sess_pump(s) == 0);
      } else {
        CHECK(r > 0 && dtls_sess_receive(c, hvr, (size_t)r, app, sizeof app) == 0);
      }
    }
  }
  CHECK(s != NULL);
  for (int i = 0; i < 10 && !(dtls_sess_established(c) && dtls_sess_established(s)); i++) {
    dtls_sess *from = i % 2 ? c : s, *to = i % 2 ? s : c;
    int len = dtls_sess_flush(from, out, sizeof out), off = 0, n;
    const uint8_t *d;
    while ((n = next_dgram(out, len, &off, &d)) >= 0) {
      CHECK(n <= 300);
      CHECK(dtls_sess_receive(to, d, (size_t)n, app, sizeof app) >= 0);
    }
  }
  finish(c, s);
  CHECK(dtls_sess_max_plaintext(c) > 1300 && dtls_sess_max_plaintext(s) > 1300);
  CHECK(dtls_sess_limit_handshake_mtu(c, 300) == -1); /* too late */
  uint8_t sec[DTLS_TEST_SECRETS_LEN];
  unsetenv("SHALLOT_DTLS_TEST_SECRETS");
  CHECK(dtls_sess_test_secrets(c, sec, sizeof sec) == -1);
  setenv("SHALLOT_DTLS_TEST_SECRETS", "1", 1);
  CHECK(dtls_sess_test_secrets(c, sec, sizeof sec - 1) == -1);
  CHECK(dtls_sess_test_secrets(c, sec, sizeof sec) == DTLS_TEST_SECRETS_LEN);
  uint8_t sec2[DTLS_TEST_SECRETS_LEN];
  CHECK(dtls_sess_test_secrets(s, sec2, sizeof sec2) == DTLS_TEST_SECRETS_LEN);
  CHECK(memcmp(sec, sec2, sizeof sec) == 0); /* both ends hold the same secrets */
  unsetenv("SHALLOT_DTLS_TEST_SECRETS");
  dtls_sess_free(c);
  dtls_sess_free(s);
  dtls_ctx_free(sc);
  dtls_ctx_free(cc);
}

/* A fresh identity whose certificate carries a 6000-byte opaque extension,
 * so the server's first flight exceeds OpenSSL's 4 KiB handshake buffer. */
static ident big_ident(void) {
  ident id = make_ident();
  static uint8_t filler[6000];
  BIO *kb = BIO_new_mem_buf(id.key, -1), *cb = BIO_new_mem_buf(id.cert, -1);
  BIO *o = BIO_new(BIO_s_mem());
  EVP_PKEY *k = PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL);
  X509 *x = PEM_read_bio_X509(cb, NULL, NULL, NULL);
  ASN1_OBJECT *oid = OBJ_txt2obj("1.3.6.1.4.1.55555.1", 1);
  ASN1_OCTET_STRING *v = ASN1_OCTET_STRING_new();
  CHECK(k && x && oid && v && o && ASN1_OCTET_STRING_set(v, filler, sizeof filler));
  X509_EXTENSION *ext = X509_EXTENSION_create_by_OBJ(NULL, oid, 0, v);
  CHECK(ext && X509_add_ext(x, ext, -1) && X509_sign(x, k, EVP_sha256()) > 0);
  CHECK(PEM_write_bio_X509(o, x));
  char *data = NULL;
  long len = BIO_get_mem_data(o, &data);
  free(id.cert);
  CHECK((id.cert = strndup(data, (size_t)len)) != NULL);
  X509_EXTENSION_free(ext);
  ASN1_OCTET_STRING_free(v);
  ASN1_OBJECT_free(oid);
  X509_free(x);
  EVP_PKEY_free(k);
  BIO_free(kb);
  BIO_free(cb);
  BIO_free(o);
  return id;
}

static void test_big_mtu(const ident *a, const ident *b) {
  ident big = big_ident();
  dtls_ctx *sc = make_ctx(&big, 65507), *cc = make_ctx(b, 65507);
  dtls_sess *c, *s;
  static uint8_t msg[16384], dg[BUF];
  handshake(sc, cc, "big", &c, &s);
  CHECK(dtls_sess_max_plaintext(c) == 16384);
  send_one(c, s, msg, 16384, dg);
  CHECK(dtls_sess_peer_cert(c, NULL, 0) > 6000);
  free(big.key);
  free(big.cert);
  dtls_sess_free(c);
  dtls_sess_free(s);
  dtls_ctx_free(sc);
  dtls_ctx_free(cc);
}

/* The same certificate with one bit of its self-signature flipped. */
static char *corrupt_signature(const char *pem) {
  BIO *in = BIO_new_mem_buf(pem, -1), *o = BIO_new(BIO_s_mem());
  X509 *x = PEM_read_bio_X509(in, NULL, NULL, NULL), *y = NULL;
  unsigned char *der = NULL;
  int n = x ? i2d_X509(x, &der) : -1;
  CHECK(n > 0 && o != NULL);
  der[n - 1] ^= 1; /* last byte of the ECDSA signature's s */
  const unsigned char *p = der;
  CHECK((y = d2i_X509(NULL, &p, n)) != NULL && PEM_write_bio_X509(o, y));
  char *data = NULL;
  long len = BIO_get_mem_data(o, &data);
  char *s = strndup(data, (size_t)len);
  CHECK(s != NULL);
  OPENSSL_free(der);
  X509_free(x);
  X509_free(y);
  BIO_free(in);
  BIO_free(o);
  return s;
}

/* A peer whose self-signature does not verify is refused, both directions. */
static void test_bad_self_signature(const ident *a, const ident *b) {
  ident bad = {b->key, corrupt_signature(b->cert)};
  for (int bad_is_client = 0; bad_is_client <= 1; bad_is_client++) {
    dtls_ctx *sc = make_ctx(bad_is_client ? a : &bad, 1400);
    dtls_ctx *cc = make_ctx(bad_is_client ? &bad : b, 1400);
    dtls_sess *c = dtls_ctx_connect(cc);
    CHECK(dtls_sess_pump(c) == 0);
    dtls_sess *s = listen_until_verified(sc, c, "bad");
    CHECK(s != NULL);
    for (int i = 0; i < 6; i++) {
      shuttle_any(s, c);
      shuttle_any(c, s);
    }
    dtls_sess *verifier = bad_is_client ? s : c;
    CHECK(!dtls_sess_established(c) && !dtls_sess_established(s));
    CHECK(strstr(dtls_sess_error(verifier), "certificate") != NULL);
    CHECK(dtls_sess_receive(verifier, out, 20, app, sizeof app) == -1);
    dtls_sess_free(c);
    dtls_sess_free(s);
    dtls_ctx_free(sc);
    dtls_ctx_free(cc);
  }
  free(bad.cert);
}

static void test_bad_contexts(const ident *a, const ident *b) {
  char err[256];
  size_t cl = strlen(a->cert);
  CHECK(dtls_ctx_new(a->cert, cl, a->key, strlen(a->key), 255, err, sizeof err) == NULL);
  CHECK(dtls_ctx_new(a->cert, cl, b->key, strlen(b->key), 1400, err, sizeof err) == NULL);
  CHECK(strlen(err) > 0);
  CHECK(dtls_ctx_new("x", 1, "y", 1, 1400, err, sizeof err) == NULL);
  CHECK(dtls_ctx_new(NULL, 0, NULL, 0, 1400, NULL, 0) == NULL);
  CHECK(dtls_sess_receive(NULL, NULL, 0, NULL, 0) == -1);
}

int main(void) {
  ident a = make_ident(), b = make_ident();
  test_bad_contexts(&a, &b);
  test_session_basics(&a, &b);
  test_listen_garbage(&a, &b);
  test_cookie_rotation(&a, &b);
  test_bad_self_signature(&a, &b);
  test_big_mtu(&a, &b);
  test_lost_flight(&a, &b);
  test_epoch0_forgeries(&a, &b);
  test_limited_handshake_mtu(&a, &b);
  free(a.key);
  free(a.cert);
  free(b.key);
  free(b.cert);
  puts("dtls_harness: all passed");
  return 0;
}
