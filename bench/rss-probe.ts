/**
 * Idle RSS of the agent, quickly (issue 3): two agents in a fresh 2-host mesh bed with etcd, both
 * up, then after a settle time the memory of one of them (h1) from /proc/PID/status and
 * /proc/PID/smaps_rollup. About 20 s per run. Needs root; builds and removes its own namespaces.
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
 *   --json           one JSON line per run on stdout
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { sleep } from '../src/testbed/agents';
import { startMeshBed } from '../src/testbed/mesh';

const REPO = path.resolve(__dirname, '..', '..');
const KIB = 1024;

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
}

function kbFields(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const m = /^(\w+):\s+(\d+) kB/.exec(line);
    if (m) out[m[1]!] = Number(m[2]) / KIB;
  }
  return out;
}

const r1 = (x: number | undefined): number => Math.round((x ?? NaN) * 10) / 10;

/** RSS by mapping name (anonymous mappings by kind), largest first. */
function topMaps(pid: number, n = 15): { name: string; rssMiB: number }[] {
  const by = new Map<string, number>();
  let name = '';
  for (const line of fs.readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const head = /^[0-9a-f]+-[0-9a-f]+ (\S+) \S+ \S+ \d+\s*(.*)$/.exec(line);
    if (head) {
      name = head[2] || `[anon ${head[1]}]`;
      continue;
    }
    const m = /^Rss:\s+(\d+) kB/.exec(line);
    if (m) by.set(name, (by.get(name) ?? 0) + Number(m[1]));
  }
  return [...by.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, n)
    .map(([k, v]) => ({ name: k, rssMiB: r1(v / KIB) }));
}

function read(pid: number): { status: Record<string, number>; threads: number; rollup: Record<string, number> } {
  const st = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const threads = Number(/^Threads:\s+(\d+)/m.exec(st)?.[1] ?? NaN);
  return { status: kbFields(st), threads, rollup: kbFields(fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8')) };
}

async function once(label: string, run: number, env: Record<string, string>, extraArgs: string[], settleS: number, maps: boolean, holdS: number): Promise<Reading> {
  const bed = await startMeshBed({ topology: { hosts: 2 }, network: 'rss', cidr: '100.64.0.0/24', agents: 0, waitUp: false });
  const saved = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  try {
    Object.assign(process.env, env); // the bed spawns agents with this process's environment
    try {
      for (const h of bed.topo.hosts) await bed.start(h, { logLevel: 'info', extraArgs });
    } finally {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
    await bed.waitUp(bed.agents, 20_000);
    await sleep(settleS * 1000);
    const pids = bed.agents.map((a) => a.proc.pid!);
    const comm = fs.readFileSync(`/proc/${pids[0]}/comm`, 'utf8').trim();
    if (comm !== 'node') throw new Error(`pid ${pids[0]} is "${comm}", not node`);
    const r = read(pids[0]!);
    const both = pids.map((p) => r1(read(p).status['VmRSS']));
    if (holdS > 0) {
      process.stderr.write(`rss-probe: agents ${pids.join(' ')} up for ${holdS} s\n`);
      await sleep(holdS * 1000);
    }
    return {
      label,
      run,
      pid: pids[0]!,
      threads: r.threads,
      vmRss: r1(r.status['VmRSS']),
      rssAnon: r1(r.status['RssAnon']),
      rssFile: r1(r.status['RssFile']),
      rssShmem: r1(r.status['RssShmem']),
      rollup: Object.fromEntries(
        ['Rss', 'Pss', 'Pss_Anon', 'Pss_File', 'Shared_Clean', 'Private_Clean', 'Private_Dirty', 'Anonymous'].map((k) => [k, r1(r.rollup[k])]),
      ),
      both,
      ...(maps ? { maps: topMaps(pids[0]!) } : {}),
    };
  } finally {
    await bed.destroy();
  }
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
      json: { type: 'boolean', default: false },
    },
  });
  const env: Record<string, string> = {};
  for (const kv of values.env!) {
    const i = kv.indexOf('=');
    if (i <= 0) throw new Error(`--env ${kv}: expected K=V`);
    env[kv.slice(0, i)] = kv.slice(i + 1);
  }
  process.env['CLADNET_CLI'] = values.cli ?? process.env['CLADNET_CLI'] ?? path.join(REPO, 'dist', 'cli.js');
  if (!fs.existsSync(process.env['CLADNET_CLI'])) throw new Error(`${process.env['CLADNET_CLI']} is missing: build first`);
  const runs = Number(values.runs);
  const out: Reading[] = [];
  for (let i = 1; i <= runs; i++) {
    const r = await once(values.label!, i, env, values.arg!, Number(values.settle), values.maps!, Number(values.hold));
    out.push(r);
    if (values.json) process.stdout.write(JSON.stringify(r) + '\n');
    else {
      const ro = r.rollup;
      process.stdout.write(
        `${r.label} #${i}: VmRSS ${r.vmRss} MiB  RssAnon ${r.rssAnon}  RssFile ${r.rssFile}  RssShmem ${r.rssShmem}  ` +
          `(both agents ${r.both.join(' / ')})  threads ${r.threads}  Pss ${ro['Pss']} Pss_Anon ${ro['Pss_Anon']} Pss_File ${ro['Pss_File']} ` +
          `Private_Dirty ${ro['Private_Dirty']} Shared_Clean ${ro['Shared_Clean']}\n`,
      );
      for (const m of r.maps ?? []) process.stdout.write(`    ${String(m.rssMiB).padStart(6)} MiB  ${m.name}\n`);
    }
  }
  if (!values.json && runs > 1) {
    const mean = (f: (r: Reading) => number) => r1(out.reduce((s, r) => s + f(r), 0) / out.length);
    process.stdout.write(`${values.label} mean: VmRSS ${mean((r) => r.vmRss)}  RssAnon ${mean((r) => r.rssAnon)}  RssFile ${mean((r) => r.rssFile)}\n`);
  }
  return 0;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`rss-probe: ${e instanceof Error ? e.stack ?? e.message : String(e)}\n`);
    process.exit(1);
  },
);
