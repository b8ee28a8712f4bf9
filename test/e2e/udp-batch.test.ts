import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GSO_GIVE_UP } from '../../src/os/udp/udp';
import { runOk, runSync } from '../../src/testbed/run';

/**
 * UdpBatchIo (src/os/udp/udp.ts) against a real kernel: sendmmsg batches with UDP GSO runs, and
 * recvmmsg. Each case runs as `ip netns exec NS node -e SCRIPT` over the built dist/, inside a
 * fresh namespace whose loopback is the only interface, so that its MTU can be set per case.
 */
const canNetns = process.getuid?.() === 0 && fs.existsSync('/usr/sbin/ip');
const DIST = path.resolve(__dirname, '..', '..', 'dist');

/**
 * Sends DATAGRAMS (to two receiving sockets, in list order) in one sendBatch, `rounds` times,
 * then receives them. Prints one JSON line: what the sender counted and what each receiver got,
 * in order.
 */
const SCRIPT = `
const [dist, gsoArg, spec, roundsArg, groArg, rxCapArg] = process.argv.slice(1);
const rounds = Number(roundsArg);
const rxCap = Number(rxCapArg);
const { openUdpSocket, UdpBatchIo, UDP_GRO_SCRATCH } = require(dist + '/os/udp/udp.js');
const { allocNative } = require(dist + '/os/ffi/mem.js');
const { PacketBatch, SendList, spareFor } = require(dist + '/dataplane/batch.js');
const { Poller } = require(dist + '/os/poll.js');
const LO = 0x7f000001;
const rx = [openUdpSocket({ port: 0, bindIp: LO }), openUdpSocket({ port: 0, bindIp: LO })];
const tx = openUdpSocket({ port: 0, bindIp: LO });
const SLOT = 1536, CAP = 64;
const mk = (cap = CAP, spare = 0) => { const m = allocNative(SLOT * cap + spare); return new PacketBatch(m.buf, SLOT, cap, m.ptr); };
// receivers first: UDP_GRO applies to what is queued after it is set. Receiver 0's GRO landing is
// carved from its batch's block (as the worker's), receiver 1's is its own.
const rxs = rx.map((s, k) => { const b = mk(rxCap, k === 0 ? spareFor(UDP_GRO_SCRATCH) : 0); return { b, rio: new UdpBatchIo(s.fd, b, { gro: groArg === 'true' }) }; });
const out = mk();
const list = new SendList(CAP);
const datagrams = JSON.parse(spec); // [[receiver, length], ...]
datagrams.forEach(([to, len], i) => {
  const off = out.offset(i);
  for (let k = 0; k < len; k++) out.buf[off + k] = (i * 7 + k) & 255;
  out.len[i] = len; out.ip[i] = LO; out.port[i] = rx[to].port;
  list.idx[list.count++] = i;
});
const io = new UdpBatchIo(tx.fd, out, { gso: gsoArg === 'true' });
let sent = 0;
for (let k = 0; k < rounds; k++) sent += io.sendBatch(out, list);
const got = rx.map(() => []);
const gro = [];
rx.forEach((s, r) => {
  const { b, rio } = rxs[r];
  const p = new Poller([s.fd]);
  const want = rounds * datagrams.filter(([to]) => to === r).length;
  const end = Date.now() + 3000;
  while (got[r].length < want && Date.now() < end) {
    // as the worker does: datagrams held back from a full batch are taken without waiting
    if (!rio.pendingRecv && p.wait(100) === 0) continue;
    const n = rio.recvBatch(b);
    for (let i = 0; i < n; i++) {
      const off = b.offset(i), len = b.len[i];
      // which datagram this is: its first byte is (index * 7) & 255, unique for < 37 datagrams
      const index = datagrams.findIndex((_, j) => ((j * 7) & 255) === b.buf[off]);
      let intact = index >= 0 && datagrams[index][1] === len;
      for (let k = 0; intact && k < len; k++) intact = b.buf[off + k] === ((index * 7 + k) & 255);
      got[r].push({ index, len, intact });
    }
  }
  gro.push({ on: rio.gro, coalesced: rio.groCoalesced });
});
console.log(JSON.stringify({ sent, lastErrno: io.lastErrno, gso: io.gso, gsoMessages: io.gsoMessages, gsoSegments: io.gsoSegments, gsoRefused: io.gsoRefused, sendErrors: io.sendErrors, gro, got }));
`;

interface Result {
  sent: number;
  lastErrno: number;
  gso: boolean;
  gsoMessages: number;
  gsoSegments: number;
  gsoRefused: number;
  sendErrors: number;
  gro: { on: boolean; coalesced: number }[];
  got: { index: number; len: number; intact: boolean }[][];
}

/** Receiver and length of each datagram, in send order: runs, a short tail, interleaving. */
const DATAGRAMS: [number, number][] = [
  ...Array.from({ length: 12 }, (): [number, number] => [0, 1400]),
  [0, 900], // ends the run: shorter
  ...Array.from({ length: 5 }, (): [number, number] => [1, 1400]),
  [0, 1400],
  [0, 1400],
  [1, 100],
  [0, 1200],
  [0, 1400], // longer than the run it follows: starts a new one
  [0, 1400],
];

describe.skipIf(!canNetns)('UdpBatchIo with UDP GSO, real kernel', () => {
  const ns = `cnudp-${randomBytes(3).toString('hex')}`;

  beforeAll(async () => {
    await runOk(['ip', 'netns', 'add', ns]);
    await runOk(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
  });

  afterAll(() => {
    runSync(['ip', 'netns', 'del', ns]);
  });

  const run = async (gso: boolean, mtu: number, rounds = 1, rx: { gro?: boolean; cap?: number } = {}): Promise<Result> => {
    await runOk(['ip', '-n', ns, 'link', 'set', 'lo', 'mtu', String(mtu)]);
    const r = await runOk(['ip', 'netns', 'exec', ns, process.execPath, '-e', SCRIPT, DIST, String(gso), JSON.stringify(DATAGRAMS), String(rounds), String(rx.gro ?? false), String(rx.cap ?? 64)], {
      timeoutMs: 20_000,
    });
    return JSON.parse(r.stdout.trim().split('\n').pop()!) as Result;
  };

  /** Every datagram of every round arrived once, intact, at its receiver, in the order it was listed. */
  const expectAllDelivered = (r: Result, rounds = 1): void => {
    for (const to of [0, 1]) {
      const once = DATAGRAMS.map(([t, len], index) => ({ t, index, len })).filter((d) => d.t === to);
      const want = Array.from({ length: rounds }, () => once).flat();
      expect(r.got[to]!.map((g) => g.index)).toEqual(want.map((d) => d.index));
      expect(r.got[to]!.map((g) => g.len)).toEqual(want.map((d) => d.len));
      expect(r.got[to]!.every((g) => g.intact)).toBe(true);
    }
    expect(r.sent).toBe(rounds * DATAGRAMS.length);
    expect(r.sendErrors).toBe(0);
  };

  it('sends runs of equal datagrams to one receiver as GSO messages, and each arrives as its own datagram', async () => {
    const r = await run(true, 65536);
    expectAllDelivered(r);
    // runs: 12+1 (to 0), 5 (to 1), 2 (to 0), then 1200 alone, then 1400 x 2
    expect(r.gsoMessages).toBe(4);
    expect(r.gsoSegments).toBe(13 + 5 + 2 + 2);
    expect(r.gsoRefused).toBe(0);
    expect(r.gso).toBe(true);
  });

  it('without GSO sends the same datagrams one message each', async () => {
    const r = await run(false, 65536);
    expectAllDelivered(r);
    expect(r.gsoMessages).toBe(0);
  });

  it('falls back to one by one when the kernel refuses a run (segments larger than the MTU), losing nothing', async () => {
    // 1400 + 28 > 1280: the kernel refuses the GSO message (EMSGSIZE); plain sends fragment.
    const r = await run(true, 1280);
    expectAllDelivered(r);
    expect(r.gsoRefused).toBe(1); // the first run; the rest of that send went one by one
    expect(r.gsoMessages).toBe(0);
    expect(r.gso).toBe(true);
  });

  it('stops trying GSO on a socket where it was refused GSO_GIVE_UP times and never accepted', async () => {
    const r = await run(true, 1280, GSO_GIVE_UP + 2);
    expectAllDelivered(r, GSO_GIVE_UP + 2);
    expect(r.gsoRefused).toBe(GSO_GIVE_UP);
    expect(r.gso).toBe(false);
  });

  it('receives with UDP GRO: a GSO run arrives as one buffer and is cut into the same datagrams, also across small batches', async () => {
    for (const cap of [64, 4]) {
      const r = await run(true, 65536, 2, { gro: true, cap });
      expectAllDelivered(r, 2);
      expect(r.gro.every((g) => g.on)).toBe(true);
      // at least the 13-datagram run to receiver 0 and the 5-datagram run to receiver 1, each round
      expect(r.gro[0]!.coalesced).toBeGreaterThanOrEqual(2);
      expect(r.gro[1]!.coalesced).toBeGreaterThanOrEqual(2);
    }
  });

  it('receives with UDP GRO from a sender without GSO: every datagram still arrives on its own', async () => {
    const r = await run(false, 65536, 1, { gro: true, cap: 8 });
    expectAllDelivered(r);
  });
});
