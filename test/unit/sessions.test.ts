import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { createAead, type Aead } from '../../src/crypto/aead';
import { PacketBatch, slotSizeFor } from '../../src/dataplane/batch';
import { Duplex } from '../../src/dataplane/duplex';
import { FakeClock, FakeTun, FakeUdpNetwork, type Datagram } from '../../src/dataplane/fakes';
import type { WorkerPeer, WorkerSession } from '../../src/dataplane/peer';
import { DataplaneStats, DROP } from '../../src/dataplane/stats';
import { HEADER_LEN, readCounter, readReceiverIndex, TAG_LEN, writeHeader } from '../../src/dataplane/wire';
import { rng } from '../helpers/rng';

/**
 * The worker alone chooses the send session and owns its counters (src/dataplane/sessions.ts).
 * B is a real Duplex over fakes; A, its one peer, is played here: it seals datagrams for B with
 * the keys the "control thread" of B gave out, and reads what B sends. Every datagram B sends is
 * checked: it opens under the key its receiver index names, and no (key, counter) pair repeats.
 */
const MTU = 1420;
const SLOT = slotSizeFor(MTU);
const B_IP = 0xc6120102; // 198.18.1.2
const A_IP = 0xc6120202; // 198.18.2.2
const PORT = 51820;
const A_OVERLAY = 0x64400001; // 100.64.0.1
const B_OVERLAY = 0x64400002;
const A_SLOT = 3;

function batchOf(n: number): PacketBatch {
  return new PacketBatch(Buffer.alloc(SLOT * n), SLOT, n);
}

function ipv4(src: number, dst: number, seq: number): Buffer {
  const p = Buffer.alloc(40);
  p[0] = 0x45;
  p.writeUInt16BE(40, 2);
  p.writeUInt32BE(seq >>> 0, 4);
  p[9] = 17;
  p.writeUInt32BE(src >>> 0, 12);
  p.writeUInt32BE(dst >>> 0, 16);
  return p;
}

/**
 * A session as the control thread of B holds it: exactly what a peer set carries. B seals with
 * txKey under txIndex (A's index); A seals with rxKey under rxIndex (B's).
 */
type Ctl = WorkerSession;

class Bed {
  readonly clock = new FakeClock();
  readonly net = new FakeUdpNetwork();
  readonly tun = new FakeTun();
  readonly stats = new DataplaneStats();
  readonly b: Duplex;
  readonly confirmed: number[] = [];
  /** Every (receiver index, counter) B has sent, and which key the index belongs to. */
  readonly seen = new Set<string>();
  readonly keyOfIndex = new Map<number, Uint8Array>();
  private readonly aAead: Aead;
  private readonly aCounters = new Map<number, number>();
  private readonly aInbox: Datagram[] = [];
  private seq = 0;
  sent = 0;

  private constructor(bAead: Aead, aAead: Aead) {
    this.aAead = aAead;
    const udp = this.net.bind(B_IP, PORT);
    const aSock = this.net.bind(A_IP, PORT);
    this.net.fate = (d) => {
      if (d.dstIp === A_IP) this.aInbox.push(d);
      return 'drop';
    };
    void aSock;
    this.b = new Duplex(
      bAead,
      this.stats,
      this.clock,
      { out: { batch: batchOf(8), tun: this.tun, udp }, in: { batch: batchOf(8), udp, tun: this.tun }, ctrl: { batch: batchOf(8), udp } },
      { confirmed: (_slot, keyId) => this.confirmed.push(keyId) },
      { mtu: MTU },
    );
  }

  static async create(): Promise<Bed> {
    return new Bed(await createAead(), await createAead());
  }

  push(sessions: readonly Ctl[]): void {
    const peer: WorkerPeer = {
      slot: A_SLOT,
      name: 'a',
      overlayIp: A_OVERLAY,
      allowed: [],
      endpointIp: A_IP,
      endpointPort: PORT,
      // a copy, as postMessage makes: the worker may not keep or change the control thread's arrays
      sessions: sessions.map((s): WorkerSession => structuredClone({ ...s })),
    };
    this.b.setPeers(sessions.length === 0 ? [] : [peer]);
  }

  /** A sends one packet on session s (sealed for B); B receives it. Returns B's drops before and after. */
  aUses(s: Ctl): void {
    const counter = this.aCounters.get(s.keyId) ?? 0;
    this.aCounters.set(s.keyId, counter + 1);
    const plain = ipv4(A_OVERLAY, B_OVERLAY, 0);
    const d = Buffer.alloc(HEADER_LEN + plain.length + TAG_LEN);
    writeHeader(d, 0, s.rxIndex, counter);
    plain.copy(d, HEADER_LEN);
    const h = this.aAead.loadKey(s.rxKey);
    this.aAead.seal(h, counter, d, 0, HEADER_LEN, HEADER_LEN, plain.length);
    this.aAead.dropKey(h);
    this.net.deliver({ srcIp: A_IP, srcPort: PORT, dstIp: B_IP, dstPort: PORT, data: d });
    this.b.fromUdp();
    this.tun.take();
  }

  /**
   * B sends one packet to A. Returns what it went out under ({index, counter}), or null when B
   * dropped it. Every datagram B sent since the last call (timer pings too) is checked: it must
   * open under the key its index names, and no (key, counter) pair may repeat.
   */
  bSends(): { index: number; counter: number } | null {
    this.checkSent();
    this.tun.inject(ipv4(B_OVERLAY, A_OVERLAY, ++this.seq));
    this.b.fromTun();
    return this.checkSent().at(-1) ?? null;
  }

  checkSent(): { index: number; counter: number }[] {
    const out: { index: number; counter: number }[] = [];
    for (const d of this.aInbox.splice(0)) {
      const index = readReceiverIndex(d.data, 0);
      const counter = readCounter(d.data, 0);
      const key = this.keyOfIndex.get(index);
      if (!key) throw new Error(`B sealed under index ${index}, which no session has`);
      const h = this.aAead.loadKey(key);
      const buf = Buffer.from(d.data);
      const plen = this.aAead.open(h, counter, buf, 0, HEADER_LEN, HEADER_LEN, buf.length - HEADER_LEN);
      this.aAead.dropKey(h);
      if (plen < 0) throw new Error(`datagram under index ${index} does not open with that index's key`);
      const id = `${Buffer.from(key).toString('hex')}:${counter}`;
      if (this.seen.has(id)) throw new Error(`nonce reuse: key of index ${index}, counter ${counter} sealed twice`);
      this.seen.add(id);
      this.sent++;
      out.push({ index, counter });
    }
    return out;
  }
}

let nextKeyId = 0;
let nextIndex = 1000;
function session(confirmed: boolean, sendUntil = Infinity): Ctl {
  return {
    keyId: ++nextKeyId,
    txKey: new Uint8Array(randomBytes(32)),
    rxKey: new Uint8Array(randomBytes(32)),
    txIndex: ++nextIndex,
    rxIndex: ++nextIndex,
    confirmed,
    sendUntil,
  };
}

function known(bed: Bed, ...list: Ctl[]): void {
  for (const s of list) bed.keyOfIndex.set(s.txIndex, s.txKey);
}

describe('data-plane sessions: the worker chooses the send session and owns the counters', () => {
  it('the responder-rekey race of issue 10 (push Y, send, confirm X, send, stale push, send, push X, send) reuses no nonce', async () => {
    const bed = await Bed.create();
    const y = session(true); // the session B sends on
    const x = session(false); // one B answered; A has not used it yet
    known(bed, y, x);
    bed.push([y, x]);
    expect(bed.bSends()).toEqual({ index: y.txIndex, counter: 0 });
    bed.aUses(x); // the worker sees X confirmed and switches at once
    expect(bed.confirmed).toEqual([x.keyId]);
    expect(bed.bSends()).toEqual({ index: x.txIndex, counter: 0 });
    bed.push([y, x]); // built before the control thread heard of the confirmation
    expect(bed.bSends()).toEqual({ index: x.txIndex, counter: 1 });
    bed.push([y, { ...x, confirmed: true }]);
    expect(bed.bSends()).toEqual({ index: x.txIndex, counter: 2 });
    bed.push([y]); // X erased; a late set naming X again must not bring it back at counter 0
    expect(bed.bSends()).toEqual({ index: y.txIndex, counter: 1 });
    bed.push([y, { ...x, confirmed: true }]);
    expect(bed.b.sessions.refused).toBe(1);
    expect(bed.bSends()).toEqual({ index: y.txIndex, counter: 2 });
  });

  it('a session erased from the data plane is refused on receive too: its replay window died with it', async () => {
    const bed = await Bed.create();
    const y = session(true);
    known(bed, y);
    bed.push([y]);
    bed.aUses(y);
    expect(bed.tun.take()).toEqual([]); // (aUses took it: delivered)
    bed.push([]);
    bed.push([y]);
    const before = bed.stats.drops[DROP.unknownPeer]!;
    bed.aUses(y);
    expect(bed.stats.drops[DROP.unknownPeer]! - before).toBe(1);
  });

  it('sends on nothing until a session is confirmed; an unconfirmed newer one does not displace a confirmed one', async () => {
    const bed = await Bed.create();
    const x = session(false);
    known(bed, x);
    bed.push([x]);
    expect(bed.bSends()).toBeNull();
    expect(bed.stats.drops[DROP.noSession]).toBe(1);
    bed.aUses(x);
    expect(bed.bSends()).toEqual({ index: x.txIndex, counter: 0 });
    const junk = session(false); // e.g. a replayed initiation answered
    known(bed, junk);
    bed.push([{ ...x, confirmed: true }, junk]);
    expect(bed.bSends()).toEqual({ index: x.txIndex, counter: 1 });
  });

  it("a new session we initiated is used at the next timer run (a ping), so the responder can confirm its side at once", async () => {
    const bed = await Bed.create();
    const y = session(true);
    known(bed, y);
    bed.push([y]);
    bed.bSends();
    bed.b.timers(); // the first ping of the pair
    bed.clock.advance(100);
    bed.b.timers(); // no ping due yet (the next one is 500 ms after the first)
    expect(bed.checkSent().map((d) => d.index)).toEqual([y.txIndex]);
    const z = session(true); // a rekey we initiated completed
    known(bed, z);
    bed.push([y, z]);
    bed.clock.advance(50);
    bed.b.timers();
    expect(bed.checkSent()).toEqual([{ index: z.txIndex, counter: 0 }]);
    bed.clock.advance(50);
    bed.b.timers();
    expect(bed.checkSent()).toEqual([]);
  });

  it('moves sending off a session at its deadline, to the newest one still sendable', async () => {
    const bed = await Bed.create();
    const now = bed.clock.now();
    const old = session(true, now + 60_000);
    const cur = session(true, now + 1_000);
    known(bed, old, cur);
    bed.push([old, cur]);
    expect(bed.bSends()!.index).toBe(cur.txIndex);
    bed.clock.advance(1_000);
    bed.b.timers(); // (its ping goes out on the old session already)
    expect(bed.checkSent().map((d) => d.index)).toEqual([old.txIndex]);
    expect(bed.bSends()!.index).toBe(old.txIndex);
    bed.clock.advance(60_000);
    bed.b.timers();
    expect(bed.bSends()).toBeNull();
    expect(bed.stats.drops[DROP.noSession]).toBe(1);
  });

  it('fuzz: 100,000 random steps of pushes (current and stale), rekeys, confirmations, expiries and sends never seal one (key, counter) twice', async () => {
    const bed = await Bed.create();
    const rand = rng(0x5e551075);
    const r = { int: (n: number) => Math.floor(rand() * n) };
    /** The control thread's sessions, newest last. */
    let ctl: Ctl[] = [];
    /** Peer sets the control thread pushed before (a stale one may still be in flight). */
    const history: Ctl[][] = [];
    /** Confirmations the worker reported that the control thread has not taken in yet. */
    let lagging: number[] = [];
    let pushes = 0;
    let stale = 0;
    let confirms = 0;
    let noSession = 0;
    const snapshot = () => ctl.map((s) => ({ ...s }));
    const push = () => {
      bed.push(ctl);
      history.push(snapshot());
      if (history.length > 16) history.shift();
      pushes++;
    };
    const STEPS = 100_000;
    for (let step = 0; step < STEPS; step++) {
      const op = r.int(100);
      if (op < 6) {
        // 1. a handshake completes: we initiated (confirmed) or we answered (unconfirmed)
        const s = session(r.int(2) === 0, bed.clock.now() + 1_000 + r.int(20_000));
        known(bed, s);
        ctl.push(s);
        if (ctl.length > 4) ctl.shift(); // the oldest is erased
        if (r.int(2) === 0) push();
      } else if (op < 18) {
        push();
      } else if (op < 24 && history.length > 0) {
        // a peer set built earlier, arriving late (stronger than the real thread, whose pushes
        // stay in order: this one may even name sessions erased since)
        bed.push(history[r.int(history.length)]!);
        stale++;
      } else if (op < 34 && ctl.length > 0) {
        // A uses one of its sessions (the first use of one we answered confirms it)
        const s = ctl[r.int(ctl.length)]!;
        const before = bed.confirmed.length;
        bed.aUses(s);
        if (bed.confirmed.length > before) {
          lagging.push(...bed.confirmed.slice(before));
          confirms++;
        }
      } else if (op < 40) {
        // the control thread takes in the confirmations it was told of
        for (const id of lagging) {
          const s = ctl.find((x) => x.keyId === id);
          if (s) s.confirmed = true;
        }
        lagging = [];
      } else if (op < 43 && ctl.length > 0) {
        ctl.splice(r.int(ctl.length), 1); // a session expires or is pruned
        if (r.int(2) === 0) push();
      } else if (op < 47) {
        bed.clock.advance(r.int(2_000));
        bed.b.timers();
      } else {
        if (bed.bSends() === null) noSession++;
      }
    }
    console.log(
      `sessions fuzz: ${STEPS} steps, ${bed.sent} datagrams sealed under ${nextKeyId} keys, ${pushes} pushes, ` +
        `${stale} stale pushes, ${confirms} confirmations in the data plane, ${noSession} sends with no session, ` +
        `${bed.b.sessions.refused} erased sessions refused`,
    );
    expect(bed.sent).toBeGreaterThan(20_000);
    expect(stale).toBeGreaterThan(1_000);
    expect(confirms).toBeGreaterThan(100);
    expect(bed.b.sessions.refused).toBeGreaterThan(0);
  }, 120_000);
});
