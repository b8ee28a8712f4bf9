/**
 * One swarm run at one N, end to end: a fresh etcd, the swarm (harness.ts), every phase, the
 * final verification, teardown. Used by bench/swarm.ts for each N and by the e2e smoke test.
 */
import { startEtcd, type EtcdHandle } from '../../test/helpers/etcd';
import type { ConsumerKind } from './consumer';
import { Swarm, type ColdStartResult, type IdleResult, type OneChangeResult, type SustainedResult, type VerifyResult, type WorkerStats } from './harness';

export interface RunOptions {
  readonly n: number;
  /** Virtual agents that run (default n); see SwarmOptions.agents. */
  readonly agents?: number;
  readonly workers: number;
  /** Changes in the one-change phase (each waits for every agent). */
  readonly changes: number;
  readonly sustainSeconds: number;
  readonly rate: number;
  readonly idleSeconds: number;
  readonly drainSeconds: number;
  /** Cold start: how long to wait for every agent to hold N - 1 peers before going on. */
  readonly coldStartLimitSeconds: number;
  /** Final check: how long agents that differ from etcd may take to catch up. */
  readonly settleSeconds: number;
  readonly cache: boolean;
  readonly consumer: ConsumerKind;
  readonly log: (msg: string) => void;
  readonly workerScript?: string;
  /** Runs after the verification, before teardown (the smoke test checks the verifier with it). */
  readonly beforeClose?: (swarm: Swarm) => Promise<void>;
}

export interface RunResult {
  readonly n: number;
  /** Virtual agents that ran: n, or a sample of the n hosts. */
  readonly agents: number;
  readonly workers: number;
  readonly ok: boolean;
  /** Why the run failed (empty when ok). */
  readonly failures: readonly string[];
  readonly coldStart: ColdStartResult | null;
  readonly idle: IdleResult | null;
  readonly oneChange: OneChangeResult | null;
  readonly sustained: SustainedResult | null;
  readonly verify: VerifyResult | null;
  readonly agentStats: WorkerStats | null;
  readonly etcd: { readonly version: string | null; readonly dbSizeBytes: number | null };
  readonly startedAt: string;
  readonly seconds: number;
}

const fmt = (v: number | null | undefined, d = 0) => (v === null || v === undefined ? '-' : v.toFixed(d));

export async function runSwarm(o: RunOptions): Promise<RunResult> {
  const startedAt = new Date().toISOString();
  const t0 = Date.now();
  const failures: string[] = [];
  let etcd: EtcdHandle | null = null;
  let swarm: Swarm | null = null;
  const r: {
    coldStart: ColdStartResult | null;
    idle: IdleResult | null;
    oneChange: OneChangeResult | null;
    sustained: SustainedResult | null;
    verify: VerifyResult | null;
    agentStats: WorkerStats | null;
    etcd: { version: string | null; dbSizeBytes: number | null };
  } = { coldStart: null, idle: null, oneChange: null, sustained: null, verify: null, agentStats: null, etcd: { version: null, dbSizeBytes: null } };
  const log = (m: string) => o.log(`N=${o.n}${o.agents !== undefined && o.agents < o.n ? ` (${o.agents} agents)` : ''}: ${m}`);
  try {
    etcd = await startEtcd({ extraArgs: ['--quota-backend-bytes=8589934592'] });
    swarm = await Swarm.create({ n: o.n, agents: o.agents, workers: o.workers, endpoint: etcd.endpoint, etcdPid: etcd.pid(), consumer: o.consumer, cache: o.cache, log, workerScript: o.workerScript });

    log('cold start');
    r.coldStart = await swarm.coldStart(o.coldStartLimitSeconds * 1000);
    log(`cold start: ${r.coldStart.ms === null ? `${r.coldStart.incomplete} agents never held ${o.n - 1} peers` : `every agent holds ${o.n - 1} peers after ${fmt(r.coldStart.ms)} ms (${fmt(r.coldStart.cpu.agentsS, 1)} s CPU)`}`);
    if (r.coldStart.ms === null) failures.push(`cold start: ${r.coldStart.incomplete} of ${r.coldStart.agents} agents did not hold ${o.n - 1} peers within ${o.coldStartLimitSeconds} s`);
    if (r.coldStart.errors.length > 0) failures.push(`cold start errors: ${r.coldStart.errors.slice(0, 3).join('; ')}`);

    // let the tail of the start settle (cache writes, late emits) before the quiet window
    await new Promise((res) => setTimeout(res, 2000));
    r.idle = await swarm.idle(o.idleSeconds);
    log(`idle: agents ${fmt(r.idle.agentsPct, 1)} % of a core (${fmt(r.idle.perAgentPct, 3)} % each), etcd ${fmt(r.idle.etcdPct, 1)} %`);

    if (o.changes > 0) {
      r.oneChange = await swarm.oneChanges(o.changes);
      log(`one change x${o.changes}: p50 ${fmt(r.oneChange.p50Ms, 1)} p99 ${fmt(r.oneChange.p99Ms, 1)} max ${fmt(r.oneChange.maxMs, 1)} ms; agents ${fmt(r.oneChange.agentsCpuSPerChange * 1000, 1)} ms CPU per change (${fmt(r.oneChange.networkCpuSPerChange * 1000, 1)} ms for all ${o.n})`);
      if (r.oneChange.undelivered > 0) failures.push(`one change: ${r.oneChange.undelivered} deliveries never happened`);
    }
    if (o.sustainSeconds > 0) {
      log(`sustained: ${o.rate} changes/s for ${o.sustainSeconds} s`);
      r.sustained = await swarm.sustained(o.sustainSeconds, o.rate, o.drainSeconds * 1000);
      log(`sustained: p99 ${fmt(r.sustained.p99Ms, 1)} ms, backlog at end ${r.sustained.backlogAtEnd}, drained in ${fmt(r.sustained.drainMs)} ms`);
      if (r.sustained.undelivered > 0) log(`sustained: ${r.sustained.undelivered} deliveries still missing ${o.drainSeconds} s after the last change`);
    }

    r.verify = await swarm.verifySettled(o.settleSeconds * 1000);
    log(`verify: ${r.verify.ok ? `every agent's peer set matches etcd (${r.verify.etcdHosts} hosts; agreed ${fmt(r.verify.settleMs)} ms after the last phase)` : `${r.verify.mismatched} agents differ from etcd`}`);
    if (!r.verify.ok) failures.push(`final peer sets: ${r.verify.mismatched} of ${r.verify.agents} agents still differ from etcd ${o.settleSeconds} s after the last phase (${r.verify.examples.join(' | ')})`);
    r.agentStats = await swarm.stats();
    r.etcd = await etcdStatus(etcd.endpoint);
    if (o.beforeClose) await o.beforeClose(swarm);
  } catch (e) {
    failures.push(`run aborted: ${(e as Error).message.split('\n')[0]}`);
  } finally {
    await swarm?.close().catch((e: unknown) => void failures.push(`teardown: ${(e as Error).message}`));
    await etcd?.stop();
  }
  return { n: o.n, agents: o.agents ?? o.n, workers: o.workers, ok: failures.length === 0, failures, ...r, startedAt, seconds: (Date.now() - t0) / 1000 };
}

/** etcd's version and database size, from its HTTP endpoints. */
async function etcdStatus(endpoint: string): Promise<{ version: string | null; dbSizeBytes: number | null }> {
  try {
    const v = (await (await fetch(`${endpoint}/version`, { signal: AbortSignal.timeout(5000) })).json()) as { etcdserver?: string };
    const m = await (await fetch(`${endpoint}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
    const db = m.split('\n').find((l) => l.startsWith('etcd_mvcc_db_total_size_in_bytes ') || l.startsWith('etcd_debugging_mvcc_db_total_size_in_bytes '));
    return { version: v.etcdserver ?? null, dbSizeBytes: db ? Number(db.split(' ')[1]) : null };
  } catch {
    return { version: null, dbSizeBytes: null };
  }
}
