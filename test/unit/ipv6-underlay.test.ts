/**
 * Issue 16, the IPv6 underlay, without a kernel: address text (src/util/ipv6.ts), the handles that
 * keep endpoints numbers on the control thread, a record's IPv6 candidates (src/agent/candidates.ts,
 * src/control/records.ts), the path choice between an IPv6 direct path and a relay, and the data
 * plane carrying an IPv6 peer address (PacketBatch.hi) from receive to send.
 */
import { describe, expect, it } from 'vitest';
import { ownCandidates6, recordCandidates } from '../../src/agent/candidates';
import { PathManager, PATH_DEAD_MS, RELAY_AFTER_MS, describeEndpoint, type Endpoint } from '../../src/agent/paths';
import { parseHostRecord, serializeHostRecord, type HostRecord } from '../../src/control/records';
import { addrKey } from '../../src/dataplane/peer';
import { formatEndpoint, parseEndpoint, parseEndpoint6, parseIpv4 } from '../../src/util/ipv4';
import {
  formatIpv6Words,
  handleOf,
  intern6,
  ipv6InPrefix,
  ipv6Words,
  isHandle,
  isUsableIpv6,
  joinAddress,
  splitAddress,
  words6,
} from '../../src/util/ipv6';

describe('IPv6 text', () => {
  it.each([
    ['2001:db8::1', [0x20010db8, 0, 0, 1]],
    ['2001:0DB8:0000:0000:0000:0000:0000:0001', [0x20010db8, 0, 0, 1]],
    ['::', [0, 0, 0, 0]],
    ['::1', [0, 0, 0, 1]],
    ['fd00::', [0xfd000000, 0, 0, 0]],
    ['2001:db8:1:2::2', [0x20010db8, 0x00010002, 0, 2]],
    ['::ffff:198.18.0.1', [0, 0, 0xffff, 0xc6120001]],
    ['2001:db8:0:0:1:0:0:1', [0x20010db8, 0, 0x00010000, 1]],
  ])('parses %s', (s, w) => {
    expect(ipv6Words(s)).toEqual(w);
  });

  it.each(['', ':', '1:2:3:4:5:6:7', '1:2:3:4:5:6:7:8:9', '2001:db8::1::2', '2001:db8:::1', 'g::1', '12345::1', '::198.18.0.256', '1.2.3.4', '::01.2.3.4'])(
    'refuses %j',
    (s) => {
      expect(ipv6Words(s)).toBeNull();
    },
  );

  it.each([
    ['2001:0db8:0000:0000:0000:0000:0000:0001', '2001:db8::1'],
    ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'], // the first of two equal runs
    ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'], // one zero group stays
    ['0:0:0:0:0:0:0:0', '::'],
    ['FD00:0:0:0:0:0:0:A', 'fd00::a'],
  ])('formats %s as %s (RFC 5952)', (s, want) => {
    expect(formatIpv6Words(ipv6Words(s)!)).toBe(want);
  });

  it('usable underlay addresses: global and unique-local, never link-local, loopback, multicast or v4-mapped', () => {
    const u = (s: string) => isUsableIpv6(ipv6Words(s)!);
    expect(u('2001:db8::1')).toBe(true);
    expect(u('fd00::1')).toBe(true);
    for (const s of ['fe80::1', 'febf::1', 'ff02::1', '::1', '::', '::ffff:198.18.0.1', '::198.18.0.1']) expect(u(s)).toBe(false);
  });

  it('prefix match', () => {
    const base = ipv6Words('2001:db8:2:1::')!;
    expect(ipv6InPrefix(ipv6Words('2001:db8:2:1::9')!, base, 64)).toBe(true);
    expect(ipv6InPrefix(ipv6Words('2001:db8:2:2::9')!, base, 64)).toBe(false);
    expect(ipv6InPrefix(ipv6Words('2001:db8:2:2::9')!, base, 48)).toBe(true);
  });
});

describe('IPv6 endpoints as handles', () => {
  it('one address, one handle; never an IPv4 address; round trip to words and text', () => {
    const h = handleOf('2001:db8::1')!;
    expect(isHandle(h)).toBe(true);
    expect(handleOf('2001:0db8:0::1')).toBe(h);
    expect(handleOf('2001:db8::2')).not.toBe(h);
    expect(words6(h)).toEqual([0x20010db8, 0, 0, 1]);
    expect(formatEndpoint(h, 51820)).toBe('[2001:db8::1]:51820');
    expect(parseEndpoint6('[2001:db8::1]:51820')).toEqual({ ip: h, port: 51820 });
    // IPv4 endpoints are untouched
    const v4 = parseIpv4('198.18.1.2')!;
    expect(isHandle(v4)).toBe(false);
    expect(words6(v4)).toBeNull();
    expect(formatEndpoint(v4, 51820)).toBe('198.18.1.2:51820');
  });

  it('splitAddress / joinAddress: what crosses to the data plane (hi all zero for IPv4)', () => {
    const h = handleOf('2001:db8:1:2::2')!;
    const a = splitAddress(h);
    expect(a).toEqual({ lo: 2, hi: [0x20010db8, 0x00010002, 0] });
    expect(joinAddress(a.lo, ...a.hi)).toBe(h);
    const v4 = parseIpv4('198.18.1.2')!;
    expect(splitAddress(v4)).toEqual({ lo: v4, hi: [0, 0, 0] });
    expect(joinAddress(v4, 0, 0, 0)).toBe(v4);
    expect(intern6([0x20010db8, 0x00010002, 0, 2])).toBe(h);
  });

  it.each(['[fe80::1]:51820', '[ff02::1]:51820', '[::1]:51820', '[::ffff:198.18.0.1]:51820', '[2001:db8::1]:0', '[2001:db8::1]:65536', '2001:db8::1:51820', '[2001:db8::1]', '[zz::1]:5'])(
    'parseEndpoint6 refuses %j',
    (s) => {
      expect(parseEndpoint6(s)).toBeNull();
    },
  );

  it('the IPv4 parser still takes only IPv4 (records and config stay as they were)', () => {
    expect(parseEndpoint('[2001:db8::1]:51820')).toBeNull();
  });

  it('flood-limit keys: IPv4 keeps its address, IPv6 gets a hash of all 128 bits', () => {
    const v4 = parseIpv4('198.18.1.2')!;
    expect(addrKey(v4, null)).toBe(v4 | 0);
    expect(addrKey(v4, new Uint32Array(3))).toBe(v4 | 0);
    const k1 = addrKey(2, Uint32Array.of(0x20010db8, 0x00010002, 0));
    const k2 = addrKey(2, Uint32Array.of(0x20010db8, 0x00010003, 0));
    expect(k1).not.toBe(k2);
    expect(k1).not.toBe(2);
  });
});

describe('IPv6 candidates in host records', () => {
  const KEY = Buffer.alloc(32, 7).toString('base64');
  const base: HostRecord = {
    version: 1,
    name: 'a',
    network: 'demo',
    overlayIp: '100.64.0.5',
    publicKey: KEY,
    endpoints: ['198.18.1.2:51820'],
    hostCidrs: ['198.18.1.0/24'],
    listenPort: 51820,
    epoch: 3,
    updated: '2026-11-21T01:02:03.456Z',
    session: '0123456789abcdef',
  };

  it('an old record without endpoints6 parses as before', () => {
    const r = parseHostRecord(serializeHostRecord(base));
    expect(r.ok).toBe(true);
    if (r.ok) expect(r.value.endpoints6).toBeUndefined();
  });

  it('endpoints6 survives a round trip', () => {
    const rec = { ...base, endpoints6: ['[2001:db8:1:1::2]:51820'] };
    const r = parseHostRecord(serializeHostRecord(rec));
    expect(r.ok && r.value.endpoints6).toEqual(['[2001:db8:1:1::2]:51820']);
  });

  it('a malformed endpoints6 field (not an array of strings) fails the record, naming the field', () => {
    const bad = (v: unknown) => parseHostRecord(JSON.stringify({ ...base, endpoints6: v }));
    for (const v of ['[2001:db8::1]:51820', [7], ['x'.repeat(60)]]) {
      const r = bad(v);
      expect(r.ok).toBe(false);
      if (!r.ok) expect(r.error).toMatch(/^endpoints6/);
    }
  });

  it('forged or garbled IPv6 candidates are skipped and named; the good ones and the IPv4 ones stay', () => {
    const rec = {
      ...base,
      endpoints6: ['[2001:db8:1:1::2]:51820', 'garbage', '[fe80::1]:51820', '[::ffff:198.18.0.1]:51820', '[ff02::1]:51820', '[2001:db8::9]:0'],
    };
    const r = parseHostRecord(JSON.stringify(rec));
    expect(r.ok).toBe(true);
    const c = recordCandidates(r.ok ? r.value : rec);
    expect(c.all.map((e) => describeEndpoint(e))).toEqual(['198.18.1.2:51820', '[2001:db8:1:1::2]:51820']);
    expect(c.skipped).toEqual(['garbage', '[fe80::1]:51820', '[::ffff:198.18.0.1]:51820', '[ff02::1]:51820', '[2001:db8::9]:0']);
  });

  it('an IPv6-only record has candidates (a usable peer)', () => {
    expect(recordCandidates({ endpoints: [], endpoints6: ['[2001:db8:1:1::2]:51820'] }).all).toHaveLength(1);
  });

  it('our own IPv6 candidates: global and unique-local, not link-local, not excluded', () => {
    const addrs = [
      { ifname: 'eth0', address: '2001:db8:1:1::2', prefixLen: 64 },
      { ifname: 'eth0', address: 'fe80::1', prefixLen: 64 },
      { ifname: 'eth1', address: 'fd12:3456::7', prefixLen: 64 },
      { ifname: 'eth1', address: 'fd00:ab::1', prefixLen: 64 },
    ];
    expect(ownCandidates6(addrs, 51820, (a) => a === 'fd00:ab::1')).toEqual(['[2001:db8:1:1::2]:51820', '[fd12:3456::7]:51820']);
  });
});

describe('path choice with an IPv6 candidate', () => {
  const v4 = (s: string): Endpoint => {
    const [a, p] = s.split(':');
    return { ip: parseIpv4(a!)!, port: Number(p) };
  };

  it('a live IPv6 direct path beats the relay the IPv4 candidates left us on', () => {
    let now = 1_700_000_000_000;
    const pm = new PathManager({ now: () => now, isLocal: () => false });
    const sessions = new Set(['r', 'b']);
    const tick = () => pm.tick((n) => sessions.has(n));
    // r: a relay we reach directly
    const R = v4('198.18.9.2:51820');
    pm.setPeer('r', [R], true);
    pm.onHandshake('r', R);
    pm.onPong('r', R, 5);
    // b: its IPv4 candidate never answers (behind a NAT), its IPv6 one does not answer yet
    const B4 = v4('198.18.5.2:51820');
    const B6 = parseEndpoint6('[2001:db8:2:1::2]:51820')!;
    pm.setPeer('b', [B4, B6], false);
    tick();
    for (let t = 0; t <= RELAY_AFTER_MS; t += 500) {
      now += 500;
      pm.onPong('r', R, 5);
      tick();
    }
    expect(pm.state('b')).toMatchObject({ kind: 'relayed' });
    // the IPv6 probe answers: direct IPv6 it is
    now += 100;
    pm.onPong('b', B6, 3);
    const a = tick();
    expect(a.moves).toEqual([{ name: 'b', endpoint: B6 }]);
    expect(pm.state('b')).toMatchObject({ kind: 'direct', scope: 'public' });
    expect(describeEndpoint(pm.current('b'))).toBe('[2001:db8:2:1::2]:51820');
    // and it stays while it answers
    for (let t = 0; t < 3 * PATH_DEAD_MS; t += 1_000) {
      now += 1_000;
      pm.onPong('b', B6, 3);
      pm.onPong('r', R, 5);
      tick();
    }
    expect(describeEndpoint(pm.current('b'))).toBe('[2001:db8:2:1::2]:51820');
  });

  it('two live direct paths, IPv4 and IPv6, of the same rank: the working one stays (no move for a faster one); the other takes over when it dies', () => {
    let now = 1_700_000_000_000;
    const pm = new PathManager({ now: () => now, isLocal: () => false });
    const tick = () => pm.tick(() => true);
    const B4 = v4('198.18.5.2:51820');
    const B6 = parseEndpoint6('[2001:db8:2:1::3]:51820')!;
    pm.setPeer('b', [B4, B6], false);
    pm.onHandshake('b', B4);
    pm.onPong('b', B4, 9);
    tick();
    expect(pm.current('b')).toEqual(B4);
    // IPv6 answers faster: same rank (both public), so no move off the working IPv4 path
    for (let t = 0; t < 5_000; t += 1_000) {
      now += 1_000;
      pm.onPong('b', B4, 9);
      pm.onPong('b', B6, 2);
      tick();
    }
    expect(pm.current('b')).toEqual(B4);
    // IPv4 goes quiet: the live IPv6 path takes over
    for (let t = 0; t <= PATH_DEAD_MS + 1_000; t += 1_000) {
      now += 1_000;
      pm.onPong('b', B6, 2);
      tick();
    }
    expect(pm.current('b')).toEqual(B6);
    expect(pm.state('b').kind).toBe('direct');
  });
});
