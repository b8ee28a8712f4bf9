import { describe, expect, it } from 'vitest';
import { candidateAddresses, nameHint, pickAddress } from '../../src/control/leases';
import { formatIpv4, parseIpv4, parsePrefix } from '../../src/util/ipv4';

const P29 = parsePrefix('100.64.0.0/29')!; // usable .1 .. .6
const ip = (s: string) => parseIpv4(s)!;

describe('candidateAddresses', () => {
  it('skips network and broadcast addresses', () => {
    expect(candidateAddresses(P29)).toEqual({ first: ip('100.64.0.1'), last: ip('100.64.0.6'), count: 6 });
    expect(candidateAddresses(parsePrefix('10.0.0.0/30')!)).toEqual({ first: ip('10.0.0.1'), last: ip('10.0.0.2'), count: 2 });
    const big = candidateAddresses(parsePrefix('10.0.0.0/8')!);
    expect([formatIpv4(big.first), formatIpv4(big.last), big.count]).toEqual(['10.0.0.1', '10.255.255.254', 2 ** 24 - 2]);
  });

  it('refuses prefixes without host addresses', () => {
    expect(() => candidateAddresses(parsePrefix('10.0.0.0/31')!)).toThrow(/no host addresses/);
  });
});

describe('pickAddress', () => {
  it('starts at the hint (mod the usable count)', () => {
    expect(formatIpv4(pickAddress(P29, new Set(), 0)!)).toBe('100.64.0.1');
    expect(formatIpv4(pickAddress(P29, new Set(), 5)!)).toBe('100.64.0.6');
    expect(formatIpv4(pickAddress(P29, new Set(), 6)!)).toBe('100.64.0.1');
    expect(formatIpv4(pickAddress(P29, new Set(), 6 * 1000 + 2)!)).toBe('100.64.0.3');
  });

  it('walks forward past taken addresses and wraps', () => {
    const taken = new Set([ip('100.64.0.5'), ip('100.64.0.6')]);
    expect(formatIpv4(pickAddress(P29, taken, 4)!)).toBe('100.64.0.1');
    taken.add(ip('100.64.0.1'));
    expect(formatIpv4(pickAddress(P29, taken, 4)!)).toBe('100.64.0.2');
  });

  it('never returns the network or broadcast address, whatever the hint', () => {
    for (let hint = 0; hint < 50; hint++) {
      const a = pickAddress(P29, new Set(), hint * 0x9e3779b1)!;
      expect(a).toBeGreaterThanOrEqual(ip('100.64.0.1'));
      expect(a).toBeLessThanOrEqual(ip('100.64.0.6'));
    }
  });

  it('returns null when every usable address is taken (network/broadcast leases do not count)', () => {
    const taken = new Set<number>();
    for (let i = 1; i <= 6; i++) taken.add(ip(`100.64.0.${i}`));
    expect(pickAddress(P29, taken, 3)).toBeNull();
    taken.delete(ip('100.64.0.4'));
    taken.add(ip('100.64.0.0')).add(ip('100.64.0.7')).add(ip('10.0.0.1'));
    expect(formatIpv4(pickAddress(P29, taken, 0)!)).toBe('100.64.0.4');
  });

  it('handing out one address per host fills a /29 exactly, all distinct', () => {
    const taken = new Set<number>();
    for (const name of ['a', 'b', 'c', 'd', 'e', 'f']) {
      const a = pickAddress(P29, taken, nameHint(name));
      expect(a).not.toBeNull();
      expect(taken.has(a!)).toBe(false);
      taken.add(a!);
    }
    expect(pickAddress(P29, taken, nameHint('g'))).toBeNull();
  });
});

describe('nameHint', () => {
  it('is a stable 32-bit FNV-1a', () => {
    expect(nameHint('')).toBe(0x811c9dc5);
    expect(nameHint('a')).toBe(0xe40c292c);
    expect(nameHint('foobar')).toBe(0xbf9cf968);
  });

  it('spreads eight similar names over a /24 with few collisions', () => {
    const p = parsePrefix('100.64.0.0/24')!;
    const starts = new Set(Array.from({ length: 8 }, (_, i) => pickAddress(p, new Set(), nameHint(`node-${i + 1}`))));
    expect(starts.size).toBeGreaterThanOrEqual(7);
  });
});
