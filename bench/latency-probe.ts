/**
 * Where a tunnel's slow pings come from: one tunnel at a time in the bench's 2-host bed, a settle,
 * then `ping -D` (every reply with its wall-clock time) and each tunnel thread's CPU time, run-queue
 * wait and context switches (/proc/PID/task/TID/schedstat and status) read around the series.
 * Prints one JSON document per round on stdout.
 *
 *   node dist-bench/bench/latency-probe.js [--impl cladnet,wireguard-go-new] [--rounds N]
 *       [--settle S] [--pings N] [--interval-ms MS]
 *
 * PROBE_IDLE_S=N also reads the threads over N idle seconds before the pings; PROBE_KEEP_LOGS=DIR
 * copies each agent's log there (V8's --trace-* output lands in it) before the bed goes.
 *
 * An exploration tool, not part of `npm run bench`: the bench's --latency gives the numbers the
 * targets are judged by; this one says when the slow replies came and which threads ran.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { startMeshBed } from '../src/testbed/mesh';
import { sleep } from '../src/testbed/agents';
import { percentile } from './stats';
import { checkTunnel } from './suite';
import { cladnet, CLADNET_CIDR, CLADNET_NETWORK } from './tunnels/cladnet';
import { defaultWgNewPath, wireguardGoNew } from './tunnels/wireguard';
import type { BenchContext, Implementation } from './tunnels/types';

const REPO = path.resolve(__dirname, '..', '..');

interface ThreadSample {
  readonly tid: number;
  readonly comm: string;
  readonly cpuTicks: number;
  readonly voluntary: number;
  readonly involuntary: number;
  /** /proc/.../schedstat: ns on a CPU, ns waiting on a run queue, times run. */
  readonly runNs: number;
  readonly waitNs: number;
  readonly slices: number;
}

/** Every thread of `pid`: its name, utime + stime in ticks, and its context switches. */
function threads(pid: number): ThreadSample[] {
  const dir = `/proc/${pid}/task`;
  const out: ThreadSample[] = [];
  for (const t of fs.readdirSync(dir)) {
    try {
      const stat = fs.readFileSync(`${dir}/${t}/stat`, 'utf8');
      const close = stat.lastIndexOf(')');
      const comm = stat.slice(stat.indexOf('(') + 1, close);
      const f = stat.slice(close + 2).split(' ');
      const status = fs.readFileSync(`${dir}/${t}/status`, 'utf8');
      const num = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? NaN);
      const [runNs, waitNs, slices] = fs.readFileSync(`${dir}/${t}/schedstat`, 'utf8').trim().split(' ').map(Number) as [number, number, number];
      out.push({ tid: Number(t), comm, cpuTicks: Number(f[11]) + Number(f[12]), voluntary: num('voluntary_ctxt_switches'), involuntary: num('nonvoluntary_ctxt_switches'), runNs, waitNs, slices });
    } catch {
      // the thread ended between readdir and read
    }
  }
  return out;
}

type ThreadDiff = Omit<ThreadSample, 'tid' | 'comm'>;
function diff(a: ThreadSample[], b: ThreadSample[]): Record<string, ThreadDiff> {
  const out: Record<string, ThreadDiff> = {};
  for (const y of b) {
    const x = a.find((s) => s.tid === y.tid);
    const k = (f: keyof ThreadDiff): number => y[f] - (x?.[f] ?? 0);
    const d = { cpuTicks: k('cpuTicks'), voluntary: k('voluntary'), involuntary: k('involuntary'), runNs: k('runNs'), waitNs: k('waitNs'), slices: k('slices') };
    if (d.cpuTicks || d.voluntary || d.involuntary) out[`${y.comm}/${y.tid}`] = d;
  }
  return out;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      impl: { type: 'string', default: 'cladnet' },
      rounds: { type: 'string', default: '1' },
      settle: { type: 'string', default: '1' },
      pings: { type: 'string', default: '1000' },
      'interval-ms': { type: 'string', default: '10' },
    },
  });
  process.env['CLADNET_CLI'] ??= path.join(REPO, 'dist', 'cli.js');
  const impls: Record<string, Implementation> = { cladnet, 'wireguard-go-new': wireguardGoNew(defaultWgNewPath(REPO)) };
  const names = values.impl!.split(',');
  const bed = await startMeshBed({ topology: { hosts: 2 }, network: CLADNET_NETWORK, cidr: CLADNET_CIDR, agents: 0, waitUp: false });
  const log = (m: string): void => void process.stderr.write(`[probe] ${m}\n`);
  try {
    const [a, b] = bed.topo.hosts as [(typeof bed.topo.hosts)[0], (typeof bed.topo.hosts)[0]];
    const ctx: BenchContext = { topo: bed.topo, bed, a, b, nebulaCipher: 'aes', log };
    for (let round = 1; round <= Number(values.rounds); round++) {
      for (const name of names) {
        const impl = impls[name];
        if (!impl) throw new Error(`unknown --impl ${name}`);
        const t = await impl.start(ctx);
        try {
          await checkTunnel(ctx, t);
          await sleep(Number(values.settle) * 1000);
          const n = Number(values.pings);
          const idle0 = t.procs.map((p) => threads(p.pid));
          const idleS = Number(process.env['PROBE_IDLE_S'] ?? 0);
          if (idleS > 0) await sleep(idleS * 1000);
          const before = t.procs.map((p) => threads(p.pid));
          const r = await bed.topo.tryExec(t.a.ns, ['ping', '-D', '-n', '-c', String(n), '-i', String(Number(values['interval-ms']) / 1000), '-W', '1', t.b.ip], {
            timeoutMs: n * Number(values['interval-ms']) + 10_000,
          });
          const after = t.procs.map((p) => threads(p.pid));
          // Each agent's log (stdout and stderr: V8's --trace-* output lands there) before the bed goes.
          const keep = process.env['PROBE_KEEP_LOGS'];
          if (keep) {
            await sleep(1_000);
            fs.mkdirSync(keep, { recursive: true });
            for (const ag of bed.agents) fs.copyFileSync(ag.logFile, path.join(keep, `${name}-${round}-${ag.host.name}.log`));
          }
          const replies = [...r.stdout.matchAll(/^\[([\d.]+)\].*icmp_seq=(\d+) .*? time=([\d.]+) ms/gm)].map((m) => ({ t: Number(m[1]), seq: Number(m[2]), ms: Number(m[3]) }));
          const sorted = replies.map((x) => x.ms).sort((p, q) => p - q);
          const q = (p: number): number | null => percentile(sorted, p);
          log(`${name} round ${round}: p50 ${q(50)} p90 ${q(90)} p99 ${q(99)} max ${sorted[sorted.length - 1]} (${replies.length}/${n})`);
          process.stdout.write(
            JSON.stringify({ impl: name, round, settleS: Number(values.settle), p50: q(50), p90: q(90), p99: q(99), replies, threads: t.procs.map((p, i) => ({ host: p.host, pid: p.pid, diff: diff(before[i]!, after[i]!), idle: diff(idle0[i]!, before[i]!) })), idleS }) + '\n',
          );
        } finally {
          await t.stop();
        }
      }
    }
  } finally {
    await bed.destroy();
  }
}

main().catch((e: Error) => {
  process.stderr.write(`latency-probe: ${e.stack ?? e.message}\n`);
  process.exitCode = 1;
});
