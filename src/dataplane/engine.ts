/**
 * The control thread's handle on the data plane: starts the worker threads (both directions,
 * ./worker.ts; one, or one per TUN queue and UDP socket, docs/design.md "Many cores") on
 * descriptors it opened, pushes peer sets and requests to them, reads their shared counters, and
 * stops them. With several workers, peer sets, policy and pings-now go to every worker, path
 * requests (probe, diagnostic ping, forward, bye, watch) to worker 0, which also pings for all;
 * what one worker learns from a packet (a roam, a confirmed session) is passed on to the others;
 * every send session gets one shared counter word (./counters.ts); stats are summed (SummedStats).
 */
import { randomFillSync } from 'node:crypto';
import { MessageChannel, Worker } from 'node:worker_threads';
import * as path from 'node:path';
import type { AeadBackend } from '../crypto/aead';
import { sharedCookieSecrets } from '../crypto/cookie';
import { WakeFd } from '../os/poll';
import type { WorkerPeer } from './peer';
import { flowTableBytes, type CompiledPolicy } from './policy';
import { newSendCounter } from './counters';
import { DataplaneStats, SummedStats } from './stats';
import { CTRL_HEARTBEAT, CTRL_MAIL, CTRL_STOP, CTRL_WORDS } from './ctrl';
import type { WarmupResult } from './warmup';
import type { FromWorker, ToWorker, WorkerInit } from './worker';
import { joinAddress, splitAddress } from '../util/ipv6';

/**
 * A worker's address (low 32 bits, upper 96 of IPv6) as the control thread's endpoint number:
 * the IPv4 address or the IPv6 address's handle (src/util/ipv6.ts).
 */
function addressOf(ip: number, hi: readonly number[] | undefined): number {
  return hi ? joinAddress(ip, hi[0]!, hi[1]!, hi[2]!) : ip;
}

/** The other way: an endpoint number as the worker's ip and hi (absent for IPv4). */
function toWorker(ip: number): { ip: number; hi?: number[] } {
  const a = splitAddress(ip);
  return a.hi[0] === 0 && a.hi[1] === 0 && a.hi[2] === 0 ? { ip: a.lo } : { ip: a.lo, hi: a.hi };
}

export interface EngineOptions {
  tunFd: number;
  udpFd: number;
  /**
   * Several workers: one TUN queue and one UDP socket (of a steered reuseport group,
   * src/os/udp/reuseport.ts) for each, in the same order (tunFd and udpFd are then ignored).
   */
  tunFds?: readonly number[];
  udpFds?: readonly number[];
  mtu: number;
  /** The TUN was opened with IFF_VNET_HDR (offloads). */
  vnet?: boolean;
  /** UDP GSO on send and GRO on receive (default true). */
  udpOffload?: boolean;
  crypto?: AeadBackend;
  /** Packets per batch (recvmmsg/sendmmsg vector length, TUN reads per wake). */
  batch?: number;
  /** This host relays for its peers. */
  relay?: boolean;
  /** The network's IPv6 overlay prefix (control/overlay6.ts overlay6Of); absent: IPv6 is not carried. */
  overlay6?: { hi: number; mid: number };
  /** The worker's heartbeat moves at least this often (default: the loop's own idle sleep). */
  heartbeatMs?: number;
  /** Our static public key: the worker drops handshake messages without its mac1 before they cross. */
  publicKey?: Uint8Array;
  /** A peer's packets now come from ip:port, or through the relay in slot `via` (DIRECT: -1). */
  onRoam?: (slot: number, ip: number, port: number, via: number) => void;
  /**
   * A handshake message arrived from ip:port or through relay `via` (the control thread answers
   * it); `proven`: it carried the worker's cookie for ip:port (inbound.ts).
   */
  onHandshake?: (data: Uint8Array, ip: number, port: number, via: number, proven: boolean) => void;
  /** A STUN message arrived. */
  onStun?: (data: Uint8Array, ip: number, port: number) => void;
  /** A pong: path evidence (rtt on ip:port or via), our address as the peer saw it, and its ping's stamp t0. */
  onPong?: (p: { slot: number; rttMs: number; ip: number; port: number; via: number; seenIp: number; seenPort: number; t0: number }) => void;
  /** A responder session carried its first packet (the data plane now sends on it). */
  onConfirmed?: (slot: number, keyId: number) => void;
  /** The peer in `slot` said bye over its session (it is leaving on purpose). */
  onBye?: (slot: number) => void;
  /** A packet from the TUN for overlay address `ip` found no session to send on (rate-limited). */
  onWant?: (ip: number) => void;
  /** The descriptor given to watch() turned readable (it is watched no more until watch() again). */
  onReadable?: () => void;
  onFatal?: (message: string) => void;
}

/** How often several workers' policy counters are summed into the control thread's (setPolicy). */
const POLICY_SUM_MS = 100;

interface Handle {
  worker: Worker;
  ctrl: Int32Array;
  wake: WakeFd;
  port: import('node:worker_threads').MessagePort;
  stats: DataplaneStats;
}

export class DataplaneEngine {
  private handles: Handle[] = [];
  private sum: SummedStats | null = null;
  /** The policy's flow table all workers share (several workers). */
  private flowTable: SharedArrayBuffer | null = null;
  private cookieSecrets: SharedArrayBuffer | null = null;
  private stopped = false;
  /** The AEAD implementation the workers use. */
  cryptoName = '';
  /** Shared send counter words by session keyId (several workers only). */
  private readonly counters = new Map<number, SharedArrayBuffer>();
  /** Composite heartbeat: moves when every worker's own moved (heartbeat()). */
  private beat = 0;
  private beatSeen: number[] = [];
  /** How worker 0's warm-up of the packet stages went (./warmup.ts). */
  warmup: WarmupResult | null = null;

  private constructor(private readonly opts: EngineOptions) {}

  static async start(opts: EngineOptions): Promise<DataplaneEngine> {
    const e = new DataplaneEngine(opts);
    await e.spawn();
    return e;
  }

  /** Worker threads running (one TUN queue and one UDP socket each). */
  get workers(): number {
    return this.opts.tunFds?.length ?? 1;
  }

  /** The data plane's counters: the one worker's, or every worker's summed (taken when read). */
  get stats(): DataplaneStats {
    return this.sum ? this.sum.refresh() : (this.handles[0]?.stats ?? this.idle);
  }
  private readonly idle = new DataplaneStats();

  /** One worker's own counters (tests and status: which worker moved what). */
  workerStats(k: number): DataplaneStats | undefined {
    return this.handles[k]?.stats;
  }

  private async spawn(): Promise<void> {
    const n = this.workers;
    const tunFds = this.opts.tunFds ?? [this.opts.tunFd];
    const udpFds = this.opts.udpFds ?? [this.opts.udpFd];
    if (udpFds.length !== n) throw new Error(`data plane: ${n} TUN queues but ${udpFds.length} UDP sockets`);
    const stats = Array.from({ length: n }, () => new DataplaneStats());
    if (n > 1) {
      this.sum = new SummedStats(stats);
      this.flowTable = new SharedArrayBuffer(flowTableBytes());
      this.cookieSecrets = sharedCookieSecrets((out) => randomFillSync(out));
    }
    const ready: Promise<void>[] = [];
    for (let k = 0; k < n; k++) ready.push(this.spawnOne(k, tunFds[k]!, udpFds[k]!, stats));
    try {
      await Promise.all(ready);
    } catch (e) {
      await this.stop();
      throw e;
    }
  }

  private spawnOne(k: number, tunFd: number, udpFd: number, all: DataplaneStats[]): Promise<void> {
    const ctrlSab = new SharedArrayBuffer(4 * CTRL_WORDS);
    const wake = new WakeFd();
    const chan = new MessageChannel();
    const init: WorkerInit = {
      tunFd,
      udpFd,
      wakeFd: wake.fd,
      mtu: this.opts.mtu,
      vnet: this.opts.vnet ?? false,
      udpOffload: this.opts.udpOffload ?? true,
      crypto: this.opts.crypto ?? 'auto',
      batch: this.opts.batch ?? 64,
      relay: this.opts.relay ?? false,
      overlay6: this.opts.overlay6 ?? null,
      maxSleepMs: this.opts.heartbeatMs ?? Infinity,
      hsPublicKey: this.opts.publicKey ?? null,
      statsSab: all[k]!.sab,
      worker: k,
      workers: all.length,
      tunQueues: all.length > 1 ? [...(this.opts.tunFds ?? [])] : [],
      flowTable: this.flowTable,
      cookieSecrets: this.cookieSecrets,
      siblingStats: k === 0 ? all.slice(1).map((x) => x.sab) : [],
      ctrlSab,
      control: chan.port2,
    };
    const worker = new Worker(path.join(__dirname, 'worker.js'), {
      workerData: init,
      transferList: [init.control],
      resourceLimits: { maxOldGenerationSizeMb: 32, maxYoungGenerationSizeMb: 4 },
      // By default Node pipes a worker's stdout and stderr into this thread's process.stdout and
      // process.stderr, creating both streams (and their modules) at once although the agent logs
      // through pino on fd 2 and the worker never prints. Forwarded by hand instead, they are
      // created only if the worker ever writes (docs/performance.md, Memory).
      stdout: true,
      stderr: true,
    });
    worker.stdout.on('data', (d: Buffer) => process.stdout.write(d));
    worker.stderr.on('data', (d: Buffer) => process.stderr.write(d));
    const port = chan.port1;
    const others = (m: ToWorker) => this.handles.forEach((h, j) => j !== k && this.tellOne(h, m));
    const ready = new Promise<void>((resolve, reject) => {
      port.on('message', (m: FromWorker) => {
        if (m.t === 'ready') {
          if (k === 0) {
            this.cryptoName = m.crypto;
            this.warmup = m.warmup;
          }
          resolve();
        }
        else if (m.t === 'roam') {
          others({ t: 'roam', slot: m.slot, ip: m.ip, port: m.port, via: m.via, ...(m.hi ? { hi: m.hi } : {}) });
          this.opts.onRoam?.(m.slot, addressOf(m.ip, m.hi), m.port, m.via);
        }
        else if (m.t === 'handshake') this.opts.onHandshake?.(m.data, addressOf(m.ip, m.hi), m.port, m.via, m.proven);
        else if (m.t === 'stun') this.opts.onStun?.(m.data, addressOf(m.ip, m.hi), m.port);
        else if (m.t === 'pong') this.opts.onPong?.({ ...m, ip: addressOf(m.ip, m.hi) });
        else if (m.t === 'confirmed') {
          others({ t: 'confirm', slot: m.slot, keyId: m.keyId });
          this.opts.onConfirmed?.(m.slot, m.keyId);
        }
        else if (m.t === 'bye') this.opts.onBye?.(m.slot);
        else if (m.t === 'want') this.opts.onWant?.(m.ip);
        else if (m.t === 'readable') this.opts.onReadable?.();
        else if (m.t === 'fatal') {
          reject(new Error(`data-plane worker ${k} failed: ${m.message}`));
          this.opts.onFatal?.(m.message);
        }
      });
      worker.once('error', reject);
      worker.once('exit', (code) => {
        if (!this.stopped) {
          const msg = `data-plane worker ${k} exited (code ${code})`;
          reject(new Error(msg));
          this.opts.onFatal?.(msg);
        }
      });
    });
    port.unref();
    this.handles[k] = { worker, ctrl: new Int32Array(ctrlSab), wake, port, stats: all[k]! };
    return ready;
  }

  /** Gives the worker the full peer set (declarative: what is not listed is removed). */
  setPeers(peers: WorkerPeer[]): void {
    // endpointIp may be an IPv6 handle here: the worker gets the address itself
    let out = peers.map((p) => {
      const a = toWorker(p.endpointIp);
      return a.hi ? { ...p, endpointIp: a.ip, endpointHi: a.hi } : p;
    });
    if (this.workers > 1) out = this.withCounters(out);
    this.tell({ t: 'peers', peers: out });
  }

  /**
   * Each session with its shared send counter word: made the first time a keyId is named, the
   * same word every time after (a worker that loaded the session keeps numbering from it), and
   * forgotten with the session.
   */
  private withCounters(peers: WorkerPeer[]): WorkerPeer[] {
    const named = new Set<number>();
    const out = peers.map((p) => ({
      ...p,
      sessions: p.sessions.map((s) => {
        named.add(s.keyId);
        let c = this.counters.get(s.keyId);
        if (c === undefined) this.counters.set(s.keyId, (c = newSendCounter()));
        return { ...s, counter: c };
      }),
    }));
    for (const id of this.counters.keys()) if (!named.has(id)) this.counters.delete(id);
    return out;
  }

  /**
   * The network policy compiled for this host (null: none); the worker counts into `counters`
   * (counterSlots(policy.ruleCount) float64 slots, ./policy.ts).
   */
  setPolicy(policy: CompiledPolicy | null, counters: SharedArrayBuffer | null): void {
    if (this.workers === 1 || counters === null) {
      this.policyCounters = null;
      this.tell({ t: 'policy', policy, counters });
      return;
    }
    // Several workers: each counts into its own copy (one writer each, as float adds are not
    // atomic), summed into `counters` every POLICY_SUM_MS. The same `counters` (a recompile
    // for new peers) keeps the same copies.
    const pc = this.policyCounters;
    if (pc === null || pc.target.buffer !== counters) {
      const parts = this.handles.map(() => new Float64Array(new SharedArrayBuffer(counters.byteLength)));
      this.policyCounters = { target: new Float64Array(counters), parts };
    }
    const parts = this.policyCounters!.parts;
    if (this.stopped) return;
    this.handles.forEach((h, k) => this.tellOne(h, { t: 'policy', policy, counters: parts[k]!.buffer as SharedArrayBuffer }));
    this.policySum ??= setInterval(() => this.sumPolicy(), POLICY_SUM_MS).unref();
  }

  private policyCounters: { target: Float64Array; parts: Float64Array[] } | null = null;
  private policySum: NodeJS.Timeout | null = null;

  private sumPolicy(): void {
    const pc = this.policyCounters;
    if (pc === null) return;
    for (let i = 0; i < pc.target.length; i++) {
      let v = 0;
      for (const p of pc.parts) v += p[i]!;
      pc.target[i] = v;
    }
  }

  /** Sends a probe to the peer in `slot` at ip:port (a path test; the pong comes back through onPong). */
  probe(slot: number, ip: number, port: number): void {
    this.tellFirst({ t: 'probe', slot, port, ...toWorker(ip) });
  }

  /**
   * A diagnostic ping to the peer in `slot` on its current path, stamped `t0` (systemClock.mono()
   * of this thread: every thread shares its scale); its pong comes back through onPong with t0.
   */
  diag(slot: number, t0: number): void {
    this.tellFirst({ t: 'diag', slot, t0 });
  }

  /** Pings every peer now. */
  pingAll(): void {
    this.tell({ t: 'pingAll' });
  }

  /** Says bye to every peer with a session (before a stop on purpose). */
  byeAll(): void {
    this.tellFirst({ t: 'byeAll' });
  }

  /** Sends `data` to the peer with overlay address `target` through the relay peer in slot `via`. */
  forward(via: number, target: number, data: Uint8Array): void {
    this.tellFirst({ t: 'forward', via, target, data });
  }

  /** We sent an initiation to `ip`: its answer may pass the handshake flood limits' reserve. */
  expectHandshake(ip: number): void {
    this.tell({ t: 'expect', ...toWorker(ip) });
  }

  /**
   * The workers' loop counter: it moves at least every heartbeatMs while every worker runs, idle
   * or not, and stops when any worker is wedged (or stopped).
   */
  heartbeat(): number {
    const hs = this.handles;
    if (hs.length <= 1) return hs[0] ? Atomics.load(hs[0].ctrl, CTRL_HEARTBEAT) : 0;
    const now = hs.map((h) => Atomics.load(h.ctrl, CTRL_HEARTBEAT));
    if (this.beatSeen.length !== now.length || now.every((b, k) => b !== this.beatSeen[k])) {
      this.beatSeen = now;
      this.beat++;
    }
    return this.beat;
  }

  /** Tests only: blocks the worker thread for `ms` (its heartbeat stops meanwhile). */
  stallForTest(ms: number): void {
    this.tell({ t: 'stall', ms });
  }

  /**
   * The worker watches `fd` (in its own poll set) and calls onReadable once when it is readable;
   * call again after draining it to hear of the next time. -1 stops watching (before closing fd).
   */
  watch(fd: number): void {
    this.tellFirst({ t: 'watch', fd });
  }

  /** To every worker. */
  private tell(msg: ToWorker): void {
    if (this.stopped) return;
    for (const h of this.handles) this.tellOne(h, msg);
  }

  /** To worker 0 only (it pings and probes for all). */
  private tellFirst(msg: ToWorker): void {
    const h = this.handles[0];
    if (!this.stopped && h) this.tellOne(h, msg);
  }

  private tellOne(h: Handle, msg: ToWorker): void {
    h.port.postMessage(msg);
    Atomics.add(h.ctrl, CTRL_MAIL, 1);
    h.wake.wake();
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.policySum) clearInterval(this.policySum);
    this.sumPolicy();
    await Promise.all(
      this.handles.map(async (h) => {
        Atomics.store(h.ctrl, CTRL_STOP, 1);
        h.wake.wake();
        const exited = new Promise<void>((r) => h.worker.once('exit', () => r()));
        const timer = setTimeout(() => void h.worker.terminate(), 2_000);
        await exited;
        clearTimeout(timer);
        h.port.close();
        h.wake.close();
      }),
    );
  }
}
