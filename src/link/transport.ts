/**
 * The datagram seam: one socket per node, shared by every peer in both
 * the dialing and the listening role. Sending is batch-shaped (a packed
 * batch of datagrams for one destination per call) so that a native
 * sendmmsg socket can replace node:dgram without touching the layers
 * above. `UdpTransport` is the real one; `MemoryNetwork` is the in-memory
 * twin for unit tests and the simulator.
 */
import dgram from 'node:dgram';
import net from 'node:net';

export type DatagramReceiver = (data: Buffer, host: string, port: number) => void;

export interface DatagramTransport {
  /** Bind and start delivering datagrams to `receiver`. */
  start(receiver: DatagramReceiver): Promise<void>;
  /** The bound address (after start). */
  address(): { host: string; port: number };
  /**
   * Send every datagram of a packed batch ([u16 len][bytes]...) to one
   * destination. The batch buffer may be reused as soon as this returns.
   */
  sendPacked(packed: Buffer, len: number, host: string, port: number): void;
  /** Send one datagram (copied if the implementation needs to keep it). */
  sendOne(data: Buffer, host: string, port: number): void;
  close(): void;
}

/** 7 MB socket buffers: wireguard-go measured about +29% from this alone. */
export const SOCKET_BUFFER_BYTES = 7 * 1024 * 1024;

export class UdpTransport implements DatagramTransport {
  private socket: dgram.Socket | undefined;
  private bound = { host: '', port: 0 };
  sendErrors = 0;

  constructor(
    private readonly host: string,
    private readonly port: number,
  ) {}

  start(receiver: DatagramReceiver): Promise<void> {
    const type = net.isIPv6(this.host) ? 'udp6' : 'udp4';
    const socket = dgram.createSocket({ type, ipv6Only: type === 'udp6' });
    this.socket = socket;
    return new Promise((resolve, reject) => {
      const onError = (e: Error) => reject(e);
      socket.once('error', onError);
      socket.bind(this.port, this.host, () => {
        socket.off('error', onError);
        // A send or receive error on an unconnected UDP socket (ICMP port
        // unreachable, ENOBUFS) is never fatal to the node: count it.
        socket.on('error', () => {
          this.sendErrors += 1;
        });
        try {
          socket.setRecvBufferSize(SOCKET_BUFFER_BYTES);
          socket.setSendBufferSize(SOCKET_BUFFER_BYTES);
        } catch {
          /* capped by net.core.*mem_max: run with what the kernel gives */
        }
        const a = socket.address();
        this.bound = { host: a.address, port: a.port };
        socket.on('message', (msg, rinfo) => receiver(msg, rinfo.address, rinfo.port));
        resolve();
      });
    });
  }

  address(): { host: string; port: number } {
    return this.bound;
  }

  sendPacked(packed: Buffer, len: number, host: string, port: number): void {
    const socket = this.socket;
    if (!socket) return;
    let o = 0;
    while (o + 2 <= len) {
      const n = packed.readUInt16BE(o);
      o += 2;
      if (o + n > len) break;
      // dgram may keep a reference until the send completes: copy out of
      // the reused batch buffer (pooled, small).
      socket.send(Buffer.from(packed.subarray(o, o + n)), port, host);
      o += n;
    }
  }

  sendOne(data: Buffer, host: string, port: number): void {
    this.socket?.send(Buffer.from(data), port, host);
  }

  close(): void {
    const s = this.socket;
    this.socket = undefined;
    if (s) {
      try {
        s.close();
      } catch {
        /* already closed */
      }
    }
  }
}

/**
 * In-memory twin: transports on one MemoryNetwork reach each other by
 * "host:port". Delivery is asynchronous (a microtask-free setImmediate
 * queue), optionally lossy and reordering for tests.
 */
export class MemoryNetwork {
  readonly endpoints = new Map<string, MemoryTransport>();
  lossRate = 0;
  delivered = 0;
  dropped = 0;
  private readonly random: () => number;

  constructor(random: () => number = Math.random) {
    this.random = random;
  }

  transport(host: string, port: number): MemoryTransport {
    return new MemoryTransport(this, host, port);
  }

  deliver(fromHost: string, fromPort: number, host: string, port: number, data: Buffer): void {
    if (this.lossRate > 0 && this.random() < this.lossRate) {
      this.dropped += 1;
      return;
    }
    const target = this.endpoints.get(`${host}:${port}`);
    if (!target) {
      this.dropped += 1;
      return;
    }
    const copy = Buffer.from(data);
    setImmediate(() => {
      this.delivered += 1;
      target.receive(copy, fromHost, fromPort);
    });
  }
}

export class MemoryTransport implements DatagramTransport {
  private receiver: DatagramReceiver | undefined;

  constructor(
    private readonly network: MemoryNetwork,
    private readonly host: string,
    private readonly port: number,
  ) {}

  start(receiver: DatagramReceiver): Promise<void> {
    const key = `${this.host}:${this.port}`;
    if (this.network.endpoints.has(key)) return Promise.reject(new Error(`${key} in use`));
    this.receiver = receiver;
    this.network.endpoints.set(key, this);
    return Promise.resolve();
  }

  receive(data: Buffer, host: string, port: number): void {
    this.receiver?.(data, host, port);
  }

  address(): { host: string; port: number } {
    return { host: this.host, port: this.port };
  }

  sendPacked(packed: Buffer, len: number, host: string, port: number): void {
    let o = 0;
    while (o + 2 <= len) {
      const n = packed.readUInt16BE(o);
      o += 2;
      if (o + n > len) break;
      this.sendOne(packed.subarray(o, o + n), host, port);
      o += n;
    }
  }

  sendOne(data: Buffer, host: string, port: number): void {
    if (!this.receiver) return;
    this.network.deliver(this.host, this.port, host, port, data);
  }

  close(): void {
    this.receiver = undefined;
    this.network.endpoints.delete(`${this.host}:${this.port}`);
  }
}
