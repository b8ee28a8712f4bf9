/**
 * Pieces of the many-workers data plane that need no kernel: the TUN queue a flow is written on
 * (src/os/tun/tun.ts queueOf: the same both ways, spread over the queues) and the stats of several
 * workers summed for status and metrics (src/dataplane/stats.ts SummedStats).
 */
import { describe, expect, it } from 'vitest';
import { queueOf } from '../../src/os/tun/tun';
import { DataplaneStats, DROP, P_LAST_RX, P_LAST_TX, P_RTT, P_RX_PKTS, P_TX_BYTES, PEER_STRIDE, SummedStats, T_GSO_ON, T_RX_PKTS } from '../../src/dataplane/stats';

function v4(src: number, dst: number, proto: number, sport: number, dport: number): Buffer {
  const b = Buffer.alloc(40);
  b[0] = 0x45;
  b[9] = proto;
  b.writeUInt32BE(src >>> 0, 12);
  b.writeUInt32BE(dst >>> 0, 16);
  b.writeUInt16BE(sport, 20);
  b.writeUInt16BE(dport, 22);
  return b;
}

function v6(src: number, dst: number, sport: number, dport: number): Buffer {
  const b = Buffer.alloc(60);
  b[0] = 0x60;
  b[6] = 6;
  b.writeUInt32BE(0xfd000000, 8);
  b.writeUInt32BE(src >>> 0, 20);
  b.writeUInt32BE(0xfd000000, 24);
  b.writeUInt32BE(dst >>> 0, 36);
  b.writeUInt16BE(sport, 40);
  b.writeUInt16BE(dport, 42);
  return b;
}

describe('queueOf', () => {
  it('puts both directions of a flow on one queue, IPv4 and IPv6', () => {
    for (let k = 0; k < 200; k++) {
      const [a, b, sp, dp] = [0x64400001 + k, 0x64400002, 40000 + k, 5201];
      for (const n of [2, 3, 4]) {
        expect(queueOf(v4(a, b, 6, sp, dp), 0, 40, n)).toBe(queueOf(v4(b, a, 6, dp, sp), 0, 40, n));
        expect(queueOf(v6(a, b, sp, dp), 0, 60, n)).toBe(queueOf(v6(b, a, dp, sp), 0, 60, n));
      }
    }
  });

  it('spreads the flows of one host pair over every queue, about evenly', () => {
    for (const n of [2, 4]) {
      const counts = new Array<number>(n).fill(0);
      for (let sp = 40000; sp < 41000; sp++) counts[queueOf(v4(0x64400001, 0x64400002, 6, sp, 5201), 0, 40, n)]!++;
      for (const c of counts) expect(c).toBeGreaterThan(1000 / n / 2);
    }
  });

  it('leaves what has no ports to the writer\'s own queue (-1): ICMP, later fragments, short packets', () => {
    expect(queueOf(Buffer.alloc(10), 0, 10, 2)).toBe(-1);
    expect(queueOf(Buffer.from([0x60, ...Array(30).fill(0)]), 0, 31, 2)).toBe(-1);
    expect(queueOf(v4(1, 2, 1, 0, 0), 0, 40, 2)).toBe(-1); // ICMP: its answer is read where it was written
    const frag = v4(1, 2, 17, 9, 9);
    expect(queueOf(frag, 0, 40, 3)).toBeGreaterThanOrEqual(0);
    frag.writeUInt16BE(100, 6); // fragment offset: bytes 20-23 are payload, not ports
    expect(queueOf(frag, 0, 40, 3)).toBe(-1);
  });
});

describe('SummedStats', () => {
  it('sums counts, keeps the newest times, takes the RTT of the worker heard from last, and the GSO flag once', () => {
    const [a, b] = [new DataplaneStats(), new DataplaneStats()];
    const base = 3 * PEER_STRIDE;
    a.peers[base + P_RX_PKTS] = 10;
    b.peers[base + P_RX_PKTS] = 5;
    a.peers[base + P_TX_BYTES] = 1000;
    b.peers[base + P_TX_BYTES] = 24;
    a.peers[base + P_LAST_RX] = 2000;
    b.peers[base + P_LAST_RX] = 3000;
    a.peers[base + P_LAST_TX] = 4000;
    a.peers[base + P_RTT] = 1.5;
    b.peers[base + P_RTT] = 0.5;
    a.drops[DROP.replay] = 2;
    b.drops[DROP.replay] = 3;
    a.totals[T_RX_PKTS] = 10;
    b.totals[T_RX_PKTS] = 5;
    a.totals[T_GSO_ON] = 1;
    b.totals[T_GSO_ON] = 1;
    const s = new SummedStats([a, b]).refresh();
    expect(s.peer(3, P_RX_PKTS)).toBe(15);
    expect(s.peer(3, P_TX_BYTES)).toBe(1024);
    expect(s.peer(3, P_LAST_RX)).toBe(3000);
    expect(s.peer(3, P_LAST_TX)).toBe(4000);
    expect(s.peer(3, P_RTT)).toBe(0.5);
    expect(Number.isNaN(s.peer(4, P_RTT))).toBe(true);
    expect(s.dropCounts().replay).toBe(5);
    expect(s.totals[T_RX_PKTS]).toBe(15);
    expect(s.offloadCounts().udpGso).toBe(true);
    // a reset reaches every worker's region
    s.resetPeer(3);
    expect([a.peer(3, P_RX_PKTS), b.peer(3, P_RX_PKTS), s.peer(3, P_RX_PKTS)]).toEqual([0, 0, 0]);
  });

  it('lets the pinging worker see the traffic every worker got from a peer (siblings)', () => {
    const [a, b] = [new DataplaneStats(), new DataplaneStats()];
    a.siblings = [b];
    b.peers[7 * PEER_STRIDE + P_RX_PKTS] = 42;
    b.peers[7 * PEER_STRIDE + P_LAST_RX] = 1234;
    a.peers[7 * PEER_STRIDE + P_RX_PKTS] = 1;
    expect(a.rxPackets(7)).toBe(43);
    expect(a.lastRx(7)).toBe(1234);
    expect(b.rxPackets(7)).toBe(42); // (b has no siblings: its own only)
  });
});
