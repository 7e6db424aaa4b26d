/** Helpers shared by the DTLS-level targets: packing, record fields, a captured handshake. */
import {
  loadDtls,
  LISTEN_VERIFIED,
  type NativeDtlsContext,
  type NativeDtlsSession,
} from '../../../src/native/binding.js';
import type { Field } from '../target.js';

export function unpack(buf: Buffer, len: number): Buffer[] {
  const list: Buffer[] = [];
  for (let o = 0; o + 2 <= len;) {
    const n = buf.readUInt16BE(o);
    if (o + 2 + n > len) break;
    list.push(Buffer.from(buf.subarray(o + 2, o + 2 + n)));
    o += 2 + n;
  }
  return list;
}

export function pack(packets: Buffer[]): Buffer {
  return Buffer.concat(
    packets.flatMap((p) => {
      const h = Buffer.alloc(2);
      h.writeUInt16BE(p.length);
      return [h, p];
    }),
  );
}

/**
 * Length fields of the DTLS records in a datagram: each record's length
 * (13-byte header, u16 at 11) and, in handshake records, the message
 * length, fragment offset and fragment length (u24 at 14, 19, 22).
 */
export function dtlsFields(d: Buffer): Field[] {
  const out: Field[] = [];
  let o = 0;
  while (o + 13 <= d.length && out.length < 32) {
    const len = d.readUInt16BE(o + 11);
    out.push({ offset: o + 11, size: 2, value: d.length - o - 13 });
    if (d[o] === 22 && d[o + 3] === 0 && d[o + 4] === 0 && o + 25 <= d.length) {
      const fragLen = d.readUIntBE(o + 22, 3);
      out.push({ offset: o + 14, size: 3, value: fragLen });
      out.push({ offset: o + 19, size: 3, value: 0 });
      out.push({ offset: o + 22, size: 3, value: Math.max(0, len - 12) });
    }
    o += 13 + len;
  }
  return out;
}

export interface CapturedHandshake {
  serverCtx: NativeDtlsContext;
  clientCtx: NativeDtlsContext;
  peerKey: Buffer;
  client: NativeDtlsSession;
  server: NativeDtlsSession;
  /** ClientHello without, then with, the cookie. */
  hello1: Buffer;
  helloVerify: Buffer;
  hello2: Buffer;
  serverFlight: Buffer[];
  clientFlight: Buffer[];
  serverFinal: Buffer[];
  /** Application records client -> server, already delivered (replays from here on). */
  clientRecords: Buffer[];
  serverRecords: Buffer[];
}

export const scratch = Buffer.alloc(65_536);
export const plain = Buffer.alloc(65_536);

export function flush(s: NativeDtlsSession): Buffer[] {
  return unpack(scratch, s.flush(scratch));
}

/** Seal packets into datagrams. */
export function seal(s: NativeDtlsSession, packets: Buffer[]): Buffer[] {
  const p = pack(packets);
  const n = s.sendBatch(p, p.length, scratch);
  if (n < 0) throw new Error(`sendBatch failed: ${s.error()}`);
  return unpack(scratch, n);
}

/** Open datagrams: the application packets that came out, or null if the session failed. */
export function open(s: NativeDtlsSession, datagrams: Buffer[]): Buffer[] | null {
  const got: Buffer[] = [];
  for (const d of datagrams) {
    const n = s.receive(d, plain);
    if (n < 0) return null;
    got.push(...unpack(plain, n));
  }
  return got;
}

/** A full in-process handshake with every datagram kept. */
export function captureHandshake(mtu = 1452): CapturedHandshake {
  const D = loadDtls();
  const a = D.generateCertificate();
  const b = D.generateCertificate();
  const serverCtx = new D.DtlsContext({ ...a, mtu });
  const clientCtx = new D.DtlsContext({ ...b, mtu });
  serverCtx.setCookieSecrets(Buffer.alloc(32, 0x11), Buffer.alloc(32, 0x22));
  const peerKey = Buffer.from('192.0.2.7|40000');
  const client = clientCtx.connect();
  if (client.pump() < 0) throw new Error(`client pump: ${client.error()}`);
  const [hello1] = flush(client);
  if (!hello1) throw new Error('no ClientHello');
  const hvrBuf = Buffer.alloc(2048);
  const n = serverCtx.listen(hello1, peerKey, hvrBuf);
  if (n <= 0) throw new Error(`listen gave ${n} for the first ClientHello`);
  const helloVerify = Buffer.from(hvrBuf.subarray(0, n));
  if (client.receive(helloVerify, plain) < 0) throw new Error(client.error());
  const [hello2] = flush(client);
  if (!hello2) throw new Error('no second ClientHello');
  if (serverCtx.listen(hello2, peerKey, hvrBuf) !== LISTEN_VERIFIED) {
    throw new Error('the cookie did not verify');
  }
  const server = serverCtx.accept();
  if (server.receive(null, plain) < 0) throw new Error(server.error());
  const serverFlight = flush(server);
  if (!open(client, serverFlight)) throw new Error(client.error());
  const clientFlight = flush(client);
  if (!open(server, clientFlight)) throw new Error(server.error());
  const serverFinal = flush(server);
  if (!open(client, serverFinal)) throw new Error(client.error());
  if (!client.established() || !server.established()) throw new Error('handshake incomplete');
  const clientRecords = seal(client, [
    Buffer.from('ping'),
    Buffer.alloc(1000, 1),
    Buffer.from([0x10, 1, 2]),
  ]);
  const serverRecords = seal(server, [Buffer.from('pong'), Buffer.alloc(300, 2)]);
  if (open(server, clientRecords)?.length !== 3) throw new Error('records did not open');
  if (open(client, serverRecords)?.length !== 2) throw new Error('records did not open');
  return {
    serverCtx,
    clientCtx,
    peerKey,
    client,
    server,
    hello1,
    helloVerify,
    hello2,
    serverFlight,
    clientFlight,
    serverFinal,
    clientRecords,
    serverRecords,
  };
}

export function allDatagrams(h: CapturedHandshake): Buffer[] {
  return [
    h.hello1,
    h.helloVerify,
    h.hello2,
    ...h.serverFlight,
    ...h.clientFlight,
    ...h.serverFinal,
    ...h.clientRecords,
    ...h.serverRecords,
  ];
}
