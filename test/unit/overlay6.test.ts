import { describe, expect, it } from 'vitest';
import { formatPrefix6, hostIp6, hostIp6Text, ipv4Twin, overlay6Of, overlayPrefix6, twinText } from '../../src/control/overlay6';
import { planLink, type LinkState } from '../../src/os/routes/routes';
import { formatIpv4, parseIpv4 } from '../../src/util/ipv4';
import { formatIpv6, parseIpv6 } from '../../src/util/ipv6';
import { rng } from '../helpers/rng';

const SPEC = { name: 'demo', created: '2026-12-02T00:00:00.000Z', trustAnchor: Buffer.alloc(32, 7).toString('base64') };

describe('IPv6 overlay addresses (control/overlay6.ts)', () => {
  it('the prefix is a ULA /48 (fd00::/8) that depends only on the signed identity of the network', () => {
    const p = overlayPrefix6(SPEC);
    expect(p.length).toBe(6);
    expect(p[0]).toBe(0xfd);
    expect(overlayPrefix6({ ...SPEC })).toEqual(p); // deterministic
    expect(formatPrefix6(p)).toMatch(/^fd[0-9a-f]{2}:[0-9a-f]{1,4}:[0-9a-f]{1,4}::\/48$/);
    // another network, another creation time or another network key: another prefix
    const others = [{ ...SPEC, name: 'demo2' }, { ...SPEC, created: '2026-12-02T00:00:00.001Z' }, { ...SPEC, trustAnchor: undefined }];
    for (const o of others) expect(Buffer.from(overlayPrefix6(o))).not.toEqual(Buffer.from(p));
    // the same from a full spec: cidr, mtu and port (which a re-signed spec may change) do not move it
    expect(overlayPrefix6({ ...SPEC, cidr: '100.64.0.0/10', mtu: 1280, port: 1 } as typeof SPEC)).toEqual(p);
  });

  it('each host address is inside the prefix, carries its IPv4 overlay address in its last 32 bits, and is distinct per host', () => {
    const p = overlayPrefix6(SPEC);
    const seen = new Set<string>();
    const r = rng(6);
    for (let i = 0; i < 2000; i++) {
      const v4 = (parseIpv4('100.64.0.0')! + Math.floor(r() * 2 ** 22)) >>> 0;
      const a = hostIp6(p, v4);
      expect(Buffer.from(a.subarray(0, 6))).toEqual(Buffer.from(p));
      expect(Buffer.from(a.subarray(6, 12))).toEqual(Buffer.alloc(6));
      expect(ipv4Twin(p, a)).toBe(v4);
      seen.add(`${formatIpv4(v4)} ${formatIpv6(a)}`);
    }
    const byV6 = new Map<string, string>();
    for (const s of seen) {
      const [v4, v6] = s.split(' ') as [string, string];
      expect(byV6.get(v6) ?? v4).toBe(v4);
      byV6.set(v6, v4);
    }
    const text = hostIp6Text(p, '100.64.0.5')!;
    expect(text.endsWith('::6440:5')).toBe(true);
    expect(twinText(p, text)).toBe('100.64.0.5');
    expect(hostIp6Text(p, 'not-an-ip')).toBeNull();
    // not overlay addresses of this network: another prefix, or non-zero bits between prefix and twin
    const other = hostIp6(overlayPrefix6({ ...SPEC, name: 'x' }), parseIpv4('100.64.0.5')!);
    expect(ipv4Twin(p, other)).toBeNull();
    const mid = hostIp6(p, parseIpv4('100.64.0.5')!);
    mid[9] = 1;
    expect(ipv4Twin(p, mid)).toBeNull();
    expect(overlay6Of(p)).toEqual({ hi: Buffer.from(p).readUInt32BE(0), mid: Buffer.from(p).readUInt16BE(4) });
  });

  it('IPv6 text: RFC 5952 formatting, and parsing that accepts "::" and a dotted tail and refuses the malformed', () => {
    const cases: [string, string][] = [
      ['fd12:3456:789a:0:0:0:6440:5', 'fd12:3456:789a::6440:5'],
      ['FD12:3456:789A::6440:0005', 'fd12:3456:789a::6440:5'],
      ['fd00::100.64.0.5', 'fd00::6440:5'],
      ['::', '::'],
      ['::1', '::1'],
      ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'], // the first of two equal runs
      ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'], // one zero group stays
      ['1:0:0:2:0:0:0:3', '1:0:0:2::3'], // the longest run
    ];
    for (const [input, text] of cases) expect(formatIpv6(parseIpv6(input)!), input).toBe(text);
    for (const bad of ['', ':', '1:2:3:4:5:6:7', '1:2:3:4:5:6:7:8:9', '1::2::3', 'fd00::1.2.3', 'g::1', '12345::1', 'fd00::1/48', '1:2:3:4:5:6:7:8::']) {
      expect(parseIpv6(bad), bad).toBeNull();
    }
  });

  it('the link plan compares IPv6 addresses in any spelling with what `ip -j` prints (nothing to do when they match)', () => {
    const current: LinkState = { exists: true, up: true, mtu: 1420, addresses: ['100.64.0.5/24', 'fd12:3456:789a::6440:5/48'], routes: [] };
    const desired = { ifname: 'cladnet0', mtu: 1420, addresses: ['100.64.0.5/24', 'FD12:3456:789a:0:0:0:6440:0005/48'], routes: [] };
    expect(planLink(current, desired)).toEqual([]);
    const fresh: LinkState = { exists: true, up: false, mtu: 1420, addresses: ['100.64.0.5/24'], routes: [] };
    expect(planLink(fresh, { ...desired, addresses: ['100.64.0.5/24', 'fd12:3456:789a::6440:5/48'] })).toEqual([
      ['ip', 'address', 'add', 'fd12:3456:789a::6440:5/48', 'dev', 'cladnet0'],
      ['ip', 'link', 'set', 'dev', 'cladnet0', 'up'],
    ]);
  });
});
