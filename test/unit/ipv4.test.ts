import { describe, expect, it } from 'vitest';
import { isCladnetError, type CladnetError } from '../../src/errors';
import {
  contains,
  formatEndpoint,
  formatIpv4,
  formatPrefix,
  maskOf,
  OVERLAY_ALLOWED,
  overlaps,
  parseEndpoint,
  parseIpv4,
  parseOverlayCidr,
  parsePrefix,
  prefixSize,
} from '../../src/util/ipv4';

const P = (s: string) => parsePrefix(s, true)!;

describe('parseIpv4 / formatIpv4', () => {
  it.each([
    ['0.0.0.0', 0],
    ['255.255.255.255', 0xffffffff],
    ['10.0.0.1', 0x0a000001],
    ['100.64.0.5', 0x64400005],
    ['192.168.1.254', 0xc0a801fe],
    ['128.0.0.0', 0x80000000],
  ])('%s <-> %d', (s, v) => {
    expect(parseIpv4(s)).toBe(v);
    expect(formatIpv4(v)).toBe(s);
  });

  it('round-trips across the space', () => {
    for (let v = 0; v < 2 ** 32; v += 0x01010101 * 3 + 17) expect(parseIpv4(formatIpv4(v))).toBe(v);
  });

  it.each(['010.0.0.1', '10.00.0.1', '10.0.0.01', '1.2.3.004', '00.0.0.0'])('refuses octal-looking octets: %s', (s) => {
    expect(parseIpv4(s)).toBeNull();
  });

  it.each(['', '1.2.3', '1.2.3.4.5', '256.0.0.1', '1.2.3.256', '1.2.3.-1', 'a.b.c.d', ' 1.2.3.4', '1.2.3.4 ', '1.2.3.4/32', '1..2.3', '1.2.3.1000', '0x1.2.3.4'])(
    'refuses %j',
    (s) => {
      expect(parseIpv4(s)).toBeNull();
    },
  );

  it('accepts a lone 0 octet', () => {
    expect(parseIpv4('10.0.0.0')).toBe(0x0a000000);
  });
});

describe('prefixes', () => {
  it('maskOf covers 0..32', () => {
    expect(maskOf(0)).toBe(0);
    expect(maskOf(1)).toBe(0x80000000);
    expect(maskOf(8)).toBe(0xff000000);
    expect(maskOf(24)).toBe(0xffffff00);
    expect(maskOf(31)).toBe(0xfffffffe);
    expect(maskOf(32)).toBe(0xffffffff);
  });

  it('parsePrefix strict accepts aligned prefixes and refuses host bits', () => {
    expect(parsePrefix('10.1.0.0/16')).toEqual({ base: 0x0a010000, len: 16 });
    expect(parsePrefix('0.0.0.0/0')).toEqual({ base: 0, len: 0 });
    expect(parsePrefix('1.2.3.4/32')).toEqual({ base: 0x01020304, len: 32 });
    expect(parsePrefix('10.1.2.3/16')).toBeNull();
    expect(parsePrefix('10.1.2.3/16', true)).toBeNull();
  });

  it('parsePrefix loose masks the host bits away', () => {
    expect(parsePrefix('10.1.2.3/16', false)).toEqual({ base: 0x0a010000, len: 16 });
    expect(parsePrefix('255.255.255.255/1', false)).toEqual({ base: 0x80000000, len: 1 });
    expect(parsePrefix('9.9.9.9/0', false)).toEqual({ base: 0, len: 0 });
  });

  it.each(['10.0.0.0', '10.0.0.0/', '10.0.0.0/33', '10.0.0.0/-1', '10.0.0.0/1a', '10.0.0.0/100', '/8', '10.0.0/8', '010.0.0.0/8', '10.0.0.0/8/8'])(
    'parsePrefix refuses %j in both modes',
    (s) => {
      expect(parsePrefix(s, true)).toBeNull();
      expect(parsePrefix(s, false)).toBeNull();
    },
  );

  it('formatPrefix, prefixSize, contains', () => {
    expect(formatPrefix(P('172.16.0.0/12'))).toBe('172.16.0.0/12');
    expect(prefixSize(P('10.0.0.0/24'))).toBe(256);
    expect(prefixSize(P('0.0.0.0/0'))).toBe(2 ** 32);
    expect(prefixSize(P('1.2.3.4/32'))).toBe(1);
    expect(contains(P('10.0.0.0/8'), parseIpv4('10.255.255.255')!)).toBe(true);
    expect(contains(P('10.0.0.0/8'), parseIpv4('11.0.0.0')!)).toBe(false);
    expect(contains(P('0.0.0.0/0'), 0xffffffff)).toBe(true);
    expect(contains(P('128.0.0.0/1'), 0xffffffff)).toBe(true);
    expect(contains(P('128.0.0.0/1'), 0x7fffffff)).toBe(false);
  });

  it.each([
    ['10.0.0.0/8', '10.1.0.0/16', true],
    ['10.1.0.0/16', '10.0.0.0/8', true],
    ['10.0.0.0/24', '10.0.0.0/24', true],
    ['10.0.0.0/24', '10.0.1.0/24', false],
    ['10.0.0.0/23', '10.0.1.0/24', true],
    ['0.0.0.0/0', '192.168.1.1/32', true],
    ['192.168.0.0/16', '192.169.0.0/16', false],
    ['128.0.0.0/1', '127.0.0.0/8', false],
    ['128.0.0.0/1', '255.0.0.0/8', true],
  ])('overlaps(%s, %s) = %s', (a, b, want) => {
    expect(overlaps(P(a), P(b))).toBe(want);
    expect(overlaps(P(b), P(a))).toBe(want);
  });
});

describe('parseOverlayCidr', () => {
  function err(s: string, field?: string): CladnetError {
    try {
      parseOverlayCidr(s, field);
    } catch (e) {
      expect(isCladnetError(e, 'ECIDR')).toBe(true);
      return e as CladnetError;
    }
    expect.unreachable(`${s} should be refused`);
  }

  it.each(['10.0.0.0/8', '100.64.0.0/10', '100.64.0.0/24', '172.16.0.0/12', '172.31.255.0/24', '192.168.0.0/16', '10.255.255.252/30'])(
    'accepts %s',
    (s) => {
      expect(formatPrefix(parseOverlayCidr(s))).toBe(s);
    },
  );

  it('lists exactly the private and CGNAT ranges', () => {
    expect(OVERLAY_ALLOWED.map(formatPrefix)).toEqual(['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '100.64.0.0/10']);
  });

  it.each([
    ['8.8.8.0/24', 'cidr: 8.8.8.0/24 is not inside a private (10/8, 172.16/12, 192.168/16) or CGNAT (100.64/10) range'],
    ['172.32.0.0/16', 'cidr: 172.32.0.0/16 is not inside a private (10/8, 172.16/12, 192.168/16) or CGNAT (100.64/10) range'],
    ['100.128.0.0/16', 'cidr: 100.128.0.0/16 is not inside a private (10/8, 172.16/12, 192.168/16) or CGNAT (100.64/10) range'],
    ['100.0.0.0/9', 'cidr: 100.0.0.0/9 is not inside a private (10/8, 172.16/12, 192.168/16) or CGNAT (100.64/10) range'],
    ['172.0.0.0/11', 'cidr: 172.0.0.0/11 is not inside a private (10/8, 172.16/12, 192.168/16) or CGNAT (100.64/10) range'],
    ['10.0.0.1/24', 'cidr: "10.0.0.1/24" is not a valid IPv4 CIDR: host bits are set (did you mean 10.0.0.0/24?)'],
    ['100.64.1.0/16', 'cidr: "100.64.1.0/16" is not a valid IPv4 CIDR: host bits are set (did you mean 100.64.0.0/16?)'],
    ['10.0.0.0/31', 'cidr: prefix length /31 must be between /8 and /30'],
    ['10.0.0.0/32', 'cidr: prefix length /32 must be between /8 and /30'],
    ['0.0.0.0/0', 'cidr: prefix length /0 must be between /8 and /30'],
    ['10.0.0.0/7', 'cidr: prefix length /7 must be between /8 and /30'],
    ['10.0.0.0', 'cidr: "10.0.0.0" is not a valid IPv4 CIDR: expected a.b.c.d/len'],
    ['10.0.0.0/33', 'cidr: "10.0.0.0/33" is not a valid IPv4 CIDR: expected a.b.c.d/len'],
    ['nonsense', 'cidr: "nonsense" is not a valid IPv4 CIDR: expected a.b.c.d/len'],
  ])('refuses %s: %s', (s, message) => {
    const e = err(s);
    expect(e.message).toBe(message);
    expect(e.field).toBe('cidr');
    expect(e.transient).toBe(false);
  });

  it('names the field it was given', () => {
    const e = err('8.8.8.0/24', 'network.cidr');
    expect(e.field).toBe('network.cidr');
    expect(e.message).toMatch(/^network\.cidr: /);
  });
});

describe('parseEndpoint / formatEndpoint', () => {
  it.each([
    ['198.18.1.2:51820', 0xc6120102, 51820],
    ['0.0.0.0:1', 0, 1],
    ['255.255.255.255:65535', 0xffffffff, 65535],
  ])('%s', (s, ipv, port) => {
    expect(parseEndpoint(s)).toEqual({ ip: ipv, port });
    expect(formatEndpoint(ipv, port)).toBe(s);
  });

  it.each(['198.18.1.2', '198.18.1.2:', '198.18.1.2:0', '198.18.1.2:65536', '198.18.1.2:123456', '198.18.1.2:-1', '198.18.1.2:1a', ':51820', '198.18.1:51820', '[::1]:51820', 'host:51820', '01.2.3.4:5'])(
    'refuses %j',
    (s) => {
      expect(parseEndpoint(s)).toBeNull();
    },
  );
});
