/**
 * One worker process of the swarm bench: a share of the virtual agents, each a real Registry
 * with its own etcd3 client (its own gRPC connection), its own EtcdLink and trust anchor, a peer
 * cache file when asked, and a PeerConsumer (consumer.ts) behind its watch, as in the agent.
 *
 * It answers the coordinator's requests (protocol.ts). Changes after the cold start are written
 * by the coordinator (a host elsewhere republishing), not here, so a busy worker cannot delay the
 * put it is timed from. Consumer events are timestamped here and kept per host until the
 * coordinator collects them.
 */
import * as path from 'node:path';
import type { Etcd3 } from 'etcd3';
import { TrustAnchor } from '../../src/control/cert';
import { createEtcd } from '../../src/control/etcd';
import { EtcdLink } from '../../src/control/etcd-link';
import { Registry } from '../../src/control/registry';
import { loadEd25519, type Ed25519 } from '../../src/crypto/sign';
import { createRootLogger, type Logger } from '../../src/log';
import { createConsumer, type PeerConsumer } from './consumer';
import type {
  AgentSpec,
  CollectReply,
  CollectRequest,
  InitRequest,
  Reply,
  Request,
  StartReply,
  StatsReply,
  VerifyReply,
  VerifyRequest,
} from './protocol';

const now = (): number => performance.timeOrigin + performance.now();

const MAX_WARNINGS_KEPT = 5;

/** Observations of one host: which agent saw which epoch when (parallel arrays). */
interface Seen {
  agent: number[];
  epoch: number[];
  at: number[];
}

interface VirtualAgent {
  readonly spec: AgentSpec;
  readonly slot: number; // position in this worker
  readonly client: Etcd3;
  readonly link: EtcdLink;
  readonly registry: Registry;
  readonly consumer: PeerConsumer;
  completeAt: number;
}

class Worker {
  private agents: VirtualAgent[] = [];
  private total = 0;
  private readonly seen = new Map<string, Seen>();
  private warnings = 0;
  private readonly firstWarnings: string[] = [];
  private ed: Ed25519 | null = null;
  private completeWaiters: (() => void)[] = [];
  private remaining = 0;
  /** Registrations (publish, then alive key) that failed and were retried, as Agent.register does. */
  private registerRetries = 0;
  private stopping = false;

  async handle(req: Request): Promise<unknown> {
    switch (req.type) {
      case 'init':
        return this.init(req);
      case 'start':
        return this.start(req.limitMs);
      case 'collect':
        return this.collect(req);
      case 'verify':
        return this.verify(req);
      case 'stats':
        return this.stats();
      case 'stop':
        return this.stop();
    }
  }

  private logger(level: string): Logger {
    // Warnings and worse are counted, a few kept for the report; nothing is written per line.
    return createRootLogger(level, {
      write: (s: string) => {
        this.warnings++;
        if (this.firstWarnings.length < MAX_WARNINGS_KEPT) this.firstWarnings.push(s.trim().slice(0, 400));
      },
    });
  }

  private async init(req: InitRequest): Promise<number> {
    this.ed = await loadEd25519();
    this.total = req.total;
    const log = this.logger(req.logLevel);
    for (const [slot, spec] of req.agents.entries()) {
      const link = new EtcdLink({ log });
      const client = createEtcd({ endpoints: [req.endpoint], link });
      const registry = new Registry({
        client,
        network: req.spec,
        self: spec.name,
        log,
        cacheFile: req.cacheDir === null ? undefined : path.join(req.cacheDir, spec.name, 'peers.json'),
        trust: new TrustAnchor(this.ed, req.spec.name, req.spec.trustAnchor!),
        selfCert: spec.cert,
        heardAt: () => null, // no data plane: never heard over a tunnel
        link,
      });
      const agent: VirtualAgent = {
        spec,
        slot,
        client,
        link,
        registry,
        completeAt: NaN,
        consumer: createConsumer(req.consumer, {
          publicKey: spec.record.publicKey,
          onEvent: (kind, name, record) => {
            const t = now();
            if (record !== null) this.observe(slot, name, record.epoch, t);
            if (kind === 'added' && Number.isNaN(agent.completeAt) && agent.consumer.table().size >= this.total - 1) {
              agent.completeAt = t;
              if (--this.remaining === 0) for (const w of this.completeWaiters.splice(0)) w();
            }
          },
        }),
      };
      this.agents.push(agent);
    }
    this.remaining = this.agents.length;
    return this.agents.length;
  }

  private observe(agent: number, host: string, epoch: number, at: number): void {
    let s = this.seen.get(host);
    if (!s) this.seen.set(host, (s = { agent: [], epoch: [], at: [] }));
    s.agent.push(agent);
    s.epoch.push(epoch);
    s.at.push(at);
  }

  /** Watch, publish, alive: the order of Agent.start (register runs beside the watch). */
  private async start(limitMs: number): Promise<StartReply> {
    const errors: string[] = [];
    const all = new Promise<void>((resolve) => {
      if (this.remaining === 0) resolve();
      else this.completeWaiters.push(resolve);
    });
    await Promise.all(
      this.agents.map(async (a) => {
        const register = this.register(a);
        try {
          await a.consumer.attach(a.registry);
          await register;
        } catch (e) {
          errors.push(`${a.spec.name}: ${(e as Error).message}`);
        }
      }),
    );
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([all, new Promise<void>((r) => (timer = setTimeout(r, limitMs)))]);
    clearTimeout(timer);
    return { completeAt: Float64Array.from(this.agents.map((a) => a.completeAt)), errors };
  }

  /**
   * Agent.register: publish, then the alive key; on failure wait for the link's next round and
   * try again (a starved process can miss its first lease). Never rejects.
   */
  private async register(a: VirtualAgent): Promise<void> {
    while (!this.stopping) {
      try {
        const res = await a.registry.publish(a.spec.record);
        if (!res.written) throw new Error(`${a.spec.name}: another writer published under this name`);
        await a.registry.startAlive();
        return;
      } catch {
        if (this.stopping) return;
        this.registerRetries++;
        await a.link.wait();
      }
    }
  }

  private collect(req: CollectRequest): CollectReply {
    const lat: number[] = [];
    const idx: number[] = [];
    let undelivered = 0;
    for (const [ci, c] of req.changes.entries()) {
      const s = this.seen.get(c.host);
      const first = new Map<number, number>(); // agent slot -> first time at epoch >= c.epoch
      if (s) {
        for (let i = 0; i < s.agent.length; i++) {
          if (s.epoch[i]! < c.epoch) continue;
          const prev = first.get(s.agent[i]!);
          if (prev === undefined || s.at[i]! < prev) first.set(s.agent[i]!, s.at[i]!);
        }
      }
      for (const a of this.agents) {
        if (a.spec.name === c.host) continue;
        const t = first.get(a.slot);
        if (t === undefined) undelivered++;
        else {
          lat.push(t - c.at);
          idx.push(ci);
        }
      }
    }
    if (req.reset) this.seen.clear();
    return { latencies: Float64Array.from(lat), changeIndex: Uint32Array.from(idx), undelivered };
  }

  private verify(req: VerifyRequest): VerifyReply {
    const expected = new Map(req.expected);
    const examples: string[] = [];
    let mismatched = 0;
    for (const a of this.agents) {
      const table = a.consumer.table();
      const problems: string[] = [];
      for (const [name, epoch] of expected) {
        if (name === a.spec.name) continue;
        const got = table.get(name);
        if (!got) problems.push(`missing ${name}`);
        else if (got.epoch !== epoch) problems.push(`${name} at epoch ${got.epoch}, etcd has ${epoch}`);
      }
      for (const name of table.keys()) if (!expected.has(name)) problems.push(`extra ${name}`);
      if (table.has(a.spec.name)) problems.push('holds itself');
      if (problems.length === 0) continue;
      mismatched++;
      if (examples.length < 5) examples.push(`${a.spec.name}: ${problems.length} differences (${problems.slice(0, 3).join('; ')})`);
    }
    return { agents: this.agents.length, mismatched, examples };
  }

  private stats(): StatsReply {
    let peersMin = Infinity;
    let peersMax = 0;
    const sum = { watchEvents: 0, rangeKeys: 0, rangeBytes: 0, reloads: 0, invalidRecords: 0, connected: 0 };
    for (const a of this.agents) {
      const n = a.consumer.table().size;
      peersMin = Math.min(peersMin, n);
      peersMax = Math.max(peersMax, n);
      const st = a.registry.stats();
      sum.watchEvents += st.watchEvents;
      sum.rangeKeys += st.rangeKeys;
      sum.rangeBytes += st.rangeBytes;
      sum.reloads += st.reloads;
      sum.invalidRecords += st.invalidRecords;
      if (st.connected) sum.connected++;
    }
    return {
      peersMin: this.agents.length === 0 ? 0 : peersMin,
      peersMax,
      ...sum,
      warnings: this.warnings,
      registerRetries: this.registerRetries,
      firstWarnings: [...this.firstWarnings],
      rssBytes: process.memoryUsage.rss(),
    };
  }

  private async stop(): Promise<void> {
    this.stopping = true;
    await Promise.all(this.agents.map((a) => a.registry.close().catch(() => undefined)));
    for (const a of this.agents) a.client.close();
    this.agents = [];
  }
}

function main(): void {
  if (!process.send) throw new Error('bench/swarm/worker: run me with child_process.fork');
  const w = new Worker();
  // The coordinator may be gone by the time an answer is ready (killed, crashed): drop it.
  const reply = (r: Reply) => {
    if (process.connected) process.send!(r, undefined, {}, () => undefined);
  };
  process.on('message', (msg: Request) => {
    w.handle(msg).then(
      (value) => reply({ id: msg.id, ok: true, value }),
      (e: unknown) => reply({ id: msg.id, ok: false, error: e instanceof Error ? (e.stack ?? e.message) : String(e) }),
    );
  });
  // The coordinator gone (killed, crashed): nothing may be left running.
  process.on('disconnect', () => process.exit(0));
  process.send({ hello: true, pid: process.pid });
}

main();
