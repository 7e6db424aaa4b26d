/*
 * dtls_addon.c: N-API glue over dtls_core. Every argument is type- and
 * length-checked here; programming errors throw, runtime conditions (a
 * failed session, a dropped datagram) are return values. Buffers are only
 * borrowed for the duration of one call.
 */
#include <node_api.h>
#include <stdlib.h>
#include <string.h>

#include "dtls_core.h"

typedef struct {
  napi_ref session_ctor;
} addon_data;

#define MAX_STRING (64 * 1024)
#define MAX_LABEL 255
#define MAX_EXPORT 4096

/* Throw for a failed napi_* call unless a JS exception is already pending. */
static napi_value throw_status(napi_env env) {
  bool pending = false;
  const napi_extended_error_info *info = NULL;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) return NULL;
  napi_get_last_error_info(env, &info);
  const char *msg = info && info->error_message ? info->error_message : "N-API call failed";
  napi_throw_error(env, NULL, msg);
  return NULL;
}

#define CHECK(call)                               \
  do {                                            \
    if ((call) != napi_ok) return throw_status(env); \
  } while (0)

static int get_buffer(napi_env env, napi_value v, uint8_t **p, size_t *n, const char *msg) {
  bool is = false;
  void *data = NULL;
  if (napi_is_buffer(env, v, &is) != napi_ok || !is ||
      napi_get_buffer_info(env, v, &data, n) != napi_ok) {
    napi_throw_type_error(env, NULL, msg);
    return 0;
  }
  *p = data;
  return 1;
}

static int is_nullish(napi_env env, napi_value v) {
  napi_valuetype t;
  return napi_typeof(env, v, &t) == napi_ok && (t == napi_null || t == napi_undefined);
}

/* An integer in [lo, hi]; NaN, fractions and out-of-range values throw. */
static int get_int(napi_env env, napi_value v, double lo, double hi, double *out, const char *msg) {
  napi_valuetype t;
  double d = 0;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number ||
      napi_get_value_double(env, v, &d) != napi_ok || d != d || d < lo || d > hi ||
      d != (double)(long long)d) {
    napi_throw_range_error(env, NULL, msg);
    return 0;
  }
  *out = d;
  return 1;
}

/* A malloc'd UTF-8 copy of a JS string of at most MAX_STRING bytes. */
static char *get_string(napi_env env, napi_value v, size_t *len, const char *msg) {
  napi_valuetype t;
  size_t n = 0;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_string ||
      napi_get_value_string_utf8(env, v, NULL, 0, &n) != napi_ok || n > MAX_STRING) {
    napi_throw_type_error(env, NULL, msg);
    return NULL;
  }
  char *s = malloc(n + 1);
  if (s == NULL || napi_get_value_string_utf8(env, v, s, n + 1, len) != napi_ok) {
    free(s);
    napi_throw_error(env, NULL, "out of memory");
    return NULL;
  }
  return s;
}

static napi_value num(napi_env env, double d) {
  napi_value v;
  return napi_create_double(env, d, &v) == napi_ok ? v : throw_status(env);
}

static napi_value boolean(napi_env env, int b) {
  napi_value v;
  return napi_get_boolean(env, b != 0, &v) == napi_ok ? v : throw_status(env);
}

static napi_value str(napi_env env, const char *s) {
  napi_value v;
  return napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &v) == napi_ok ? v : throw_status(env);
}

/* Fetch `this` as a wrapped native pointer plus exactly `want` arguments. */
static int unwrap_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv,
                       void **self, const char *what) {
  size_t argc = want;
  napi_value this_arg;
  if (napi_get_cb_info(env, info, &argc, argv, &this_arg, NULL) != napi_ok) {
    throw_status(env);
    return 0;
  }
  if (napi_unwrap(env, this_arg, self) != napi_ok || *self == NULL) {
    napi_throw_type_error(env, NULL, what);
    return 0;
  }
  if (argc < want) {
    napi_throw_type_error(env, NULL, "missing arguments");
    return 0;
  }
  return 1;
}

#define SESSION(n)                                                            \
  napi_value argv[(n) > 0 ? (n) : 1];                                         \
  void *self = NULL;                                                          \
  if (!unwrap_args(env, info, (n), argv, &self, "not a DTLS session")) return NULL; \
  dtls_sess *s = self;                                                        \
  (void)argv

#define CONTEXT(n)                                                            \
  napi_value argv[(n) > 0 ? (n) : 1];                                         \
  void *self = NULL;                                                          \
  if (!unwrap_args(env, info, (n), argv, &self, "not a DtlsContext")) return NULL; \
  dtls_ctx *c = self;                                                         \
  (void)argv

/* ---- DtlsSession -------------------------------------------------------- */

static void session_finalize(napi_env env, void *data, void *hint) { dtls_sess_free(data); }

/* Sessions are only made by accept()/connect(); a bare `new` yields an
 * unwrapped object whose every method throws. */
static napi_value session_ctor(napi_env env, napi_callback_info info) {
  napi_value this_arg;
  CHECK(napi_get_cb_info(env, info, NULL, NULL, &this_arg, NULL));
  return this_arg;
}

static napi_value wrap_session(napi_env env, dtls_sess *s) {
  addon_data *d = NULL;
  napi_value ctor, obj;
  if (s == NULL) {
    napi_throw_error(env, NULL, "cannot create DTLS session");
    return NULL;
  }
  if (napi_get_instance_data(env, (void **)&d) != napi_ok || d == NULL ||
      napi_get_reference_value(env, d->session_ctor, &ctor) != napi_ok ||
      napi_new_instance(env, ctor, 0, NULL, &obj) != napi_ok ||
      napi_wrap(env, obj, s, session_finalize, NULL, NULL) != napi_ok) {
    dtls_sess_free(s);
    return throw_status(env);
  }
  return obj;
}

static napi_value s_receive(napi_env env, napi_callback_info info) {
  SESSION(2);
  uint8_t *in = NULL, *out = NULL;
  size_t in_len = 0, out_len = 0;
  if (!is_nullish(env, argv[0]) &&
      !get_buffer(env, argv[0], &in, &in_len, "datagram must be a Buffer or null"))
    return NULL;
  if (!get_buffer(env, argv[1], &out, &out_len, "out must be a Buffer")) return NULL;
  return num(env, dtls_sess_receive(s, in, in_len, out, out_len));
}

static napi_value s_pump(napi_env env, napi_callback_info info) {
  SESSION(0);
  return num(env, dtls_sess_pump(s));
}

static napi_value s_send_batch(napi_env env, napi_callback_info info) {
  SESSION(3);
  uint8_t *in = NULL, *out = NULL;
  size_t in_len = 0, out_len = 0;
  double len = 0;
  if (!get_buffer(env, argv[0], &in, &in_len, "packed must be a Buffer")) return NULL;
  if (!get_int(env, argv[1], 0, (double)in_len, &len, "len must be an integer within packed"))
    return NULL;
  if (!get_buffer(env, argv[2], &out, &out_len, "out must be a Buffer")) return NULL;
  return num(env, dtls_sess_send_batch(s, in, (size_t)len, out, out_len));
}

static napi_value s_flush(napi_env env, napi_callback_info info) {
  SESSION(1);
  uint8_t *out = NULL;
  size_t out_len = 0;
  if (!get_buffer(env, argv[0], &out, &out_len, "out must be a Buffer")) return NULL;
  return num(env, dtls_sess_flush(s, out, out_len));
}

static napi_value s_timeout_ms(napi_env env, napi_callback_info info) {
  SESSION(0);
  return num(env, (double)dtls_sess_timeout_ms(s));
}

static napi_value s_handle_timeout(napi_env env, napi_callback_info info) {
  SESSION(0);
  return num(env, dtls_sess_handle_timeout(s));
}

static napi_value s_established(napi_env env, napi_callback_info info) {
  SESSION(0);
  return boolean(env, dtls_sess_established(s));
}

static napi_value s_max_plaintext(napi_env env, napi_callback_info info) {
  SESSION(0);
  return num(env, dtls_sess_max_plaintext(s));
}

static napi_value s_peer_certificate(napi_env env, napi_callback_info info) {
  SESSION(0);
  napi_value buf;
  void *data = NULL;
  int n = dtls_sess_peer_cert(s, NULL, 0);
  if (n <= 0) {
    CHECK(napi_get_null(env, &buf));
    return buf;
  }
  CHECK(napi_create_buffer(env, (size_t)n, &data, &buf));
  if (dtls_sess_peer_cert(s, data, (size_t)n) != n) {
    napi_throw_error(env, NULL, "cannot encode peer certificate");
    return NULL;
  }
  return buf;
}

static napi_value s_export(napi_env env, napi_callback_info info) {
  SESSION(2);
  size_t label_len = 0;
  double len = 0;
  napi_value buf;
  void *data = NULL;
  if (!get_int(env, argv[1], 1, MAX_EXPORT, &len, "length must be an integer in 1..4096"))
    return NULL;
  char *label = get_string(env, argv[0], &label_len, "label must be a string");
  if (label == NULL) return NULL;
  if (label_len > MAX_LABEL || napi_create_buffer(env, (size_t)len, &data, &buf) != napi_ok ||
      dtls_sess_export(s, label, label_len, data, (size_t)len) != 0) {
    free(label);
    napi_throw_error(env, NULL, "exporter unavailable (handshake incomplete or label invalid)");
    return NULL;
  }
  free(label);
  return buf;
}

static napi_value s_limit_handshake_mtu(napi_env env, napi_callback_info info) {
  SESSION(1);
  double mtu = 0;
  const char *msg = "mtu must be an integer in 256..65507";
  if (!get_int(env, argv[0], DTLS_MIN_MTU, DTLS_MAX_MTU, &mtu, msg)) return NULL;
  return num(env, dtls_sess_limit_handshake_mtu(s, (int)mtu));
}

static napi_value s_test_secrets(napi_env env, napi_callback_info info) {
  SESSION(0);
  uint8_t sec[DTLS_TEST_SECRETS_LEN];
  napi_value buf;
  void *data = NULL;
  int n = dtls_sess_test_secrets(s, sec, sizeof sec);
  if (n != DTLS_TEST_SECRETS_LEN) {
    CHECK(napi_get_null(env, &buf));
    return buf;
  }
  napi_status st = napi_create_buffer_copy(env, sizeof sec, sec, &data, &buf);
  memset(sec, 0, sizeof sec);
  if (st != napi_ok) return throw_status(env);
  return buf;
}

static napi_value s_cipher(napi_env env, napi_callback_info info) {
  SESSION(0);
  return str(env, dtls_sess_cipher(s));
}

static napi_value s_error(napi_env env, napi_callback_info info) {
  SESSION(0);
  return str(env, dtls_sess_error(s));
}

static napi_value s_shutdown(napi_env env, napi_callback_info info) {
  SESSION(0);
  dtls_sess_shutdown(s);
  return NULL;
}

static napi_value s_free(napi_env env, napi_callback_info info) {
  SESSION(0);
  dtls_sess_close(s); /* the struct itself goes with the JS object */
  return NULL;
}

/* ---- DtlsContext -------------------------------------------------------- */

static void context_finalize(napi_env env, void *data, void *hint) { dtls_ctx_free(data); }

static char *get_option_string(napi_env env, napi_value opts, const char *key, size_t *len,
                               const char *msg) {
  napi_value v;
  if (napi_get_named_property(env, opts, key, &v) != napi_ok) {
    throw_status(env);
    return NULL;
  }
  return get_string(env, v, len, msg);
}

static napi_value context_ctor(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], this_arg, target, mtu_v;
  napi_valuetype t;
  double mtu = 0;
  char err[256] = "";
  CHECK(napi_get_new_target(env, info, &target));
  if (target == NULL) {
    napi_throw_type_error(env, NULL, "DtlsContext must be called with new");
    return NULL;
  }
  CHECK(napi_get_cb_info(env, info, &argc, argv, &this_arg, NULL));
  if (argc < 1 || napi_typeof(env, argv[0], &t) != napi_ok || t != napi_object) {
    napi_throw_type_error(env, NULL, "options must be an object");
    return NULL;
  }
  CHECK(napi_get_named_property(env, argv[0], "mtu", &mtu_v));
  const char *mtu_msg = "mtu must be an integer in 256..65507"; /* DTLS_MIN_MTU..DTLS_MAX_MTU */
  if (!get_int(env, mtu_v, DTLS_MIN_MTU, DTLS_MAX_MTU, &mtu, mtu_msg)) return NULL;
  size_t cert_len = 0, key_len = 0;
  char *cert = get_option_string(env, argv[0], "certPem", &cert_len, "certPem must be a string");
  if (cert == NULL) return NULL;
  char *key = get_option_string(env, argv[0], "keyPem", &key_len, "keyPem must be a string");
  if (key == NULL) {
    free(cert);
    return NULL;
  }
  dtls_ctx *c = dtls_ctx_new(cert, cert_len, key, key_len, (int)mtu, err, sizeof err);
  memset(key, 0, key_len); /* best effort: the JS string still exists */
  free(key);
  free(cert);
  if (c == NULL) {
    napi_throw_error(env, NULL, err[0] ? err : "cannot create DTLS context");
    return NULL;
  }
  if (napi_wrap(env, this_arg, c, context_finalize, NULL, NULL) != napi_ok) {
    dtls_ctx_free(c);
    return throw_status(env);
  }
  return this_arg;
}

static napi_value c_set_cookie_secrets(napi_env env, napi_callback_info info) {
  CONTEXT(2);
  uint8_t *cur = NULL, *prev = NULL;
  size_t cur_len = 0, prev_len = 0;
  if (!get_buffer(env, argv[0], &cur, &cur_len, "current must be a Buffer")) return NULL;
  if (!is_nullish(env, argv[1]) &&
      !get_buffer(env, argv[1], &prev, &prev_len, "previous must be a Buffer or null"))
    return NULL;
  if (dtls_ctx_set_cookie_secrets(c, cur, cur_len, prev, prev_len) != 0) {
    napi_throw_range_error(env, NULL, "cookie secrets must be 32 bytes");
    return NULL;
  }
  return NULL;
}

static napi_value c_listen(napi_env env, napi_callback_info info) {
  CONTEXT(3);
  uint8_t *dg = NULL, *peer = NULL, *out = NULL;
  size_t dg_len = 0, peer_len = 0, out_len = 0;
  if (!get_buffer(env, argv[0], &dg, &dg_len, "datagram must be a Buffer") ||
      !get_buffer(env, argv[1], &peer, &peer_len, "peerKey must be a Buffer") ||
      !get_buffer(env, argv[2], &out, &out_len, "out must be a Buffer"))
    return NULL;
  if (peer_len == 0 || peer_len > 1024) {
    napi_throw_range_error(env, NULL, "peerKey must be 1..1024 bytes");
    return NULL;
  }
  return num(env, dtls_ctx_listen(c, dg, dg_len, peer, peer_len, out, out_len));
}

static napi_value c_accept(napi_env env, napi_callback_info info) {
  CONTEXT(0);
  dtls_sess *s = dtls_ctx_accept(c);
  if (s == NULL) {
    napi_throw_error(env, NULL, "accept() without a ClientHello just verified by listen()");
    return NULL;
  }
  return wrap_session(env, s);
}

static napi_value c_connect(napi_env env, napi_callback_info info) {
  CONTEXT(0);
  return wrap_session(env, dtls_ctx_connect(c));
}

/* ---- certificates ------------------------------------------------------- */

static napi_value generate_certificate(napi_env env, napi_callback_info info) {
  char *key = NULL, *cert = NULL;
  napi_value obj, k, v;
  if (dtls_generate_certificate(&key, &cert) != 0) {
    napi_throw_error(env, NULL, "cannot generate certificate");
    return NULL;
  }
  napi_status st = napi_create_object(env, &obj);
  if (st == napi_ok) st = napi_create_string_utf8(env, key, NAPI_AUTO_LENGTH, &k);
  if (st == napi_ok) st = napi_create_string_utf8(env, cert, NAPI_AUTO_LENGTH, &v);
  if (st == napi_ok) st = napi_set_named_property(env, obj, "keyPem", k);
  if (st == napi_ok) st = napi_set_named_property(env, obj, "certPem", v);
  memset(key, 0, strlen(key));
  free(key);
  free(cert);
  return st == napi_ok ? obj : throw_status(env);
}

static char *pem_arg(napi_env env, napi_callback_info info, size_t *len) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) {
    throw_status(env);
    return NULL;
  }
  if (argc < 1) {
    napi_throw_type_error(env, NULL, "certPem must be a string");
    return NULL;
  }
  return get_string(env, argv[0], len, "certPem must be a string");
}

static napi_value certificate_der(napi_env env, napi_callback_info info) {
  size_t len = 0;
  napi_value buf;
  void *data = NULL;
  char *pem = pem_arg(env, info, &len);
  if (pem == NULL) return NULL;
  int n = dtls_certificate_der(pem, len, NULL, 0);
  napi_status st = n > 0 ? napi_create_buffer(env, (size_t)n, &data, &buf) : napi_ok;
  if (st == napi_ok && n > 0 && dtls_certificate_der(pem, len, data, (size_t)n) != n) n = -1;
  free(pem);
  if (st != napi_ok) return throw_status(env);
  if (n <= 0) {
    napi_throw_error(env, NULL, "not a PEM certificate");
    return NULL;
  }
  return buf;
}

static napi_value certificate_fingerprint(napi_env env, napi_callback_info info) {
  size_t len = 0;
  uint8_t fp[DTLS_FINGERPRINT_LEN];
  napi_value buf;
  void *data = NULL;
  char *pem = pem_arg(env, info, &len);
  if (pem == NULL) return NULL;
  int rc = dtls_certificate_fingerprint(pem, len, fp);
  free(pem);
  if (rc != 0) {
    napi_throw_error(env, NULL, "not a PEM certificate");
    return NULL;
  }
  CHECK(napi_create_buffer_copy(env, sizeof fp, fp, &data, &buf));
  return buf;
}

/* ---- module ------------------------------------------------------------- */

static void data_finalize(napi_env env, void *data, void *hint) {
  addon_data *d = data;
  if (d->session_ctor) napi_delete_reference(env, d->session_ctor);
  free(d);
}

#define METHOD(name, fn) {name, NULL, fn, NULL, NULL, NULL, napi_default, NULL}

static napi_value Init(napi_env env, napi_value exports) {
  napi_property_descriptor sess_methods[] = {
      METHOD("receive", s_receive),
      METHOD("pump", s_pump),
      METHOD("sendBatch", s_send_batch),
      METHOD("flush", s_flush),
      METHOD("timeoutMs", s_timeout_ms),
      METHOD("handleTimeout", s_handle_timeout),
      METHOD("established", s_established),
      METHOD("maxPlaintext", s_max_plaintext),
      METHOD("peerCertificate", s_peer_certificate),
      METHOD("exportKeyingMaterial", s_export),
      METHOD("limitHandshakeMtu", s_limit_handshake_mtu),
      METHOD("testSecrets", s_test_secrets),
      METHOD("cipher", s_cipher),
      METHOD("error", s_error),
      METHOD("shutdown", s_shutdown),
      METHOD("free", s_free),
  };
  napi_property_descriptor ctx_methods[] = {
      METHOD("setCookieSecrets", c_set_cookie_secrets),
      METHOD("listen", c_listen),
      METHOD("accept", c_accept),
      METHOD("connect", c_connect),
  };
  napi_property_descriptor fns[] = {
      METHOD("generateCertificate", generate_certificate),
      METHOD("certificateFingerprint", certificate_fingerprint),
      METHOD("certificateDer", certificate_der),
  };
  napi_value sess_class, ctx_class;
  addon_data *d = calloc(1, sizeof *d);
  if (d == NULL) {
    napi_throw_error(env, NULL, "out of memory");
    return NULL;
  }
  if (napi_set_instance_data(env, d, data_finalize, NULL) != napi_ok) {
    free(d);
    return throw_status(env);
  }
  CHECK(napi_define_class(env, "DtlsSession", NAPI_AUTO_LENGTH, session_ctor, NULL,
                          sizeof sess_methods / sizeof sess_methods[0], sess_methods, &sess_class));
  CHECK(napi_create_reference(env, sess_class, 1, &d->session_ctor));
  CHECK(napi_define_class(env, "DtlsContext", NAPI_AUTO_LENGTH, context_ctor, NULL,
                          sizeof ctx_methods / sizeof ctx_methods[0], ctx_methods, &ctx_class));
  CHECK(napi_set_named_property(env, exports, "DtlsContext", ctx_class));
  CHECK(napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
