/**
 * Per-link staging of outgoing link messages, so that the messages one
 * event produces (a batch from the TUN, the cells one datagram carried)
 * leave as one batch per link: one native call for DTLS, one send loop.
 * Bounded: a link's stage flushes itself when full.
 */
import { LINK_MESSAGE_BYTES, SEND_BATCH_PACKETS } from './constants.js';
import type { LinkEndpoint, LinkPeer } from './endpoint.js';

class Stage {
  readonly buf = Buffer.alloc(SEND_BATCH_PACKETS * (LINK_MESSAGE_BYTES + 2));
  len = 0;
  count = 0;
}

export class Outbox {
  private readonly stages = new WeakMap<LinkPeer, Stage>();
  private readonly pending: [LinkPeer, Stage][] = [];
  dropped = 0;

  constructor(private readonly endpoint: LinkEndpoint) {}

  /** Stage `type | u32 id | body[off, off+len)` for `peer`. */
  add(peer: LinkPeer, type: number, id: number, body: Buffer, off: number, len: number): void {
    const stage = this.stageFor(peer, 5 + len);
    if (!stage) return;
    const b = stage.buf;
    let o = stage.len;
    b.writeUInt16BE(5 + len, o);
    b[o + 2] = type;
    b.writeUInt32BE(id, o + 3);
    body.copy(b, o + 7, off, off + len);
    o += 7 + len;
    stage.len = o;
    stage.count += 1;
  }

  /** Stage a whole link message (type byte included). */
  addMessage(peer: LinkPeer, message: Buffer): void {
    const stage = this.stageFor(peer, message.length);
    if (!stage) return;
    stage.buf.writeUInt16BE(message.length, stage.len);
    message.copy(stage.buf, stage.len + 2);
    stage.len += 2 + message.length;
    stage.count += 1;
  }

  private stageFor(peer: LinkPeer, messageLen: number): Stage | null {
    if (messageLen > LINK_MESSAGE_BYTES || peer.state !== 'up') {
      this.dropped += 1;
      return null;
    }
    let stage = this.stages.get(peer);
    if (!stage) {
      stage = new Stage();
      this.stages.set(peer, stage);
    }
    if (stage.count === 0) this.pending.push([peer, stage]);
    else if (stage.count >= SEND_BATCH_PACKETS || stage.len + 2 + messageLen > stage.buf.length) {
      this.send(peer, stage);
      this.pending.push([peer, stage]);
    }
    return stage;
  }

  private send(peer: LinkPeer, stage: Stage): void {
    if (stage.count > 0 && !this.endpoint.sendMessages(peer, stage.buf, stage.len, stage.count)) {
      this.dropped += stage.count;
    }
    stage.len = 0;
    stage.count = 0;
  }

  flush(): void {
    for (const [peer, stage] of this.pending) this.send(peer, stage);
    this.pending.length = 0;
  }
}
