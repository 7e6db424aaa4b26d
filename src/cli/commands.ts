/** The commands of the `shallot` program, in the order --help lists them. */
import type { CommandSpec } from './args.js';
import { demoCommand, demoSpec } from './demo-command.js';
import { idCommand, idSpec, keygenCommand, keygenSpec } from './identity-commands.js';
import { bootstrapCommand, bootstrapSpec } from './bootstrap-command.js';
import { clientCommand, clientSpec } from './client-command.js';
import {
  descriptorCommand,
  descriptorSpec,
  exitCommand,
  exitSpec,
  relayCommand,
  relaySpec,
} from './relay-commands.js';
import { statusCommand, statusSpec } from './status-command.js';
import { tunnelCommand, tunnelSpec } from './tunnel-command.js';
import { testnetCommand, testnetSpec } from '../testnet/testnet-command.js';

export interface Command {
  spec: CommandSpec;
  run: (argv: string[]) => Promise<number>;
}

export const commands: Command[] = [
  { spec: testnetSpec, run: testnetCommand },
  { spec: demoSpec, run: demoCommand },
  { spec: keygenSpec, run: keygenCommand },
  { spec: idSpec, run: idCommand },
  { spec: tunnelSpec, run: tunnelCommand },
  { spec: clientSpec, run: clientCommand },
  { spec: relaySpec, run: relayCommand },
  { spec: exitSpec, run: exitCommand },
  { spec: descriptorSpec, run: descriptorCommand },
  { spec: bootstrapSpec, run: bootstrapCommand },
  { spec: statusSpec, run: statusCommand },
];
