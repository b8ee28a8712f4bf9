/**
 * The stage path with stage 4 done per batch (Aead.sealMany/openMany, issue 14): Outbound on host
 * A -> Inbound on host B over one batch of slots in native memory, as the worker's are, with the
 * ffi AEAD and its batch helper (native/cladnet_fast.c, built here), without it, and with the
 * WASM backend. A bad datagram in the middle of a batch is dropped and counted alone.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Aead, FfiAead, WasmAead } from '../../src/crypto/aead';
import { PacketBatch, SendList, slotSizeFor } from '../../src/dataplane/batch';
import { FakeTun } from '../../src/dataplane/fakes';
import { P_RX_PKTS, P_TX_PKTS, PEER_STRIDE } from '../../src/dataplane/stats';
import { HEADER_LEN } from '../../src/dataplane/wire';
import { allocNative, type NativeBlock } from '../../src/os/ffi/mem';
import { useBuiltFastLib } from '../helpers/fast-lib';
import { stagePair } from '../../bench/micro';

const MTU = 1420;
const BATCH = 64;
const IP_A = 0x64400001; // 100.64.0.1
const IP_B = 0x64400002;

let built: ReturnType<typeof useBuiltFastLib>;
beforeAll(() => {
  built = useBuiltFastLib();
});
afterAll(() => built.restore());

function ipv4(size: number, seed: number): Buffer {
  const p = Buffer.alloc(size);
  for (let i = 20; i < size; i++) p[i] = (i * 31 + seed) & 255;
  p[0] = 0x45;
  p.writeUInt16BE(size, 2);
  p[8] = 64;
  p[9] = 17;
  p.writeUInt32BE(IP_A, 12);
  p.writeUInt32BE(IP_B, 16);
  return p;
}

/** A -> B over one native batch; `send` fills slots, runs Outbound, lets the test tamper, runs Inbound. */
function pair(aead: Aead) {
  const { stats, out, inb } = stagePair(aead);
  const slotSize = slotSizeFor(MTU);
  const mem: NativeBlock = allocNative(slotSize * BATCH);
  const batch = new PacketBatch(mem.buf, slotSize, BATCH, mem.ptr);
  const list = new SendList(BATCH);
  const tun = new FakeTun();
  return {
    stats,
    batch,
    send(packets: Buffer[], tamper: (b: PacketBatch, list: SendList) => void = () => {}): Buffer[] {
      for (const [i, p] of packets.entries()) {
        p.copy(batch.buf, batch.offset(i) + HEADER_LEN);
        batch.len[i] = p.length;
      }
      out.process(batch, packets.length, list);
      expect(list.count).toBe(packets.length);
      // the send list in slot order, as the receiver gets it: datagram i in slot i
      for (let k = 0; k < list.count; k++) expect(list.idx[k]).toBe(k);
      tamper(batch, list);
      inb.process(batch, list.count, tun);
      return tun.take();
    },
    close() {
      out.close();
      inb.close();
      mem.free();
    },
  };
}

const backends: { label: string; make: () => Promise<Aead>; name: RegExp }[] = [
  { label: 'ffi with the batch helper', make: async () => FfiAead.tryCreate()!, name: /\+batch\+direct$/ },
  { label: 'ffi with the batch helper through EVP', make: async () => FfiAead.tryCreate(true, true, null, false)!, name: /\+batch$/ },
  { label: 'ffi one call per packet', make: async () => FfiAead.tryCreate(true, false)!, name: /^libsodium\+openssl-ffi$/ },
  { label: 'wasm', make: () => WasmAead.create(), name: /^libsodium-wasm$/ },
];

describe.each(backends)('stage path over a native batch: $label', ({ make, name }) => {
  it('delivers a full batch of mixed sizes byte for byte, counting every packet', async () => {
    const aead = await make();
    expect(aead.name).toMatch(name);
    const p = pair(aead);
    try {
      const sizes = Array.from({ length: BATCH }, (_, i) => [20, 64, 639, 640, 1400, MTU][i % 6]! + (i % 3));
      const packets = sizes.map((n, i) => ipv4(Math.min(n, MTU), i));
      for (let round = 0; round < 3; round++) {
        const got = p.send(packets);
        expect(got.length).toBe(BATCH);
        for (const [i, g] of got.entries()) expect(g.equals(packets[i]!), `packet ${i}`).toBe(true);
      }
      expect(p.stats.peers[0 * PEER_STRIDE + P_TX_PKTS]).toBe(3 * BATCH);
      expect(p.stats.peers[1 * PEER_STRIDE + P_RX_PKTS]).toBe(3 * BATCH);
      expect(Object.values(p.stats.dropCounts()).every((n) => n === 0)).toBe(true);
    } finally {
      p.close();
    }
  });

  it('drops a forged datagram (auth) and a replayed one (replay) in the middle of a batch and delivers the rest', async () => {
    const aead = await make();
    const p = pair(aead);
    try {
      const packets = Array.from({ length: 12 }, (_, i) => ipv4(i % 2 === 0 ? 100 : 1400, i));
      const got = p.send(packets, (b) => {
        b.buf[b.offset(4) + HEADER_LEN + 30]! ^= 0x10; // ciphertext of slot 4
        b.buf[b.offset(5) + b.len[5]! - 1]! ^= 0x01; // tag of slot 5 (1400 B: OpenSSL in the helper)
        b.buf.copy(b.buf, b.offset(9), b.offset(2), b.offset(2) + b.len[2]!); // slot 9 replays slot 2
        b.len[9] = b.len[2]!;
      });
      const expected = packets.filter((_, i) => i !== 4 && i !== 5 && i !== 9);
      expect(got.length).toBe(expected.length);
      for (const [k, g] of got.entries()) expect(g.equals(expected[k]!)).toBe(true);
      const drops = p.stats.dropCounts();
      expect(drops.auth).toBe(2);
      expect(drops.replay).toBe(1);
      // the session goes on: the next batch arrives whole
      expect(p.send(packets).length).toBe(packets.length);
    } finally {
      p.close();
    }
  });
});
