import { describe, expect, it } from 'vitest';
import { computePeers, HostEntry, PeerInputs } from '../../src/control/peers';
import { HostRecord, parseHostRecord } from '../../src/control/records';
import { parsePrefix } from '../../src/util/ipv4';

const key = (n: number) => Buffer.alloc(32, n).toString('base64');

function rec(name: string, overlayIp: string, extra: Partial<HostRecord> = {}): HostRecord {
  return {
    version: 1,
    name,
    network: 'demo',
    overlayIp,
    publicKey: key(name.charCodeAt(0)),
    endpoints: ['198.18.1.2:51820'],
    hostCidrs: [],
    listenPort: 51820,
    epoch: 1,
    updated: '2026-11-21T00:00:00Z',
    session: '0123456789abcdef',
    ...extra,
  };
}

function entry(r: HostRecord | string, modRevision = '5'): HostEntry {
  return { modRevision, parsed: typeof r === 'string' ? parseHostRecord(r) : parseHostRecord(JSON.stringify(r)) };
}

function inputs(p: Partial<PeerInputs>): PeerInputs {
  return {
    self: 'me',
    cidr: parsePrefix('100.64.0.0/24')!,
    cidrText: '100.64.0.0/24',
    hosts: new Map(),
    alive: new Set(),
    leases: new Map(),
    ...p,
  };
}

describe('computePeers', () => {
  it('keeps live, valid hosts other than self, sorted by name', () => {
    const hosts = new Map([
      ['c', entry(rec('c', '100.64.0.3'))],
      ['me', entry(rec('me', '100.64.0.1'))],
      ['a', entry(rec('a', '100.64.0.2'))],
      ['dead', entry(rec('dead', '100.64.0.4'))],
    ]);
    const out = computePeers(inputs({ hosts, alive: new Set(['a', 'c', 'me', 'ghost']) }));
    expect([...out.peers.keys()]).toEqual(['a', 'c']);
    expect(out.rejected).toEqual([]);
  });

  it('rejects unparseable records with the field named, others still arrive', () => {
    const hosts = new Map([
      ['a', entry(rec('a', '100.64.0.2'))],
      ['b', entry('{"version":1,"name":"b"}', '9')],
    ]);
    const out = computePeers(inputs({ hosts, alive: new Set(['a', 'b']) }));
    expect([...out.peers.keys()]).toEqual(['a']);
    expect(out.rejected).toEqual([{ name: 'b', modRevision: '9', error: 'network: expected a string, got undefined' }]);
  });

  it('rejects an overlayIp outside the network CIDR', () => {
    const hosts = new Map([['a', entry(rec('a', '100.64.9.2'))]]);
    const out = computePeers(inputs({ hosts, alive: new Set(['a']) }));
    expect(out.peers.size).toBe(0);
    expect(out.rejected[0]!.error).toBe('overlayIp: 100.64.9.2 is outside the network CIDR 100.64.0.0/24');
  });

  it('on a duplicate overlayIp the lease holder wins', () => {
    const hosts = new Map([
      ['a', entry(rec('a', '100.64.0.7'))],
      ['b', entry(rec('b', '100.64.0.7'))],
    ]);
    const out = computePeers(inputs({ hosts, alive: new Set(['a', 'b']), leases: new Map([['100.64.0.7', 'b']]) }));
    expect([...out.peers.keys()]).toEqual(['b']);
    expect(out.rejected.map((r) => [r.name, r.error])).toEqual([['a', 'overlayIp: 100.64.0.7 is leased to b']]);
  });

  it('on a duplicate with no lease deciding, every live claimant is rejected', () => {
    const hosts = new Map([
      ['a', entry(rec('a', '100.64.0.7'))],
      ['b', entry(rec('b', '100.64.0.7'))],
      ['c', entry(rec('c', '100.64.0.7'))], // not alive: does not take part
    ]);
    const out = computePeers(inputs({ hosts, alive: new Set(['a', 'b']), leases: new Map([['100.64.0.7', null]]) }));
    expect(out.peers.size).toBe(0);
    expect(out.rejected.map((r) => r.name).sort()).toEqual(['a', 'b']);
    expect(out.rejected[0]!.error).toMatch(/also claimed by .* and no lease decides/);
  });

  it('a peer claiming our (leased) address loses to us', () => {
    const hosts = new Map([
      ['me', entry(rec('me', '100.64.0.1'))],
      ['x', entry(rec('x', '100.64.0.1'))],
    ]);
    const out = computePeers(inputs({ hosts, alive: new Set(['x']), leases: new Map([['100.64.0.1', 'me']]) }));
    expect(out.peers.size).toBe(0);
    expect(out.rejected.map((r) => r.name)).toEqual(['x']);
  });

  it('a lone host whose address is leased to someone else is rejected', () => {
    const hosts = new Map([['a', entry(rec('a', '100.64.0.9'))]]);
    const out = computePeers(inputs({ hosts, alive: new Set(['a']), leases: new Map([['100.64.0.9', 'z']]) }));
    expect(out.peers.size).toBe(0);
    expect(out.rejected[0]!.error).toBe('overlayIp: 100.64.0.9 is leased to z');
  });
});
