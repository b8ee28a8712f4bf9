import { describe, expect, it } from 'vitest';
import { rttBucket, ViewGate, viewFromAgent, viewFromStatus } from '../../src/agent/view';
import { parseViewRecord, serializeViewRecord, type ViewPeer, type ViewRecord } from '../../src/control/views';
import type { StatusDocument } from '../../src/status/types';

/**
 * An agent's view for the dashboard: taken from its status document, written only on a material
 * change (state, path, RTT bucket, peers, reflexive address, NAT kind) and at most every 3 s.
 */
function view(peers: Record<string, Partial<ViewPeer>>, over: Partial<ViewRecord> = {}): ViewRecord {
  const full: Record<string, ViewPeer> = {};
  for (const [n, p] of Object.entries(peers)) full[n] = { state: 'up', path: 'public', rttMs: 0.5, ...p };
  return { version: 1, host: 'h1', network: 'net', at: '2026-12-02T18:00:00.000Z', reflexive: '198.18.1.2:51820', nat: 'none', peers: full, ...over };
}

function gate(start = 0) {
  let t = start;
  const written: ViewRecord[] = [];
  const g = new ViewGate({ now: () => t, write: (v) => written.push(v) });
  return { g, written, advance: (ms: number) => (t += ms) };
}

describe('ViewGate', () => {
  it('writes the first view, then nothing while nothing material changes (exact RTTs and the time are not material)', () => {
    const { g, written, advance } = gate();
    expect(g.offer(view({ h2: { rttMs: 0.4 } }))).toBe(true);
    for (let i = 0; i < 10; i++) {
      advance(1000);
      expect(g.offer(view({ h2: { rttMs: 0.4 + i * 0.05 } }, { at: new Date(i * 1000).toISOString() }))).toBe(false);
    }
    expect(written).toHaveLength(1);
    expect(g.counters).toEqual({ writes: 1, deferred: 0 });
  });

  it('writes a state, path, relay, RTT bucket, peer set, reflexive or NAT change, each at least 3 s after the last write', () => {
    const changes: ViewRecord[] = [
      view({ h2: { state: 'down', rttMs: null } }),
      view({ h2: { path: 'private' } }),
      view({ h2: { path: 'relayed', via: 'h3' } }),
      view({ h2: { path: 'relayed', via: 'h4' } }),
      view({ h2: { rttMs: 1.5 } }), // bucket 1..2 ms
      view({ h2: {}, h3: {} }),
      view({ h2: {} }, { reflexive: '198.18.9.9:4000' }),
      view({ h2: {} }, { nat: 'varies' }),
    ];
    const { g, written, advance } = gate();
    g.offer(view({ h2: {} }));
    for (const c of changes) {
      advance(3000);
      expect(g.offer(c), JSON.stringify(c.peers) + c.reflexive + c.nat).toBe(true);
      advance(3000);
      expect(g.offer(view({ h2: {} }))).toBe(true); // and back
    }
    expect(written).toHaveLength(1 + 2 * changes.length);
  });

  it('holds a change back until 3 s after the last write, then writes the newest view at the next offer', () => {
    const { g, written, advance } = gate(1_000_000);
    g.offer(view({ h2: {} }));
    advance(1000);
    expect(g.offer(view({ h2: { state: 'down', rttMs: null } }))).toBe(false);
    advance(1000);
    expect(g.offer(view({ h2: { state: 'down', rttMs: null } }))).toBe(false);
    advance(999);
    expect(g.offer(view({ h2: { state: 'down', rttMs: null } }))).toBe(false);
    advance(1);
    expect(g.offer(view({ h2: { state: 'down', rttMs: null } }))).toBe(true);
    expect(written.map((v) => v.peers['h2']!.state)).toEqual(['up', 'down']);
    expect(g.counters).toEqual({ writes: 2, deferred: 3 });
    // A change that is undone before the interval is over is never written.
    advance(1000);
    g.offer(view({ h2: {} }));
    advance(1000);
    g.offer(view({ h2: { state: 'down', rttMs: null } }));
    advance(5000);
    expect(g.offer(view({ h2: { state: 'down', rttMs: null } }))).toBe(false);
    expect(written).toHaveLength(2);
  });

  it('ignores an RTT jittering around a bucket edge, and counts a move across it that is large enough', () => {
    const { g, written, advance } = gate();
    g.offer(view({ h2: { rttMs: 0.9 } }));
    for (const rtt of [1.05, 0.95, 1.1, 0.85]) {
      advance(3000);
      expect(g.offer(view({ h2: { rttMs: rtt } })), `${rtt} ms`).toBe(false);
    }
    advance(3000);
    expect(g.offer(view({ h2: { rttMs: 1.2 } }))).toBe(true); // +0.3 ms and across 1 ms
    advance(3000);
    expect(g.offer(view({ h2: { rttMs: 40 } }))).toBe(true);
    advance(3000);
    expect(g.offer(view({ h2: { rttMs: 55 } }))).toBe(true); // across 50 ms, +15 ms >= 25 % of 40
    advance(3000);
    expect(g.offer(view({ h2: { rttMs: 49 } }))).toBe(false); // back across, but -6 ms < 25 % of 55
    expect(written.map((v) => v.peers['h2']!.rttMs)).toEqual([0.9, 1.2, 40, 55]);
  });

  it('buckets RTTs on fixed edges', () => {
    expect([null, 0, 0.99, 1, 1.99, 2, 4.9, 5, 999, 1000, 5000].map(rttBucket)).toEqual([-1, 0, 0, 1, 1, 2, 2, 3, 9, 10, 11]);
  });
});

describe('viewFromStatus', () => {
  it('folds path and scope into one word and keeps the relay, the RTT, our reflexive address and NAT kind', () => {
    const peer = (name: string, o: Partial<StatusDocument['peers'][number]>) =>
      ({ name, state: 'up', path: 'direct', pathScope: 'public', via: null, rttMs: 1.23456, ...o }) as StatusDocument['peers'][number];
    const doc = {
      self: { name: 'h1', network: 'net', reflexive: '198.18.1.2:51820', nat: 'eim' },
      peers: [peer('h2', { pathScope: 'private' }), peer('h3', { path: 'relayed', via: 'h2', rttMs: 2 }), peer('h4', { state: 'down', path: 'none', rttMs: null })],
    } as unknown as StatusDocument;
    const v = viewFromStatus(doc, Date.parse('2026-12-02T18:00:00Z'));
    expect(v).toEqual({
      version: 1,
      host: 'h1',
      network: 'net',
      at: '2026-12-02T18:00:00.000Z',
      reflexive: '198.18.1.2:51820',
      nat: 'eim',
      peers: {
        h2: { state: 'up', path: 'private', rttMs: 1.23 },
        h3: { state: 'up', path: 'relayed', via: 'h2', rttMs: 2 },
        h4: { state: 'down', path: 'none', rttMs: null },
      },
    });
    const back = parseViewRecord(serializeViewRecord(v), { network: 'net', host: 'h1' });
    expect(back).toEqual({ ok: true, value: v });
  });
});

describe('viewFromAgent', () => {
  it('reads state, path, relay and RTT from the agent’s parts as the status document does', () => {
    const now = Date.parse('2026-12-02T18:00:00Z');
    const peers: Array<[string, { slot: number; addedAt: number; endpoint: { via?: string } }]> = [
      ['up', { slot: 0, addedAt: now - 60_000, endpoint: {} }],
      ['relayed', { slot: 1, addedAt: now - 60_000, endpoint: { via: 'up' } }],
      ['new', { slot: 2, addedAt: now - 5_000, endpoint: {} }],
      ['silent', { slot: 3, addedAt: now - 60_000, endpoint: {} }],
      ['gone', { slot: 4, addedAt: now - 60_000, endpoint: {} }],
    ];
    const lastRx = [now - 1_000, now - 2_000, 0, 0, now - 17_000];
    const rtt = [0.000412, 0.0031, NaN, NaN, 0.002];
    const path: Record<string, { kind: 'direct' | 'relayed' | 'none'; scope: 'private' | 'public' | null }> = {
      up: { kind: 'direct', scope: 'private' },
      relayed: { kind: 'relayed', scope: null },
      new: { kind: 'none', scope: null },
      silent: { kind: 'none', scope: null },
      gone: { kind: 'direct', scope: 'public' },
    };
    const v = viewFromAgent({
      now,
      self: 'h1',
      network: 'net',
      reflexive: null,
      nat: 'unknown',
      peers,
      lastRx: (slot) => lastRx[slot]!,
      rttSec: (slot) => rtt[slot]!,
      path: (name) => path[name]!,
    });
    expect(v.peers).toEqual({
      up: { state: 'up', path: 'private', rttMs: 0.41 },
      relayed: { state: 'up', path: 'relayed', via: 'up', rttMs: 3.1 },
      new: { state: 'connecting', path: 'none', rttMs: null },
      silent: { state: 'down', path: 'none', rttMs: null }, // never heard, added over 30 s ago
      gone: { state: 'down', path: 'public', rttMs: 2 }, // last packet 17 s ago: past the 16 s up timeout
    });
    expect(v.at).toBe('2026-12-02T18:00:00.000Z');
  });
});

describe('parseViewRecord', () => {
  const good = JSON.parse(serializeViewRecord(view({ h2: {}, h3: { path: 'relayed', via: 'h2' } }))) as Record<string, unknown>;
  const bad = (o: unknown) => parseViewRecord(typeof o === 'string' ? o : JSON.stringify(o), { network: 'net', host: 'h1' });

  it('refuses garbled, forged and out-of-shape views, naming the field', () => {
    const cases: Array<[unknown, RegExp]> = [
      ['{"version":1,', /not JSON/],
      ['[]', /JSON object/],
      [{ ...good, version: 2 }, /version/],
      [{ ...good, host: 'h2' }, /host: "h2" does not match the key \(h1\)/],
      [{ ...good, network: 'other' }, /network/],
      [{ ...good, at: 'yesterday' }, /at:/],
      [{ ...good, reflexive: 'evil<script>' }, /reflexive/],
      [{ ...good, nat: 'open' }, /nat:/],
      [{ ...good, peers: [] }, /peers: expected an object/],
      [{ ...good, peers: { H2: { state: 'up', path: 'public', rttMs: 1 } } }, /peers.H2: not a peer name/],
      [{ ...good, peers: { h1: { state: 'up', path: 'public', rttMs: 1 } } }, /peers.h1: not a peer name/],
      [{ ...good, peers: { h2: { state: 'fine', path: 'public', rttMs: 1 } } }, /peers.h2.state/],
      [{ ...good, peers: { h2: { state: 'up', path: 'wormhole', rttMs: 1 } } }, /peers.h2.path/],
      [{ ...good, peers: { h2: { state: 'up', path: 'public', via: 'h3', rttMs: 1 } } }, /peers.h2.via/],
      [{ ...good, peers: { h2: { state: 'up', path: 'public', rttMs: -1 } } }, /peers.h2.rttMs/],
      [{ ...good, peers: { h2: { state: 'up', path: 'public', rttMs: '1' } } }, /peers.h2.rttMs/],
      ['x'.repeat(256 * 1024 + 1), /more than 262144/],
    ];
    for (const [input, why] of cases) {
      const r = bad(input);
      expect(r.ok, String(why)).toBe(false);
      if (!r.ok) expect(r.error).toMatch(why);
    }
    expect(bad(good).ok).toBe(true);
  });
});
