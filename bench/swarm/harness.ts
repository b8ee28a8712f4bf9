/**
 * The swarm bench's coordinator: N virtual agents in a few worker processes against one etcd.
 *
 *   1. setup      a network made as `cladnet network create` makes it (network key, signed spec);
 *                 (with `agents` < n, the hosts without an agent are published here, alive on a
 *                 lease this process keeps: a sample of agents watching a network of n hosts)
 *                 per host an X25519 key, a certificate signed by the network key with issueCert
 *                 (what `cladnet host issue` signs), its lease and its /issued/ record, written in
 *                 batches; endpoints in 198.18.0.0/15 that nothing ever contacts
 *   2. workers    fork()ed (worker.ts); each builds its agents: etcd3 client, EtcdLink, Registry,
 *                 PeerConsumer (consumer.ts)
 *   3. cold start every agent watches, publishes and puts its alive key at once; done when every
 *                 agent's table holds N - 1 peers
 *   4. idle       CPU of the workers and of etcd over a quiet window
 *   5. one change one host's record is republished with new endpoints (the same read-then-txn
 *                 write Registry.publish makes, from this process, so a busy worker cannot delay
 *                 the put it is timed from); the next change only once every agent has it
 *   6. sustained  changes at a fixed rate for a while, without waiting; then how many deliveries
 *                 are still outstanding (backlog) and how long they take to drain
 *   7. verify     every agent's peer table against a read of etcd (names and epochs)
 *
 * All phases report what they measured, never a constant; a phase that cannot finish says so.
 */
import { fork, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Etcd3, Lease } from 'etcd3';
import { issueCert, TrustAnchor } from '../../src/control/cert';
import { readNetworkKey } from '../../src/control/credentials';
import { createEtcd } from '../../src/control/etcd';
import { aliveKey, hostKey, hostsPrefix, alivePrefix, issuedKey, leaseKey, networkKey, parseKey } from '../../src/control/keys';
import { createNetworkWithKey } from '../../src/control/membership';
import { etcdPages, readPrefix } from '../../src/control/range';
import {
  checkRecordSize,
  parseHostRecord,
  serializeHostCert,
  serializeHostRecord,
  serializeLeaseRecord,
  type HostCert,
  type HostRecord,
  type NetworkSpec,
} from '../../src/control/records';
import { loadEd25519 } from '../../src/crypto/sign';
import { formatIpv4 } from '../../src/util/ipv4';
import { percentile } from '../stats';
import type { ConsumerKind } from './consumer';
import type { AgentSpec, ChangeRef, CollectReply, Hello, Reply, Request, StartReply, StatsReply, VerifyReply } from './protocol';
import { cpuOf, etcdMetrics } from './procstat';

export const NETWORK = 'swarm';
const CIDR = '100.64.0.0/16';
/** etcd's counters read around each phase (sums over their labels). */
export const ETCD_COUNTERS = ['etcd_network_client_grpc_sent_bytes_total', 'etcd_network_client_grpc_received_bytes_total'] as const;
const SETUP_BATCH = 40;
const POLL_MS = 50;
/** A change older than this that an agent has not applied yet is backlog (the p99 target is 500 ms). */
export const BACKLOG_AGE_MS = 1000;

export const now = (): number => performance.timeOrigin + performance.now();
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export interface SwarmOptions {
  /** Hosts in the network. */
  readonly n: number;
  /**
   * How many of them run as virtual agents (default n: all). The others are published by the
   * coordinator before the cold start (records, alive keys on one lease it keeps alive): a network
   * of n hosts seen by a sample of agents, for sizes whose n agents do not fit on this machine.
   */
  readonly agents?: number;
  readonly workers: number;
  /** etcd's client URL (http://host:port) and pid (for its CPU; null: not measured). */
  readonly endpoint: string;
  readonly etcdPid: number | null;
  readonly consumer: ConsumerKind;
  /** Give every agent a peer cache file, as the agent keeps one (the default). */
  readonly cache: boolean;
  /** Registry log level inside the workers; warnings are counted either way. */
  readonly logLevel?: string;
  /** Progress lines. */
  readonly log?: (msg: string) => void;
  /** The compiled worker; default worker.js beside this file, else dist-bench's. */
  readonly workerScript?: string;
  /** Cold start gives up after this long (ms). */
  readonly coldStartLimitMs?: number;
}

export interface CpuSample {
  readonly agentsS: number;
  readonly etcdS: number | null;
  readonly at: number;
}

export interface LatencySummary {
  readonly samples: number;
  readonly p50Ms: number | null;
  readonly p99Ms: number | null;
  readonly maxMs: number | null;
}

export interface ColdStartResult {
  readonly ms: number | null;
  /** Agents that did not reach N - 1 peers within the limit. */
  readonly incomplete: number;
  /** Agents that started (all n, or the sample). */
  readonly agents: number;
  readonly p50AgentMs: number | null;
  readonly errors: readonly string[];
  readonly cpu: { readonly agentsS: number; readonly etcdS: number | null };
}

export interface IdleResult {
  readonly seconds: number;
  /** Percent of one core: all agents' workers together, per agent, and etcd. */
  readonly agentsPct: number;
  /** agentsPct / the number of agents running. */
  readonly perAgentPct: number;
  readonly etcdPct: number | null;
  readonly etcdSentBytesPerS: number;
}

export interface ChangePhaseCost {
  readonly changes: number;
  readonly revisionsPerChange: number;
  readonly etcdSentBytesPerChange: number;
  /** The same, less what etcd sends when idle (keepalives) over the phase's duration. */
  readonly etcdSentBytesPerChangeNet: number;
  /** CPU seconds per change of the agents that ran, less the idle rate over the phase's duration. */
  readonly agentsCpuSPerChange: number;
  /** The same per agent, and times n: what every agent of an n-host network spends on one change. */
  readonly perAgentCpuSPerChange: number;
  readonly networkCpuSPerChange: number;
  readonly etcdCpuSPerChange: number | null;
}

export interface OneChangeResult extends LatencySummary, ChangePhaseCost {
  readonly undelivered: number;
  readonly seconds: number;
}

export interface SustainedResult extends LatencySummary, ChangePhaseCost {
  readonly seconds: number;
  readonly targetRate: number;
  readonly achievedRate: number;
  /**
   * (change, agent) deliveries outstanding when the last change was written, of changes written
   * more than BACKLOG_AGE_MS before: what the agents have not caught up with.
   */
  readonly backlogAtEnd: number;
  /** All deliveries outstanding at that moment, the ones in flight included. */
  readonly outstandingAtEnd: number;
  /** Of those, still outstanding after the drain limit. */
  readonly undelivered: number;
  readonly drainMs: number | null;
  /** Median latency of the last fifth of the changes minus the first fifth's, per second between them. */
  readonly lagGrowthMsPerS: number | null;
  readonly firstFifthP50Ms: number | null;
  readonly lastFifthP50Ms: number | null;
}

export interface VerifyResult {
  readonly ok: boolean;
  readonly agents: number;
  readonly mismatched: number;
  readonly examples: readonly string[];
  readonly etcdHosts: number;
  /** How long the agents took to agree with etcd after the last phase (verifySettled). */
  readonly settleMs: number;
}

export interface WorkerStats extends Omit<StatsReply, 'firstWarnings'> {
  readonly firstWarnings: readonly string[];
  readonly rssMiB: number;
}

interface Child {
  readonly proc: ChildProcess;
  readonly pid: number;
  readonly agents: AgentSpec[];
  readonly pending: Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>;
  exited: string | null;
}

function hostName(i: number): string {
  return `s${String(i).padStart(4, '0')}`;
}

/** Two underlay endpoints in 198.18.0.0/15, distinct per host; `port` varies with each change. */
function endpointsOf(i: number, port: number): string[] {
  const a = (i >> 8) & 255;
  const b = i & 255;
  return [`198.18.${a}.${b}:${port}`, `198.19.${a}.${b}:${port}`];
}

export function summarize(values: Float64Array | readonly number[]): LatencySummary {
  const v = Float64Array.from(values).sort();
  return {
    samples: v.length,
    p50Ms: percentile(v as unknown as number[], 50),
    p99Ms: percentile(v as unknown as number[], 99),
    maxMs: v.length ? v[v.length - 1]! : null,
  };
}

export class Swarm {
  private readonly children: Child[] = [];
  private readonly admin: Etcd3;
  private readonly log: (msg: string) => void;
  private readonly dir: string;
  private spec!: NetworkSpec;
  private anchor!: TrustAnchor;
  private seq = 0;
  private idleRate: { agents: number; etcd: number | null; sentBytes: number } | null = null;
  private changeCount = 0;
  /** Changes picked so far (which host moves next). */
  private picked = 0;
  private closed = false;
  /** Agents that run (n, or the sample). */
  readonly live: number;
  private othersLease: Lease | null = null;

  private constructor(private readonly o: SwarmOptions) {
    this.admin = createEtcd({ endpoints: [o.endpoint] });
    this.log = o.log ?? (() => undefined);
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-swarm-'));
    this.live = o.agents ?? o.n;
    liveDirs.add(this.dir);
    installExitHook();
  }

  /** Sets up the network and hosts, forks the workers and builds their agents (not started yet). */
  static async create(o: SwarmOptions): Promise<Swarm> {
    if (!Number.isInteger(o.n) || o.n < 2) throw new Error(`n: ${o.n} must be an integer >= 2`);
    if (!Number.isInteger(o.workers) || o.workers < 1) throw new Error(`workers: ${o.workers} must be an integer >= 1`);
    if (o.agents !== undefined && (!Number.isInteger(o.agents) || o.agents < 2 || o.agents > o.n)) throw new Error(`agents: ${o.agents} must be an integer from 2 to n (${o.n})`);
    const s = new Swarm(o);
    try {
      const agents = await s.setup();
      await s.publishOthers(agents.slice(s.live));
      await s.forkWorkers(agents.slice(0, s.live));
    } catch (e) {
      await s.close();
      throw e;
    }
    return s;
  }

  /** Worker pids (for CPU readings). */
  pids(): number[] {
    return this.children.map((c) => c.pid);
  }

  get n(): number {
    return this.o.n;
  }

  // ---- 1. setup -----------------------------------------------------------------------------

  private async setup(): Promise<AgentSpec[]> {
    const t = now();
    const ed = await loadEd25519();
    const keyFile = path.join(this.dir, `${NETWORK}.netkey`);
    this.spec = await createNetworkWithKey(this.admin, { name: NETWORK, cidr: CIDR }, keyFile);
    const netKey = readNetworkKey(keyFile, ed);
    this.anchor = new TrustAnchor(ed, NETWORK, this.spec.trustAnchor!);
    const agents: AgentSpec[] = [];
    for (let i = 0; i < this.o.n; i++) {
      const name = hostName(i);
      const publicKey = randomBytes(32).toString('base64');
      const overlayIp = formatIpv4((100 << 24) + (64 << 16) + 256 + i); // 100.64.1.0 + i
      const cert: HostCert = issueCert(ed, netKey.secretKey, { network: NETWORK, name, publicKey, overlayIp });
      const record: HostRecord = {
        version: 1,
        name,
        network: NETWORK,
        overlayIp,
        publicKey,
        endpoints: endpointsOf(i, 51820),
        hostCidrs: [`198.18.${(i >> 8) & 255}.0/24`, `198.19.${(i >> 8) & 255}.0/24`],
        listenPort: 51820,
        epoch: 0,
        updated: new Date().toISOString(),
        session: randomBytes(8).toString('hex'),
        nat: 'eim',
        cert,
      };
      agents.push({ index: i, name, record, cert });
    }
    netKey.secretKey.fill(0);
    // What `host issue` leaves in etcd for each host: its lease and its /issued/ record.
    for (let i = 0; i < agents.length; i += SETUP_BATCH) {
      const puts = agents.slice(i, i + SETUP_BATCH).flatMap((a) => [
        this.admin
          .put(leaseKey(NETWORK, a.record.overlayIp))
          .value(serializeLeaseRecord({ version: 1, host: a.name, publicKey: a.record.publicKey, created: a.cert.issued })),
        this.admin.put(issuedKey(NETWORK, a.name)).value(serializeHostCert(a.cert)),
      ]);
      await this.admin.if(networkKey(NETWORK), 'Create', '>', 0).then(...puts).commit();
    }
    this.log(`setup: network ${NETWORK}, ${this.o.n} certificates signed and leased in ${((now() - t) / 1000).toFixed(1)} s`);
    return agents;
  }

  /** Hosts without an agent: records (as Registry.publish writes them) and alive keys on one lease of ours. */
  private async publishOthers(others: AgentSpec[]): Promise<void> {
    if (others.length === 0) return;
    const lease = this.admin.lease(10);
    this.othersLease = lease;
    lease.on('lost', (e) => this.log(`the lease of the hosts without an agent was lost: ${e.message}`));
    await lease.grant();
    for (let i = 0; i < others.length; i += SETUP_BATCH) {
      const puts = others.slice(i, i + SETUP_BATCH).map((a) => {
        const t = Date.now();
        const value = serializeHostRecord({ ...a.record, epoch: t, updated: new Date(t).toISOString() });
        checkRecordSize('host', value);
        return this.admin.put(hostKey(NETWORK, a.name)).value(value);
      });
      await this.admin.if(networkKey(NETWORK), 'Create', '>', 0).then(...puts).commit();
      for (const a of others.slice(i, i + SETUP_BATCH)) {
        await lease.put(aliveKey(NETWORK, a.name)).value(JSON.stringify({ version: 1, host: a.name, since: new Date().toISOString() }));
      }
    }
    this.log(`setup: ${others.length} hosts without an agent published, alive on one lease; ${this.live} agents will run`);
  }

  // ---- 2. workers ---------------------------------------------------------------------------

  private workerScript(): string {
    if (this.o.workerScript) return this.o.workerScript;
    const beside = path.join(__dirname, 'worker.js');
    if (fs.existsSync(beside)) return beside;
    const built = path.resolve(__dirname, '..', '..', 'dist-bench', 'bench', 'swarm', 'worker.js');
    if (fs.existsSync(built)) return built;
    throw new Error(`no compiled worker at ${beside} or ${built}: run tsc -p bench/tsconfig.json`);
  }

  private async forkWorkers(agents: AgentSpec[]): Promise<void> {
    const script = this.workerScript();
    const w = Math.min(this.o.workers, agents.length);
    const shares: AgentSpec[][] = Array.from({ length: w }, () => []);
    for (const a of agents) shares[a.index % w]!.push(a);
    for (const share of shares) {
      const proc = fork(script, [], {
        serialization: 'advanced',
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
        execArgv: ['--max-old-space-size=8192'],
      });
      const pid = await new Promise<number>((resolve, reject) => {
        const onExit = (code: number | null, sig: string | null) => reject(new Error(`worker exited before it was ready (${sig ?? code})`));
        proc.once('exit', onExit);
        proc.once('message', (m: Hello) => {
          proc.off('exit', onExit);
          if (m.hello) resolve(m.pid);
          else reject(new Error('worker: unexpected first message'));
        });
      });
      const child: Child = { proc, pid, agents: share, pending: new Map(), exited: null };
      proc.on('message', (m: Reply) => {
        const p = child.pending.get(m.id);
        if (!p) return;
        child.pending.delete(m.id);
        if (m.ok) p.resolve(m.value);
        else p.reject(new Error(`worker ${pid}: ${m.error}`));
      });
      proc.on('exit', (code, sig) => {
        child.exited = `exited with ${sig ?? code}`;
        for (const p of child.pending.values()) p.reject(new Error(`worker ${pid} ${child.exited}`));
        child.pending.clear();
      });
      this.children.push(child);
    }
    const cacheDir = this.o.cache ? path.join(this.dir, 'cache') : null;
    await Promise.all(
      this.children.map((c) =>
        this.ask(c, {
          type: 'init',
          id: 0,
          endpoint: this.o.endpoint,
          spec: this.spec,
          agents: c.agents,
          total: this.o.n,
          consumer: this.o.consumer,
          cacheDir,
          logLevel: this.o.logLevel ?? 'warn',
        }),
      ),
    );
    this.log(`workers: ${this.children.length} processes (${this.children.map((c) => `${c.pid}: ${c.agents.length} agents`).join(', ')})`);
  }

  private ask<T>(c: Child, req: Request): Promise<T> {
    if (c.exited) return Promise.reject(new Error(`worker ${c.pid} ${c.exited}`));
    const id = ++this.seq;
    return new Promise<T>((resolve, reject) => {
      c.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      c.proc.send({ ...req, id });
    });
  }

  private askAll<T>(req: Request): Promise<T[]> {
    return Promise.all(this.children.map((c) => this.ask<T>(c, req)));
  }

  cpu(): CpuSample {
    return { agentsS: cpuOf(this.pids()), etcdS: this.o.etcdPid === null ? null : cpuOf([this.o.etcdPid]), at: now() };
  }

  private async counters(): Promise<{ revision: number; sent: number }> {
    const [m, res] = await Promise.all([etcdMetrics(this.o.endpoint, ETCD_COUNTERS), this.admin.get(networkKey(NETWORK)).exec()]);
    return { revision: Number(res.header.revision), sent: m['etcd_network_client_grpc_sent_bytes_total']! };
  }

  // ---- 3. cold start ------------------------------------------------------------------------

  /** Every agent starts at once; waits up to `limitMs` for all of them to hold N - 1 peers. */
  async coldStart(limitMs: number): Promise<ColdStartResult> {
    const before = this.cpu();
    const t0 = now();
    const replies = await this.askAll<StartReply>({ type: 'start', id: 0, limitMs });
    const after = this.cpu();
    const done: number[] = [];
    let incomplete = 0;
    for (const r of replies) for (const t of r.completeAt) Number.isNaN(t) ? incomplete++ : done.push(t - t0);
    done.sort((a, b) => a - b);
    // the cold start's observations are not changes
    await this.askAll<CollectReply>({ type: 'collect', id: 0, changes: [], reset: true });
    return {
      ms: incomplete === 0 ? done[done.length - 1]! : null,
      incomplete,
      agents: this.live,
      p50AgentMs: percentile(done, 50),
      errors: replies.flatMap((r) => r.errors).slice(0, 10),
      cpu: { agentsS: after.agentsS - before.agentsS, etcdS: after.etcdS === null ? null : after.etcdS - before.etcdS! },
    };
  }

  // ---- 4. idle ------------------------------------------------------------------------------

  async idle(seconds: number): Promise<IdleResult> {
    const c0 = await this.counters();
    const a = this.cpu();
    await sleep(seconds * 1000);
    const b = this.cpu();
    const c1 = await this.counters();
    const dt = (b.at - a.at) / 1000;
    const agents = (b.agentsS - a.agentsS) / dt;
    const etcd = b.etcdS === null ? null : (b.etcdS - a.etcdS!) / dt;
    const sentBytes = (c1.sent - c0.sent) / dt;
    this.idleRate = { agents, etcd, sentBytes };
    return {
      seconds: dt,
      agentsPct: agents * 100,
      perAgentPct: (agents * 100) / this.live,
      etcdPct: etcd === null ? null : etcd * 100,
      etcdSentBytesPerS: sentBytes,
    };
  }

  // ---- 5, 6. changes ------------------------------------------------------------------------

  /** The agent the k-th change moves: a stride through all of them, so a host rarely repeats. */
  private changedAgent(k: number): number {
    const stride = 7919 % this.o.n || 1;
    return (k * stride) % this.o.n;
  }

  /**
   * Republishes host i with new endpoints: read, then a transaction on the read's mod revision,
   * epoch max(stored + 1, now), as Registry.publish writes it. Timed from just before the txn.
   */
  private async change(i: number): Promise<ChangeRef & { revision: number }> {
    const key = hostKey(NETWORK, hostName(i));
    const kv = (await this.admin.get(key).exec()).kvs[0];
    if (!kv) throw new Error(`${key} is missing`);
    const parsed = parseHostRecord(kv.value, { network: NETWORK, name: hostName(i) });
    if (!parsed.ok) throw new Error(`${key}: ${parsed.error}`);
    const t = Date.now();
    const rec: HostRecord = {
      ...parsed.value,
      endpoints: endpointsOf(i, 52000 + (++this.changeCount % 10000)),
      epoch: Math.max(parsed.value.epoch + 1, t),
      updated: new Date(t).toISOString(),
    };
    const value = serializeHostRecord(rec);
    checkRecordSize('host', value);
    const at = now();
    const res = await this.admin.if(key, 'Mod', '==', kv.mod_revision).then(this.admin.put(key).value(value)).commit();
    if (!res.succeeded) throw new Error(`${key} changed under the bench's write`);
    return { host: rec.name, epoch: rec.epoch, at, revision: Number(res.header.revision) };
  }

  private async outstanding(changes: readonly ChangeRef[]): Promise<number> {
    const r = await this.askAll<CollectReply>({ type: 'collect', id: 0, changes, reset: false });
    return r.reduce((s, x) => s + x.undelivered, 0);
  }

  private async collect(changes: readonly ChangeRef[]): Promise<{ lat: Float64Array; idx: Uint32Array; undelivered: number }> {
    const r = await this.askAll<CollectReply>({ type: 'collect', id: 0, changes, reset: true });
    const n = r.reduce((s, x) => s + x.latencies.length, 0);
    const lat = new Float64Array(n);
    const idx = new Uint32Array(n);
    let o = 0;
    for (const x of r) {
      lat.set(x.latencies, o);
      idx.set(x.changeIndex, o);
      o += x.latencies.length;
    }
    return { lat, idx, undelivered: r.reduce((s, x) => s + x.undelivered, 0) };
  }

  private cost(changes: number, cpu0: CpuSample, cpu1: CpuSample, c0: { revision: number; sent: number }, c1: { revision: number; sent: number }): ChangePhaseCost {
    const dt = (cpu1.at - cpu0.at) / 1000;
    const idle = this.idleRate ?? { agents: 0, etcd: 0, sentBytes: 0 };
    const per = (x: number) => (changes > 0 ? x / changes : 0);
    const sent = c1.sent - c0.sent;
    const agentsCpu = per(cpu1.agentsS - cpu0.agentsS - idle.agents * dt);
    return {
      changes,
      revisionsPerChange: per(c1.revision - c0.revision),
      etcdSentBytesPerChange: per(sent),
      etcdSentBytesPerChangeNet: per(sent - idle.sentBytes * dt),
      agentsCpuSPerChange: agentsCpu,
      perAgentCpuSPerChange: agentsCpu / this.live,
      networkCpuSPerChange: (agentsCpu / this.live) * this.o.n,
      etcdCpuSPerChange: cpu1.etcdS === null || idle.etcd === null ? null : per(cpu1.etcdS - cpu0.etcdS! - idle.etcd * dt),
    };
  }

  /** `count` changes one after another, each once every agent has the previous one (or `limitMs` passed). */
  async oneChanges(count: number, limitMs = 30_000): Promise<OneChangeResult> {
    const changes: ChangeRef[] = [];
    const c0 = await this.counters();
    const cpu0 = this.cpu();
    for (let k = 0; k < count; k++) {
      const c = await this.change(this.changedAgent(this.picked++));
      changes.push(c);
      const deadline = now() + limitMs;
      while ((await this.outstanding([c])) > 0 && now() < deadline) await sleep(POLL_MS);
    }
    const cpu1 = this.cpu();
    const c1 = await this.counters();
    const { lat, undelivered } = await this.collect(changes);
    return { ...summarize(lat), ...this.cost(count, cpu0, cpu1, c0, c1), undelivered, seconds: (cpu1.at - cpu0.at) / 1000 };
  }

  /** Changes at `rate` per second for `seconds`, then the backlog and its drain (up to `drainLimitMs`). */
  async sustained(seconds: number, rate: number, drainLimitMs = 60_000): Promise<SustainedResult> {
    const total = Math.max(1, Math.round(seconds * rate));
    const changes: ChangeRef[] = [];
    const c0 = await this.counters();
    const cpu0 = this.cpu();
    const t0 = now();
    const writes: Promise<void>[] = [];
    for (let k = 0; k < total; k++) {
      const due = t0 + (k * 1000) / rate;
      const wait = due - now();
      if (wait > 0) await sleep(wait);
      writes.push(this.change(this.changedAgent(this.picked++)).then((c) => void changes.push(c)));
    }
    await Promise.all(writes);
    const endAt = now();
    changes.sort((a, b) => a.at - b.at);
    // In flight, not backlog: changes written in the last BACKLOG_AGE_MS.
    const old = changes.filter((c) => c.at < endAt - BACKLOG_AGE_MS);
    const backlogAtEnd = await this.outstanding(old);
    let left = await this.outstanding(changes);
    const outstandingAtEnd = left;
    const deadline = now() + drainLimitMs;
    while (left > 0 && now() < deadline) {
      await sleep(POLL_MS * 4);
      left = await this.outstanding(changes);
    }
    const drainMs = left === 0 ? now() - endAt : null;
    const cpu1 = this.cpu();
    const c1 = await this.counters();
    const { lat, idx, undelivered } = await this.collect(changes);
    // lag growth: median latency of the first and the last fifth of the changes
    const fifth = Math.max(1, Math.floor(changes.length / 5));
    const first: number[] = [];
    const last: number[] = [];
    for (let i = 0; i < lat.length; i++) {
      if (idx[i]! < fifth) first.push(lat[i]!);
      else if (idx[i]! >= changes.length - fifth) last.push(lat[i]!);
    }
    const p50 = (v: number[]) => percentile(v.sort((a, b) => a - b), 50);
    const f = p50(first);
    const l = p50(last);
    const span = (changes[changes.length - fifth]!.at - changes[fifth - 1]!.at) / 1000;
    return {
      ...summarize(lat),
      ...this.cost(total, cpu0, cpu1, c0, c1),
      seconds: (endAt - t0) / 1000,
      targetRate: rate,
      achievedRate: total / ((endAt - t0) / 1000),
      backlogAtEnd,
      outstandingAtEnd,
      undelivered,
      drainMs,
      lagGrowthMsPerS: f !== null && l !== null && span > 0 ? (l - f) / span : null,
      firstFifthP50Ms: f,
      lastFifthP50Ms: l,
    };
  }

  // ---- 7. verify ----------------------------------------------------------------------------

  /**
   * What every agent should hold, from one read of etcd: each host whose record parses, carries a
   * certificate that verifies and matches, and has an alive key (host name -> epoch).
   */
  async expectedFromEtcd(): Promise<Map<string, number>> {
    const [hosts, alive] = await Promise.all([readPrefix(etcdPages(this.admin), hostsPrefix(NETWORK)), readPrefix(etcdPages(this.admin), alivePrefix(NETWORK))]);
    const aliveNames = new Set<string>();
    for (const kv of alive.kvs) {
      const k = parseKey(kv.key);
      if (k?.kind === 'alive') aliveNames.add(k.name);
    }
    const out = new Map<string, number>();
    const t = Date.now();
    for (const kv of hosts.kvs) {
      const k = parseKey(kv.key);
      if (k?.kind !== 'host' || !aliveNames.has(k.name)) continue;
      const r = parseHostRecord(kv.value, { network: NETWORK, name: k.name });
      if (r.ok && this.anchor.checkRecord(r.value, t) === null) out.set(k.name, r.value.epoch);
    }
    return out;
  }

  /** Compares every agent's table with `expected` (default: a fresh read of etcd). */
  async verify(expected?: ReadonlyMap<string, number>): Promise<VerifyResult> {
    const want = expected ?? (await this.expectedFromEtcd());
    const r = await this.askAll<VerifyReply>({ type: 'verify', id: 0, expected: [...want.entries()] });
    const mismatched = r.reduce((s, x) => s + x.mismatched, 0);
    const agents = r.reduce((s, x) => s + x.agents, 0);
    return { ok: mismatched === 0 && agents === this.live, agents, mismatched, examples: r.flatMap((x) => x.examples).slice(0, 5), etcdHosts: want.size, settleMs: 0 };
  }

  /**
   * The final check: verify() against a fresh read of etcd, again every 2 s while it differs, for
   * up to `settleMs` (agents that are behind may still catch up; correctness, not speed, is
   * checked here). The last answer, with how long it took to agree.
   */
  async verifySettled(settleMs: number): Promise<VerifyResult> {
    const t0 = now();
    for (;;) {
      const v = await this.verify();
      if (v.ok || now() - t0 >= settleMs) return { ...v, settleMs: now() - t0 };
      await sleep(2000);
    }
  }

  async stats(): Promise<WorkerStats> {
    const r = await this.askAll<StatsReply>({ type: 'stats', id: 0 });
    const sum = (f: (x: StatsReply) => number) => r.reduce((s, x) => s + f(x), 0);
    return {
      peersMin: Math.min(...r.map((x) => x.peersMin)),
      peersMax: Math.max(...r.map((x) => x.peersMax)),
      watchEvents: sum((x) => x.watchEvents),
      rangeKeys: sum((x) => x.rangeKeys),
      rangeBytes: sum((x) => x.rangeBytes),
      reloads: sum((x) => x.reloads),
      invalidRecords: sum((x) => x.invalidRecords),
      connected: sum((x) => x.connected),
      warnings: sum((x) => x.warnings),
      registerRetries: sum((x) => x.registerRetries),
      firstWarnings: r.flatMap((x) => x.firstWarnings).slice(0, 5),
      rssBytes: sum((x) => x.rssBytes),
      rssMiB: sum((x) => x.rssBytes) / 2 ** 20,
    };
  }

  // ---- teardown -----------------------------------------------------------------------------

  /** Stops every agent and worker (killed if they do not exit within 15 s) and removes the temp dir. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(
      this.children.map(async (c) => {
        const gone = new Promise<void>((r) => (c.exited ? r() : c.proc.once('exit', () => r())));
        await Promise.race([this.ask(c, { type: 'stop', id: 0 }).catch(() => undefined), sleep(15_000)]);
        if (c.proc.connected) c.proc.disconnect();
        const timer = setTimeout(() => c.proc.kill('SIGKILL'), 5_000);
        await gone;
        clearTimeout(timer);
      }),
    );
    await this.othersLease?.revoke().catch(() => undefined);
    this.admin.close();
    fs.rmSync(this.dir, { recursive: true, force: true });
    liveDirs.delete(this.dir);
  }
}

/** Temp dirs of swarms not closed yet: removed if the process exits first (workers exit on their own when the IPC channel closes). */
const liveDirs = new Set<string>();
let exitHook = false;

function installExitHook(): void {
  if (exitHook) return;
  exitHook = true;
  process.on('exit', () => {
    for (const d of liveDirs) fs.rmSync(d, { recursive: true, force: true });
  });
}
