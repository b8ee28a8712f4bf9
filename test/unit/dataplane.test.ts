/**
 * Two (or three) in-process nodes, each an Outbound + Inbound with real WasmAead and keys from
 * StaticKeyAgreement, joined by FakeUdpNetwork; each node's TUN is a FakeTun. A node's `send()`
 * and `receive()` do what one iteration of the outbound and inbound workers do (worker.ts),
 * including the inbound -> outbound requests (pong, roam), so the stages are tested end to end
 * without a kernel and with every step under the test's control.
 */
const RUN = '0000000000000000';
import { randomBytes } from 'node:crypto';
import { beforeEach, describe, expect, it } from 'vitest';
import { WasmAead } from '../../src/crypto/aead';
import { generateKeyPair, type KeyPair } from '../../src/crypto/keys';
import { StaticKeyAgreement, type SessionKeys } from '../helpers/static-keys';
import { PacketBatch, SendList, slotSizeFor } from '../../src/dataplane/batch';
import { FakeClock, FakeTun, FakeUdp, FakeUdpNetwork, type Datagram } from '../../src/dataplane/fakes';
import { HS_BURST, Inbound } from '../../src/dataplane/inbound';
import { Outbound, PING_INTERVAL_CONNECTING_MS, PING_INTERVAL_MS } from '../../src/dataplane/outbound';
import { DIRECT, type WorkerPeer } from '../../src/dataplane/peer';
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
  T_RX_BYTES,
  T_RX_PKTS,
  T_TX_BYTES,
  T_TX_PKTS,
  type DropReason,
} from '../../src/dataplane/stats';
import {
  COUNTER_LIMIT,
  CTRL_LEN,
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
import { rng } from '../helpers/rng';

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

/** What the inbound worker asks of the outbound one (worker.ts SiblingMessage), in order. */
type Sibling =
  | { t: 'pong'; slot: number; t0: number; ip: number; port: number; via: number }
  | { t: 'relay'; slot: number; from: number; data: Buffer }
  | { t: 'roam'; slot: number; ip: number; port: number; via: number }
  | { t: 'confirm'; slot: number; keyId: string };

class Node {
  readonly tun = new FakeTun();
  readonly stats = new DataplaneStats();
  readonly out: Outbound;
  readonly inb: Inbound;
  /** Pings and probes the peers sent us (each answered with a pong). */
  readonly pings: { slot: number; t0: number; ip: number; port: number; via: number }[] = [];
  readonly pongs: { slot: number; rttMs: number; ip: number; port: number; via: number; seenIp: number; seenPort: number }[] = [];
  readonly roams: { slot: number; ip: number; port: number; via: number }[] = [];
  /** Datagrams this node passed on as a relay: to the peer in `slot`, from overlay address `from`. */
  readonly relays: { slot: number; from: number; length: number }[] = [];
  readonly stuns: { data: Buffer; ip: number; port: number }[] = [];
  private readonly sibling: Sibling[] = [];
  private readonly outBatch = new PacketBatch(Buffer.alloc(slotSizeFor(MTU) * CAP), slotSizeFor(MTU), CAP);
  private readonly list = new SendList(CAP);
  private readonly inBatch = new PacketBatch(Buffer.alloc(slotSizeFor(MTU) * CAP), slotSizeFor(MTU), CAP);
  /** Handshake messages the inbound path handed to the control thread, and where each came from. */
  readonly handshakes: Buffer[] = [];
  readonly handshakeFrom: { ip: number; port: number; via: number }[] = [];
  // Control messages and relay work: full-size slots, as in the worker (a relayed datagram is as large as any).
  private readonly ctrlBatch = new PacketBatch(Buffer.alloc(slotSizeFor(MTU) * 4), slotSizeFor(MTU), 4);
  private readonly ctrlList = new SendList(4);

  constructor(
    readonly id: Identity,
    readonly udp: FakeUdp,
    readonly aead: WasmAead,
    readonly clock: FakeClock,
    opts: { relay?: boolean } = {},
  ) {
    this.out = new Outbound(aead, this.stats, clock);
    this.inb = new Inbound(
      aead,
      this.stats,
      clock,
      {
        ping: (slot, t0, ip, port, via) => {
          this.pings.push({ slot, t0, ip, port, via });
          this.sibling.push({ t: 'pong', slot, t0, ip, port, via });
        },
        pong: (slot, rttMs, ip, port, via, seenIp, seenPort) => {
          this.pongs.push({ slot, rttMs, ip, port, via, seenIp, seenPort });
        },
        roam: (slot, ip, port, via) => {
          this.roams.push({ slot, ip, port, via });
          this.sibling.push({ t: 'roam', slot, ip, port, via }); // as the inbound worker asks the outbound one
        },
        handshake: (data, ip, port, via) => {
          this.handshakes.push(Buffer.from(data));
          this.handshakeFrom.push({ ip, port, via });
        },
        stun: (data, ip, port) => {
          this.stuns.push({ data: Buffer.from(data), ip, port });
        },
        relay: (slot, from, data) => {
          this.relays.push({ slot, from, length: data.length });
          this.sibling.push({ t: 'relay', slot, from, data: Buffer.from(data) });
        },
        confirmed: (slot, keyId) => {
          this.sibling.push({ t: 'confirm', slot, keyId });
        },
      },
      opts,
    );
  }

  setPeers(peers: WorkerPeer[]): void {
    // Each worker gets its own structured clone, as postMessage would give it.
    this.out.setPeers(structuredClone(peers));
    this.inb.setPeers(structuredClone(peers));
  }

  /** Outbound worker: TUN -> UDP until the TUN is empty. Returns datagrams sent. */
  send(): number {
    let sent = 0;
    for (let n; (n = this.tun.readBatch(this.outBatch)) > 0; ) {
      this.out.process(this.outBatch, n, this.list);
      if (this.list.count > 0) sent += this.udp.sendBatch(this.outBatch, this.list);
    }
    return sent;
  }

  /** Inbound worker: UDP -> TUN until the socket is empty, then what it asked of the outbound one, in order. */
  receive(): number {
    let got = 0;
    for (let n; (n = this.udp.recvBatch(this.inBatch)) > 0; ) {
      this.inb.process(this.inBatch, n, this.tun);
      got += n;
    }
    while (this.sibling.length > 0) {
      this.ctrlList.count = 0;
      while (this.sibling.length > 0 && this.ctrlList.count < this.ctrlBatch.capacity) {
        const m = this.sibling.shift()!;
        if (m.t === 'pong') this.out.pong(m.slot, m.t0, m.ip, m.port, m.via, this.ctrlBatch, this.ctrlList);
        else if (m.t === 'relay') this.out.relay(m.slot, m.from, m.data, this.ctrlBatch, this.ctrlList);
        else if (m.t === 'roam') this.out.roam(m.slot, m.ip, m.port, m.via);
        else this.out.promote(m.slot, m.keyId);
      }
      if (this.ctrlList.count > 0) this.udp.sendBatch(this.ctrlBatch, this.ctrlList);
    }
    return got;
  }

  /** Outbound worker's timer tick: pings that are due. Returns datagrams sent. */
  timers(): number {
    this.ctrlList.count = 0;
    this.out.timers(this.ctrlBatch, this.ctrlList);
    return this.ctrlList.count > 0 ? this.udp.sendBatch(this.ctrlBatch, this.ctrlList) : 0;
  }

  /** The control thread asks for a probe of a candidate address. Returns datagrams sent. */
  probe(slot: number, ip: number, port: number): number {
    this.ctrlList.count = 0;
    this.out.probe(slot, ip, port, this.ctrlBatch, this.ctrlList);
    return this.ctrlList.count > 0 ? this.udp.sendBatch(this.ctrlBatch, this.ctrlList) : 0;
  }

  /** The control thread sends a datagram (a handshake message) to `target` through relay `via`. */
  forward(via: number, target: number, data: Uint8Array): number {
    this.ctrlList.count = 0;
    this.out.forward(via, target, data, this.ctrlBatch, this.ctrlList);
    return this.ctrlList.count > 0 ? this.udp.sendBatch(this.ctrlBatch, this.ctrlList) : 0;
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
function workerPeer(slot: number, peer: Identity, keys: SessionKeys, keyId = 'k1', viaSlot?: number): WorkerPeer {
  return {
    slot,
    name: peer.name,
    overlayIp: ip(peer.overlay),
    allowed: peer.allowed.map((s) => parsePrefix(s)!) as Prefix[],
    endpointIp: viaSlot === undefined ? ip(peer.underlayIp) : 0,
    endpointPort: viaSlot === undefined ? peer.port : 0,
    ...(viaSlot === undefined ? {} : { endpointVia: viaSlot }),
    keyId,
    txKey: keys.txKey,
    rxKey: keys.rxKey,
    txIndex: keys.txIndex,
    rxIndex: keys.rxIndex,
  };
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
  const peersOfA = () => [workerPeer(SLOT_OF_B_AT_A, B, keys.ab, 'k1', SLOT_OF_R_AT_A), workerPeer(SLOT_OF_R_AT_A, R, keys.ar)];
  const peersOfB = () => [workerPeer(SLOT_OF_A_AT_B, A, keys.ba, 'k1', SLOT_OF_R_AT_B), workerPeer(SLOT_OF_R_AT_B, R, keys.br)];
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

    it('an IPv6 packet is dropped as notIpv4, a runt as malformed', () => {
      const { a } = m;
      a.tun.inject(ipv6(), Buffer.from([0x45, 0, 0, 10, 0, 0, 0, 0, 64, 17]), Buffer.alloc(0));
      expect(a.send()).toBe(0);
      expect(m.net.captured).toEqual([]);
      expect(a.drops()).toEqual({ ...noDrops(), notIpv4: 1, malformed: 2 });
    });

    it('good packets in the same batch as bad ones still go', () => {
      const { a, b } = m;
      const good = [ipv4('100.64.0.1', '100.64.0.2', 10, { seed: 1 }), ipv4('100.64.0.1', '100.64.0.2', 20, { seed: 2 })];
      a.tun.inject(ipv6(), good[0]!, ipv4('100.64.0.1', '100.64.9.9'), good[1]!);
      expect(a.send()).toBe(2);
      b.receive();
      expect(b.tun.take()).toEqual(good);
      expect(a.drops()).toEqual({ ...noDrops(), notIpv4: 1, noRoute: 1 });
    });

    it('a peer whose counter reached the limit gets nothing more (sendFailed)', () => {
      const { a } = m;
      // No test can send 2^52 packets: set the counter the way it would be after that many.
      const peers = Reflect.get(a.out, 'bySlot') as Map<number, { counter: number }>;
      peers.get(SLOT_OF_B_AT_A)!.counter = COUNTER_LIMIT;
      a.tun.inject(ipv4('100.64.0.1', '100.64.0.2'), ipv4('100.64.0.1', '100.64.0.3'));
      expect(a.send()).toBe(1);
      expect(m.net.captured.map((d) => d.dstPort)).toEqual([51822]);
      expect(a.drops()).toEqual({ ...noDrops(), sendFailed: 1 });
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
      const known = new Set([m.ba.rxIndex, ...m.peersOfB().map((p) => p.rxIndex)]);
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
        ipv6(), // not IPv4
        ipv4('100.64.0.1', '100.64.0.2', 40, { totalLength: 61 }), // says longer than it is
        ipv4('100.64.0.1', '100.64.0.2', 40, { totalLength: 19 }), // shorter than its header
        good.subarray(0, 19), // runt
        Buffer.from([0, CTRL_PING, 1, 2, 3]), // control message of the wrong length
        Buffer.concat([Buffer.from([0, 9]), Buffer.alloc(8)]), // unknown control message
        padded, // valid, with trailing bytes after the IP packet
        Buffer.alloc(0), // keepalive: authenticated, nothing to deliver
      ];
      for (const [i, p] of inner.entries()) net.deliver(from(A_UNDERLAY, 51820, b, await forge(key, idx, 100 + i, p)));
      b.receive();
      expect(b.drops()).toEqual({ ...noDrops(), malformed: 6 });
      expect(b.tun.take()).toEqual([good]);
      expect(b.peerStat(SLOT_OF_A_AT_B, P_RX_PKTS)).toBe(inner.length);
      expect(b.pings).toEqual([]);
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
      peersOfA[0] = workerPeer(SLOT_OF_B_AT_A, b.id, ab2, 'k2');
      a.setPeers(peersOfA);
      const peersOfB = m.peersOfB();
      peersOfB[0] = workerPeer(SLOT_OF_A_AT_B, a.id, ba2, 'k2');
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
      peersOfB[0] = workerPeer(SLOT_OF_A_AT_B, a.id, fresh, 'k2');
      b.setPeers(peersOfB);
      net.deliver(oldDatagram);
      b.receive();
      expect(b.drops()).toEqual({ ...noDrops(), auth: 1 });
      // With the old key back under yet another keyId, counter 0 is accepted again: fresh window.
      b.setPeers(m.peersOfB().map((p) => ({ ...p, keyId: 'k3' })));
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
});
