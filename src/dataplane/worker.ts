/**
 * The data-plane worker thread: both directions of the packet path (./duplex.ts) over the TUN
 * and the UDP socket, looping on synchronous system calls in batches. One thread for both
 * directions means one wake-up per arriving packet: when the kernel answers a packet we wrote to
 * the TUN at once (a ping, a TCP ACK), the answer is read and sent without another thread having
 * to wake. The loop never returns to the event loop while running; control messages arrive on a
 * MessagePort and are taken with receiveMessageOnPort when the shared mailbox counter moves, and
 * an eventfd in the poll set wakes the worker when it is idle. An idle worker sleeps in poll until
 * a packet, a message, or its next timer (a ping due; at most IDLE_POLL_MS).
 *
 * The poll set also watches one descriptor for the control thread (the netlink route monitor):
 * when it turns readable the worker says so once ('readable') and stops watching it until told
 * to watch again (after the control thread has drained it), so the control thread need not poll.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, openSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { receiveMessageOnPort, workerData, type MessagePort } from 'node:worker_threads';
import { createAead, type Aead, type AeadBackend } from '../crypto/aead';
import { createWorkerCookies } from '../crypto/cookie';
import { createMac1Check } from '../crypto/mac1';
import { mallocTrim } from '../os/ffi/libc';
import { allocNative, type NativeBlock } from '../os/ffi/mem';
import { Poller, WakeFd } from '../os/poll';
import { TUN_READ_SCRATCH, TUN_WRITE_SCRATCH, TunBatchIo } from '../os/tun/tun';
import { UDP_GRO_SCRATCH, UdpBatchIo } from '../os/udp/udp';
import { PacketBatch, slotSizeFor, spareFor } from './batch';
import { CTRL_HEARTBEAT, CTRL_MAIL, CTRL_STOP } from './ctrl';
import { CTRL_SLOTS, Duplex } from './duplex';
import { systemClock, type AddrHi, type WorkerPeer } from './peer';
import type { CompiledPolicy } from './policy';
import {
  DataplaneStats,
  T_GRO_DATAGRAMS,
  T_GRO_MSGS,
  T_GSO_DATAGRAMS,
  T_GSO_MSGS,
  T_GSO_ON,
  T_GSO_REFUSED,
  T_TUN_COALESCED,
  T_TUN_SUPER,
} from './stats';
import { warmUp, type WarmupResult } from './warmup';

export interface WorkerInit {
  tunFd: number;
  udpFd: number;
  wakeFd: number;
  mtu: number;
  batch: number;
  /** The TUN carries virtio-net headers (offloads on). */
  vnet: boolean;
  /** UDP GSO for the outbound and control sends, GRO for receives. */
  udpOffload: boolean;
  crypto: AeadBackend;
  /**
   * The longest one poll may sleep, so the heartbeat moves at least this often (the service
   * watchdog's period / 4, src/agent/service.ts). Infinity: no limit beyond the loop's own.
   */
  maxSleepMs: number;
  /** This host relays for its peers. */
  relay: boolean;
  /** The network's IPv6 overlay prefix (control/overlay6.ts overlay6Of); null: IPv6 is not carried. */
  overlay6: { hi: number; mid: number } | null;
  /** Our static public key: handshake messages need its mac1 to cross (null: not checked here). */
  hsPublicKey: Uint8Array | null;
  statsSab: SharedArrayBuffer;
  /** This worker's number, 0 to workers - 1 (its TUN queue and its UDP socket in the reuseport group). */
  worker: number;
  workers: number;
  /** Every worker's TUN queue in order (several workers): inbound packets go to their flow's queue. */
  tunQueues: number[];
  /** The policy's flow table, shared by every worker (several workers; policy.ts flowTableBytes). */
  flowTable: SharedArrayBuffer | null;
  /** The cookie secrets, shared by every worker (several workers; cookie.ts sharedCookieSecrets); worker 0 rotates them. */
  cookieSecrets: SharedArrayBuffer | null;
  /** The other workers' stats regions, read by worker 0, which pings for all (stats.ts siblings). */
  siblingStats: SharedArrayBuffer[];
  ctrlSab: SharedArrayBuffer;
  control: MessagePort;
}

export type ToWorker =
  | { t: 'peers'; peers: WorkerPeer[] }
  /** test the path to a peer at ip:port */
  | { t: 'probe'; slot: number; ip: number; port: number; hi?: number[] }
  /** a diagnostic ping stamped t0 on the peer's current path (cladnet ping) */
  | { t: 'diag'; slot: number; t0: number }
  /** ping every peer now (our address or NAT mapping changed) */
  | { t: 'pingAll' }
  /** say bye to every peer now (the agent is stopping on purpose) */
  | { t: 'byeAll' }
  /** a datagram (handshake) for the peer with overlay address `target`, through relay `via` */
  | { t: 'forward'; via: number; target: number; data: Uint8Array }
  /** the control thread sent an initiation to ip: expect its answer (hslimit.ts HS_EXPECT_MS) */
  | { t: 'expect'; ip: number; hi?: number[] }
  /** tests only (CLADNET_TEST_HOOKS=1): block this thread for `ms`, as a wedged data plane would */
  | { t: 'stall'; ms: number }
  /** report once when fd turns readable (-1: watch nothing) */
  | { t: 'watch'; fd: number }
  /** another worker saw the peer in `slot` roam (docs/design.md, Many cores) */
  | { t: 'roam'; slot: number; ip: number; port: number; via: number; hi?: number[] }
  /** another worker got the first packet on this session: it is confirmed */
  | { t: 'confirm'; slot: number; keyId: number }
  /** the network policy compiled for this host (null: none), its counters in shared memory */
  | { t: 'policy'; policy: CompiledPolicy | null; counters: SharedArrayBuffer | null };

/**
 * Addresses cross both ways as the data plane holds them: `ip` the low 32 bits, `hi` the upper 96
 * of an IPv6 address (absent: IPv4). The engine turns them into the control thread's handles.
 */
export type FromWorker =
  | { t: 'ready'; crypto: string; warmup: WarmupResult }
  | { t: 'roam'; slot: number; ip: number; port: number; via: number; hi?: number[] }
  | { t: 'handshake'; data: Uint8Array; ip: number; port: number; via: number; proven: boolean; hi?: number[] }
  | { t: 'stun'; data: Uint8Array; ip: number; port: number; hi?: number[] }
  | { t: 'pong'; slot: number; rttMs: number; ip: number; port: number; via: number; seenIp: number; seenPort: number; t0: number; hi?: number[] }
  | { t: 'confirmed'; slot: number; keyId: number }
  | { t: 'bye'; slot: number }
  /** a packet from the TUN for overlay address ip found no session (outbound.ts onWant) */
  | { t: 'want'; ip: number }
  /** the watched descriptor is readable (it is no longer watched) */
  | { t: 'readable' }
  | { t: 'fatal'; message: string };

/** An event's IPv6 upper bits as a message field (nothing for IPv4). */
function hiOf(hi: AddrHi | undefined): { hi?: number[] } {
  return hi ? { hi: [hi[0]!, hi[1]!, hi[2]!] } : {};
}

/** Segments of the largest TSO super-packet at the smallest IPv4 MSS, rounded up. */
const MAX_TSO_SEGMENTS = 128;
/**
 * The longest an idle worker sleeps in poll (it wakes sooner for a packet, a message through the
 * eventfd, or a timer that is due); the shared counters it publishes are at most this old.
 */
const IDLE_POLL_MS = 1_000;

/**
 * While packets flowed in the last ACTIVE_SPAN_MS, the worker sleeps at most ACTIVE_TICK_MS at a
 * time. Measured (docs/performance.md, Latency): a worker that sleeps through the 10 ms between
 * two pings answers the next one about 0.1 ms later than one that wakes every few ms, on this
 * 2-vCPU VM. The cost is at most 200 empty wake-ups a second, and only while traffic flows.
 */
const ACTIVE_SPAN_MS = 100;
// (Traffic only: a lone ping or pong does not start that span; the timers see bursts of those
// at their TIMER_MS grain anyway, since every packet wakes the loop.)
const ACTIVE_TICK_MS = 5;
/** A poll that returned faster than this found packets already queued: read them all. */
const GREEDY_BELOW_MS = 0.02;
/** How often timers run while busy. */
const TIMER_MS = 50;
/**
 * The warm-up (./warmup.ts) leaves TurboFan's working memory in the malloc arena of V8's compiler
 * thread, which keeps freed pages: they go back (malloc_trim) this long after it, when its
 * background compile jobs are done. Measured: idle RSS 2 MiB less (docs/performance.md).
 */
const TRIM_AFTER_WARMUP_MS = 2_000;
/** Rounds of the second, short warm-up pass (see main). */
const WARMUP_REFILL_ROUNDS = 100;
/** Poll set: bit 0 TUN, bit 1 UDP, bit 2 the wake eventfd, bit 3 the watched descriptor. */
const READY_TUN = 1;
const READY_UDP = 2;
const READY_WAKE = 4;
const READY_WATCHED = 8;
const WATCHED = 3;

async function main(init: WorkerInit): Promise<void> {
  const ctrl = new Int32Array(init.ctrlSab);
  const stats = new DataplaneStats(init.statsSab);
  stats.siblings = init.siblingStats.map((sab) => new DataplaneStats(sab));
  const aead = await createAead(init.crypto);
  const mac1 = init.hsPublicKey ? await createMac1Check(init.hsPublicKey, init.crypto) : undefined;
  const shared = init.cookieSecrets ? { sab: init.cookieSecrets, rotate: init.worker === 0 } : undefined;
  const cookies = init.hsPublicKey ? await createWorkerCookies(init.hsPublicKey, init.crypto, shared) : undefined;
  const clock = systemClock;
  // The cookie secrets' first draw now rather than in the first packet's batch (that branch runs
  // once per process, so the warmed-up stages have no feedback for it; see ./warmup.ts).
  cookies?.tick(clock.mono());
  // Before the live objects exist: they are then built with the shapes the warm-up left (a field
  // it widened would otherwise leave them on an outdated shape), which also keeps those shapes,
  // and the optimized code's feedback for them, alive through the GC.
  const warmup = await warm(init, aead);
  if (warmup.ok) collectGarbage();
  const slot = slotSizeFor(init.mtu);
  // With TUN offloads one read can be a 64 KiB super-packet cut into up to 65535/536 = 123
  // segments (536 is the smallest IPv4 MSS): the outbound batch must hold a whole one.
  const outCap = init.vnet ? Math.max(init.batch, MAX_TSO_SEGMENTS) : init.batch;
  // The TUN reader's landing buffer, the UDP receiver's GRO landing and the TUN writer's coalescer
  // live in their batch's block (PacketBatch.carve: packets are copied within one Buffer).
  // Untouched pages of calloc'ed memory cost no RSS until packets land there.
  const outSpare = init.vnet ? spareFor(TUN_READ_SCRATCH) : 0;
  const inSpare = spareFor(...(init.udpOffload ? [UDP_GRO_SCRATCH] : []), ...(init.vnet ? [TUN_WRITE_SCRATCH] : []));
  const blocks = [allocNative(slot * outCap + outSpare), allocNative(slot * init.batch + inSpare), allocNative(slot * CTRL_SLOTS)];
  const [outMem, inMem, ctrlMem] = blocks as [NativeBlock, NativeBlock, NativeBlock];
  const outBatch = new PacketBatch(outMem.buf, slot, outCap, outMem.ptr);
  const inBatch = new PacketBatch(inMem.buf, slot, init.batch, inMem.ptr);
  const ctrlBatch = new PacketBatch(ctrlMem.buf, slot, CTRL_SLOTS, ctrlMem.ptr);
  // One TunBatchIo per batch: each keeps the native addresses of its own batch's slots.
  const tunRead = new TunBatchIo(init.tunFd, outBatch, init.vnet);
  const tunWrite = new TunBatchIo(init.tunFd, inBatch, init.vnet, init.tunQueues.length > 1 ? init.tunQueues : null);
  const udpIn = new UdpBatchIo(init.udpFd, inBatch, { gro: init.udpOffload });
  const udpOut = new UdpBatchIo(init.udpFd, outBatch, { gso: init.udpOffload });
  const udpCtrl = new UdpBatchIo(init.udpFd, ctrlBatch, { gso: init.udpOffload });
  const wake = new WakeFd(init.wakeFd);
  const poller = new Poller([init.tunFd, init.udpFd, init.wakeFd, -1]);
  let mail = Atomics.load(ctrl, CTRL_MAIL);

  const post = (m: FromWorker) => init.control.postMessage(m);
  const d = new Duplex(
    aead,
    stats,
    clock,
    {
      out: { batch: outBatch, tun: tunRead, udp: udpOut },
      in: { batch: inBatch, udp: udpIn, tun: tunWrite },
      ctrl: { batch: ctrlBatch, udp: udpCtrl },
    },
    {
      pong: (slot, rttMs, ip, port, via, seenIp, seenPort, t0, hi) =>
        post({ t: 'pong', slot, rttMs, ip, port, via, seenIp, seenPort, t0, ...hiOf(hi) }),
      roam: (slot, ip, port, via, hi) => post({ t: 'roam', slot, ip, port, via, ...hiOf(hi) }),
      handshake: (data, ip, port, via, proven, hi) =>
        post({ t: 'handshake', data: new Uint8Array(data), ip, port, via, proven: proven === true, ...hiOf(hi) }),
      stun: (data, ip, port, hi) => post({ t: 'stun', data: new Uint8Array(data), ip, port, ...hiOf(hi) }),
      confirmed: (slot, keyId) => post({ t: 'confirmed', slot, keyId }),
      bye: (slot) => post({ t: 'bye', slot }),
      want: (ip) => post({ t: 'want', ip }),
    },
    {
      mtu: init.mtu,
      relay: init.relay,
      mac1,
      cookies,
      overlay6: init.overlay6,
      worker: { index: init.worker, count: init.workers },
      pings: init.worker === 0,
      ...(init.flowTable ? { flowTable: init.flowTable } : {}),
    },
  );
  // A short second pass now that the live objects exist: the GC above cleared the feedback that
  // named shapes only the warm-up's objects had; this puts it back with the live ones alive.
  if (warmup.ok) await warm(init, aead, WARMUP_REFILL_ROUNDS);
  const drain = () => {
    let m;
    while ((m = receiveMessageOnPort(init.control))) {
      const msg = m.message as ToWorker;
      if (msg.t === 'peers') {
        d.setPeers(msg.peers);
        nextTimer = -Infinity; // new sessions want their first ping: look at the timers soon
        // This message is the worker's own copy: its key bytes are loaded now, erase them.
        for (const p of msg.peers) {
          for (const x of p.sessions) {
            x.txKey.fill(0);
            x.rxKey.fill(0);
          }
        }
      }
      else if (msg.t === 'roam') d.roam(msg.slot, msg.ip, msg.port, msg.via, msg.hi ? Uint32Array.from(msg.hi) : null);
      else if (msg.t === 'confirm') d.confirm(msg.slot, msg.keyId);
      else if (msg.t === 'probe') d.probe(msg.slot, msg.ip, msg.port, msg.hi ? Uint32Array.from(msg.hi) : null);
      else if (msg.t === 'diag') d.diag(msg.slot, msg.t0);
      else if (msg.t === 'pingAll') {
        d.pingAll();
        nextTimer = -Infinity;
      }
      else if (msg.t === 'byeAll') d.byeAll();
      else if (msg.t === 'forward') d.forward(msg.via, msg.target, msg.data);
      else if (msg.t === 'expect') d.expect(msg.ip, msg.hi ?? null);
      else if (msg.t === 'stall') Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, msg.ms);
      else if (msg.t === 'watch') poller.setFd(WATCHED, msg.fd);
      else if (msg.t === 'policy') d.setPolicy(msg.policy, msg.counters ? new Float64Array(msg.counters) : undefined);
    }
  };
  const checkMail = () => {
    const m = Atomics.load(ctrl, CTRL_MAIL);
    if (m !== mail) {
      mail = m;
      drain();
    }
  };
  let lastTimers = 0;
  /** When (mono ms) a timer falls due next, as of the last run. */
  let nextTimer = -Infinity;
  const t = stats.totals;
  /** When the warm-up's compiler memory is given back (see TRIM_AFTER_WARMUP_MS); Infinity: done. */
  let trimAt = warmup.ok ? clock.mono() + TRIM_AFTER_WARMUP_MS : Infinity;
  const runTimers = () => {
    const mono = clock.mono();
    if (mono - lastTimers < TIMER_MS) return;
    lastTimers = mono;
    if (mono >= trimAt) {
      trimAt = Infinity;
      mallocTrim(0);
    }
    nextTimer = d.timers();
    t[T_GSO_MSGS] = udpOut.gsoMessages + udpCtrl.gsoMessages;
    t[T_GSO_DATAGRAMS] = udpOut.gsoSegments + udpCtrl.gsoSegments;
    t[T_GSO_REFUSED] = udpOut.gsoRefused + udpCtrl.gsoRefused;
    t[T_GSO_ON] = udpOut.gso ? 1 : 0;
    t[T_GRO_MSGS] = udpIn.groCoalesced;
    t[T_GRO_DATAGRAMS] = udpIn.groSegments;
    t[T_TUN_SUPER] = tunWrite.superPackets;
    t[T_TUN_COALESCED] = tunWrite.coalesced;
  };

  drain();
  post({ t: 'ready', crypto: aead.name, warmup });
  // `again`: work may be queued already (a batch came back full, or we just wrote to the TUN
  // and the kernel may have answered at once, as it does a ping): look without sleeping.
  let again = false;
  let lastPacket = -Infinity;
  /**
   * How long to sleep when nothing is queued: until the next timer, at most IDLE_POLL_MS. (For
   * ACTIVE_SPAN_MS after a packet the loop ticks every ACTIVE_TICK_MS instead, so the timers see
   * a burst end at their usual TIMER_MS grain and schedule its silence pings.)
   */
  const idleMs = (): number => {
    // (timers run at most every TIMER_MS: waking earlier would only spin)
    const due = Math.max(nextTimer, lastTimers + TIMER_MS) - clock.mono();
    return Math.max(0, Math.min(IDLE_POLL_MS, Math.ceil(due)));
  };
  /**
   * One turn of the loop: sleep in poll until something is ready (or a tick), then do it. A
   * function of its own rather than the body of the loop in main: main is async and called once,
   * and its loop ran in V8's baseline code with the callees' inline caches missing (in a ping
   * series, a tenth of the worker's CPU was IC stubs called from main). `turn` is called at least
   * every ACTIVE_TICK_MS while traffic flows, so V8 optimizes it by its call count, with what it
   * calls inlined.
   */
  const turn = (): void => {
    const t0 = performance.now();
    Atomics.add(ctrl, CTRL_HEARTBEAT, 1);
    const sleep = again ? 0 : t0 - lastPacket < ACTIVE_SPAN_MS ? ACTIVE_TICK_MS : idleMs();
    const ready = poller.wait(Math.min(sleep, init.maxSleepMs));
    // A lone packet after a sleep costs poll + read + send, nothing more; when poll returned at
    // once, packets were queued already: read until the TUN is empty.
    const greedy = performance.now() - t0 < GREEDY_BELOW_MS;
    if ((ready & READY_WAKE) !== 0) wake.drain();
    if ((ready & READY_WATCHED) !== 0) {
      poller.setFd(WATCHED, -1); // once: watched again when the control thread asks
      post({ t: 'readable' });
    }
    checkMail();
    again = false;
    if ((ready & READY_UDP) !== 0 || udpIn.pendingRecv) {
      const data = d.inb.dataPackets;
      const n = d.fromUdp();
      if (n > 0) again = true;
      // Only traffic keeps the loop ticking fast (a ping or pong alone does not).
      if (d.inb.dataPackets !== data) lastPacket = t0;
    }
    if ((ready & READY_TUN) !== 0 || tunRead.pendingRead) {
      const n = d.fromTun(greedy ? outBatch.capacity : 1);
      if (n > 0) lastPacket = t0;
      if (n === outBatch.capacity || tunRead.pendingRead) again = true;
    }
    runTimers();
  };
  while (Atomics.load(ctrl, CTRL_STOP) === 0) turn();
  d.close();
  tunRead.close();
  tunWrite.close();
  for (const u of [udpIn, udpOut, udpCtrl]) u.close();
  poller.close();
  for (const b of blocks) b.free();
}

/**
 * The stage functions optimized before the first packet (./warmup.ts), with throwaway sessions and
 * a throwaway mac1 key; the TUN writer is the live class over /dev/null. CLADNET_WARMUP=0 skips it
 * (for A/B runs).
 */
async function warm(init: WorkerInit, aead: Aead, rounds?: number): Promise<WarmupResult> {
  if (process.env.CLADNET_WARMUP === '0') return { ok: false, delivered: 0, ms: 0, error: 'off (CLADNET_WARMUP=0)' };
  let nul = -1;
  try {
    const key = init.hsPublicKey ? randomBytes(32) : null;
    const mac1 = key ? await createMac1Check(key, init.crypto) : undefined;
    const cookies = key ? await createWorkerCookies(key, init.crypto) : undefined;
    nul = openSync('/dev/null', 'w');
    const fd = nul;
    const { mtu, batch, relay, overlay6 } = init;
    return warmUp({ aead, mtu, batch, relay, mac1, cookies, overlay6, rounds, alloc: allocNative, inSpare: init.vnet ? spareFor(TUN_WRITE_SCRATCH) : 0, sink: (b) => new TunBatchIo(fd, b, init.vnet) });
  } catch (e) {
    return { ok: false, delivered: 0, ms: 0, error: e instanceof Error ? e.message : String(e) };
  } finally {
    if (nul >= 0) closeSync(nul);
  }
}

/**
 * A full GC of this worker's heap now: the warm-up's objects are garbage, and left alone V8
 * collects them with a mark-compact seconds later, while the first packets flow (seen with
 * --trace-gc: 5-9 ms stalls of the data plane during a ping series). `gc` is exposed only to
 * the new context made here; a failure only means that GC comes later.
 */
function collectGarbage(): void {
  try {
    setFlagsFromString('--expose-gc');
    (runInNewContext('gc') as () => void)();
  } catch {
    /* see above */
  }
}

if (workerData && (workerData as WorkerInit).ctrlSab) {
  const init = workerData as WorkerInit;
  main(init).then(
    () => {
      init.control.close();
    },
    (e: unknown) => {
      init.control.postMessage({ t: 'fatal', message: e instanceof Error ? e.message : String(e) } satisfies FromWorker);
      init.control.close();
    },
  );
}
