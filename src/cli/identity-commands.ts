/** `shallot keygen` and `shallot id`. */
import { identityExists, keygen, loadIdentity } from '../identity.js';
import { errors } from '../errors.js';
import { parseArgs, requireString, type CommandSpec } from './args.js';

export const keygenSpec: CommandSpec = {
  name: 'keygen',
  summary: 'create a node identity (Ed25519), onion key and link certificate',
  usage: ['shallot keygen --state DIR [--force]'],
  details:
    'Creates DIR (0700) if needed and writes the keys into it, each file 0600. Prints the node id\n' +
    '(the Ed25519 public key, 64 hex digits) on its last line: give it to the peers that must\n' +
    'recognise this node. Refuses to replace an existing identity unless --force is given.',
  options: [
    { name: 'state', type: 'string', value: 'DIR', help: 'state directory to hold the keys' },
    { name: 'force', type: 'flag', help: 'replace an existing identity (the node id changes)' },
  ],
  examples: ['shallot keygen --state /var/lib/shallot'],
};

export async function keygenCommand(argv: string[]): Promise<number> {
  const p = parseArgs(keygenSpec, argv);
  const dir = requireString(p, 'state', 'the directory to keep the keys in');
  const replaced = identityExists(dir);
  const identity = keygen(dir, { force: p.force === true });
  console.log(
    replaced ? `replaced the identity in ${dir}; node id:` : `created identity in ${dir}; node id:`,
  );
  console.log(identity.id);
  return 0;
}

export const idSpec: CommandSpec = {
  name: 'id',
  summary: 'print the node id kept in a state directory',
  usage: ['shallot id --state DIR'],
  options: [{ name: 'state', type: 'string', value: 'DIR', help: 'state directory' }],
};

export async function idCommand(argv: string[]): Promise<number> {
  const p = parseArgs(idSpec, argv);
  const dir = requireString(p, 'state', 'the state directory made by shallot keygen');
  if (!identityExists(dir)) throw errors.noIdentity(dir);
  console.log(loadIdentity(dir).id);
  return 0;
}
