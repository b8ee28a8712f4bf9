import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runOk, runSync } from '../../src/testbed/run';
import { steeredSocket, steeringProgram } from '../../src/os/udp/reuseport';

/**
 * The reuseport group (src/os/udp/reuseport.ts, docs/design.md "Many cores") against a real kernel,
 * in a fresh namespace whose loopback holds 198.18.0.1 and 2001:db8::1: N dual-stack sockets on one
 * port, and the classic BPF program that gives a datagram to socket (receiver index mod N), for
 * IPv4 and IPv6 senders alike; handshake-sized and short datagrams still land somewhere.
 */
const canNetns = process.getuid?.() === 0 && fs.existsSync('/usr/sbin/ip');
const DIST = path.resolve(__dirname, '..', '..', 'dist');

const SCRIPT = `
const dist = process.argv[1];
const n = Number(process.argv[2]);
const { openUdpSocket, sendDatagram } = require(dist + '/os/udp/udp.js');
const { openUdpGroup } = require(dist + '/os/udp/reuseport.js');
const { handleOf } = require(dist + '/util/ipv6.js');
const libc = require(dist + '/os/ffi/libc.js');
const group = openUdpGroup({ port: 0 }, n);
const tx = openUdpSocket({ port: 0 });
const A4 = 0xc6120001, A6 = handleOf('2001:db8::1');
const indices = [0, 1, 2, 3, 4, 5, 6, 7, 0xffffffff, 0x80000000, 0x12345678, 0xdeadbeef, 255, 256, 257, 65537];
const sent = [];
let tag = 0;
for (const dst of [A4, A6]) {
  for (const idx of indices) {
    const d = Buffer.alloc(32);
    d[0] = 4; d.writeUInt32LE(idx, 4); d.writeUInt32LE(tag, 8);
    sendDatagram(tx.fd, d, dst, group[0].port);
    sent.push({ tag: tag++, idx, v6: dst !== A4, len: 32 });
  }
}
for (const len of [3, 7]) { // too short for an index: socket 0
  const d = Buffer.alloc(len, 0xee); d[0] = 1; d[1] = tag;
  sendDatagram(tx.fd, d, A4, group[0].port);
  sent.push({ tag: tag++, idx: -1, v6: false, len });
}
// each socket's batch until all arrived
const { UdpBatchIo } = require(dist + '/os/udp/udp.js');
const { allocNative } = require(dist + '/os/ffi/mem.js');
const { PacketBatch } = require(dist + '/dataplane/batch.js');
const ios = group.map((s) => {
  const m = allocNative(1536 * 32);
  const b = new PacketBatch(m.buf, 1536, 32, m.ptr);
  return { b, io: new UdpBatchIo(s.fd, b, { gro: false }) };
});
const got = [];
const end = Date.now() + 3000;
while (got.length < sent.length && Date.now() < end) {
  ios.forEach(({ b, io }, k) => {
    const n = io.recvBatch(b);
    for (let i = 0; i < n; i++) {
      const off = b.offset(i);
      const len = b.len[i];
      got.push({ socket: k, len, tag: len >= 12 ? b.buf.readUInt32LE(off + 8) : b.buf[off + 1], v6: b.hi[3 * i] !== 0 });
    }
  });
}
console.log(JSON.stringify({ ports: group.map((s) => s.port), families: group.map((s) => s.family), sent, got }));
`;

interface Sent {
  tag: number;
  idx: number;
  v6: boolean;
  len: number;
}
interface Got {
  socket: number;
  tag: number;
  len: number;
  v6: boolean;
}

describe('steeringProgram', () => {
  it('is the documented 15 instructions: the little-endian index from bytes 4-7, mod n, returned', () => {
    const p = steeringProgram(3);
    expect(p).toHaveLength(15);
    expect(p[0]).toEqual([0x30, 0, 0, 7]); // ldb [7]
    expect(p[11]).toEqual([0x30, 0, 0, 4]); // ldb [4]
    expect(p[13]).toEqual([0x94, 0, 0, 3]); // mod #3
    expect(p[14]).toEqual([0x16, 0, 0, 0]); // ret a
    expect(() => steeringProgram(1)).toThrow(RangeError);
  });
});

describe.skipIf(!canNetns)('SO_REUSEPORT group steered by receiver index, real kernel', () => {
  const ns = `cnrp-${randomBytes(3).toString('hex')}`;
  const runs: Record<number, { ports: number[]; families: number[]; sent: Sent[]; got: Got[] }> = {};

  beforeAll(async () => {
    await runOk(['ip', 'netns', 'add', ns]);
    await runOk(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
    await runOk(['ip', '-n', ns, 'addr', 'add', '198.18.0.1/32', 'dev', 'lo']);
    await runOk(['ip', '-n', ns, '-6', 'addr', 'add', '2001:db8::1/128', 'dev', 'lo', 'nodad']);
    for (const n of [2, 3, 4]) {
      const out = await runOk(['ip', 'netns', 'exec', ns, process.execPath, '-e', SCRIPT, DIST, String(n)], { timeoutMs: 20_000 });
      runs[n] = JSON.parse(out.stdout.trim().split('\n').pop()!) as (typeof runs)[number];
    }
  });

  afterAll(() => {
    runSync(['ip', 'netns', 'del', ns]);
  });

  for (const n of [2, 3, 4]) {
    it(`${n} dual-stack sockets share one port; each datagram reaches socket (index mod ${n}), over IPv4 and IPv6`, () => {
      const r = runs[n]!;
      expect(new Set(r.ports).size).toBe(1);
      expect(r.families).toEqual(Array(n).fill(6));
      expect(r.got).toHaveLength(r.sent.length);
      for (const s of r.sent) {
        const g = r.got.find((x) => x.tag === s.tag && x.len === s.len);
        expect(g, `tag ${s.tag}`).toBeDefined();
        const want = s.idx < 0 ? 0 : s.idx % n;
        expect({ tag: s.tag, socket: g!.socket, v6: g!.v6 }).toEqual({ tag: s.tag, socket: want, v6: s.v6 });
        if (s.idx >= 0) {
          const d = Buffer.alloc(8);
          d.writeUInt32LE(s.idx, 4);
          expect(steeredSocket(d, n)).toBe(want);
        }
      }
      // every socket got some: the steering spreads, it does not pile up on one
      for (let k = 0; k < n; k++) expect(r.got.filter((g) => g.socket === k).length).toBeGreaterThan(0);
    });
  }
});
