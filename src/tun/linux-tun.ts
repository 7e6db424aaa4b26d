/**
 * The real packet device: a Linux TUN interface opened by the native
 * addon (IFF_TUN | IFF_NO_PI | IFF_VNET_HDR), read in batches on Node's
 * own loop. Writes go through the TCP coalescer (offload.ts): a run of
 * segments of one flow enters the kernel as one GSO packet.
 * SHALLOT_TUN_OFFLOAD=0 turns that off (plain IFF_TUN, one write per
 * packet), for comparisons.
 */
import { errors } from '../errors.js';
import { loadTun, type NativeTun } from '../native/binding.js';
import type { PacketBatchHandler, PacketDevice } from './device.js';
import { TcpCoalescer } from './offload.js';

const USE_OFFLOAD = process.env.SHALLOT_TUN_OFFLOAD !== '0';

export const TUN_READ_BATCH = 64;

export class LinuxTun implements PacketDevice {
  readonly name: string;
  private fd: number;
  private readonly native: NativeTun;
  /** Set when the device was opened with IFF_VNET_HDR. */
  private readonly coalescer: TcpCoalescer | null;

  private constructor(
    native: NativeTun,
    fd: number,
    name: string,
    private readonly maxPacket: number,
    vnet: boolean,
  ) {
    this.native = native;
    this.fd = fd;
    this.name = name;
    this.coalescer = vnet ? new TcpCoalescer() : null;
  }

  /** Open a TUN device named `name` (may hold %d); needs CAP_NET_ADMIN. */
  static open(name: string, maxPacket: number): LinuxTun {
    if (name.length === 0 || name.length > 15 || !/^[A-Za-z0-9_.%-]+$/.test(name)) {
      throw errors.badArgument(
        `device name '${name}' must be 1-15 letters, digits, '-', '_' or '.'`,
      );
    }
    const native = loadTun();
    try {
      const { fd, name: actual } = native.open(name, USE_OFFLOAD);
      return new LinuxTun(native, fd, actual, maxPacket, USE_OFFLOAD);
    } catch (e) {
      const msg = (e as Error).message;
      if (/not permitted|permission denied|EPERM|EACCES/i.test(msg))
        throw errors.needRoot('creating a TUN device');
      if (/busy|EBUSY/i.test(msg)) throw errors.badArgument(`device '${name}' is already in use`);
      throw errors.system(`cannot create TUN device '${name}'`, msg);
    }
  }

  start(onPackets: PacketBatchHandler): void {
    if (this.fd < 0) return;
    this.native.startReading(this.fd, TUN_READ_BATCH, this.maxPacket, onPackets);
  }

  /** Returns the packets written (a coalesced run counts as its segments). */
  writePacked(packed: Buffer, len: number): number {
    if (this.fd < 0) return 0;
    const c = this.coalescer;
    if (c === null) return this.native.writeBatch(this.fd, packed, len);
    const segments = c.segments;
    const runs = c.runs;
    const out = c.coalesce(packed, len);
    const written = this.native.writeBatch(this.fd, out.buf, out.len);
    // Each run was one write of (segments) packets. When the kernel
    // refused some writes (EAGAIN) the native side does not say which, so
    // the count then assumes the refused ones were single packets.
    return written + (c.segments - segments) - (c.runs - runs);
  }

  stats(): { read: number; oversize: number; errors: number; runs: number; segments: number } {
    const runs = this.coalescer?.runs ?? 0;
    const segments = this.coalescer?.segments ?? 0;
    if (this.fd < 0) return { read: 0, oversize: 0, errors: 0, runs, segments };
    return { ...this.native.stats(this.fd), runs, segments };
  }

  close(): void {
    if (this.fd < 0) return;
    const fd = this.fd;
    this.fd = -1;
    this.native.close(fd);
  }
}
