#!/usr/bin/env node
/**
 * The `shallot` command. It parses arguments and configuration and calls
 * the library; user mistakes become one line on stderr and exit code 2,
 * never a stack trace.
 */
import './v8-tuning.js';
import { isUserError, ShallotError } from '../errors.js';
import { formatHelp } from './args.js';
import { commands } from './commands.js';

function overview(): string {
  const width = Math.max(...commands.map((c) => c.spec.name.length));
  return [
    'shallot: an onion-routing overlay node (client, relay, exit) and a DTLS point-to-point tunnel',
    '',
    'Usage: shallot COMMAND [OPTIONS]      (shallot COMMAND --help for its options)',
    '',
    'Commands:',
    ...commands.map((c) => `  ${c.spec.name.padEnd(width)}  ${c.spec.summary}`),
    '',
    'A first tunnel between two hosts (as root on both):',
    '  shallot keygen --state /var/lib/shallot            # on each host; prints its node id',
    '  shallot tunnel --state /var/lib/shallot --listen 192.0.2.1:7000 --address 10.9.0.1/24 --peer ID_B',
    '  shallot tunnel --state /var/lib/shallot --connect 192.0.2.1:7000 --address 10.9.0.2/24 --peer ID_A',
  ].join('\n');
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    const topic = name === 'help' ? commands.find((c) => c.spec.name === rest[0]) : undefined;
    console.log(topic ? formatHelp(topic.spec) : overview());
    return 0;
  }
  if (name === '--version') {
    console.log('shallot 0.1.0');
    return 0;
  }
  const cmd = commands.find((c) => c.spec.name === name);
  if (!cmd) {
    console.error(`shallot: unknown command '${name}' (see shallot --help)`);
    return 2;
  }
  // Options after a lone '--' belong to another program (testnet exec).
  const own = rest.includes('--') ? rest.slice(0, rest.indexOf('--')) : rest;
  if (own.includes('--help') || own.includes('-h')) {
    console.log(formatHelp(cmd.spec));
    return 0;
  }
  return cmd.run(rest);
}

/**
 * Once a command is done (a node stopped, or failed), leave: a library
 * timer or socket that lingers must not keep the process alive. Output is
 * given a moment to drain first.
 */
function leave(code: number): void {
  process.exitCode = code;
  setTimeout(() => process.exit(code), 1500).unref();
}

main(process.argv.slice(2)).then(
  (code) => leave(code),
  (e: unknown) => {
    if (isUserError(e)) {
      console.error(`shallot: ${e.message}`);
      leave(2);
    } else if (e instanceof ShallotError) {
      console.error(`shallot: ${e.message}`);
      leave(1);
    } else {
      console.error('shallot: internal error:', e);
      leave(1);
    }
  },
);
