/**
 * The control thread's handle on the data plane: starts the worker thread (both directions,
 * ./worker.ts) on descriptors it opened, pushes peer sets and requests to it, reads its shared
 * counters, and stops it.
 */
import { MessageChannel, Worker } from 'node:worker_threads';
import * as path from 'node:path';
import type { AeadBackend } from '../crypto/aead';
import { WakeFd } from '../os/poll';
import type { WorkerPeer } from './peer';
import type { CompiledPolicy } from './policy';
import { DataplaneStats } from './stats';
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

interface Handle {
  worker: Worker;
  ctrl: Int32Array;
  wake: WakeFd;
  port: import('node:worker_threads').MessagePort;
}

export class DataplaneEngine {
  readonly stats = new DataplaneStats();
  private handle?: Handle;
  private stopped = false;
  /** The AEAD implementation the workers use. */
  cryptoName = '';
  /** How the worker's warm-up of the packet stages went (./warmup.ts). */
  warmup: WarmupResult | null = null;

  private constructor(private readonly opts: EngineOptions) {}

  static async start(opts: EngineOptions): Promise<DataplaneEngine> {
    const e = new DataplaneEngine(opts);
    await e.spawn();
    return e;
  }

  private async spawn(): Promise<void> {
    const ctrlSab = new SharedArrayBuffer(4 * CTRL_WORDS);
    const wake = new WakeFd();
    const chan = new MessageChannel();
    const init: WorkerInit = {
      tunFd: this.opts.tunFd,
      udpFd: this.opts.udpFd,
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
      statsSab: this.stats.sab,
      ctrlSab,
      control: chan.port2,
    };
    const worker = new Worker(path.join(__dirname, 'worker.js'), {
      workerData: init,
      transferList: [init.control],
      resourceLimits: { maxOldGenerationSizeMb: 32, maxYoungGenerationSizeMb: 4 },
    });
    const port = chan.port1;
    const ready = new Promise<void>((resolve, reject) => {
      port.on('message', (m: FromWorker) => {
        if (m.t === 'ready') {
          this.cryptoName = m.crypto;
          this.warmup = m.warmup;
          resolve();
        }
        else if (m.t === 'roam') this.opts.onRoam?.(m.slot, addressOf(m.ip, m.hi), m.port, m.via);
        else if (m.t === 'handshake') this.opts.onHandshake?.(m.data, addressOf(m.ip, m.hi), m.port, m.via, m.proven);
        else if (m.t === 'stun') this.opts.onStun?.(m.data, addressOf(m.ip, m.hi), m.port);
        else if (m.t === 'pong') this.opts.onPong?.({ ...m, ip: addressOf(m.ip, m.hi) });
        else if (m.t === 'confirmed') this.opts.onConfirmed?.(m.slot, m.keyId);
        else if (m.t === 'bye') this.opts.onBye?.(m.slot);
        else if (m.t === 'want') this.opts.onWant?.(m.ip);
        else if (m.t === 'readable') this.opts.onReadable?.();
        else if (m.t === 'fatal') {
          reject(new Error(`data-plane worker failed: ${m.message}`));
          this.opts.onFatal?.(m.message);
        }
      });
      worker.once('error', reject);
      worker.once('exit', (code) => {
        if (!this.stopped) {
          const msg = `data-plane worker exited (code ${code})`;
          reject(new Error(msg));
          this.opts.onFatal?.(msg);
        }
      });
    });
    port.unref();
    this.handle = { worker, ctrl: new Int32Array(ctrlSab), wake, port };
    try {
      await ready;
    } catch (e) {
      await this.stop();
      throw e;
    }
  }

  /** Gives the worker the full peer set (declarative: what is not listed is removed). */
  setPeers(peers: WorkerPeer[]): void {
    // endpointIp may be an IPv6 handle here: the worker gets the address itself
    const out = peers.map((p) => {
      const a = toWorker(p.endpointIp);
      return a.hi ? { ...p, endpointIp: a.ip, endpointHi: a.hi } : p;
    });
    this.tell({ t: 'peers', peers: out });
  }

  /**
   * The network policy compiled for this host (null: none); the worker counts into `counters`
   * (counterSlots(policy.ruleCount) float64 slots, ./policy.ts).
   */
  setPolicy(policy: CompiledPolicy | null, counters: SharedArrayBuffer | null): void {
    this.tell({ t: 'policy', policy, counters });
  }

  /** Sends a probe to the peer in `slot` at ip:port (a path test; the pong comes back through onPong). */
  probe(slot: number, ip: number, port: number): void {
    this.tell({ t: 'probe', slot, port, ...toWorker(ip) });
  }

  /**
   * A diagnostic ping to the peer in `slot` on its current path, stamped `t0` (systemClock.mono()
   * of this thread: every thread shares its scale); its pong comes back through onPong with t0.
   */
  diag(slot: number, t0: number): void {
    this.tell({ t: 'diag', slot, t0 });
  }

  /** Pings every peer now. */
  pingAll(): void {
    this.tell({ t: 'pingAll' });
  }

  /** Says bye to every peer with a session (before a stop on purpose). */
  byeAll(): void {
    this.tell({ t: 'byeAll' });
  }

  /** Sends `data` to the peer with overlay address `target` through the relay peer in slot `via`. */
  forward(via: number, target: number, data: Uint8Array): void {
    this.tell({ t: 'forward', via, target, data });
  }

  /** We sent an initiation to `ip`: its answer may pass the handshake flood limits' reserve. */
  expectHandshake(ip: number): void {
    this.tell({ t: 'expect', ...toWorker(ip) });
  }

  /**
   * The worker's loop counter: it moves at least every heartbeatMs while the worker runs, idle or
   * not, and stops when the worker is wedged (or stopped).
   */
  heartbeat(): number {
    return this.handle ? Atomics.load(this.handle.ctrl, CTRL_HEARTBEAT) : 0;
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
    this.tell({ t: 'watch', fd });
  }

  private tell(msg: ToWorker): void {
    const h = this.handle;
    if (this.stopped || !h) return;
    h.port.postMessage(msg);
    Atomics.add(h.ctrl, CTRL_MAIL, 1);
    h.wake.wake();
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    const h = this.handle;
    if (!h) return;
    Atomics.store(h.ctrl, CTRL_STOP, 1);
    h.wake.wake();
    const exited = new Promise<void>((r) => h.worker.once('exit', () => r()));
    const timer = setTimeout(() => void h.worker.terminate(), 2_000);
    await exited;
    clearTimeout(timer);
    h.port.close();
    h.wake.close();
  }
}
