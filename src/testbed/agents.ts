import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { run, runOk, type RunResult } from './run';
import { AGENT_NODE_FLAGS } from '../agent/node-flags';
import { fetchStatus } from '../status/client';
import type { StatusDocument, StatusPeer } from '../status/types';
import type { Topology, TopologyHost } from './topology';

/**
 * Agents in the test bed, started and stopped only through the command-line contract
 * (DESIGN.md section 2). Status is read either through `cladnet status --json` (statusCli) or,
 * faster for polling, straight from the status socket with the same client the CLI uses (status).
 */
export type AgentStatus = StatusDocument;
export type PeerStatus = StatusPeer;

/** dist/cli.js of this checkout (the same path from src/testbed and dist/testbed); CLADNET_CLI overrides. */
export function cliPath(): string {
  return process.env['CLADNET_CLI'] ?? path.resolve(__dirname, '..', '..', 'dist', 'cli.js');
}

/** Runs `node dist/cli.js ARGS` inside `ns` (or in the caller's namespace when ns is null). */
export function cli(topo: Topology, ns: string | null, args: readonly string[], timeoutMs = 20_000): Promise<RunResult> {
  const cmd = [process.execPath, cliPath(), ...args];
  return ns === null ? run(cmd, { timeoutMs }) : topo.tryExec(ns, cmd, { timeoutMs });
}

/** Where the test bed keeps a network's key (the operator's offline file): the run's work dir. */
export function networkKeyFile(topo: Topology, network: string): string {
  return path.join(topo.workDir, `${network}.netkey`);
}

/** `network create NAME --cidr CIDR --etcd URL --key-out <workDir>/NAME.netkey`, run from the router namespace. */
export async function createNetwork(topo: Topology, opts: { name: string; cidr: string; etcd: string }): Promise<void> {
  await runOk(
    [
      ...['ip', 'netns', 'exec', topo.routerNs, process.execPath, cliPath()],
      ...['network', 'create', opts.name, '--cidr', opts.cidr, '--etcd', opts.etcd, '--key-out', networkKeyFile(topo, opts.name)],
    ],
    { timeoutMs: 20_000 },
  );
}

/**
 * `host issue NAME --network NET --network-key <workDir>/NET.netkey --out DIR [--relay]`, run from
 * the router namespace (the operator's seat): DIR gets private.key (kept when present) and host.cert.
 */
export async function issueHostCert(
  topo: Topology,
  opts: { name: string; network: string; etcd: string; out: string; relay?: boolean; routes?: readonly string[] },
): Promise<void> {
  await runOk(
    [
      ...['ip', 'netns', 'exec', topo.routerNs, process.execPath, cliPath()],
      ...['host', 'issue', opts.name, '--network', opts.network, '--network-key', networkKeyFile(topo, opts.network), '--out', opts.out, '--etcd', opts.etcd],
      ...(opts.relay ? ['--relay'] : []),
      ...(opts.routes?.length ? ['--routes', opts.routes.join(',')] : []),
    ],
    { timeoutMs: 20_000 },
  );
}

export interface AgentOptions {
  readonly etcd: string;
  readonly network: string;
  /** Agent --name; default the host's name. */
  readonly name?: string;
  readonly iface?: string;
  readonly listenPort?: number;
  readonly logLevel?: string;
  readonly extraArgs?: readonly string[];
  /** Variables added to the agent's environment (e.g. NOTIFY_SOCKET, WATCHDOG_USEC). */
  readonly env?: Readonly<Record<string, string>>;
  /**
   * A command the agent's argv is appended to, run in the namespace instead of the agent itself
   * (e.g. a shell that exports WATCHDOG_PID=$$ and execs, as systemd would set it).
   */
  readonly launcher?: readonly string[];
  /** Issue a certificate bundle into the state dir before starting (default true). */
  readonly issueCert?: boolean;
  /** Prefixes the issued certificate lets the host route (`host issue --routes`). */
  readonly certRoutes?: readonly string[];
  /**
   * Start as a user would by hand, `node dist/cli.js agent`, so the agent re-executes itself with
   * its Node flags (src/agent/node-flags.ts). Default false: the flags are on node's command line,
   * as systemd/cladnet.service has them, and the agent starts once.
   */
  readonly reexec?: boolean;
  /** Wait until `status --json` answers (default true). */
  readonly waitReady?: boolean;
  readonly readyTimeoutMs?: number;
}

export interface ExitInfo {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export interface Agent {
  readonly host: TopologyHost;
  readonly name: string;
  readonly iface: string;
  readonly listenPort: number;
  readonly stateDir: string;
  readonly socket: string;
  readonly logFile: string;
  readonly proc: ChildProcess;
  /** Date.now() just before the process was spawned. */
  readonly spawnedAt: number;
  readonly exited: Promise<ExitInfo>;
  /** The status document read from the socket. Throws when the agent does not answer. */
  status(): Promise<AgentStatus>;
  /** `cladnet status --json`, parsed: the CLI path a person uses. */
  statusCli(): Promise<AgentStatus>;
  /** `status` as a person sees it. */
  statusText(): Promise<string>;
  /** The last lines of the agent's log (for failure messages). */
  logTail(lines?: number): string;
  /** SIGTERM (or `signal`), then wait for exit; SIGKILL after `timeoutMs` (default 5 s). */
  stop(opts?: { signal?: NodeJS.Signals; timeoutMs?: number }): Promise<ExitInfo>;
}

/**
 * Starts `cladnet agent` in `host`'s namespace; state and socket live under the topology's work dir.
 * First the operator's step: a certificate bundle for the host into its state dir (see issueHostCert).
 */
export async function startAgent(topo: Topology, host: TopologyHost, opts: AgentOptions): Promise<Agent> {
  const name = opts.name ?? host.name;
  const iface = opts.iface ?? 'cladnet0';
  const listenPort = opts.listenPort ?? 51820;
  const stateDir = path.join(topo.workDir, 'agents', name);
  fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const socket = path.join(stateDir, 'cladnet.sock');
  const logFile = path.join(stateDir, 'agent.log');
  // An agent started with --relay gets a certificate that allows it (peers ignore the flag otherwise).
  const relay = opts.extraArgs?.includes('--relay') ?? false;
  if (opts.issueCert ?? true) await issueHostCert(topo, { name, network: opts.network, etcd: opts.etcd, out: stateDir, relay, routes: opts.certRoutes });
  const args = [
    process.execPath,
    ...(opts.reexec ? [] : AGENT_NODE_FLAGS),
    cliPath(),
    'agent',
    '--etcd',
    opts.etcd,
    '--network',
    opts.network,
    '--name',
    name,
    '--interface',
    iface,
    '--listen-port',
    String(listenPort),
    '--state-dir',
    stateDir,
    '--socket',
    socket,
    '--log-level',
    opts.logLevel ?? 'info',
    ...(opts.extraArgs ?? []),
  ];
  const spawnedAt = Date.now();
  const proc = topo.spawn(host.ns, [...(opts.launcher ?? []), ...args], {
    logFile,
    env: opts.env ? { ...process.env, ...opts.env } : undefined,
  });
  const exited = new Promise<ExitInfo>((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) resolve({ code: proc.exitCode, signal: proc.signalCode });
    else proc.once('exit', (code, signal) => resolve({ code, signal }));
  });
  const logTail = (lines = 20): string => {
    try {
      return fs.readFileSync(logFile, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  };
  const status = (): Promise<AgentStatus> => fetchStatus(socket, 3_000);
  const statusCli = async (): Promise<AgentStatus> => {
    const r = await cli(topo, null, ['status', '--socket', socket, '--json'], 10_000);
    if (r.code !== 0) throw new Error(`status of agent ${name} failed (exit ${r.code}): ${r.stderr.trim()}`);
    return JSON.parse(r.stdout) as AgentStatus;
  };
  const statusText = async (): Promise<string> => {
    const r = await cli(topo, null, ['status', '--socket', socket], 10_000);
    if (r.code !== 0) throw new Error(`status of agent ${name} failed (exit ${r.code}): ${r.stderr.trim()}`);
    return r.stdout;
  };
  const stop = async (o: { signal?: NodeJS.Signals; timeoutMs?: number } = {}): Promise<ExitInfo> => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill(o.signal ?? 'SIGTERM');
    const t = setTimeout(() => proc.kill('SIGKILL'), o.timeoutMs ?? 5_000);
    const info = await exited;
    clearTimeout(t);
    return info;
  };
  const agent: Agent = { host, name, iface, listenPort, stateDir, socket, logFile, proc, spawnedAt, exited, status, statusCli, statusText, logTail, stop };

  if (opts.waitReady ?? true) {
    const deadline = Date.now() + (opts.readyTimeoutMs ?? 20_000);
    let lastErr = '';
    for (;;) {
      if (proc.exitCode !== null || proc.signalCode !== null) {
        throw new Error(`agent ${name} exited during startup (${proc.exitCode ?? proc.signalCode}):\n${logTail()}`);
      }
      if (fs.existsSync(socket)) {
        try {
          await status();
          break;
        } catch (e) {
          lastErr = (e as Error).message;
        }
      }
      if (Date.now() > deadline) {
        await stop({ timeoutMs: 2_000 });
        throw new Error(`agent ${name} not ready after ${opts.readyTimeoutMs ?? 20_000} ms: ${lastErr}\n${logTail()}`);
      }
      await sleep(100);
    }
  }
  return agent;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `probe` until it returns a value other than undefined/false; throws with `what` on timeout. */
export async function waitUntil<T>(
  what: string,
  probe: () => Promise<T | undefined | false>,
  opts: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<T> {
  const deadline = Date.now() + (opts.timeoutMs ?? 15_000);
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined && v !== false) return v;
    } catch (e) {
      lastErr = e;
    }
    if (Date.now() > deadline) {
      const why = lastErr instanceof Error ? `: ${lastErr.message}` : '';
      throw new Error(`timed out after ${opts.timeoutMs ?? 15_000} ms waiting for ${what}${why}`);
    }
    await sleep(opts.intervalMs ?? 200);
  }
}

/** Waits until every agent lists every other agent as `up`; returns their last status documents. */
export async function waitMeshUp(agents: readonly Agent[], timeoutMs = 20_000): Promise<Map<string, AgentStatus>> {
  const names = agents.map((a) => a.name);
  return waitUntil(
    `a full mesh of ${names.join(', ')}`,
    async () => {
      const docs = await Promise.all(agents.map((a) => a.status()));
      const ok = docs.every((d) =>
        names.every((n) => n === d.self.name || d.peers.some((p) => p.name === n && p.state === 'up')),
      );
      return ok ? new Map(docs.map((d) => [d.self.name, d])) : undefined;
    },
    { timeoutMs, intervalMs: 250 },
  );
}

/** Sum of all dataplane drop counters (0 when the document has none). */
export function totalDrops(s: AgentStatus): number {
  return Object.values(s.dataplane?.drops ?? {}).reduce((a, b) => a + b, 0);
}
