// The part of sodium-native's API that shallot uses (the package ships no
// type declarations). Every function writes into caller-provided buffers.
declare module 'sodium-native' {
  export const crypto_sign_SEEDBYTES: number;
  export const crypto_sign_PUBLICKEYBYTES: number;
  export const crypto_sign_SECRETKEYBYTES: number;
  export const crypto_sign_BYTES: number;
  export const crypto_scalarmult_BYTES: number;
  export const crypto_scalarmult_SCALARBYTES: number;
  export function crypto_sign_seed_keypair(pk: Buffer, sk: Buffer, seed: Buffer): void;
  export function crypto_sign_detached(sig: Buffer, message: Buffer, sk: Buffer): void;
  export function crypto_sign_verify_detached(sig: Buffer, message: Buffer, pk: Buffer): boolean;
  export function crypto_scalarmult_base(q: Buffer, n: Buffer): void;
  export function crypto_scalarmult(q: Buffer, n: Buffer, p: Buffer): void;
  export function randombytes_buf(buf: Buffer): void;
  export function sodium_memzero(buf: Buffer): void;
  export function sodium_malloc(size: number): Buffer;
  export function crypto_stream_xchacha20(c: Buffer, n: Buffer, k: Buffer): void;
  export function crypto_stream_xchacha20_xor_ic(
    c: Buffer,
    m: Buffer,
    n: Buffer,
    ic: number,
    k: Buffer,
  ): void;
  export function crypto_onetimeauth(out: Buffer, input: Buffer, k: Buffer): void;
  export function crypto_onetimeauth_verify(h: Buffer, input: Buffer, k: Buffer): boolean;
  /** BLAKE2b of `input` into `out` (16 to 64 bytes), keyed by `key` (16 to 64 bytes) if given. */
  export function crypto_generichash(out: Buffer, input: Buffer, key?: Buffer): void;
  export function sodium_memcmp(a: Buffer, b: Buffer): boolean;
}
