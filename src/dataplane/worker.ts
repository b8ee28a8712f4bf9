/**
 * A data-plane worker thread: one direction of the packet path, looping on synchronous system
 * calls in batches. It never returns to its event loop while running; control messages arrive
 * on MessagePorts and are taken with receiveMessageOnPort when the shared mailbox counter moves,
 * and an eventfd in the poll set wakes it when it is idle.
 */
import { receiveMessageOnPort, workerData, type MessagePort } from 'node:worker_threads';
import { createAead, type AeadBackend } from '../crypto/aead';
import { allocNative } from '../os/ffi/mem';
import { Poller, WakeFd } from '../os/poll';
import { TunBatchIo } from '../os/tun/tun';
import { UdpBatchIo } from '../os/udp/udp';
import { PacketBatch, SendList, slotSizeFor } from './batch';
import { Inbound } from './inbound';
import { Outbound } from './outbound';
import { systemClock, type WorkerPeer } from './peer';
import { DataplaneStats, DROP } from './stats';

export const CTRL_STOP = 0;
export const CTRL_MAIL = 1;
export const CTRL_WORDS = 2;

export interface WorkerInit {
  role: 'inbound' | 'outbound';
  tunFd: number;
  udpFd: number;
  wakeFd: number;
  mtu: number;
  batch: number;
  /** The TUN carries virtio-net headers (offloads on). */
  vnet: boolean;
  crypto: AeadBackend;
  /** This host relays for its peers. */
  relay: boolean;
  statsSab: SharedArrayBuffer;
  ctrlSab: SharedArrayBuffer;
  control: MessagePort;
  /** inbound -> outbound requests (pong, roam). */
  sibling: MessagePort;
  /** The outbound worker's wake fd and mailbox (given to the inbound worker). */
  siblingWakeFd?: number;
  siblingCtrlSab?: SharedArrayBuffer;
}

export type ToWorker =
  | { t: 'peers'; peers: WorkerPeer[] }
  /** outbound: test the path to a peer at ip:port */
  | { t: 'probe'; slot: number; ip: number; port: number }
  /** outbound: ping every peer now (our address or NAT mapping changed) */
  | { t: 'pingAll' }
  /** outbound: a datagram (handshake) for the peer with overlay address `target`, through relay `via` */
  | { t: 'forward'; via: number; target: number; data: Uint8Array };
export type SiblingMessage =
  | { t: 'pong'; slot: number; t0: number; ip: number; port: number; via: number }
  | { t: 'roam'; slot: number; ip: number; port: number; via: number }
  | { t: 'confirm'; slot: number; keyId: string }
  /** datagrams to pass on as a relay, one message per received batch */
  | { t: 'relay'; items: { slot: number; from: number; data: Uint8Array }[] };
export type FromWorker =
  | { t: 'ready'; crypto: string }
  | { t: 'roam'; slot: number; ip: number; port: number; via: number }
  | { t: 'handshake'; data: Uint8Array; ip: number; port: number; via: number }
  | { t: 'stun'; data: Uint8Array; ip: number; port: number }
  | { t: 'pong'; slot: number; rttMs: number; ip: number; port: number; via: number; seenIp: number; seenPort: number }
  | { t: 'confirmed'; slot: number; keyId: string }
  | { t: 'fatal'; message: string };

/** Segments of the largest TSO super-packet at the smallest IPv4 MSS, rounded up. */
const MAX_TSO_SEGMENTS = 128;
/** How long an idle worker sleeps in poll before looking at its mailbox again. */
const IDLE_POLL_MS = 100;
/** A poll that returned faster than this found packets already queued: read them all. */
const GREEDY_BELOW_MS = 0.02;
/** How often timers run while busy. */
const TIMER_MS = 50;

async function main(init: WorkerInit): Promise<void> {
  const ctrl = new Int32Array(init.ctrlSab);
  const stats = new DataplaneStats(init.statsSab);
  const aead = await createAead(init.crypto);
  const clock = systemClock;
  const slot = slotSizeFor(init.mtu);
  // With TUN offloads one read can be a 64 KiB super-packet cut into up to 65535/536 = 123
  // segments (536 is the smallest IPv4 MSS): the outbound batch must hold a whole one.
  const capacity = init.role === 'outbound' && init.vnet ? Math.max(init.batch, MAX_TSO_SEGMENTS) : init.batch;
  const mem = allocNative(slot * capacity);
  const batch = new PacketBatch(mem.buf, slot, capacity, mem.ptr);
  const wake = new WakeFd(init.wakeFd);
  const dataFd = init.role === 'outbound' ? init.tunFd : init.udpFd;
  const poller = new Poller([dataFd, init.wakeFd]);
  let mail = Atomics.load(ctrl, CTRL_MAIL);

  const post = (m: FromWorker) => init.control.postMessage(m);

  if (init.role === 'outbound') {
    const out = new Outbound(aead, stats, clock);
    out.setMtu(init.mtu);
    const tun = new TunBatchIo(init.tunFd, batch, init.vnet);
    const udp = new UdpBatchIo(init.udpFd, batch);
    const list = new SendList(capacity);
    // Control messages and relay work: full-size slots (a relayed datagram is as large as any).
    const cslot = slotSizeFor(init.mtu);
    const cmem = allocNative(cslot * 32);
    const cbatch = new PacketBatch(cmem.buf, cslot, 32, cmem.ptr);
    const cudp = new UdpBatchIo(init.udpFd, cbatch);
    const clist = new SendList(32);
    const flushControl = () => {
      if (clist.count > 0) {
        const sent = cudp.sendBatch(cbatch, clist);
        if (sent < clist.count) stats.drops[DROP.sendFailed]! += clist.count - sent;
      }
      clist.count = 0;
    };
    const room = () => {
      if (clist.count === cbatch.capacity) flushControl();
    };
    const drain = () => {
      let m;
      clist.count = 0;
      while ((m = receiveMessageOnPort(init.control))) {
        const msg = m.message as ToWorker;
        room();
        if (msg.t === 'peers') out.setPeers(msg.peers);
        else if (msg.t === 'probe') out.probe(msg.slot, msg.ip, msg.port, cbatch, clist);
        else if (msg.t === 'pingAll') out.pingAllSoon();
        else if (msg.t === 'forward') out.forward(msg.via, msg.target, msg.data, cbatch, clist);
      }
      while ((m = receiveMessageOnPort(init.sibling))) {
        const msg = m.message as SiblingMessage;
        room();
        if (msg.t === 'pong') out.pong(msg.slot, msg.t0, msg.ip, msg.port, msg.via, cbatch, clist);
        else if (msg.t === 'relay') {
          for (const r of msg.items) {
            room();
            out.relay(r.slot, r.from, r.data, cbatch, clist);
          }
        }
        else if (msg.t === 'roam') out.roam(msg.slot, msg.ip, msg.port, msg.via);
        else if (msg.t === 'confirm') out.promote(msg.slot, msg.keyId);
      }
      flushControl();
    };
    let lastTimers = 0;
    const runTimers = () => {
      const mono = clock.mono();
      if (mono - lastTimers < TIMER_MS) return;
      lastTimers = mono;
      clist.count = 0;
      out.timers(cbatch, clist);
      flushControl();
    };
    drain();
    post({ t: 'ready', crypto: aead.name });
    let busy = false;
    let greedy = false;
    while (Atomics.load(ctrl, CTRL_STOP) === 0) {
      // Poll first, read second: a lone packet then costs poll + read + send, nothing more.
      // While busy (the last read filled the batch) go straight back to reading; when poll
      // returned at once (packets were already queued) read until the TUN is empty.
      if (!busy) {
        const t0 = performance.now();
        const ready = poller.wait(IDLE_POLL_MS);
        greedy = performance.now() - t0 < GREEDY_BELOW_MS;
        if ((ready & 2) !== 0) wake.drain();
        const m = Atomics.load(ctrl, CTRL_MAIL);
        if (m !== mail) {
          mail = m;
          drain();
        }
        if ((ready & 1) === 0) {
          runTimers();
          continue;
        }
      }
      const n = tun.readBatch(batch, busy || greedy ? batch.capacity : 1);
      busy = n === batch.capacity || tun.pendingRead;
      if (n > 0) {
        out.process(batch, n, list);
        if (list.count > 0) {
          const sent = udp.sendBatch(batch, list);
          if (sent < list.count) stats.drops[DROP.sendFailed]! += list.count - sent;
        }
      }
      runTimers();
      if (busy) {
        const m = Atomics.load(ctrl, CTRL_MAIL);
        if (m !== mail) {
          mail = m;
          drain();
        }
      }
    }
    out.close();
    tun.close();
    cudp.close();
    cmem.free();
    udp.close();
  } else {
    const sibCtrl = new Int32Array(init.siblingCtrlSab!);
    const sibWake = new WakeFd(init.siblingWakeFd!);
    const toSibling = (m: SiblingMessage) => {
      init.sibling.postMessage(m);
      Atomics.add(sibCtrl, CTRL_MAIL, 1);
      sibWake.wake();
    };
    let relays: { slot: number; from: number; data: Uint8Array }[] = [];
    const inb = new Inbound(
      aead,
      stats,
      clock,
      {
        ping: (slot, t0, ip, port, via) => toSibling({ t: 'pong', slot, t0, ip, port, via }),
        pong: (slot, rttMs, ip, port, via, seenIp, seenPort) => post({ t: 'pong', slot, rttMs, ip, port, via, seenIp, seenPort }),
        roam: (slot, ip, port, via) => {
          toSibling({ t: 'roam', slot, ip, port, via });
          post({ t: 'roam', slot, ip, port, via });
        },
        handshake: (data, ip, port, via) => post({ t: 'handshake', data: new Uint8Array(data), ip, port, via }),
        stun: (data, ip, port) => post({ t: 'stun', data: new Uint8Array(data), ip, port }),
        // Collected over a batch and handed over in one message (one wake of the outbound worker).
        relay: (slot, from, data) => relays.push({ slot, from, data: new Uint8Array(data) }),
        confirmed: (slot, keyId) => {
          toSibling({ t: 'confirm', slot, keyId });
          post({ t: 'confirmed', slot, keyId });
        },
      },
      { relay: init.relay },
    );
    const tun = new TunBatchIo(init.tunFd, batch, init.vnet);
    const udp = new UdpBatchIo(init.udpFd, batch);
    const drain = () => {
      let m;
      while ((m = receiveMessageOnPort(init.control))) {
        const msg = m.message as ToWorker;
        if (msg.t === 'peers') inb.setPeers(msg.peers);
      }
    };
    drain();
    post({ t: 'ready', crypto: aead.name });
    let busy = false;
    while (Atomics.load(ctrl, CTRL_STOP) === 0) {
      if (!busy) {
        const ready = poller.wait(IDLE_POLL_MS);
        if ((ready & 2) !== 0) wake.drain();
        if ((ready & 1) === 0) {
          const m = Atomics.load(ctrl, CTRL_MAIL);
          if (m !== mail) {
            mail = m;
            drain();
          }
          continue;
        }
      }
      const m = Atomics.load(ctrl, CTRL_MAIL);
      if (m !== mail) {
        mail = m;
        drain();
      }
      const n = udp.recvBatch(batch);
      busy = n === batch.capacity;
      if (n > 0) inb.process(batch, n, tun);
      if (relays.length > 0) {
        toSibling({ t: 'relay', items: relays });
        relays = [];
      }
    }
    inb.close();
    tun.close();
    udp.close();
  }
  poller.close();
  mem.free();
}

if (workerData && (workerData as WorkerInit).role) {
  const init = workerData as WorkerInit;
  main(init).then(
    () => {
      init.control.close();
      init.sibling.close();
    },
    (e: unknown) => {
      init.control.postMessage({ t: 'fatal', message: e instanceof Error ? e.message : String(e) } satisfies FromWorker);
      init.control.close();
      init.sibling.close();
    },
  );
}
