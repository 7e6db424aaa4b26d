/*
 * libFuzzer harness for src/native/wire.h: the packed batches the TUN and
 * UDP addons take from JS (writeBatch, sendBatch), sendGroups' group
 * headers, and the vnet header of an IFF_VNET_HDR TUN read. Built with
 * -fsanitize=fuzzer,address,undefined by run.sh; the input buffer is
 * exactly the input's size, so any read past it is reported.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../../src/native/wire.h"

#define REQUIRE(c)  \
  do {              \
    if (!(c)) abort(); \
  } while (0)

/* The obvious walk, for comparison. */
static int reference_count(const uint8_t *p, size_t len, size_t *stop) {
  size_t off = 0;
  int n = 0;
  while (off + 2 <= len) {
    size_t dl = (size_t)p[off] << 8 | p[off + 1];
    if (off + 2 + dl > len) break;
    off += 2 + dl;
    n++;
  }
  *stop = off;
  return n;
}

static void check_packed(const uint8_t *p, size_t len) {
  uint32_t count = 0xdeadbeef;
  size_t bad = (size_t)-1, claimed = (size_t)-1, stop = 0;
  enum packed_status st = packed_scan(p, len, &count, &bad, &claimed);
  int ref = reference_count(p, len, &stop);
  if (st == PACKED_OK) {
    REQUIRE(stop == len); /* every byte belongs to an entry */
    REQUIRE(count == (uint32_t)ref);
    REQUIRE(count <= len / 2);
  } else {
    REQUIRE(stop < len);
    REQUIRE(bad == stop); /* the first entry that does not fit */
    REQUIRE(bad < len);
    if (st == PACKED_TRUNCATED_PREFIX) REQUIRE(len - bad == 1);
    else REQUIRE(st == PACKED_OVERRUN && claimed > len - bad - 2);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  check_packed(data, size);

  /* sendGroups: headers and their packed batches, back to back. */
  size_t off = 0;
  while (off < size) {
    struct group_header g;
    if (!group_header_parse(data + off, size - off, &g)) break;
    REQUIRE(g.family == 4 || g.family == 6);
    REQUIRE(g.header_len == (g.family == 4 ? 11u : 27u));
    REQUIRE(g.header_len + g.payload_len <= size - off);
    check_packed(data + off + g.header_len, g.payload_len);
    off += g.header_len + g.payload_len;
  }

  if (size >= sizeof(struct virtio_net_hdr)) {
    struct virtio_net_hdr vh;
    memcpy(&vh, data, sizeof vh);
    int plain = vnet_header_plain(&vh);
    REQUIRE(plain == (vh.gso_type == 0 && (vh.flags & 1) == 0));
  }
  return 0;
}
