/**
 * Interface and route plumbing through iproute2, as wg-quick does. Each
 * call is one `ip` invocation; failures become one-line errors naming the
 * command. Whatever a caller sets up it undoes on stop (a TUN device and
 * everything on it vanish when its fd closes).
 */
import { execFileSync } from 'node:child_process';
import { errors } from '../errors.js';

export function ip(args: string[]): string {
  try {
    return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    const err = e as { stderr?: string; code?: string };
    if (err.code === 'ENOENT') {
      throw errors.badConfig("the 'ip' command (iproute2) is missing: apt-get install iproute2");
    }
    const why = (err.stderr ?? String(e)).trim().split('\n')[0];
    throw errors.system(`ip ${args.join(' ')}`, why);
  }
}

export function configureInterface(name: string, addresses: string[], mtu: number): void {
  ip(['link', 'set', 'dev', name, 'mtu', String(mtu)]);
  for (const a of addresses) {
    const v6 = a.includes(':');
    ip([...(v6 ? ['-6'] : []), 'addr', 'add', a, 'dev', name]);
  }
  ip(['link', 'set', 'dev', name, 'up']);
}
