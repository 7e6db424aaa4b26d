/**
 * Binding a DTLS session to node identities.
 *
 * DTLS authenticates link certificates (ECDSA P-256); it knows nothing of
 * Ed25519 node ids. After the handshake each side sends AUTH: its Ed25519
 * public key and a signature over
 *
 *   "shallot link auth v1\0" || role || SHA-256(own certificate DER)
 *     || exporter || SHA-256(attributes)
 *
 * where exporter is 32 bytes of RFC 5705 keying material for this session
 * under the label EXPORTER_LABEL. The receiver recomputes it with the
 * certificate the peer actually presented in this handshake and its own
 * exporter value: the signature then proves that the holder of the id key
 * speaks in this very session (a signature cannot be replayed into another
 * session, whose exporter differs) and vouches for that certificate.
 */
import { createHash } from 'node:crypto';
import { signDetached, verifyDetached } from '../identity.js';

export const EXPORTER_LABEL = 'EXPORTER-shallot-link-auth-v1';
export const EXPORTER_BYTES = 32;
const CONTEXT = Buffer.from('shallot link auth v1\0', 'latin1');

export function sha256(data: Buffer): Buffer {
  return createHash('sha256').update(data).digest();
}

export function authTranscript(
  role: number,
  certificateDer: Buffer,
  exporter: Buffer,
  attributes: Buffer,
): Buffer {
  return Buffer.concat([
    CONTEXT,
    Buffer.from([role]),
    sha256(certificateDer),
    exporter,
    sha256(attributes),
  ]);
}

export function signAuth(
  secretKey: Buffer,
  role: number,
  ownCertificateDer: Buffer,
  exporter: Buffer,
  attributes: Buffer,
): Buffer {
  return signDetached(secretKey, authTranscript(role, ownCertificateDer, exporter, attributes));
}

export function verifyAuth(
  publicKey: Buffer,
  signature: Buffer,
  role: number,
  peerCertificateDer: Buffer,
  exporter: Buffer,
  attributes: Buffer,
): boolean {
  return verifyDetached(
    publicKey,
    authTranscript(role, peerCertificateDer, exporter, attributes),
    signature,
  );
}
