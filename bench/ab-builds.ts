/**
 * Two builds of cladnet against each other, interleaved in one bed: for a data-plane change whose
 * effect is a few percent. Full bench runs minutes apart do not show that on this VM (the same
 * build moves 10-20 % between them, and wireguard-go-new moved against cladnet in every pair of
 * one such A/B); alternating the builds every run in one bed, ABBA, does.
 *
 *   node dist-bench/bench/ab-builds.js --a dist/cli.js --b /tmp/other/dist/cli.js [--pairs 6] [--streams 1] [--seconds 8]
 *   node dist-bench/bench/ab-builds.js --a ... --b ... --pings 1000 [--interval-ms 10]
 *
 * With --pings, each run pings the other host through the tunnel instead (N pings, --interval-ms
 * apart, after the same 2 s) and records p50, p90 and p99 of the round trips and the agents' CPU
 * time per ping: for a change to the lone packet's path.
 *
 * Each run starts the two agents of its build in the bench's 2-host bed, checks the tunnel, waits
 * 2 s, and runs iperf3 (receiver goodput) while it reads both agents' CPU time (/proc/PID/stat).
 * Prints every run and the medians of each build; the other build's tree needs its own dist/ and
 * native/build (a `git worktree` with node_modules linked and `npx tsc -p .` is enough).
 */
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { sleep } from '../src/testbed/agents';
import { startMeshBed } from '../src/testbed/mesh';
import { cpuSeconds } from './probes';
import { median, percentile } from './stats';
import { checkTunnel } from './suite';
import { cladnet, CLADNET_CIDR, CLADNET_NETWORK } from './tunnels/cladnet';
import type { BenchContext } from './tunnels/types';

interface Run {
  readonly build: 'A' | 'B';
  readonly mbit: number;
  readonly sPerGB: number;
}

interface PingRun {
  readonly build: 'A' | 'B';
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
  readonly replies: number;
  /** both agents' CPU time per ping, microseconds */
  readonly cpuUsPerPing: number;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      a: { type: 'string' },
      b: { type: 'string' },
      pairs: { type: 'string', default: '6' },
      streams: { type: 'string', default: '1' },
      seconds: { type: 'string', default: '8' },
      pings: { type: 'string' },
      'interval-ms': { type: 'string', default: '10' },
    },
  });
  const pings = values.pings === undefined ? 0 : Number(values.pings);
  if (!values.a || !values.b) throw new Error('--a and --b name the two builds\' cli.js');
  const cli = { A: path.resolve(values.a), B: path.resolve(values.b) };
  const log = (m: string): void => void process.stderr.write(`[ab] ${m}\n`);
  process.env['CLADNET_CLI'] = cli.A; // the bed's own set-up (network, certificates) uses A
  const bed = await startMeshBed({ topology: { hosts: 2 }, network: CLADNET_NETWORK, cidr: CLADNET_CIDR, agents: 0, waitUp: false });
  const runs: Run[] = [];
  const pingRuns: PingRun[] = [];
  try {
    const [a, b] = bed.topo.hosts as [(typeof bed.topo.hosts)[0], (typeof bed.topo.hosts)[0]];
    const ctx: BenchContext = { topo: bed.topo, bed, a, b, nebulaCipher: 'aes', log: () => undefined };
    const order: ('A' | 'B')[] = [];
    for (let i = 0; i < Number(values.pairs); i++) order.push(...(i % 2 === 0 ? (['A', 'B'] as const) : (['B', 'A'] as const)));
    for (const build of order) {
      process.env['CLADNET_CLI'] = cli[build];
      const t = await cladnet.start(ctx);
      try {
        await checkTunnel(ctx, t);
        await sleep(2_000);
        const cpu = () => t.procs.reduce((s, p) => s + cpuSeconds(p.pid), 0);
        if (pings > 0) {
          const interval = Number(values['interval-ms']);
          const c0 = cpu();
          const r = await bed.topo.tryExec(t.a.ns, ['ping', '-n', '-c', String(pings), '-i', String(interval / 1000), '-W', '1', t.b.ip], {
            timeoutMs: pings * interval * 3 + 10_000,
          });
          const c1 = cpu();
          const run = { build, ...pingSummary(r.stdout), cpuUsPerPing: ((c1 - c0) * 1e6) / pings };
          pingRuns.push(run);
          log(`${build}: p50 ${run.p50} p90 ${run.p90} p99 ${run.p99} ms (${run.replies}/${pings}), ${run.cpuUsPerPing.toFixed(0)} us CPU per ping`);
          continue;
        }
        const server = bed.topo.exec(t.b.ns, ['iperf3', '-s', '-1'], { timeoutMs: 120_000 }).catch(() => null);
        await sleep(300);
        const c0 = cpu();
        const r = await bed.topo.exec(t.a.ns, ['iperf3', '-c', t.b.ip, '-t', values.seconds!, '-P', values.streams!, '-J'], { timeoutMs: 120_000 });
        const c1 = cpu();
        await server;
        const sum = (JSON.parse(r.stdout) as { end: { sum_received: { bytes: number; bits_per_second: number } } }).end.sum_received;
        const run: Run = { build, mbit: sum.bits_per_second / 1e6, sPerGB: (c1 - c0) / (sum.bytes / 1e9) };
        runs.push(run);
        log(`${build}: ${run.mbit.toFixed(0)} Mbit/s, ${run.sPerGB.toFixed(2)} s/GB`);
      } finally {
        await t.stop();
      }
    }
  } finally {
    await bed.destroy();
  }
  if (pings > 0) {
    for (const build of ['A', 'B'] as const) {
      const mine = pingRuns.filter((x) => x.build === build);
      const m = (k: 'p50' | 'p90' | 'p99' | 'cpuUsPerPing') => median(mine.map((x) => x[k]))?.toFixed(k === 'cpuUsPerPing' ? 0 : 3);
      console.log(`${build} ${cli[build]}: median p50 ${m('p50')} p90 ${m('p90')} p99 ${m('p99')} ms, ${m('cpuUsPerPing')} us CPU per ping over ${mine.length} runs`);
    }
    console.log(JSON.stringify(pingRuns));
    return;
  }
  for (const build of ['A', 'B'] as const) {
    const mine = runs.filter((x) => x.build === build);
    console.log(`${build} ${cli[build]}: median ${median(mine.map((x) => x.mbit))?.toFixed(0)} Mbit/s, ${median(mine.map((x) => x.sPerGB))?.toFixed(2)} s/GB over ${mine.length} runs`);
  }
  console.log(JSON.stringify(runs));
}

/** p50, p90 and p99 of the round trips in ping's reply lines. */
function pingSummary(stdout: string): { p50: number; p90: number; p99: number; replies: number } {
  const ms = [...stdout.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1])).sort((a, b) => a - b);
  const q = (p: number): number => percentile(ms, p) ?? NaN;
  return { p50: q(50), p90: q(90), p99: q(99), replies: ms.length };
}

main().catch((e: Error) => {
  process.stderr.write(`ab-builds: ${e.stack ?? e.message}\n`);
  process.exitCode = 1;
});
