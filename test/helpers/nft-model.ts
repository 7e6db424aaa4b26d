/**
 * A deliberately small model of nftables' table bookkeeping, to answer a
 * RecordingRunner's `nft` commands: it knows which inet tables exist and
 * what text each was created with, and fails as nft does when a table to
 * delete is absent. That is enough to check that what a module adds is
 * what it removes; the rules themselves are tested on a real kernel by
 * the e2e tests.
 */
import type { RecordedCommand, ScriptedReply } from '../../src/sys/recording-runner.js';

const NO_SUCH = 'Error: Could not process rule: No such file or directory';

export class NftModel {
  /** name -> the text of its `table inet NAME { ... }` block ('' if made by `add table`). */
  readonly tables = new Map<string, string>();

  names(): string[] {
    return [...this.tables.keys()].sort();
  }

  /** The reply to one recorded `nft` command. */
  reply(c: RecordedCommand): ScriptedReply {
    const a = c.args;
    if (a[0] === '-f' && a[1] === '-') return this.script(c.input ?? '');
    if (a.join(' ') === 'list tables') {
      return {
        stdout: this.names()
          .map((n) => `table inet ${n}\n`)
          .join(''),
      };
    }
    if (a.join(' ') === '-j list tables') {
      const list = this.names().map((name) => ({ table: { family: 'inet', name, handle: 1 } }));
      return { stdout: JSON.stringify({ nftables: [{ metainfo: {} }, ...list] }) };
    }
    if (a[0] === 'list' && a[1] === 'table' && a[2] === 'inet' && a[3]) {
      const t = this.tables.get(a[3]);
      return t === undefined ? { status: 1, stderr: NO_SUCH } : { stdout: t };
    }
    if (a[0] === 'delete' && a[1] === 'table' && a[2] === 'inet' && a[3]) {
      if (!this.tables.delete(a[3])) return { status: 1, stderr: NO_SUCH };
      return {};
    }
    return { status: 1, stderr: `Error: the nft model does not know '${a.join(' ')}'` };
  }

  /** Apply a `nft -f -` script as one transaction: all or nothing. */
  private script(text: string): ScriptedReply {
    const next = new Map(this.tables);
    const lines = text.split('\n');
    for (let i = 0; i < lines.length; i += 1) {
      const line = (lines[i] as string).trim();
      if (line === '') continue;
      let m = /^add table inet (\S+)$/.exec(line);
      if (m?.[1]) {
        if (!next.has(m[1])) next.set(m[1], '');
        continue;
      }
      m = /^delete table inet (\S+)$/.exec(line);
      if (m?.[1]) {
        if (!next.delete(m[1])) return { status: 1, stderr: `/dev/stdin:${i + 1}:1: ${NO_SUCH}` };
        continue;
      }
      m = /^table inet (\S+) \{$/.exec(line);
      if (m?.[1]) {
        let depth = 1;
        const block = [line];
        while (depth > 0 && i + 1 < lines.length) {
          i += 1;
          const l = (lines[i] as string).trim();
          block.push(l);
          if (l.endsWith('{')) depth += 1;
          if (l === '}') depth -= 1;
        }
        if (depth !== 0) return { status: 1, stderr: 'Error: syntax error, unbalanced braces' };
        next.set(m[1], block.join('\n'));
        continue;
      }
      return { status: 1, stderr: `Error: the nft model does not know '${line}'` };
    }
    this.tables.clear();
    for (const [k, v] of next) this.tables.set(k, v);
    return {};
  }
}
