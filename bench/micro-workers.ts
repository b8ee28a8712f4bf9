/**
 * `npm run bench:workers`: does the stage path scale over cores? Without the kernel, W worker
 * threads each run micro.ts's stage path (Outbound on host A -> Inbound on host B, batches of 64
 * packets in native memory, the AEAD the agent would pick) as fast as they can for a fixed time,
 * W = 1 and W = 2, rounds interleaved. Each worker has its own peers, sessions and keys; as in
 * the multi-worker design (docs/design.md, "Many cores"), every batch first reserves its 64
 * counters from one word shared by all workers with Atomics.add (the send counter of a session
 * all workers seal for). Nothing else is shared, so this measures what the design leaves to
 * contention (that cache line, allocator, GC, memory bandwidth, the cores themselves).
 *
 * Reported per W (best round by throughput): packets per second of wall time (all workers), CPU
 * time per packet (each worker's own thread time, /proc/thread-self/schedstat), and the cores the
 * workers actually got (CPU time / wall time). Two numbers for the scaling:
 *   wall     throughput(W=2) / throughput(W=1): what this machine gave, other load included
 *   per-CPU  the same if both workers had had a core each: 2 x (packets per CPU-second at W=2) /
 *            (packets per CPU-second at W=1), i.e. how much work per packet the second worker
 *            adds through contention; on an idle 2-core machine the two agree
 *
 *   node dist-bench/bench/micro-workers.js [--workers 1,2] [--seconds 2] [--rounds 3] [--size 1400] [--crypto auto|ffi|native|wasm] [--json]
 *
 * Results go to bench/results/micro-workers-<time>.json.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { type AeadBackend, createAead } from '../src/crypto/aead';
import { BATCH, stagesCase } from './micro';
import { sig } from './stats';

interface WorkerJob {
  readonly size: number;
  readonly backend: AeadBackend;
  /** [0] start flag, [1] stop flag. */
  readonly flags: SharedArrayBuffer;
  /** The shared send counter (BigInt64, one word), reserved per batch. */
  readonly counter: SharedArrayBuffer;
}

interface WorkerReport {
  readonly packets: number;
  /** This thread's CPU time over the timed loop, ns. */
  readonly cpuNs: number;
  readonly aead: string;
  readonly error?: string;
}

/** CPU time of the calling thread so far, ns (the first field of schedstat). */
function threadCpuNs(): number {
  return Number(fs.readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ')[0]);
}

async function workerMain(job: WorkerJob): Promise<void> {
  const flags = new Int32Array(job.flags);
  const counter = new BigInt64Array(job.counter);
  const block = BigInt(BATCH);
  const aead = await createAead(job.backend);
  const c = stagesCase(aead, job.size);
  const warmEnd = performance.now() + 300;
  while (performance.now() < warmEnd) c.stages.fn();
  parentPort!.postMessage({ t: 'ready' });
  Atomics.wait(flags, 0, 0);
  const cpu0 = threadCpuNs();
  let batches = 0;
  while (Atomics.load(flags, 1) === 0) {
    Atomics.add(counter, 0, block);
    c.stages.fn();
    batches++;
  }
  const cpuNs = threadCpuNs() - cpu0;
  let error: string | undefined;
  try {
    c.check();
  } catch (e) {
    error = (e as Error).message;
  }
  c.close();
  const report: WorkerReport = { packets: batches * BATCH, cpuNs, aead: aead.name, error };
  parentPort!.postMessage({ t: 'done', report });
}

interface RunResult {
  readonly workers: number;
  readonly wallMs: number;
  readonly packets: number;
  readonly pps: number;
  readonly cpuNsPerPacket: number;
  /** CPU time of all workers / wall time. */
  readonly cores: number;
  readonly aead: string;
}

/** One timed run of `n` workers. */
async function runOnce(n: number, size: number, backend: AeadBackend, seconds: number): Promise<RunResult> {
  const flags = new SharedArrayBuffer(8);
  const counter = new SharedArrayBuffer(8);
  const f = new Int32Array(flags);
  const workers = Array.from({ length: n }, () => new Worker(__filename, { workerData: { size, backend, flags, counter } satisfies WorkerJob }));
  const reports: Promise<WorkerReport>[] = [];
  const ready: Promise<void>[] = [];
  for (const w of workers) {
    ready.push(new Promise((res, rej) => {
      w.on('error', rej);
      w.on('message', (m: { t: string }) => m.t === 'ready' && res());
    }));
    reports.push(new Promise((res, rej) => {
      w.on('error', rej);
      w.on('message', (m: { t: string; report?: WorkerReport }) => m.t === 'done' && res(m.report!));
    }));
  }
  try {
    await Promise.all(ready);
    const t0 = performance.now();
    Atomics.store(f, 0, 1);
    Atomics.notify(f, 0);
    await new Promise((r) => setTimeout(r, seconds * 1000));
    Atomics.store(f, 1, 1);
    const wallMs = performance.now() - t0;
    const rs = await Promise.all(reports);
    const bad = rs.find((r) => r.error !== undefined);
    if (bad) throw new Error(`a worker's stage path failed its check: ${bad.error}`);
    const packets = rs.reduce((a, r) => a + r.packets, 0);
    if (new BigInt64Array(counter)[0] !== BigInt(packets)) throw new Error('the shared counter does not add up to the packets sealed');
    const cpuNs = rs.reduce((a, r) => a + r.cpuNs, 0);
    return { workers: n, wallMs, packets, pps: packets / (wallMs / 1000), cpuNsPerPacket: cpuNs / packets, cores: cpuNs / 1e6 / wallMs, aead: rs[0]!.aead };
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
}

export interface WorkersResult {
  readonly aead: string;
  readonly size: number;
  readonly seconds: number;
  readonly rounds: number;
  readonly cpus: number;
  readonly loadavg: number[];
  /** Best round (by throughput) per worker count. */
  readonly best: Record<string, { pps: number; cpuNsPerPacket: number; cores: number }>;
  /** throughput(W) / throughput(1), and the per-CPU scaling (see the header). */
  readonly wallScaling: Record<string, number>;
  readonly perCpuScaling: Record<string, number>;
  readonly runs: RunResult[];
}

export async function runWorkers(opts: { workers: number[]; seconds: number; rounds: number; size: number; backend: AeadBackend }, log: (m: string) => void): Promise<WorkersResult> {
  const runs: RunResult[] = [];
  for (let r = 0; r < opts.rounds; r++) {
    for (const n of opts.workers) {
      const res = await runOnce(n, opts.size, opts.backend, opts.seconds);
      runs.push(res);
      log(`round ${r + 1}, ${n} worker(s): ${(res.pps / 1000).toFixed(0)} kpps, ${res.cpuNsPerPacket.toFixed(0)} ns CPU per packet, ${res.cores.toFixed(2)} cores`);
    }
  }
  const best: WorkersResult['best'] = {};
  for (const n of opts.workers) {
    const mine = runs.filter((r) => r.workers === n).sort((a, b) => b.pps - a.pps)[0]!;
    const minCpu = Math.min(...runs.filter((r) => r.workers === n).map((r) => r.cpuNsPerPacket));
    best[n] = { pps: Math.round(mine.pps), cpuNsPerPacket: sig(minCpu, 3), cores: sig(mine.cores, 3) };
  }
  const wallScaling: Record<string, number> = {};
  const perCpuScaling: Record<string, number> = {};
  const one = best[opts.workers[0]!]!;
  for (const n of opts.workers) {
    wallScaling[n] = sig(best[n]!.pps / one.pps, 3);
    perCpuScaling[n] = sig((n / opts.workers[0]!) * (one.cpuNsPerPacket / best[n]!.cpuNsPerPacket), 3);
  }
  const os = await import('node:os');
  return {
    aead: runs[0]!.aead,
    size: opts.size,
    seconds: opts.seconds,
    rounds: opts.rounds,
    cpus: os.cpus().length,
    loadavg: os.loadavg().map((x) => sig(x, 3)),
    best,
    wallScaling,
    perCpuScaling,
    runs,
  };
}

function parse(argv: string[]): { workers: number[]; seconds: number; rounds: number; size: number; backend: AeadBackend; json: boolean } {
  const o = { workers: [1, 2], seconds: 2, rounds: 3, size: 1400, backend: 'auto' as AeadBackend, json: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const v = (): string => {
      const x = argv[++i];
      if (x === undefined) throw new Error(`${a} needs a value`);
      return x;
    };
    const num = (s: string, min: number, max: number): number => {
      const x = Number(s);
      if (!Number.isFinite(x) || x < min || x > max) throw new Error(`${a}: ${s} is not a number in [${min}, ${max}]`);
      return x;
    };
    if (a === '--workers') o.workers = v().split(',').map((s) => Math.round(num(s, 1, 64)));
    else if (a === '--seconds') o.seconds = num(v(), 0.1, 600);
    else if (a === '--rounds') o.rounds = Math.round(num(v(), 1, 100));
    else if (a === '--size') o.size = Math.round(num(v(), 20, 1400));
    else if (a === '--crypto') {
      const b = v();
      if (!['auto', 'ffi', 'native', 'wasm'].includes(b)) throw new Error(`--crypto: "${b}" is not one of auto, ffi, native, wasm`);
      o.backend = b as AeadBackend;
    } else if (a === '--json') o.json = true;
    else throw new Error(`unknown option ${a}`);
  }
  return o;
}

async function main(): Promise<void> {
  let o: ReturnType<typeof parse>;
  try {
    o = parse(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`micro-workers: ${(e as Error).message}\n`);
    process.exit(2);
  }
  const log = (m: string) => process.stderr.write(`[micro-workers] ${m}\n`);
  const r = await runWorkers(o, log);
  const dir = path.join(__dirname, '..', '..', 'bench', 'results');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `micro-workers-${new Date().toISOString().replace(/:/g, '-').replace(/\.\d+Z$/, 'Z')}.json`);
  fs.writeFileSync(file, JSON.stringify(r, null, 2) + '\n');
  if (o.json) {
    process.stdout.write(JSON.stringify(r, null, 2) + '\n');
    return;
  }
  const lines = [`stage path over worker threads (${r.aead}, ${r.size} B packets, batches of ${BATCH}, ${r.seconds} s x ${r.rounds} rounds, best round; ${r.cpus} CPUs, load ${r.loadavg.join(' ')})`];
  lines.push('workers  kpps    CPU ns/packet  cores used  scaling (wall)  scaling (per CPU)');
  for (const n of o.workers) {
    const b = r.best[n]!;
    lines.push(`${String(n).padEnd(8)} ${String(Math.round(b.pps / 1000)).padEnd(7)} ${String(b.cpuNsPerPacket).padEnd(14)} ${String(b.cores).padEnd(11)} ${String(r.wallScaling[n]).padEnd(15)} ${r.perCpuScaling[n]}`);
  }
  lines.push(`results: ${path.relative(process.cwd(), file)}`);
  process.stdout.write(lines.join('\n') + '\n');
}

if (isMainThread) {
  main().catch((e: unknown) => {
    process.stderr.write(`micro-workers: ${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  });
} else {
  void workerMain(workerData as WorkerJob);
}
