import { spawn as spawnChild, type ChildProcess, type StdioOptions } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { planTopology, setupCommands, RUN_ID_PREFIX, type TopologyPlan, type TopologySpec } from './plan';
import { inNs, run, runOk, runSync, type RunOptions, type RunResult } from './run';

/**
 * A "cloud" made of network namespaces: a router namespace plays the internet, each host hangs
 * off it on its own veth link (see plan.ts for the address plan). Everything a topology creates
 * is named after its run id, recorded in a marker file, and removed by destroy(), by the process
 * exit/SIGINT/SIGTERM hooks, or by cleanupStale() in a later run if this process died hard.
 */

export * from './plan';
export * from './roam';

export interface TopologyHost {
  readonly name: string;
  readonly ns: string;
  readonly underlayIp: string;
  readonly site?: string;
}

export interface SpawnOpts {
  /** Append stdout and stderr to this file (default: both ignored unless `stdio` is given). */
  readonly logFile?: string;
  readonly stdio?: StdioOptions;
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
}

export interface Topology {
  readonly id: string;
  readonly plan: TopologyPlan;
  readonly routerNs: string;
  /** The router's own address (198.18.0.1), reachable from every host: etcd listens here. */
  readonly routerIp: string;
  readonly hosts: readonly TopologyHost[];
  /** A private directory for this run (etcd data, agent state, captures); removed by destroy(). */
  readonly workDir: string;
  host(name: string): TopologyHost;
  /** Runs `cmd` inside `ns`; throws CommandError on a non-zero exit. */
  exec(ns: string, cmd: readonly string[], opts?: RunOptions): Promise<RunResult>;
  /** Runs `cmd` inside `ns`; resolves with whatever exit code it had. */
  tryExec(ns: string, cmd: readonly string[], opts?: RunOptions): Promise<RunResult>;
  /** Starts a long-running process inside `ns`, tracked so destroy() ends it. */
  spawn(ns: string, cmd: readonly string[], opts?: SpawnOpts): ChildProcess;
  /** Ends every process, deletes every namespace and the work dir. Safe to call twice. */
  destroy(): Promise<void>;
  /**
   * Creates one more namespace `<id>-<suffix>` owned by this topology (recorded in its marker, so
   * destroy(), the exit hooks and cleanupStale() remove it too). Returns its name.
   */
  addNamespace(suffix: string): Promise<string>;
}

/** Where markers live: one JSON file per live run, naming its owner pid and its namespaces. */
export const MARKER_DIR = '/run/cladnet-testbed';
const KILL_GRACE_MS = 3_000;

interface Marker {
  id: string;
  pid: number;
  /** Owner's start time (clock ticks since boot, /proc/PID/stat field 22): guards against pid reuse. */
  pidStart: string | null;
  namespaces: string[];
  workDir: string;
  created: string;
}

function procStart(pid: number): string | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may contain spaces; fields after it are space separated.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

function markerPath(id: string): string {
  return path.join(MARKER_DIR, `${id}.json`);
}

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (exited(child)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    child.once('exit', () => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

function existingNamespaces(): Set<string> {
  const r = runSync(['ip', 'netns', 'list']);
  return new Set(r.stdout.split('\n').map((l) => l.split(' ')[0]!).filter(Boolean));
}

/** Kills whatever still runs in `namespaces` and deletes those that exist. Synchronous. */
function wipeNamespacesSync(namespaces: readonly string[]): void {
  const present = existingNamespaces();
  for (const ns of namespaces) {
    if (!present.has(ns)) continue;
    for (const pid of runSync(['ip', 'netns', 'pids', ns]).stdout.split(/\s+/).filter(Boolean)) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
  }
  for (const ns of namespaces) if (present.has(ns)) runSync(['ip', 'netns', 'del', ns]);
}

function removeWorkDir(dir: string, id: string): void {
  // Only ever a directory this module made under the temp dir for run `id`.
  if (!path.basename(dir).startsWith(`cladnet-${id}-`) || path.dirname(dir) !== os.tmpdir()) return;
  fs.rmSync(dir, { recursive: true, force: true });
}

// ---- process hooks: an interrupted run still cleans up ------------------------------------------

const live = new Set<TopologyImpl>();
let hooksInstalled = false;

function onExit(): void {
  for (const t of [...live]) t.destroySync();
}

let signalled = false;

/**
 * On SIGINT/SIGTERM/SIGHUP: destroy every live topology asynchronously (so children are reaped),
 * then, if nobody else listens for the signal, die of it as if we had never caught it.
 * A second signal during the cleanup finishes it synchronously.
 */
function onSignal(sig: NodeJS.Signals): void {
  const alone = process.listenerCount(sig) === 1;
  if (signalled) {
    onExit();
    return;
  }
  signalled = true;
  const all = Promise.all([...live].map((t) => t.destroy()));
  const timeout = new Promise((r) => setTimeout(r, KILL_GRACE_MS + 3_000).unref());
  void Promise.race([all, timeout]).then(() => {
    onExit();
    signalled = false;
    if (alone) {
      uninstallHooks();
      process.kill(process.pid, sig);
    }
  });
}

function installHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', onExit);
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('SIGHUP', onSignal);
}

function uninstallHooks(): void {
  if (!hooksInstalled) return;
  hooksInstalled = false;
  process.off('exit', onExit);
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  process.off('SIGHUP', onSignal);
}

// ---- the topology --------------------------------------------------------------------------------

class TopologyImpl implements Topology {
  readonly id: string;
  readonly routerNs: string;
  readonly routerIp: string;
  readonly hosts: readonly TopologyHost[];
  private readonly children = new Set<ChildProcess>();
  /** Namespaces added after setup (addNamespace). */
  private readonly extra: string[] = [];
  private destroying: Promise<void> | undefined;
  private gone = false;

  constructor(
    readonly plan: TopologyPlan,
    readonly workDir: string,
  ) {
    this.id = plan.id;
    this.routerNs = plan.routerNs;
    this.routerIp = plan.routerIp;
    this.hosts = plan.hosts.map((h) => Object.freeze({ name: h.name, ns: h.ns, underlayIp: h.underlayIp, ...(h.site ? { site: h.site } : {}) }));
  }

  host(name: string): TopologyHost {
    const h = this.hosts.find((x) => x.name === name);
    if (!h) throw new Error(`topology ${this.id}: no host named "${name}"`);
    return h;
  }

  exec(ns: string, cmd: readonly string[], opts?: RunOptions): Promise<RunResult> {
    return runOk(inNs(ns, cmd), opts);
  }

  tryExec(ns: string, cmd: readonly string[], opts?: RunOptions): Promise<RunResult> {
    return run(inNs(ns, cmd), opts);
  }

  spawn(ns: string, cmd: readonly string[], opts: SpawnOpts = {}): ChildProcess {
    if (this.gone || this.destroying) throw new Error(`topology ${this.id} is being destroyed`);
    let stdio: StdioOptions = opts.stdio ?? 'ignore';
    let fd: number | undefined;
    if (opts.logFile) {
      fd = fs.openSync(opts.logFile, 'a');
      stdio = ['ignore', fd, fd];
    }
    const [file, ...args] = inNs(ns, cmd);
    const child = spawnChild(file!, args, { stdio, env: opts.env, cwd: opts.cwd });
    if (fd !== undefined) fs.closeSync(fd); // the child holds its own copy
    this.children.add(child);
    child.on('error', () => {}); // reported through exit code; never crash the test process
    child.once('exit', () => this.children.delete(child));
    return child;
  }

  async addNamespace(suffix: string): Promise<string> {
    const ns = `${this.id}-${suffix}`;
    if (this.plan.namespaces.includes(ns) || this.extra.includes(ns)) throw new Error(`namespace ${ns} is already part of topology ${this.id}`);
    // Into the marker first, so a crash right after still finds it.
    this.extra.push(ns);
    const file = markerPath(this.id);
    const m = JSON.parse(fs.readFileSync(file, 'utf8')) as Marker;
    m.namespaces = [...this.plan.namespaces, ...this.extra];
    fs.writeFileSync(file, JSON.stringify(m) + '\n');
    await runOk(['ip', 'netns', 'add', ns]);
    await runOk(inNs(ns, ['ip', 'link', 'set', 'lo', 'up']));
    return ns;
  }

  destroy(): Promise<void> {
    this.destroying ??= this.doDestroy();
    return this.destroying;
  }

  private async doDestroy(): Promise<void> {
    const kids = [...this.children];
    for (const c of kids) if (!exited(c)) c.kill('SIGTERM');
    const done = await Promise.all(kids.map((c) => waitExit(c, KILL_GRACE_MS)));
    kids.forEach((c, i) => {
      if (!done[i]) c.kill('SIGKILL');
    });
    await Promise.all(kids.map((c) => waitExit(c, 1_000)));
    this.destroySync();
  }

  /** The synchronous core of destroy(): also what the exit hooks run. */
  destroySync(): void {
    if (this.gone) return;
    this.gone = true;
    for (const c of this.children) if (!exited(c)) c.kill('SIGKILL');
    wipeNamespacesSync([...this.extra, ...this.plan.namespaces]);
    // CLADNET_TESTBED_KEEP=1 keeps logs, captures and state for a post-mortem.
    if (process.env['CLADNET_TESTBED_KEEP'] === '1') process.stderr.write(`testbed ${this.id}: kept ${this.workDir}\n`);
    else removeWorkDir(this.workDir, this.id);
    fs.rmSync(markerPath(this.id), { force: true });
    live.delete(this);
    if (live.size === 0) uninstallHooks();
  }
}

/**
 * Builds the namespaces, links, addresses and routes of `spec`. Removes stale leftovers of dead
 * earlier runs first. On any failure it tears down what it built and rethrows.
 */
export async function createTopology(spec: TopologySpec): Promise<Topology> {
  cleanupStale();
  const plan = planTopology(spec);
  if (existingNamespaces().has(plan.routerNs)) throw new Error(`namespace ${plan.routerNs} already exists`);
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), `cladnet-${plan.id}-`));
  fs.mkdirSync(MARKER_DIR, { recursive: true });
  const marker: Marker = {
    id: plan.id,
    pid: process.pid,
    pidStart: procStart(process.pid),
    namespaces: [...plan.namespaces],
    workDir,
    created: new Date().toISOString(),
  };
  // The marker goes down before the first namespace, so a crash mid-setup is still found later.
  fs.writeFileSync(markerPath(plan.id), JSON.stringify(marker) + '\n');
  const topo = new TopologyImpl(plan, workDir);
  live.add(topo);
  installHooks();
  try {
    for (const cmd of setupCommands(plan)) await runOk(cmd);
  } catch (e) {
    await topo.destroy();
    throw e;
  }
  return topo;
}

/**
 * Removes namespaces and work dirs left by earlier runs (run ids starting with `prefix`) whose
 * owning process is gone. Namespaces without one of our markers are never touched.
 * Returns the namespaces it deleted.
 */
export function cleanupStale(prefix: string = RUN_ID_PREFIX): string[] {
  let files: string[];
  try {
    files = fs.readdirSync(MARKER_DIR);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const f of files) {
    if (!f.startsWith(prefix) || !f.endsWith('.json')) continue;
    const file = path.join(MARKER_DIR, f);
    let m: Marker;
    try {
      m = JSON.parse(fs.readFileSync(file, 'utf8')) as Marker;
    } catch {
      continue; // unreadable: leave it to a human rather than guess
    }
    if (!Array.isArray(m.namespaces) || typeof m.pid !== 'number') continue;
    const start = procStart(m.pid);
    if (start !== null && (m.pidStart === null || start === m.pidStart)) continue; // owner still alive
    const ours = m.namespaces.filter((ns) => typeof ns === 'string' && ns.startsWith(`${m.id}-`));
    const present = existingNamespaces();
    removed.push(...ours.filter((ns) => present.has(ns)));
    wipeNamespacesSync(ours);
    if (typeof m.workDir === 'string' && typeof m.id === 'string') removeWorkDir(m.workDir, m.id);
    fs.rmSync(file, { force: true });
  }
  return removed;
}
