/**
 * The control thread's handle on the data plane: starts the two worker threads (outbound
 * TUN->UDP, inbound UDP->TUN) on descriptors it opened, pushes peer sets to them, reads their
 * shared counters, and stops them.
 */
import { MessageChannel, Worker } from 'node:worker_threads';
import * as path from 'node:path';
import type { AeadBackend } from '../crypto/aead';
import { WakeFd } from '../os/poll';
import type { WorkerPeer } from './peer';
import { DataplaneStats } from './stats';
import { CTRL_MAIL, CTRL_STOP, CTRL_WORDS, type FromWorker, type ToWorker, type WorkerInit } from './worker';

export interface EngineOptions {
  tunFd: number;
  udpFd: number;
  mtu: number;
  /** The TUN was opened with IFF_VNET_HDR (offloads). */
  vnet?: boolean;
  crypto?: AeadBackend;
  /** Packets per batch (recvmmsg/sendmmsg vector length, TUN reads per wake). */
  batch?: number;
  /** This host relays for its peers. */
  relay?: boolean;
  /** A peer's packets now come from ip:port, or through the relay in slot `via` (DIRECT: -1). */
  onRoam?: (slot: number, ip: number, port: number, via: number) => void;
  /** A handshake message arrived from ip:port or through relay `via` (the control thread answers it). */
  onHandshake?: (data: Uint8Array, ip: number, port: number, via: number) => void;
  /** A STUN message arrived. */
  onStun?: (data: Uint8Array, ip: number, port: number) => void;
  /** A pong: path evidence (rtt on ip:port or via) and our address as the peer saw it. */
  onPong?: (p: { slot: number; rttMs: number; ip: number; port: number; via: number; seenIp: number; seenPort: number }) => void;
  /** A responder session carried its first packet (the data plane now sends on it). */
  onConfirmed?: (slot: number, keyId: string) => void;
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
  private readonly handles: Handle[] = [];
  private stopped = false;
  /** The AEAD implementation the workers use. */
  cryptoName = '';

  private constructor(private readonly opts: EngineOptions) {}

  static async start(opts: EngineOptions): Promise<DataplaneEngine> {
    const e = new DataplaneEngine(opts);
    await e.spawn();
    return e;
  }

  private async spawn(): Promise<void> {
    const script = path.join(__dirname, 'worker.js');
    const sibling = new MessageChannel();
    const mk = () => {
      const ctrlSab = new SharedArrayBuffer(4 * CTRL_WORDS);
      return { ctrlSab, ctrl: new Int32Array(ctrlSab), wake: new WakeFd(), chan: new MessageChannel() };
    };
    const o = mk();
    const i = mk();
    const base = {
      tunFd: this.opts.tunFd,
      udpFd: this.opts.udpFd,
      mtu: this.opts.mtu,
      vnet: this.opts.vnet ?? false,
      crypto: this.opts.crypto ?? 'auto',
      batch: this.opts.batch ?? 64,
      relay: this.opts.relay ?? false,
      statsSab: this.stats.sab,
    };
    const outInit: WorkerInit = {
      ...base,
      role: 'outbound',
      wakeFd: o.wake.fd,
      ctrlSab: o.ctrlSab,
      control: o.chan.port2,
      sibling: sibling.port2,
    };
    const inInit: WorkerInit = {
      ...base,
      role: 'inbound',
      wakeFd: i.wake.fd,
      ctrlSab: i.ctrlSab,
      control: i.chan.port2,
      sibling: sibling.port1,
      siblingWakeFd: o.wake.fd,
      siblingCtrlSab: o.ctrlSab,
    };
    const ready: Promise<void>[] = [];
    for (const [init, h] of [
      [outInit, o],
      [inInit, i],
    ] as const) {
      const worker = new Worker(script, {
        workerData: init,
        transferList: [init.control, init.sibling],
        resourceLimits: { maxOldGenerationSizeMb: 32, maxYoungGenerationSizeMb: 4 },
      });
      const port = h.chan.port1;
      ready.push(
        new Promise<void>((resolve, reject) => {
          port.on('message', (m: FromWorker) => {
            if (m.t === 'ready') {
              this.cryptoName = m.crypto;
              resolve();
            }
            else if (m.t === 'roam') this.opts.onRoam?.(m.slot, m.ip, m.port, m.via);
            else if (m.t === 'handshake') this.opts.onHandshake?.(m.data, m.ip, m.port, m.via);
            else if (m.t === 'stun') this.opts.onStun?.(m.data, m.ip, m.port);
            else if (m.t === 'pong') this.opts.onPong?.(m);
            else if (m.t === 'confirmed') this.opts.onConfirmed?.(m.slot, m.keyId);
            else if (m.t === 'fatal') {
              reject(new Error(`data-plane ${init.role} worker failed: ${m.message}`));
              this.opts.onFatal?.(m.message);
            }
          });
          worker.once('error', reject);
          worker.once('exit', (code) => {
            if (!this.stopped) {
              const msg = `data-plane ${init.role} worker exited (code ${code})`;
              reject(new Error(msg));
              this.opts.onFatal?.(msg);
            }
          });
        }),
      );
      port.unref();
      this.handles.push({ worker, ctrl: h.ctrl, wake: h.wake, port });
    }
    try {
      await Promise.all(ready);
    } catch (e) {
      await this.stop();
      throw e;
    }
  }

  /** Gives both workers the full peer set (declarative: what is not listed is removed). */
  setPeers(peers: WorkerPeer[]): void {
    for (const h of this.handles) this.tell(h, { t: 'peers', peers });
  }

  /** Sends a probe to the peer in `slot` at ip:port (a path test; the pong comes back through onPong). */
  probe(slot: number, ip: number, port: number): void {
    this.tell(this.handles[0], { t: 'probe', slot, ip, port });
  }

  /** Pings every peer now. */
  pingAll(): void {
    this.tell(this.handles[0], { t: 'pingAll' });
  }

  /** Sends `data` to the peer with overlay address `target` through the relay peer in slot `via`. */
  forward(via: number, target: number, data: Uint8Array): void {
    this.tell(this.handles[0], { t: 'forward', via, target, data });
  }

  /** handles[0] is the outbound worker, handles[1] the inbound one. */
  private tell(h: Handle | undefined, msg: ToWorker): void {
    if (this.stopped || !h) return;
    h.port.postMessage(msg);
    Atomics.add(h.ctrl, CTRL_MAIL, 1);
    h.wake.wake();
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
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
