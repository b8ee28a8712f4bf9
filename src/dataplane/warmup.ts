/**
 * A warm-up of the packet stages at worker start, so that a lone packet is not run by the
 * interpreter. A worker that forwards 100 pings a second never uses up V8's interrupt budget: after
 * 500 pings none of the stage functions had been optimized (docs/performance.md, "Where a lone
 * packet's time goes"), and a cold pass costs tens of microseconds where a hot one costs one.
 *
 * What it runs: two throwaway duplexes (./duplex.ts, the same classes and constructor options as
 * the live one), each the other's only peer with a random key per direction, joined by an
 * in-memory wire (WarmWire), and moves through them what a live pair moves:
 *
 *   data       lone IPv4 (and, with an overlay6 prefix, IPv6) packets each way and batches of
 *              full-size ones: Outbound.process (route, number, seal: the AEAD's batch path on
 *              native slots as the worker's), then Duplex.fromUdp -> Inbound.process (open,
 *              replay check, deliver to a TUN writer of the live class)
 *   control    the timers' pings and their pongs (Duplex.timers, pingAll), a diagnostic ping
 *   confirm    the first packet on a session the receiver has not confirmed yet
 *
 * Nothing is read from a TUN or sent on a socket. The TUN writer comes from the caller (the worker
 * gives the real TunBatchIo over /dev/null, so the call sites in Inbound see the class they will
 * see live). A path the warm-up never ran has no type feedback, and optimized code deoptimizes
 * when a live packet first takes it; at a few packets a second V8 may then not optimize that
 * function again for minutes. So the warm-up runs every path a steady peer's packets take.
 *
 * What it must not touch: anything of the live worker. Its sessions, keys, counters, replay
 * windows and stats are its own (a nonce is never used under a real key: the keys are random and
 * dropped at the end); the AEAD and the clock are shared, and both hold no per-packet state. A
 * failure is reported, never thrown: a worker that cannot warm up forwards packets cold.
 */
import { randomBytes } from 'node:crypto';
import type { Aead } from '../crypto/aead';
import { COOKIE_SECRET_MS, type WorkerCookies } from '../crypto/cookie';
import type { Mac1Check } from '../crypto/mac1';
import { INITIATION_LEN, MSG_INITIATION, MSG_RESPONSE, RESPONSE_LEN } from '../crypto/noise';
import { PacketBatch, SendList, slotSizeFor } from './batch';
import { CTRL_SLOTS, Duplex, type DuplexEvents } from './duplex';
import type { TunIo, UdpIo } from './io';
import { DIRECT, systemClock, type WorkerPeer } from './peer';
import { DataplaneStats } from './stats';
import { HEADER_LEN } from './wire';

/** Native memory as src/os/ffi/mem.ts allocNative gives it (the worker's slots live there too). */
export interface WarmBlock {
  buf: Buffer;
  ptr: bigint;
  free(): void;
}

export interface WarmupOptions {
  /** The worker's AEAD (keys are loaded into it and dropped again). */
  aead: Aead;
  mtu: number;
  /** Slots per batch, as the worker's in-batch. */
  batch: number;
  /** The live duplex's options, so that the stage objects have the live shapes. */
  relay: boolean;
  /**
   * The warm-up's own mac1 check and cookies: of the live ones' classes, for a throwaway public
   * key (absent when the live worker has none). Its handshake messages are signed with this mac1.
   */
  mac1?: Mac1Check;
  cookies?: WorkerCookies;
  overlay6: { hi: number; mid: number } | null;
  /** Native memory for the warm-up's own batches (freed at the end). */
  alloc(bytes: number): WarmBlock;
  /**
   * Bytes each in-batch's block gets beyond its slots, as the live worker's (its TUN writer carves
   * the coalescer there, so the copies into it take the live path).
   */
  inSpare?: number;
  /** A TUN writer bound to `batch` that discards what it is given (closed at the end). */
  sink(batch: PacketBatch): TunIo & { close?(): void };
  /** Round trips to run (default WARMUP_ROUNDS). */
  rounds?: number;
}

export interface WarmupResult {
  ok: boolean;
  /** Packets opened and written to the TUN writer by the warm-up (0 when it failed early). */
  delivered: number;
  /** Wall-clock ms it took. */
  ms: number;
  /** Why it stopped (ok false). */
  error?: string;
}

/**
 * Round trips of the warm-up: each moves one lone packet and one batch each way. Measured with
 * --trace-opt in a worker (docs/performance.md, 2026-12-03 warm-up): TurboFan had optimized every
 * stage function well before this.
 */
export const WARMUP_ROUNDS = 400;

/** Pairs the warm-up goes through, and the rounds of each but the last (see warmUp). */
const GENERATIONS = 3;
const GENERATION_ROUNDS = 16;
/**
 * Rounds between two handshake messages each way: few enough to stay inside the per-source
 * flood limit (hslimit.ts HS_BURST), which would drop them.
 */
const HANDSHAKE_EVERY = 48;

const IP_A = 0x64400001; // 100.64.0.1
const IP_B = 0x64400002; // 100.64.0.2
const UNDERLAY = 0xc6120001; // 198.18.0.1 (never sent to: nothing leaves the warm-up)
const PORT = 51820;
/** Receiver indices, one of each size (see peerOf). */
const INDEX_HI = 0x9e3779b9;
const INDEX_LO = 0x1234567;

/**
 * One end of the warm-up's wire: sendBatch hands the listed datagrams to the other end, recvBatch
 * takes them as recvmmsg would leave them (datagram at slot 0, the sender's underlay address).
 * The datagrams wait in a fixed ring of slots (nothing allocated per datagram: garbage with
 * off-heap backing stores would stay in the idle worker's RSS until its next GC).
 */
class WarmWire implements UdpIo {
  other: WarmWire | null = null;
  private readonly buf: Buffer;
  private readonly len: Int32Array;
  private head = 0;
  private count = 0;

  constructor(
    private readonly slotSize: number,
    private readonly slots: number,
  ) {
    this.buf = Buffer.alloc(slotSize * slots);
    this.len = new Int32Array(slots);
  }

  sendBatch(batch: PacketBatch, list: SendList): number {
    for (let k = 0; k < list.count; k++) {
      const i = list.idx[k]!;
      const at = batch.offset(i);
      this.other!.push(batch.buf, at, batch.len[i]!);
    }
    return list.count;
  }

  recvBatch(batch: PacketBatch): number {
    let n = 0;
    for (; n < batch.capacity && this.count > 0; n++) {
      const h = this.head;
      this.buf.copy(batch.buf, batch.offset(n), h * this.slotSize, h * this.slotSize + this.len[h]!);
      batch.len[n] = this.len[h]!;
      batch.ip[n] = UNDERLAY;
      batch.port[n] = PORT;
      batch.hi[3 * n] = batch.hi[3 * n + 1] = batch.hi[3 * n + 2] = 0;
      batch.flags[n] = 0;
      this.head = (h + 1) % this.slots;
      this.count--;
    }
    return n;
  }

  /** Queues the datagram buf[at, at+len) at this end (also a handshake message made by hand). */
  push(buf: Buffer, at: number, len: number): void {
    if (this.count === this.slots) throw new Error('warm-up wire overflow');
    const t = (this.head + this.count) % this.slots;
    buf.copy(this.buf, t * this.slotSize, at, at + len);
    this.len[t] = len;
    this.count++;
  }

  get pending(): number {
    return this.count;
  }
}

const noop = () => {};
/** The events the worker (worker.ts) listens to, as no-ops: the stage objects get the live shapes. */
const events: DuplexEvents = {
  pong: noop,
  roam: noop,
  handshake: noop,
  stun: noop,
  confirmed: noop,
  bye: noop,
  want: noop,
};

/**
 * A peer as the control thread describes it (agent.ts pushPeers), through structuredClone as the
 * worker gets it by postMessage, so the stage objects built on it get the live shapes. Indices
 * and endpoint above 2^31 (as random indices and many addresses are): V8 then keeps those fields
 * as doubles from the start, and a live peer's values, small or large, fit without a shape change
 * (which would deoptimize the stages on the first real packet).
 */
function peerOf(overlayIp: number, txKey: Uint8Array, rxKey: Uint8Array, txIndex: number, rxIndex: number, confirmed: boolean): WorkerPeer {
  const peer: WorkerPeer = {
    slot: 0,
    name: 'warm-up',
    overlayIp,
    allowed: [],
    endpointIp: UNDERLAY,
    endpointPort: PORT,
    endpointVia: DIRECT,
    sessions: [{ keyId: 1, txKey, rxKey, txIndex, rxIndex, confirmed, sendUntil: Date.now() + 3_600_000 }],
  };
  return structuredClone(peer);
}

/** Writes an IPv4 (or IPv6) UDP packet of `size` bytes from -> to at slot i + HEADER. */
function fill(batch: PacketBatch, i: number, size: number, from: number, to: number, v6: { hi: number; mid: number } | null): void {
  const o = batch.offset(i) + HEADER_LEN;
  const b = batch.buf;
  b.fill(0, o, o + size);
  if (v6) {
    b[o] = 0x60;
    b.writeUInt16BE(size - 40, o + 4);
    b[o + 6] = 17;
    b[o + 7] = 64;
    for (const [at, ip] of [
      [o + 8, from],
      [o + 24, to],
    ] as const) {
      // prefix (bytes 0-5), zero (6-11), the IPv4 twin (12-15): control/overlay6.ts hostIp6
      b.writeUInt32BE(v6.hi >>> 0, at);
      b.writeUInt16BE(v6.mid & 0xffff, at + 4);
      b.writeUInt32BE(ip >>> 0, at + 12);
    }
  } else {
    b[o] = 0x45;
    b.writeUInt16BE(size, o + 2);
    b[o + 8] = 64;
    b[o + 9] = 17;
    b.writeUInt32BE(from >>> 0, o + 12);
    b.writeUInt32BE(to >>> 0, o + 16);
  }
  batch.len[i] = size;
  batch.flags[i] = 0;
}

/**
 * Runs the warm-up (see the header). Never throws; everything it created is released before it
 * returns, also on failure.
 */
export function warmUp(o: WarmupOptions): WarmupResult {
  const t0 = performance.now();
  const blocks: WarmBlock[] = [];
  const sinks: (TunIo & { close?(): void })[] = [];
  const duplexes: Duplex[] = [];
  // One stats block for every throwaway host (each is 256 KiB, every page touched at creation):
  // the warm-up only reads its drop counters, summed.
  const st = new DataplaneStats();
  const stats = [st];
  let delivered = 0;
  try {
    const slot = slotSizeFor(o.mtu);
    const cap = Math.max(1, o.batch);
    const newBatch = (n: number, spare = 0) => {
      const m = o.alloc(slot * n + spare);
      blocks.push(m);
      return new PacketBatch(m.buf, slot, n, m.ptr);
    };
    type Host = ReturnType<typeof host>;
    const host = (self: number, peer: WorkerPeer) => {
      const outBatch = newBatch(cap);
      const inBatch = newBatch(cap, o.inSpare);
      const sink = o.sink(inBatch);
      sinks.push(sink);
      const wire = new WarmWire(slot, cap + CTRL_SLOTS);
      const d = new Duplex(
        o.aead,
        st,
        systemClock,
        {
          out: { batch: outBatch, tun: sink, udp: wire },
          in: { batch: inBatch, udp: wire, tun: sink },
          ctrl: { batch: newBatch(CTRL_SLOTS), udp: wire },
        },
        events,
        // The live duplex's option keys, so its options object has the live shape; one worker owns every session here.
        { mtu: o.mtu, relay: o.relay, mac1: o.mac1, cookies: o.cookies, overlay6: o.overlay6, worker: { index: 0, count: 1 }, pings: true },
      );
      duplexes.push(d);
      d.setPeers([peer]);
      for (const x of peer.sessions) {
        x.txKey.fill(0);
        x.rxKey.fill(0);
      }
      return { self, d, wire, outBatch, list: new SendList(cap) };
    };
    /** A fresh pair, each the other's only peer, with new random keys; B's session waits for A's first packet. */
    const pair = (): [Host, Host] => {
      const kAB = randomBytes(32);
      const kBA = randomBytes(32);
      const a = host(IP_A, peerOf(IP_B, kAB, kBA, INDEX_HI, INDEX_LO, true));
      const b = host(IP_B, peerOf(IP_A, kBA, kAB, INDEX_LO, INDEX_HI, false));
      kAB.fill(0);
      kBA.fill(0);
      a.wire.other = b.wire;
      b.wire.other = a.wire;
      return [a, b];
    };
    /** What the worker's loop does when the socket is readable: receive until it is empty. */
    const receive = (h: Host) => {
      const before = h.d.inb.dataPackets;
      while (h.wire.pending > 0 && h.d.fromUdp() > 0);
      delivered += h.d.inb.dataPackets - before;
    };
    // One direction: n packets from `from`'s TUN, sealed and sent (as Duplex.fromTun after its
    // read), received and delivered by `to`, whose pongs (if any) go back.
    const move = (from: Host, to: Host, n: number, size: number, v6: boolean) => {
      for (let i = 0; i < n; i++) fill(from.outBatch, i, size, from.self, to.self, v6 ? o.overlay6 : null);
      from.d.out.process(from.outBatch, n, from.list);
      from.wire.sendBatch(from.outBatch, from.list);
      receive(to);
      receive(from);
    };
    // A handshake message of `type` from `from` to `to` with a valid mac1: it crosses to the
    // (here silent) control thread, as the live ones do at start and at every rekey.
    const handshake = (from: Host, to: Host, type: number, len: number) => {
      const m = Buffer.alloc(len);
      m[0] = type;
      randomBytes(len - 36).copy(m, 4);
      o.mac1?.sign(m, 0, len);
      from.wire.other!.push(m, 0, len);
      receive(to);
    };
    // The timers of `from` ping `to` (pingAll makes one due each time), and a diagnostic ping.
    const ping = (from: Host, to: Host) => {
      from.d.pingAll();
      from.d.timers();
      from.d.diag(0, systemClock.mono());
      receive(to);
      receive(from);
    };

    const rounds = o.rounds ?? WARMUP_ROUNDS;
    const big = Math.min(1400, o.mtu);
    // Generations of pairs: V8 gives a function its feedback vector only after a few calls, so
    // what the first calls on a fresh object do (allocate its AEAD job list, confirm a session,
    // start the TUN writer's coalescer) leaves no feedback; optimized code would deoptimize there
    // on the live duplex's first packet. Later pairs run those paths again with feedback kept, and
    // their event callbacks (new closures per duplex) teach the call sites that the target varies.
    let [a, b] = pair();
    for (let r = 0; r < rounds; r++) {
      if (r > 0 && r % GENERATION_ROUNDS === 0 && r <= GENERATION_ROUNDS * (GENERATIONS - 1)) {
        [a, b] = pair();
        // the cookie secret's rotation (every COOKIE_SECRET_MS live), on the warm-up's own cookies
        o.cookies?.tick(systemClock.mono() + r * COOKIE_SECRET_MS);
      }
      if (r % HANDSHAKE_EVERY === 1) {
        handshake(a, b, MSG_INITIATION, INITIATION_LEN);
        handshake(b, a, MSG_RESPONSE, RESPONSE_LEN);
      }
      const v6 = o.overlay6 !== null && (r & 3) === 3;
      // a lone ping each way (the case this is for), then a batch of full-size packets
      move(a, b, 1, v6 ? 104 : 84, v6);
      move(b, a, 1, v6 ? 104 : 84, v6);
      move(a, b, Math.min(cap, 8), big, v6);
      move(b, a, 1, 52, v6);
      if ((r & 7) === 0) {
        ping(a, b);
        ping(b, a);
      }
    }
    // Every packet must have come through: a drop means the stages ran a path the live packets do not.
    const drops = new Map<string, number>();
    for (const st of stats) for (const [k, v] of Object.entries(st.dropCounts())) if (v > 0) drops.set(k, (drops.get(k) ?? 0) + v);
    let dropped = 0;
    for (const v of drops.values()) dropped += v;
    delivered -= dropped;
    if (dropped > 0) throw new Error(`the warm-up dropped ${dropped} packets (${[...drops].map(([k, v]) => `${k} ${v}`).join(', ')})`);
    if (delivered === 0) throw new Error('no packet came through the warm-up');
    return { ok: true, delivered, ms: performance.now() - t0 };
  } catch (e) {
    return { ok: false, delivered, ms: performance.now() - t0, error: e instanceof Error ? e.message : String(e) };
  } finally {
    for (const d of duplexes) {
      try {
        d.setPeers([]);
        d.close();
      } catch {
        /* releasing what failed to build: nothing more to do */
      }
    }
    for (const s of sinks) {
      try {
        s.close?.();
      } catch {
        /* as above */
      }
    }
    for (const m of blocks) m.free();
  }
}
