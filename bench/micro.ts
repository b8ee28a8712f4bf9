/**
 * Micro-benchmarks without the kernel, on this thread:
 *
 *   seal    createAead().sealMany over a batch of 64 slots in place (header as associated data),
 *           as Outbound's stage 4 does it: one native call per batch with the batch helper
 *           (native/cladnet_fast.c), else one seal() per packet
 *   open    createAead().openMany over a batch of 64 distinct ciphertexts, as Inbound's stage 4;
 *           each round restores the ciphertexts first, and that copy (measured alone as
 *           `restore`) is subtracted
 *   stages  the full data path between two peers in memory: Outbound.process (classify, route,
 *           number, seal, address) over a batch of 64 packets, then Inbound.process (header, peer,
 *           replay, open, commit, roam, deliver) over the same slots into a TUN sink. Includes
 *           refilling the slots with plaintext each batch (what the TUN read would do). Before it is
 *           timed, one pass goes into a FakeTun (src/dataplane/fakes.ts) and every packet must come
 *           out intact; the timed passes use a counting sink, since the fakes copy each packet.
 *
 * Reported in ns per packet: the fastest of several timed trials after a warm-up (other load on the
 * machine only ever adds time), the trials of all cases interleaved so that it falls on all alike.
 */
import { randomBytes } from 'node:crypto';
import { type AeadBackend, createAead, type Aead } from '../src/crypto/aead';
import { PacketBatch, SendList, slotSizeFor } from '../src/dataplane/batch';
import { FakeTun } from '../src/dataplane/fakes';
import { Inbound } from '../src/dataplane/inbound';
import type { TunIo } from '../src/dataplane/io';
import { Outbound } from '../src/dataplane/outbound';
import { Sessions } from '../src/dataplane/sessions';
import { systemClock, type WorkerPeer } from '../src/dataplane/peer';
import { DataplaneStats } from '../src/dataplane/stats';
import { HEADER_LEN, TAG_LEN } from '../src/dataplane/wire';
import { allocNative, type NativeBlock } from '../src/os/ffi/mem';
import { sig } from './stats';

export const MICRO_SIZES = [64, 1400] as const;
export const BATCH = 64;
const MTU = 1420;
const TRIALS = 7;

export interface MicroResult {
  readonly aead: string;
  readonly batch: number;
  /** How each number was reduced from its trials. */
  readonly statistic: string;
  /** ns per packet by packet size ("64", "1400"); null when that part failed. */
  readonly sealNs: Record<string, number | null>;
  readonly openNs: Record<string, number | null>;
  readonly stagesNs: Record<string, number | null>;
  /** stages - seal - open: what the stage code costs beyond the cipher. */
  readonly stageOverheadNs: Record<string, number | null>;
  readonly restoreNs: Record<string, number | null>;
  readonly errors: string[];
}

export interface Case {
  readonly fn: () => void;
  /** Packets handled by one call of fn. */
  readonly perCall: number;
  calls: number;
  readonly samples: number[];
}

function newCase(fn: () => void, perCall: number): Case {
  return { fn, perCall, calls: 1, samples: [] };
}

/**
 * Times every case: a warm-up (lets V8 tier the wasm and JS up), a calibration to about `trialMs`
 * per trial, then `trials` rounds that run each case once in turn, so that noise from other load
 * on the machine falls on all cases alike. Fills each case's samples (ns per packet).
 */
function timeCases(cases: readonly Case[], trialMs = 80, trials = TRIALS): void {
  for (const c of cases) {
    const warmEnd = performance.now() + 150;
    while (performance.now() < warmEnd) c.fn();
    for (c.calls = 1; ; c.calls *= 2) {
      const t0 = performance.now();
      for (let i = 0; i < c.calls; i++) c.fn();
      const ms = performance.now() - t0;
      if (ms >= 10) {
        c.calls = Math.max(1, Math.round((c.calls * trialMs) / ms));
        break;
      }
    }
  }
  for (let t = 0; t < trials; t++) {
    for (const c of cases) {
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < c.calls; i++) c.fn();
      c.samples.push(Number(process.hrtime.bigint() - t0) / (c.calls * c.perCall));
    }
  }
}

function best(samples: readonly number[]): number {
  return Math.min(...samples);
}

function ipv4Packet(size: number, src: number, dst: number): Buffer {
  const p = randomBytes(size);
  p[0] = 0x45;
  p[1] = 0;
  p.writeUInt16BE(size, 2);
  p.writeUInt32BE(0, 4);
  p[8] = 64;
  p[9] = 17;
  p.writeUInt16BE(0, 10);
  p.writeUInt32BE(src, 12);
  p.writeUInt32BE(dst, 16);
  return p;
}

/** A case set for one packet size: each builds its state up front and checks itself afterwards. */
interface SizeCases {
  readonly seal: Case;
  readonly open: Case;
  readonly restore: Case;
  readonly stages: Case;
  /** Throws when a case did not do what it was timed for (failed opens, lost packets). */
  check(): void;
  close(): void;
}

/** Native memory for the cases, as the worker's batches are (the AEAD gets its address); freed by close(). */
const blocks: NativeBlock[] = [];
function native(size: number): NativeBlock {
  const b = allocNative(size);
  blocks.push(b);
  return b;
}

function sealCase(aead: Aead, key: number, size: number): Case {
  // One batch sealed over and over (the cipher does not care what the bytes are).
  const slot = HEADER_LEN + size + TAG_LEN;
  const mem = native(slot * BATCH);
  const addr = Number(mem.ptr);
  randomBytes(slot * BATCH).copy(mem.buf);
  const jobs = aead.jobs(BATCH);
  let counter = 0;
  return newCase(() => {
    jobs.count = 0;
    for (let i = 0; i < BATCH; i++) jobs.add(key, counter++, i * slot, HEADER_LEN, i * slot + HEADER_LEN, size);
    aead.sealMany(jobs, mem.buf, addr);
  }, BATCH);
}

/** A batch of distinct ciphertexts, restored (one memcpy) before each pass; `restore` times that copy alone. */
function openCases(aead: Aead, key: number, size: number): { open: Case; restore: Case; bad: () => number } {
  const slot = HEADER_LEN + size + TAG_LEN;
  const pristine = Buffer.alloc(slot * BATCH);
  for (let i = 0; i < BATCH; i++) {
    const off = i * slot;
    pristine.writeUInt32LE(i, off + 8);
    randomBytes(size).copy(pristine, off + HEADER_LEN);
    aead.seal(key, i, pristine, off, HEADER_LEN, off + HEADER_LEN, size);
  }
  const mem = native(pristine.length);
  const work = mem.buf;
  const addr = Number(mem.ptr);
  const jobs = aead.jobs(BATCH);
  let bad = 0;
  const open = newCase(() => {
    pristine.copy(work);
    jobs.count = 0;
    for (let i = 0; i < BATCH; i++) jobs.add(key, i, i * slot, HEADER_LEN, i * slot + HEADER_LEN, size + TAG_LEN);
    aead.openMany(jobs, work, addr);
    for (let j = 0; j < BATCH; j++) if (jobs.result(j) !== size) bad++;
  }, BATCH);
  const restore = newCase(() => void pristine.copy(work), BATCH);
  return { open, restore, bad: () => bad };
}

function peer(o: Pick<WorkerPeer, 'slot' | 'name' | 'overlayIp'>, k: { txKey: Uint8Array; rxKey: Uint8Array; txIndex: number; rxIndex: number }): WorkerPeer {
  return { allowed: [], endpointIp: 0xc6120202, endpointPort: 51820, sessions: [{ keyId: 1, confirmed: true, sendUntil: Infinity, ...k }], ...o };
}

/**
 * Host A's Outbound and host B's Inbound, in memory, each the other's only peer with one
 * confirmed session per direction; both see the same underlay endpoint, so nothing roams.
 * (test/unit/stages-batch.test.ts builds on it too.)
 */
export function stagePair(aead: Aead): { stats: DataplaneStats; out: Outbound; inb: Inbound; ipA: number; ipB: number } {
  const ipA = 0x64400001; // 100.64.0.1
  const ipB = 0x64400002;
  const kAB = randomBytes(32);
  const kBA = randomBytes(32);
  const stats = new DataplaneStats();
  const aSessions = new Sessions(aead, systemClock);
  const bSessions = new Sessions(aead, systemClock);
  const out = new Outbound(aead, stats, systemClock, aSessions);
  const inb = new Inbound(aead, stats, systemClock, bSessions, { ping: () => {}, roam: () => {}, handshake: () => {}, confirmed: () => {} });
  const peersOfA = [peer({ slot: 0, name: 'b', overlayIp: ipB }, { txKey: kAB, rxKey: kBA, txIndex: 2, rxIndex: 1 })];
  const peersOfB = [peer({ slot: 1, name: 'a', overlayIp: ipA }, { txKey: kBA, rxKey: kAB, txIndex: 1, rxIndex: 2 })];
  aSessions.set(peersOfA);
  out.setPeers(peersOfA);
  bSessions.set(peersOfB);
  inb.setPeers(peersOfB);
  return { stats, out, inb, ipA, ipB };
}

/**
 * Outbound on host A -> Inbound on host B, in memory, over the same batch of slots. `stages.fn`
 * moves one batch of BATCH packets; close() also frees the case's native memory.
 */
export function stagesCase(aead: Aead, size: number): { stages: Case; check(): void; close(): void } {
  const { stats, out, inb, ipA, ipB } = stagePair(aead);

  const slotSize = slotSizeFor(MTU);
  const mem = native(slotSize * BATCH);
  const batch = new PacketBatch(mem.buf, slotSize, BATCH, mem.ptr);
  const list = new SendList(BATCH);
  const pkt = ipv4Packet(size, ipA, ipB);
  let delivered = 0;
  const sink: TunIo = { readBatch: () => 0, writeSlot: () => (delivered++, true), flush: () => 0 };
  let short = 0;
  const pass = (tun: TunIo) => {
    for (let i = 0; i < BATCH; i++) {
      pkt.copy(batch.buf, batch.offset(i) + HEADER_LEN);
      batch.len[i] = size;
    }
    out.process(batch, BATCH, list);
    inb.process(batch, list.count, tun);
  };
  // One pass through FakeTun first: every packet must come out byte for byte as it went in.
  // (The fakes copy each packet, so the timed passes use the counting sink instead.)
  const fake = new FakeTun();
  pass(fake);
  const got = fake.take();
  const intact = got.length === BATCH && got.every((p) => p.equals(pkt));
  const stages = newCase(() => {
    delivered = 0;
    pass(sink);
    if (delivered !== BATCH) short++;
  }, BATCH);
  return {
    stages,
    check() {
      const drops = () => JSON.stringify(Object.fromEntries(Object.entries(stats.dropCounts()).filter(([, n]) => n > 0)));
      if (!intact) throw new Error(`stage path: ${got.length} of ${BATCH} packets came out of FakeTun, ${got.filter((p) => p.equals(pkt)).length} intact; drops ${drops()}`);
      if (short > 0) throw new Error(`stage path delivered fewer packets than it was given in ${short} batches; drops ${drops()}`);
    },
    close() {
      out.setPeers([]);
      inb.close();
      const k = blocks.indexOf(mem);
      if (k >= 0) blocks.splice(k, 1);
      mem.free();
    },
  };
}

function sizeCases(aead: Aead, size: number): SizeCases {
  const key = aead.loadKey(randomBytes(32));
  const seal = sealCase(aead, key, size);
  const o = openCases(aead, key, size);
  const st = stagesCase(aead, size);
  return {
    seal,
    open: o.open,
    restore: o.restore,
    stages: st.stages,
    check() {
      if (o.bad() > 0) throw new Error(`AEAD open failed on ${o.bad()} packets`);
      st.check();
    },
    close() {
      aead.dropKey(key);
      st.close();
    },
  };
}

export async function runMicro(log: (msg: string) => void, backend: AeadBackend = 'auto'): Promise<MicroResult> {
  const aead = await createAead(backend);
  const r: MicroResult = { aead: aead.name, batch: BATCH, statistic: `fastest of ${TRIALS} interleaved trials`, sealNs: {}, openNs: {}, stagesNs: {}, stageOverheadNs: {}, restoreNs: {}, errors: [] };
  const bySize = MICRO_SIZES.map((size) => ({ size, c: sizeCases(aead, size) }));
  try {
    timeCases(bySize.flatMap(({ c }) => [c.seal, c.open, c.restore, c.stages]));
    for (const { size, c } of bySize) {
      const k = String(size);
      r.sealNs[k] = r.openNs[k] = r.stagesNs[k] = r.stageOverheadNs[k] = r.restoreNs[k] = null;
      try {
        c.check();
      } catch (e) {
        r.errors.push(`${size} B: ${(e as Error).message}`);
        continue;
      }
      const seal = best(c.seal.samples);
      const restore = best(c.restore.samples);
      const open = best(c.open.samples) - restore;
      const stages = best(c.stages.samples);
      r.sealNs[k] = sig(seal, 3);
      r.openNs[k] = sig(open, 3);
      r.restoreNs[k] = sig(restore, 3);
      r.stagesNs[k] = sig(stages, 3);
      r.stageOverheadNs[k] = sig(stages - seal - open, 3);
      log(`  ${size} B: seal ${seal.toFixed(0)} ns, open ${open.toFixed(0)} ns, Outbound->Inbound ${stages.toFixed(0)} ns per packet`);
    }
  } finally {
    for (const { c } of bySize) c.close();
    for (const b of blocks.splice(0)) b.free();
  }
  return r;
}
