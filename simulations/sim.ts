/**
 * One simulation run: build the overlay (simulations/world.ts), start the
 * clients, offer traffic through every ready circuit, kill some relays at
 * the planned moment, stop, collect the nodes' own counters and what the
 * simulator observed, tear everything down.
 *
 * All times are wall-clock milliseconds (performance.now()) since the
 * clients were started: the nodes run on real timers (their retransmit,
 * keepalive and dead-peer timers are the production values), and the
 * in-memory network delivers each datagram on the next turn of the event
 * loop (setImmediate), with no latency model beyond that.
 */
import { performance } from 'node:perf_hooks';
import type { Lease } from '../client/client-node.js';
import type { Descriptor } from '../src/descriptor/descriptor.js';
import { MemoryNetwork } from '../src/link/transport.js';
import type { SimOptions } from './args.js';
import { probePacket, RTT_SAMPLES } from './packets.js';
import { DialWatch, Reservoir, shuffle, stream, summarize, type Summary } from './util.js';
import {
  makeClient,
  slash16,
  startNode,
  stopNode,
  type SimClientParts,
  type SimNode,
} from './world.js';

/** How often the traffic source runs. */
const TRAFFIC_TICK_MS = 20;
/** Credit a client can bank (packets), so a stalled loop does not cause a burst. */
const MAX_BURST_PACKETS = 64;
/** After the run, time for what is in flight to arrive before counting. */
const DRAIN_MS = 1000;
/** The kill waits for every client's first circuit, but not beyond this fraction of the run. */
const KILL_LATEST = 0.9;
/** Lines of per-relay drops in the human-readable summary, at most. */
const DROP_LINES = 10;

interface SimClient extends SimClientParts {
  index: number;
  lease: Buffer | null;
  dest: Buffer;
  startedAt: number;
  firstCircuitAt: number | null;
  circuits: number;
  /** Node ids of the path of the latest circuit. */
  path: string[] | null;
  primaryGuard: string | null;
  seq: number;
  credit: number;
  sentBefore: number;
  sentAfter: number;
  echoedBefore: number;
  echoedAfter: number;
  /** Its circuit ran through a relay that was killed: where that relay was. */
  affected: 'guard' | 'middle' | null;
  recoveredAfterMs: number | null;
}

export interface SimResult {
  lines: string[];
  json: Record<string, unknown>;
  /** Broken invariants (empty on success). */
  failures: string[];
}

function pct(n: number, d: number): string {
  return d === 0 ? 'n/a' : `${((100 * n) / d).toFixed(1)}%`;
}

function ratio(n: number, d: number): number | null {
  return d === 0 ? null : Number((n / d).toFixed(4));
}

function fmt(s: Summary, unit: string): string {
  if (s.n === 0) return 'none';
  return `median ${s.median} ${unit}, p90 ${s.p90} ${unit}, max ${s.max} ${unit} (n=${s.n})`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Sum of numeric fields, by name, over many counter objects. */
function sumBy(objs: Record<string, number>[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const o of objs) for (const [k, v] of Object.entries(o)) out[k] = (out[k] ?? 0) + v;
  return out;
}

function nonZero(o: Record<string, number>): string {
  const parts = Object.entries(o)
    .filter(([, v]) => v > 0)
    .map(([k, v]) => `${k} ${v}`);
  return parts.length > 0 ? parts.join(', ') : 'none';
}

export async function runSimulation(
  o: SimOptions,
  progress: (line: string) => void,
): Promise<SimResult> {
  const setupStart = performance.now();
  const lossRandom = stream(o.seed, 1);
  let lost = 0;
  const net: MemoryNetwork = new MemoryNetwork(() => {
    const r = lossRandom();
    if (r < net.lossRate) lost += 1;
    return r;
  });
  net.lossRate = o.loss;

  const dialWatch = new DialWatch();

  // --- the overlay -------------------------------------------------------------
  const nodes: SimNode[] = [];
  const clients: SimClient[] = [];
  /** The traffic and progress intervals (two at most), and the kill's timer. */
  const timers: NodeJS.Timeout[] = [];
  let killTimer: NodeJS.Timeout | undefined;
  let stopped = false;
  /** Once the run is over, the clients' notes (about being stopped) are not news. */
  let over = false;
  const teardown = () => {
    if (stopped) return;
    stopped = true;
    for (const t of timers) clearInterval(t);
    clearTimeout(killTimer);
    for (const c of clients) c.node.stop();
    for (const n of nodes) if (!n.killed) stopNode(n);
  };
  try {
    for (let k = 0; k < o.relays + o.exits; k += 1) {
      nodes.push(await startNode(net, k, o.nets, k >= o.relays, dialWatch));
    }
    const relays = nodes.slice(0, o.relays);
    const byId = new Map(nodes.map((n) => [n.id, n]));
    const descriptors = nodes.map((n) => n.desc);
    const setupMs = performance.now() - setupStart;
    progress(
      `setup: ${o.relays} relays + ${o.exits} exits in ${o.nets} /16s, identities and signed ` +
        `descriptors, in ${(setupMs / 1000).toFixed(2)} s (wall)`,
    );

    // --- observations --------------------------------------------------------------
    const runStart = performance.now();
    const now = () => performance.now() - runStart;
    const killAtMs = o.killAt * o.seconds * 1000;
    let killedAt: number | null = null;
    const rtt = new Reservoir(RTT_SAMPLES, stream(o.seed, 2));
    /** Built circuits through each node, by its position in them. */
    const hops = new Map(nodes.map((n) => [n.id, { guard: 0, middle: 0, exit: 0 }]));
    const guardOf = new Map<string, number>();
    let circuitsSeen = 0;
    let reused16 = 0;
    let reusedRelay = 0;
    let rebuilds = 0;
    let otherRebuilds = 0;
    const recoveries: number[] = [];
    const recoveriesByPosition = { guard: [] as number[], middle: [] as number[] };

    const onCircuit = (c: SimClient, path: Descriptor[], lease: Lease) => {
      const t = now();
      circuitsSeen += 1;
      const hosts = path.map((d) => d.addresses[0]?.host ?? '?');
      if (new Set(hosts.map(slash16)).size !== path.length) reused16 += 1;
      if (new Set(path.map((d) => d.id)).size !== path.length) reusedRelay += 1;
      path.forEach((d, i) => {
        const h = hops.get(d.id);
        if (!h) return;
        if (i === 0) h.guard += 1;
        else if (i === path.length - 1) h.exit += 1;
        else h.middle += 1;
      });
      c.lease = Buffer.from(lease.v4);
      c.path = path.map((d) => d.id);
      if (c.circuits === 0) {
        c.firstCircuitAt = t;
        c.primaryGuard = path[0]?.id ?? null;
        if (c.primaryGuard) guardOf.set(c.primaryGuard, (guardOf.get(c.primaryGuard) ?? 0) + 1);
      } else {
        rebuilds += 1;
        if (c.affected && c.recoveredAfterMs === null && killedAt !== null) {
          c.recoveredAfterMs = t - killedAt;
          recoveries.push(c.recoveredAfterMs);
          recoveriesByPosition[c.affected].push(c.recoveredAfterMs);
        } else otherRebuilds += 1;
      }
      c.circuits += 1;
    };

    for (let i = 0; i < o.clients; i += 1) {
      const c: SimClient = {
        index: i,
        lease: null,
        dest: Buffer.from([10, 7, (i >> 8) & 0xff, 2 + (i % 250)]),
        startedAt: 0,
        firstCircuitAt: null,
        circuits: 0,
        path: null,
        primaryGuard: null,
        seq: 0,
        credit: 0,
        sentBefore: 0,
        sentAfter: 0,
        echoedBefore: 0,
        echoedAfter: 0,
        affected: null,
        recoveredAfterMs: null,
        ...makeClient(net, i, descriptors, {
          onCircuit: (path, lease) => onCircuit(c, path, lease),
          onEcho: (sentAt) => {
            if (killedAt === null || sentAt < killedAt) c.echoedBefore += 1;
            else c.echoedAfter += 1;
            rtt.offer(now() - sentAt);
          },
          onProgress: o.verbose
            ? (text) => {
                if (!over) {
                  progress(`t=${(now() / 1000).toFixed(1).padStart(5)}s  client ${i}: ${text}`);
                }
              }
            : undefined,
        }),
      };
      clients.push(c);
    }
    for (const c of clients) {
      c.startedAt = now();
      await c.node.start();
    }
    progress(`started ${o.clients} clients; each builds a 3-hop circuit (times are wall clock)`);

    // --- traffic ---------------------------------------------------------------------
    let lastTick = now();
    const traffic = setInterval(() => {
      const t = now();
      const dt = (t - lastTick) / 1000;
      lastTick = t;
      if (o.rate === 0) return;
      for (const c of clients) {
        if (!c.node.ready || !c.lease) {
          c.credit = 0;
          continue;
        }
        c.credit = Math.min(c.credit + o.rate * dt, MAX_BURST_PACKETS);
        const n = Math.floor(c.credit);
        if (n === 0) continue;
        c.credit -= n;
        const batch: Buffer[] = [];
        for (let k = 0; k < n; k += 1) {
          batch.push(probePacket(c.lease, c.dest, o.size, c.index, c.seq, t));
          c.seq += 1;
        }
        if (killedAt === null) c.sentBefore += n;
        else c.sentAfter += n;
        c.device.inject(batch);
      }
    }, TRAFFIC_TICK_MS);
    timers.push(traffic);

    // --- progress --------------------------------------------------------------------
    const totals = () => {
      let sent = 0;
      let echoed = 0;
      let ready = 0;
      for (const c of clients) {
        sent += c.sentBefore + c.sentAfter;
        echoed += c.echoedBefore + c.echoedAfter;
        if (c.node.ready) ready += 1;
      }
      return { sent, echoed, ready };
    };
    if (o.progress > 0) {
      timers.push(
        setInterval(() => {
          const t = totals();
          progress(
            `t=${(now() / 1000).toFixed(1).padStart(5)}s  ready ${t.ready}/${o.clients}  ` +
              `circuits ${circuitsSeen} (rebuilds ${rebuilds})  sent ${t.sent}  ` +
              `echoed ${t.echoed} (${pct(t.echoed, t.sent)})  net lost ${lost}` +
              (dialWatch.crossed > 0 ? `  crossed dials ${dialWatch.crossed}` : ''),
          );
        }, o.progress * 1000),
      );
    }

    // --- the kill ----------------------------------------------------------------------
    const killCount =
      o.kill > 0 ? Math.min(o.relays - 2, Math.max(1, Math.round(o.kill * o.relays))) : 0;
    const victims: SimNode[] = [];
    const killEvent = () => {
      const carried = new Map<string, number>();
      for (const c of clients) {
        if (!c.node.ready || !c.path) continue;
        for (const id of c.path) carried.set(id, (carried.get(id) ?? 0) + 1);
      }
      const order =
        o.killPick === 'busy'
          ? [...relays].sort((a, b) => (carried.get(b.id) ?? 0) - (carried.get(a.id) ?? 0))
          : shuffle(relays, stream(o.seed, 3));
      victims.push(...order.slice(0, killCount));
      killedAt = now();
      const dead = new Set(victims.map((v) => v.id));
      let affected = 0;
      for (const c of clients) {
        if (!c.node.ready || !c.path) continue;
        if (dead.has(c.path[0] as string)) c.affected = 'guard';
        else if (c.path.some((id) => dead.has(id))) c.affected = 'middle';
        if (c.affected) affected += 1;
      }
      for (const v of victims) {
        v.killed = true;
        if (o.killMode === 'crash') v.transport.crash();
        stopNode(v);
      }
      progress(
        `t=${(killedAt / 1000).toFixed(1).padStart(5)}s  killed ${victims.length} relays (${o.killMode}, ` +
          `${o.killPick}): ${victims.map((v) => `${v.host}[${carried.get(v.id) ?? 0}]`).join(' ')}; ` +
          `${affected} clients' circuits ran through them`,
      );
    };
    // Killing relays before the circuits exist would measure nothing: the
    // kill waits for every client's first circuit, up to KILL_LATEST of the run.
    const killWhenBuilt = () => {
      if (stopped) return;
      const waiting = clients.some((c) => c.firstCircuitAt === null);
      if (waiting && now() < KILL_LATEST * o.seconds * 1000) {
        killTimer = setTimeout(killWhenBuilt, 50);
        return;
      }
      killEvent();
    };
    if (killCount > 0) killTimer = setTimeout(killWhenBuilt, killAtMs);

    await sleep(o.seconds * 1000);
    clearInterval(traffic);
    const runMs = now();
    await sleep(DRAIN_MS);

    over = true;
    // --- collect (before stopping: stopping changes counters) -----------------------------
    const clientCounters = clients.map((c) => ({
      ...c.node.counters,
      drops: { ...c.node.counters.drops },
    }));
    const readyAtEnd = clients.filter((c) => c.node.ready).length;
    const describeGuards = clients.map(
      (c) => ((c.node.describe() as { guards: string[] }).guards ?? []).length,
    );
    const perNode = nodes.map((n) => ({
      host: n.host,
      id: n.id.slice(0, 16),
      role: n.exit ? 'exit' : 'relay',
      killed: n.killed,
      builtThrough: (() => {
        const h = hops.get(n.id);
        return h ? h.guard + h.middle + h.exit : 0;
      })(),
      asGuard: hops.get(n.id)?.guard ?? 0,
      asMiddle: hops.get(n.id)?.middle ?? 0,
      asExit: hops.get(n.id)?.exit ?? 0,
      circuitsCreated: n.node.counters.circuitsCreated,
      circuitsOpen: n.node.circuits,
      cellsIn: n.node.counters.cellsIn,
      cellsOut: n.node.counters.cellsOut,
      extends: n.node.counters.extends,
      extendFailures: n.node.counters.extendFailures,
      datagramsIn: n.transport.received,
      datagramsOut: n.transport.sent,
      drops: { ...n.node.counters.drops },
      linkDrops: { ...n.node.endpoint.counters.drops },
      outboxDropped: n.node.outbox.dropped,
      linksUp: n.node.endpoint.counters.linksUp,
      linksDown: n.node.endpoint.counters.linksDown,
      exitDrops: n.exit ? { ...n.exit.counters.drops } : null,
      leases: n.exit ? n.exit.counters.leases : null,
      echoHost: n.device
        ? { echoed: n.device.echoed, ignored: n.device.ignored, queueDrops: n.device.queueDrops }
        : null,
    }));
    const netStats = { delivered: net.delivered, lost, toDeadAddress: net.dropped - lost };

    // --- tear down -----------------------------------------------------------------------
    teardown();
    await sleep(50);
    const pendingTimers = process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;

    // --- the report ----------------------------------------------------------------------
    const lines: string[] = [];
    const say = (s: string) => lines.push(s);
    const firstTimes = clients
      .filter((c) => c.firstCircuitAt !== null)
      .map((c) => (c.firstCircuitAt as number) - c.startedAt);
    const ttfc = summarize(firstTimes, 0);
    const built = clientCounters.reduce((s, c) => s + c.circuitsBuilt, 0);
    const failed = clientCounters.reduce((s, c) => s + c.circuitFailures, 0);
    const withCircuit = firstTimes.length;
    const sentBefore = clients.reduce((s, c) => s + c.sentBefore, 0);
    const sentAfter = clients.reduce((s, c) => s + c.sentAfter, 0);
    const echoedBefore = clients.reduce((s, c) => s + c.echoedBefore, 0);
    const echoedAfter = clients.reduce((s, c) => s + c.echoedAfter, 0);
    const sent = sentBefore + sentAfter;
    const echoed = echoedBefore + echoedAfter;
    const duplicates = clients.reduce((s, c) => s + c.device.stats.duplicates, 0);
    const foreign = clients.reduce((s, c) => s + c.device.stats.foreign, 0);
    const expected = (1 - o.loss) ** 6;
    const rttSummary = summarize(rtt.values, 2);
    const affected = clients.filter((c) => c.affected !== null).length;
    const affectedGuard = clients.filter((c) => c.affected === 'guard').length;
    const recoveryGuard = summarize(recoveriesByPosition.guard, 0);
    const recoveryMiddle = summarize(recoveriesByPosition.middle, 0);
    const recovery = summarize(recoveries, 0);
    const relayLoad = summarize(
      perNode.filter((n) => n.role === 'relay').map((n) => n.builtThrough),
      0,
    );
    const relayCreated = summarize(
      perNode.filter((n) => n.role === 'relay').map((n) => n.circuitsCreated),
      0,
    );
    const idleRelays = perNode.filter((n) => n.role === 'relay' && n.builtThrough === 0).length;
    const idleCreated = perNode.filter((n) => n.role === 'relay' && n.circuitsCreated === 0).length;
    const exitLoad = perNode.filter((n) => n.role === 'exit').map((n) => n.asExit);
    const exitAsMiddle = perNode.filter((n) => n.role === 'exit').map((n) => n.asMiddle);
    const histogram: Record<string, number> = {};
    for (const count of guardOf.values()) histogram[count] = (histogram[count] ?? 0) + 1;
    const maxPerGuard = Math.max(0, ...guardOf.values());
    const guardIsExit = [...guardOf.keys()].filter((id) => byId.get(id)?.exit).length;
    const relayDrops = sumBy(perNode.map((n) => n.drops));
    const linkDrops = sumBy(perNode.map((n) => n.linkDrops));
    const exitDrops = sumBy(perNode.flatMap((n) => (n.exitDrops ? [n.exitDrops] : [])));
    const clientDrops = sumBy(clientCounters.map((c) => c.drops));
    const outboxDropped = perNode.reduce((s, n) => s + n.outboxDropped, 0);
    const dropTotal = (n: (typeof perNode)[number]) =>
      Object.values(n.drops).reduce((s, v) => s + v, 0) +
      Object.values(n.linkDrops).reduce((s, v) => s + v, 0) +
      (n.exitDrops ? Object.values(n.exitDrops).reduce((s, v) => s + v, 0) : 0) +
      n.outboxDropped;
    const droppers = perNode
      .map((n) => ({ n, total: dropTotal(n) }))
      .filter((x) => x.total > 0)
      .sort((a, b) => b.total - a.total);

    say(
      `overlay: ${o.relays} relays + ${o.exits} exits in ${o.nets} /16s, ${o.clients} clients, ` +
        `loss ${o.loss}, ${o.seconds} s, seed ${o.seed}; all times wall clock`,
    );
    say(
      `circuits: ${built} built (${withCircuit} first circuits, ${rebuilds} rebuilds), ` +
        `${failed} failed (client counters: build attempts that failed and circuits lost); ` +
        `${withCircuit}/${o.clients} clients got a circuit, ${readyAtEnd} ready at the end`,
    );
    say(`time to first circuit: ${fmt(ttfc, 'ms')}`);
    say(
      `traffic: ${sent} packets sent, ${echoed} echoed back: delivery ${pct(echoed, sent)} ` +
        `(before the kill ${pct(echoedBefore, sentBefore)} of ${sentBefore}, ` +
        `after ${pct(echoedAfter, sentAfter)} of ${sentAfter}); ` +
        `loss alone predicts ${(100 * expected).toFixed(1)}% (6 link crossings)`,
    );
    say(
      `round trip through 3 hops and back: ${fmt(rttSummary, 'ms')}; duplicates ${duplicates}, ` +
        `stray packets ${foreign}`,
    );
    if (killCount > 0) {
      say(
        `relay deaths: ${victims.length} killed (${o.killMode}, ${o.killPick}) at ` +
          `${killedAt === null ? 'never' : `${((killedAt as number) / 1000).toFixed(1)} s`}; ` +
          `${affected} clients affected (${affectedGuard} lost their guard), ` +
          `${recoveries.length} rebuilt; other rebuilds ${otherRebuilds}`,
      );
      say(`  time from the kill to a new circuit: ${fmt(recovery, 'ms')}`);
      say(
        `  by the dead relay's position: guard ${fmt(recoveryGuard, 'ms')}; ` +
          `middle ${fmt(recoveryMiddle, 'ms')}`,
      );
    } else {
      say(`relay deaths: none (${o.kill === 0 ? '--kill 0' : 'too few relays: two must stay'})`);
    }
    say(
      `load per relay (built circuits through it, ${o.relays} non-exit relays): ` +
        `min ${relayLoad.min}, median ${relayLoad.median}, max ${relayLoad.max}; ${idleRelays} carried none`,
    );
    say(
      `  relay counter circuitsCreated (attempts included): min ${relayCreated.min}, ` +
        `median ${relayCreated.median}, max ${relayCreated.max}; ${idleCreated} created none`,
    );
    say(
      `  circuits per exit as the exit: ${exitLoad.join(' ')}; as a middle: ${exitAsMiddle.join(' ')}`,
    );
    say(
      `guards: ${guardOf.size} distinct first-circuit guards for ${withCircuit} clients, at most ` +
        `${maxPerGuard} clients on one; clients per guard ${JSON.stringify(histogram)}; ` +
        `${guardIsExit} were exits; guard list sizes ${JSON.stringify(summarize(describeGuards, 0))}`,
    );
    say(
      `diversity: ${reused16} of ${circuitsSeen} circuits reused a /16, ${reusedRelay} reused a relay`,
    );
    say(
      `drops, relay counters (sum over ${nodes.length} relays and exits): ${nonZero(relayDrops)}`,
    );
    say(`drops, link counters: ${nonZero(linkDrops)}; outbox ${outboxDropped}`);
    say(`drops, exit counters: ${nonZero(exitDrops)}`);
    say(`drops, client counters: ${nonZero(clientDrops)}`);
    for (const { n, total } of droppers.slice(0, DROP_LINES)) {
      const parts = [
        nonZero(n.drops),
        n.linkDrops && nonZero(n.linkDrops) !== 'none' ? `link: ${nonZero(n.linkDrops)}` : '',
        n.exitDrops && nonZero(n.exitDrops) !== 'none' ? `exit: ${nonZero(n.exitDrops)}` : '',
        n.outboxDropped > 0 ? `outbox ${n.outboxDropped}` : '',
      ].filter((p) => p !== '' && p !== 'none');
      say(
        `  ${n.role} ${n.host}${n.killed ? ' (killed)' : ''}: ${total} dropped: ${parts.join('; ')}`,
      );
    }
    if (droppers.length > DROP_LINES) {
      say(`  ... ${droppers.length - DROP_LINES} more nodes with drops (see SIM_JSON perNode)`);
    }
    say(
      `crossed dials (two relays dialing each other at once): ${dialWatch.crossed}` +
        (dialWatch.crossed > 0 ? ` (${dialWatch.examples.slice(0, 4).join(', ')})` : ''),
    );
    say(
      `network: ${netStats.delivered} datagrams delivered, ${netStats.lost} lost to --loss, ` +
        `${netStats.toDeadAddress} sent to a dead address`,
    );
    say(
      `wall time: setup ${(setupMs / 1000).toFixed(2)} s, run ${(runMs / 1000).toFixed(2)} s, ` +
        `drain ${(DRAIN_MS / 1000).toFixed(1)} s; cleanup: ${nodes.length + clients.length} nodes ` +
        `stopped, ${pendingTimers} timers still pending`,
    );

    const failures: string[] = [];
    if (reused16 > 0) failures.push(`${reused16} circuits reused a /16`);
    if (reusedRelay > 0) failures.push(`${reusedRelay} circuits reused a relay`);
    if (duplicates > 0) failures.push(`${duplicates} duplicate replies`);
    if (foreign > 0) failures.push(`${foreign} replies reached the wrong client`);

    const json: Record<string, unknown> = {
      config: o,
      clock: 'wall',
      wallSeconds: {
        setup: Number((setupMs / 1000).toFixed(3)),
        run: Number((runMs / 1000).toFixed(3)),
        drain: DRAIN_MS / 1000,
      },
      circuits: {
        built,
        failed,
        firstCircuits: withCircuit,
        rebuilds,
        clientsWithoutCircuit: o.clients - withCircuit,
        readyAtEnd,
        timeToFirstMs: ttfc,
      },
      traffic: {
        sent,
        echoed,
        deliveryRatio: ratio(echoed, sent),
        beforeKill: {
          sent: sentBefore,
          echoed: echoedBefore,
          ratio: ratio(echoedBefore, sentBefore),
        },
        afterKill: { sent: sentAfter, echoed: echoedAfter, ratio: ratio(echoedAfter, sentAfter) },
        expectedFromLoss: Number(expected.toFixed(4)),
        rttMs: rttSummary,
        duplicates,
        stray: foreign,
      },
      kills: {
        mode: o.killMode,
        pick: o.killPick,
        atMs: killedAt === null ? null : Math.round(killedAt),
        killed: victims.map((v) => v.host),
        affectedClients: affected,
        rebuilt: recoveries.length,
        affectedByGuard: affectedGuard,
        rebuildMs: recovery,
        rebuildMsGuardDied: recoveryGuard,
        rebuildMsMiddleDied: recoveryMiddle,
        otherRebuilds,
      },
      load: {
        relayBuiltThrough: relayLoad,
        relaysCarryingNone: idleRelays,
        relayCircuitsCreated: relayCreated,
        relaysCreatingNone: idleCreated,
        exitCircuitsAsExit: exitLoad,
        exitCircuitsAsMiddle: exitAsMiddle,
      },
      guards: {
        distinct: guardOf.size,
        maxClientsPerGuard: maxPerGuard,
        clientsPerGuardHistogram: histogram,
        exitsAsGuard: guardIsExit,
      },
      diversity: { circuits: circuitsSeen, reusedSlash16: reused16, reusedRelay },
      drops: {
        relay: relayDrops,
        link: linkDrops,
        outbox: outboxDropped,
        exit: exitDrops,
        client: clientDrops,
      },
      network: netStats,
      crossedDials: { count: dialWatch.crossed, pairs: dialWatch.examples },
      perNode,
      cleanup: { nodesStopped: nodes.length + clients.length, pendingTimers },
      failures,
    };
    return { lines, json, failures };
  } finally {
    teardown();
  }
}
