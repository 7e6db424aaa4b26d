/**
 * Corpora kept in the repository (test/fuzz/corpus/<target name>/, one
 * input per file, named by a hash of its bytes) and seeds taken from the
 * protocol's test vectors (every hex field of every ```vector``` block of
 * docs/protocol.md, offered to every target: the engine keeps those that
 * reach new code).
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The checkout: this file is dist/test/fuzz/corpus.js. */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const CORPUS_ROOT = path.join(REPO_ROOT, 'test', 'fuzz', 'corpus');

/** A target's directory: its name, '/' kept as a directory separator. */
export function corpusDir(root: string, target: string): string {
  const parts = target.split('/').filter((p) => p !== '' && p !== '.' && p !== '..');
  return path.join(root, ...parts);
}

/** The inputs stored for a target (none if it has no directory yet). */
export function readCorpus(root: string, target: string): Buffer[] {
  const dir = corpusDir(root, target);
  let names: string[];
  try {
    names = readdirSync(dir).sort();
  } catch {
    return [];
  }
  const out: Buffer[] = [];
  for (const n of names) {
    const file = path.join(dir, n);
    if (statSync(file).isFile()) out.push(readFileSync(file));
  }
  return out;
}

export function inputName(input: Buffer): string {
  return createHash('sha256').update(input).digest('hex').slice(0, 16);
}

/** Replace a target's stored files (only plain files: nested targets' dirs stay). */
export function writeCorpus(root: string, target: string, inputs: readonly Buffer[]): void {
  const dir = corpusDir(root, target);
  mkdirSync(dir, { recursive: true });
  for (const n of readdirSync(dir)) {
    const file = path.join(dir, n);
    if (statSync(file).isFile()) rmSync(file);
  }
  for (const input of inputs) writeFileSync(path.join(dir, inputName(input)), input);
}

/** Every hex field (2 bytes or more) of the vectors in docs/protocol.md. */
export function protocolVectorInputs(file = path.join(REPO_ROOT, 'docs', 'protocol.md')): Buffer[] {
  let doc: string;
  try {
    doc = readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  const seen = new Set<string>();
  const out: Buffer[] = [];
  for (const block of doc.matchAll(/```vector [^\n]*\n([\s\S]*?)```/g)) {
    for (const line of (block[1] ?? '').split('\n')) {
      const m = /^\s*[\w.-]+:\s*([0-9a-fA-F]+)\s*$/.exec(line);
      const hex = m?.[1]?.toLowerCase();
      if (!hex || hex.length < 4 || hex.length % 2 !== 0 || seen.has(hex)) continue;
      seen.add(hex);
      out.push(Buffer.from(hex, 'hex'));
    }
  }
  return out;
}
