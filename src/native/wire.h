/*
 * wire.h: the pure parsers of the TUN and UDP addons, with no N-API in
 * them, so that the addons and a libFuzzer harness (test/native/fuzz/)
 * run the same code.
 *
 *   packed batch   [u16 big-endian length][bytes], back to back
 *   group header   [u8 family 4|6][addr 4|16][u32 scope: 6 only][u16 port][u32 n]
 *                  followed by n bytes of a packed batch (sendGroups)
 *   vnet header    struct virtio_net_hdr before each packet of an IFF_VNET_HDR TUN
 */
#ifndef SHALLOT_WIRE_H
#define SHALLOT_WIRE_H

#include <linux/virtio_net.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum packed_status {
  PACKED_OK = 0,
  PACKED_TRUNCATED_PREFIX = 1, /* fewer than 2 bytes left for a length */
  PACKED_OVERRUN = 2,          /* a length runs past the end */
};

/* Walk a packed batch of `len` bytes. On PACKED_OK, *count is the number
 * of entries; otherwise *bad_off is the offset of the bad entry and
 * *claimed the length it claims (PACKED_OVERRUN). Reads only p[0, len). */
static inline enum packed_status packed_scan(const uint8_t *p, size_t len, uint32_t *count,
                                             size_t *bad_off, size_t *claimed) {
  uint32_t total = 0;
  size_t off = 0;
  while (off < len) {
    if (len - off < 2) {
      *bad_off = off;
      return PACKED_TRUNCATED_PREFIX;
    }
    size_t dl = ((size_t)p[off] << 8) | p[off + 1];
    if (dl > len - off - 2) {
      *bad_off = off;
      *claimed = dl;
      return PACKED_OVERRUN;
    }
    off += 2 + dl;
    total++;
  }
  *count = total;
  return PACKED_OK;
}

/* A sendGroups group header, decoded. */
struct group_header {
  int family; /* 4 or 6 */
  uint8_t addr[16];
  uint32_t scope;
  uint16_t port;
  size_t header_len; /* 11 or 27 */
  size_t payload_len;
};

/* Decode the group header at p (avail bytes). 0 if it is not whole or its
 * payload runs past avail; 1 otherwise. Reads only p[0, avail). */
static inline int group_header_parse(const uint8_t *p, size_t avail, struct group_header *g) {
  if (avail < 1) return 0;
  const uint8_t fam = p[0];
  size_t h = fam == 4 ? 11 : fam == 6 ? 27 : 0;
  if (h == 0 || avail < h) return 0;
  memset(g, 0, sizeof *g);
  size_t o;
  if (fam == 4) {
    memcpy(g->addr, p + 1, 4);
    g->port = (uint16_t)((p[5] << 8) | p[6]);
    o = 7;
  } else {
    memcpy(g->addr, p + 1, 16);
    g->scope = ((uint32_t)p[17] << 24) | ((uint32_t)p[18] << 16) | ((uint32_t)p[19] << 8) | p[20];
    g->port = (uint16_t)((p[21] << 8) | p[22]);
    o = 23;
  }
  g->family = fam;
  g->payload_len =
      ((size_t)p[o] << 24) | ((size_t)p[o + 1] << 16) | ((size_t)p[o + 2] << 8) | p[o + 3];
  g->header_len = h;
  return g->payload_len <= avail - h;
}

/* A packet read from an IFF_VNET_HDR TUN is usable as it is only if its
 * header asks for nothing: no segmentation offload, no checksum to finish
 * (no offload was enabled, so the kernel should never ask). */
static inline int vnet_header_plain(const struct virtio_net_hdr *vh) {
  return vh->gso_type == VIRTIO_NET_HDR_GSO_NONE && !(vh->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM);
}

#endif
