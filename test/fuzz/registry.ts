/**
 * Every fuzz target. To add one, write it (see ./target.ts: codecTarget
 * turns a decoder and its encoder into a target in a few lines) and add it
 * to this list; the runner splits its time over the list.
 */
import { circuitTargets } from './targets/circuit.js';
import { addressesTarget, authTarget, closeTarget, ipPacketTarget } from './targets/codecs.js';
import { descriptorTarget, descriptorTextTarget } from './targets/descriptor.js';
import { admissionTarget, fromLinkTarget } from './targets/direct.js';
import {
  dtlsClientTarget,
  dtlsEstablishedTarget,
  dtlsListenTarget,
  dtlsServerTarget,
} from './targets/dtls.js';
import { establishedTarget, listenerTarget, peerMessagesTarget } from './targets/endpoint.js';
import { offloadTarget } from './targets/offload.js';
import { rekeyTarget } from './targets/rekey.js';
import type { FuzzTarget } from './target.js';

export const targets: FuzzTarget[] = [
  // link and direct-mode codecs, IP header readers
  authTarget,
  closeTarget,
  addressesTarget,
  ipPacketTarget,
  // native DTLS, directly
  dtlsListenTarget,
  dtlsClientTarget,
  dtlsServerTarget,
  dtlsEstablishedTarget,
  // a whole link endpoint on the in-memory network
  listenerTarget,
  establishedTarget,
  peerMessagesTarget,
  rekeyTarget,
  // direct mode above a link
  fromLinkTarget,
  admissionTarget,
  // circuits and descriptors
  ...circuitTargets,
  descriptorTarget,
  descriptorTextTarget,
  // the TUN writer's TCP coalescing
  offloadTarget,
];
