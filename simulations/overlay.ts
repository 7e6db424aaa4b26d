/**
 * The overlay simulator: the real node code (relays, exits, clients, DTLS
 * links) at scale over the in-memory network, in one process.
 *
 *   node dist/simulations/overlay.js [--relays N] [--exits M] [--clients K]
 *        [--loss P] [--seconds S] [--seed X] ...      (--help for all)
 *
 * Prints progress lines, a summary, and one `SIM_JSON {...}` line last.
 * Exit status 0 on success, 1 if an invariant failed or on an internal
 * error, 2 on a bad argument (one line on stderr). The process ends by
 * itself once every node is stopped: nothing here calls process.exit().
 */
import { parseSimArgs, SimArgError, USAGE } from './args.js';
import { runSimulation } from './sim.js';

async function main(argv: string[]): Promise<number> {
  let options;
  try {
    options = parseSimArgs(argv);
  } catch (e) {
    if (e instanceof SimArgError) {
      console.error(`overlay: ${e.message}`);
      return 2;
    }
    throw e;
  }
  if (options === null) {
    console.log(USAGE);
    return 0;
  }
  const result = await runSimulation(options, (line) => console.log(line));
  for (const line of result.lines) console.log(line);
  console.log(`SIM_JSON ${JSON.stringify(result.json)}`);
  if (result.failures.length > 0) {
    console.error(`overlay: invariant failed: ${result.failures.join('; ')}`);
    return 1;
  }
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    console.error('overlay: internal error:', e);
    process.exitCode = 1;
  },
);
