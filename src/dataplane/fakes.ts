/**
 * In-memory fakes of the data plane's OS boundaries (./io.ts) and of its clock (./peer.ts), so
 * the packet stages can run in tests without a kernel: no root, no TUN, no sockets.
 *
 * They keep the contracts of the real ones where the stages can see it:
 *   - FakeTun.readBatch fills slots at HEADER and truncates to batch.maxPacket, as read(2) on a
 *     TUN does; writeSlot takes the packet at slot i + HEADER and may refuse it.
 *   - FakeUdp.recvBatch fills slots at 0 with source addresses and truncates to the slot size, as
 *     recvmmsg does; sendBatch copies the listed slots onto the network and returns how many the
 *     "kernel" accepted. A datagram to an address nobody holds is lost silently, as UDP is.
 * Unlike the real ones they allocate (a copy per packet): they are for tests, not benchmarks.
 * Addresses are IPv4 as unsigned 32-bit numbers and ports as numbers, like PacketBatch.ip/port.
 */
import type { PacketBatch, SendList } from './batch';
import type { TunIo, UdpIo } from './io';
import type { Clock } from './peer';
import { HEADER_LEN } from './wire';

/** A fake TUN device: `inject` what the kernel routes into it, read `written` for what came out. */
export class FakeTun implements TunIo {
  /** Packets waiting to be read by the data plane, oldest first. */
  readonly pending: Buffer[] = [];
  /** Packets the data plane wrote (copies), oldest first. */
  readonly written: Buffer[] = [];
  /** Number of writes refused by `refuse`. */
  refused = 0;
  /** When set and returning true for a packet, writeSlot refuses it (as the kernel may). */
  refuse: ((packet: Buffer) => boolean) | null = null;

  /** Queues packets (copied) for the next readBatch calls. */
  inject(...packets: Uint8Array[]): void {
    for (const p of packets) this.pending.push(Buffer.from(p));
  }

  /** Returns the packets written so far and forgets them. */
  take(): Buffer[] {
    return this.written.splice(0, this.written.length);
  }

  readBatch(batch: PacketBatch): number {
    const max = batch.maxPacket;
    let n = 0;
    while (n < batch.capacity && this.pending.length > 0) {
      const p = this.pending.shift()!;
      const len = Math.min(p.length, max);
      p.copy(batch.buf, batch.offset(n) + HEADER_LEN, 0, len);
      batch.len[n] = len;
      n++;
    }
    return n;
  }

  /** Nothing is held back in the fake: every writeSlot is delivered at once. */
  flush(): number {
    return 0;
  }

  writeSlot(batch: PacketBatch, i: number, len: number): boolean {
    const start = batch.offset(i) + HEADER_LEN;
    const packet = Buffer.from(batch.buf.subarray(start, start + len));
    if (this.refuse?.(packet)) {
      this.refused++;
      return false;
    }
    this.written.push(packet);
    return true;
  }
}

/** One datagram in flight on a FakeUdpNetwork. `data` is the network's own copy. */
export interface Datagram {
  srcIp: number;
  srcPort: number;
  dstIp: number;
  dstPort: number;
  /** Upper 96 bits of an IPv6 source / destination (PacketBatch.hi); absent: IPv4. */
  srcHi?: readonly number[];
  dstHi?: readonly number[];
  data: Buffer;
}

/**
 * What the network does with a datagram that was sent:
 *   deliver    to the destination's inbox now
 *   drop       lose it
 *   duplicate  deliver it twice
 *   hold       keep it aside until `release()` (to reorder or delay)
 */
export type Fate = 'deliver' | 'drop' | 'duplicate' | 'hold';

function addrKey(ip: number, port: number, hi?: readonly number[]): number | string {
  if (hi && (hi[0] !== 0 || hi[1] !== 0 || hi[2] !== 0)) return `${hi.join(':')}:${ip >>> 0}:${port}`;
  return (ip >>> 0) * 65536 + port;
}

const isV6 = (hi: readonly number[] | undefined): hi is readonly number[] => hi !== undefined && (hi[0] !== 0 || hi[1] !== 0 || hi[2] !== 0);

/** An in-memory "internet" joining FakeUdp sockets by ip:port. Deterministic: no timers. */
export class FakeUdpNetwork {
  private readonly sockets = new Map<number | string, FakeUdp>();
  /** Decides each sent datagram's fate; the default delivers everything. */
  fate: (d: Datagram) => Fate = () => 'deliver';
  /** When true, every sent datagram is also recorded (a copy) in `captured`. */
  capture = false;
  readonly captured: Datagram[] = [];
  /** Datagrams kept aside by the 'hold' fate, oldest first. */
  readonly held: Datagram[] = [];
  /** Datagrams lost because no socket held the destination address. */
  undeliverable = 0;

  /** Opens a socket at ip:port. Throws if the address is taken (EADDRINUSE). */
  bind(ip: number, port: number): FakeUdp {
    const s = new FakeUdp(this, ip >>> 0, port);
    this.attach(s);
    return s;
  }

  /** @internal */
  attach(s: FakeUdp): void {
    const k = addrKey(s.ip, s.port, s.hi);
    if (this.sockets.has(k)) throw new Error(`fake udp: address in use`);
    this.sockets.set(k, s);
  }

  /** @internal */
  detach(s: FakeUdp): void {
    const k = addrKey(s.ip, s.port, s.hi);
    if (this.sockets.get(k) === s) this.sockets.delete(k);
  }

  /** Offers a datagram to the network as if sent (fate and capture apply). */
  send(d: Datagram): void {
    const own: Datagram = { ...d, data: Buffer.from(d.data) };
    if (this.capture) this.captured.push({ ...own, data: Buffer.from(own.data) });
    switch (this.fate(own)) {
      case 'drop':
        return;
      case 'hold':
        this.held.push(own);
        return;
      case 'duplicate':
        this.deliver(own);
        this.deliver(own);
        return;
      case 'deliver':
        this.deliver(own);
    }
  }

  /**
   * Puts a datagram straight into the destination's inbox, bypassing fate and capture: for
   * injecting raw bytes from any source address (an attacker, a replay, a NAT rebinding).
   * Returns false when no socket holds the destination.
   */
  deliver(d: Datagram): boolean {
    const s = this.sockets.get(addrKey(d.dstIp, d.dstPort, d.dstHi));
    if (!s) {
      this.undeliverable++;
      return false;
    }
    s.inbox.push({ ...d, data: Buffer.from(d.data) });
    return true;
  }

  /** Delivers the held datagrams, oldest first or (reverse) newest first. Returns how many. */
  release(order: 'fifo' | 'reverse' = 'fifo'): number {
    const list = this.held.splice(0, this.held.length);
    if (order === 'reverse') list.reverse();
    for (const d of list) this.deliver(d);
    return list.length;
  }
}

/** A fake UDP socket bound to ip:port on a FakeUdpNetwork. */
export class FakeUdp implements UdpIo {
  /** Datagrams received and not yet read, oldest first. */
  readonly inbox: Datagram[] = [];
  /** When set, sendBatch accepts at most this many datagrams per call (a full socket buffer). */
  sendLimit = Infinity;
  /** Datagrams sendBatch has accepted so far (those it refused are not counted). */
  sent = 0;

  constructor(
    private readonly net: FakeUdpNetwork,
    private addrIp: number,
    private addrPort: number,
  ) {}

  get ip(): number {
    return this.addrIp;
  }
  get port(): number {
    return this.addrPort;
  }
  /** Upper 96 bits of an IPv6 address ([0, 0, 0]: IPv4). */
  get hi(): readonly number[] {
    return this.addrHi;
  }
  private addrHi: readonly number[] = [0, 0, 0];

  /**
   * Moves the socket to a new address, as a NAT rebinding or a changed interface would; `hi`
   * makes it an IPv6 one (ip: its low 32 bits).
   */
  rebind(ip: number, port: number, hi: readonly number[] = [0, 0, 0]): void {
    this.net.detach(this);
    const oldIp = this.addrIp;
    const oldPort = this.addrPort;
    const oldHi = this.addrHi;
    this.addrIp = ip >>> 0;
    this.addrPort = port;
    this.addrHi = [...hi];
    try {
      this.net.attach(this);
    } catch (e) {
      this.addrIp = oldIp;
      this.addrPort = oldPort;
      this.addrHi = oldHi;
      this.net.attach(this);
      throw e;
    }
  }

  close(): void {
    this.net.detach(this);
    this.inbox.length = 0;
  }

  recvBatch(batch: PacketBatch): number {
    let n = 0;
    while (n < batch.capacity && this.inbox.length > 0) {
      const d = this.inbox.shift()!;
      const len = Math.min(d.data.length, batch.slotSize);
      d.data.copy(batch.buf, batch.offset(n), 0, len);
      batch.len[n] = len;
      batch.ip[n] = d.srcIp;
      batch.port[n] = d.srcPort;
      batch.hi[3 * n] = d.srcHi?.[0] ?? 0;
      batch.hi[3 * n + 1] = d.srcHi?.[1] ?? 0;
      batch.hi[3 * n + 2] = d.srcHi?.[2] ?? 0;
      n++;
    }
    return n;
  }

  sendBatch(batch: PacketBatch, list: SendList): number {
    const count = Math.min(list.count, this.sendLimit);
    for (let j = 0; j < count; j++) {
      const i = list.idx[j]!;
      const off = batch.offset(i);
      const h = batch.hi;
      const dstHi = h[3 * i] !== 0 || h[3 * i + 1] !== 0 || h[3 * i + 2] !== 0 ? [h[3 * i]!, h[3 * i + 1]!, h[3 * i + 2]!] : undefined;
      this.net.send({
        srcIp: this.addrIp,
        srcPort: this.addrPort,
        dstIp: batch.ip[i]!,
        dstPort: batch.port[i]!,
        ...(isV6(this.addrHi) ? { srcHi: this.addrHi } : {}),
        ...(dstHi ? { dstHi } : {}),
        data: batch.buf.subarray(off, off + batch.len[i]!),
      });
    }
    this.sent += count;
    return count;
  }
}

/** A clock that moves only when told to. `now` (wall) and `mono` advance together. */
export class FakeClock implements Clock {
  constructor(
    private wall = 1_700_000_000_000,
    private monoMs = 1_000,
  ) {}

  now(): number {
    return this.wall;
  }
  mono(): number {
    return this.monoMs;
  }

  /** Moves both clocks forward by `ms`. */
  advance(ms: number): void {
    this.wall += ms;
    this.monoMs += ms;
  }

  /** Moves only the wall clock (a suspend/resume or NTP step); monotonic time is unaffected. */
  jumpWall(ms: number): void {
    this.wall += ms;
  }
}
