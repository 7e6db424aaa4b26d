/*
 * shallot_udp: a UDP socket moved in batches (recvmmsg/sendmmsg), polled by
 * libuv on Node's own loop.
 *
 * JS API (see src/native/binding.ts, interface NativeUdp):
 *   open(family, host, port, bufferBytes[, gso[, gro]]) -> { fd, port, address, ... }
 *   startReading(fd, maxBatch, maxDatagram, onDatagrams(buf, len, count))
 *   stopReading(fd)                              (idempotent)
 *   sendBatch(fd, packed, len, family, addr, port[, scopeId]) -> datagrams sent
 *   sendGroups(fd, buf, len)                                  -> datagrams sent
 *   sendTo(fd, data, family, addr, port[, scopeId])           -> 1 or 0
 *   stats(fd)                                    -> counters
 *   close(fd)
 *   parseAddress(host)                           -> { family, addr, scopeId } | null
 *   formatAddress(family, addr, scopeId)         -> host string, as Node prints it
 *
 * Outgoing batches are, back to back, [u16 big-endian length][bytes].
 * Received batches are, back to back, one record per datagram:
 *   IPv4: [u8 4][addr 4][u16 port][u16 len][u16 seg][bytes]                (11 + len)
 *   IPv6: [u8 6][addr 16][u32 scope id][u16 port][u16 len][u16 seg][bytes] (27 + len)
 * all integers big-endian. seg is 0 for one datagram. On a socket opened
 * with gro, a record may hold a run of datagrams from one source that the
 * kernel coalesced (UDP_GRO): seg is then their size, each is seg bytes
 * but the last, which may be shorter.
 *
 * Design (the same as shallot_tun):
 *  - All state lives in per-environment instance data (one table per Node
 *    environment, so worker threads never share it and no lock is needed).
 *  - The table has UDP_MAX_ENTRIES entries keyed by fd, each made by open().
 *    Every other call refuses an fd not in the table, so a stale number can
 *    never reach an unrelated file. Counters live until close().
 *  - A reader owns a uv_poll_t, one preallocated JS Buffer of
 *    maxBatch * (25 + maxDatagram) bytes (held by a napi_ref and reused), the
 *    callback, an async context and maxBatch mmsghdr/iovec/sockaddr slots.
 *    recvmmsg() fills slot i at i * (25 + maxDatagram) + 25; the records are
 *    then compacted in place (each one moves towards the start, never over a
 *    slot not yet read). A datagram longer than maxDatagram comes back with
 *    MSG_TRUNC: its rest is discarded by the kernel and it is counted.
 *  - One wake-up runs at most UDP_ROUNDS recvmmsg() calls, one JS call each,
 *    and stops early when a call returns less than a full batch, so one
 *    busy socket cannot starve the loop (the poll is level-triggered: what
 *    is left wakes it again on the next loop iteration).
 *  - A reader is detached from its entry when stopped, so the fd number can
 *    be reused at once (even from inside the callback); the reader memory is
 *    freed by the uv_close callback, never while the JS callback runs.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <node_api.h>
#include <uv.h>

#define ADDON_NAME "shallot_udp"
#define ADDON_ERR "ERR_UDP"
#include "addon_util.h"
#include "wire.h"

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

#define UDP_MAX_ENTRIES 64
#define UDP_MAX_BATCH 1024
#define UDP_MAX_DATAGRAM 65535
#define UDP_MAX_BUFFER (64u * 1024u * 1024u)
#define UDP_MAX_SOCKBUF (1024 * 1024 * 1024)
#define UDP_SEND_CHUNK 64 /* messages per sendmmsg() */
#define UDP_GSO_MAX_SEGMENTS 64 /* UDP_MAX_SEGMENTS of the oldest GSO kernels */
#define UDP_GSO_MAX_BYTES 65507 /* one UDP/IPv4 datagram at most */
#define UDP_PLAN_IOVS (UDP_SEND_CHUNK * UDP_GSO_MAX_SEGMENTS)
#define UDP_ROUNDS 4
#define UDP_HDR4 11 /* family, addr 4, port, len, segment */
#define UDP_HDR6 27 /* family, addr 16, scope 4, port, len, segment */
#define UDP_HDR_MAX UDP_HDR6

typedef struct reader reader_t;

/* Room for the UDP_GRO control message of one received datagram. */
typedef union {
  char buf[CMSG_SPACE(sizeof(int))];
  struct cmsghdr align;
} udp_ctl_t;

typedef struct {
  bool used;
  int fd;
  int family; /* AF_INET or AF_INET6 */
  uint64_t received;
  uint64_t oversize;
  uint64_t errors;
  uint64_t callbacks;
  uint64_t sent;
  uint64_t send_dropped;
  uint64_t send_errors;
  int last_errno;      /* last receive error (0 if none) */
  int last_send_errno; /* last send error other than EAGAIN/ENOBUFS (0 if none) */
  bool gso;            /* coalesce equal-size datagrams to one destination (UDP_SEGMENT) */
  uint64_t gso_sends;  /* messages sent with more than one segment */
  uint64_t gso_fallbacks;
  int gso_errno; /* why GSO was turned off (0 if it was not) */
  bool gro;      /* the kernel may deliver coalesced runs (UDP_GRO) */
  reader_t *reader;
} entry_t;

/* A send being planned: up to UDP_SEND_CHUNK messages, each one datagram or
 * (GSO) a run of equal-size datagrams to one destination, the last of which
 * may be shorter. A message's iovecs are contiguous in `iovs`. */
typedef struct {
  struct mmsghdr msgs[UDP_SEND_CHUNK];
  struct sockaddr_in6 addrs[UDP_SEND_CHUNK];
  union {
    char buf[CMSG_SPACE(sizeof(uint16_t))];
    struct cmsghdr align;
  } ctl[UDP_SEND_CHUNK];
  uint32_t group[UDP_SEND_CHUNK];
  uint32_t ndgram[UDP_SEND_CHUNK];
  uint32_t seg[UDP_SEND_CHUNK]; /* segment size; 0: no GSO for this message */
  size_t total[UDP_SEND_CHUNK];
  bool closed[UDP_SEND_CHUNK]; /* a shorter last segment was added */
  struct iovec iovs[UDP_PLAN_IOVS];
  uint32_t nmsgs;
  uint32_t niovs;
} plan_t;

typedef struct {
  napi_env env;
  uv_loop_t *loop;
  plan_t *plan; /* one send at a time per environment: no lock needed */
  entry_t entries[UDP_MAX_ENTRIES];
} instance_t;

struct reader {
  uv_poll_t poll; /* first member: a uv handle pointer is a reader pointer */
  napi_env env;
  entry_t *entry; /* NULL once detached (stopping) */
  int fd;
  uint32_t max_batch;
  uint32_t max_datagram; /* of one datagram (one segment of a run) */
  uint32_t slot;         /* bytes one recvmmsg() slot takes: max_datagram, 65535 with gro */
  size_t stride;         /* UDP_HDR_MAX + slot */
  size_t buf_size;
  napi_ref buf_ref;
  napi_ref cb_ref;
  napi_async_context actx;
  bool polling;
  bool closing;
  bool closed;
  bool in_callback;
  bool napi_released;
  struct mmsghdr *msgs;       /* max_batch, in the same allocation */
  struct iovec *iovs;         /* max_batch */
  struct sockaddr_in6 *addrs; /* max_batch; large enough for sockaddr_in too */
  udp_ctl_t *ctls;            /* max_batch control buffers (gro only, else NULL) */
};

/* ------------------------------------------------------------------------ */
/* Arguments                                                                 */

/* Read `n` arguments; missing ones are undefined. Returns false (with an
 * exception pending) on failure. */
static bool get_args(napi_env env, napi_callback_info info, size_t n, napi_value *argv,
                     size_t *argc_out, instance_t **inst) {
  size_t argc = n;
  void *data = NULL;
  napi_status st = napi_get_cb_info(env, info, &argc, argv, NULL, &data);
  if (st != napi_ok) {
    throw_napi(env, st, "napi_get_cb_info");
    return false;
  }
  if (argc_out != NULL) *argc_out = argc;
  if (inst != NULL) {
    *inst = (instance_t *)data;
    if (*inst == NULL) {
      THROW_ERROR(env, "ERR_UDP_NAPI", "shallot_udp: missing instance data");
      return false;
    }
  }
  return true;
}

/* family 4 or 6 -> AF_INET / AF_INET6 */
static bool get_family(napi_env env, napi_value v, int *af) {
  uint32_t f;
  if (!get_u32(env, v, "family", 4, 6, &f)) return false;
  if (f == 5) {
    THROW_RANGE(env, "family must be 4 or 6, got 5");
    return false;
  }
  *af = f == 4 ? AF_INET : AF_INET6;
  return true;
}

static bool get_buffer(napi_env env, napi_value v, const char *what, uint8_t **data,
                       size_t *len) {
  bool is_buffer = false;
  napi_status st = napi_is_buffer(env, v, &is_buffer);
  if (st != napi_ok) {
    throw_napi(env, st, "napi_is_buffer");
    return false;
  }
  if (!is_buffer) {
    THROW_TYPE(env, "%s must be a Buffer", what);
    return false;
  }
  void *raw = NULL;
  size_t n = 0;
  st = napi_get_buffer_info(env, v, &raw, &n);
  if (st != napi_ok) {
    throw_napi(env, st, "napi_get_buffer_info");
    return false;
  }
  *data = (uint8_t *)raw;
  *len = n;
  return true;
}

/* Optional trailing scope id: undefined means 0. */
static bool get_scope(napi_env env, napi_value v, size_t argc, size_t index, uint32_t *scope) {
  *scope = 0;
  if (argc <= index) return true;
  napi_valuetype t;
  NAPI_CALL(env, napi_typeof(env, v, &t), false);
  if (t == napi_undefined) return true;
  return get_u32(env, v, "scopeId", 0, UINT32_MAX, scope);
}

/* The destination of a send: family, address bytes (4 or 16), port, scope. */
static bool get_destination(napi_env env, napi_value *argv, size_t argc, size_t first,
                            struct sockaddr_in6 *sa, socklen_t *salen, int *af_out) {
  int af;
  uint8_t *addr = NULL;
  size_t alen = 0;
  uint32_t port, scope;
  if (!get_family(env, argv[first], &af)) return false;
  if (!get_buffer(env, argv[first + 1], "addr", &addr, &alen)) return false;
  if (!get_u32(env, argv[first + 2], "port", 0, 65535, &port)) return false;
  if (!get_scope(env, argv[first + 3], argc, first + 3, &scope)) return false;
  memset(sa, 0, sizeof *sa);
  if (af == AF_INET) {
    if (alen != 4) {
      THROW_RANGE(env, "addr must be 4 bytes for family 4, got %zu", alen);
      return false;
    }
    struct sockaddr_in *s4 = (struct sockaddr_in *)sa;
    s4->sin_family = AF_INET;
    s4->sin_port = htons((uint16_t)port);
    memcpy(&s4->sin_addr, addr, 4);
    *salen = sizeof(struct sockaddr_in);
  } else {
    if (alen != 16) {
      THROW_RANGE(env, "addr must be 16 bytes for family 6, got %zu", alen);
      return false;
    }
    sa->sin6_family = AF_INET6;
    sa->sin6_port = htons((uint16_t)port);
    memcpy(&sa->sin6_addr, addr, 16);
    sa->sin6_scope_id = scope;
    *salen = sizeof(struct sockaddr_in6);
  }
  *af_out = af;
  return true;
}

/* ------------------------------------------------------------------------ */
/* Addresses                                                                 */

/* Format an address the way Node's rinfo.address / socket.address() does
 * (uv_inet_ntop, then "%<interface>" for a link-local IPv6 address with a
 * scope id). `out` must hold INET6_ADDRSTRLEN + UV_IF_NAMESIZE + 1 bytes. */
#define ADDR_TEXT_MAX (INET6_ADDRSTRLEN + UV_IF_NAMESIZE + 2)
static bool format_address(int af, const void *addr, uint32_t scope, char *out, size_t size) {
  if (uv_inet_ntop(af, addr, out, size) != 0) return false;
  if (af == AF_INET6 && scope != 0 && IN6_IS_ADDR_LINKLOCAL((const struct in6_addr *)addr)) {
    size_t n = strlen(out);
    if (n + 2 + UV_IF_NAMESIZE > size) return false;
    out[n] = '%';
    size_t idlen = size - n - 1;
    if (uv_if_indextoiid(scope, out + n + 1, &idlen) != 0) {
      snprintf(out + n + 1, size - n - 1, "%u", scope);
    }
  }
  return true;
}

/* Parse an IP literal ("192.0.2.1", "2001:db8::1", "fe80::1%eth0"). Returns
 * false if it is not one of the given family (af 0: either). */
static bool parse_address(const char *host, int af, int port, struct sockaddr_in6 *sa,
                          socklen_t *salen) {
  memset(sa, 0, sizeof *sa);
  if (af != AF_INET6 && uv_ip4_addr(host, port, (struct sockaddr_in *)sa) == 0) {
    *salen = sizeof(struct sockaddr_in);
    return true;
  }
  memset(sa, 0, sizeof *sa);
  if (af != AF_INET && strchr(host, ':') != NULL && uv_ip6_addr(host, port, sa) == 0) {
    *salen = sizeof(struct sockaddr_in6);
    return true;
  }
  return false;
}

static bool get_host(napi_env env, napi_value v, char *host, size_t size) {
  napi_valuetype t;
  NAPI_CALL(env, napi_typeof(env, v, &t), false);
  if (t != napi_string) {
    THROW_TYPE(env, "host must be a string");
    return false;
  }
  size_t len = 0;
  NAPI_CALL(env, napi_get_value_string_utf8(env, v, NULL, 0, &len), false);
  if (len >= size) {
    host[0] = '\0'; /* too long to be an address */
    return true;
  }
  NAPI_CALL(env, napi_get_value_string_utf8(env, v, host, size, &len), false);
  if (strlen(host) != len) host[0] = '\0'; /* embedded NUL */
  return true;
}

/* ------------------------------------------------------------------------ */
/* Table                                                                     */

static entry_t *find_entry(instance_t *inst, int fd) {
  for (int i = 0; i < UDP_MAX_ENTRIES; i++) {
    if (inst->entries[i].used && inst->entries[i].fd == fd) return &inst->entries[i];
  }
  return NULL;
}

static entry_t *new_entry(instance_t *inst, int fd, int family) {
  for (int i = 0; i < UDP_MAX_ENTRIES; i++) {
    entry_t *e = &inst->entries[i];
    if (!e->used) {
      memset(e, 0, sizeof *e);
      e->used = true;
      e->fd = fd;
      e->family = family;
      return e;
    }
  }
  return NULL;
}

static entry_t *known_entry(napi_env env, instance_t *inst, int fd) {
  entry_t *e = find_entry(inst, fd);
  if (e == NULL) {
    THROW_ERROR(env, "ERR_UDP_UNKNOWN_FD", "fd %d was not opened by shallot_udp", fd);
  }
  return e;
}

/* ------------------------------------------------------------------------ */
/* Reader lifetime                                                           */

static void reader_release_napi(reader_t *r) {
  if (r->napi_released) return;
  r->napi_released = true;
  if (r->buf_ref != NULL) napi_delete_reference(r->env, r->buf_ref);
  if (r->cb_ref != NULL) napi_delete_reference(r->env, r->cb_ref);
  if (r->actx != NULL) napi_async_destroy(r->env, r->actx);
  r->buf_ref = NULL;
  r->cb_ref = NULL;
  r->actx = NULL;
}

static void on_reader_closed(uv_handle_t *h) {
  reader_t *r = (reader_t *)h;
  r->closed = true;
  if (r->in_callback) return; /* on_poll frees it once the callback returns */
  reader_release_napi(r);
  free(r);
}

/* Detach the reader from its entry and close its poll handle. The N-API
 * references are dropped now unless the JS callback is running (then right
 * after it returns); the memory is freed by the close callback. */
static void reader_stop(reader_t *r, bool release_napi) {
  if (r->closing) return;
  r->closing = true;
  if (r->entry != NULL) {
    r->entry->reader = NULL;
    r->entry = NULL;
  }
  if (r->polling) uv_poll_stop(&r->poll);
  r->polling = false;
  if (!release_napi) r->napi_released = true; /* the environment is going away */
  if (!r->in_callback) reader_release_napi(r);
  uv_close((uv_handle_t *)&r->poll, on_reader_closed);
}

/* Stop polling after an unrecoverable error; the handle stays until
 * stopReading()/close(), and stats().reading turns false. */
static void reader_fail(reader_t *r, int err) {
  if (r->entry != NULL) {
    r->entry->errors++;
    r->entry->last_errno = err;
  }
  if (r->polling) uv_poll_stop(&r->poll);
  r->polling = false;
}

/* The reused buffer; if JS detached it (transferred its ArrayBuffer) a new
 * one is made rather than writing into freed memory. */
static bool reader_buffer(reader_t *r, napi_value *buf, uint8_t **data) {
  napi_env env = r->env;
  void *raw = NULL;
  size_t blen = 0;
  if (napi_get_reference_value(env, r->buf_ref, buf) == napi_ok && *buf != NULL &&
      napi_get_buffer_info(env, *buf, &raw, &blen) == napi_ok && raw != NULL &&
      blen >= r->buf_size) {
    *data = (uint8_t *)raw;
    return true;
  }
  napi_ref fresh = NULL;
  raw = NULL;
  if (napi_create_buffer(env, r->buf_size, &raw, buf) != napi_ok || raw == NULL ||
      napi_create_reference(env, *buf, 1, &fresh) != napi_ok) {
    bool pending = false;
    if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
      napi_value exc;
      napi_get_and_clear_last_exception(env, &exc);
    }
    return false;
  }
  napi_delete_reference(env, r->buf_ref);
  r->buf_ref = fresh;
  *data = (uint8_t *)raw;
  return true;
}

static inline void put16(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}

static inline void put32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

/* One recvmmsg() into the buffer, compacted into records. Returns the number
 * of messages the kernel returned (0 if none: EAGAIN), or -1 after an error
 * that ends this wake-up. *len and *count describe the records. */
static int read_round(reader_t *r, entry_t *e, uint8_t *data, size_t *len, uint32_t *count) {
  const size_t stride = r->stride;
  for (uint32_t i = 0; i < r->max_batch; i++) {
    r->iovs[i].iov_base = data + (size_t)i * stride + UDP_HDR_MAX;
    r->iovs[i].iov_len = r->slot;
    struct msghdr *h = &r->msgs[i].msg_hdr;
    memset(h, 0, sizeof *h);
    h->msg_name = &r->addrs[i];
    h->msg_namelen = sizeof r->addrs[i];
    h->msg_iov = &r->iovs[i];
    h->msg_iovlen = 1;
    if (r->ctls != NULL) {
      h->msg_control = r->ctls[i].buf;
      h->msg_controllen = sizeof r->ctls[i].buf;
    }
    r->msgs[i].msg_len = 0;
  }
  int n;
  do {
    n = recvmmsg(r->fd, r->msgs, r->max_batch, MSG_DONTWAIT, NULL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    int err = errno;
    if (err == EAGAIN || err == EWOULDBLOCK) return 0;
    if (err == EBADF || err == ENOTSOCK || err == EINVAL || err == EFAULT) {
      /* Cannot clear: stop polling rather than spin on a level-triggered
       * wake-up. */
      reader_fail(r, err);
    } else {
      /* A pending socket error (e.g. ICMP with IP_RECVERR) is consumed by
       * the call that reports it: count it and poll again. */
      e->errors++;
      e->last_errno = err;
    }
    return -1;
  }
  if ((uint32_t)n > r->max_batch) n = (int)r->max_batch; /* never trust blindly */

  size_t off = 0;
  uint32_t got = 0;
  for (int i = 0; i < n; i++) {
    const struct mmsghdr *m = &r->msgs[i];
    const size_t dlen = m->msg_len;
    /* A coalesced run (gro): its segment size, from the control message. */
    uint32_t seg = 0;
    if (r->ctls != NULL) {
      const struct msghdr *h = &m->msg_hdr;
      for (const struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL;
           c = CMSG_NXTHDR((struct msghdr *)h, (struct cmsghdr *)c)) {
        if (c->cmsg_level == IPPROTO_UDP && c->cmsg_type == UDP_GRO &&
            c->cmsg_len >= CMSG_LEN(sizeof(int))) {
          int v;
          memcpy(&v, CMSG_DATA(c), sizeof v);
          if (v > 0 && (size_t)v < dlen) seg = (uint32_t)v;
        }
      }
    }
    const size_t unit = seg > 0 ? seg : dlen; /* the longest datagram in it */
    if ((m->msg_hdr.msg_flags & MSG_TRUNC) || dlen > r->slot || unit > r->max_datagram) {
      e->oversize += seg > 0 ? (dlen + seg - 1) / seg : 1;
      continue;
    }
    const struct sockaddr_in6 *sa = &r->addrs[i];
    const uint8_t *src = data + (size_t)i * stride + UDP_HDR_MAX;
    /* off <= i * stride: every earlier record took at most one stride. */
    uint8_t *dst = data + off;
    size_t hdr;
    if (sa->sin6_family == AF_INET && m->msg_hdr.msg_namelen >= sizeof(struct sockaddr_in)) {
      const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
      hdr = UDP_HDR4;
      dst[0] = 4;
      memcpy(dst + 1, &s4->sin_addr, 4);
      put16(dst + 5, ntohs(s4->sin_port));
      put16(dst + 7, (uint32_t)dlen);
      put16(dst + 9, seg);
    } else if (sa->sin6_family == AF_INET6 &&
               m->msg_hdr.msg_namelen >= sizeof(struct sockaddr_in6)) {
      hdr = UDP_HDR6;
      dst[0] = 6;
      memcpy(dst + 1, &sa->sin6_addr, 16);
      put32(dst + 17, sa->sin6_scope_id);
      put16(dst + 21, ntohs(sa->sin6_port));
      put16(dst + 23, (uint32_t)dlen);
      put16(dst + 25, seg);
    } else {
      e->errors++; /* no usable source address */
      continue;
    }
    /* The header ends at or before `src` (off + hdr <= i * stride + 25), so
     * writing it never touches this datagram; memmove handles the overlap. */
    if (dst + hdr != src && dlen > 0) memmove(dst + hdr, src, dlen);
    off += hdr + dlen;
    got++;
    e->received += seg > 0 ? (dlen + seg - 1) / seg : 1;
  }
  *len = off;
  *count = got;
  return n;
}

/* Hand one batch to JS. Returns false if reading must stop for this wake-up. */
static bool deliver(reader_t *r, napi_value buf, size_t len, uint32_t count) {
  napi_env env = r->env;
  napi_value cb, recv, argv[3], result;
  napi_status st = napi_get_reference_value(env, r->cb_ref, &cb);
  if (st == napi_ok && cb == NULL) st = napi_generic_failure;
  if (st == napi_ok) st = napi_get_global(env, &recv);
  if (st == napi_ok) st = napi_create_uint32(env, (uint32_t)len, &argv[1]);
  if (st == napi_ok) st = napi_create_uint32(env, count, &argv[2]);
  if (st == napi_ok) {
    argv[0] = buf;
    if (r->entry != NULL) r->entry->callbacks++;
    r->in_callback = true;
    st = napi_make_callback(env, r->actx, recv, cb, 3, argv, &result);
    r->in_callback = false;
  }
  if (st == napi_ok) return true;
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
    /* The callback threw: report it like any uncaught exception (process
     * 'uncaughtException', or exit). This batch was consumed; polling goes
     * on, from the next wake-up. */
    napi_value exc;
    if (napi_get_and_clear_last_exception(env, &exc) == napi_ok) {
      napi_fatal_exception(env, exc);
    }
  } else if (!r->closing) {
    /* No exception but no call either: JS can no longer run here (the
     * environment is stopping). Stop instead of spinning. */
    reader_fail(r, ECANCELED);
  }
  return false;
}

static void on_poll(uv_poll_t *h, int status, int events) {
  reader_t *r = (reader_t *)h;
  if (r->closing || r->entry == NULL || r->napi_released) return;
  if (status < 0) {
    /* libuv has already stopped the handle on a poll error. */
    r->polling = false;
    reader_fail(r, -status);
    return;
  }
  if (!(events & UV_READABLE)) return;

  napi_env env = r->env;
  for (int round = 0; round < UDP_ROUNDS; round++) {
    entry_t *e = r->entry;
    if (r->closing || e == NULL || !r->polling) break;
    napi_handle_scope scope;
    if (napi_open_handle_scope(env, &scope) != napi_ok) {
      reader_fail(r, EIO);
      break;
    }
    napi_value buf = NULL;
    uint8_t *data = NULL;
    if (!reader_buffer(r, &buf, &data)) {
      reader_fail(r, ENOMEM);
      napi_close_handle_scope(env, scope);
      break;
    }
    size_t len = 0;
    uint32_t count = 0;
    int n = read_round(r, e, data, &len, &count);
    bool more = n == (int)r->max_batch;
    if (count > 0 && !deliver(r, buf, len, count)) more = false;
    napi_close_handle_scope(env, scope);
    if (!more) break;
  }

  if (r->closing) {
    /* stopReading()/close() ran inside the callback. */
    reader_release_napi(r);
    if (r->closed) free(r);
  }
}

/* ------------------------------------------------------------------------ */
/* open(family, host, port, bufferBytes) -> { fd, port, address, ... }       */

static int sockbuf_size(int fd, int opt) {
  int v = 0;
  socklen_t l = sizeof v;
  if (getsockopt(fd, SOL_SOCKET, opt, &v, &l) < 0) return -1;
  return v;
}

static void set_sockbuf(int fd, int force_opt, int opt, int bytes) {
  /* As root (CAP_NET_ADMIN) the FORCE variant passes net.core.*mem_max;
   * otherwise the kernel caps the plain one silently. Failures are fine:
   * run with what the kernel gives. */
  if (setsockopt(fd, SOL_SOCKET, force_opt, &bytes, sizeof bytes) == 0) return;
  (void)setsockopt(fd, SOL_SOCKET, opt, &bytes, sizeof bytes);
}

static napi_value Open(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  size_t argc = 0;
  instance_t *inst;
  if (!get_args(env, info, 6, argv, &argc, &inst)) return NULL;
  int af;
  uint32_t port, buffer_bytes;
  char host[ADDR_TEXT_MAX + 8];
  if (!get_family(env, argv[0], &af)) return NULL;
  if (!get_host(env, argv[1], host, sizeof host)) return NULL;
  if (!get_u32(env, argv[2], "port", 0, 65535, &port)) return NULL;
  if (!get_u32(env, argv[3], "bufferBytes", 0, UDP_MAX_SOCKBUF, &buffer_bytes)) return NULL;
  bool want_gso = true, want_gro = false;
  if (argc > 4 && !get_flag(env, argv[4], "gso", &want_gso)) return NULL;
  if (argc > 5 && !get_flag(env, argv[5], "gro", &want_gro)) return NULL;
  struct sockaddr_in6 sa;
  socklen_t salen = 0;
  if (!parse_address(host, af, (int)port, &sa, &salen)) {
    throw_fmt(env, 1, "ERR_INVALID_ARG_VALUE", "host '%s' is not an IPv%d address", host,
              af == AF_INET ? 4 : 6);
    return NULL;
  }

  int fd = socket(af, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    throw_errno(env, errno, "socket", NULL, "socket(%s) failed", af == AF_INET ? "AF_INET" : "AF_INET6");
    return NULL;
  }
  if (af == AF_INET6) {
    int on = 1;
    if (setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on) < 0) {
      int err = errno;
      close(fd);
      throw_errno(env, err, "setsockopt", NULL, "IPV6_V6ONLY failed");
      return NULL;
    }
  }
  if (buffer_bytes > 0) {
    set_sockbuf(fd, SO_RCVBUFFORCE, SO_RCVBUF, (int)buffer_bytes);
    set_sockbuf(fd, SO_SNDBUFFORCE, SO_SNDBUF, (int)buffer_bytes);
  }
  if (bind(fd, (struct sockaddr *)&sa, salen) < 0) {
    int err = errno;
    close(fd);
    throw_errno(env, err, "bind", NULL, "bind %s port %u", host, port);
    return NULL;
  }
  struct sockaddr_in6 local;
  socklen_t llen = sizeof local;
  memset(&local, 0, sizeof local);
  if (getsockname(fd, (struct sockaddr *)&local, &llen) < 0) {
    int err = errno;
    close(fd);
    throw_errno(env, err, "getsockname", NULL, "getsockname failed");
    return NULL;
  }
  char text[ADDR_TEXT_MAX];
  int bound_port;
  bool ok;
  if (af == AF_INET) {
    const struct sockaddr_in *l4 = (const struct sockaddr_in *)&local;
    bound_port = ntohs(l4->sin_port);
    ok = format_address(AF_INET, &l4->sin_addr, 0, text, sizeof text);
  } else {
    bound_port = ntohs(local.sin6_port);
    ok = format_address(AF_INET6, &local.sin6_addr, local.sin6_scope_id, text, sizeof text);
  }
  if (!ok) snprintf(text, sizeof text, "%.*s", (int)(sizeof text - 1), host);

  /* An entry with this fd number is stale: that fd was closed without
   * close() and the kernel handed the number out again. */
  entry_t *e = find_entry(inst, fd);
  if (e != NULL) {
    if (e->reader != NULL) reader_stop(e->reader, true);
    e->used = false;
  }
  e = new_entry(inst, fd, af);
  if (e == NULL) {
    close(fd);
    THROW_ERROR(env, "ERR_UDP_TOO_MANY",
                "too many UDP sockets in use by this environment (at most %d)", UDP_MAX_ENTRIES);
    return NULL;
  }
  if (want_gso) {
    /* Probe: a kernel with UDP GSO (4.18+) accepts a socket-wide segment
     * size of 0 (= none); sends then ask for it per message. */
    int zero = 0;
    e->gso = setsockopt(fd, IPPROTO_UDP, UDP_SEGMENT, &zero, sizeof zero) == 0;
    if (!e->gso) e->gso_errno = errno;
  }
  if (want_gro) {
    /* Kernels without UDP GRO (before 5.0) refuse it: runs then arrive as
     * separate datagrams, as without the option. */
    int on = 1;
    e->gro = setsockopt(fd, IPPROTO_UDP, UDP_GRO, &on, sizeof on) == 0;
  }

  napi_value result;
  napi_status st = napi_create_object(env, &result);
  if (st != napi_ok) {
    throw_napi(env, st, "napi_create_object");
  } else if (set_number(env, result, "fd", fd) && set_number(env, result, "port", bound_port) &&
             set_string(env, result, "address", text) &&
             set_number(env, result, "recvBufferBytes", sockbuf_size(fd, SO_RCVBUF)) &&
             set_number(env, result, "sendBufferBytes", sockbuf_size(fd, SO_SNDBUF))) {
    napi_value gso, gro;
    st = napi_get_boolean(env, e->gso, &gso);
    if (st == napi_ok) st = napi_set_named_property(env, result, "gso", gso);
    if (st == napi_ok) st = napi_get_boolean(env, e->gro, &gro);
    if (st == napi_ok) st = napi_set_named_property(env, result, "gro", gro);
    if (st == napi_ok) return result;
    throw_napi(env, st, "gso");
  }
  e->used = false;
  close(fd);
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* startReading(fd, maxBatch, maxDatagram, onDatagrams)                      */

static napi_value StartReading(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  instance_t *inst;
  if (!get_args(env, info, 4, argv, NULL, &inst)) return NULL;
  int fd;
  uint32_t max_batch, max_datagram;
  if (!get_fd(env, argv[0], &fd)) return NULL;
  if (!get_u32(env, argv[1], "maxBatch", 1, UDP_MAX_BATCH, &max_batch)) return NULL;
  if (!get_u32(env, argv[2], "maxDatagram", 1, UDP_MAX_DATAGRAM, &max_datagram)) return NULL;
  napi_valuetype t;
  NAPI_CALL(env, napi_typeof(env, argv[3], &t), NULL);
  if (t != napi_function) {
    THROW_TYPE(env, "onDatagrams must be a function");
    return NULL;
  }
  if ((size_t)max_batch * (UDP_HDR_MAX + max_datagram) > UDP_MAX_BUFFER) {
    THROW_RANGE(env, "maxBatch * (maxDatagram + %d) = %zu bytes exceeds the limit of %u",
                UDP_HDR_MAX, (size_t)max_batch * (UDP_HDR_MAX + max_datagram), UDP_MAX_BUFFER);
    return NULL;
  }
  entry_t *e = known_entry(env, inst, fd);
  if (e == NULL) return NULL;
  /* With gro a slot must take a whole coalesced run. */
  const uint32_t slot = e->gro ? UDP_MAX_DATAGRAM : max_datagram;
  const size_t stride = (size_t)UDP_HDR_MAX + slot;
  const size_t buf_size = (size_t)max_batch * stride;
  if (buf_size > UDP_MAX_BUFFER) {
    THROW_RANGE(env, "maxBatch * (%u + %d) = %zu bytes exceeds the limit of %u", slot,
                UDP_HDR_MAX, buf_size, UDP_MAX_BUFFER);
    return NULL;
  }
  if (e->reader != NULL) {
    THROW_ERROR(env, "ERR_UDP_ALREADY_READING", "fd %d is already being read", fd);
    return NULL;
  }

  const size_t slots =
      (size_t)max_batch * (sizeof(struct mmsghdr) + sizeof(struct iovec) +
                           sizeof(struct sockaddr_in6) + (e->gro ? sizeof(udp_ctl_t) : 0));
  reader_t *r = calloc(1, sizeof *r + slots);
  if (r == NULL) {
    THROW_ERROR(env, "ENOMEM", "out of memory allocating the reader of fd %d", fd);
    return NULL;
  }
  /* control buffers (8-byte aligned after the struct; their size is a
   * multiple of 8) first, then mmsghdr, iovec and sockaddr_in6 (4-byte
   * aligned): every part keeps its alignment. */
  uint8_t *tail = (uint8_t *)(r + 1);
  if (e->gro) {
    r->ctls = (udp_ctl_t *)tail;
    tail += (size_t)max_batch * sizeof(udp_ctl_t);
  }
  r->msgs = (struct mmsghdr *)tail;
  r->iovs = (struct iovec *)(tail + (size_t)max_batch * sizeof(struct mmsghdr));
  r->addrs = (struct sockaddr_in6 *)(tail + (size_t)max_batch * (sizeof(struct mmsghdr) +
                                                                  sizeof(struct iovec)));
  r->env = env;
  r->fd = fd;
  r->max_batch = max_batch;
  r->max_datagram = max_datagram;
  r->slot = slot;
  r->stride = stride;
  r->buf_size = buf_size;

  napi_value buf, resource, resource_name;
  void *raw = NULL;
  napi_status st = napi_create_buffer(env, buf_size, &raw, &buf);
  const char *what = "napi_create_buffer";
  if (st == napi_ok) {
    what = "napi_create_reference";
    st = napi_create_reference(env, buf, 1, &r->buf_ref);
  }
  if (st == napi_ok) st = napi_create_reference(env, argv[3], 1, &r->cb_ref);
  if (st == napi_ok) {
    what = "napi_async_init";
    st = napi_create_object(env, &resource);
  }
  if (st == napi_ok) {
    st = napi_create_string_utf8(env, "ShallotUdpReader", NAPI_AUTO_LENGTH, &resource_name);
  }
  if (st == napi_ok) st = napi_async_init(env, resource, resource_name, &r->actx);
  if (st != napi_ok) {
    throw_napi(env, st, what);
    reader_release_napi(r);
    free(r);
    return NULL;
  }

  int rc = uv_poll_init(inst->loop, &r->poll, fd);
  if (rc != 0) {
    reader_release_napi(r);
    free(r);
    throw_errno(env, -rc, "uv_poll_init", NULL, "cannot poll fd %d", fd);
    return NULL;
  }
  rc = uv_poll_start(&r->poll, UV_READABLE, on_poll);
  if (rc != 0) {
    reader_release_napi(r);
    uv_close((uv_handle_t *)&r->poll, on_reader_closed);
    throw_errno(env, -rc, "uv_poll_start", NULL, "cannot poll fd %d", fd);
    return NULL;
  }
  r->polling = true;
  r->entry = e;
  e->reader = r;
  e->last_errno = 0;
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* stopReading(fd)                                                           */

static napi_value StopReading(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  instance_t *inst;
  if (!get_args(env, info, 1, argv, NULL, &inst)) return NULL;
  int fd;
  if (!get_fd(env, argv[0], &fd)) return NULL;
  entry_t *e = find_entry(inst, fd);
  if (e != NULL && e->reader != NULL) reader_stop(e->reader, true);
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* Sending                                                                   */

typedef struct {
  uint32_t sent;
  uint32_t dropped;
  uint32_t failed;
  bool stop; /* the socket buffer is full: the rest is dropped */
  int fatal; /* errno that makes the fd unusable (EBADF, ENOTSOCK), else 0 */
} send_result_t;

/* One destination (a group of datagrams) while planning a send. */
typedef struct {
  struct sockaddr_in6 sa;
  socklen_t salen;
  int af;
} dest_t;

static void plan_reset(plan_t *pl) {
  pl->nmsgs = 0;
  pl->niovs = 0;
}

/* Add one datagram for destination `d` (group number `group`). With `gso`,
 * it joins the previous message when that one goes to the same group, has
 * segments of this very size (or this is a smaller last segment) and room
 * left; else it starts a message. Returns false when the plan is full (the
 * caller flushes and adds again). */
static bool plan_add(plan_t *pl, const dest_t *d, uint32_t group, uint8_t *data, size_t len,
                     bool gso) {
  if (pl->niovs >= UDP_PLAN_IOVS) return false;
  if (gso && pl->nmsgs > 0 && len > 0) {
    uint32_t m = pl->nmsgs - 1;
    if (pl->group[m] == group && !pl->closed[m] && pl->seg[m] > 0 &&
        pl->ndgram[m] < UDP_GSO_MAX_SEGMENTS && pl->total[m] + len <= UDP_GSO_MAX_BYTES &&
        len <= pl->seg[m]) {
      struct iovec *iov = &pl->iovs[pl->niovs++];
      iov->iov_base = data;
      iov->iov_len = len;
      pl->msgs[m].msg_hdr.msg_iovlen++;
      pl->ndgram[m]++;
      pl->total[m] += len;
      if (len < pl->seg[m]) pl->closed[m] = true; /* only the last may be shorter */
      return true;
    }
  }
  if (pl->nmsgs >= UDP_SEND_CHUNK) return false;
  uint32_t m = pl->nmsgs++;
  struct iovec *iov = &pl->iovs[pl->niovs++];
  iov->iov_base = data;
  iov->iov_len = len;
  pl->addrs[m] = d->sa;
  memset(&pl->msgs[m], 0, sizeof pl->msgs[m]);
  pl->msgs[m].msg_hdr.msg_name = &pl->addrs[m];
  pl->msgs[m].msg_hdr.msg_namelen = d->salen;
  pl->msgs[m].msg_hdr.msg_iov = iov;
  pl->msgs[m].msg_hdr.msg_iovlen = 1;
  pl->group[m] = group;
  pl->ndgram[m] = 1;
  pl->seg[m] = gso ? (uint32_t)len : 0;
  pl->total[m] = len;
  pl->closed[m] = len == 0;
  return true;
}

static bool gso_refused(int err) {
  /* EIO: the route's device cannot checksum (or IPsec); EINVAL: segment
   * plus headers exceed the route MTU; the others: no UDP GSO at all. */
  return err == EIO || err == EINVAL || err == ENOPROTOOPT || err == EOPNOTSUPP ||
         err == EMSGSIZE;
}

/* Send the datagrams of one GSO message one by one (after the kernel
 * refused it as a whole). */
static void send_unsegmented(entry_t *e, int fd, struct mmsghdr *msg, send_result_t *res) {
  struct msghdr h = msg->msg_hdr;
  h.msg_control = NULL;
  h.msg_controllen = 0;
  const size_t n = msg->msg_hdr.msg_iovlen;
  for (size_t k = 0; k < n; k++) {
    if (res->stop || res->fatal != 0) {
      res->dropped++;
      continue;
    }
    h.msg_iov = &msg->msg_hdr.msg_iov[k];
    h.msg_iovlen = 1;
    ssize_t r;
    do {
      r = sendmsg(fd, &h, MSG_DONTWAIT);
    } while (r < 0 && errno == EINTR);
    if (r >= 0) {
      res->sent++;
      continue;
    }
    int err = errno;
    if (err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS) {
      res->stop = true;
      res->dropped++;
    } else if (err == EBADF || err == ENOTSOCK) {
      res->fatal = err;
      res->failed++;
    } else {
      e->last_send_errno = err;
      res->failed++;
    }
  }
}

/* sendmmsg() the planned messages, retrying partial sends. EAGAIN or
 * ENOBUFS stops everything (the socket buffer is full: a congested link
 * drops); another error loses that message's datagrams and the rest go on,
 * except that a GSO message the kernel refuses turns GSO off for the socket
 * and is sent again datagram by datagram. */
static void plan_flush(entry_t *e, int fd, plan_t *pl, send_result_t *res) {
  const uint32_t n = pl->nmsgs;
  for (uint32_t m = 0; m < n; m++) {
    struct msghdr *h = &pl->msgs[m].msg_hdr;
    if (pl->ndgram[m] > 1) {
      memset(&pl->ctl[m], 0, sizeof pl->ctl[m]);
      h->msg_control = pl->ctl[m].buf;
      h->msg_controllen = CMSG_SPACE(sizeof(uint16_t));
      struct cmsghdr *c = CMSG_FIRSTHDR(h);
      c->cmsg_level = IPPROTO_UDP;
      c->cmsg_type = UDP_SEGMENT;
      c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
      uint16_t seg = (uint16_t)pl->seg[m];
      memcpy(CMSG_DATA(c), &seg, sizeof seg);
    } else {
      h->msg_control = NULL;
      h->msg_controllen = 0;
    }
  }
  uint32_t i = 0;
  while (i < n && !res->stop && res->fatal == 0) {
    int r = sendmmsg(fd, pl->msgs + i, n - i, MSG_DONTWAIT);
    if (r > 0) {
      uint32_t done = (uint32_t)r > n - i ? n - i : (uint32_t)r;
      for (uint32_t m = i; m < i + done; m++) {
        res->sent += pl->ndgram[m];
        if (pl->ndgram[m] > 1) e->gso_sends++;
      }
      i += done;
      continue;
    }
    int err = r == 0 ? EAGAIN : errno;
    if (err == EINTR) continue;
    if (err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS) {
      res->stop = true;
      break;
    }
    if (err == EBADF || err == ENOTSOCK) {
      res->fatal = err;
      break;
    }
    if (pl->ndgram[i] > 1 && gso_refused(err)) {
      e->gso = false;
      e->gso_errno = err;
      e->gso_fallbacks++;
      send_unsegmented(e, fd, &pl->msgs[i], res);
    } else {
      /* EMSGSIZE, ENETUNREACH, EHOSTUNREACH, EPERM (a firewall)... */
      e->last_send_errno = err;
      res->failed += pl->ndgram[i];
    }
    i++;
  }
  /* What was not sent after a stop: dropped (full buffer) or failed. */
  for (; i < n; i++) {
    if (res->fatal != 0) {
      res->failed += pl->ndgram[i];
    } else {
      res->dropped += pl->ndgram[i];
    }
  }
  plan_reset(pl);
}

/* Add a datagram, flushing a full plan first. Returns false once sending
 * stopped (buffer full or fatal error): the caller accounts the rest. */
static bool plan_push(entry_t *e, int fd, plan_t *pl, const dest_t *d, uint32_t group,
                      uint8_t *data, size_t len, send_result_t *res) {
  if (res->stop || res->fatal != 0) return false;
  const bool gso = e->gso && d->af == e->family;
  if (plan_add(pl, d, group, data, len, gso)) return true;
  plan_flush(e, fd, pl, res);
  if (res->stop || res->fatal != 0) return false;
  return plan_add(pl, d, group, data, len, gso);
}

static void account_send(entry_t *e, const send_result_t *res) {
  e->sent += res->sent;
  e->send_dropped += res->dropped;
  e->send_errors += res->failed;
  if (res->fatal != 0) e->last_send_errno = res->fatal;
}

/* Check a packed batch ([u16 len][bytes]...) and count its datagrams.
 * Throws RangeError (returns false) if a length runs past `len`. */
static bool validate_packed(napi_env env, const uint8_t *p, size_t len, size_t base,
                            uint32_t *count) {
  size_t bad = 0, dl = 0;
  switch (packed_scan(p, len, count, &bad, &dl)) {
  case PACKED_OK:
    return true;
  case PACKED_TRUNCATED_PREFIX:
    THROW_RANGE(env, "packed batch: truncated length prefix at offset %zu (len %zu)", base + bad,
                len);
    return false;
  default:
    THROW_RANGE(env, "packed batch: datagram at offset %zu claims %zu bytes, only %zu remain",
                base + bad, dl, len - bad - 2);
    return false;
  }
}

/* Datagrams in a packed batch already validated. */
static uint32_t packed_count(const uint8_t *p, size_t len) {
  uint32_t n = 0;
  size_t off = 0;
  while (len - off >= 2) {
    size_t dl = ((size_t)p[off] << 8) | p[off + 1];
    if (dl > len - off - 2) break;
    off += 2 + dl;
    n++;
  }
  return n;
}

/* Plan and send every datagram of one packed batch to `d`. */
static void send_packed(entry_t *e, int fd, plan_t *pl, const dest_t *d, uint32_t group,
                        uint8_t *p, size_t len, uint32_t count, send_result_t *res) {
  if (d->af != e->family) {
    /* An IPv4 socket cannot reach an IPv6 address, nor the reverse. */
    res->failed += count;
    e->last_send_errno = EAFNOSUPPORT;
    return;
  }
  size_t off = 0;
  uint32_t done = 0;
  while (off < len) {
    size_t dl = ((size_t)p[off] << 8) | p[off + 1];
    if (!plan_push(e, fd, pl, d, group, p + off + 2, dl, res)) break;
    done++;
    off += 2 + dl;
  }
  if (done < count) {
    if (res->fatal != 0) {
      res->failed += count - done;
    } else {
      res->dropped += count - done;
    }
  }
}

static napi_value sent_result(napi_env env, entry_t *e, const send_result_t *res,
                              const char *syscall, int fd) {
  account_send(e, res);
  if (res->fatal != 0) {
    throw_errno(env, res->fatal, syscall, NULL, "send on fd %d failed", fd);
    return NULL;
  }
  napi_value result;
  NAPI_CALL(env, napi_create_uint32(env, res->sent, &result), NULL);
  return result;
}

static bool get_dest(napi_env env, napi_value *argv, size_t argc, size_t first, dest_t *d) {
  return get_destination(env, argv, argc, first, &d->sa, &d->salen, &d->af);
}

/* sendBatch(fd, packed, len, family, addr, port[, scopeId]) -> datagrams sent */
static napi_value SendBatch(napi_env env, napi_callback_info info) {
  napi_value argv[7];
  size_t argc = 0;
  instance_t *inst;
  if (!get_args(env, info, 7, argv, &argc, &inst)) return NULL;
  int fd;
  if (!get_fd(env, argv[0], &fd)) return NULL;
  uint8_t *p = NULL;
  size_t blen = 0;
  if (!get_buffer(env, argv[1], "packed", &p, &blen)) return NULL;
  double dlen;
  if (!get_integer(env, argv[2], "len", 0, (double)blen, &dlen)) return NULL;
  const size_t len = (size_t)dlen;
  dest_t d;
  if (!get_dest(env, argv, argc, 3, &d)) return NULL;
  entry_t *e = known_entry(env, inst, fd);
  if (e == NULL) return NULL;
  /* Validate the whole batch first so that a malformed one sends nothing. */
  uint32_t count;
  if (!validate_packed(env, p, len, 0, &count)) return NULL;

  send_result_t res = {0, 0, 0, false, 0};
  plan_reset(inst->plan);
  send_packed(e, fd, inst->plan, &d, 0, p, len, count, &res);
  if (inst->plan->nmsgs > 0) plan_flush(e, fd, inst->plan, &res);
  return sent_result(env, e, &res, "sendmmsg", fd);
}

/* Group header of sendGroups (see wire.h) as a destination. */
static bool parse_group(const uint8_t *p, size_t avail, dest_t *d, size_t *hdr, size_t *plen) {
  struct group_header g;
  if (!group_header_parse(p, avail, &g)) return false;
  memset(&d->sa, 0, sizeof d->sa);
  if (g.family == 4) {
    struct sockaddr_in *s4 = (struct sockaddr_in *)&d->sa;
    s4->sin_family = AF_INET;
    memcpy(&s4->sin_addr, g.addr, 4);
    s4->sin_port = htons(g.port);
    d->salen = sizeof(struct sockaddr_in);
    d->af = AF_INET;
  } else {
    d->sa.sin6_family = AF_INET6;
    memcpy(&d->sa.sin6_addr, g.addr, 16);
    d->sa.sin6_scope_id = g.scope;
    d->sa.sin6_port = htons(g.port);
    d->salen = sizeof(struct sockaddr_in6);
    d->af = AF_INET6;
  }
  *hdr = g.header_len;
  *plen = g.payload_len;
  return true;
}

/* sendGroups(fd, buf, len) -> datagrams sent. `buf` holds, back to back,
 * groups of [u8 family][addr 4|16][u32 scope: v6 only][u16 port][u32 n]
 * followed by n bytes of a packed batch for that destination. */
static napi_value SendGroups(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  instance_t *inst;
  if (!get_args(env, info, 3, argv, NULL, &inst)) return NULL;
  int fd;
  if (!get_fd(env, argv[0], &fd)) return NULL;
  uint8_t *p = NULL;
  size_t blen = 0;
  if (!get_buffer(env, argv[1], "buf", &p, &blen)) return NULL;
  double dlen;
  if (!get_integer(env, argv[2], "len", 0, (double)blen, &dlen)) return NULL;
  const size_t len = (size_t)dlen;
  entry_t *e = known_entry(env, inst, fd);
  if (e == NULL) return NULL;

  /* Validate everything first so that a malformed buffer sends nothing. */
  size_t off = 0;
  while (off < len) {
    dest_t d;
    size_t hdr, plen;
    uint32_t count;
    if (!parse_group(p + off, len - off, &d, &hdr, &plen)) {
      THROW_RANGE(env, "groups: bad group header at offset %zu (len %zu)", off, len);
      return NULL;
    }
    if (!validate_packed(env, p + off + hdr, plen, off + hdr, &count)) return NULL;
    off += hdr + plen;
  }

  send_result_t res = {0, 0, 0, false, 0};
  plan_reset(inst->plan);
  off = 0;
  uint32_t group = 0;
  while (off < len) {
    dest_t d;
    size_t hdr = 0, plen = 0;
    if (!parse_group(p + off, len - off, &d, &hdr, &plen)) break; /* validated above */
    uint32_t count = packed_count(p + off + hdr, plen);
    send_packed(e, fd, inst->plan, &d, group++, p + off + hdr, plen, count, &res);
    off += hdr + plen;
  }
  if (inst->plan->nmsgs > 0) plan_flush(e, fd, inst->plan, &res);
  return sent_result(env, e, &res, "sendmmsg", fd);
}

/* sendTo(fd, data, family, addr, port[, scopeId]) -> 1 if sent, else 0 */
static napi_value SendTo(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  size_t argc = 0;
  instance_t *inst;
  if (!get_args(env, info, 6, argv, &argc, &inst)) return NULL;
  int fd;
  if (!get_fd(env, argv[0], &fd)) return NULL;
  uint8_t *p = NULL;
  size_t blen = 0;
  if (!get_buffer(env, argv[1], "data", &p, &blen)) return NULL;
  if (blen > UDP_MAX_DATAGRAM) {
    THROW_RANGE(env, "data is %zu bytes; a UDP datagram holds at most %d", blen,
                UDP_MAX_DATAGRAM);
    return NULL;
  }
  dest_t d;
  if (!get_dest(env, argv, argc, 2, &d)) return NULL;
  entry_t *e = known_entry(env, inst, fd);
  if (e == NULL) return NULL;

  send_result_t res = {0, 0, 0, false, 0};
  if (d.af != e->family) {
    res.failed = 1;
    e->last_send_errno = EAFNOSUPPORT;
  } else {
    plan_reset(inst->plan);
    (void)plan_add(inst->plan, &d, 0, p, blen, false);
    plan_flush(e, fd, inst->plan, &res);
  }
  return sent_result(env, e, &res, "sendmsg", fd);
}

/* ------------------------------------------------------------------------ */
/* stats(fd)                                                                 */

static napi_value Stats(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  instance_t *inst;
  if (!get_args(env, info, 1, argv, NULL, &inst)) return NULL;
  int fd;
  if (!get_fd(env, argv[0], &fd)) return NULL;
  entry_t *e = known_entry(env, inst, fd);
  if (e == NULL) return NULL;
  napi_value obj, reading;
  NAPI_CALL(env, napi_create_object(env, &obj), NULL);
  if (!set_number(env, obj, "received", (double)e->received) ||
      !set_number(env, obj, "oversize", (double)e->oversize) ||
      !set_number(env, obj, "errors", (double)e->errors) ||
      !set_number(env, obj, "callbacks", (double)e->callbacks) ||
      !set_number(env, obj, "sent", (double)e->sent) ||
      !set_number(env, obj, "sendDropped", (double)e->send_dropped) ||
      !set_number(env, obj, "sendErrors", (double)e->send_errors) ||
      !set_string(env, obj, "lastError", e->last_errno != 0 ? strerror(e->last_errno) : "") ||
      !set_string(env, obj, "lastSendError",
                  e->last_send_errno != 0 ? strerror(e->last_send_errno) : "") ||
      !set_number(env, obj, "gsoSends", (double)e->gso_sends) ||
      !set_number(env, obj, "gsoFallbacks", (double)e->gso_fallbacks) ||
      !set_string(env, obj, "gsoError", e->gso_errno != 0 ? strerror(e->gso_errno) : "")) {
    return NULL;
  }
  napi_value gso;
  NAPI_CALL(env, napi_get_boolean(env, e->gso, &gso), NULL);
  NAPI_CALL(env, napi_set_named_property(env, obj, "gso", gso), NULL);
  NAPI_CALL(env, napi_get_boolean(env, e->reader != NULL && e->reader->polling, &reading), NULL);
  NAPI_CALL(env, napi_set_named_property(env, obj, "reading", reading), NULL);
  return obj;
}

/* ------------------------------------------------------------------------ */
/* close(fd)                                                                 */

static napi_value Close(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  instance_t *inst;
  if (!get_args(env, info, 1, argv, NULL, &inst)) return NULL;
  int fd;
  if (!get_fd(env, argv[0], &fd)) return NULL;
  /* Refuse an fd number we do not know (e.g. a second close()): it could
   * belong to an unrelated file that reuses the number. */
  entry_t *e = known_entry(env, inst, fd);
  if (e == NULL) return NULL;
  if (e->reader != NULL) reader_stop(e->reader, true);
  e->used = false;
  if (close(fd) < 0 && errno != EINTR) {
    throw_errno(env, errno, "close", NULL, "close(%d) failed", fd);
    return NULL;
  }
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* parseAddress(host), formatAddress(family, addr, scopeId)                  */

static napi_value ParseAddress(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv, NULL, NULL)) return NULL;
  char host[ADDR_TEXT_MAX + 8];
  if (!get_host(env, argv[0], host, sizeof host)) return NULL;
  struct sockaddr_in6 sa;
  socklen_t salen = 0;
  napi_value result, addr;
  if (host[0] == '\0' || !parse_address(host, 0, 0, &sa, &salen)) {
    NAPI_CALL(env, napi_get_null(env, &result), NULL);
    return result;
  }
  const bool v4 = sa.sin6_family == AF_INET;
  void *raw = NULL;
  NAPI_CALL(env, napi_create_buffer_copy(env, v4 ? 4 : 16,
                                         v4 ? (const void *)&((struct sockaddr_in *)&sa)->sin_addr
                                            : (const void *)&sa.sin6_addr,
                                         &raw, &addr),
            NULL);
  NAPI_CALL(env, napi_create_object(env, &result), NULL);
  if (!set_number(env, result, "family", v4 ? 4 : 6) ||
      !set_number(env, result, "scopeId", v4 ? 0 : sa.sin6_scope_id)) {
    return NULL;
  }
  NAPI_CALL(env, napi_set_named_property(env, result, "addr", addr), NULL);
  return result;
}

static napi_value FormatAddress(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  size_t argc = 0;
  if (!get_args(env, info, 3, argv, &argc, NULL)) return NULL;
  int af;
  uint8_t *addr = NULL;
  size_t alen = 0;
  uint32_t scope;
  if (!get_family(env, argv[0], &af)) return NULL;
  if (!get_buffer(env, argv[1], "addr", &addr, &alen)) return NULL;
  if (!get_scope(env, argv[2], argc, 2, &scope)) return NULL;
  if (alen != (af == AF_INET ? 4u : 16u)) {
    THROW_RANGE(env, "addr must be %d bytes for family %d, got %zu", af == AF_INET ? 4 : 16,
                af == AF_INET ? 4 : 6, alen);
    return NULL;
  }
  uint8_t copy[16];
  memcpy(copy, addr, alen);
  char text[ADDR_TEXT_MAX];
  if (!format_address(af, copy, af == AF_INET ? 0 : scope, text, sizeof text)) {
    THROW_ERROR(env, "ERR_UDP_ADDRESS", "cannot format the address");
    return NULL;
  }
  napi_value result;
  NAPI_CALL(env, napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &result), NULL);
  return result;
}

/* ------------------------------------------------------------------------ */
/* Module                                                                    */

static void cleanup_instance(void *arg) {
  instance_t *inst = (instance_t *)arg;
  for (int i = 0; i < UDP_MAX_ENTRIES; i++) {
    entry_t *e = &inst->entries[i];
    if (!e->used) continue;
    if (e->reader != NULL) reader_stop(e->reader, true);
    e->used = false;
    close(e->fd); /* a worker's sockets must not outlive it */
  }
  free(inst->plan);
  free(inst);
}

static napi_value Init(napi_env env, napi_value exports) {
  instance_t *inst = calloc(1, sizeof *inst);
  if (inst == NULL) {
    napi_throw_error(env, "ENOMEM", "shallot_udp: out of memory");
    return NULL;
  }
  inst->env = env;
  inst->plan = calloc(1, sizeof *inst->plan);
  if (inst->plan == NULL) {
    free(inst);
    napi_throw_error(env, "ENOMEM", "shallot_udp: out of memory");
    return NULL;
  }
  napi_status st = napi_get_uv_event_loop(env, &inst->loop);
  if (st != napi_ok || inst->loop == NULL) {
    free(inst->plan);
    free(inst);
    throw_napi(env, st, "napi_get_uv_event_loop");
    return NULL;
  }
  st = napi_add_env_cleanup_hook(env, cleanup_instance, inst);
  if (st != napi_ok) {
    free(inst->plan);
    free(inst);
    throw_napi(env, st, "napi_add_env_cleanup_hook");
    return NULL;
  }
  napi_property_descriptor props[] = {
      {"open", NULL, Open, NULL, NULL, NULL, napi_enumerable, inst},
      {"startReading", NULL, StartReading, NULL, NULL, NULL, napi_enumerable, inst},
      {"stopReading", NULL, StopReading, NULL, NULL, NULL, napi_enumerable, inst},
      {"sendBatch", NULL, SendBatch, NULL, NULL, NULL, napi_enumerable, inst},
      {"sendGroups", NULL, SendGroups, NULL, NULL, NULL, napi_enumerable, inst},
      {"sendTo", NULL, SendTo, NULL, NULL, NULL, napi_enumerable, inst},
      {"stats", NULL, Stats, NULL, NULL, NULL, napi_enumerable, inst},
      {"close", NULL, Close, NULL, NULL, NULL, napi_enumerable, inst},
      {"parseAddress", NULL, ParseAddress, NULL, NULL, NULL, napi_enumerable, inst},
      {"formatAddress", NULL, FormatAddress, NULL, NULL, NULL, napi_enumerable, inst},
  };
  st = napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  if (st != napi_ok) {
    throw_napi(env, st, "napi_define_properties");
    return NULL;
  }
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
