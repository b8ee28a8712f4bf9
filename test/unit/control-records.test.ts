import { describe, expect, it } from 'vitest';
import {
  checkOverlayIpInNetwork,
  HostRecord,
  isPublicKey,
  NetworkSpec,
  parseHostRecord,
  parseLeaseRecord,
  parseNetworkSpec,
  serializeHostRecord,
} from '../../src/control/records';
import { parsePrefix } from '../../src/util/ipv4';

const KEY = Buffer.alloc(32, 7).toString('base64');

const spec: NetworkSpec = { version: 1, name: 'demo', cidr: '100.64.0.0/24', mtu: 1420, port: 51820, created: '2026-11-21T01:02:03.000Z' };
const host: HostRecord = {
  version: 1,
  name: 'a',
  network: 'demo',
  overlayIp: '100.64.0.5',
  publicKey: KEY,
  endpoints: ['198.18.1.2:51820', '198.18.9.9:4000'],
  hostCidrs: ['198.18.1.0/24'],
  listenPort: 51820,
  epoch: 3,
  updated: '2026-11-21T01:02:03.456Z',
  session: '0123456789abcdef',
};

function withField(base: object, field: string, value: unknown): string {
  const o: Record<string, unknown> = { ...base };
  if (value === undefined) delete o[field];
  else o[field] = value;
  return JSON.stringify(o);
}

function errorOf(r: { ok: boolean; error?: string }): string {
  expect(r.ok).toBe(false);
  return r.error!;
}

describe('parseNetworkSpec', () => {
  it('accepts a valid spec from a string or a Buffer, frozen, without unknown fields', () => {
    const raw = JSON.stringify({ ...spec, future: 'x' });
    for (const input of [raw, Buffer.from(raw)]) {
      const r = parseNetworkSpec(input);
      expect(r).toEqual({ ok: true, value: spec });
      if (r.ok) expect(Object.isFrozen(r.value)).toBe(true);
    }
  });

  it.each<[string, unknown, RegExp]>([
    ['version', 2, /^version: expected 1, got 2$/],
    ['version', undefined, /^version: expected 1/],
    ['name', 'Demo', /^name: "Demo" is not a valid name$/],
    ['name', 5, /^name: expected a string, got 5$/],
    ['cidr', '100.64.0.1/24', /^cidr: .*host bits are set/],
    ['cidr', '8.8.0.0/16', /^cidr: .*not inside a private/],
    ['cidr', 'nope', /^cidr: "nope" is not a valid IPv4 CIDR/],
    ['mtu', 1420.5, /^mtu: expected an integer/],
    ['mtu', 100, /^mtu: 100 is outside 576\.\.9000$/],
    ['mtu', '1420', /^mtu: expected an integer, got "1420"$/],
    ['port', 0, /^port: 0 is outside 1\.\.65535$/],
    ['port', 70000, /^port: 70000 is outside/],
    ['created', 'yesterday', /^created: "yesterday" is not an ISO 8601 time$/],
    ['created', '2026-13-45T00:00:00Z', /^created: .* is not an ISO 8601 time$/],
  ])('names %s when it is %j', (field, value, re) => {
    expect(errorOf(parseNetworkSpec(withField(spec, field, value)))).toMatch(re);
  });

  it('checks the name against the key', () => {
    expect(errorOf(parseNetworkSpec(JSON.stringify(spec), { name: 'other' }))).toMatch(/^name: "demo" does not match the key \("other"\)$/);
  });

  it('refuses non-objects and non-JSON', () => {
    expect(errorOf(parseNetworkSpec('{'))).toMatch(/^not JSON: /);
    expect(errorOf(parseNetworkSpec('[]'))).toBe('expected a JSON object, got an array');
    expect(errorOf(parseNetworkSpec('null'))).toBe('expected a JSON object, got null');
    expect(errorOf(parseNetworkSpec('x'.repeat(70_000)))).toMatch(/more than 4096/);
  });
});

describe('parseHostRecord', () => {
  it('accepts a valid record and serialization round-trips', () => {
    const r = parseHostRecord(serializeHostRecord(host), { network: 'demo', name: 'a' });
    expect(r).toEqual({ ok: true, value: host });
    if (r.ok) {
      expect(Object.isFrozen(r.value)).toBe(true);
      expect(Object.isFrozen(r.value.endpoints)).toBe(true);
    }
  });

  it('carries the NAT traversal fields (relay, nat, reflexive) through a round trip', () => {
    const nat: HostRecord = { ...host, relay: true, nat: 'eim', reflexive: '198.18.3.2:51820' };
    expect(parseHostRecord(serializeHostRecord(nat))).toEqual({ ok: true, value: nat });
    // absent in records from agents before them: still valid, and nothing is invented
    const r = parseHostRecord(serializeHostRecord(host));
    expect(r.ok && ['relay', 'nat', 'reflexive'].filter((k) => k in r.value)).toEqual([]);
  });

  it('accepts empty endpoint and cidr lists', () => {
    expect(parseHostRecord(JSON.stringify({ ...host, endpoints: [], hostCidrs: [] })).ok).toBe(true);
  });

  it.each<[string, unknown, RegExp]>([
    ['version', '1', /^version: expected 1, got "1"$/],
    ['name', 'a_b', /^name: "a_b" is not a valid name$/],
    ['network', undefined, /^network: expected a string, got undefined$/],
    ['overlayIp', '100.64.0', /^overlayIp: "100.64.0" is not an IPv4 address$/],
    ['overlayIp', 42, /^overlayIp: expected a string/],
    ['publicKey', 'abc', /^publicKey: "abc" is not base64 of a 32-byte key$/],
    ['publicKey', Buffer.alloc(31).toString('base64'), /^publicKey: .* is not base64 of a 32-byte key$/],
    ['publicKey', Buffer.alloc(33).toString('base64'), /^publicKey: .* is not base64 of a 32-byte key$/],
    ['endpoints', '198.18.1.2:51820', /^endpoints: expected an array, got "198/],
    ['endpoints', ['198.18.1.2:51820', 'x'], /^endpoints\[1\]: "x" is not ip:port$/],
    ['endpoints', ['198.18.1.2:0'], /^endpoints\[0\]: "198.18.1.2:0" is not ip:port$/],
    ['endpoints', ['198.18.1.2'], /^endpoints\[0\]: "198.18.1.2" is not ip:port$/],
    ['endpoints', [7], /^endpoints\[0\]: expected a string, got 7$/],
    ['endpoints', Array(33).fill('1.2.3.4:5'), /^endpoints: 33 entries, at most 32 allowed$/],
    ['hostCidrs', ['198.18.1.1/24'], /^hostCidrs\[0\]: "198.18.1.1\/24" is not a CIDR/],
    ['hostCidrs', null, /^hostCidrs: expected an array, got null$/],
    ['listenPort', 65536, /^listenPort: 65536 is outside 1\.\.65535$/],
    ['listenPort', '51820', /^listenPort: expected an integer/],
    ['epoch', -1, /^epoch: -1 is outside/],
    ['epoch', 1.5, /^epoch: expected an integer, got 1.5$/],
    ['updated', '', /^updated: "" is not an ISO 8601 time$/],
    ['session', 'XYZ', /^session: "XYZ" is not 16 lowercase hex digits$/],
    ['relay', 'yes', /^relay: expected true or false, got "yes"$/],
    ['nat', 'symmetric', /^nat: expected none, eim, varies or unknown, got "symmetric"$/],
    ['reflexive', '198.18.3.2', /^reflexive: "198.18.3.2" is not ip:port$/],
    ['reflexive', 5, /^reflexive: expected a string, got 5$/],
  ])('names %s when it is %j', (field, value, re) => {
    expect(errorOf(parseHostRecord(withField(host, field, value)))).toMatch(re);
  });

  it('checks network and name against the key', () => {
    const raw = serializeHostRecord(host);
    expect(errorOf(parseHostRecord(raw, { network: 'prod' }))).toMatch(/^network: "demo" does not match the key \("prod"\)$/);
    expect(errorOf(parseHostRecord(raw, { name: 'b' }))).toMatch(/^name: "a" does not match the key \("b"\)$/);
  });
});

describe('parseLeaseRecord', () => {
  const lease = { version: 1, host: 'a', publicKey: KEY, created: '2026-11-21T01:02:03Z' };
  it('accepts a valid lease', () => {
    expect(parseLeaseRecord(JSON.stringify(lease))).toEqual({ ok: true, value: lease });
  });
  it('names the bad field', () => {
    expect(errorOf(parseLeaseRecord(withField(lease, 'host', 'A')))).toMatch(/^host: /);
    expect(errorOf(parseLeaseRecord(withField(lease, 'publicKey', '')))).toMatch(/^publicKey: /);
    expect(errorOf(parseLeaseRecord(JSON.stringify(lease), { host: 'b' }))).toMatch(/^host: "a" does not match/);
  });
});

describe('helpers', () => {
  it('isPublicKey insists on canonical base64 of 32 bytes', () => {
    expect(isPublicKey(KEY)).toBe(true);
    expect(isPublicKey(KEY.replace('=', ''))).toBe(false);
    // Non-canonical: last character carries bits beyond the 32 bytes.
    expect(isPublicKey(`${KEY.slice(0, 42)}9=`)).toBe(false);
    expect(isPublicKey(undefined)).toBe(false);
  });

  it('checkOverlayIpInNetwork', () => {
    const cidr = parsePrefix('100.64.0.0/24')!;
    expect(checkOverlayIpInNetwork({ overlayIp: '100.64.0.5' }, cidr, '100.64.0.0/24')).toBeNull();
    expect(checkOverlayIpInNetwork({ overlayIp: '100.64.1.5' }, cidr, '100.64.0.0/24')).toBe(
      'overlayIp: 100.64.1.5 is outside the network CIDR 100.64.0.0/24',
    );
    expect(checkOverlayIpInNetwork({ overlayIp: '100.64.0.0' }, cidr, '100.64.0.0/24')).toMatch(/network or broadcast/);
    expect(checkOverlayIpInNetwork({ overlayIp: '100.64.0.255' }, cidr, '100.64.0.0/24')).toMatch(/network or broadcast/);
  });
});
