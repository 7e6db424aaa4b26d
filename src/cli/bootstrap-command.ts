/**
 * `shallot bootstrap`: a DHT bootstrap node for a private overlay.
 */
import fs from 'node:fs';
import { DhtNode } from '../discovery/dht-node.js';
import { parseHostPort } from '../net/cidr.js';
import { parseArgs, requireString, type CommandSpec } from './args.js';
import { bindError, common, loggerFor, startReporting, untilSignal } from './node-common.js';

export const bootstrapSpec: CommandSpec = {
  name: 'bootstrap',
  summary: 'run a DHT bootstrap node for a private overlay network',
  usage: ['shallot bootstrap --listen HOST:PORT [--state DIR]'],
  details:
    'A DHT node that needs no other: give its address to relays, exits and clients of a\n' +
    'private network with --bootstrap HOST:PORT. Production networks use the mainline DHT\n' +
    'and need none of their own.',
  options: [
    { name: 'listen', type: 'string', value: 'HOST:PORT', help: 'UDP address of the DHT node' },
    { name: 'state', type: 'string', value: 'DIR', help: 'where to write status.json (optional)' },
    common.logLevel,
    common.metrics,
    common.metricsAllowRemote,
  ],
  examples: ['shallot bootstrap --listen 10.0.0.1:6881'],
};

export async function bootstrapCommand(argv: string[]): Promise<number> {
  const p = parseArgs(bootstrapSpec, argv);
  const log = loggerFor(p);
  const listen = parseHostPort(
    requireString(p, 'listen', 'the UDP address, e.g. 10.0.0.1:6881'),
    '--listen',
  );
  const dir = typeof p.state === 'string' ? p.state : null;
  if (dir) fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const dht = new DhtNode({ bootstrap: false, host: listen.host, port: listen.port, log });
  try {
    await dht.start();
  } catch (e) {
    throw bindError(e, listen.host, listen.port);
  }
  log.info(`DHT bootstrap node on ${listen.host}:${listen.port}`);
  let stopReporting: (state: string) => Promise<void>;
  try {
    stopReporting = await startReporting(p, dir, (state) => ({
      role: 'bootstrap',
      state,
      pid: process.pid,
      updatedAt: new Date().toISOString(),
      memory: { rss: process.memoryUsage().rss },
      dht: dht.describe(),
    }));
  } catch (e) {
    dht.stop();
    throw e;
  }
  return untilSignal(log, () => {
    dht.stop();
    void stopReporting('stopped');
  });
}
