/**
 * Two (or three) in-process nodes, each a Duplex (src/dataplane/duplex.ts: Outbound + Inbound, as
 * the one data-plane worker runs them) with real WasmAead and keys from StaticKeyAgreement, joined
 * by FakeUdpNetwork; each node's TUN is a FakeTun. A node's send(), receive() and timers() call
 * the Duplex as the worker's loop does (worker.ts), so what the inbound side asks of the outbound
 * one (pong, roam, confirm, relay) takes the same path as in the worker: the stages are tested end
 * to end without a kernel and with every step under the test's control.
 */
const RUN = '0000000000000000';
import { randomBytes } from 'node:crypto';
import { beforeEach, describe, expect, it } from 'vitest';
import { WasmAead } from '../../src/crypto/aead';
import { generateKeyPair, type KeyPair } from '../../src/crypto/keys';
import { StaticKeyAgreement, type SessionKeys } from '../helpers/static-keys';
import { PacketBatch, slotSizeFor } from '../../src/dataplane/batch';
import { Duplex, type DuplexEvents } from '../../src/dataplane/duplex';
import { newSendCounter } from '../../src/dataplane/counters';
import { FakeClock, FakeTun, FakeUdp, FakeUdpNetwork, type Datagram } from '../../src/dataplane/fakes';
import { HS_BURST, type Inbound } from '../../src/dataplane/inbound';
import { ACTIVE_WINDOW_MS, type Outbound, PING_INTERVAL_CONNECTING_MS, PING_INTERVAL_MS, SILENCE_PING_MS } from '../../src/dataplane/outbound';
import { encodeBindingSuccess } from '../../src/control/stun';
import { DIRECT, type WorkerPeer, type WorkerSession } from '../../src/dataplane/peer';
import {
  DataplaneStats,
  DROP_REASONS,
  P_LAST_ROAM,
  P_LAST_RX,
  P_LAST_TX,
  P_RTT,
  P_RX_BYTES,
  P_RX_PKTS,
  P_TX_BYTES,
  P_TX_PKTS,
  T_RELAY_BYTES,
  T_RELAY_PKTS,
  T_RX_BYTES,
  T_RX_PKTS,
  T_TX_BYTES,
  T_TX_PKTS,
  type DropReason,
} from '../../src/dataplane/stats';
import {
  COUNTER_LIMIT,
  CTRL_LEN,
  CTRL_BYE,
  CTRL_PING,
  CTRL_PONG,
  CTRL_PROBE,
  CTRL_FORWARD,
  CTRL_RELAYED,
  HEADER_LEN,
  OVERHEAD,
  PONG_LEN,
  RELAY_OVERHEAD,
  RELAY_PREFIX,
  readCounter,
  readReceiverIndex,
  TAG_LEN,
  writeHeader,
} from '../../src/dataplane/wire';
import { parseIpv4, parsePrefix, type Prefix } from '../../src/util/ipv4';
import { C_DENIED, C_REPLIES, C_RULES, counterSlots } from '../../src/dataplane/policy';
import { rng } from '../helpers/rng';
import { hostIp6, overlay6Of, overlayPrefix6 } from '../../src/control/overlay6';

const MTU = 1420;
const CAP = 16;
const ip = (s: string): number => parseIpv4(s)!;

// ---------------------------------------------------------------------------------------------
// Packets

function checksum(b: Buffer): number {
  let sum = 0;
  for (let i = 0; i < b.length; i += 2) sum += (b[i]! << 8) | (b[i + 1] ?? 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** A UDP-in-IPv4 packet with a valid header checksum and `payload` bytes of a recognisable pattern. */
function ipv4(src: string, dst: string, payload = 64, opts: { totalLength?: number; seed?: number } = {}): Buffer {
  const p = Buffer.alloc(20 + payload);
  p[0] = 0x45;
  p.writeUInt16BE(opts.totalLength ?? p.length, 2);
  p.writeUInt16BE(0x1234, 4);
  p[8] = 64;
  p[9] = 17;
  p.writeUInt32BE(ip(src), 12);
  p.writeUInt32BE(ip(dst), 16);
  p.writeUInt16BE(checksum(p.subarray(0, 20)), 10);
  const seed = opts.seed ?? payload;
  for (let i = 20; i < p.length; i++) p[i] = (i * 31 + seed) & 255;
  return p;
}

function ipv6(payload = 40): Buffer {
  const p = Buffer.alloc(40 + payload);
  p[0] = 0x60;
  p.writeUInt16BE(payload, 4);
  p[6] = 17;
  p[7] = 64;
  return p;
}

/** The test network's IPv6 overlay prefix (every node carries IPv6 with it). */
const PREFIX6 = overlayPrefix6({ name: 'test', created: '2026-12-01T00:00:00.000Z', trustAnchor: 'x' });

/**
 * An IPv6 packet between the overlay IPv6 addresses of two IPv4 overlay addresses (`src` may
 * also be a whole address: a source outside the overlay prefix). UDP unless `nh` says otherwise.
 */
function ipv6Overlay(src: string | Uint8Array, dst: string, payload = 64, opts: { nh?: number; payloadLength?: number; seed?: number } = {}): Buffer {
  const p = Buffer.alloc(40 + payload);
  p[0] = 0x60;
  p.writeUInt16BE(opts.payloadLength ?? payload, 4);
  p[6] = opts.nh ?? 17;
  p[7] = 64;
  p.set(typeof src === 'string' ? hostIp6(PREFIX6, ip(src)) : src, 8);
  p.set(hostIp6(PREFIX6, ip(dst)), 24);
  const seed = opts.seed ?? payload;
  for (let i = 40; i < p.length; i++) p[i] = (i * 17 + seed) & 255;
  return p;
}

/** Deterministic PRNG (mulberry32). */

// ---------------------------------------------------------------------------------------------
// Nodes

interface Identity {
  name: string;
  overlay: string;
  underlayIp: string;
  port: number;
  keys: KeyPair;
  /** Extra prefixes this node may send from (and be routed to), as its peers see it. */
  allowed: string[];
}

/**
 * Control slots per node: fewer than the worker's CTRL_SLOTS, so that a receive batch with more
 * pings or relayed datagrams than this fills the control batch (which is then sent and reused).
 */
const NODE_CTRL_SLOTS = 4;

function batchOf(capacity: number): PacketBatch {
  return new PacketBatch(Buffer.alloc(slotSizeFor(MTU) * capacity), slotSizeFor(MTU), capacity);
}

/** A node: a Duplex over a FakeTun and a FakeUdp, driven as the worker's loop drives it. */
class Node {
  readonly tun = new FakeTun();
  readonly stats = new DataplaneStats();
  readonly duplex: Duplex;
  /** Pings and probes the peers sent us (each answered with a pong). */
  readonly pings: { slot: number; t0: number; ip: number; port: number; via: number }[] = [];
  readonly pongs: { slot: number; rttMs: number; ip: number; port: number; via: number; seenIp: number; seenPort: number }[] = [];
  readonly roams: { slot: number; ip: number; port: number; via: number }[] = [];
  /** Datagrams this node passed on as a relay: to the peer in `slot`, from overlay address `from`. */
  readonly relays: { slot: number; from: number; length: number }[] = [];
  readonly stuns: { data: Buffer; ip: number; port: number }[] = [];
  /** Handshake messages the inbound path handed to the control thread, and where each came from. */
  readonly handshakes: Buffer[] = [];
  readonly handshakeFrom: { ip: number; port: number; via: number }[] = [];
  /** Sessions the peer used first (after which we send on them). */
  readonly confirmed: { slot: number; keyId: number }[] = [];
  /** Peers that said bye (by slot). */
  readonly byes: number[] = [];
  /** More observers a test may set; each is called after the event is recorded above. */
  readonly observers: DuplexEvents = {};

  constructor(
    readonly id: Identity,
    readonly udp: FakeUdp,
    readonly aead: WasmAead,
    readonly clock: FakeClock,
    opts: { relay?: boolean; worker?: { index: number; count: number } } = {},
  ) {
    const o = this.observers;
    this.duplex = new Duplex(
      aead,
      this.stats,
      clock,
      {
        out: { batch: batchOf(CAP), tun: this.tun, udp },
        in: { batch: batchOf(CAP), udp, tun: this.tun },
        // full-size slots, as in the worker (a relayed datagram is as large as any)
        ctrl: { batch: batchOf(NODE_CTRL_SLOTS), udp },
      },
      {
        ping: (slot, t0, ip, port, via) => {
          this.pings.push({ slot, t0, ip, port, via });
          o.ping?.(slot, t0, ip, port, via);
        },
        pong: (slot, rttMs, ip, port, via, seenIp, seenPort, t0) => {
          this.pongs.push({ slot, rttMs, ip, port, via, seenIp, seenPort });
          o.pong?.(slot, rttMs, ip, port, via, seenIp, seenPort, t0);
        },
        roam: (slot, ip, port, via) => {
          this.roams.push({ slot, ip, port, via });
          o.roam?.(slot, ip, port, via);
        },
        handshake: (data, ip, port, via) => {
          this.handshakes.push(Buffer.from(data));
          this.handshakeFrom.push({ ip, port, via });
          o.handshake?.(data, ip, port, via);
        },
        stun: (data, ip, port) => {
          this.stuns.push({ data: Buffer.from(data), ip, port });
          o.stun?.(data, ip, port);
        },
        relay: (slot, from, data) => {
          this.relays.push({ slot, from, length: data.length });
          o.relay?.(slot, from, data);
        },
        confirmed: (slot, keyId) => {
          this.confirmed.push({ slot, keyId });
          o.confirmed?.(slot, keyId);
        },
        bye: (slot) => {
          this.byes.push(slot);
          o.bye?.(slot);
        },
      },
      { mtu: MTU, relay: opts.relay ?? false, overlay6: overlay6Of(PREFIX6), ...(opts.worker ? { worker: opts.worker } : {}) },
    );
  }

  get out(): Outbound {
    return this.duplex.out;
  }
  get inb(): Inbound {
    return this.duplex.inb;
  }

  setPeers(peers: WorkerPeer[]): void {
    // The worker gets its own structured clone, as postMessage would give it.
    this.duplex.setPeers(structuredClone(peers));
  }

  /** TUN -> UDP until the TUN is empty. Returns datagrams sent. */
  send(): number {
    const before = this.udp.sent;
    while (this.duplex.fromTun() > 0);
    return this.udp.sent - before;
  }

  /**
   * UDP -> TUN until the socket is empty, one batch at a time; each batch's pongs and relayed
   * datagrams are sent before the next batch is read. Returns datagrams received.
   */
  receive(): number {
    let got = 0;
    for (let n; (n = this.duplex.fromUdp()) > 0; ) got += n;
    return got;
  }

  /** The worker's timer tick: pings that are due. Returns datagrams sent. */
  timers(): number {
    const before = this.udp.sent;
    this.duplex.timers();
    return this.udp.sent - before;
  }

  /** The control thread asks for a probe of a candidate address. Returns datagrams sent. */
  probe(slot: number, ip: number, port: number): number {
    const before = this.udp.sent;
    this.duplex.probe(slot, ip, port);
    return this.udp.sent - before;
  }

  /** The control thread sends a datagram (a handshake message) to `target` through relay `via`. Returns datagrams sent. */
  forward(via: number, target: number, data: Uint8Array): number {
    const before = this.udp.sent;
    this.duplex.forward(via, target, data);
    return this.udp.sent - before;
  }

  peerStat(slot: number, field: number): number {
    return this.stats.peer(slot, field);
  }

  drops(): Record<DropReason, number> {
    return this.stats.dropCounts();
  }
}

function noDrops(): Record<DropReason, number> {
  return Object.fromEntries(DROP_REASONS.map((r) => [r, 0])) as Record<DropReason, number>;
}

/** A peer as the control plane describes it: at its underlay address, or (viaSlot) through a relay peer. */
function workerPeer(slot: number, peer: Identity, keys: SessionKeys, keyId = 1, viaSlot?: number): WorkerPeer {
  return {
    slot,
    name: peer.name,
    overlayIp: ip(peer.overlay),
    allowed: peer.allowed.map((s) => parsePrefix(s)!) as Prefix[],
    endpointIp: viaSlot === undefined ? ip(peer.underlayIp) : 0,
    endpointPort: viaSlot === undefined ? peer.port : 0,
    ...(viaSlot === undefined ? {} : { endpointVia: viaSlot }),
    sessions: [session(keys, keyId)],
  };
}

/** One confirmed session with no send deadline. */
function session(keys: SessionKeys, keyId: number, confirmed = true): WorkerSession {
  return { keyId, txKey: keys.txKey, rxKey: keys.rxKey, txIndex: keys.txIndex, rxIndex: keys.rxIndex, confirmed, sendUntil: Infinity };
}

// Slots are deliberately different on each side and not 0, so a slot mix-up shows.
const SLOT_OF_B_AT_A = 3;
const SLOT_OF_C_AT_A = 4;
const SLOT_OF_A_AT_B = 5;
const SLOT_OF_C_AT_B = 6;
const SLOT_OF_A_AT_C = 7;
const SLOT_OF_B_AT_C = 8;

interface Mesh {
  net: FakeUdpNetwork;
  a: Node;
  b: Node;
  c: Node;
  /** Session keys as each side derived them: ab = a's view of b. */
  ab: SessionKeys;
  ba: SessionKeys;
  peersOfA: () => WorkerPeer[];
  peersOfB: () => WorkerPeer[];
}

/**
 * Three nodes in a full mesh. B routes 10.20.0.0/16 (a subnet behind it); A may also send from
 * 10.10.0.0/24. C is a legitimate peer of both, used as an insider trying to impersonate A.
 */
async function mesh(): Promise<Mesh> {
  const net = new FakeUdpNetwork();
  net.capture = true;
  const ids: Identity[] = [
    { name: 'a', overlay: '100.64.0.1', underlayIp: '198.51.100.1', port: 51820, keys: await generateKeyPair(), allowed: ['10.10.0.0/24'] },
    { name: 'b', overlay: '100.64.0.2', underlayIp: '203.0.113.2', port: 51821, keys: await generateKeyPair(), allowed: ['10.20.0.0/16'] },
    { name: 'c', overlay: '100.64.0.3', underlayIp: '192.0.2.3', port: 51822, keys: await generateKeyPair(), allowed: [] },
  ];
  // Clocks deliberately far apart: nothing may compare one node's time with another's.
  const clocks = [new FakeClock(1_700_000_000_000, 5_000), new FakeClock(1_800_000_000_000, 9_000_000), new FakeClock()];
  const [a, b, c] = await Promise.all(
    ids.map(async (id, i) => new Node(id, net.bind(ip(id.underlayIp), id.port), await WasmAead.create(), clocks[i]!)),
  );
  const kx = await Promise.all(ids.map((id) => StaticKeyAgreement.create(id.keys)));
  const [A, B, C] = ids as [Identity, Identity, Identity];
  const ab = kx[0]!.derive(B.keys.publicKey, RUN, RUN);
  const ac = kx[0]!.derive(C.keys.publicKey, RUN, RUN);
  const ba = kx[1]!.derive(A.keys.publicKey, RUN, RUN);
  const bc = kx[1]!.derive(C.keys.publicKey, RUN, RUN);
  const ca = kx[2]!.derive(A.keys.publicKey, RUN, RUN);
  const cb = kx[2]!.derive(B.keys.publicKey, RUN, RUN);
  const peersOfA = () => [workerPeer(SLOT_OF_B_AT_A, B, ab), workerPeer(SLOT_OF_C_AT_A, C, ac)];
  const peersOfB = () => [workerPeer(SLOT_OF_A_AT_B, A, ba), workerPeer(SLOT_OF_C_AT_B, C, bc)];
  a!.setPeers(peersOfA());
  b!.setPeers(peersOfB());
  c!.setPeers([workerPeer(SLOT_OF_A_AT_C, A, ca), workerPeer(SLOT_OF_B_AT_C, B, cb)]);
  return { net, a: a!, b: b!, c: c!, ab, ba, peersOfA, peersOfB };
}

// Relay mesh: A and B reach each other only through R (which relays); both reach R directly.
const SLOT_OF_R_AT_A = 11;
const SLOT_OF_R_AT_B = 12;
const SLOT_OF_A_AT_R = 13;
const SLOT_OF_B_AT_R = 14;
const R_UNDERLAY = '192.0.2.9';
const R_PORT = 51829;
const R_OVERLAY = '100.64.0.9';

interface RelayMesh {
  net: FakeUdpNetwork;
  a: Node;
  b: Node;
  r: Node;
  /** Session keys as each side derived them: ab = a's view of b. */
  keys: Record<'ab' | 'ba' | 'ar' | 'ra' | 'br' | 'rb', SessionKeys>;
  peersOfA: () => WorkerPeer[];
  peersOfB: () => WorkerPeer[];
}

/**
 * A (198.51.100.1) and B (203.0.113.2) cannot reach each other directly (NATs, say): each is
 * told to reach the other through R, which both reach directly and which relays (`relay`).
 */
async function relayMesh(opts: { relay?: boolean } = {}): Promise<RelayMesh> {
  const net = new FakeUdpNetwork();
  net.capture = true;
  const ids: Identity[] = [
    { name: 'a', overlay: '100.64.0.1', underlayIp: '198.51.100.1', port: 51820, keys: await generateKeyPair(), allowed: [] },
    { name: 'b', overlay: '100.64.0.2', underlayIp: '203.0.113.2', port: 51821, keys: await generateKeyPair(), allowed: ['10.20.0.0/16'] },
    { name: 'r', overlay: R_OVERLAY, underlayIp: R_UNDERLAY, port: R_PORT, keys: await generateKeyPair(), allowed: [] },
  ];
  const clocks = [new FakeClock(1_700_000_000_000, 5_000), new FakeClock(1_800_000_000_000, 9_000_000), new FakeClock()];
  const [a, b, r] = await Promise.all(
    ids.map(
      async (id, i) =>
        new Node(id, net.bind(ip(id.underlayIp), id.port), await WasmAead.create(), clocks[i]!, i === 2 ? { relay: opts.relay ?? true } : {}),
    ),
  );
  const kx = await Promise.all(ids.map((id) => StaticKeyAgreement.create(id.keys)));
  const [A, B, R] = ids as [Identity, Identity, Identity];
  const keys = {
    ab: kx[0]!.derive(B.keys.publicKey, RUN, RUN),
    ar: kx[0]!.derive(R.keys.publicKey, RUN, RUN),
    ba: kx[1]!.derive(A.keys.publicKey, RUN, RUN),
    br: kx[1]!.derive(R.keys.publicKey, RUN, RUN),
    ra: kx[2]!.derive(A.keys.publicKey, RUN, RUN),
    rb: kx[2]!.derive(B.keys.publicKey, RUN, RUN),
  };
  const peersOfA = () => [workerPeer(SLOT_OF_B_AT_A, B, keys.ab, 1, SLOT_OF_R_AT_A), workerPeer(SLOT_OF_R_AT_A, R, keys.ar)];
  const peersOfB = () => [workerPeer(SLOT_OF_A_AT_B, A, keys.ba, 1, SLOT_OF_R_AT_B), workerPeer(SLOT_OF_R_AT_B, R, keys.br)];
  a!.setPeers(peersOfA());
  b!.setPeers(peersOfB());
  r!.setPeers([workerPeer(SLOT_OF_A_AT_R, A, keys.ra), workerPeer(SLOT_OF_B_AT_R, B, keys.rb)]);
  return { net, a: a!, b: b!, r: r!, keys, peersOfA, peersOfB };
}

/** A forward (CTRL_FORWARD) or relayed (CTRL_RELAYED) message: 0x00, kind, overlay address (BE), datagram. */
function relayMsg(kind: number, overlay: string, datagram: Buffer): Buffer {
  const b = Buffer.alloc(RELAY_PREFIX + datagram.length);
  b[1] = kind;
  b.writeUInt32BE(ip(overlay), 2);
  datagram.copy(b, RELAY_PREFIX);
  return b;
}

/** One AEAD for the test's own sealing and opening (a WasmAead's scratch memory is never freed). */
let tool: Promise<WasmAead> | undefined;
function toolAead(): Promise<WasmAead> {
  tool ??= WasmAead.create();
  return tool;
}

/** Seals `plain` as a datagram with a raw key: what a peer (or an attacker with some key) could send. */
async function forge(key: Uint8Array, index: number, counter: number, plain: Buffer): Promise<Buffer> {
  const aead = await toolAead();
  const h = aead.loadKey(key);
  const d = Buffer.alloc(HEADER_LEN + plain.length + TAG_LEN);
  writeHeader(d, 0, index, counter);
  plain.copy(d, HEADER_LEN);
  aead.seal(h, counter, d, 0, HEADER_LEN, HEADER_LEN, plain.length);
  aead.dropKey(h);
  return d;
}

/** Opens a captured datagram with a raw key; null when it does not authenticate. */
async function unseal(key: Uint8Array, datagram: Buffer): Promise<Buffer | null> {
  const aead = await toolAead();
  const h = aead.loadKey(key);
  const d = Buffer.from(datagram);
  const n = aead.open(h, readCounter(d, 0), d, 0, HEADER_LEN, HEADER_LEN, d.length - HEADER_LEN);
  aead.dropKey(h);
  return n < 0 ? null : d.subarray(HEADER_LEN, HEADER_LEN + n);
}

/** The plaintext of a ping or probe: 0x00, kind, f64 LE t0. */
function control(kind: number, t0: number): Buffer {
  const b = Buffer.alloc(CTRL_LEN);
  b[1] = kind;
  b.writeDoubleLE(t0, 2);
  return b;
}

/** The plaintext of a pong: 0x00 0x02, f64 LE t0, then where the ping came from (ip u32 BE, port u16 BE). */
function pongOf(t0: number, seenIp: string | number, seenPort: number): Buffer {
  const b = Buffer.alloc(PONG_LEN);
  b[1] = CTRL_PONG;
  b.writeDoubleLE(t0, 2);
  b.writeUInt32BE(typeof seenIp === 'number' ? seenIp >>> 0 : ip(seenIp), 10);
  b.writeUInt16BE(seenPort, 14);
  return b;
}

function from(srcIp: string, srcPort: number, to: Node, data: Buffer): Datagram {
  return { srcIp: ip(srcIp), srcPort, dstIp: to.udp.ip, dstPort: to.udp.port, data };
}

const ATTACKER = '233.252.0.66';
const A_UNDERLAY = '198.51.100.1';

// ---------------------------------------------------------------------------------------------

describe('data plane over fakes', () => {
  let m: Mesh;
  beforeEach(async () => {
    m = await mesh();
  });

  describe('A -> B', () => {
    it('a seal the AEAD backend fails is dropped (sealFailed), never sent, and its counter is not used again', async () => {
      const { a, b, net } = m;
      const packets = [ipv4('100.64.0.1', '100.64.0.2', 0), ipv4('100.64.0.1', '100.64.0.2', 100), ipv4('100.64.0.1', '100.64.0.2', 200)];
      const seal = a.aead.seal.bind(a.aead);
      let calls = 0;
      a.aead.seal = (...args: Parameters<typeof seal>) => (++calls === 2 ? -1 : seal(...args));
      a.tun.inject(...packets);
      expect(a.send()).toBe(2);
      expect(b.receive()).toBe(2);
      expect(b.tun.take()).toEqual([packets[0], packets[2]]);
      expect(net.captured.map((d) => readCounter(d.data, 0))).toEqual([0, 2]);
      expect(a.drops().sealFailed).toBe(1);
      expect(a.peerStat(SLOT_OF_B_AT_A, P_TX_PKTS)).toBe(2);
    });

    it('an IPv4 packet from A\'s TUN arrives unchanged on B\'s TUN; counters and stats move', async () => {
      const { a, b, net } = m;
      const packets = [ipv4('100.64.0.1', '100.64.0.2', 0), ipv4('100.64.0.1', '100.64.0.2', 100), ipv4('100.64.0.1', '100.64.0.2', MTU - 20)];
      a.tun.inject(...packets);
      expect(a.send()).toBe(3);
      expect(b.receive()).toBe(3);
      expect(b.tun.take()).toEqual(packets);

      // On the wire: header for B's index of A, counters from 0, sealed (no plaintext visible).
      expect(net.captured.map((d) => [d.srcIp, d.srcPort, d.dstIp, d.dstPort])).toEqual(
        packets.map(() => [ip('198.51.100.1'), 51820, ip('203.0.113.2'), 51821]),
      );
      expect(net.captured.map((d) => d.data.length)).toEqual(packets.map((p) => p.length + OVERHEAD));
      expect(net.captured.map((d) => readReceiverIndex(d.data, 0))).toEqual([m.ba.rxIndex, m.ba.rxIndex, m.ba.rxIndex]);
      expect(net.captured.map((d) => readCounter(d.data, 0))).toEqual([0, 1, 2]);
      for (const [i, d] of net.captured.entries()) {
        expect(d.data.subarray(HEADER_LEN, HEADER_LEN + 20).equals(packets[i]!.subarray(0, 20))).toBe(false);
        expect(await unseal(m.ba.rxKey, d.data)).toEqual(packets[i]);
        expect(await unseal(m.ba.txKey, d.data)).toBeNull(); // sealed with A's tx key, not B's
      }

      const wire = packets.reduce((n, p) => n + p.length + OVERHEAD, 0);
      expect(a.peerStat(SLOT_OF_B_AT_A, P_TX_PKTS)).toBe(3);
      expect(a.peerStat(SLOT_OF_B_AT_A, P_TX_BYTES)).toBe(wire);
      expect(a.peerStat(SLOT_OF_B_AT_A, P_LAST_TX)).toBe(a.clock.now());
      expect(a.peerStat(SLOT_OF_C_AT_A, P_TX_PKTS)).toBe(0);
      expect([a.stats.totals[T_TX_PKTS], a.stats.totals[T_TX_BYTES]]).toEqual([3, wire]);
      expect(b.peerStat(SLOT_OF_A_AT_B, P_RX_PKTS)).toBe(3);
      expect(b.peerStat(SLOT_OF_A_AT_B, P_RX_BYTES)).toBe(wire);
      expect(b.peerStat(SLOT_OF_A_AT_B, P_LAST_RX)).toBe(b.clock.now());
      expect(b.peerStat(SLOT_OF_A_AT_B, P_LAST_ROAM)).toBe(0);
      expect([b.stats.totals[T_RX_PKTS], b.stats.totals[T_RX_BYTES]]).toEqual([3, wire]);
      expect(a.drops()).toEqual(noDrops());
      expect(b.drops()).toEqual(noDrops());
      expect(b.roams).toEqual([]);
    });

    it('works both ways, and to the prefixes a peer routes', () => {
      const { a, b } = m;
      const toSubnet = ipv4('100.64.0.1', '10.20.7.9', 33);
      a.tun.inject(toSubnet);
      expect(a.send()).toBe(1);
      b.receive();
      expect(b.tun.take()).toEqual([toSubnet]);
      const back = ipv4('10.20.7.9', '100.64.0.1', 44);
      b.tun.inject(back);
      expect(b.send()).toBe(1);
      a.receive();
      expect(a.tun.take()).toEqual([back]);
    });

    it('moves more packets than one batch holds, in order', () => {
      const { a, b } = m;
      const packets = Array.from({ length: 3 * CAP + 5 }, (_, i) => ipv4('100.64.0.1', '100.64.0.2', i * 7, { seed: i }));
      a.tun.inject(...packets);
      expect(a.send()).toBe(packets.length);
      expect(b.receive()).toBe(packets.length);
      expect(b.tun.take()).toEqual(packets);
    });

    it('a bye goes sealed to every peer, is reported with the sender\'s slot, and a replayed one is dropped', async () => {
      const { a, b, c, net } = m;
      const before = net.captured.length;
      a.duplex.byeAll();
      const sent = net.captured.slice(before);
      expect(sent.map((d) => d.data.length)).toEqual([HEADER_LEN + CTRL_LEN + TAG_LEN, HEADER_LEN + CTRL_LEN + TAG_LEN]);
      const toB = sent.find((d) => d.dstPort === b.udp.port)!;
      const plain = await unseal(m.ba.rxKey, toB.data);
      expect([plain![0], plain![1]]).toEqual([0, CTRL_BYE]);
      b.receive();
      c.receive();
      expect(b.byes).toEqual([SLOT_OF_A_AT_B]);
      expect(c.byes).toEqual([SLOT_OF_A_AT_C]);
      expect(b.pings).toEqual([]); // not answered: a bye is no ping
      // Captured and sent again (an attacker on the path): the replay window refuses it.
      net.deliver(toB);
      b.receive();
      expect(b.byes).toEqual([SLOT_OF_A_AT_B]);
      expect(b.drops()).toMatchObject({ replay: 1 });
    });

    it('a ping is answered by a pong and the RTT is measured on the pinger\'s clock', async () => {
      const { a, b, net } = m;
      expect(Number.isNaN(a.peerStat(SLOT_OF_B_AT_A, P_RTT))).toBe(true);
      const t0 = a.clock.mono();
      expect(a.timers()).toBe(2); // both peers are due: never pinged
      expect(net.captured.map((d) => d.data.length)).toEqual([HEADER_LEN + CTRL_LEN + TAG_LEN, HEADER_LEN + CTRL_LEN + TAG_LEN]);
      const ping = net.captured.find((d) => d.dstPort === b.udp.port)!;
      expect(await unseal(m.ba.rxKey, ping.data)).toEqual(control(CTRL_PING, t0));
      b.clock.advance(3);
      b.receive();
      expect(b.pings).toEqual([{ slot: SLOT_OF_A_AT_B, t0, ip: ip(A_UNDERLAY), port: 51820, via: DIRECT }]);
      const pong = net.captured.at(-1)!;
      expect([pong.srcPort, pong.dstPort]).toEqual([b.udp.port, a.udp.port]);
      expect(pong.data.length).toBe(HEADER_LEN + PONG_LEN + TAG_LEN);
      // The pong tells A where its ping came from, as B saw it.
      expect(await unseal(m.ab.rxKey, pong.data)).toEqual(pongOf(t0, A_UNDERLAY, 51820));
      a.clock.advance(7.25);
      a.receive();
      expect(a.peerStat(SLOT_OF_B_AT_A, P_RTT)).toBe(7.25);
      expect(a.pongs).toEqual([{ slot: SLOT_OF_B_AT_A, rttMs: 7.25, ip: ip('203.0.113.2'), port: 51821, via: DIRECT, seenIp: ip(A_UNDERLAY), seenPort: 51820 }]);
      expect(a.roams).toEqual([]);
      expect(b.roams).toEqual([]);
      expect(a.peerStat(SLOT_OF_B_AT_A, P_LAST_RX)).toBe(a.clock.now());
      // Control messages never reach a TUN.
      expect(a.tun.written).toEqual([]);
      expect(b.tun.written).toEqual([]);
      expect(a.drops()).toEqual(noDrops());
      expect(b.drops()).toEqual(noDrops());
    });

    it('pings fast until the peer answers, then slowly', () => {
      const { a, b, c } = m;
      a.timers();
      b.receive();
      c.receive(); // C answers too
      a.receive();
      const pinged = () => {
        const before = m.net.captured.length;
        a.timers();
        return m.net.captured.slice(before).map((d) => d.dstPort);
      };
      a.clock.advance(PING_INTERVAL_CONNECTING_MS);
      expect(pinged()).toEqual([]); // both answered: up, slow interval
      a.clock.advance(PING_INTERVAL_MS - PING_INTERVAL_CONNECTING_MS - 1);
      expect(pinged()).toEqual([]);
      a.clock.advance(1);
      expect(pinged()).toEqual([51821, 51822]);
      // C stops answering: once it is no longer up, A pings it at the fast interval again.
      m.c.udp.close();
      b.receive();
      a.receive();
      a.clock.advance(3 * PING_INTERVAL_MS + 1_000);
      expect(pinged().sort()).toEqual([51821, 51822]);
      b.receive();
      a.receive();
      a.clock.advance(PING_INTERVAL_CONNECTING_MS);
      expect(pinged()).toEqual([51822]);
    });
  });

  describe('outbound drops', () => {
    it('a packet for an address no peer owns is dropped as noRoute', () => {
      const { a } = m;
      a.tun.inject(ipv4('100.64.0.1', '100.64.0.99'), ipv4('100.64.0.1', '10.21.0.1'));
      expect(a.send()).toBe(0);
      expect(m.net.captured).toEqual([]);
      expect(a.drops()).toEqual({ ...noDrops(), noRoute: 2 });
      expect(a.peerStat(SLOT_OF_B_AT_A, P_TX_PKTS)).toBe(0);
    });

    it('a packet neither IPv4 nor IPv6 is dropped as notIpv4, IPv6 outside the overlay prefix as noRoute, runts as malformed', () => {
      const { a } = m;
      const v5 = Buffer.alloc(60, 0);
      v5[0] = 0x50;
      a.tun.inject(ipv6(), Buffer.from([0x45, 0, 0, 10, 0, 0, 0, 0, 64, 17]), Buffer.alloc(0), v5, ipv6Overlay('100.64.0.1', '100.64.0.2').subarray(0, 39));
      expect(a.send()).toBe(0);
      expect(m.net.captured).toEqual([]);
      expect(a.drops()).toEqual({ ...noDrops(), notIpv4: 1, noRoute: 1, malformed: 3 });
    });

    it('good packets in the same batch as bad ones still go', () => {
      const { a, b } = m;
      const good = [ipv4('100.64.0.1', '100.64.0.2', 10, { seed: 1 }), ipv4('100.64.0.1', '100.64.0.2', 20, { seed: 2 })];
      a.tun.inject(ipv6(), good[0]!, ipv4('100.64.0.1', '100.64.9.9'), good[1]!);
      expect(a.send()).toBe(2);
      b.receive();
      expect(b.tun.take()).toEqual(good);
      expect(a.drops()).toEqual({ ...noDrops(), noRoute: 2 });
    });

    it('a peer whose counter reached the limit gets nothing more (sendFailed)', () => {
      const { a } = m;
      // No test can send 2^52 packets: set the counter the way it would be after that many.
      a.duplex.sessions.peer(SLOT_OF_B_AT_A)!.send!.tx.skipTo(COUNTER_LIMIT);
      a.tun.inject(ipv4('100.64.0.1', '100.64.0.2'), ipv4('100.64.0.1', '100.64.0.3'));
      expect(a.send()).toBe(1);
      expect(m.net.captured.map((d) => d.dstPort)).toEqual([51822]);
      expect(a.drops()).toEqual({ ...noDrops(), sendFailed: 1 });
    });
  });

  describe('IPv6 overlay', () => {
    it('IPv6 packets between overlay IPv6 addresses cross intact, routed by the IPv4 twin, next to IPv4 ones', () => {
      const { a, b } = m;
      const sent = [
        ipv6Overlay('100.64.0.1', '100.64.0.2', 0),
        ipv4('100.64.0.1', '100.64.0.2', 30),
        ipv6Overlay('100.64.0.1', '100.64.0.2', 1200, { nh: 6 }),
        ipv6Overlay('100.64.0.1', '100.64.0.2', 8, { nh: 58 }),
      ];
      a.tun.inject(...sent);
      expect(a.send()).toBe(4);
      b.receive();
      expect(b.tun.take()).toEqual(sent);
      expect(a.drops()).toEqual(noDrops());
      expect(b.drops()).toEqual(noDrops());
    });

    it('an IPv6 destination is a peer only by its own twin: a twin nobody has, or one in an advertised IPv4 prefix, has no route', () => {
      const { a } = m;
      a.tun.inject(ipv6Overlay('100.64.0.1', '100.64.9.9'), ipv6Overlay('100.64.0.1', '10.20.0.5'), ipv4('100.64.0.1', '10.20.0.5'));
      expect(a.send()).toBe(1); // the IPv4 packet into B's subnet
      expect(a.drops()).toEqual({ ...noDrops(), noRoute: 2 });
    });

    it("a peer's IPv6 packet with another member's overlay IPv6 source, or one outside the prefix, is dropped and counted as spoofed", () => {
      const { a, b } = m;
      const outside = hostIp6(PREFIX6, ip('100.64.0.1'));
      outside[7] = 1; // the prefix, but not the twin's zeros
      const elsewhere = hostIp6(PREFIX6, ip('100.64.0.1'));
      elsewhere[2] ^= 0xff; // another /48, A's twin
      const forged = [
        ipv6Overlay('100.64.0.3', '100.64.0.2'), // C's address, from A
        ipv6Overlay('10.10.0.7', '100.64.0.2'), // inside A's allowed IPv4 prefix: IPv6 has no such thing
        ipv6Overlay(outside, '100.64.0.2'),
        ipv6Overlay(elsewhere, '100.64.0.2'),
      ];
      const good = ipv6Overlay('100.64.0.1', '100.64.0.2', 20);
      a.tun.inject(...forged, good);
      expect(a.send()).toBe(5); // A seals whatever its kernel writes: the receiver decides
      b.receive();
      expect(b.tun.take()).toEqual([good]);
      expect(b.drops()).toEqual({ ...noDrops(), spoofed: 4 });
      expect(b.peerStat(SLOT_OF_A_AT_B, P_RX_PKTS)).toBe(5);
    });
  });

  describe('hostile or broken datagrams at B', () => {
    /** A valid A->B datagram that B has not seen yet: sent by A, held by the network. */
    function heldDatagram(payload = 100): { d: Datagram; packet: Buffer } {
      const packet = ipv4('100.64.0.1', '100.64.0.2', payload);
      m.net.fate = () => 'hold';
      m.a.tun.inject(packet);
      expect(m.a.send()).toBe(1);
      m.net.fate = () => 'deliver';
      const d = m.net.held.pop()!;
      return { d, packet };
    }

    /** Normal traffic still flows afterwards, and the peer's counters moved only for it. */
    function stillFlows(): void {
      const { a, b } = m;
      const rxBefore = b.peerStat(SLOT_OF_A_AT_B, P_RX_PKTS);
      const p = ipv4('100.64.0.1', '100.64.0.2', 77, { seed: 99 });
      a.tun.inject(p);
      expect(a.send()).toBe(1);
      b.receive();
      expect(b.tun.take()).toEqual([p]);
      expect(b.peerStat(SLOT_OF_A_AT_B, P_RX_PKTS)).toBe(rxBefore + 1);
    }

    it('random bytes are dropped before decryption with the reason the header earns', () => {
      const { b, net } = m;
      const r = rng(7);
      const expected = noDrops();
      let handshakes = 0;
      for (let i = 0; i < 300; i++) {
        const len = Math.floor(r() * 200);
        const d = Buffer.alloc(len);
        for (let j = 0; j < len; j++) d[j] = Math.floor(r() * 256);
        // Expected verdict by the wire spec, in order: handshake types go to the control thread
        // (HS_BURST of them from one source; the clock stands still), then length, type, reserved.
        if (len > 0 && ((d[0] === 1 && len === 148) || (d[0] === 2 && len === 92) || (d[0] === 3 && len === 64))) {
          if (handshakes < HS_BURST) handshakes++;
          else expected.handshakeRateLimited++;
        } else if (len < OVERHEAD) expected.short++;
        else if (d[0] !== 4 || d[1] !== 0 || d[2] !== 0 || d[3] !== 0) expected.badType++;
        else expected.unknownPeer++;
        net.deliver(from(ATTACKER, 1000 + i, b, d));
      }
      expect(b.receive()).toBe(300);
      expect(expected.short).toBeGreaterThan(0);
      expect(expected.badType).toBeGreaterThan(0);
      expect(b.drops()).toEqual(expected);
      expect(b.handshakes.length).toBe(handshakes);
      expect(b.tun.written).toEqual([]);
      expect(b.peerStat(SLOT_OF_A_AT_B, P_RX_PKTS)).toBe(0);
      expect(b.roams).toEqual([]);
      stillFlows();
    });

    it('well-formed headers with random indices are unknownPeer; with A\'s index and garbage, auth', () => {
      const { b, net } = m;
      const r = rng(11);
      const known = new Set([m.ba.rxIndex, ...m.peersOfB().flatMap((p) => p.sessions.map((x) => x.rxIndex))]);
      for (let i = 0; i < 50; i++) {
        const d = randomBytes(OVERHEAD + Math.floor(r() * 100));
        let index: number;
        do index = Math.floor(r() * 2 ** 32);
        while (known.has(index));
        writeHeader(d, 0, index, Math.floor(r() * 1e9));
        net.deliver(from(ATTACKER, 2000, b, d));
      }
      for (let i = 0; i < 50; i++) {
        const d = randomBytes(OVERHEAD + Math.floor(r() * 100));
        writeHeader(d, 0, m.ba.rxIndex, Math.floor(r() * 1e12));
        net.deliver(from(ATTACKER, 2001, b, d));
      }
      b.receive();
      expect(b.drops()).toEqual({ ...noDrops(), unknownPeer: 50, auth: 50 });
      expect(b.tun.written).toEqual([]);
      expect(b.roams).toEqual([]);
      stillFlows();
    });

    it('truncated datagrams: short below header + tag, auth above', () => {
      const { b, net } = m;
      const { d, packet } = heldDatagram(100);
      const full = d.data.length;
      for (const len of [0, 1, HEADER_LEN, OVERHEAD - 1]) net.deliver({ ...d, data: d.data.subarray(0, len) });
      for (const len of [OVERHEAD, OVERHEAD + 1, full - TAG_LEN, full - 1]) net.deliver({ ...d, data: d.data.subarray(0, len) });
      b.receive();
      expect(b.drops()).toEqual({ ...noDrops(), short: 4, auth: 4 });
      expect(b.tun.written).toEqual([]);
      // The failures did not burn the counter: the intact datagram is still accepted.
      net.deliver(d);
      b.receive();
      expect(b.tun.take()).toEqual([packet]);
      stillFlows();
    });

    it('a replayed datagram is dropped as replay, also when the network duplicates it', () => {
      const { a, b, net } = m;
      const p = ipv4('100.64.0.1', '100.64.0.2', 10);
      a.tun.inject(p);
      a.send();
      b.receive();
      expect(b.tun.take()).toEqual([p]);
      const first = net.captured[0]!;
      net.deliver(first);
      net.deliver(first);
      b.receive();
      expect(b.drops()).toEqual({ ...noDrops(), replay: 2 });

      net.fate = () => 'duplicate';
      const q = ipv4('100.64.0.1', '100.64.0.2', 20);
      a.tun.inject(q);
      a.send();
      b.receive();
      expect(b.tun.take()).toEqual([q]);
      expect(b.drops()).toEqual({ ...noDrops(), replay: 3 });
      expect(b.tun.written).toEqual([]);
      net.fate = () => 'deliver';
      stillFlows();
    });

    it('reordered datagrams within the window are all delivered', () => {
      const { a, b, net } = m;
      const packets = Array.from({ length: 10 }, (_, i) => ipv4('100.64.0.1', '100.64.0.2', 30, { seed: i }));
      net.fate = () => 'hold';
      a.tun.inject(...packets);
      a.send();
      net.fate = () => 'deliver';
      expect(net.release('reverse')).toBe(10);
      b.receive();
      expect(b.tun.take()).toEqual([...packets].reverse());
      expect(b.drops()).toEqual(noDrops());
    });

    it.each([
      ['type byte', 0, 'badType'],
      ['reserved byte', 2, 'badType'],
      ['receiver index', 5, 'unknownPeer'],
      ['counter', 8, 'auth'],
      ['ciphertext (inner header)', HEADER_LEN + 3, 'auth'],
      ['ciphertext (payload)', HEADER_LEN + 60, 'auth'],
      ['tag', -1, 'auth'],
    ] as const)('a flipped bit in the %s (byte %i) is dropped as %s', (_what, at, reason) => {
      const { b, net } = m;
      const { d, packet } = heldDatagram(100);
      const bad = Buffer.from(d.data);
      bad[at < 0 ? bad.length + at : at]! ^= 0x80;
      net.deliver({ ...d, data: bad });
      b.receive();
      expect(b.drops()).toEqual({ ...noDrops(), [reason]: 1 });
      expect(b.tun.written).toEqual([]);
      expect(b.peerStat(SLOT_OF_A_AT_B, P_RX_PKTS)).toBe(0);
      net.deliver(d);
      b.receive();
      expect(b.tun.take()).toEqual([packet]);
      stillFlows();
    });

    it('a datagram sealed by a third party with a guessed index fails authentication', async () => {
      const { b, c, net } = m;
      const p = ipv4('100.64.0.1', '100.64.0.2', 50);
      // An outsider with a random key, using the index it saw on the wire.
      net.deliver(from(ATTACKER, 4000, b, await forge(randomBytes(32), m.ba.rxIndex, 0, p)));
      // An insider (peer C) sealing with its own key to B, but naming A's index to pass as A.
      const kxC = await StaticKeyAgreement.create(c.id.keys);
      const cToB = kxC.derive(b.id.keys.publicKey, RUN, RUN);
      net.deliver(from(c.id.underlayIp, c.id.port, b, await forge(cToB.txKey, m.ba.rxIndex, 1, p)));
      // Sanity: the same forgery with C's own index is a valid packet from C (then spoofed inside).
      net.deliver(from(c.id.underlayIp, c.id.port, b, await forge(cToB.txKey, cToB.txIndex, 0, p)));
      b.receive();
      expect(b.drops()).toEqual({ ...noDrops(), auth: 2, spoofed: 1 });
      expect(b.tun.written).toEqual([]);
      expect(b.peerStat(SLOT_OF_A_AT_B, P_RX_PKTS)).toBe(0);
      expect(b.peerStat(SLOT_OF_C_AT_B, P_RX_PKTS)).toBe(1);
      expect(b.roams).toEqual([]);
      stillFlows();
    });

    it('an inner source A may not use is dropped as spoofed', () => {
      const { a, b } = m;
      const ok = [ipv4('100.64.0.1', '100.64.0.2', 5), ipv4('10.10.0.200', '100.64.0.2', 6)];
      const spoofed = [
        ipv4('100.64.0.77', '100.64.0.2', 7), // nobody's
        ipv4('100.64.0.3', '100.64.0.2', 8), // C's overlay address
        ipv4('100.64.0.2', '100.64.0.2', 9), // B's own
        ipv4('10.10.1.1', '100.64.0.2', 10), // just outside A's 10.10.0.0/24
        ipv4('10.20.0.1', '100.64.0.2', 11), // inside the prefix B routes, not A's
      ];
      a.tun.inject(spoofed[0]!, ok[0]!, ...spoofed.slice(1), ok[1]!);
      expect(a.send()).toBe(7); // A does not police its own sources; B must
      b.receive();
      expect(b.tun.take()).toEqual(ok);
      expect(b.drops()).toEqual({ ...noDrops(), spoofed: 5 });
      // Spoofed packets still authenticated: they count as received from A.
      expect(b.peerStat(SLOT_OF_A_AT_B, P_RX_PKTS)).toBe(7);
    });

    it('inner packets that are not IPv4, or whose length lies, are malformed; padding is trimmed', async () => {
      const { b, net } = m;
      const key = m.ab.txKey;
      const idx = m.ab.txIndex;
      const good = ipv4('100.64.0.1', '100.64.0.2', 40);
      const padded = Buffer.concat([good, Buffer.alloc(6, 0xab)]);
      const inner = [
        ipv6Overlay('100.64.0.1', '100.64.0.2', 40, { payloadLength: 41 }), // IPv6 that says it is longer than it is
        ipv6().subarray(0, 39), // an IPv6 runt
        ipv4('100.64.0.1', '100.64.0.2', 40, { totalLength: 61 }), // says longer than it is
        ipv4('100.64.0.1', '100.64.0.2', 40, { totalLength: 19 }), // shorter than its header
        good.subarray(0, 19), // runt
        Buffer.from([0, CTRL_PING, 1, 2, 3]), // control message of the wrong length
        Buffer.concat([Buffer.from([0, 9]), Buffer.alloc(8)]), // unknown control message
        control(CTRL_PONG, b.clock.mono()), // a pong of the old length (no address in it)
        Buffer.concat([control(CTRL_PING, 1), Buffer.alloc(PONG_LEN - CTRL_LEN)]), // a ping of a pong's length
        Buffer.concat([control(CTRL_PROBE, 1), Buffer.alloc(1)]), // a probe one byte long
        relayMsg(CTRL_FORWARD, '100.64.0.3', Buffer.alloc(0)), // a forward with nothing in it
        relayMsg(CTRL_RELAYED, '100.64.0.3', Buffer.alloc(0)), // a relayed message with nothing in it
        Buffer.from([0, CTRL_RELAYED, 100, 64]), // ... shorter than its prefix
        padded, // valid, with trailing bytes after the IP packet
        Buffer.alloc(0), // keepalive: authenticated, nothing to deliver
      ];
      for (const [i, p] of inner.entries()) net.deliver(from(A_UNDERLAY, 51820, b, await forge(key, idx, 100 + i, p)));
      b.receive();
      expect(b.drops()).toEqual({ ...noDrops(), malformed: 13 });
      expect(b.tun.take()).toEqual([good]);
      expect(b.peerStat(SLOT_OF_A_AT_B, P_RX_PKTS)).toBe(inner.length);
      expect(b.pings).toEqual([]);
      expect(b.pongs).toEqual([]);
      expect(b.relays).toEqual([]);
    });

    it('a packet the kernel refuses is counted as tunWrite', () => {
      const { a, b } = m;
      b.tun.refuse = (p) => p.length === 20 + 13;
      a.tun.inject(ipv4('100.64.0.1', '100.64.0.2', 13), ipv4('100.64.0.1', '100.64.0.2', 14));
      a.send();
      b.receive();
      expect(b.drops()).toEqual({ ...noDrops(), tunWrite: 1 });
      expect(b.tun.take()).toEqual([ipv4('100.64.0.1', '100.64.0.2', 14)]);
      expect(b.tun.refused).toBe(1);
    });
  });

  describe('roaming', () => {
    const NEW_IP = '198.51.100.77';
    const NEW_PORT = 40000;

    function bSendsToA(): Datagram {
      const before = m.net.captured.length;
      m.b.tun.inject(ipv4('100.64.0.2', '100.64.0.1', 12, { seed: before }));
      expect(m.b.send()).toBe(1);
      const sent = m.net.captured.slice(before);
      expect(sent.length).toBe(1);
      return sent[0]!;
    }

    it('a valid datagram from a new address moves B\'s endpoint for A', () => {
      const { a, b, net } = m;
      expect(bSendsToA().dstIp).toBe(ip('198.51.100.1'));
      a.receive();
      a.udp.rebind(ip(NEW_IP), NEW_PORT); // A's NAT mapping changed
      expect(bSendsToA().dstPort).toBe(51820); // B does not know yet: lost
      expect(net.undeliverable).toBe(1);

      const p = ipv4('100.64.0.1', '100.64.0.2', 30);
      a.tun.inject(p);
      a.send();
      b.clock.advance(1234);
      b.receive();
      expect(b.tun.take()).toEqual([p]);
      expect(b.roams).toEqual([{ slot: SLOT_OF_A_AT_B, ip: ip(NEW_IP), port: NEW_PORT, via: DIRECT }]);
      expect(b.peerStat(SLOT_OF_A_AT_B, P_LAST_ROAM)).toBe(b.clock.now());

      const d = bSendsToA();
      expect([d.dstIp, d.dstPort]).toEqual([ip(NEW_IP), NEW_PORT]);
      a.receive();
      expect(a.tun.take().length).toBe(2); // the first one, and the one after the roam
      // Further packets from the same new address are no new roam.
      a.tun.inject(ipv4('100.64.0.1', '100.64.0.2', 31));
      a.send();
      b.receive();
      expect(b.roams.length).toBe(1);
    });

    it('a valid datagram from a new IPv6 address moves the endpoint there; replies carry the whole address', () => {
      const { a, b } = m;
      const HI = [0x20010db8, 0x00020001, 0]; // 2001:db8:2:1::/64
      a.udp.rebind(2, 51820, HI); // A now sends from [2001:db8:2:1::2]:51820
      const p = ipv4('100.64.0.1', '100.64.0.2', 30);
      a.tun.inject(p);
      a.send();
      b.receive();
      expect(b.tun.take()).toEqual([p]);
      expect(b.roams).toEqual([{ slot: SLOT_OF_A_AT_B, ip: 2, port: 51820, via: DIRECT }]);
      const d = bSendsToA();
      expect([d.dstIp, d.dstPort, d.dstHi]).toEqual([2, 51820, HI]);
      a.receive();
      expect(a.tun.take().length).toBe(1);
      // the same low 32 bits and port under another /64 is another address: a move again
      const OTHER = [0x20010db8, 0x00020002, 0];
      a.udp.rebind(2, 51820, OTHER);
      a.tun.inject(ipv4('100.64.0.1', '100.64.0.2', 31));
      a.send();
      b.receive();
      expect(b.roams.length).toBe(2);
      expect(bSendsToA().dstHi).toEqual(OTHER);
      // and back to IPv4: the upper bits are cleared
      a.udp.rebind(ip(NEW_IP), NEW_PORT);
      a.tun.inject(ipv4('100.64.0.1', '100.64.0.2', 32));
      a.send();
      b.receive();
      const back = bSendsToA();
      expect([back.dstIp, back.dstPort, back.dstHi]).toEqual([ip(NEW_IP), NEW_PORT, undefined]);
    });

    it('a replayed datagram from another address does not move it', () => {
      const { a, b, net } = m;
      a.tun.inject(ipv4('100.64.0.1', '100.64.0.2', 30));
      a.send();
      b.receive();
      net.deliver({ ...net.captured[0]!, srcIp: ip(ATTACKER), srcPort: 6666 });
      b.receive();
      expect(b.drops()).toEqual({ ...noDrops(), replay: 1 });
      expect(b.roams).toEqual([]);
      expect(bSendsToA().dstIp).toBe(ip('198.51.100.1'));
    });

    it('an older (delayed, never seen) datagram from another address is delivered but does not move it', () => {
      const { a, b, net } = m;
      const p1 = ipv4('100.64.0.1', '100.64.0.2', 30, { seed: 1 });
      const p2 = ipv4('100.64.0.1', '100.64.0.2', 30, { seed: 2 });
      net.fate = () => 'hold';
      a.tun.inject(p1);
      a.send();
      net.fate = () => 'deliver';
      a.tun.inject(p2);
      a.send();
      b.receive();
      const delayed = net.held.pop()!;
      expect(readCounter(delayed.data, 0)).toBe(0);
      // An attacker replays the held (older) datagram from its own address before A's copy arrives.
      net.deliver({ ...delayed, srcIp: ip(ATTACKER), srcPort: 6666 });
      b.receive();
      expect(b.tun.take()).toEqual([p2, p1]);
      expect(b.roams).toEqual([]);
      expect(b.peerStat(SLOT_OF_A_AT_B, P_LAST_ROAM)).toBe(0);
      expect(bSendsToA().dstIp).toBe(ip('198.51.100.1'));
    });

    it('a control-plane update repeating the endpoint keeps the roamed one; a new endpoint wins', () => {
      const { a, b } = m;
      a.udp.rebind(ip(NEW_IP), NEW_PORT);
      a.tun.inject(ipv4('100.64.0.1', '100.64.0.2'));
      a.send();
      b.receive();
      expect(b.roams.length).toBe(1);
      b.setPeers(m.peersOfB()); // same keys, same endpoint as before
      expect(bSendsToA().dstIp).toBe(ip(NEW_IP));
      const moved = m.peersOfB();
      moved[0]!.endpointIp = ip('198.51.100.88');
      moved[0]!.endpointPort = 1111;
      b.setPeers(moved);
      const d = bSendsToA();
      expect([d.dstIp, d.dstPort]).toEqual([ip('198.51.100.88'), 1111]);
    });

    it('after a control-plane endpoint change, packets still arriving from the roamed address move B back', () => {
      const { a, b } = m;
      a.udp.rebind(ip(NEW_IP), NEW_PORT);
      a.tun.inject(ipv4('100.64.0.1', '100.64.0.2'));
      a.send();
      b.receive();
      expect(b.roams.length).toBe(1);
      // The control plane names an address A is not actually reachable at (stale or wrong).
      const moved = m.peersOfB();
      moved[0]!.endpointIp = ip('198.51.100.88');
      moved[0]!.endpointPort = 1111;
      b.setPeers(moved);
      expect(bSendsToA().dstIp).toBe(ip('198.51.100.88'));
      // A keeps talking from where it really is: the data plane's fresher evidence must win again.
      a.tun.inject(ipv4('100.64.0.1', '100.64.0.2'));
      a.send();
      b.receive();
      const roam = { slot: SLOT_OF_A_AT_B, ip: ip(NEW_IP), port: NEW_PORT, via: DIRECT };
      expect(b.roams).toEqual([roam, roam]);
      const d = bSendsToA();
      expect([d.dstIp, d.dstPort]).toEqual([ip(NEW_IP), NEW_PORT]);
    });
  });

  describe('peer set changes', () => {
    it('unchanged keyId keeps counters and replay state', () => {
      const { a, b, net } = m;
      a.tun.inject(ipv4('100.64.0.1', '100.64.0.2', 1), ipv4('100.64.0.1', '100.64.0.2', 2));
      a.send();
      b.receive();
      b.tun.take();
      const old = net.captured[0]!;
      // A fresh copy of the same peer set, as the control plane sends after any change.
      const peers = m.peersOfA();
      peers[0]!.name = 'b-renamed';
      a.setPeers(peers);
      b.setPeers(m.peersOfB());
      const before = net.captured.length;
      a.tun.inject(ipv4('100.64.0.1', '100.64.0.2', 3));
      a.send();
      expect(readCounter(net.captured[before]!.data, 0)).toBe(2);
      net.deliver(old);
      b.receive();
      expect(b.drops()).toEqual({ ...noDrops(), replay: 1 });
      expect(b.tun.take()).toEqual([ipv4('100.64.0.1', '100.64.0.2', 3)]);
    });

    it('a new keyId (new keys) resets counters and the replay window', async () => {
      const { a, b, net } = m;
      a.tun.inject(ipv4('100.64.0.1', '100.64.0.2', 1), ipv4('100.64.0.1', '100.64.0.2', 2));
      a.send();
      b.receive();
      b.tun.take();
      const oldDatagram = net.captured[0]!;

      // A gets a new identity; both sides derive new keys and see a new keyId.
      const newA = await generateKeyPair();
      const ab2 = (await StaticKeyAgreement.create(newA)).derive(b.id.keys.publicKey, RUN, RUN);
      const ba2 = (await StaticKeyAgreement.create(b.id.keys)).derive(newA.publicKey, RUN, RUN);
      const peersOfA = m.peersOfA();
      peersOfA[0] = workerPeer(SLOT_OF_B_AT_A, b.id, ab2, 2);
      a.setPeers(peersOfA);
      const peersOfB = m.peersOfB();
      peersOfB[0] = workerPeer(SLOT_OF_A_AT_B, a.id, ba2, 2);
      b.setPeers(peersOfB);

      const before = net.captured.length;
      const p = ipv4('100.64.0.1', '100.64.0.2', 4);
      a.tun.inject(p);
      a.send();
      const d = net.captured[before]!.data;
      expect(readCounter(d, 0)).toBe(0);
      expect(readReceiverIndex(d, 0)).toBe(ba2.rxIndex);
      b.receive();
      expect(b.tun.take()).toEqual([p]); // counter 0 again, accepted: the window was reset
      // Traffic under the old keys no longer opens (its index names no peer any more).
      net.deliver(oldDatagram);
      b.receive();
      expect(b.drops()).toEqual({ ...noDrops(), unknownPeer: 1 });
    });

    it('a new keyId with the same index resets the window and refuses the old key', async () => {
      const { a, b, net } = m;
      a.tun.inject(ipv4('100.64.0.1', '100.64.0.2', 1));
      a.send();
      b.receive();
      b.tun.take();
      const oldDatagram = net.captured[0]!;
      // Same index (keys are not what the index is derived from here), new key material.
      const fresh = { ...m.ba, rxKey: randomBytes(32), txKey: randomBytes(32) };
      const peersOfB = m.peersOfB();
      peersOfB[0] = workerPeer(SLOT_OF_A_AT_B, a.id, fresh, 2);
      b.setPeers(peersOfB);
      net.deliver(oldDatagram);
      b.receive();
      expect(b.drops()).toEqual({ ...noDrops(), auth: 1 });
      // With the old key back under yet another keyId, counter 0 is accepted again: fresh window.
      b.setPeers(m.peersOfB().map((p) => ({ ...p, sessions: p.sessions.map((x) => ({ ...x, keyId: 3 })) })));
      net.deliver(oldDatagram);
      b.receive();
      expect(b.tun.take()).toEqual([ipv4('100.64.0.1', '100.64.0.2', 1)]);
    });

    it('a removed peer gets nothing and its traffic is unknownPeer', () => {
      const { a, b, net } = m;
      b.setPeers(m.peersOfB().slice(1));
      a.tun.inject(ipv4('100.64.0.1', '100.64.0.2'));
      a.send();
      b.receive();
      expect(b.drops()).toEqual({ ...noDrops(), unknownPeer: 1 });
      b.tun.inject(ipv4('100.64.0.2', '100.64.0.1'));
      expect(b.send()).toBe(0);
      expect(b.drops()).toEqual({ ...noDrops(), unknownPeer: 1, noRoute: 1 });
      expect(net.captured.length).toBe(1);
      expect([b.out.peerCount, b.inb.peerCount]).toEqual([1, 1]);
    });
  });

  describe('probes, pongs and STUN', () => {
    const NEW_IP = '198.51.100.77';
    const NEW_PORT = 40000;

    it('a probe goes to the address asked for, outside the current endpoint', async () => {
      const { a, net } = m;
      const t0 = a.clock.mono();
      expect(a.probe(SLOT_OF_B_AT_A, ip('10.0.0.2'), 51821)).toBe(1);
      const d = net.captured.at(-1)!;
      expect([d.dstIp, d.dstPort]).toEqual([ip('10.0.0.2'), 51821]);
      expect(net.undeliverable).toBe(1); // nobody there: lost, as UDP is
      expect(d.data.length).toBe(HEADER_LEN + CTRL_LEN + TAG_LEN);
      expect(await unseal(m.ba.rxKey, d.data)).toEqual(control(CTRL_PROBE, t0));
      // It moved nothing: packets still go to B's endpoint.
      a.tun.inject(ipv4('100.64.0.1', '100.64.0.2'));
      a.send();
      expect(net.captured.at(-1)!.dstIp).toBe(ip('203.0.113.2'));
      // Unknown peer: no probe.
      expect(a.probe(99, ip('10.0.0.2'), 51821)).toBe(0);
    });

    it('a probe gets a pong carrying the prober\'s source ip:port, and moves no endpoint', async () => {
      const { a, b, net } = m;
      a.udp.rebind(ip(NEW_IP), NEW_PORT); // A probes from a new address (its NAT mapping, say)
      const t0 = a.clock.mono();
      a.probe(SLOT_OF_B_AT_A, ip('203.0.113.2'), 51821);
      b.clock.advance(1);
      b.receive();
      expect(b.pings).toEqual([{ slot: SLOT_OF_A_AT_B, t0, ip: ip(NEW_IP), port: NEW_PORT, via: DIRECT }]);
      expect(b.roams).toEqual([]); // a probe tests a path, it does not choose one
      const pong = net.captured.at(-1)!;
      expect([pong.srcIp, pong.dstIp, pong.dstPort]).toEqual([ip('203.0.113.2'), ip(NEW_IP), NEW_PORT]); // back where it came from
      expect(await unseal(m.ab.rxKey, pong.data)).toEqual(pongOf(t0, NEW_IP, NEW_PORT));
      a.clock.advance(4);
      a.receive();
      expect(a.pongs).toEqual([{ slot: SLOT_OF_B_AT_A, rttMs: 4, ip: ip('203.0.113.2'), port: 51821, via: DIRECT, seenIp: ip(NEW_IP), seenPort: NEW_PORT }]);
      expect(a.peerStat(SLOT_OF_B_AT_A, P_RTT)).toBe(4); // B's current address answered
      expect(a.roams).toEqual([]);
      expect(b.peerStat(SLOT_OF_A_AT_B, P_LAST_ROAM)).toBe(0);
      // B still sends A's traffic to A's old endpoint: the probe did not move it.
      b.tun.inject(ipv4('100.64.0.2', '100.64.0.1'));
      b.send();
      expect([net.captured.at(-1)!.dstIp, net.captured.at(-1)!.dstPort]).toEqual([ip(A_UNDERLAY), 51820]);
      expect(a.drops()).toEqual(noDrops());
      expect(b.drops()).toEqual(noDrops());
    });

    it('a pong from a path that is not the current one is reported but does not set P_RTT, nor roam', () => {
      const { a, b, net } = m;
      a.timers(); // pings B at 203.0.113.2:51821 (and C)
      b.udp.rebind(ip('203.0.113.200'), 41000); // B answers from elsewhere
      b.receive();
      a.clock.advance(6);
      a.receive();
      expect(a.pongs).toEqual([
        { slot: SLOT_OF_B_AT_A, rttMs: 6, ip: ip('203.0.113.200'), port: 41000, via: DIRECT, seenIp: ip(A_UNDERLAY), seenPort: 51820 },
      ]);
      expect(Number.isNaN(a.peerStat(SLOT_OF_B_AT_A, P_RTT))).toBe(true);
      expect(a.roams).toEqual([]);
      expect(a.peerStat(SLOT_OF_B_AT_A, P_RX_PKTS)).toBe(1); // it still counts as received
      a.tun.inject(ipv4('100.64.0.1', '100.64.0.2'));
      a.send();
      expect(net.captured.at(-1)!.dstIp).toBe(ip('203.0.113.2'));
      // Once A's path moves there (data from B's new address roams it), its pongs set the RTT.
      b.tun.inject(ipv4('100.64.0.2', '100.64.0.1'));
      b.send();
      a.receive();
      expect(a.roams).toEqual([{ slot: SLOT_OF_B_AT_A, ip: ip('203.0.113.200'), port: 41000, via: DIRECT }]);
      a.clock.advance(PING_INTERVAL_MS);
      a.timers();
      b.receive();
      a.clock.advance(2.5);
      a.receive();
      expect(a.peerStat(SLOT_OF_B_AT_A, P_RTT)).toBe(2.5);
    });

    it('a STUN binding response goes to events.stun, not to the TUN, and is rate-limited like handshakes', () => {
      const { a, net } = m;
      const txId = Buffer.alloc(12, 7);
      const answer = encodeBindingSuccess(txId, ip(NEW_IP), NEW_PORT);
      expect(answer[0]).toBe(1); // first byte 0 or 1: never a data datagram
      net.deliver(from('192.0.2.100', 3478, a, answer));
      a.receive();
      expect(a.stuns).toEqual([{ data: answer, ip: ip('192.0.2.100'), port: 3478 }]);
      expect(a.tun.written).toEqual([]);
      expect(a.handshakes).toEqual([]);
      expect(a.drops()).toEqual(noDrops());
      // Not STUN (length field lies, no magic cookie): the data checks drop it.
      const lying = Buffer.from(answer);
      lying.writeUInt16BE(answer.length, 2);
      const noCookie = Buffer.from(answer);
      noCookie[4] = 0;
      net.deliver(from('192.0.2.100', 3478, a, lying));
      net.deliver(from('192.0.2.100', 3478, a, noCookie));
      a.receive();
      expect(a.stuns.length).toBe(1);
      expect(a.drops()).toEqual({ ...noDrops(), badType: 2 });
      // One source gets HS_BURST messages at once (handshakes and STUN share the bucket).
      for (let i = 0; i <= HS_BURST; i++) net.deliver(from('192.0.2.101', 3478, a, answer));
      a.receive();
      expect(a.stuns.length).toBe(1 + HS_BURST);
      expect(a.drops()).toEqual({ ...noDrops(), badType: 2, handshakeRateLimited: 1 });
    });

    it('answers a ping to where it came from, with that address in the pong', async () => {
      const { a, b, net } = m;
      a.udp.rebind(ip(NEW_IP), NEW_PORT);
      const t0 = a.clock.mono();
      a.timers();
      b.receive();
      // A ping (unlike a probe) is data-plane evidence: B roams A, and the pong goes there.
      expect(b.roams).toEqual([{ slot: SLOT_OF_A_AT_B, ip: ip(NEW_IP), port: NEW_PORT, via: DIRECT }]);
      const pong = net.captured.find((d) => d.srcPort === 51821 && d.dstPort === NEW_PORT)!;
      expect(await unseal(m.ab.rxKey, pong.data)).toEqual(pongOf(t0, NEW_IP, NEW_PORT));
    });
  });

  describe('silence pings', () => {
    /** Runs A's timers every 50 ms (the worker's TIMER_MS) until `until` ms; returns ping times per destination port. */
    function runTimers(from: number, until: number, each?: (t: number) => void): Map<number, number[]> {
      const { a, net } = m;
      const out = new Map<number, number[]>();
      for (let t = from; t <= until; t += 50) {
        each?.(t);
        const before = net.captured.length;
        a.timers();
        for (const d of net.captured.slice(before)) {
          if (d.srcPort !== a.udp.port) continue;
          out.set(d.dstPort, [...(out.get(d.dstPort) ?? []), t]);
        }
        a.clock.advance(50);
      }
      return out;
    }

    it('a peer that was sending steadily and went quiet is pinged every SILENCE_PING_MS; an idle one every 5 s', () => {
      const { a, b, c } = m;
      expect([SILENCE_PING_MS, ACTIVE_WINDOW_MS, PING_INTERVAL_MS]).toEqual([300, 3_000, 5_000]); // the times below
      // t = 0: both peers pinged and answered (one packet each: not "steady")
      const first = runTimers(0, 0);
      expect(first).toEqual(new Map([[51821, [0]], [51822, [0]]]));
      b.receive();
      c.receive();
      a.receive();
      const pings = runTimers(50, 9_000, (t) => {
        if (t === 1_000) {
          // B sends a burst at t = 1000, then nothing: A only receives in this flow
          b.tun.inject(...[1, 2, 3].map((k) => ipv4('100.64.0.2', '100.64.0.1', 40, { seed: k })));
          b.send();
          a.receive();
        }
        if (t >= 1_000 && t <= 3_000 && t % 200 === 0) {
          // C trickles one packet at a time: never two between timer runs, never "steady"
          c.tun.inject(ipv4('100.64.0.3', '100.64.0.1', 40, { seed: t }));
          c.send();
          a.receive();
        }
      });
      // Quiet from 1000: silence pings from 1300 while within ACTIVE_WINDOW_MS of the burst, then
      // the 5 s ping again (5 s after the last one).
      expect(pings.get(51821)).toEqual([1_300, 1_600, 1_900, 2_200, 2_500, 2_800, 3_100, 3_400, 3_700, 8_700]);
      expect(pings.get(51822)).toEqual([5_000]);
      expect(a.tun.take().length).toBe(3 + 11);
    });

    it('a burst that keeps coming is no silence: no extra pings while packets arrive', () => {
      const { a, b } = m;
      runTimers(0, 0);
      b.receive();
      a.receive();
      const pings = runTimers(50, 4_950, (t) => {
        if (t % 100 === 0) {
          b.tun.inject(ipv4('100.64.0.2', '100.64.0.1', 40, { seed: 1 }), ipv4('100.64.0.2', '100.64.0.1', 40, { seed: 2 }));
          b.send();
          a.receive();
        }
      });
      expect(pings.get(51821)).toBeUndefined();
    });

    it('after A\'s address changes under a receive-only flow, the silence ping lets B roam to it', () => {
      const { a, b, net } = m;
      runTimers(0, 0);
      b.receive();
      a.receive();
      let delivered = 0;
      let restoredAt: number | null = null;
      runTimers(50, 3_000, (t) => {
        if (t === 1_000) a.udp.rebind(ip('198.51.100.77'), 40000); // A's NAT mapping changed
        if (t % 100 === 0) {
          b.tun.inject(ipv4('100.64.0.2', '100.64.0.1', 40, { seed: t }), ipv4('100.64.0.2', '100.64.0.1', 40, { seed: t + 1 }));
          b.send();
        }
        a.receive();
        b.receive(); // B answers pings (and roams on them)
        a.receive();
        const got = a.tun.take().length;
        delivered += got;
        if (t > 1_000 && got > 0 && restoredAt === null) restoredAt = t;
      });
      expect(net.undeliverable).toBeGreaterThan(0); // B's stream was lost for a while
      expect(b.roams).toEqual([{ slot: SLOT_OF_A_AT_B, ip: ip('198.51.100.77'), port: 40000, via: DIRECT }]);
      expect(restoredAt).not.toBeNull();
      expect(restoredAt!).toBeLessThanOrEqual(1_000 + SILENCE_PING_MS + 100);
      expect(delivered).toBeGreaterThan(40);
    });
  });
});

describe('several workers over fakes (docs/design.md, Many cores)', () => {
  it('two workers of A seal for B from one shared counter: B opens every packet, no counter twice, one atomic add per batch', async () => {
    const m = await mesh();
    const counter = newSendCounter();
    const shared = () => m.peersOfA().map((p) => ({ ...p, sessions: p.sessions.map((x) => ({ ...x, counter })) }));
    // A's two workers: each a duplex of its own (own socket), the session's counter shared
    const workers = await Promise.all(
      [0, 1].map(async (k) => new Node(m.a.id, m.net.bind(ip(m.a.id.underlayIp), 52000 + k), await WasmAead.create(), new FakeClock(), { worker: { index: k, count: 2 } })),
    );
    for (const w of workers) w.setPeers(shared());
    const sent: Buffer[] = [];
    let batches = 0;
    for (let round = 0; round < 20; round++) {
      for (const [k, w] of workers.entries()) {
        const n = 1 + ((round * 7 + k * 3) % CAP);
        const pk = Array.from({ length: n }, (_, i) => ipv4('100.64.0.1', '100.64.0.2', 8, { seed: round * 1000 + k * 100 + i }));
        w.tun.inject(...pk);
        sent.push(...pk);
        expect(w.send()).toBe(n);
        batches++;
      }
    }
    expect(m.b.receive()).toBe(sent.length);
    expect(m.b.tun.take().length).toBe(sent.length);
    expect(m.b.drops().replay).toBe(0);
    const toB = m.net.captured.filter((d) => d.dstIp === ip('203.0.113.2') && readReceiverIndex(d.data, 0) === m.ba.rxIndex);
    const counters = toB.map((d) => readCounter(d.data, 0));
    expect(new Set(counters).size).toBe(sent.length);
    const reservations = workers.reduce((n, w) => n + w.duplex.sessions.peer(SLOT_OF_B_AT_A)!.send!.tx.reservations, 0);
    expect(reservations).toBe(batches);
  });

  it('a worker opens only the sessions whose receiver index names it (mod N); the others\' datagrams are unknownPeer', async () => {
    const m = await mesh();
    const own = (m.ba.rxIndex >>> 0) % 2;
    // B's two workers; A's packets for B reach each of them in turn (as a GRO run of mixed indices could)
    const bw = await Promise.all(
      [0, 1].map(async (k) => new Node(m.b.id, m.net.bind(ip(m.b.id.underlayIp), 53000 + k), await WasmAead.create(), new FakeClock(), { worker: { index: k, count: 2 } })),
    );
    for (const w of bw) w.setPeers(m.peersOfB());
    m.net.capture = true;
    m.a.tun.inject(ipv4('100.64.0.1', '100.64.0.2', 10), ipv4('100.64.0.1', '100.64.0.2', 20));
    expect(m.a.send()).toBe(2);
    const datagrams = m.net.captured.filter((d) => readReceiverIndex(d.data, 0) === m.ba.rxIndex).slice(-2);
    for (const w of bw) {
      for (const d of datagrams) expect(m.net.deliver({ ...d, dstIp: ip(m.b.id.underlayIp), dstPort: 53000 + bw.indexOf(w) })).toBe(true);
      w.receive();
    }
    expect(bw[own]!.tun.take().length).toBe(2);
    expect(bw[own]!.drops().unknownPeer).toBe(0);
    expect(bw[1 - own]!.tun.take().length).toBe(0);
    expect(bw[1 - own]!.drops().unknownPeer).toBe(2);
  });
});

describe('relaying over fakes (A -> R -> B)', () => {
  let rm: RelayMesh;
  beforeEach(async () => {
    rm = await relayMesh();
  });

  const A_OVERLAY = '100.64.0.1';
  const B_OVERLAY = '100.64.0.2';

  it('A -> B through R: B\'s TUN gets the exact packet, R\'s TUN nothing, R counts it; B answers through R', async () => {
    const { a, b, r, net, keys } = rm;
    const packets = [ipv4(A_OVERLAY, B_OVERLAY, 0), ipv4(A_OVERLAY, B_OVERLAY, 100), ipv4(A_OVERLAY, B_OVERLAY, MTU - 20)];
    a.tun.inject(...packets);
    expect(a.send()).toBe(3);
    // A -> R only, each datagram one relay hop larger than a direct one.
    expect(net.captured.map((d) => [d.dstIp, d.dstPort])).toEqual(packets.map(() => [ip(R_UNDERLAY), R_PORT]));
    expect(net.captured.map((d) => d.data.length)).toEqual(packets.map((p) => p.length + OVERHEAD + RELAY_OVERHEAD));
    // R opens the outer layer (a forward to B); the datagram inside is sealed for B alone.
    const outer = (await unseal(keys.ra.rxKey, net.captured[0]!.data))!;
    expect([outer[0], outer[1], outer.readUInt32BE(2)]).toEqual([0, CTRL_FORWARD, ip(B_OVERLAY)]);
    const inner = Buffer.from(outer.subarray(RELAY_PREFIX));
    expect(inner.length).toBe(packets[0]!.length + OVERHEAD);
    expect(readReceiverIndex(inner, 0)).toBe(keys.ba.rxIndex);
    expect(await unseal(keys.ra.rxKey, inner)).toBeNull();
    expect(await unseal(keys.rb.rxKey, inner)).toBeNull();
    expect(await unseal(keys.ba.rxKey, inner)).toEqual(packets[0]);

    expect(r.receive()).toBe(3);
    expect(r.tun.written).toEqual([]);
    const innerLen = packets.map((p) => p.length + OVERHEAD);
    expect(r.relays).toEqual(innerLen.map((length) => ({ slot: SLOT_OF_B_AT_R, from: ip(A_OVERLAY), length })));
    expect([r.stats.totals[T_RELAY_PKTS], r.stats.totals[T_RELAY_BYTES]]).toEqual([3, innerLen.reduce((x, y) => x + y, 0)]);
    const sum = (xs: number[]) => xs.reduce((x, y) => x + y, 0);
    const hop = innerLen.map((n) => n + RELAY_OVERHEAD);
    expect([r.stats.totals[T_RX_PKTS], r.stats.totals[T_RX_BYTES]]).toEqual([3, sum(hop)]);
    expect([r.stats.totals[T_TX_PKTS], r.stats.totals[T_TX_BYTES]]).toEqual([3, sum(hop)]);
    expect(r.peerStat(SLOT_OF_A_AT_R, P_RX_PKTS)).toBe(3);
    expect(r.peerStat(SLOT_OF_B_AT_R, P_TX_PKTS)).toBe(3);
    // R -> B: a relayed message naming A, carrying A's datagram unchanged.
    const toB = net.captured.slice(3);
    expect(toB.map((d) => [d.srcIp, d.dstIp, d.dstPort, d.data.length])).toEqual(hop.map((n) => [ip(R_UNDERLAY), ip('203.0.113.2'), 51821, n]));
    const relayed = (await unseal(keys.br.rxKey, toB[0]!.data))!;
    expect([relayed[0], relayed[1], relayed.readUInt32BE(2)]).toEqual([0, CTRL_RELAYED, ip(A_OVERLAY)]);
    expect(relayed.subarray(RELAY_PREFIX).equals(inner)).toBe(true);

    expect(b.receive()).toBe(3);
    expect(b.tun.take()).toEqual(packets);
    expect(b.roams).toEqual([]); // B already reaches A through R
    expect(b.peerStat(SLOT_OF_A_AT_B, P_RX_PKTS)).toBe(3);
    expect(b.peerStat(SLOT_OF_A_AT_B, P_RX_BYTES)).toBe(sum(innerLen));
    expect(b.peerStat(SLOT_OF_R_AT_B, P_RX_PKTS)).toBe(3);
    expect([b.stats.totals[T_RX_PKTS], b.stats.totals[T_RX_BYTES]]).toEqual([3, sum(hop)]); // datagrams on the wire, once
    for (const n of [a, b, r]) expect(n.drops()).toEqual(noDrops());

    // B answers through R.
    const back = ipv4(B_OVERLAY, A_OVERLAY, 44);
    b.tun.inject(back);
    expect(b.send()).toBe(1);
    expect([net.captured.at(-1)!.dstIp, net.captured.at(-1)!.dstPort]).toEqual([ip(R_UNDERLAY), R_PORT]);
    r.receive();
    a.receive();
    expect(a.tun.take()).toEqual([back]);
    expect(r.stats.totals[T_RELAY_PKTS]).toBe(4);
    expect(r.tun.written).toEqual([]);
    for (const n of [a, b, r]) expect(n.drops()).toEqual(noDrops());
  });

  it('pings go through the relay too; the pong comes back the same way, with 0:0 as the seen address', () => {
    const { a, b, r, net } = rm;
    const t0 = a.clock.mono();
    expect(a.timers()).toBe(2); // B (through R) and R itself
    expect(net.captured.map((d) => d.dstPort)).toEqual([R_PORT, R_PORT]);
    r.receive(); // R answers its own ping and passes B's on
    b.receive();
    expect(b.pings).toEqual([{ slot: SLOT_OF_A_AT_B, t0, ip: 0, port: 0, via: SLOT_OF_R_AT_B }]);
    r.receive();
    a.clock.advance(11);
    a.receive();
    expect(a.pongs.find((p) => p.slot === SLOT_OF_B_AT_A)).toEqual({ slot: SLOT_OF_B_AT_A, rttMs: 11, ip: 0, port: 0, via: SLOT_OF_R_AT_A, seenIp: 0, seenPort: 0 });
    expect(a.pongs.find((p) => p.slot === SLOT_OF_R_AT_A)).toMatchObject({ ip: ip(R_UNDERLAY), port: R_PORT, via: DIRECT, seenIp: ip(A_UNDERLAY), seenPort: 51820 });
    expect(a.peerStat(SLOT_OF_B_AT_A, P_RTT)).toBe(11); // the relayed path is B's current one
    expect(a.roams).toEqual([]);
    for (const n of [a, b, r]) expect(n.drops()).toEqual(noDrops());
  });

  it('a relayed packet from a peer B thought direct moves it to the relay; a direct one moves it back', () => {
    const { a, b, net } = rm;
    const direct = rm.peersOfB();
    direct[0] = { ...direct[0]!, endpointIp: ip(A_UNDERLAY), endpointPort: 51820 };
    delete direct[0].endpointVia;
    b.setPeers(direct);
    a.tun.inject(ipv4(A_OVERLAY, B_OVERLAY, 20));
    a.send();
    rm.r.receive();
    b.receive();
    expect(b.tun.take().length).toBe(1);
    expect(b.roams).toEqual([{ slot: SLOT_OF_A_AT_B, ip: 0, port: 0, via: SLOT_OF_R_AT_B }]);
    expect(b.peerStat(SLOT_OF_A_AT_B, P_LAST_ROAM)).toBe(b.clock.now());
    b.tun.inject(ipv4(B_OVERLAY, A_OVERLAY, 21));
    b.send();
    expect(net.captured.at(-1)!.dstPort).toBe(R_PORT); // B now answers through R
    // A gets a direct path to B (a hole was punched): its next packet comes straight.
    a.setPeers([workerPeer(SLOT_OF_B_AT_A, b.id, rm.keys.ab), rm.peersOfA()[1]!]);
    a.tun.inject(ipv4(A_OVERLAY, B_OVERLAY, 22));
    a.send();
    b.receive();
    expect(b.roams.at(-1)).toEqual({ slot: SLOT_OF_A_AT_B, ip: ip(A_UNDERLAY), port: 51820, via: DIRECT });
    b.tun.inject(ipv4(B_OVERLAY, A_OVERLAY, 23));
    b.send();
    expect([net.captured.at(-1)!.dstIp, net.captured.at(-1)!.dstPort]).toEqual([ip(A_UNDERLAY), 51820]);
  });

  it('a forward to a host that does not relay is dropped as relayRefused', async () => {
    rm = await relayMesh({ relay: false });
    const { a, r, net } = rm;
    a.tun.inject(ipv4(A_OVERLAY, B_OVERLAY, 30));
    a.send();
    const sent = net.captured.length;
    r.receive();
    expect(r.drops()).toEqual({ ...noDrops(), relayRefused: 1 });
    expect(net.captured.length).toBe(sent); // nothing passed on
    expect(r.relays).toEqual([]);
    expect([r.stats.totals[T_RELAY_PKTS], r.stats.totals[T_RELAY_BYTES]]).toEqual([0, 0]);
    expect(r.tun.written).toEqual([]);
    expect(r.peerStat(SLOT_OF_A_AT_R, P_RX_PKTS)).toBe(1); // authenticated all the same
  });

  it('a relay refuses forwards to an unknown address, back to the sender, or to itself; an empty one is malformed', () => {
    const { a, r, net } = rm;
    const datagram = Buffer.alloc(60, 0x42);
    for (const target of ['100.64.0.77', A_OVERLAY, R_OVERLAY, '10.20.0.1' /* inside B's prefix: overlay addresses only */]) {
      expect(a.forward(SLOT_OF_R_AT_A, ip(target), datagram)).toBe(1);
    }
    const sent = net.captured.length;
    r.receive();
    expect(r.drops()).toEqual({ ...noDrops(), relayRefused: 4 });
    expect(net.captured.length).toBe(sent);
    expect(r.stats.totals[T_RELAY_PKTS]).toBe(0);
    // A forward with no datagram in it
    expect(a.forward(SLOT_OF_R_AT_A, ip(B_OVERLAY), Buffer.alloc(0))).toBe(1);
    r.receive();
    expect(r.drops()).toEqual({ ...noDrops(), relayRefused: 4, malformed: 1 });
  });

  it('a relayed message naming the relay itself as source is dropped; relays do not nest', async () => {
    const { b, net, keys } = rm;
    // What A would have sealed for B.
    const pkt = ipv4(A_OVERLAY, B_OVERLAY, 25);
    const fromA = await forge(keys.ab.txKey, keys.ab.txIndex, 0, pkt);
    let n = 100;
    const viaR = async (plain: Buffer) => net.deliver(from(R_UNDERLAY, R_PORT, b, await forge(keys.rb.txKey, keys.rb.txIndex, n++, plain)));
    await viaR(relayMsg(CTRL_RELAYED, R_OVERLAY, fromA)); // "from R, through R"
    b.receive();
    expect(b.drops()).toEqual({ ...noDrops(), spoofed: 1 });
    expect(b.tun.written).toEqual([]);
    expect(b.peerStat(SLOT_OF_A_AT_B, P_RX_PKTS)).toBe(0);
    // A's datagram whose plaintext is a relayed message, or a forward: relays do not nest (malformed).
    const nestedRelayed = await forge(keys.ab.txKey, keys.ab.txIndex, 1, relayMsg(CTRL_RELAYED, A_OVERLAY, fromA));
    await viaR(relayMsg(CTRL_RELAYED, A_OVERLAY, nestedRelayed));
    const nestedForward = await forge(keys.ab.txKey, keys.ab.txIndex, 2, relayMsg(CTRL_FORWARD, A_OVERLAY, fromA));
    await viaR(relayMsg(CTRL_RELAYED, A_OVERLAY, nestedForward));
    b.receive();
    expect(b.drops()).toEqual({ ...noDrops(), spoofed: 1, malformed: 2 });
    expect(b.tun.written).toEqual([]);
    // A relayed message with nothing in it.
    await viaR(relayMsg(CTRL_RELAYED, A_OVERLAY, Buffer.alloc(0)));
    b.receive();
    expect(b.drops()).toEqual({ ...noDrops(), spoofed: 1, malformed: 3 });
    // The genuine one gets through.
    await viaR(relayMsg(CTRL_RELAYED, A_OVERLAY, fromA));
    b.receive();
    expect(b.tun.take()).toEqual([pkt]);
    expect(b.roams).toEqual([]);
  });

  // (Was a bug: the datagram inside a relayed message may be the relay's own, under another
  // peer's name; B then roamed R to "through R" and could no longer reach it.)
  it('a relayed message carrying the relay\'s own datagram (under another name) moves nothing', async () => {
    const { b, net, keys } = rm;
    // (the inner counter is above the outer one, so the inner datagram is R's newest)
    const own = await forge(keys.rb.txKey, keys.rb.txIndex, 52, ipv4(R_OVERLAY, B_OVERLAY, 10));
    net.deliver(from(R_UNDERLAY, R_PORT, b, await forge(keys.rb.txKey, keys.rb.txIndex, 51, relayMsg(CTRL_RELAYED, A_OVERLAY, own))));
    b.receive();
    expect(b.roams).toEqual([]);
    b.tun.inject(ipv4(B_OVERLAY, R_OVERLAY, 10));
    expect(b.send()).toBe(1);
    expect(b.drops().noRoute).toBe(0);
  });

  it('a relayed handshake-size message reaches events.handshake with via = R\'s slot and the sender R names, limited per relay', () => {
    const { a, b, r } = rm;
    const msgs: Buffer[] = [];
    for (let i = 0; i < HS_BURST + 3; i++) {
      const init = randomBytes(148);
      init[0] = 1; // MSG_INITIATION
      msgs.push(init);
      expect(a.forward(SLOT_OF_R_AT_A, ip(B_OVERLAY), init)).toBe(1);
    }
    const response = randomBytes(92);
    response[0] = 2;
    msgs.push(response);
    a.forward(SLOT_OF_R_AT_A, ip(B_OVERLAY), response);
    r.receive();
    expect(r.relays.length).toBe(msgs.length);
    b.receive();
    // The clock stands still: R's bucket lets HS_BURST through, the rest is refused (a member
    // cannot make B do unlimited handshake work through a relay).
    expect(b.handshakes).toEqual(msgs.slice(0, HS_BURST));
    expect(b.handshakeFrom).toEqual(msgs.slice(0, HS_BURST).map(() => ({ ip: ip(A_OVERLAY), port: 0, via: SLOT_OF_R_AT_B })));
    expect(b.drops()).toEqual({ ...noDrops(), handshakeRateLimited: msgs.length - HS_BURST });
    // A STUN message through a relay is not a STUN answer (those come straight from the server).
    const stun = encodeBindingSuccess(Buffer.alloc(12, 1), ip(A_UNDERLAY), 51820);
    a.forward(SLOT_OF_R_AT_A, ip(B_OVERLAY), stun);
    r.receive();
    b.receive();
    expect(b.stuns).toEqual([]);
    expect(b.drops()).toEqual({ ...noDrops(), handshakeRateLimited: msgs.length - HS_BURST, badType: 1 });
  });

  it('a peer whose relay is not reached directly, or unknown, gets nothing (noRoute)', () => {
    const { a, net } = rm;
    // R itself is now only reachable through B: relays do not chain.
    a.setPeers([rm.peersOfA()[0]!, workerPeer(SLOT_OF_R_AT_A, rm.r.id, rm.keys.ar, 1, SLOT_OF_B_AT_A)]);
    a.tun.inject(ipv4(A_OVERLAY, B_OVERLAY, 10));
    expect(a.send()).toBe(0);
    a.setPeers([workerPeer(SLOT_OF_B_AT_A, rm.b.id, rm.keys.ab, 1, 99)]);
    a.tun.inject(ipv4(A_OVERLAY, B_OVERLAY, 10));
    expect(a.send()).toBe(0);
    expect(a.forward(99, ip(B_OVERLAY), Buffer.alloc(148, 1))).toBe(0);
    expect(net.captured).toEqual([]);
    expect(a.drops()).toEqual({ ...noDrops(), noRoute: 3 });
  });
});

// What only the Duplex wiring does: the inbound side's requests of the outbound one are carried
// out within the same fromUdp call, and reported afterwards.
describe('Duplex wiring', () => {
  const B_UNDERLAY = '203.0.113.2';

  it('a ping received in fromUdp is answered by a pong sent before that fromUdp call returns', async () => {
    const { a, b, net, ab } = await mesh();
    const t0 = a.clock.mono();
    a.timers();
    const before = net.captured.length;
    expect(b.duplex.fromUdp()).toBe(1);
    const sent = net.captured.slice(before);
    expect(sent.map((d) => [d.srcPort, d.dstIp, d.dstPort])).toEqual([[b.udp.port, ip(A_UNDERLAY), a.udp.port]]);
    expect(await unseal(ab.rxKey, sent[0]!.data)).toEqual(pongOf(t0, A_UNDERLAY, 51820));
    expect(b.duplex.fromUdp()).toBe(0);
    expect(net.captured.length).toBe(before + 1); // nothing was left for a later call
  });

  it('more pings in one batch than control slots: the full control batch is sent and every ping is answered, in order', async () => {
    const { a, b, net, ab } = await mesh();
    const n = 3 * NODE_CTRL_SLOTS + 1;
    expect(n).toBeLessThanOrEqual(CAP); // one receive batch
    const t0s: number[] = [];
    for (let i = 0; i < n; i++) {
      t0s.push(a.clock.mono());
      expect(a.probe(SLOT_OF_B_AT_A, ip(B_UNDERLAY), 51821)).toBe(1);
      a.clock.advance(1);
    }
    const before = net.captured.length;
    expect(b.duplex.fromUdp()).toBe(n);
    expect(b.pings.map((p) => p.t0)).toEqual(t0s);
    const pongs = net.captured.slice(before);
    expect(pongs.map((d) => d.dstPort)).toEqual(t0s.map(() => a.udp.port));
    expect(await Promise.all(pongs.map((d) => unseal(ab.rxKey, d.data)))).toEqual(t0s.map((t0) => pongOf(t0, A_UNDERLAY, 51820)));
    expect(b.drops()).toEqual(noDrops());
    expect(a.receive()).toBe(n);
    expect(a.pongs.length).toBe(n);
  });

  it('datagrams the socket refuses are counted as sendFailed: data, timer pings, and pongs sent from fromUdp', async () => {
    const { a, b } = await mesh();
    a.udp.sendLimit = 1;
    a.tun.inject(...[1, 2, 3].map((k) => ipv4('100.64.0.1', '100.64.0.2', 20, { seed: k })));
    expect(a.send()).toBe(1);
    expect(a.drops()).toEqual({ ...noDrops(), sendFailed: 2 });
    a.udp.sendLimit = 0;
    expect(a.timers()).toBe(0); // pings to B and C, both refused
    expect(a.drops()).toEqual({ ...noDrops(), sendFailed: 4 });
    a.udp.sendLimit = Infinity;
    a.clock.advance(PING_INTERVAL_CONNECTING_MS);
    expect(a.timers()).toBe(2);
    b.udp.sendLimit = 0;
    expect(b.receive()).toBe(2); // the packet that got through, and the ping
    expect(b.pings.length).toBe(1);
    expect(b.drops()).toEqual({ ...noDrops(), sendFailed: 1 }); // its pong
    expect(a.receive()).toBe(0);
  });

  it('a relay passes a relayed datagram on before that fromUdp call returns', async () => {
    const { a, b, r, net } = await relayMesh();
    const p = ipv4('100.64.0.1', '100.64.0.2', 40);
    a.tun.inject(p);
    expect(a.send()).toBe(1);
    const before = net.captured.length;
    expect(r.duplex.fromUdp()).toBe(1);
    expect(net.captured.slice(before).map((d) => [d.srcIp, d.dstIp, d.dstPort])).toEqual([[ip(R_UNDERLAY), ip(B_UNDERLAY), 51821]]);
    expect(b.udp.inbox.length).toBe(1);
    expect(r.duplex.fromUdp()).toBe(0);
    expect(net.captured.length).toBe(before + 1);
    b.receive();
    expect(b.tun.take()).toEqual([p]);
  });

  it('more relayed datagrams in one batch than control slots: all are passed on, in order', async () => {
    const { a, b, r, net } = await relayMesh();
    const packets = Array.from({ length: 3 * NODE_CTRL_SLOTS + 1 }, (_, i) => ipv4('100.64.0.1', '100.64.0.2', 30 + i, { seed: i }));
    a.tun.inject(...packets);
    expect(a.send()).toBe(packets.length);
    const before = net.captured.length;
    expect(r.duplex.fromUdp()).toBe(packets.length);
    expect(net.captured.length - before).toBe(packets.length);
    expect(r.drops()).toEqual(noDrops());
    expect(b.receive()).toBe(packets.length);
    expect(b.tun.take()).toEqual(packets);
  });

  it('the roam observer runs after the outbound side moved: a packet sent from it goes to the new address', async () => {
    const { a, b, net } = await mesh();
    const NEW_IP = '198.51.100.77';
    a.udp.rebind(ip(NEW_IP), 40000);
    let sentTo: number[] | undefined;
    b.observers.roam = () => {
      // (fromTun reads into its own batch, not the one being received)
      b.tun.inject(ipv4('100.64.0.2', '100.64.0.1', 12));
      expect(b.send()).toBe(1);
      const d = net.captured.at(-1)!;
      sentTo = [d.dstIp, d.dstPort];
    };
    a.tun.inject(ipv4('100.64.0.1', '100.64.0.2', 11));
    a.send();
    b.receive();
    expect(b.roams.length).toBe(1);
    expect(sentTo).toEqual([ip(NEW_IP), 40000]);
  });

  it('the confirmed observer runs after the outbound side took the session: a packet sent from it goes out', async () => {
    const { a, b, peersOfB } = await mesh();
    // B answered a handshake from A: it may send on the new session once A has used it.
    b.setPeers(peersOfB().map((p) => (p.slot === SLOT_OF_A_AT_B ? { ...p, sessions: [{ ...p.sessions[0]!, keyId: 2, confirmed: false }] } : p)));
    b.tun.inject(ipv4('100.64.0.2', '100.64.0.1', 12));
    expect(b.send()).toBe(0);
    expect(b.drops()).toEqual({ ...noDrops(), noSession: 1 });
    let sent: number | undefined;
    b.observers.confirmed = () => {
      b.tun.inject(ipv4('100.64.0.2', '100.64.0.1', 13));
      sent = b.send();
    };
    a.tun.inject(ipv4('100.64.0.1', '100.64.0.2', 11));
    a.send();
    b.receive();
    expect(b.confirmed).toEqual([{ slot: SLOT_OF_A_AT_B, keyId: 2 }]);
    expect(sent).toBe(1);
    a.receive();
    expect(a.tun.take()).toEqual([ipv4('100.64.0.2', '100.64.0.1', 13)]);
  });

  it('the network policy at the receiver: what no rule allows is dropped as `policy`; replies to our own flows pass', async () => {
    const { a, b, c } = await mesh();
    const udp = (src: string, dst: string, sp: number, dp: number) => {
      const p = ipv4(src, dst, 16);
      p.writeUInt16BE(sp, 20);
      p.writeUInt16BE(dp, 22);
      return p;
    };
    const counters = new Float64Array(counterSlots(1));
    // B lets A in on UDP 53 only (rule 0); C is a peer with no rule
    b.duplex.setPolicy(
      { serial: 1, ruleCount: 1, open: false, rules: [{ index: 0, proto: 17, portLo: 53, portHi: 53 }], peers: [{ ip: ip('100.64.0.1'), rules: [0] }], other: [] },
      counters,
    );
    const allowed = udp('100.64.0.1', '100.64.0.2', 4000, 53);
    a.tun.inject(allowed, udp('100.64.0.1', '100.64.0.2', 4000, 54));
    a.send();
    c.tun.inject(udp('100.64.0.3', '100.64.0.2', 5000, 53));
    c.send();
    b.receive();
    expect(b.tun.take()).toEqual([allowed]);
    expect(b.drops().policy).toBe(2);
    expect([counters[C_RULES], counters[C_DENIED]]).toEqual([1, 2]);
    // B asks C something: C's answer passes (a reply to B's own flow), C's other packets do not
    b.tun.inject(udp('100.64.0.2', '100.64.0.3', 6000, 7000));
    b.send();
    const reply = udp('100.64.0.3', '100.64.0.2', 7000, 6000);
    c.tun.inject(reply, udp('100.64.0.3', '100.64.0.2', 7001, 6000));
    c.send();
    b.receive();
    expect(b.tun.take()).toEqual([reply]);
    expect([counters[C_REPLIES], counters[C_DENIED]]).toEqual([1, 3]);
    // no policy: everything from members passes again
    b.duplex.setPolicy(null);
    c.tun.inject(udp('100.64.0.3', '100.64.0.2', 5000, 53));
    c.send();
    b.receive();
    expect(b.tun.take()).toHaveLength(1);
    expect(b.drops().policy).toBe(3);
  });
});
