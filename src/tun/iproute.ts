/**
 * Interface and route plumbing through iproute2, as wg-quick does. Each
 * call is one `ip` invocation through a CommandRunner (the real one unless
 * a test passes the recording twin); failures become one-line errors naming
 * the command. Whatever a caller sets up it undoes on stop (a TUN device and
 * everything on it vanish when its fd closes).
 */
import { errors } from '../errors.js';
import { CommandError, systemRunner, type CommandRunner } from '../sys/command-runner.js';

export const IP_MISSING = "the 'ip' command (iproute2) is missing: apt-get install iproute2";

export function ip(args: string[], runner: CommandRunner = systemRunner): string {
  try {
    return runner.run('ip', args).stdout;
  } catch (e) {
    if (e instanceof CommandError && e.missing) throw errors.badConfig(IP_MISSING);
    throw e;
  }
}

export function configureInterface(
  name: string,
  addresses: string[],
  mtu: number,
  runner: CommandRunner = systemRunner,
): void {
  ip(['link', 'set', 'dev', name, 'mtu', String(mtu)], runner);
  for (const a of addresses) {
    const v6 = a.includes(':');
    ip([...(v6 ? ['-6'] : []), 'addr', 'add', a, 'dev', name], runner);
  }
  ip(['link', 'set', 'dev', name, 'up'], runner);
}
