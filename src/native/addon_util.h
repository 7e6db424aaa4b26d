/*
 * N-API helpers shared by the shallot_tun and shallot_udp addons: errors
 * with Node's conventions (code, errno, syscall), argument checks that
 * throw TypeError/RangeError, and result properties.
 *
 * Included once per addon, after defining ADDON_NAME (e.g. "shallot_tun")
 * and ADDON_ERR (the error code prefix, e.g. "ERR_TUN"). Everything is
 * static inline: each addon gets its own copy, unused ones cost nothing.
 */
#ifndef SHALLOT_ADDON_UTIL_H
#define SHALLOT_ADDON_UTIL_H

#if !defined(ADDON_NAME) || !defined(ADDON_ERR)
#error "define ADDON_NAME and ADDON_ERR before including addon_util.h"
#endif

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <node_api.h>

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */

static inline const char *errno_code(int e) {
  switch (e) {
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case ENOENT: return "ENOENT";
    case ENODEV: return "ENODEV";
    case ENXIO: return "ENXIO";
    case EBUSY: return "EBUSY";
    case EEXIST: return "EEXIST";
    case EINVAL: return "EINVAL";
    case EBADF: return "EBADF";
    case EBADFD: return "EBADFD";
    case EIO: return "EIO";
    case ENOMEM: return "ENOMEM";
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    case EAGAIN: return "EAGAIN";
    case ENOBUFS: return "ENOBUFS";
    case EFAULT: return "EFAULT";
    case EMSGSIZE: return "EMSGSIZE";
    case ENOTTY: return "ENOTTY";
    case ENOTSOCK: return "ENOTSOCK";
    case EADDRINUSE: return "EADDRINUSE";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    case EPROTONOSUPPORT: return "EPROTONOSUPPORT";
    case ENETUNREACH: return "ENETUNREACH";
    case EHOSTUNREACH: return "EHOSTUNREACH";
    case ECONNREFUSED: return "ECONNREFUSED";
    default: return ADDON_ERR "_SYSCALL";
  }
}

/* Throw an Error whose message is `prefix: strerror(e) (hint)`, or
 * `(ERRNO_NAME)` without a hint, with `code` (errno name), `errno`
 * (negative, as Node's) and, when given, `syscall`. */
static inline void throw_errno(napi_env env, int e, const char *syscall, const char *hint,
                               const char *fmt, ...) {
  char prefix[160];
  char msg[320];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  snprintf(msg, sizeof msg, "%s: %s (%s)", prefix, strerror(e),
           hint != NULL && hint[0] != '\0' ? hint : errno_code(e));
  napi_value code, message, error, num, sc;
  if (napi_create_string_utf8(env, errno_code(e), NAPI_AUTO_LENGTH, &code) != napi_ok ||
      napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &message) != napi_ok ||
      napi_create_error(env, code, message, &error) != napi_ok) {
    napi_throw_error(env, NULL, msg);
    return;
  }
  if (napi_create_int32(env, -e, &num) == napi_ok) {
    napi_set_named_property(env, error, "errno", num);
  }
  if (syscall != NULL && napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &sc) == napi_ok) {
    napi_set_named_property(env, error, "syscall", sc);
  }
  napi_throw(env, error);
}

/* kind 0: Error, 1: TypeError, 2: RangeError. */
static inline void throw_fmt(napi_env env, int kind, const char *code, const char *fmt, ...) {
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (kind == 1) {
    napi_throw_type_error(env, code, msg);
  } else if (kind == 2) {
    napi_throw_range_error(env, code, msg);
  } else {
    napi_throw_error(env, code, msg);
  }
}
#define THROW_TYPE(env, ...) throw_fmt((env), 1, "ERR_INVALID_ARG_TYPE", __VA_ARGS__)
#define THROW_RANGE(env, ...) throw_fmt((env), 2, "ERR_OUT_OF_RANGE", __VA_ARGS__)
#define THROW_ERROR(env, code, ...) throw_fmt((env), 0, (code), __VA_ARGS__)

/* Turn a failed N-API status into a JS exception unless one is pending. */
static inline void throw_napi(napi_env env, napi_status status, const char *what) {
  const napi_extended_error_info *info = NULL;
  char msg[256];
  const char *detail = "unknown error";
  if (napi_get_last_error_info(env, &info) == napi_ok && info != NULL &&
      info->error_message != NULL) {
    detail = info->error_message;
  }
  snprintf(msg, sizeof msg, ADDON_NAME ": N-API call %s failed (status %d: %s)", what,
           (int)status, detail);
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) return;
  napi_throw_error(env, ADDON_ERR "_NAPI", msg);
}

#define NAPI_CALL(env, call, ret)                  \
  do {                                             \
    napi_status napi_call_status_ = (call);        \
    if (napi_call_status_ != napi_ok) {            \
      throw_napi((env), napi_call_status_, #call); \
      return ret;                                  \
    }                                              \
  } while (0)

/* ------------------------------------------------------------------------ */
/* Arguments                                                                 */

static inline bool get_integer(napi_env env, napi_value v, const char *what, double min,
                               double max, double *out) {
  napi_valuetype t;
  napi_status st = napi_typeof(env, v, &t);
  if (st != napi_ok) {
    throw_napi(env, st, "napi_typeof");
    return false;
  }
  if (t != napi_number) {
    THROW_TYPE(env, "%s must be a number", what);
    return false;
  }
  double d;
  st = napi_get_value_double(env, v, &d);
  if (st != napi_ok) {
    throw_napi(env, st, "napi_get_value_double");
    return false;
  }
  if (!isfinite(d) || d != floor(d) || d < min || d > max) {
    THROW_RANGE(env, "%s must be an integer from %.0f to %.0f, got %g", what, min, max, d);
    return false;
  }
  *out = d;
  return true;
}

static inline bool get_fd(napi_env env, napi_value v, int *fd) {
  double d;
  if (!get_integer(env, v, "fd", 0, (double)INT_MAX, &d)) return false;
  *fd = (int)d;
  return true;
}

static inline bool get_u32(napi_env env, napi_value v, const char *what, uint32_t min,
                           uint32_t max, uint32_t *out) {
  double d;
  if (!get_integer(env, v, what, (double)min, (double)max, &d)) return false;
  *out = (uint32_t)d;
  return true;
}

/* An optional boolean: undefined leaves *out as it is. */
static inline bool get_flag(napi_env env, napi_value v, const char *what, bool *out) {
  napi_valuetype t;
  NAPI_CALL(env, napi_typeof(env, v, &t), false);
  if (t == napi_undefined) return true;
  if (t != napi_boolean) {
    THROW_TYPE(env, "%s must be a boolean", what);
    return false;
  }
  NAPI_CALL(env, napi_get_value_bool(env, v, out), false);
  return true;
}

/* ------------------------------------------------------------------------ */
/* Results                                                                   */

static inline bool set_number(napi_env env, napi_value obj, const char *key, double v) {
  napi_value n;
  napi_status st = napi_create_double(env, v, &n);
  if (st == napi_ok) st = napi_set_named_property(env, obj, key, n);
  if (st != napi_ok) {
    throw_napi(env, st, key);
    return false;
  }
  return true;
}

static inline bool set_string(napi_env env, napi_value obj, const char *key, const char *s) {
  napi_value v;
  napi_status st = napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &v);
  if (st == napi_ok) st = napi_set_named_property(env, obj, key, v);
  if (st != napi_ok) {
    throw_napi(env, st, key);
    return false;
  }
  return true;
}

#endif
