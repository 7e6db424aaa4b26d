/**
 * The real packet device: a Linux TUN interface opened by the native
 * addon (IFF_TUN | IFF_NO_PI), read in batches on Node's own loop.
 */
import { errors } from '../errors.js';
import { loadTun, type NativeTun } from '../native/binding.js';
import type { PacketBatchHandler, PacketDevice } from './device.js';

export const TUN_READ_BATCH = 64;

export class LinuxTun implements PacketDevice {
  readonly name: string;
  private fd: number;
  private readonly native: NativeTun;

  private constructor(
    native: NativeTun,
    fd: number,
    name: string,
    private readonly maxPacket: number,
  ) {
    this.native = native;
    this.fd = fd;
    this.name = name;
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
      const { fd, name: actual } = native.open(name);
      return new LinuxTun(native, fd, actual, maxPacket);
    } catch (e) {
      const msg = (e as Error).message;
      if (/not permitted|EPERM|EACCES/i.test(msg)) throw errors.needRoot('creating a TUN device');
      if (/busy|EBUSY/i.test(msg)) throw errors.badArgument(`device '${name}' is already in use`);
      throw errors.system(`cannot create TUN device '${name}'`, msg);
    }
  }

  start(onPackets: PacketBatchHandler): void {
    if (this.fd < 0) return;
    this.native.startReading(this.fd, TUN_READ_BATCH, this.maxPacket, onPackets);
  }

  writePacked(packed: Buffer, len: number): number {
    if (this.fd < 0) return 0;
    return this.native.writeBatch(this.fd, packed, len);
  }

  stats(): { read: number; oversize: number; errors: number } {
    if (this.fd < 0) return { read: 0, oversize: 0, errors: 0 };
    return this.native.stats(this.fd);
  }

  close(): void {
    if (this.fd < 0) return;
    const fd = this.fd;
    this.fd = -1;
    this.native.close(fd);
  }
}
