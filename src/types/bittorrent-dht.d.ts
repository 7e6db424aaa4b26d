// The part of bittorrent-dht 11 that shallot uses (the package ships no
// type declarations).
declare module 'bittorrent-dht' {
  import { EventEmitter } from 'node:events';

  export interface DhtOptions {
    bootstrap?: string[] | false;
    host?: string | false;
    concurrency?: number;
    timeout?: number;
    maxAge?: number;
    verify?: (signature: Buffer, message: Buffer, publicKey: Buffer) => boolean;
  }

  export interface PutOptions {
    v: Buffer;
    k?: Buffer;
    seq?: number;
    cas?: number;
    salt?: Buffer;
    sign?: (message: Buffer) => Buffer;
  }

  export interface GetResult {
    v: Buffer;
    id: Buffer;
    k?: Buffer;
    sig?: Buffer;
    seq?: number;
  }

  export interface NodeInfo {
    host: string;
    port: number;
    id?: string | Buffer;
  }

  export default class DHT extends EventEmitter {
    constructor(options?: DhtOptions);
    listen(port?: number, address?: string, onListening?: () => void): void;
    address(): { address: string; family: string; port: number };
    announce(infoHash: Buffer | string, port: number, callback?: (err: Error | null) => void): void;
    lookup(
      infoHash: Buffer | string,
      callback?: (err: Error | null, nodes?: number) => void,
    ): () => void;
    put(
      options: PutOptions,
      callback: (err: Error | null, hash?: Buffer, n?: number) => void,
    ): void;
    get(
      hash: Buffer | string,
      options: { cache?: boolean; salt?: Buffer },
      callback: (err: Error | null, res: GetResult | null) => void,
    ): void;
    addNode(node: NodeInfo): void;
    toJSON(): { nodes: NodeInfo[]; values: unknown };
    destroy(callback?: () => void): void;
    readonly nodes: { count(): number; toArray(): NodeInfo[] };
    readonly ready: boolean;
  }
}
