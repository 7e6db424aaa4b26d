/**
 * Every fuzz target. To add one, write it (see ./target.ts: codecTarget
 * turns a decoder and its encoder into a target in a few lines) and add it
 * to this list; the runner splits its time over the list.
 */
import { circuitTargets } from './targets/circuit.js';
import { addressesTarget, authTarget, closeTarget, ipPacketTarget } from './targets/codecs.js';
import { descriptorTarget, descriptorTextTarget } from './targets/descriptor.js';
import {
  guardStateTarget,
  keyAnswerTarget,
  keyQueryTarget,
  keyResponderTarget,
} from './targets/discovery.js';
import { admissionTarget, fromLinkTarget } from './targets/direct.js';
import {
  dtlsClientTarget,
  dtlsEstablishedTarget,
  dtlsListenTarget,
  dtlsServerTarget,
} from './targets/dtls.js';
import { establishedTarget, listenerTarget, peerMessagesTarget } from './targets/endpoint.js';
import { exitHandlerTarget, exitPolicyTarget } from './targets/exit.js';
import { offloadTarget } from './targets/offload.js';
import { relayCircuitsTarget } from './targets/relay.js';
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
  // the relay's circuit table, fed circuit messages from both neighbours
  relayCircuitsTarget,
  descriptorTarget,
  descriptorTextTarget,
  // the exit's handling of circuit messages and the packets in them
  exitPolicyTarget,
  exitHandlerTarget,
  // discovery's key query, the client's guard state file
  keyQueryTarget,
  keyAnswerTarget,
  keyResponderTarget,
  guardStateTarget,
  // the TUN writer's TCP coalescing
  offloadTarget,
];
