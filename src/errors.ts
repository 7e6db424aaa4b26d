/**
 * Coded errors. `kind` tells a caller what to do about it: a `user` error is
 * a mistake in input or configuration (the CLI prints its message as one
 * line, no stack); `peer` is something a remote node did; `transient` may
 * succeed on retry; `internal` is a bug or an environment failure.
 */
export type ErrorKind = 'user' | 'peer' | 'transient' | 'internal';

export class ShallotError extends Error {
  readonly code: string;
  readonly kind: ErrorKind;

  constructor(code: string, kind: ErrorKind, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ShallotError';
    this.code = code;
    this.kind = kind;
  }
}

export const errors = {
  badArgument: (message: string) => new ShallotError('BAD_ARGUMENT', 'user', message),
  badConfig: (message: string) => new ShallotError('BAD_CONFIG', 'user', message),
  identityExists: (dir: string) =>
    new ShallotError(
      'IDENTITY_EXISTS',
      'user',
      `an identity already exists in ${dir} (use --force to replace it: the node id will change)`,
    ),
  noIdentity: (dir: string) =>
    new ShallotError(
      'NO_IDENTITY',
      'user',
      `no identity in ${dir}: create one with 'shallot keygen --state ${dir}'`,
    ),
  badKeyFile: (file: string, why: string) =>
    new ShallotError('BAD_KEY_FILE', 'user', `key file ${file} is unusable: ${why}`),
  needRoot: (what: string) =>
    new ShallotError('NEED_ROOT', 'user', `${what} needs root (CAP_NET_ADMIN): run it with sudo`),
  system: (what: string, cause: unknown) =>
    new ShallotError(
      'SYSTEM',
      'internal',
      `${what}: ${cause instanceof Error ? cause.message : String(cause)}`,
      { cause },
    ),
};

export function isUserError(e: unknown): e is ShallotError {
  return e instanceof ShallotError && e.kind === 'user';
}
