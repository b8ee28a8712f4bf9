import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runOk, runSync } from '../../src/testbed/run';

/**
 * The dual-stack UDP socket (src/os/udp/udp.ts, issue 16) against a real kernel, in a fresh
 * namespace whose loopback holds 198.18.0.1, 198.18.0.2, 2001:db8::1 and 2001:db8::2:
 *   - an AF_INET6 socket (the default) takes IPv4 peers (::ffff:a.b.c.d) and IPv6 peers through
 *     one UdpBatchIo, GSO runs included, and reports each source with its upper 96 bits (zero: IPv4);
 *   - an AF_INET socket (what a host without IPv6 gets) still talks IPv4 to the dual-stack one,
 *     and refuses an IPv6 destination (counted, not sent elsewhere);
 *   - sendDatagram / sendDatagramTtl from the control thread reach an IPv6 handle.
 */
const canNetns = process.getuid?.() === 0 && fs.existsSync('/usr/sbin/ip');
const DIST = path.resolve(__dirname, '..', '..', 'dist');

const SCRIPT = `
const dist = process.argv[1];
const { openUdpSocket, UdpBatchIo, sendDatagram, sendDatagramTtl } = require(dist + '/os/udp/udp.js');
const { allocNative } = require(dist + '/os/ffi/mem.js');
const { PacketBatch, SendList } = require(dist + '/dataplane/batch.js');
const { Poller } = require(dist + '/os/poll.js');
const { handleOf } = require(dist + '/util/ipv6.js');
const SLOT = 1536, CAP = 32;
const mk = () => { const m = allocNative(SLOT * CAP); return new PacketBatch(m.buf, SLOT, CAP, m.ptr); };
const A4 = 0xc6120001, B4 = 0xc6120002;   // 198.18.0.1, 198.18.0.2
const V6HI = [0x20010db8, 0, 0];            // 2001:db8::/96; ::1 and ::2 below
const dual = openUdpSocket({ port: 0 });                 // receives everything
const tx6 = openUdpSocket({ port: 0 });                  // dual-stack sender
const tx4 = openUdpSocket({ port: 0, family: 4 });       // IPv4-only sender (no IPv6 on the host)
const rb = mk();
const rio = new UdpBatchIo(dual.fd, rb, { gro: false });
const p = new Poller([dual.fd]);
const recvAll = (want) => {
  const got = [];
  const end = Date.now() + 3000;
  while (got.length < want && Date.now() < end) {
    if (p.wait(100) === 0) continue;
    const n = rio.recvBatch(rb);
    for (let i = 0; i < n; i++) got.push({ ip: rb.ip[i], hi: [rb.hi[3*i], rb.hi[3*i+1], rb.hi[3*i+2]], port: rb.port[i], len: rb.len[i], first: rb.buf[rb.offset(i)] });
  }
  return got;
};
// 1. the dual-stack sender: 6 datagrams of 1000 bytes to 2001:db8::1 (one GSO run), 3 to 198.18.0.1
const out = mk();
const list = new SendList(CAP);
const add = (lo, hi, len, tag) => { const i = list.count; out.len[i] = len; out.ip[i] = lo; out.port[i] = dual.port;
  out.hi[3*i] = hi[0]; out.hi[3*i+1] = hi[1]; out.hi[3*i+2] = hi[2]; out.buf[out.offset(i)] = tag; list.idx[list.count++] = i; };
for (let k = 0; k < 6; k++) add(1, V6HI, 1000, 60 + k);
for (let k = 0; k < 3; k++) add(A4, [0, 0, 0], 1000, 40 + k);
const io6 = new UdpBatchIo(tx6.fd, out, { gso: true });
const sent6 = io6.sendBatch(out, list);
const got6 = recvAll(9);
// 2. the IPv4-only sender: one to 198.18.0.1 (arrives), one to 2001:db8::1 (refused)
const out4 = mk();
const list4 = new SendList(CAP);
out4.len[0] = 100; out4.ip[0] = A4; out4.port[0] = dual.port; out4.buf[out4.offset(0)] = 44; list4.idx[list4.count++] = 0;
out4.len[1] = 100; out4.ip[1] = 1; out4.port[1] = dual.port; out4.hi.set(V6HI, 3); out4.buf[out4.offset(1)] = 64; list4.idx[list4.count++] = 1;
const io4 = new UdpBatchIo(tx4.fd, out4, { gso: false });
const sent4 = io4.sendBatch(out4, list4);
const got4 = recvAll(1);
// 3. the control thread's sends to an IPv6 handle (and the IPv4-only socket refusing one)
const h = handleOf('2001:db8::1');
const ctl = [sendDatagram(tx6.fd, Buffer.from([70, 1, 2]), h, dual.port), sendDatagramTtl(tx6.fd, Buffer.from([71]), h, dual.port, 2),
  sendDatagramTtl(tx6.fd, Buffer.from([72]), A4, dual.port, 2), sendDatagram(tx4.fd, Buffer.from([73]), h, dual.port)];
const gotCtl = recvAll(3);
console.log(JSON.stringify({ families: [dual.family, tx6.family, tx4.family], tx6: tx6.port, tx4: tx4.port, sent6, gso6: [io6.gsoMessages, io6.gsoSegments],
  got6, sent4, sendErrors4: io4.sendErrors, got4, ctl, gotCtl }));
`;

interface Got {
  ip: number;
  hi: number[];
  port: number;
  len: number;
  first: number;
}

describe.skipIf(!canNetns)('dual-stack UDP socket, real kernel', () => {
  const ns = `cnu6-${randomBytes(3).toString('hex')}`;
  let r: {
    families: number[];
    tx6: number;
    tx4: number;
    sent6: number;
    gso6: number[];
    got6: Got[];
    sent4: number;
    sendErrors4: number;
    got4: Got[];
    ctl: boolean[];
    gotCtl: Got[];
  };

  beforeAll(async () => {
    await runOk(['ip', 'netns', 'add', ns]);
    await runOk(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
    for (const a of ['198.18.0.1/32', '198.18.0.2/32']) await runOk(['ip', '-n', ns, 'addr', 'add', a, 'dev', 'lo']);
    for (const a of ['2001:db8::1/128', '2001:db8::2/128']) await runOk(['ip', '-n', ns, '-6', 'addr', 'add', a, 'dev', 'lo', 'nodad']);
    const out = await runOk(['ip', 'netns', 'exec', ns, process.execPath, '-e', SCRIPT, DIST], { timeoutMs: 20_000 });
    r = JSON.parse(out.stdout.trim().split('\n').pop()!) as typeof r;
  });

  afterAll(() => {
    runSync(['ip', 'netns', 'del', ns]);
  });

  it('opens AF_INET6 by default and AF_INET when asked (a host without IPv6)', () => {
    expect(r.families).toEqual([6, 6, 4]);
  });

  it('one socket, one batch: IPv6 and IPv4 (mapped) peers, a GSO run over IPv6, sources with their upper bits', () => {
    expect(r.sent6).toBe(9);
    expect(r.gso6[0]).toBeGreaterThanOrEqual(1); // the six IPv6 datagrams went as GSO run(s)
    const v6 = r.got6.filter((g) => g.first >= 60);
    const v4 = r.got6.filter((g) => g.first < 60);
    expect(v6.map((g) => g.first).sort()).toEqual([60, 61, 62, 63, 64, 65]);
    expect(v4.map((g) => g.first).sort()).toEqual([40, 41, 42]);
    // the kernel picks the source: 2001:db8::1 for the IPv6 ones (to itself), 198.18.0.1 for IPv4
    for (const g of v6) expect(g).toMatchObject({ hi: [0x20010db8, 0, 0], ip: 1, port: r.tx6, len: 1000 });
    for (const g of v4) expect(g).toMatchObject({ hi: [0, 0, 0], ip: 0xc6120001, port: r.tx6, len: 1000 });
  });

  it('an IPv4-only socket talks IPv4 to the dual-stack one and refuses an IPv6 destination', () => {
    expect(r.sent4).toBe(1);
    expect(r.sendErrors4).toBe(1);
    expect(r.got4).toEqual([{ ip: 0xc6120001, hi: [0, 0, 0], port: r.tx4, len: 100, first: 44 }]);
  });

  it('the control thread sends to an IPv6 handle (plain and hop-limited) and to IPv4 with a TTL; IPv4-only refuses the handle', () => {
    expect(r.ctl).toEqual([true, true, true, false]);
    expect(r.gotCtl.map((g) => g.first).sort()).toEqual([70, 71, 72]);
    expect(r.gotCtl.find((g) => g.first === 70)).toMatchObject({ hi: [0x20010db8, 0, 0], ip: 1, len: 3 });
  });
});
