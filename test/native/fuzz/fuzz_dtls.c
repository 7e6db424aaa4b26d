/*
 * libFuzzer harness for src/native/dtls_core.c, against the system libssl
 * (built by run.sh with -fsanitize=fuzzer,address,undefined). The first
 * byte of an input picks what the rest is:
 *
 *   0  a datagram to the stateless listen step (a ClientHello, a cookie)
 *   1  a datagram to a client that has just sent its ClientHello
 *   2  a datagram to both ends of an established session: it must be
 *      dropped (no plaintext, no failure), and the session must still
 *      carry data afterwards
 *   3  a packed plaintext batch for send_batch on the established client:
 *      the server must receive exactly its well-formed, non-empty entries
 *
 * SHALLOT_FUZZ_SEEDS=DIR writes seed inputs (the captured handshake, data
 * records, a batch) into DIR at start.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../../src/native/dtls_core.h"

#define REQUIRE(c)                                                     \
  do {                                                                 \
    if (!(c)) {                                                        \
      fprintf(stderr, "%s:%d: requirement failed: %s\n", __FILE__, __LINE__, #c); \
      abort();                                                         \
    }                                                                  \
  } while (0)

#define BUF 65536
static uint8_t q[BUF], app[BUF], hvr[4096];
static dtls_ctx *server_ctx, *client_ctx;
static dtls_sess *server, *client;
static const char PEER[] = "192.0.2.1|4000";
static const char *seed_dir;
static int seeds_written;

static void seed(uint8_t mode, const uint8_t *d, size_t n) {
  if (seed_dir == NULL) return;
  char path[4096];
  snprintf(path, sizeof path, "%s/seed-%d-%03d", seed_dir, mode, seeds_written++);
  FILE *f = fopen(path, "wb");
  if (f == NULL) return;
  fputc(mode, f);
  fwrite(d, 1, n, f);
  fclose(f);
}

static dtls_ctx *make_ctx(void) {
  char *key, *cert, err[256];
  REQUIRE(dtls_generate_certificate(&key, &cert) == 0);
  dtls_ctx *c = dtls_ctx_new(cert, strlen(cert), key, strlen(key), 1400, err, sizeof err);
  REQUIRE(c != NULL);
  free(key);
  free(cert);
  uint8_t secret[DTLS_SECRET_LEN];
  memset(secret, 0x42, sizeof secret);
  REQUIRE(dtls_ctx_set_cookie_secrets(c, secret, sizeof secret, NULL, 0) == 0);
  return c;
}

/* Every datagram `from` has queued into `to` (recording seeds of `mode`). */
static void shuttle(dtls_sess *from, dtls_sess *to, uint8_t mode) {
  int len = dtls_sess_flush(from, q, sizeof q), off = 0;
  while (off + 2 <= len) {
    int n = q[off] << 8 | q[off + 1];
    seed(mode, q + off + 2, (size_t)n);
    (void)dtls_sess_receive(to, q + off + 2, (size_t)n, app, sizeof app);
    off += 2 + n;
  }
}

/* The client's queued ClientHello through listen(); returns its HelloVerifyRequest length. */
static int hello_through_listen(dtls_sess *c, int record) {
  int len = dtls_sess_flush(c, q, sizeof q);
  REQUIRE(len > 2);
  int n = q[0] << 8 | q[1];
  if (record) seed(0, q + 2, (size_t)n);
  return dtls_ctx_listen(server_ctx, q + 2, (size_t)n, (const uint8_t *)PEER, strlen(PEER), hvr,
                         sizeof hvr);
}

static void establish(void) {
  client = dtls_ctx_connect(client_ctx);
  REQUIRE(client != NULL && dtls_sess_pump(client) == 0);
  int h = hello_through_listen(client, 1);
  REQUIRE(h > 0);
  seed(1, hvr, (size_t)h);
  REQUIRE(dtls_sess_receive(client, hvr, (size_t)h, app, sizeof app) == 0);
  REQUIRE(hello_through_listen(client, 1) == DTLS_LISTEN_VERIFIED);
  server = dtls_ctx_accept(server_ctx);
  REQUIRE(server != NULL && dtls_sess_receive(server, NULL, 0, app, sizeof app) == 0);
  for (int i = 0; i < 10 && !(dtls_sess_established(client) && dtls_sess_established(server));
       i++) {
    shuttle(server, client, 1);
    shuttle(client, server, 2);
  }
  REQUIRE(dtls_sess_established(client) && dtls_sess_established(server));
  shuttle(server, client, 2);
}

/* One datagram of packed plaintext from `from` to `to`; returns bytes of plaintext out. */
static int carry(dtls_sess *from, dtls_sess *to, const uint8_t *batch, size_t n, uint8_t *out,
                 size_t cap, int record) {
  int w = dtls_sess_send_batch(from, batch, n, q, sizeof q);
  REQUIRE(w >= 0);
  int got = 0, off = 0;
  while (off + 2 <= w) {
    int dl = q[off] << 8 | q[off + 1];
    if (record) seed(2, q + off + 2, (size_t)dl);
    int r = dtls_sess_receive(to, q + off + 2, (size_t)dl, out + got, cap - (size_t)got);
    REQUIRE(r >= 0);
    got += r;
    off += 2 + dl;
  }
  return got;
}

static void still_carries(void) {
  static const uint8_t ping[] = {0, 4, 'p', 'i', 'n', 'g'};
  REQUIRE(carry(client, server, ping, sizeof ping, app, sizeof app, 0) == (int)sizeof ping);
  REQUIRE(memcmp(app, ping, sizeof ping) == 0);
  REQUIRE(carry(server, client, ping, sizeof ping, app, sizeof app, 0) == (int)sizeof ping);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  seed_dir = getenv("SHALLOT_FUZZ_SEEDS");
  server_ctx = make_ctx();
  client_ctx = make_ctx();
  establish();
  static const uint8_t batch[] = {0, 5, 'h', 'e', 'l', 'l', 'o', 0, 0, 0, 2, 'h', 'i'};
  seed(3, batch, sizeof batch);
  (void)carry(client, server, batch, sizeof batch, app, sizeof app, 1);
  return 0;
}

static void fuzz_listen(const uint8_t *d, size_t n) {
  int r = dtls_ctx_listen(server_ctx, d, n, (const uint8_t *)PEER, strlen(PEER), hvr, sizeof hvr);
  REQUIRE(r == DTLS_LISTEN_DROP || r == DTLS_LISTEN_VERIFIED || (r > 0 && r <= 128));
  if (r == DTLS_LISTEN_VERIFIED) {
    dtls_sess *s = dtls_ctx_accept(server_ctx);
    REQUIRE(s != NULL);
    int rr = dtls_sess_receive(s, NULL, 0, app, sizeof app);
    REQUIRE(rr == 0 || rr == -1);
    (void)dtls_sess_flush(s, q, sizeof q);
    REQUIRE(!dtls_sess_established(s));
    dtls_sess_free(s);
  }
}

static void fuzz_client(const uint8_t *d, size_t n) {
  dtls_sess *c = dtls_ctx_connect(client_ctx);
  REQUIRE(c != NULL && dtls_sess_pump(c) == 0);
  (void)dtls_sess_flush(c, q, sizeof q);
  int r = dtls_sess_receive(c, d, n, app, sizeof app);
  REQUIRE(r == 0 || r == -1);
  (void)dtls_sess_flush(c, q, sizeof q);
  (void)dtls_sess_timeout_ms(c);
  REQUIRE(!dtls_sess_established(c));
  dtls_sess_free(c);
}

static void fuzz_established(const uint8_t *d, size_t n) {
  static unsigned runs;
  REQUIRE(dtls_sess_receive(server, d, n, app, sizeof app) == 0);
  REQUIRE(dtls_sess_receive(client, d, n, app, sizeof app) == 0);
  (void)dtls_sess_flush(server, q, sizeof q);
  (void)dtls_sess_flush(client, q, sizeof q);
  if (++runs % 64 == 0) still_carries();
}

static void fuzz_batch(const uint8_t *d, size_t n) {
  static uint8_t got[BUF], want[BUF];
  /* What must come out: each whole entry with 0 < length <= max, in order. */
  size_t max = (size_t)dtls_sess_max_plaintext(client), off = 0, wl = 0;
  while (n - off >= 2) {
    size_t dl = (size_t)d[off] << 8 | d[off + 1];
    if (dl > n - off - 2) break;
    if (dl > 0 && dl <= max && wl + 2 + dl <= sizeof want) {
      want[wl] = d[off];
      want[wl + 1] = d[off + 1];
      memcpy(want + wl + 2, d + off + 2, dl);
      wl += 2 + dl;
    }
    off += 2 + dl;
  }
  int g = carry(client, server, d, n, got, sizeof got, 0);
  REQUIRE((size_t)g == wl && memcmp(got, want, wl) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  const uint8_t *d = data + 1;
  size_t n = size - 1;
  switch (data[0] & 3) {
  case 0: fuzz_listen(d, n); break;
  case 1: fuzz_client(d, n); break;
  case 2: fuzz_established(d, n); break;
  default: fuzz_batch(d, n); break;
  }
  return 0;
}
