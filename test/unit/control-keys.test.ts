import { describe, expect, it } from 'vitest';
import { isCladnetError } from '../../src/errors';
import {
  aliveKey,
  checkName,
  hostKey,
  issuedKey,
  isValidName,
  leaseKey,
  networkKey,
  networkPrefix,
  parseKey,
  viewKey,
  viewsPrefix,
} from '../../src/control/keys';

describe('name validation', () => {
  it.each(['a', '0', 'demo', 'a-b', 'web-01', 'x'.repeat(63), '9lives'])('accepts %s', (n) => {
    expect(isValidName(n)).toBe(true);
  });

  it.each(['', '-a', 'a-', 'A', 'a_b', 'a.b', 'a/b', 'x'.repeat(64), ' a', 'a ', 'é'])('refuses %j', (n) => {
    expect(isValidName(n)).toBe(false);
  });

  it('refuses non-strings', () => {
    expect(isValidName(7)).toBe(false);
    expect(isValidName(null)).toBe(false);
  });

  it('checkName throws ECONFIG naming the field', () => {
    expect(checkName('ok', 'host')).toBe('ok');
    try {
      checkName('Bad/Name', 'host');
      expect.unreachable();
    } catch (e) {
      expect(isCladnetError(e, 'ECONFIG')).toBe(true);
      expect((e as Error).message).toMatch(/^host: "Bad\/Name" is not a valid name/);
      expect((e as { field?: string }).field).toBe('host');
    }
  });
});

describe('key builders', () => {
  it('build the fixed layout', () => {
    expect(networkKey('demo')).toBe('/cladnet/v1/networks/demo');
    expect(networkPrefix('demo')).toBe('/cladnet/v1/networks/demo/');
    expect(hostKey('demo', 'a')).toBe('/cladnet/v1/networks/demo/hosts/a');
    expect(leaseKey('demo', '100.64.0.1')).toBe('/cladnet/v1/networks/demo/leases/100.64.0.1');
    expect(aliveKey('demo', 'a')).toBe('/cladnet/v1/networks/demo/alive/a');
  });

  it('refuse names and ips that would address other keys', () => {
    expect(() => networkKey('demo/hosts')).toThrow(/network: /);
    expect(() => hostKey('demo', '../x')).toThrow(/host: /);
    expect(() => leaseKey('demo', '100.64.0.1/32')).toThrow(/ip: /);
    expect(() => leaseKey('demo', '100.64.00.1')).toThrow(/ip: /);
  });
});

describe('parseKey', () => {
  it('classifies each kind', () => {
    expect(parseKey('/cladnet/v1/networks/demo')).toEqual({ kind: 'network', network: 'demo' });
    expect(parseKey(Buffer.from('/cladnet/v1/networks/demo/hosts/a'))).toEqual({ kind: 'host', network: 'demo', name: 'a' });
    expect(parseKey('/cladnet/v1/networks/demo/alive/b')).toEqual({ kind: 'alive', network: 'demo', name: 'b' });
    expect(parseKey('/cladnet/v1/networks/demo/leases/100.64.0.9')).toEqual({ kind: 'lease', network: 'demo', ip: '100.64.0.9' });
    expect(parseKey('/cladnet/v1/networks/demo/issued/c')).toEqual({ kind: 'issued', network: 'demo', name: 'c' });
    expect(parseKey('/cladnet/v1/networks/demo/issued/C')).toBeNull();
    expect(parseKey('/cladnet/v1/views/demo/h1')).toEqual({ kind: 'view', network: 'demo', name: 'h1' });
  });

  it('keeps views outside the network prefix (agents watching their network never receive them)', () => {
    expect(viewKey('demo', 'h1')).toBe('/cladnet/v1/views/demo/h1');
    expect(viewsPrefix('demo')).toBe('/cladnet/v1/views/demo/');
    expect(viewKey('demo', 'h1').startsWith(networkPrefix('demo'))).toBe(false);
    expect(() => viewKey('demo', 'a/b')).toThrow(/not a valid name/);
  });

  it('round-trips every builder', () => {
    for (const k of [networkKey('n1'), hostKey('n1', 'h'), aliveKey('n1', 'h'), leaseKey('n1', '10.0.0.1'), issuedKey('n1', 'h'), viewKey('n1', 'h')]) {
      expect(parseKey(k)).not.toBeNull();
    }
  });

  it.each([
    '/cladnet/v1/networks/',
    '/cladnet/v1/networks/demo/',
    '/cladnet/v1/networks/demo/hosts',
    '/cladnet/v1/networks/demo/hosts/',
    '/cladnet/v1/networks/demo/hosts/A',
    '/cladnet/v1/networks/demo/hosts/a/extra',
    '/cladnet/v1/networks/demo/leases/300.1.1.1',
    '/cladnet/v1/networks/demo/other/a',
    '/cladnet/v1/networks/Demo',
    '/cladnet/v2/networks/demo',
    '/cladnet/v1/views/demo',
    '/cladnet/v1/views/demo/',
    '/cladnet/v1/views/demo/h1/x',
    '/cladnet/v1/views/Demo/h1',
    'demo',
  ])('returns null for %s', (k) => {
    expect(parseKey(k)).toBeNull();
  });
});
