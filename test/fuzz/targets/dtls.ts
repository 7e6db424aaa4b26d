/**
 * The native DTLS binding, directly: the stateless listen step, a client
 * and a server part-way through a handshake, and an established session.
 * Every datagram is unauthenticated input from the network.
 */
import { LISTEN_DROP, LISTEN_VERIFIED } from '../../../src/native/binding.js';
import { check, type FuzzTarget } from '../target.js';
import {
  allDatagrams,
  captureHandshake,
  dtlsFields,
  flush,
  open,
  plain,
  seal,
  type CapturedHandshake,
} from './dtls-util.js';

let captured: CapturedHandshake | undefined;
/** One captured handshake shared by the DTLS targets (built on first use). */
function handshake(): CapturedHandshake {
  captured ??= captureHandshake();
  return captured;
}

const hvr = Buffer.alloc(2048);
const NEVER_ISSUED = Buffer.from('198.51.100.99|1');

/** A HelloVerifyRequest is a fixed-size answer: never an amplifier. */
const MAX_HELLO_VERIFY_BYTES = 128;

const listenStats = { helloVerify: 0, verified: 0, drop: 0, maxAnswer: 0 };

export const dtlsListenTarget: FuzzTarget = {
  name: 'dtls/listen',
  seeds: () => {
    const h = handshake();
    return [h.hello1, h.hello2, ...allDatagrams(h)];
  },
  run(input, rng) {
    const h = handshake();
    // From the address the cookie was minted for, or from one never given a cookie.
    const fresh = rng.chance(0.25);
    const key = fresh ? NEVER_ISSUED : h.peerKey;
    const n = h.serverCtx.listen(input, key, hvr);
    check(
      n === LISTEN_DROP ||
        n === LISTEN_VERIFIED ||
        (Number.isInteger(n) && n > 0 && n <= hvr.length),
      `listen returned ${n}`,
    );
    if (n > 0) {
      listenStats.helloVerify += 1;
      listenStats.maxAnswer = Math.max(listenStats.maxAnswer, n);
      check(
        n <= MAX_HELLO_VERIFY_BYTES,
        `HelloVerifyRequest of ${n} bytes to a ${input.length}-byte datagram`,
      );
      check(hvr[0] === 22, 'the answer is not a handshake record');
      return true;
    }
    if (n === LISTEN_VERIFIED) {
      check(!fresh, 'a cookie verified for an address that was never sent one (forged cookie)');
      listenStats.verified += 1;
      const s = h.serverCtx.accept();
      const r = s.receive(null, plain);
      check(r === 0 || r === -1, `accepted session's first receive returned ${r}`);
      flush(s);
      check(!s.established(), 'established from a ClientHello alone');
      s.free();
      return true;
    }
    listenStats.drop += 1;
    return false;
  },
  fields: dtlsFields,
  maxLength: 2048,
  stats: () =>
    `helloVerify ${listenStats.helloVerify} (largest ${listenStats.maxAnswer} B), verified ${listenStats.verified}, dropped ${listenStats.drop}`,
};

const clientStats = { failed: 0, waiting: 0, offPath: 0 };

/**
 * Put every epoch-0 record of a datagram at a number inside the window of
 * a client whose first record was numbered `base` (protocol 3, "Epoch 0"):
 * what an on-path attacker, who sees the numbers, can send.
 */
function intoWindow(d: Buffer, base: number): Buffer {
  const out = Buffer.from(d);
  for (let o = 0; o + 13 <= out.length; o += 13 + out.readUInt16BE(o + 11)) {
    if (out[o + 3] === 0 && out[o + 4] === 0) {
      out.writeUIntBE((base + (out.readUIntBE(o + 5, 6) % 1024)) % 2 ** 48, o + 5, 6);
    }
  }
  return out;
}

export const dtlsClientTarget: FuzzTarget = {
  name: 'dtls/client-handshake',
  seeds: () => {
    const h = handshake();
    return [h.helloVerify, ...h.serverFlight, ...h.serverFinal, ...allDatagrams(h)];
  },
  run(input, rng) {
    const h = handshake();
    const c = h.clientCtx.connect();
    try {
      check(c.pump() === 0, 'pump failed on a fresh client');
      const hello = flush(c)[0];
      check(hello !== undefined && hello.length >= 13, 'no ClientHello');
      // Mostly as an on-path attacker (numbers in the window, so OpenSSL
      // parses the input); sometimes as the off-path one, who cannot know
      // them: such a datagram must be dropped, never fail the handshake.
      const onPath = rng.chance(0.75);
      const d = onPath ? intoWindow(input, (hello as Buffer).readUIntBE(5, 6)) : input;
      const r = c.receive(d, plain);
      check(r === 0 || r === -1, `client receive returned ${r} before any handshake`);
      if (!onPath) {
        check(r === 0, `an off-path datagram failed the handshake: ${c.error()}`);
        clientStats.offPath += 1;
      }
      flush(c);
      c.timeoutMs();
      check(!c.established(), 'a client finished a handshake from one forged datagram');
      if (r < 0) clientStats.failed += 1;
      else if (onPath) clientStats.waiting += 1;
    } finally {
      c.free();
    }
  },
  fields: dtlsFields,
  maxLength: 2048,
  stats: () =>
    `on-path: failed ${clientStats.failed}, still waiting ${clientStats.waiting}; off-path: dropped ${clientStats.offPath}`,
};

const serverStats = { failed: 0, waiting: 0, offPath: 0 };

export const dtlsServerTarget: FuzzTarget = {
  name: 'dtls/server-handshake',
  seeds: () => {
    const h = handshake();
    return [...h.clientFlight, h.hello2, ...allDatagrams(h)];
  },
  run(input, rng) {
    const h = handshake();
    check(
      h.serverCtx.listen(h.hello2, h.peerKey, hvr) === LISTEN_VERIFIED,
      'cookie stopped verifying',
    );
    const s = h.serverCtx.accept();
    try {
      check(s.receive(null, plain) === 0, `server start: ${s.error()}`);
      flush(s);
      // Sometimes as an off-path attacker: the epoch-0 numbers moved out of
      // the window the verified ClientHello set; never fails the handshake.
      const offPath = rng.chance(0.25);
      const base = h.hello2.readUIntBE(5, 6);
      const r = s.receive(offPath ? intoWindow(input, (base + 2 ** 40) % 2 ** 48) : input, plain);
      check(r === 0 || r === -1, `server receive returned ${r} during the handshake`);
      if (offPath) {
        check(r === 0, `an off-path datagram failed the handshake: ${s.error()}`);
        serverStats.offPath += 1;
      }
      flush(s);
      check(!s.established(), 'a server finished a handshake from a replayed/forged client flight');
      if (r < 0) serverStats.failed += 1;
      else serverStats.waiting += 1;
    } finally {
      s.free();
    }
  },
  fields: dtlsFields,
  maxLength: 2048,
  weight: 0.75,
  stats: () =>
    `failed ${serverStats.failed}, still waiting ${serverStats.waiting} (off-path, all dropped: ${serverStats.offPath})`,
};

let liveness = 0;

export const dtlsEstablishedTarget: FuzzTarget = {
  name: 'dtls/established',
  seeds: () => allDatagrams(handshake()),
  run(input) {
    const h = handshake();
    // Records that fail authentication, replays and stray handshake
    // records are dropped: nothing comes out, and the session lives on.
    const rs = h.server.receive(input, plain);
    check(
      rs === 0,
      rs < 0
        ? `server session failed: ${h.server.error()}`
        : 'server: plaintext from an unauthenticated datagram',
    );
    const rc = h.client.receive(input, plain);
    check(
      rc === 0,
      rc < 0
        ? `client session failed: ${h.client.error()}`
        : 'client: plaintext from an unauthenticated datagram',
    );
    flush(h.server);
    flush(h.client);
    liveness += 1;
    const ping = Buffer.from(`ping ${liveness}`);
    const got = open(h.server, seal(h.client, [ping]));
    check(got?.length === 1 && got[0]?.equals(ping), 'client -> server no longer carries data');
    const pong = Buffer.from(`pong ${liveness}`);
    const back = open(h.client, seal(h.server, [pong]));
    check(back?.length === 1 && back[0]?.equals(pong), 'server -> client no longer carries data');
  },
  fields: dtlsFields,
  maxLength: 2048,
};
