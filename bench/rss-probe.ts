/**
 * Idle RSS of the agent, quickly (issues 3 and 14): two agents in a fresh 2-host mesh bed with etcd,
 * both up, then after a settle time the memory of one of them (h1) from /proc/PID/status and
 * /proc/PID/smaps_rollup, what each MiB of it is (rss-breakdown.ts: files by ELF section, each
 * thread's V8 heap from the rss-heap.ts preload, malloc) and issue 14's target line. About 20 s per
 * run. Needs root; builds and removes its own namespaces. `npm run bench -- --rss` runs it too.
 *
 *   tsc -p bench/tsconfig.json && node dist-bench/bench/rss-probe.js [options]
 *
 *   --runs N         fresh bed + agents N times (default 1)
 *   --settle S       seconds between "both up" and the reading (default 10)
 *   --env K=V        environment of the agents (repeatable), e.g. --env NODE_OPTIONS=--max-semi-space-size=1
 *   --cli PATH       the cli.js to start (default $CLADNET_CLI or dist/cli.js of this checkout)
 *   --arg A          an extra agent argument (repeatable)
 *   --maps           also the largest mappings by RSS (from /proc/PID/smaps)
 *   --hold S         keep the bed up S seconds after the reading (agent pids on stderr), to poke at it
 *   --label L        a name for the variant in the output
 *   --no-heap        without the V8 heap preload (NODE_OPTIONS=--require=rss-heap.js): the agent
 *                    exactly as the bench starts it, and no per-thread heaps in the breakdown
 *   --modules        also each dependency's cost in bare node (rss-breakdown.ts, about 1 minute)
 *   --json           one JSON line per run on stdout, then the summary
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { sleep } from '../src/testbed/agents';
import type { ThreadHeap } from './rss-heap';
import { startMeshBed } from '../src/testbed/mesh';
import {
  breakdown,
  FIXED_PACKAGES_STEP,
  formatParts,
  MODULE_STEPS,
  moduleCosts,
  NOT_LOADED,
  r1,
  rssByMapping,
  snapshotProc,
  threadHeaps,
  type ModuleCost,
  type Part,
  type ProcSnapshot,
} from './rss-breakdown';

const REPO = path.resolve(__dirname, '..', '..');
const KIB = 1024;
/** Issue 14: idle RSS of an agent with one peer, MiB. */
export const RSS_TARGET_MIB = 55;

interface Reading {
  label: string;
  run: number;
  pid: number;
  threads: number;
  /** MiB */
  vmRss: number;
  rssAnon: number;
  rssFile: number;
  rssShmem: number;
  /** smaps_rollup, MiB: Rss, Pss, Pss_Anon, Pss_File, Private_Dirty, Shared_Clean, ... */
  rollup: Record<string, number>;
  /** both agents' VmRSS, MiB */
  both: number[];
  maps?: { name: string; rssMiB: number }[];
  /** what each MiB is: file-backed and anonymous, split as far as known */
  parts: Part[];
}

function kbFields(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const m = /^(\w+):\s+(\d+) kB/.exec(line);
    if (m) out[m[1]!] = Number(m[2]) / KIB;
  }
  return out;
}

/** RSS by mapping name (anonymous mappings by kind), largest first. */
function topMaps(pid: number, n = 15): { name: string; rssMiB: number }[] {
  return [...rssByMapping(pid).entries()].slice(0, n).map(([k, v]) => ({ name: k, rssMiB: r1(v) }));
}

function read(pid: number): { status: Record<string, number>; threads: number; rollup: Record<string, number> } {
  const st = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const threads = Number(/^Threads:\s+(\d+)/m.exec(st)?.[1] ?? NaN);
  return { status: kbFields(st), threads, rollup: kbFields(fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8')) };
}

export interface ProbeOptions {
  runs: number;
  /** seconds between "both up" and the reading */
  settleS: number;
  /** the agents' environment, added to this process's */
  env: Record<string, string>;
  extraArgs: string[];
  maps: boolean;
  holdS: number;
  label: string;
  /** the V8 heap preload (rss-heap.ts) in the agents */
  heap: boolean;
  /** each dependency's cost in bare node (rss-breakdown.ts) */
  modules: boolean;
  log: (msg: string) => void;
}

export interface ProbeResult {
  readings: Reading[];
  /** mean VmRSS over the runs, MiB */
  meanVmRss: number;
  target: { bound: number; met: boolean };
  modules: { steps: ModuleCost[]; notLoaded: ModuleCost[] } | null;
}

const PRELOAD = path.join(__dirname, 'rss-heap.js');

async function once(o: ProbeOptions, run: number): Promise<Reading> {
  const bed = await startMeshBed({ topology: { hosts: 2 }, network: 'rss', cidr: '100.64.0.0/24', agents: 0, waitUp: false });
  const heapDir = o.heap ? fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-rss-heap-')) : null;
  const env = { ...o.env };
  if (heapDir) {
    env['NODE_OPTIONS'] = `${env['NODE_OPTIONS'] ?? process.env['NODE_OPTIONS'] ?? ''} --require=${PRELOAD}`.trim();
    env['CLADNET_RSS_HEAP_DIR'] = heapDir;
  }
  const saved = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  let reading: Omit<Reading, 'parts'> | null = null;
  let snap: ProcSnapshot | null = null;
  let mainHeap: ThreadHeap[] = [];
  try {
    Object.assign(process.env, env); // the bed spawns agents with this process's environment
    try {
      for (const h of bed.topo.hosts) await bed.start(h, { logLevel: 'info', extraArgs: o.extraArgs });
    } finally {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
    await bed.waitUp(bed.agents, 20_000);
    await sleep(o.settleS * 1000);
    const pids = bed.agents.map((a) => a.proc.pid!);
    const pid = pids[0]!;
    const comm = fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
    if (comm !== 'node') throw new Error(`pid ${pid} is "${comm}", not node`);
    const r = read(pid);
    const both = pids.map((p) => r1(read(p).status['VmRSS']));
    snap = snapshotProc(pid, r.status, r.rollup);
    mainHeap = heapDir ? threadHeaps(heapDir, pid).filter((h) => h.threadId === 0) : [];
    if (o.holdS > 0) {
      process.stderr.write(`rss-probe: agents ${pids.join(' ')} up for ${o.holdS} s\n`);
      await sleep(o.holdS * 1000);
    }
    reading = {
      label: o.label,
      run,
      pid,
      threads: r.threads,
      vmRss: r1(r.status['VmRSS']),
      rssAnon: r1(r.status['RssAnon']),
      rssFile: r1(r.status['RssFile']),
      rssShmem: r1(r.status['RssShmem']),
      rollup: Object.fromEntries(
        ['Rss', 'Pss', 'Pss_Anon', 'Pss_File', 'Shared_Clean', 'Private_Clean', 'Private_Dirty', 'Anonymous'].map((k) => [k, r1(r.rollup[k])]),
      ),
      both,
      ...(o.maps ? { maps: topMaps(pid) } : {}),
    };
  } catch (e) {
    if (heapDir) fs.rmSync(heapDir, { recursive: true, force: true });
    throw e;
  } finally {
    await bed.destroy();
  }
  // The worker's heap sample comes as it exits (rss-heap.ts), i.e. after bed.destroy().
  const workers = heapDir ? threadHeaps(heapDir, reading.pid).filter((h) => h.threadId !== 0) : [];
  if (heapDir) {
    if (mainHeap.length === 0) o.log('rss-probe: no V8 heap sample from the agent\'s main thread (preload not loaded?)');
    fs.rmSync(heapDir, { recursive: true, force: true });
  }
  return { ...reading, parts: breakdown(snap!, [...mainHeap, ...workers]) };
}

/** `runs` fresh beds, one reading each; then, if asked, the module costs. */
export async function probeRss(o: ProbeOptions): Promise<ProbeResult> {
  process.env['CLADNET_CLI'] ??= path.join(REPO, 'dist', 'cli.js');
  if (!fs.existsSync(process.env['CLADNET_CLI'])) throw new Error(`${process.env['CLADNET_CLI']} is missing: build first`);
  const readings: Reading[] = [];
  for (let i = 1; i <= o.runs; i++) {
    o.log(`idle RSS: run ${i}/${o.runs} (2 agents, ${o.settleS} s after both are up)`);
    readings.push(await once(o, i));
  }
  const meanVmRss = r1(readings.reduce((s, r) => s + r.vmRss, 0) / readings.length);
  let modules = null;
  if (o.modules) {
    o.log(`idle RSS: each dependency in bare node with the agent's flags (3 x ${MODULE_STEPS.length + NOT_LOADED.length} processes, ${o.settleS} s each)`);
    modules = await moduleCosts(REPO, 3, o.settleS * 1000);
  }
  return { readings, meanVmRss, target: { bound: RSS_TARGET_MIB, met: meanVmRss <= RSS_TARGET_MIB }, modules };
}

/** The text report: each reading, the last reading's breakdown, module costs, the target line. */
export function formatProbe(res: ProbeResult, o: Pick<ProbeOptions, 'settleS' | 'heap'>): string {
  const lines: string[] = [];
  for (const r of res.readings) {
    const ro = r.rollup;
    lines.push(
      `${r.label} #${r.run}: VmRSS ${r.vmRss} MiB  RssAnon ${r.rssAnon}  RssFile ${r.rssFile}  RssShmem ${r.rssShmem}  ` +
        `(both agents ${r.both.join(' / ')})  threads ${r.threads}  Pss ${ro['Pss']} Pss_Anon ${ro['Pss_Anon']} Pss_File ${ro['Pss_File']} ` +
        `Private_Dirty ${ro['Private_Dirty']} Shared_Clean ${ro['Shared_Clean']}`,
    );
    for (const m of r.maps ?? []) lines.push(`    ${String(m.rssMiB).padStart(6)} MiB  ${m.name}`);
  }
  const last = res.readings[res.readings.length - 1]!;
  lines.push('', `what each MiB is (run ${last.run}, VmRSS ${last.vmRss} MiB${o.heap ? ', with the V8 heap preload' : ''}), MiB:`);
  lines.push(...formatParts(last.parts));
  if (res.modules) {
    const m = res.modules;
    lines.push('', `the dependencies, each added to bare node with the agent's flags (VmRSS ${o.settleS} s after start, median of 3), MiB:`);
    for (const s of m.steps) lines.push(`  ${s.name.padEnd(32)} ${String(s.total).padStart(6)}  ${s.name === 'node floor' ? '' : `${s.delta >= 0 ? '+' : ''}${s.delta}`.padStart(5)}  ${s.note}`);
    const deps = m.steps[m.steps.length - 1]!.total;
    lines.push(`  ${'the agent (mean of the runs)'.padEnd(32)} ${String(res.meanVmRss).padStart(6)}  ${('+' + r1(res.meanVmRss - deps)).padStart(5)}  cladnet's own code in both threads and its state (its peers, keys, watch handlers)`);
    for (const n of m.notLoaded) lines.push(`  not loaded: ${n.name}, ${n.note}: +${n.delta} over the floor`);
    const fixed = m.steps.find((s) => s.name === FIXED_PACKAGES_STEP);
    if (fixed) {
      lines.push(
        `  the fixed packages alone, one thread, no line of cladnet: ${fixed.total} MiB ` +
          `(${fixed.total > res.target.bound ? 'above' : 'within'} issue 14's bound of ${res.target.bound})`,
      );
    }
  }
  const t = res.target;
  lines.push(
    '',
    `issue 14 target: idle RSS of an agent with one peer <= ${t.bound} MiB: ${res.meanVmRss} MiB ` +
      `(mean of ${res.readings.length} run${res.readings.length > 1 ? 's' : ''}, ${o.settleS} s after up): ` +
      (t.met ? 'met' : `not met (${r1(res.meanVmRss - t.bound)} over)`),
  );
  return lines.join('\n');
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      runs: { type: 'string', default: '1' },
      settle: { type: 'string', default: '10' },
      env: { type: 'string', multiple: true, default: [] },
      arg: { type: 'string', multiple: true, default: [] },
      cli: { type: 'string' },
      maps: { type: 'boolean', default: false },
      hold: { type: 'string', default: '0' },
      label: { type: 'string', default: 'variant' },
      heap: { type: 'boolean', default: true },
      'no-heap': { type: 'boolean', default: false },
      modules: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
    },
  });
  const env: Record<string, string> = {};
  for (const kv of values.env!) {
    const i = kv.indexOf('=');
    if (i <= 0) throw new Error(`--env ${kv}: expected K=V`);
    env[kv.slice(0, i)] = kv.slice(i + 1);
  }
  if (values.cli) process.env['CLADNET_CLI'] = values.cli;
  const o: ProbeOptions = {
    runs: Number(values.runs),
    settleS: Number(values.settle),
    env,
    extraArgs: values.arg!,
    maps: values.maps!,
    holdS: Number(values.hold),
    label: values.label!,
    heap: values.heap! && !values['no-heap'],
    modules: values.modules!,
    log: (m) => process.stderr.write(m + '\n'),
  };
  const res = await probeRss(o);
  if (values.json) {
    for (const r of res.readings) process.stdout.write(JSON.stringify(r) + '\n');
    process.stdout.write(JSON.stringify({ meanVmRss: res.meanVmRss, target: res.target, modules: res.modules }) + '\n');
  } else process.stdout.write(formatProbe(res, o) + '\n');
  return 0;
}

if (require.main === module) {
  main().then(
    (code) => process.exit(code),
    (e: unknown) => {
      process.stderr.write(`rss-probe: ${e instanceof Error ? e.stack ?? e.message : String(e)}\n`);
      process.exit(1);
    },
  );
}
