import { describe, expect, it } from 'vitest';
import { PacketBatch, SendList, slotSizeFor } from '../../src/dataplane/batch';
import { FakeClock, FakeTun, FakeUdpNetwork } from '../../src/dataplane/fakes';
import { HEADER_LEN } from '../../src/dataplane/wire';

const batch = (mtu = 100, cap = 4) => new PacketBatch(Buffer.alloc(slotSizeFor(mtu) * cap), slotSizeFor(mtu), cap);
const bytes = (n: number, seed: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i + seed) & 255));

/** Puts `data` in slot i at 0 (a datagram) addressed to ip:port and lists it. */
function queue(b: PacketBatch, list: SendList, data: Buffer, ip: number, port: number): void {
  const i = list.count;
  data.copy(b.buf, b.offset(i));
  b.len[i] = data.length;
  b.ip[i] = ip;
  b.port[i] = port;
  list.idx[list.count++] = i;
}

describe('FakeTun', () => {
  it('reads queued packets into slots at HEADER, up to capacity, truncating to maxPacket', () => {
    const tun = new FakeTun();
    const b = batch(100, 2);
    const big = bytes(b.maxPacket + 10, 1);
    tun.inject(bytes(20, 0), big, bytes(30, 2));
    expect(tun.readBatch(b)).toBe(2);
    expect(Array.from(b.len.subarray(0, 2))).toEqual([20, b.maxPacket]);
    expect(b.buf.subarray(HEADER_LEN, HEADER_LEN + 20).equals(bytes(20, 0))).toBe(true);
    expect(b.buf.subarray(b.offset(1) + HEADER_LEN, b.offset(1) + HEADER_LEN + b.maxPacket).equals(big.subarray(0, b.maxPacket))).toBe(true);
    expect(tun.readBatch(b)).toBe(1);
    expect(b.len[0]).toBe(30);
    expect(tun.readBatch(b)).toBe(0);
  });

  it('records copies of written packets and can refuse them', () => {
    const tun = new FakeTun();
    const b = batch();
    bytes(40, 5).copy(b.buf, b.offset(1) + HEADER_LEN);
    expect(tun.writeSlot(b, 1, 40)).toBe(true);
    b.buf.fill(0);
    expect(tun.written).toEqual([bytes(40, 5)]);
    tun.refuse = (p) => p.length === 7;
    expect(tun.writeSlot(b, 0, 7)).toBe(false);
    expect(tun.writeSlot(b, 0, 8)).toBe(true);
    expect(tun.refused).toBe(1);
    expect(tun.take().map((p) => p.length)).toEqual([40, 8]);
    expect(tun.written).toEqual([]);
  });
});

describe('FakeUdpNetwork', () => {
  const A = { ip: 0xc6336401, port: 1000 };
  const B = { ip: 0xcb007102, port: 2000 };

  it('delivers copies with the source address; recv truncates to the slot', () => {
    const net = new FakeUdpNetwork();
    const a = net.bind(A.ip, A.port);
    const b = net.bind(B.ip, B.port);
    const out = batch(100, 4);
    const list = new SendList(4);
    const long = bytes(out.slotSize + 5, 9);
    queue(out, list, bytes(50, 1), B.ip, B.port);
    queue(out, list, long, B.ip, B.port);
    queue(out, list, bytes(10, 2), 0x01020304, 9); // nobody there
    expect(a.sendBatch(out, list)).toBe(3);
    out.buf.fill(0); // the network kept its own copies
    expect(net.undeliverable).toBe(1);
    const inb = batch(100, 4);
    expect(b.recvBatch(inb)).toBe(2);
    expect(Array.from(inb.len.subarray(0, 2))).toEqual([50, inb.slotSize]);
    expect(Array.from(inb.ip.subarray(0, 2))).toEqual([A.ip, A.ip]);
    expect(Array.from(inb.port.subarray(0, 2))).toEqual([A.port, A.port]);
    expect(inb.buf.subarray(0, 50).equals(bytes(50, 1))).toBe(true);
    expect(inb.buf.subarray(inb.offset(1), inb.offset(1) + inb.slotSize).equals(long.subarray(0, inb.slotSize))).toBe(true);
    expect(b.recvBatch(inb)).toBe(0);
  });

  it('drops, duplicates, holds and reorders by fate, and captures what was sent', () => {
    const net = new FakeUdpNetwork();
    const a = net.bind(A.ip, A.port);
    const b = net.bind(B.ip, B.port);
    net.capture = true;
    const fates = ['drop', 'duplicate', 'hold', 'hold', 'deliver'] as const;
    let k = 0;
    net.fate = () => fates[k++]!;
    const out = batch(100, 8);
    const list = new SendList(8);
    for (let i = 0; i < 5; i++) queue(out, list, Buffer.from([i]), B.ip, B.port);
    a.sendBatch(out, list);
    expect(net.captured.map((d) => d.data[0])).toEqual([0, 1, 2, 3, 4]);
    expect(b.inbox.map((d) => d.data[0])).toEqual([1, 1, 4]);
    expect(net.release('reverse')).toBe(2);
    expect(b.inbox.map((d) => d.data[0])).toEqual([1, 1, 4, 3, 2]);
    expect(net.held).toEqual([]);
  });

  it('limits sends per call like a full socket buffer', () => {
    const net = new FakeUdpNetwork();
    const a = net.bind(A.ip, A.port);
    const b = net.bind(B.ip, B.port);
    a.sendLimit = 2;
    const out = batch(100, 4);
    const list = new SendList(4);
    for (let i = 0; i < 4; i++) queue(out, list, Buffer.from([i]), B.ip, B.port);
    expect(a.sendBatch(out, list)).toBe(2);
    expect(b.inbox.map((d) => d.data[0])).toEqual([0, 1]);
    expect(a.sent).toBe(2); // the refused ones are not counted as sent
  });

  it('rebinds a socket to a new address and refuses a taken one', () => {
    const net = new FakeUdpNetwork();
    const a = net.bind(A.ip, A.port);
    const b = net.bind(B.ip, B.port);
    expect(() => net.bind(B.ip, B.port)).toThrow(/in use/);
    expect(() => a.rebind(B.ip, B.port)).toThrow(/in use/);
    expect([a.ip, a.port]).toEqual([A.ip, A.port]);
    a.rebind(A.ip, 4444);
    expect(net.deliver({ srcIp: B.ip, srcPort: B.port, dstIp: A.ip, dstPort: A.port, data: Buffer.from([1]) })).toBe(false);
    expect(net.deliver({ srcIp: B.ip, srcPort: B.port, dstIp: A.ip, dstPort: 4444, data: Buffer.from([2]) })).toBe(true);
    expect(a.inbox.map((d) => d.data[0])).toEqual([2]);
    b.close();
    expect(net.deliver({ srcIp: A.ip, srcPort: 4444, dstIp: B.ip, dstPort: B.port, data: Buffer.from([3]) })).toBe(false);
    expect(net.bind(B.ip, B.port).port).toBe(B.port);
  });
});

describe('FakeClock', () => {
  it('moves only when told', () => {
    const c = new FakeClock(1000, 5);
    expect([c.now(), c.mono()]).toEqual([1000, 5]);
    c.advance(10);
    expect([c.now(), c.mono()]).toEqual([1010, 15]);
    c.jumpWall(-500);
    expect([c.now(), c.mono()]).toEqual([510, 15]);
  });
});
