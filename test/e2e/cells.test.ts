/**
 * Bad cells injected at a relay, end to end: real `shallot relay` and
 * `shallot exit` processes in namespaces, and a test-only client
 * (fixtures/cell-injector.ts) that builds a 2-hop circuit R1 -> E1 and
 * sends tampered, replayed, truncated and out-of-order cells into it.
 *
 *   I (injector) 10.11.0.2/16 --+
 *   R1 (relay)   10.12.0.2/16 --+-- R (router, ip_forward=1, x.x.0.1 on each side)
 *   E1 (exit)    10.13.0.2/16 --+
 *
 * Expected: R1 drops and counts every bad cell (badTag, replay, badCell),
 * none reaches E1, the circuit keeps answering PINGs, no process dies.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { e2eSkipReason, Lab, sweepStale, waitFor } from '../helpers/netns.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..', '..');
const CLI = path.join(root, 'dist', 'src', 'cli', 'main.js');
const INJECTOR = path.join(here, 'fixtures', 'cell-injector.js');
const NODE = process.execPath;
const NETWORK = 'celltest';
const PORT = 9101;

// The exit needs nftables for its masquerade table.
const skip = e2eSkipReason(['nft']);

type Phase = 'warmup' | 'tampered' | 'replayed' | 'truncated' | 'outOfOrder' | 'tooOld' | 'final';

interface InjectorReport {
  ok: boolean;
  error?: string;
  creates: number;
  extends: number;
  sent: Record<Phase, number>;
  pongs: Record<Phase, number>;
  backward: { badTag: number; replay: number; unknownPong: number };
  destroyed: number | null;
}

interface RelayStatus {
  running: boolean;
  circuits: number;
  relay: {
    cellsIn: number;
    drops: {
      badTag: number;
      replay: number;
      badCell: number;
      unknownCircuit: number;
      badRelayMessage: number;
    };
  };
}

function keygen(dir: string): void {
  execFileSync(NODE, [CLI, 'keygen', '--state', dir], { encoding: 'utf8' });
}

describe('cells injected at a relay', { skip: skip ?? false, timeout: 90_000 }, () => {
  const lab = new Lab();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'shallot-cells-'));
  const dirs = { R1: path.join(tmp, 'R1'), E1: path.join(tmp, 'E1') };
  const relaysFile = path.join(tmp, 'relays.txt');
  let nsI = '';
  let relay: ReturnType<Lab['spawn']>;
  let exit: ReturnType<Lab['spawn']>;

  const status = async (dir: string): Promise<RelayStatus> => {
    const r = await lab.exec(nsI, NODE, [CLI, 'status', '--state', dir, '--json'], 10_000);
    return JSON.parse(r.stdout) as RelayStatus;
  };
  const logs = () => `--- relay R1:\n${relay.output()}\n--- exit E1:\n${exit.output()}`;

  before(async () => {
    sweepStale();
    keygen(dirs.R1);
    keygen(dirs.E1);
    const nsR = lab.ns('r');
    nsI = lab.ns('i');
    const nsG = lab.ns('g');
    const nsE = lab.ns('e');
    lab.veth(nsR, 'ri', '10.11.0.1/16', nsI, 'eth0', '10.11.0.2/16');
    lab.veth(nsR, 'rg', '10.12.0.1/16', nsG, 'eth0', '10.12.0.2/16');
    lab.veth(nsR, 're', '10.13.0.1/16', nsE, 'eth0', '10.13.0.2/16');
    lab.sh(nsR, 'echo 1 > /proc/sys/net/ipv4/ip_forward');
    lab.sh(nsI, 'ip route add default via 10.11.0.1');
    lab.sh(nsG, 'ip route add default via 10.12.0.1');
    lab.sh(nsE, 'ip route add default via 10.13.0.1');
    relay = lab.spawn(nsG, NODE, [
      CLI,
      'relay',
      '--allow-private-extend',
      '--no-dht',
      '--state',
      dirs.R1,
      '--listen',
      `10.12.0.2:${PORT}`,
      '--network',
      NETWORK,
    ]);
    exit = lab.spawn(nsE, NODE, [
      CLI,
      'exit',
      '--allow-private-extend',
      '--no-dht',
      '--state',
      dirs.E1,
      '--listen',
      `10.13.0.2:${PORT}`,
      '--pool',
      '10.200.0.0/16',
      '--allow',
      '10.14.0.0/16',
      '--network',
      NETWORK,
    ]);
    const descriptor = (dir: string) => path.join(dir, 'descriptor.txt');
    await waitFor(
      'descriptors of R1 and E1',
      () => {
        if (relay.exitCode !== null || exit.exitCode !== null) {
          throw new Error(`a node exited at start\n${logs()}`);
        }
        return fs.existsSync(descriptor(dirs.R1)) && fs.existsSync(descriptor(dirs.E1));
      },
      15_000,
    );
    const lines = [dirs.R1, dirs.E1].map((d) => fs.readFileSync(descriptor(d), 'utf8').trim());
    fs.writeFileSync(relaysFile, lines.join('\n') + '\n');
  });

  after(async () => {
    await lab.cleanup();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('drops and counts tampered, replayed, truncated and too-old cells; the circuit keeps working', async (t) => {
    const start = await status(dirs.R1);
    const run = await lab.exec(nsI, NODE, [INJECTOR, relaysFile, NETWORK], 60_000);
    const line = run.stdout.trim().split('\n').pop() ?? '';
    let report: InjectorReport;
    try {
      report = JSON.parse(line) as InjectorReport;
    } catch {
      assert.fail(`injector printed no report (exit ${run.code}):\n${run.stdout}\n${run.stderr}`);
    }
    t.diagnostic(`injector: ${line}`);
    const what = `injector: ${line}\n${run.stderr}\n${logs()}`;
    assert.equal(report.error, undefined, what);

    // What went in, and what came back, per phase.
    assert.equal(report.sent.tampered, 20, what);
    assert.equal(report.sent.replayed, 2, what);
    assert.ok(report.sent.truncated >= 10, what);
    assert.equal(report.pongs.warmup, 5, `warmup PINGs answered\n${what}`);
    assert.equal(report.pongs.tampered, 0, `tampered cells answered\n${what}`);
    assert.equal(report.pongs.replayed, 0, `replayed cells answered\n${what}`);
    assert.equal(report.pongs.truncated, 0, `truncated cells answered\n${what}`);
    assert.equal(report.pongs.outOfOrder, 10, `out-of-order PINGs answered\n${what}`);
    assert.equal(report.pongs.tooOld, 0, `a cell older than the replay window answered\n${what}`);
    assert.equal(report.pongs.final, 5, `the circuit still works after it all\n${what}`);
    assert.equal(report.destroyed, null, `the circuit was destroyed\n${what}`);
    assert.equal(report.backward.badTag, 0, `bad backward cells at the injector\n${what}`);
    assert.equal(report.backward.replay, 0, `replayed backward cells at the injector\n${what}`);
    assert.equal(run.code, 0, what);

    // R1 counted every drop (its status file is rewritten once a second).
    const delta = (s: RelayStatus, k: keyof RelayStatus['relay']['drops']) =>
      s.relay.drops[k] - start.relay.drops[k];
    const want = { badTag: 20, replay: 3, badCell: report.sent.truncated };
    let r1 = start;
    await waitFor(
      "R1's drop counters",
      async () => {
        r1 = await status(dirs.R1);
        return (
          delta(r1, 'badTag') >= want.badTag &&
          delta(r1, 'replay') >= want.replay &&
          delta(r1, 'badCell') >= want.badCell
        );
      },
      5_000,
      250,
    ).catch(() => undefined);
    const drops = JSON.stringify(r1.relay.drops);
    t.diagnostic(`R1 drops: ${drops}`);
    assert.ok(delta(r1, 'badTag') >= want.badTag, `R1 badTag drops: ${drops}\n${what}`);
    assert.ok(delta(r1, 'replay') >= want.replay, `R1 replay drops: ${drops}\n${what}`);
    assert.ok(delta(r1, 'badCell') >= want.badCell, `R1 badCell drops: ${drops}\n${what}`);
    assert.equal(delta(r1, 'unknownCircuit'), 0, `R1 unknownCircuit drops: ${drops}`);

    // Nothing bad got past R1. An EXTEND resent after R1 had extended is
    // forwarded to E1 and fails its tag there: allow one per resend.
    const e1 = await status(dirs.E1);
    const e1drops = JSON.stringify(e1.relay.drops);
    assert.ok(e1.relay.drops.badTag <= report.extends - 1, `E1 badTag drops: ${e1drops}`);
    assert.equal(e1.relay.drops.replay, 0, `E1 replay drops: ${e1drops}`);
    assert.equal(e1.relay.drops.badCell, 0, `E1 badCell drops: ${e1drops}`);

    // Both nodes are alive and still report running.
    assert.equal(relay.exitCode, null, `relay R1 died\n${logs()}`);
    assert.equal(relay.signalCode, null, `relay R1 killed\n${logs()}`);
    assert.equal(exit.exitCode, null, `exit E1 died\n${logs()}`);
    assert.equal(exit.signalCode, null, `exit E1 killed\n${logs()}`);
    assert.ok(r1.running && e1.running, 'status reports both running');
  });
});
