/*
 * shallot_tun: a Linux TUN device polled by libuv on Node's own loop.
 *
 * JS API (see src/native/binding.ts, interface NativeTun):
 *   open(name)                                   -> { fd, name }
 *   startReading(fd, maxBatch, maxPacket, onPackets(buf, len, count))
 *   stopReading(fd)                              (idempotent)
 *   writeBatch(fd, packed, len)                  -> packets written
 *   stats(fd)                                    -> counters
 *   close(fd)
 *
 * Packed batches are, back to back, [u16 big-endian length][bytes].
 *
 * Design:
 *  - All state lives in per-environment instance data (one table per Node
 *    environment, so worker threads never share it and no lock is needed).
 *  - The table has TUN_MAX_ENTRIES entries keyed by fd. An entry holds the
 *    counters of the fd and, while reading, a pointer to its reader. Counters
 *    outlive stopReading() and go away with close().
 *  - A reader owns a uv_poll_t, one preallocated JS Buffer of
 *    maxBatch * (maxPacket + 2) bytes (held by a napi_ref and reused for
 *    every wake-up), the callback (napi_ref), an async context and a 64 KiB
 *    scratch area. Each packet is read with one readv() whose first iovec is
 *    its slot in the Buffer and whose second is the scratch area, so a packet
 *    longer than maxPacket is consumed whole and dropped without any copy or
 *    allocation for the packets that fit.
 *  - A reader is detached from its entry when stopped, so the fd number can
 *    be reused at once (even from inside the callback); the reader memory is
 *    freed by the uv_close callback, never while the JS callback runs.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <linux/virtio_net.h>
#include <limits.h>
#include <math.h>
#include <net/if.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <linux/if_tun.h>

#include <node_api.h>
#include <uv.h>

#define ADDON_NAME "shallot_tun"
#define ADDON_ERR "ERR_TUN"
#include "addon_util.h"
#include "wire.h"

#define TUN_MAX_ENTRIES 64
#define TUN_SCRATCH 65536
#define TUN_MAX_BATCH 4096
#define TUN_MAX_PACKET 65535
#define TUN_MAX_BUFFER (64u * 1024u * 1024u)

typedef struct reader reader_t;

typedef struct {
  bool used;
  bool owned; /* opened by open(), as opposed to adopted by startReading() */
  int fd;
  uint64_t read;
  uint64_t oversize;
  uint64_t errors;
  uint64_t written;
  uint64_t write_dropped;
  uint64_t write_errors;
  int last_errno; /* last read error (0 if none) */
  bool vnet;      /* IFF_VNET_HDR: every read and write starts with a virtio_net_hdr */
  uint64_t offloaded; /* reads refused: the kernel asked for an offload (never asked for) */
  reader_t *reader;
} entry_t;

typedef struct {
  napi_env env;
  uv_loop_t *loop;
  entry_t entries[TUN_MAX_ENTRIES];
} instance_t;

struct reader {
  uv_poll_t poll; /* first member: a uv handle pointer is a reader pointer */
  napi_env env;
  entry_t *entry; /* NULL once detached (stopping) */
  int fd;
  uint32_t max_batch;
  uint32_t max_packet;
  size_t buf_size;
  napi_ref buf_ref;
  napi_ref cb_ref;
  napi_async_context actx;
  bool polling;
  bool closing;
  bool closed;
  bool in_callback;
  bool napi_released;
  uint8_t scratch[TUN_SCRATCH];
};

/* ------------------------------------------------------------------------ */
/* Arguments                                                                 */

/* Read `n` arguments; missing ones are undefined. Returns false (with an
 * exception pending) on failure. */
static bool get_args(napi_env env, napi_callback_info info, size_t n, napi_value *argv,
                     instance_t **inst) {
  size_t argc = n;
  void *data = NULL;
  napi_status st = napi_get_cb_info(env, info, &argc, argv, NULL, &data);
  if (st != napi_ok) {
    throw_napi(env, st, "napi_get_cb_info");
    return false;
  }
  if (inst != NULL) {
    *inst = (instance_t *)data;
    if (*inst == NULL) {
      THROW_ERROR(env, "ERR_TUN_NAPI", "shallot_tun: missing instance data");
      return false;
    }
  }
  return true;
}

/* ------------------------------------------------------------------------ */
/* Table                                                                     */

static entry_t *find_entry(instance_t *inst, int fd) {
  for (int i = 0; i < TUN_MAX_ENTRIES; i++) {
    if (inst->entries[i].used && inst->entries[i].fd == fd) return &inst->entries[i];
  }
  return NULL;
}

static entry_t *new_entry(instance_t *inst, int fd, bool owned) {
  for (int i = 0; i < TUN_MAX_ENTRIES; i++) {
    entry_t *e = &inst->entries[i];
    if (!e->used) {
      memset(e, 0, sizeof *e);
      e->used = true;
      e->owned = owned;
      e->fd = fd;
      return e;
    }
  }
  return NULL;
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

static void on_poll(uv_poll_t *h, int status, int events) {
  reader_t *r = (reader_t *)h;
  entry_t *e = r->entry;
  if (r->closing || e == NULL || r->napi_released) return;
  if (status < 0) {
    /* libuv reports POLLERR (e.g. the interface was deleted) as UV_EBADF
     * and has already stopped the handle. */
    r->polling = false;
    reader_fail(r, -status);
    return;
  }
  if (!(events & UV_READABLE)) return;

  napi_env env = r->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) {
    reader_fail(r, EIO);
    return;
  }

  /* Fetch the reused buffer; if JS detached it (transferred its
   * ArrayBuffer) make a new one rather than write into freed memory. */
  napi_value buf = NULL;
  void *raw = NULL;
  size_t blen = 0;
  if (napi_get_reference_value(env, r->buf_ref, &buf) != napi_ok || buf == NULL ||
      napi_get_buffer_info(env, buf, &raw, &blen) != napi_ok || raw == NULL ||
      blen < r->buf_size) {
    napi_ref fresh = NULL;
    raw = NULL;
    if (napi_create_buffer(env, r->buf_size, &raw, &buf) != napi_ok || raw == NULL ||
        napi_create_reference(env, buf, 1, &fresh) != napi_ok) {
      bool pending = false;
      if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
        napi_value exc;
        napi_get_and_clear_last_exception(env, &exc);
      }
      reader_fail(r, ENOMEM);
      napi_close_handle_scope(env, scope);
      return;
    }
    napi_delete_reference(env, r->buf_ref);
    r->buf_ref = fresh;
  }
  uint8_t *data = (uint8_t *)raw;

  size_t off = 0;
  uint32_t count = 0;
  const uint32_t max_packet = r->max_packet;
  for (uint32_t attempt = 0; attempt < r->max_batch; attempt++) {
    /* Invariant: count <= attempt < max_batch, so the slot at `off` has
     * room for 2 + max_packet bytes. */
    /* With IFF_VNET_HDR the packet follows a virtio_net_hdr. No offload
     * was enabled (TUNSETOFFLOAD), so the kernel sends whole packets with
     * final checksums: a header asking for anything else is refused. */
    struct virtio_net_hdr vh;
    struct iovec iov[3];
    int niov = 0;
    if (e->vnet) {
      iov[niov].iov_base = &vh;
      iov[niov].iov_len = sizeof vh;
      niov++;
    }
    iov[niov].iov_base = data + off + 2;
    iov[niov].iov_len = max_packet;
    niov++;
    iov[niov].iov_base = r->scratch;
    iov[niov].iov_len = sizeof r->scratch;
    niov++;
    ssize_t n = readv(r->fd, iov, niov);
    if (n < 0) {
      int err = errno;
      if (err == EINTR) {
        attempt--;
        continue;
      }
      if (err == EAGAIN || err == EWOULDBLOCK) break;
      /* A read error on a TUN fd does not go away (detached device, bad
       * fd): stop polling rather than spin on a level-triggered wake-up. */
      reader_fail(r, err);
      break;
    }
    if (e->vnet) {
      if ((size_t)n < sizeof vh) continue;
      n -= (ssize_t)sizeof vh;
      if (!vnet_header_plain(&vh)) {
        e->offloaded++;
        continue;
      }
    }
    if (n == 0) continue;
    if ((size_t)n > max_packet) {
      e->oversize++;
      continue;
    }
    data[off] = (uint8_t)((size_t)n >> 8);
    data[off + 1] = (uint8_t)((size_t)n & 0xff);
    off += 2 + (size_t)n;
    count++;
  }
  e->read += count;

  if (count > 0) {
    napi_value cb, recv, argv[3], result;
    napi_status st = napi_get_reference_value(env, r->cb_ref, &cb);
    if (st == napi_ok && cb != NULL) st = napi_get_global(env, &recv);
    if (st == napi_ok) st = napi_create_uint32(env, (uint32_t)off, &argv[1]);
    if (st == napi_ok) st = napi_create_uint32(env, count, &argv[2]);
    if (st == napi_ok && cb != NULL) {
      argv[0] = buf;
      r->in_callback = true;
      st = napi_make_callback(env, r->actx, recv, cb, 3, argv, &result);
      r->in_callback = false;
    } else if (st == napi_ok) {
      st = napi_generic_failure;
    }
    if (st != napi_ok) {
      bool pending = false;
      if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
        /* The callback threw: report it like any uncaught exception
         * (process 'uncaughtException', or exit). The packets of this batch
         * were consumed; polling goes on. */
        napi_value exc;
        if (napi_get_and_clear_last_exception(env, &exc) == napi_ok) {
          napi_fatal_exception(env, exc);
        }
      } else if (!r->closing) {
        /* No exception but no call either: JS can no longer run here (the
         * environment is stopping). Stop instead of spinning. */
        reader_fail(r, ECANCELED);
      }
    }
  }
  napi_close_handle_scope(env, scope);

  if (r->closing) {
    /* stopReading()/close() ran inside the callback. */
    reader_release_napi(r);
    if (r->closed) free(r);
  }
}

/* ------------------------------------------------------------------------ */
/* open(name) -> { fd, name }                                                */

static const char *open_hint(int e) {
  switch (e) {
    case EPERM:
    case EACCES: return "are you root? CAP_NET_ADMIN is needed";
    case ENOENT:
    case ENODEV:
    case ENXIO: return "is the tun module loaded?";
    default: return NULL;
  }
}

static const char *setiff_hint(int e) {
  switch (e) {
    case EPERM:
    case EACCES: return "are you root? CAP_NET_ADMIN is needed";
    case EBUSY: return "an interface of that name exists and is in use";
    case EINVAL: return "invalid interface name, or it exists and is not a tun";
    default: return NULL;
  }
}

static napi_value Open(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  instance_t *inst;
  argv[1] = NULL;
  if (!get_args(env, info, 2, argv, &inst)) return NULL;
  bool vnet = false;
  if (argv[1] != NULL) {
    napi_valuetype vt;
    NAPI_CALL(env, napi_typeof(env, argv[1], &vt), NULL);
    if (vt == napi_boolean) {
      NAPI_CALL(env, napi_get_value_bool(env, argv[1], &vnet), NULL);
    } else if (vt != napi_undefined) {
      THROW_TYPE(env, "vnetHdr must be a boolean");
      return NULL;
    }
  }

  napi_valuetype t;
  NAPI_CALL(env, napi_typeof(env, argv[0], &t), NULL);
  if (t != napi_string) {
    THROW_TYPE(env, "name must be a string");
    return NULL;
  }
  size_t len = 0;
  NAPI_CALL(env, napi_get_value_string_utf8(env, argv[0], NULL, 0, &len), NULL);
  if (len >= IFNAMSIZ) {
    THROW_RANGE(env, "interface name is too long: %zu bytes, at most %d allowed", len,
                IFNAMSIZ - 1);
    return NULL;
  }
  char name[IFNAMSIZ];
  memset(name, 0, sizeof name);
  NAPI_CALL(env, napi_get_value_string_utf8(env, argv[0], name, sizeof name, &len), NULL);
  if (strlen(name) != len) {
    THROW_RANGE(env, "interface name must not contain NUL characters");
    return NULL;
  }

  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    throw_errno(env, err, NULL, open_hint(err), "cannot open /dev/net/tun");
    return NULL;
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI | (vnet ? IFF_VNET_HDR : 0);
  memcpy(ifr.ifr_name, name, len);
  if (ioctl(fd, TUNSETIFF, (void *)&ifr) < 0) {
    int err = errno;
    close(fd);
    throw_errno(env, err, NULL, setiff_hint(err), "TUNSETIFF '%s' failed", name);
    return NULL;
  }
  ifr.ifr_name[IFNAMSIZ - 1] = '\0';

  /* An entry with this fd number is stale: that fd was closed without
   * close() and the kernel handed the number out again. */
  entry_t *e = find_entry(inst, fd);
  if (e != NULL) {
    if (e->reader != NULL) reader_stop(e->reader, true);
    e->used = false;
  }
  e = new_entry(inst, fd, true);
  if (e == NULL) {
    close(fd);
    THROW_ERROR(env, "ERR_TUN_TOO_MANY",
                "too many TUN fds in use by this environment (at most %d)", TUN_MAX_ENTRIES);
    return NULL;
  }
  e->vnet = vnet;

  napi_value result, vfd, vname;
  napi_status st = napi_create_object(env, &result);
  if (st == napi_ok) st = napi_create_int32(env, fd, &vfd);
  if (st == napi_ok) st = napi_create_string_utf8(env, ifr.ifr_name, NAPI_AUTO_LENGTH, &vname);
  if (st == napi_ok) st = napi_set_named_property(env, result, "fd", vfd);
  if (st == napi_ok) st = napi_set_named_property(env, result, "name", vname);
  if (st != napi_ok) {
    throw_napi(env, st, "building the result of open()");
    e->used = false;
    close(fd);
    return NULL;
  }
  return result;
}

/* ------------------------------------------------------------------------ */
/* startReading(fd, maxBatch, maxPacket, onPackets)                          */

static napi_value StartReading(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  instance_t *inst;
  if (!get_args(env, info, 4, argv, &inst)) return NULL;
  int fd;
  uint32_t max_batch, max_packet;
  if (!get_fd(env, argv[0], &fd)) return NULL;
  if (!get_u32(env, argv[1], "maxBatch", 1, TUN_MAX_BATCH, &max_batch)) return NULL;
  if (!get_u32(env, argv[2], "maxPacket", 1, TUN_MAX_PACKET, &max_packet)) return NULL;
  napi_valuetype t;
  NAPI_CALL(env, napi_typeof(env, argv[3], &t), NULL);
  if (t != napi_function) {
    THROW_TYPE(env, "onPackets must be a function");
    return NULL;
  }
  size_t buf_size = (size_t)max_batch * ((size_t)max_packet + 2);
  if (buf_size > TUN_MAX_BUFFER) {
    THROW_RANGE(env, "maxBatch * (maxPacket + 2) = %zu bytes exceeds the limit of %u", buf_size,
                TUN_MAX_BUFFER);
    return NULL;
  }

  entry_t *e = find_entry(inst, fd);
  bool created = false;
  if (e != NULL && e->reader != NULL) {
    THROW_ERROR(env, "ERR_TUN_ALREADY_READING", "fd %d is already being read", fd);
    return NULL;
  }
  if (e == NULL) {
    /* An fd opened elsewhere (e.g. passed in by a privileged parent). */
    e = new_entry(inst, fd, false);
    if (e == NULL) {
      THROW_ERROR(env, "ERR_TUN_TOO_MANY",
                  "too many TUN fds in use by this environment (at most %d)", TUN_MAX_ENTRIES);
      return NULL;
    }
    created = true;
  }

  reader_t *r = calloc(1, sizeof *r);
  if (r == NULL) {
    if (created) e->used = false;
    THROW_ERROR(env, "ENOMEM", "out of memory allocating the reader of fd %d", fd);
    return NULL;
  }
  r->env = env;
  r->fd = fd;
  r->max_batch = max_batch;
  r->max_packet = max_packet;
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
    st = napi_create_string_utf8(env, "ShallotTunReader", NAPI_AUTO_LENGTH, &resource_name);
  }
  if (st == napi_ok) st = napi_async_init(env, resource, resource_name, &r->actx);
  if (st != napi_ok) {
    throw_napi(env, st, what);
    reader_release_napi(r);
    free(r);
    if (created) e->used = false;
    return NULL;
  }

  int rc = uv_poll_init(inst->loop, &r->poll, fd);
  if (rc != 0) {
    reader_release_napi(r);
    free(r);
    if (created) e->used = false;
    throw_errno(env, -rc, NULL, NULL, "cannot poll fd %d", fd);
    return NULL;
  }
  rc = uv_poll_start(&r->poll, UV_READABLE, on_poll);
  if (rc != 0) {
    reader_release_napi(r);
    uv_close((uv_handle_t *)&r->poll, on_reader_closed);
    if (created) e->used = false;
    throw_errno(env, -rc, NULL, NULL, "cannot poll fd %d", fd);
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
  if (!get_args(env, info, 1, argv, &inst)) return NULL;
  int fd;
  if (!get_fd(env, argv[0], &fd)) return NULL;
  entry_t *e = find_entry(inst, fd);
  if (e != NULL && e->reader != NULL) reader_stop(e->reader, true);
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* writeBatch(fd, packed, len) -> packets written                            */

static napi_value WriteBatch(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  instance_t *inst;
  if (!get_args(env, info, 3, argv, &inst)) return NULL;
  int fd;
  if (!get_fd(env, argv[0], &fd)) return NULL;
  bool is_buffer = false;
  NAPI_CALL(env, napi_is_buffer(env, argv[1], &is_buffer), NULL);
  if (!is_buffer) {
    THROW_TYPE(env, "packed must be a Buffer");
    return NULL;
  }
  void *raw = NULL;
  size_t blen = 0;
  NAPI_CALL(env, napi_get_buffer_info(env, argv[1], &raw, &blen), NULL);
  double dlen;
  if (!get_integer(env, argv[2], "len", 0, (double)blen, &dlen)) return NULL;
  const size_t len = (size_t)dlen;
  const uint8_t *p = (const uint8_t *)raw;

  /* Validate the whole batch first so that a malformed one writes nothing. */
  uint32_t count = 0;
  size_t bad = 0, claimed = 0;
  enum packed_status st = packed_scan(p, len, &count, &bad, &claimed);
  if (st == PACKED_TRUNCATED_PREFIX) {
    THROW_RANGE(env, "packed batch: truncated length prefix at offset %zu (len %zu)", bad, len);
    return NULL;
  }
  if (st != PACKED_OK) {
    THROW_RANGE(env, "packed batch: packet at offset %zu claims %zu bytes, only %zu remain", bad,
                claimed, len - bad - 2);
    return NULL;
  }

  entry_t *e = find_entry(inst, fd);
  uint32_t written = 0, dropped = 0, failed = 0;
  size_t off = 0;
  while (off < len) {
    size_t plen = ((size_t)p[off] << 8) | p[off + 1];
    const uint8_t *pkt = p + off + 2;
    off += 2 + plen;
    if (plen == 0) continue; /* nothing to write */
    ssize_t n;
    do {
      n = write(fd, pkt, plen);
    } while (n < 0 && errno == EINTR);
    if (n >= 0) {
      written++;
      continue;
    }
    int err = errno;
    if (err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS) {
      dropped++;
    } else if (err == EBADF || err == EBADFD) {
      if (e != NULL) {
        e->written += written;
        e->write_dropped += dropped;
        e->write_errors += failed + 1;
      }
      throw_errno(env, err, NULL, NULL, "write to fd %d failed", fd);
      return NULL;
    } else {
      /* e.g. EINVAL for a packet that is not IPv4/IPv6, EIO while the
       * interface is down: this packet is lost, the rest may pass. */
      failed++;
    }
  }
  if (e != NULL) {
    e->written += written;
    e->write_dropped += dropped;
    e->write_errors += failed;
  }
  napi_value result;
  NAPI_CALL(env, napi_create_uint32(env, written, &result), NULL);
  return result;
}

/* ------------------------------------------------------------------------ */
/* stats(fd)                                                                 */

static napi_value Stats(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  instance_t *inst;
  if (!get_args(env, info, 1, argv, &inst)) return NULL;
  int fd;
  if (!get_fd(env, argv[0], &fd)) return NULL;
  entry_t *e = find_entry(inst, fd);
  if (e == NULL) {
    THROW_ERROR(env, "ERR_TUN_UNKNOWN_FD", "fd %d was not opened (or read) by shallot_tun", fd);
    return NULL;
  }
  napi_value obj, reading, last_error;
  NAPI_CALL(env, napi_create_object(env, &obj), NULL);
  if (!set_number(env, obj, "read", (double)e->read) ||
      !set_number(env, obj, "oversize", (double)e->oversize) ||
      !set_number(env, obj, "errors", (double)e->errors) ||
      !set_number(env, obj, "written", (double)e->written) ||
      !set_number(env, obj, "writeDropped", (double)e->write_dropped) ||
      !set_number(env, obj, "writeErrors", (double)e->write_errors) ||
      !set_number(env, obj, "offloaded", (double)e->offloaded)) {
    return NULL;
  }
  NAPI_CALL(env, napi_get_boolean(env, e->reader != NULL && e->reader->polling, &reading), NULL);
  NAPI_CALL(env, napi_set_named_property(env, obj, "reading", reading), NULL);
  NAPI_CALL(env,
            napi_create_string_utf8(env, e->last_errno != 0 ? strerror(e->last_errno) : "",
                                    NAPI_AUTO_LENGTH, &last_error),
            NULL);
  NAPI_CALL(env, napi_set_named_property(env, obj, "lastError", last_error), NULL);
  return obj;
}

/* ------------------------------------------------------------------------ */
/* close(fd)                                                                 */

static napi_value Close(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  instance_t *inst;
  if (!get_args(env, info, 1, argv, &inst)) return NULL;
  int fd;
  if (!get_fd(env, argv[0], &fd)) return NULL;
  entry_t *e = find_entry(inst, fd);
  if (e == NULL) {
    /* Refuse: closing an fd number we do not know (e.g. a second close())
     * could close an unrelated file that reuses the number. */
    THROW_ERROR(env, "ERR_TUN_UNKNOWN_FD", "fd %d was not opened (or read) by shallot_tun", fd);
    return NULL;
  }
  if (e->reader != NULL) reader_stop(e->reader, true);
  e->used = false;
  if (close(fd) < 0 && errno != EINTR) {
    throw_errno(env, errno, NULL, NULL, "close(%d) failed", fd);
    return NULL;
  }
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* Module                                                                    */

static void cleanup_instance(void *arg) {
  instance_t *inst = (instance_t *)arg;
  for (int i = 0; i < TUN_MAX_ENTRIES; i++) {
    entry_t *e = &inst->entries[i];
    if (e->used && e->reader != NULL) reader_stop(e->reader, true);
    e->used = false;
  }
  free(inst);
}

static napi_value Init(napi_env env, napi_value exports) {
  instance_t *inst = calloc(1, sizeof *inst);
  if (inst == NULL) {
    napi_throw_error(env, "ENOMEM", "shallot_tun: out of memory");
    return NULL;
  }
  inst->env = env;
  napi_status st = napi_get_uv_event_loop(env, &inst->loop);
  if (st != napi_ok || inst->loop == NULL) {
    free(inst);
    throw_napi(env, st, "napi_get_uv_event_loop");
    return NULL;
  }
  st = napi_add_env_cleanup_hook(env, cleanup_instance, inst);
  if (st != napi_ok) {
    free(inst);
    throw_napi(env, st, "napi_add_env_cleanup_hook");
    return NULL;
  }
  napi_property_descriptor props[] = {
      {"open", NULL, Open, NULL, NULL, NULL, napi_enumerable, inst},
      {"startReading", NULL, StartReading, NULL, NULL, NULL, napi_enumerable, inst},
      {"stopReading", NULL, StopReading, NULL, NULL, NULL, napi_enumerable, inst},
      {"writeBatch", NULL, WriteBatch, NULL, NULL, NULL, napi_enumerable, inst},
      {"stats", NULL, Stats, NULL, NULL, NULL, napi_enumerable, inst},
      {"close", NULL, Close, NULL, NULL, NULL, napi_enumerable, inst},
  };
  st = napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  if (st != napi_ok) {
    throw_napi(env, st, "napi_define_properties");
    return NULL;
  }
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
