import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import type { HostRecord } from '../../src/control/records';
import { serializeViewRecord, type ViewPeer, type ViewRecord } from '../../src/control/views';
import type { RawView } from '../../src/control/watch';
import { buildSnapshot, ViewReader, type Snapshot, type SnapshotInput } from '../../src/dashboard/snapshot';
import { createRootLogger } from '../../src/log';

/**
 * The dashboard's snapshot from etcd data (members, alive keys, revocations, raw views), pure:
 * who is up, silent, unreachable or revoked, each link's state, path and RTT, and bad views
 * skipped with a warning and counted once.
 */
const NET = 'net';

function record(name: string, i: number, over: Partial<HostRecord> = {}): HostRecord {
  return { version: 1, name, network: NET, overlayIp: `100.64.0.${i}`, nat: 'none', reflexive: `198.18.${i}.2:51820`, ...over } as HostRecord;
}

function rawView(host: string, peers: Record<string, Partial<ViewPeer>>, rev = '7', over: Partial<ViewRecord> = {}): RawView {
  const full: Record<string, ViewPeer> = {};
  for (const [n, p] of Object.entries(peers)) full[n] = { state: 'up', path: 'public', rttMs: 1.5, ...p };
  const v: ViewRecord = { version: 1, host, network: NET, at: '2026-12-02T18:00:00.000Z', reflexive: '198.18.7.7:40000', nat: 'eim', peers: full, ...over };
  return { modRevision: rev, value: Buffer.from(serializeViewRecord(v)) };
}

function logSink(): { log: ReturnType<typeof createRootLogger>; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const dest = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return { log: createRootLogger('warn', dest), lines };
}

const members = new Map([
  ['h1', record('h1', 1)],
  ['h2', record('h2', 2, { relay: true })],
  ['h3', record('h3', 3)],
]);

function input(over: Partial<SnapshotInput> = {}): SnapshotInput {
  return {
    network: NET,
    now: Date.parse('2026-12-02T18:00:05Z'),
    connected: true,
    members,
    alive: new Set(['h1', 'h2', 'h3']),
    revoked: [],
    views: new Map([
      ['h1', rawView('h1', { h2: { path: 'private', rttMs: 0.4 }, h3: { path: 'relayed', via: 'h2', rttMs: 3 } })],
      ['h2', rawView('h2', { h1: { path: 'private', rttMs: 0.5 }, h3: {} })],
      ['h3', rawView('h3', { h1: { path: 'relayed', via: 'h2', rttMs: 3.1 }, h2: {} })],
    ]),
    ...over,
  };
}

const link = (s: Snapshot, from: string, to: string) => s.links.find((l) => l.from === from && l.to === to)!;
const states = (s: Snapshot) => s.links.map((l) => `${l.from}>${l.to}:${l.state}`);

describe('buildSnapshot', () => {
  it('shows every member up and each ordered pair with its path, relay and RTT; the views give reflexive address and NAT kind', () => {
    const { log } = logSink();
    const s = buildSnapshot(input(), new ViewReader(NET, log));
    expect(s.hosts.map((h) => [h.name, h.status, h.overlayIp, h.relay, h.reflexive, h.nat])).toEqual([
      ['h1', 'up', '100.64.0.1', false, '198.18.7.7:40000', 'eim'],
      ['h2', 'up', '100.64.0.2', true, '198.18.7.7:40000', 'eim'],
      ['h3', 'up', '100.64.0.3', false, '198.18.7.7:40000', 'eim'],
    ]);
    expect(s.links).toHaveLength(6);
    expect(link(s, 'h1', 'h2')).toEqual({ from: 'h1', to: 'h2', state: 'up', path: 'private', via: null, rttMs: 0.4 });
    expect(link(s, 'h1', 'h3')).toEqual({ from: 'h1', to: 'h3', state: 'up', path: 'relayed', via: 'h2', rttMs: 3 });
    expect(link(s, 'h3', 'h2')).toEqual({ from: 'h3', to: 'h2', state: 'up', path: 'public', via: null, rttMs: 1.5 });
    expect(s.counters).toEqual({ invalidViews: 0, strayViews: 0 });
    expect(s.etcd.connected).toBe(true);
    expect(s.at).toBe('2026-12-02T18:00:05.000Z');
  });

  it('marks a host without its alive key silent and every link to and from it down, whatever its last view said', () => {
    const s = buildSnapshot(input({ alive: new Set(['h1', 'h2']) }), new ViewReader(NET, logSink().log));
    expect(s.hosts.find((h) => h.name === 'h3')!.status).toBe('silent');
    expect(states(s)).toEqual(['h1>h2:up', 'h1>h3:down', 'h2>h1:up', 'h2>h3:down', 'h3>h1:down', 'h3>h2:down']);
  });

  it('marks an alive host with no view yet silent (and shows the reflexive address and NAT kind of its record)', () => {
    const views = new Map(input().views);
    views.delete('h3');
    const s = buildSnapshot(input({ views }), new ViewReader(NET, logSink().log));
    expect(s.hosts.find((h) => h.name === 'h3')).toMatchObject({ status: 'silent', reflexive: '198.18.3.2:51820', nat: 'none', viewAt: null });
    expect(link(s, 'h1', 'h3').state).toBe('down');
  });

  it('marks a host unreachable when every peer reporting on it says down (a killed agent whose alive key has not expired)', () => {
    const views = new Map(input().views);
    views.set('h1', rawView('h1', { h2: {}, h3: { state: 'down', path: 'none', rttMs: null } }, '8'));
    views.set('h2', rawView('h2', { h1: {}, h3: { state: 'down', path: 'none', rttMs: null } }, '8'));
    const s = buildSnapshot(input({ views }), new ViewReader(NET, logSink().log));
    expect(s.hosts.map((h) => h.status)).toEqual(['up', 'up', 'unreachable']);
    expect(states(s).filter((x) => x.includes('h3'))).toEqual(['h1>h3:down', 'h2>h3:down', 'h3>h1:down', 'h3>h2:down']);
    // One peer still reaching it: it is up, and only that one link is down.
    views.set('h2', rawView('h2', { h1: {}, h3: {} }, '9'));
    const s2 = buildSnapshot(input({ views }), new ViewReader(NET, logSink().log));
    expect(s2.hosts.map((h) => h.status)).toEqual(['up', 'up', 'up']);
    expect(states(s2).filter((x) => x.endsWith(':down'))).toEqual(['h1>h3:down']);
  });

  it('shows a peer missing from a view, or still connecting, as connecting', () => {
    const views = new Map(input().views);
    views.set('h1', rawView('h1', { h2: { state: 'connecting', path: 'none', rttMs: null } }, '8'));
    const s = buildSnapshot(input({ views }), new ViewReader(NET, logSink().log));
    expect(link(s, 'h1', 'h2').state).toBe('connecting');
    expect(link(s, 'h1', 'h3').state).toBe('connecting');
    expect(link(s, 'h2', 'h1').state).toBe('up');
  });

  it('lists a revoked host as revoked with its links down, and counts its view as stray', () => {
    const m = new Map(members);
    m.delete('h3'); // the evaluator drops a revoked host from the members
    const s = buildSnapshot(input({ members: m, revoked: ['h3'] }), new ViewReader(NET, logSink().log));
    expect(s.hosts.map((h) => [h.name, h.status, h.overlayIp])).toEqual([
      ['h1', 'up', '100.64.0.1'],
      ['h2', 'up', '100.64.0.2'],
      ['h3', 'revoked', null],
    ]);
    expect(states(s).filter((x) => x.endsWith(':down'))).toHaveLength(4);
    expect(s.counters.strayViews).toBe(1);
  });

  it('skips a forged view (under another host’s key) and a garbled one, warns and counts each once per revision', () => {
    const { log, lines } = logSink();
    const reader = new ViewReader(NET, log);
    const views = new Map(input().views);
    // h3's key holds a view claiming to be h1's: forged.
    const forged = rawView('h1', { h2: {}, h3: {} }, '11');
    views.set('h3', forged);
    views.set('h2', { modRevision: '12', value: Buffer.from('{"version":1,"host":"h2",') });
    const s = buildSnapshot(input({ views }), reader);
    expect(s.hosts.map((h) => h.status)).toEqual(['up', 'silent', 'silent']);
    expect(s.counters.invalidViews).toBe(2);
    const warned = lines.filter((l) => l['msg'] === 'skipping invalid view');
    expect(warned.map((l) => [l['etcdKey'], l['modRevision']])).toEqual([
      ['/cladnet/v1/views/net/h2', '12'],
      ['/cladnet/v1/views/net/h3', '11'],
    ]);
    expect(String(warned[1]!['error'])).toMatch(/host: "h1" does not match the key \(h3\)/);
    // The same revisions again: not counted or warned again; a new bad revision is.
    buildSnapshot(input({ views }), reader);
    expect(reader.counters.invalidViews).toBe(2);
    views.set('h2', { modRevision: '13', value: Buffer.from('garbage') });
    expect(buildSnapshot(input({ views }), reader).counters.invalidViews).toBe(3);
    expect(lines.filter((l) => l['msg'] === 'skipping invalid view')).toHaveLength(3);
  });

  it('ignores view entries for hosts that are no members', () => {
    const views = new Map(input().views);
    views.set('h1', rawView('h1', { h2: {}, h3: {}, ghost: {} }, '8'));
    const s = buildSnapshot(input({ views }), new ViewReader(NET, logSink().log));
    expect(s.hosts.map((h) => h.name)).toEqual(['h1', 'h2', 'h3']);
    expect(s.links.some((l) => l.to === 'ghost' || l.from === 'ghost')).toBe(false);
  });
});
