/**
 * A warm-up of the packet stages at worker start, so that a lone packet is not run by the
 * interpreter. A worker that forwards 100 pings a second never uses up V8's interrupt budget: after
 * 500 pings none of the stage functions had been optimized (docs/performance.md, "Where a lone
 * packet's time goes"), and a cold pass costs tens of microseconds where a hot one costs one.
 *
 * What it runs: two throwaway duplexes (./duplex.ts, the same classes and constructor options as
 * the live one), each the other's only peer with a random key per direction, and moves synthetic
 * IPv4 (and, with an overlay6 prefix, IPv6) packets A -> B -> A through the real stages:
 *
 *   1. Outbound.process   route, seal (the AEAD's batch path, on native slots as the worker's)
 *   2. Inbound.process    open, replay check, deliver to a TUN writer of the live class
 *
 * below the I/O layer: nothing is read from a TUN or sent on a socket. The TUN writer comes from
 * the caller (the worker gives the real TunBatchIo over /dev/null, so the call sites in Inbound see
 * the class they will see live and are not deoptimized by the first real packet).
 *
 * What it must not touch: anything of the live worker. Its sessions, keys, counters, replay
 * windows and stats are its own (a nonce is never used under a real key: the keys are random and
 * dropped at the end); the AEAD and the clock are shared, and both hold no per-packet state. A
 * failure is reported, never thrown: a worker that cannot warm up forwards packets cold.
 */
import { randomBytes } from 'node:crypto';
import type { Aead } from '../crypto/aead';
import type { WorkerCookies } from '../crypto/cookie';
import type { Mac1Check } from '../crypto/mac1';
import { PacketBatch, SendList, slotSizeFor } from './batch';
import { CTRL_SLOTS, Duplex, type DuplexEvents } from './duplex';
import type { TunIo, UdpIo } from './io';
import { systemClock, type WorkerPeer } from './peer';
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
  mac1?: Mac1Check;
  cookies?: WorkerCookies;
  overlay6: { hi: number; mid: number } | null;
  /** Native memory for the warm-up's own batches (freed at the end). */
  alloc(bytes: number): WarmBlock;
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

const IP_A = 0x64400001; // 100.64.0.1
const IP_B = 0x64400002; // 100.64.0.2
const UNDERLAY = 0xc6120001; // 198.18.0.1 (never sent to: nothing leaves the warm-up)
const PORT = 51820;

/** A UDP that is never used: the warm-up stays below the I/O layer. */
const noUdp: UdpIo = {
  recvBatch: () => 0,
  sendBatch: () => 0,
};

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

function peerOf(slot: number, name: string, overlayIp: number, txKey: Uint8Array, rxKey: Uint8Array, txIndex: number, rxIndex: number): WorkerPeer {
  return {
    slot,
    name,
    overlayIp,
    allowed: [],
    endpointIp: UNDERLAY,
    endpointPort: PORT,
    sessions: [{ keyId: 1, txKey, rxKey, txIndex, rxIndex, confirmed: true, sendUntil: Infinity }],
  };
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
  const stats: DataplaneStats[] = [];
  let delivered = 0;
  try {
    const slot = slotSizeFor(o.mtu);
    const cap = Math.max(1, o.batch);
    const newBatch = (n: number) => {
      const m = o.alloc(slot * n);
      blocks.push(m);
      return new PacketBatch(m.buf, slot, n, m.ptr);
    };
    const kAB = randomBytes(32);
    const kBA = randomBytes(32);
    const host = (self: number, peer: WorkerPeer) => {
      const outBatch = newBatch(cap);
      const inBatch = newBatch(cap);
      const sink = o.sink(inBatch);
      sinks.push(sink);
      const st = new DataplaneStats();
      stats.push(st);
      const d = new Duplex(
        o.aead,
        st,
        systemClock,
        {
          out: { batch: outBatch, tun: sink, udp: noUdp },
          in: { batch: inBatch, udp: noUdp, tun: sink },
          ctrl: { batch: newBatch(CTRL_SLOTS), udp: noUdp },
        },
        events,
        { mtu: o.mtu, relay: o.relay, mac1: o.mac1, cookies: o.cookies, overlay6: o.overlay6 },
      );
      duplexes.push(d);
      d.setPeers([peer]);
      return { self, d, outBatch, inBatch, sink, list: new SendList(cap) };
    };
    const a = host(IP_A, peerOf(0, 'warm-b', IP_B, kAB, kBA, 2, 1));
    const b = host(IP_B, peerOf(0, 'warm-a', IP_A, kBA, kAB, 1, 2));
    kAB.fill(0);
    kBA.fill(0);

    // One direction: n packets from `from`'s TUN, sealed, copied into `to`'s receive batch as
    // recvmmsg would leave them (datagram at 0, source address), opened and delivered.
    const move = (from: typeof a, to: typeof a, n: number, size: number, v6: boolean) => {
      for (let i = 0; i < n; i++) fill(from.outBatch, i, size, from.self, to.self, v6 ? o.overlay6 : null);
      from.d.out.process(from.outBatch, n, from.list);
      const src = from.outBatch;
      const dst = to.inBatch;
      const sent = from.list.count;
      for (let k = 0; k < sent; k++) {
        const i = from.list.idx[k]!;
        const len = src.len[i]!;
        src.buf.copy(dst.buf, dst.offset(k), src.offset(i), src.offset(i) + len);
        dst.len[k] = len;
        dst.ip[k] = UNDERLAY;
        dst.port[k] = PORT;
        dst.hi[3 * k] = dst.hi[3 * k + 1] = dst.hi[3 * k + 2] = 0;
        dst.flags[k] = 0;
      }
      const before = to.d.inb.dataPackets;
      to.d.inb.process(dst, sent, to.sink);
      delivered += to.d.inb.dataPackets - before;
    };

    const rounds = o.rounds ?? WARMUP_ROUNDS;
    const big = Math.min(1400, o.mtu);
    for (let r = 0; r < rounds; r++) {
      const v6 = o.overlay6 !== null && (r & 3) === 3;
      // a lone ping each way (the case this is for), then a batch of full-size packets
      move(a, b, 1, v6 ? 104 : 84, v6);
      move(b, a, 1, v6 ? 104 : 84, v6);
      const n = Math.min(cap, 8);
      move(a, b, n, big, v6);
      move(b, a, 1, 52, v6);
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
