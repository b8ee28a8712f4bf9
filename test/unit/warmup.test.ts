/**
 * The worker's warm-up of the packet stages (src/dataplane/warmup.ts): it moves packets through
 * the real stage classes with its own throwaway sessions, leaves nothing behind in a live duplex
 * that shares its AEAD (stats, session counters, replay windows, TUN, network all untouched; the
 * live pair goes on forwarding with the counters where they were), and a failure in it is
 * reported, never thrown, with everything it allocated freed.
 */
import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { FfiAead, type Aead } from '../../src/crypto/aead';
import { PacketBatch, slotSizeFor } from '../../src/dataplane/batch';
import { CTRL_SLOTS, Duplex } from '../../src/dataplane/duplex';
import { FakeClock, FakeTun, FakeUdp, FakeUdpNetwork } from '../../src/dataplane/fakes';
import type { WorkerPeer } from '../../src/dataplane/peer';
import { DataplaneStats } from '../../src/dataplane/stats';
import { readCounter } from '../../src/dataplane/wire';
import { warmUp, type WarmBlock, type WarmupOptions } from '../../src/dataplane/warmup';
import { allocNative } from '../../src/os/ffi/mem';
import { createMac1Check } from '../../src/crypto/mac1';

const MTU = 1420;
const CAP = 16;
const IP_A = 0x64400001; // 100.64.0.1
const IP_B = 0x64400002;
const UL_A = 0xc6120101; // 198.18.1.1
const UL_B = 0xc6120201; // 198.18.2.1
const PORT = 51820;

function ipv4(src: number, dst: number, payload: number): Buffer {
  const p = Buffer.alloc(20 + payload);
  p[0] = 0x45;
  p.writeUInt16BE(p.length, 2);
  p[8] = 64;
  p[9] = 17;
  p.writeUInt32BE(src, 12);
  p.writeUInt32BE(dst, 16);
  for (let i = 20; i < p.length; i++) p[i] = (i * 7) & 255;
  return p;
}

const blocks: WarmBlock[] = [];
afterEach(() => {
  for (const b of blocks.splice(0)) b.free();
});
function native(bytes: number): WarmBlock {
  const m = allocNative(bytes);
  blocks.push(m);
  return m;
}

/** A live host: a Duplex over a FakeTun and a FakeUdp on `net`, batches in native memory as the worker's. */
function host(aead: Aead, net: FakeUdpNetwork, clock: FakeClock, ul: number) {
  const slot = slotSizeFor(MTU);
  const batch = (n: number) => {
    const m = native(slot * n);
    return new PacketBatch(m.buf, slot, n, m.ptr);
  };
  const tun = new FakeTun();
  const udp: FakeUdp = net.bind(ul, PORT);
  const stats = new DataplaneStats();
  const d = new Duplex(
    aead,
    stats,
    clock,
    { out: { batch: batch(CAP), tun, udp }, in: { batch: batch(CAP), udp, tun }, ctrl: { batch: batch(CTRL_SLOTS), udp } },
    {},
    { mtu: MTU, overlay6: null },
  );
  return { tun, udp, stats, d };
}

function peer(slot: number, overlayIp: number, ul: number, txKey: Uint8Array, rxKey: Uint8Array, txIndex: number, rxIndex: number): WorkerPeer {
  return {
    slot,
    name: `p${slot}`,
    overlayIp,
    allowed: [],
    endpointIp: ul,
    endpointPort: PORT,
    sessions: [{ keyId: 7, txKey: Uint8Array.from(txKey), rxKey: Uint8Array.from(rxKey), txIndex, rxIndex, confirmed: true, sendUntil: Infinity }],
  };
}

/** Two live hosts A and B with one session each way, and one packet A -> B already through. */
function livePair() {
  const aead = FfiAead.tryCreate();
  if (!aead) throw new Error('the ffi AEAD did not load (libsodium missing?)');
  const net = new FakeUdpNetwork();
  net.capture = true;
  const clock = new FakeClock();
  const a = host(aead, net, clock, UL_A);
  const b = host(aead, net, clock, UL_B);
  const kAB = randomBytes(32);
  const kBA = randomBytes(32);
  a.d.setPeers([peer(3, IP_B, UL_B, kAB, kBA, 20, 10)]);
  b.d.setPeers([peer(5, IP_A, UL_A, kBA, kAB, 10, 20)]);
  const send = (size: number): Buffer[] => {
    a.tun.inject(ipv4(IP_A, IP_B, size));
    a.d.fromTun();
    b.d.fromUdp();
    return b.tun.take();
  };
  return { aead, net, a, b, send };
}

function options(aead: Aead, over: Partial<WarmupOptions> = {}): WarmupOptions {
  return { aead, mtu: MTU, batch: CAP, relay: false, overlay6: null, alloc: native, sink: () => new FakeTun(), rounds: 20, ...over };
}

describe('warm-up of the packet stages', () => {
  it('moves packets through the stages and leaves no trace in a live pair sharing its AEAD', () => {
    const { aead, net, a, b, send } = livePair();
    expect(send(64)).toHaveLength(1);
    const statsA = Buffer.from(new Uint8Array(a.stats.sab)).toString('hex');
    const statsB = Buffer.from(new Uint8Array(b.stats.sab)).toString('hex');
    const counterA = a.d.sessions.peer(3)!.send!.tx.used;
    const captured = net.captured.length;

    const r = warmUp(options(aead, { rounds: 30 }));
    expect(r.error).toBeUndefined();
    expect(r.ok).toBe(true);
    // 30 rounds of a lone packet each way, a batch of 8 A -> B and one more B -> A
    expect(r.delivered).toBe(30 * 11);

    // nothing of the live pair moved: stats, send counter, TUNs, the network
    expect(Buffer.from(new Uint8Array(a.stats.sab)).toString('hex')).toBe(statsA);
    expect(Buffer.from(new Uint8Array(b.stats.sab)).toString('hex')).toBe(statsB);
    expect(a.d.sessions.peer(3)!.send!.tx.used).toBe(counterA);
    expect(a.tun.take()).toHaveLength(0);
    expect(b.tun.take()).toHaveLength(0);
    expect(net.captured.length).toBe(captured);
    expect(a.udp.inbox.length + b.udp.inbox.length).toBe(0);

    // and the live pair goes on where it was: the next packet carries the next counter, its keys
    // still load, and B's replay window accepts it
    const p = send(1000);
    expect(p).toHaveLength(1);
    expect(p[0]!.equals(ipv4(IP_A, IP_B, 1000))).toBe(true);
    expect(readCounter(net.captured.at(-1)!.data, 0)).toBe(counterA);
    expect(b.stats.dropCounts()).toEqual(Object.fromEntries(Object.keys(b.stats.dropCounts()).map((k) => [k, 0])));
  });

  it('carries IPv6 overlay packets too when the network has an overlay prefix', () => {
    const aead = FfiAead.tryCreate()!;
    const r = warmUp(options(aead, { rounds: 8, overlay6: { hi: 0xfd123456, mid: 0x789a } }));
    expect(r.error).toBeUndefined();
    expect(r.delivered).toBe(8 * 11);
  });

  it('signs its handshake messages with its own mac1 check, so they pass it (a drop would fail the warm-up)', async () => {
    const aead = FfiAead.tryCreate()!;
    const mac1 = await createMac1Check(randomBytes(32), 'ffi');
    let checked = 0;
    let passed = 0;
    const counting = {
      backend: mac1.backend,
      sign: (b: Uint8Array, off: number, len: number) => mac1.sign(b, off, len),
      check: (b: Uint8Array, off: number, len: number) => (checked++, mac1.check(b, off, len) && ++passed > 0),
    };
    const r = warmUp(options(aead, { rounds: 100, mac1: counting }));
    expect(r.error).toBeUndefined();
    // a handshake each way every HANDSHAKE_EVERY (48) rounds: rounds 1, 49 and 97
    expect(checked).toBe(6);
    expect(passed).toBe(6);
    // and one that cannot sign: its messages fail the check, dropped and reported
    const refusing = warmUp(options(aead, { rounds: 100, mac1: { ...counting, sign: () => true } }));
    expect(refusing.ok).toBe(false);
    expect(refusing.error).toMatch(/handshakeBadMac1 6/);
  });

  it('reports a failure instead of throwing, frees what it allocated, and the live pair still forwards', () => {
    const { aead, send } = livePair();
    let allocs = 0;
    let frees = 0;
    const counting = (bytes: number): WarmBlock => {
      const m = allocNative(bytes);
      allocs++;
      return { buf: m.buf, ptr: m.ptr, free: () => (frees++, m.free()) };
    };
    let sinks = 0;
    const r = warmUp(
      options(aead, {
        alloc: counting,
        sink: () => {
          if (++sinks === 2) throw new Error('no TUN writer for you');
          return new FakeTun();
        },
      }),
    );
    expect(r).toMatchObject({ ok: false, delivered: 0, error: 'no TUN writer for you' });
    expect(allocs).toBeGreaterThan(0);
    expect(frees).toBe(allocs);

    // a TUN writer that refuses everything: nothing delivered is a failure too, and it says so
    const refusing = warmUp(
      options(aead, {
        sink: () => {
          const t = new FakeTun();
          t.refuse = () => true;
          return t;
        },
      }),
    );
    expect(refusing.ok).toBe(false);
    expect(refusing.error).toMatch(/^the warm-up dropped \d+ packets \(tunWrite \d+\)$/);
    expect(send(200)).toHaveLength(1);
  });
});
