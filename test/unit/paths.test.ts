/**
 * PathManager (src/agent/paths.ts): path choice per peer from evidence only, with an injected
 * clock and an injected "is this address on one of our networks". Peers are named, candidates
 * are underlay addresses; the tests drive evidence (pongs, handshakes, roams) and tick().
 */
import { beforeEach, describe, expect, it } from 'vitest';
import {
  ALIVE_MS,
  DISCOVER_MS,
  MAX_CANDIDATES,
  PATH_DEAD_MS,
  PathManager,
  PROBE_FAST_MS,
  PROBE_SLOW_MS,
  PUNCH_LEAD_MS,
  RELAY_AFTER_MS,
  describeEndpoint,
  sameEndpoint,
  type Endpoint,
  type PathActions,
} from '../../src/agent/paths';
import { parseIpv4 } from '../../src/util/ipv4';

const ip = (s: string): number => parseIpv4(s)!;
const ep = (s: string): Endpoint => {
  const [a, p] = s.split(':');
  return { ip: ip(a!), port: Number(p) };
};
const via = (relay: string): Endpoint => ({ ip: 0, port: 0, via: relay });

// Our own networks: 10.0.0.0/8 (a private path), everything else is public.
const isLocal = (x: number): boolean => x >>> 24 === 10;

const PUB = ep('203.0.113.7:51820');
const PUB2 = ep('198.51.100.7:40001');
const PRIV = ep('10.1.2.7:51820');

let now: number;
let pm: PathManager;
let sessions: Set<string>;

beforeEach(() => {
  now = 1_700_000_000_000;
  pm = new PathManager({ now: () => now, isLocal });
  sessions = new Set();
});

const tick = (): PathActions => pm.tick((name) => sessions.has(name));
const advance = (ms: number): void => {
  now += ms;
};
/** Probe targets of one tick, as "ip:port" per peer. */
const probed = (a: PathActions, name: string): string[] => a.probes.filter((p) => p.name === name).map((p) => describeEndpoint(p));

/** A peer (candidates: `at` only) whose path is settled on `at`: handshake, then DISCOVER_MS of pongs at 1 s. */
function settle(name: string, at: Endpoint, rtt = 10): void {
  pm.setPeer(name, [at], false);
  pm.onHandshake(name, at);
  sessions.add(name);
  for (let t = 0; t < DISCOVER_MS; t += 1_000) {
    pm.onPong(name, at, rtt);
    tick();
    advance(1_000);
  }
  pm.onPong(name, at, rtt);
  tick();
  expect(pm.state(name).kind).toBe('direct');
}

describe('endpoints', () => {
  it('sameEndpoint compares ip:port for direct ones and only the relay for relayed ones', () => {
    expect(sameEndpoint(PUB, { ...PUB })).toBe(true);
    expect(sameEndpoint(PUB, { ...PUB, port: 1 })).toBe(false);
    expect(sameEndpoint(via('r'), { ip: 1, port: 2, via: 'r' })).toBe(true);
    expect(sameEndpoint(via('r'), via('s'))).toBe(false);
    expect(sameEndpoint(via('r'), PUB)).toBe(false);
    expect(sameEndpoint(null, null)).toBe(true);
    expect(sameEndpoint(null, PUB)).toBe(false);
    expect(describeEndpoint(PUB)).toBe('203.0.113.7:51820');
    expect(describeEndpoint(via('r'))).toBe('via r');
    expect(describeEndpoint(null)).toBe('');
  });
});

describe('PathManager', () => {
  describe('initial target', () => {
    it('prefers a candidate on our own network, and is no path yet', () => {
      pm.setPeer('b', [PUB, PRIV, PUB2], false);
      expect(pm.current('b')).toEqual(PRIV);
      expect(pm.state('b')).toEqual({ endpoint: PRIV, kind: 'none', scope: null, since: null });
    });

    it('takes the first published candidate when none is on our network', () => {
      pm.setPeer('b', [PUB2, PUB], false);
      expect(pm.current('b')).toEqual(PUB2);
    });

    it('has no target without candidates, and an unknown peer has no state', () => {
      pm.setPeer('b', [], false);
      expect(pm.current('b')).toBeNull();
      expect(pm.state('nobody')).toEqual({ endpoint: null, kind: 'none', scope: null, since: null });
      expect(pm.current('nobody')).toBeNull();
      expect(pm.handshakeTargets('nobody', false)).toEqual([]);
    });

    it('keeps at most MAX_CANDIDATES candidates', () => {
      const many = Array.from({ length: MAX_CANDIDATES + 3 }, (_, i) => ({ ip: ip('203.0.113.1') + i, port: 51820 }));
      pm.setPeer('b', many, false);
      sessions.add('b');
      expect(tick().probes.length).toBe(MAX_CANDIDATES);
    });
  });

  describe('direct paths from evidence', () => {
    it('a handshake makes the path direct, public or private by isLocal', () => {
      pm.setPeer('b', [PUB, PRIV], false);
      pm.setPeer('c', [PUB2], false);
      pm.onHandshake('b', PRIV);
      pm.onHandshake('c', PUB2);
      expect(pm.state('b')).toEqual({ endpoint: PRIV, kind: 'direct', scope: 'private', since: now });
      expect(pm.state('c')).toEqual({ endpoint: PUB2, kind: 'direct', scope: 'public', since: now });
    });

    it('a pong from a candidate other than the target makes the path direct there', () => {
      pm.setPeer('b', [PRIV, PUB], false); // target: PRIV, which never answers
      sessions.add('b');
      tick();
      advance(300);
      pm.onPong('b', PUB, 12);
      const a = tick();
      expect(a.moves).toEqual([{ name: 'b', endpoint: PUB }]);
      expect(pm.state('b')).toEqual({ endpoint: PUB, kind: 'direct', scope: 'public', since: now });
    });

    // BUG (reported): a pong that answers the initial target itself leaves the path 'none'. tick()
    // only moves when the best live candidate differs from the current one, and nothing but a
    // handshake, a roam or a move turns kind 'none' into 'direct'.
    it('a pong from the initial target makes the path direct (private)', () => {
      pm.setPeer('b', [PUB, PRIV], false);
      sessions.add('b');
      tick();
      advance(40);
      pm.onPong('b', PRIV, 0.4);
      tick();
      expect(pm.state('b')).toMatchObject({ endpoint: PRIV, kind: 'direct', scope: 'private' });
    });

    it('a roam moves the path at once, to wherever the packets came from', () => {
      pm.setPeer('b', [PUB], false);
      pm.onHandshake('b', PUB);
      advance(ALIVE_MS); // the published address has not answered for a long time
      const roamed = ep('192.0.2.99:3333');
      pm.onRoam('b', roamed);
      expect(pm.state('b')).toEqual({ endpoint: roamed, kind: 'direct', scope: 'public', since: now });
      // The roamed-to address is a candidate now (evidence), and is probed.
      sessions.add('b');
      expect(probed(tick(), 'b').sort()).toEqual(['192.0.2.99:3333', '203.0.113.7:51820']);
      expect(pm.current('b')).toEqual(roamed);
      const via2 = via('r');
      pm.onRoam('b', via2); // through a relay
      expect(pm.state('b')).toEqual({ endpoint: via2, kind: 'relayed', scope: null, since: now });
    });

    // BUG (reported): right after a roam to an address the peer never published (a new NAT
    // mapping), its old published address, silent since the move but younger than ALIVE_MS, counts
    // as "better" (`!curDirect.published && best.published`) and tick() moves the path back to it;
    // the next packet roams it again, and so on every tick for up to ALIVE_MS.
    it('a roam to an unpublished address is not undone by a silent published one', () => {
      pm.setPeer('b', [PUB], false);
      pm.onHandshake('b', PUB);
      pm.onPong('b', PUB, 10);
      sessions.add('b');
      advance(3_000); // the peer's NAT mapping changed: its packets come from elsewhere now
      const roamed = ep('203.0.113.7:40123');
      pm.onRoam('b', roamed);
      for (let i = 0; i < 5; i++) {
        advance(500);
        pm.onPong('b', roamed, 10); // the roamed-to path answers; PUB does not
        expect(tick().moves).toEqual([]);
        expect(pm.current('b')).toEqual(roamed);
      }
    });

    it('a handshake from elsewhere does not move a live path', () => {
      pm.setPeer('b', [PUB, PUB2], false);
      pm.onHandshake('b', PUB);
      advance(1_000);
      pm.onHandshake('b', PUB2);
      expect(pm.current('b')).toEqual(PUB);
      advance(PATH_DEAD_MS + 1); // the path went quiet: the next handshake is taken as the path
      pm.onHandshake('b', PUB2);
      expect(pm.current('b')).toEqual(PUB2);
    });

    it('a private path beats a public one once it answers', () => {
      pm.setPeer('b', [PUB, PRIV], false);
      pm.onHandshake('b', PUB); // the public one came through first
      sessions.add('b');
      expect(pm.state('b').scope).toBe('public');
      advance(1_000);
      pm.onPong('b', PUB, 20);
      expect(tick().moves).toEqual([]);
      advance(1_000);
      pm.onPong('b', PRIV, 0.5);
      const a = tick();
      expect(a.moves).toEqual([{ name: 'b', endpoint: PRIV }]);
      expect(pm.state('b')).toEqual({ endpoint: PRIV, kind: 'direct', scope: 'private', since: now });
      // ... and a public one does not take over from a live private one, however fast.
      advance(1_000);
      pm.onPong('b', PUB, 0.1);
      pm.onPong('b', PRIV, 50);
      expect(tick().moves).toEqual([]);
      expect(pm.current('b')).toEqual(PRIV);
    });

    it('no switch between two live public paths on jitter', () => {
      pm.setPeer('b', [PUB, PUB2], false);
      pm.onHandshake('b', PUB);
      sessions.add('b');
      for (let i = 0; i < 30; i++) {
        advance(1_000);
        // PUB2 is faster most of the time, by a lot
        pm.onPong('b', PUB, 40 + (i % 7));
        pm.onPong('b', PUB2, i % 3 === 0 ? 60 : 5);
        expect(tick().moves).toEqual([]);
      }
      expect(pm.state('b')).toMatchObject({ endpoint: PUB, kind: 'direct', scope: 'public' });
    });

    it('a dead current path moves to another live candidate', () => {
      pm.setPeer('b', [PUB, PUB2], false);
      pm.onHandshake('b', PUB);
      sessions.add('b');
      pm.onPong('b', PUB, 30);
      const since = now;
      // PUB goes silent; PUB2 keeps answering probes (its lower rtt does not matter while PUB lives).
      let moved: number | null = null;
      for (let t = 0; t <= PATH_DEAD_MS + 2_000 && moved === null; t += 500) {
        advance(500);
        pm.onPong('b', PUB2, 25);
        const a = tick();
        if (a.moves.length > 0) {
          expect(a.moves).toEqual([{ name: 'b', endpoint: PUB2 }]);
          moved = now - since;
        }
      }
      expect(moved).not.toBeNull();
      expect(moved!).toBeGreaterThan(PATH_DEAD_MS);
      expect(moved!).toBeLessThanOrEqual(PATH_DEAD_MS + 500);
      expect(pm.state('b')).toEqual({ endpoint: PUB2, kind: 'direct', scope: 'public', since: now });
    });

    // BUG (reported): the dead current candidate still counts as "alive" (ALIVE_MS > PATH_DEAD_MS)
    // and wins the choice when it ranks better (private, or a lower rtt), so the move to the live
    // candidate waits for ALIVE_MS instead of PATH_DEAD_MS.
    it('a dead current path that ranks better (private) still moves to the live candidate after PATH_DEAD_MS', () => {
      pm.setPeer('b', [PRIV, PUB], false);
      pm.onHandshake('b', PRIV);
      sessions.add('b');
      pm.onPong('b', PRIV, 1);
      for (let t = 0; t < PATH_DEAD_MS + 1_000; t += 500) {
        advance(500);
        pm.onPong('b', PUB, 35);
        tick();
      }
      expect(pm.current('b')).toEqual(PUB);
    });

    // BUG (reported): the same with a dead current path that has the lower rtt.
    it('a dead current path with the lower rtt still moves to the live candidate after PATH_DEAD_MS', () => {
      pm.setPeer('b', [PUB, PUB2], false);
      pm.onHandshake('b', PUB);
      sessions.add('b');
      pm.onPong('b', PUB, 5);
      for (let t = 0; t < PATH_DEAD_MS + 1_000; t += 500) {
        advance(500);
        pm.onPong('b', PUB2, 35);
        tick();
      }
      expect(pm.current('b')).toEqual(PUB2);
    });

    it('the state reads "none" while the current path has no evidence for PATH_DEAD_MS', () => {
      pm.setPeer('b', [PUB], false);
      pm.onHandshake('b', PUB);
      const since = now;
      advance(PATH_DEAD_MS);
      expect(pm.state('b')).toEqual({ endpoint: PUB, kind: 'direct', scope: 'public', since });
      advance(1);
      expect(pm.state('b')).toEqual({ endpoint: PUB, kind: 'none', scope: null, since });
      pm.onPong('b', PUB, 3);
      expect(pm.state('b').kind).toBe('direct');
    });
  });

  describe('relay fallback', () => {
    /** Relay-capable and plain peers with live direct paths and known round trips. */
    function relays(list: { name: string; relay: boolean; rtt: number; at: Endpoint }[]): void {
      for (const r of list) {
        pm.setPeer(r.name, [r.at], r.relay);
        pm.onHandshake(r.name, r.at);
        pm.onPong(r.name, r.at, r.rtt);
      }
    }
    /** Keeps the relays' direct paths alive (pings every 5 s). */
    function keepAlive(names: string[], rtt: Record<string, number>): void {
      for (const n of names) pm.onPong(n, pm.current(n)!, rtt[n]!);
    }

    it('no direct answer for RELAY_AFTER_MS: relayed via the fastest relay-capable peer with a live direct path', () => {
      const rtt = { r1: 30, r2: 10, plain: 1, far: 5 };
      relays([
        { name: 'r1', relay: true, rtt: rtt.r1, at: ep('192.0.2.1:51820') },
        { name: 'r2', relay: true, rtt: rtt.r2, at: ep('192.0.2.2:51820') },
        { name: 'plain', relay: false, rtt: rtt.plain, at: ep('192.0.2.3:51820') }, // fastest, but does not relay
      ]);
      // A relay-capable peer that is itself only reached through a relay cannot relay.
      pm.setPeer('far', [ep('192.0.2.4:51820')], true);
      pm.onRoam('far', via('r1'));
      pm.setPeer('b', [PUB, PUB2], true); // b relays too, but never for itself
      sessions.add('b');
      const start = now;
      let moved: { at: number; a: PathActions } | null = null;
      for (let t = 0; t < RELAY_AFTER_MS + 1_000 && moved === null; t += 100) {
        advance(100);
        keepAlive(['r1', 'r2', 'plain'], rtt);
        const a = tick();
        if (a.moves.some((m) => m.name === 'b')) moved = { at: now - start, a };
      }
      expect(moved).not.toBeNull();
      expect(moved!.at).toBeGreaterThanOrEqual(RELAY_AFTER_MS);
      expect(moved!.at).toBeLessThan(RELAY_AFTER_MS + 100);
      expect(moved!.a.moves).toEqual([{ name: 'b', endpoint: via('r2') }]);
      expect(pm.state('b')).toEqual({ endpoint: via('r2'), kind: 'relayed', scope: null, since: now });
      // Still probing the direct candidates, fast, so that the first answer moves us back.
      advance(PROBE_FAST_MS);
      keepAlive(['r1', 'r2', 'plain'], rtt);
      expect(probed(tick(), 'b').sort()).toEqual([describeEndpoint(PUB2), describeEndpoint(PUB)]);
    });

    it('ties between relays go by name', () => {
      const rtt = { zulu: 10, alpha: 10, mike: 10 };
      relays([
        { name: 'zulu', relay: true, rtt: 10, at: ep('192.0.2.1:51820') },
        { name: 'alpha', relay: true, rtt: 10, at: ep('192.0.2.2:51820') },
        { name: 'mike', relay: true, rtt: 10, at: ep('192.0.2.3:51820') },
      ]);
      pm.setPeer('b', [PUB], false);
      advance(RELAY_AFTER_MS);
      keepAlive(['zulu', 'alpha', 'mike'], rtt);
      expect(tick().moves).toEqual([{ name: 'b', endpoint: via('alpha') }]);
    });

    it('does not relay through a relay whose direct path is dead, nor through a non-relay', () => {
      relays([
        { name: 'quiet', relay: true, rtt: 1, at: ep('192.0.2.1:51820') },
        { name: 'plain', relay: false, rtt: 1, at: ep('192.0.2.2:51820') },
      ]);
      pm.setPeer('b', [PUB], false);
      advance(PATH_DEAD_MS + 1);
      pm.onPong('plain', ep('192.0.2.2:51820'), 1);
      expect(tick().moves.filter((m) => m.name === 'b')).toEqual([]);
      expect(pm.state('b').kind).toBe('none');
      // The relay answers again: now it is used.
      pm.onPong('quiet', ep('192.0.2.1:51820'), 1);
      expect(tick().moves.filter((m) => m.name === 'b')).toEqual([{ name: 'b', endpoint: via('quiet') }]);
    });

    it('a peer that answers within RELAY_AFTER_MS is never relayed', () => {
      relays([{ name: 'r', relay: true, rtt: 5, at: ep('192.0.2.1:51820') }]);
      pm.setPeer('b', [PUB], false);
      advance(RELAY_AFTER_MS - 500);
      pm.onHandshake('b', PUB);
      for (let t = 0; t < 3 * RELAY_AFTER_MS; t += 500) {
        advance(500);
        pm.onPong('b', PUB, 9);
        pm.onPong('r', ep('192.0.2.1:51820'), 5);
        expect(tick().moves).toEqual([]);
      }
      expect(pm.state('b').kind).toBe('direct');
    });

    it('a direct pong while relayed upgrades back to direct', () => {
      relays([{ name: 'r', relay: true, rtt: 5, at: ep('192.0.2.1:51820') }]);
      pm.setPeer('b', [PUB, PRIV], false);
      sessions.add('b');
      advance(RELAY_AFTER_MS);
      pm.onPong('r', ep('192.0.2.1:51820'), 5);
      expect(tick().moves).toEqual([{ name: 'b', endpoint: via('r') }]);
      // Relayed pongs keep the relayed path alive but are no direct evidence.
      for (let t = 0; t < 3; t++) {
        advance(1_000);
        pm.onPong('b', via('r'), 12);
        pm.onPong('r', ep('192.0.2.1:51820'), 5);
        expect(tick().moves).toEqual([]);
        expect(pm.state('b').kind).toBe('relayed');
      }
      advance(200);
      pm.onPong('b', PUB, 8); // a probe got through (a hole was punched)
      expect(tick().moves).toEqual([{ name: 'b', endpoint: PUB }]);
      expect(pm.state('b')).toEqual({ endpoint: PUB, kind: 'direct', scope: 'public', since: now });
    });

    it('a relayed path that goes dead is replaced by another relay', () => {
      const rtt = { r1: 5, r2: 50 };
      relays([
        { name: 'r1', relay: true, rtt: 5, at: ep('192.0.2.1:51820') },
        { name: 'r2', relay: true, rtt: 50, at: ep('192.0.2.2:51820') },
      ]);
      pm.setPeer('b', [PUB], false);
      advance(RELAY_AFTER_MS);
      keepAlive(['r1', 'r2'], rtt);
      expect(tick().moves).toEqual([{ name: 'b', endpoint: via('r1') }]);
      // r1 stops answering (its own direct path dies) and nothing comes from b through it.
      for (let t = 0; t <= PATH_DEAD_MS; t += 1_000) {
        advance(1_000);
        keepAlive(['r2'], rtt);
        tick();
      }
      expect(pm.current('b')).toEqual(via('r2'));
    });
  });

  describe('probing', () => {
    it('none without a session; fast while discovering; slow once settled', () => {
      pm.setPeer('b', [PUB, PRIV], false);
      expect(tick().probes).toEqual([]);
      advance(PROBE_FAST_MS);
      expect(tick().probes).toEqual([]);
      sessions.add('b');
      expect(probed(tick(), 'b').sort()).toEqual(['10.1.2.7:51820', '203.0.113.7:51820']);
      advance(PROBE_FAST_MS - 1);
      expect(tick().probes).toEqual([]);
      advance(1);
      expect(probed(tick(), 'b').length).toBe(2);
      // Settle on the private path; probes stay fast until DISCOVER_MS after the peer appeared.
      pm.onHandshake('b', PRIV);
      const times: number[] = [];
      const start = now;
      for (let t = 0; t < DISCOVER_MS + 3 * PROBE_SLOW_MS; t += 250) {
        advance(250);
        if (t % 1_000 === 0) pm.onPong('b', PRIV, 1); // pings keep the path alive
        if (tick().probes.length > 0) times.push(now - start);
      }
      const gaps = times.slice(1).map((x, i) => x - times[i]!);
      const fast = gaps.filter((g) => g === PROBE_FAST_MS).length;
      expect(fast).toBeGreaterThanOrEqual(DISCOVER_MS / PROBE_FAST_MS - 4);
      expect(gaps.slice(-2)).toEqual([PROBE_SLOW_MS, PROBE_SLOW_MS]);
      expect(gaps.every((g) => g === PROBE_FAST_MS || g === PROBE_SLOW_MS)).toBe(true);
    });

    it('probes fast while relayed', () => {
      pm.setPeer('r', [ep('192.0.2.1:51820')], true);
      pm.onHandshake('r', ep('192.0.2.1:51820'));
      pm.setPeer('b', [PUB], false);
      sessions.add('b');
      const times: number[] = [];
      for (let t = 0; t < DISCOVER_MS + 2 * PROBE_SLOW_MS; t += 250) {
        advance(250);
        pm.onPong('r', ep('192.0.2.1:51820'), 3);
        pm.onPong('b', via('r'), 9);
        if (probed(tick(), 'b').length > 0) times.push(now);
      }
      expect(pm.state('b').kind).toBe('relayed');
      const gaps = times.slice(1).map((x, i) => x - times[i]!);
      expect(new Set(gaps)).toEqual(new Set([PROBE_FAST_MS]));
    });

    it('probes fast again while the current path is dead', () => {
      settle('b', PUB);
      const lastEvidence = now;
      const times: number[] = [];
      for (let t = 0; t < 2 * PATH_DEAD_MS; t += 250) {
        advance(250);
        if (tick().probes.length > 0) times.push(now - lastEvidence);
      }
      // Slow (at most one probe) while the silent path still counts as live, fast once it is dead.
      expect(times.filter((x) => x <= PATH_DEAD_MS).length).toBeLessThanOrEqual(1);
      const dead = times.filter((x) => x > PATH_DEAD_MS);
      expect(dead[0]).toBeLessThanOrEqual(PATH_DEAD_MS + 250);
      expect(dead.slice(1).map((x, i) => x - dead[i]!)).toEqual(dead.slice(1).map(() => PROBE_FAST_MS));
      expect(dead.length).toBeGreaterThanOrEqual(PATH_DEAD_MS / PROBE_FAST_MS - 1);
    });

    it('localChanged() probes at once and fast again', () => {
      settle('b', PUB);
      advance(PROBE_SLOW_MS);
      pm.onPong('b', PUB, 10);
      expect(tick().probes.length).toBe(1);
      advance(PROBE_FAST_MS);
      pm.onPong('b', PUB, 10);
      expect(tick().probes).toEqual([]); // settled: slow
      pm.localChanged();
      expect(probed(tick(), 'b')).toEqual(['203.0.113.7:51820']); // at once
      for (let i = 0; i < 3; i++) {
        advance(PROBE_FAST_MS);
        pm.onPong('b', PUB, 10);
        expect(tick().probes.length).toBe(1);
      }
      // ... for DISCOVER_MS, then slow again.
      advance(DISCOVER_MS);
      pm.onPong('b', PUB, 10);
      tick();
      advance(PROBE_FAST_MS);
      pm.onPong('b', PUB, 10);
      expect(tick().probes).toEqual([]);
    });

    it('a new published candidate speeds probing up again; the same set again does not', () => {
      settle('b', PUB);
      advance(PROBE_SLOW_MS);
      pm.onPong('b', PUB, 10);
      tick();
      advance(PROBE_FAST_MS);
      pm.setPeer('b', [PUB], false);
      pm.onPong('b', PUB, 10);
      expect(tick().probes).toEqual([]);
      pm.setPeer('b', [PUB, PUB2], false);
      advance(PROBE_FAST_MS);
      pm.onPong('b', PUB, 10);
      expect(probed(tick(), 'b').sort()).toEqual(['198.51.100.7:40001', '203.0.113.7:51820']);
    });
  });

  describe('handshake targets', () => {
    it('every candidate (current first) without a session; only the current path once settled direct', () => {
      pm.setPeer('b', [PUB, PRIV, PUB2], false);
      expect(pm.handshakeTargets('b', false)).toEqual([PRIV, PUB, PUB2]);
      expect(pm.handshakeTargets('b', true)).toEqual([PRIV, PUB, PUB2]); // no direct path yet
      pm.onHandshake('b', PUB);
      expect(pm.handshakeTargets('b', true)).toEqual([PUB]);
      expect(pm.handshakeTargets('b', false)).toEqual([PUB, PRIV, PUB2]);
    });

    it('relayed: through the relay, and every direct candidate too', () => {
      pm.setPeer('r', [ep('192.0.2.1:51820')], true);
      pm.onHandshake('r', ep('192.0.2.1:51820'));
      pm.setPeer('b', [PUB, PUB2], false);
      advance(RELAY_AFTER_MS);
      pm.onPong('r', ep('192.0.2.1:51820'), 3);
      tick();
      expect(pm.handshakeTargets('b', true)).toEqual([via('r'), PUB, PUB2]);
    });
  });

  describe('setPeer', () => {
    it('keeps the evidence of unchanged candidates', () => {
      pm.setPeer('b', [PUB, PUB2], false);
      pm.onHandshake('b', PUB);
      pm.onPong('b', PUB, 10);
      pm.onPong('b', PUB2, 5);
      sessions.add('b');
      advance(5_000);
      pm.setPeer('b', [PUB2, PUB], false); // the same set, reordered
      expect(pm.state('b')).toMatchObject({ endpoint: PUB, kind: 'direct' });
      // PUB2's evidence survived: when PUB dies, it is the live alternative at once.
      advance(PATH_DEAD_MS - 5_000 + 1);
      pm.onPong('b', PUB2, 10);
      expect(tick().moves).toEqual([{ name: 'b', endpoint: PUB2 }]);
    });

    it('drops an unpublished candidate that is dead, keeps one that still answers (roamed to)', () => {
      const roamed = ep('192.0.2.50:7777');
      pm.setPeer('b', [PUB, PUB2], false);
      pm.onHandshake('b', PUB);
      pm.onRoam('b', roamed);
      sessions.add('b');
      advance(ALIVE_MS - 1_000);
      pm.onPong('b', roamed, 10); // only the roamed-to address keeps answering
      // PUB2 is no longer published and never answered: gone. PUB is, but never answered since long.
      pm.setPeer('b', [PUB], false);
      expect(probed(tick(), 'b').sort()).toEqual(['192.0.2.50:7777', '203.0.113.7:51820']);
      // Unpublished PUB (dead for ALIVE_MS) goes; the roamed one stays while it answers.
      advance(2_000);
      pm.onPong('b', roamed, 10);
      pm.setPeer('b', [PUB2], false);
      advance(PROBE_FAST_MS);
      expect(probed(tick(), 'b').sort()).toEqual(['192.0.2.50:7777', '198.51.100.7:40001']);
      expect(pm.current('b')).toEqual(roamed);
    });

    it('removePeer forgets the peer', () => {
      pm.setPeer('b', [PUB], true);
      pm.onHandshake('b', PUB);
      pm.removePeer('b');
      expect(pm.state('b').kind).toBe('none');
      sessions.add('b');
      expect(tick().probes).toEqual([]);
      pm.onPong('b', PUB, 1); // evidence for an unknown peer is ignored
      pm.onRoam('b', PUB);
      pm.onHandshake('b', PUB);
      expect(pm.current('b')).toBeNull();
    });
  });
});

describe('PathManager: ticks by deadline (issue 11)', () => {
  it('a quiet peer without a session needs no tick once its discovery and relay timers passed', () => {
    const wakes: number[] = [];
    const pm2 = new PathManager({ now: () => now, isLocal, wake: (at) => void wakes.push(at) });
    pm2.setPeer('quiet', [PUB], false);
    expect(wakes).toEqual([now]); // a new peer is due at once
    const none = () => false;
    pm2.tick(none);
    // its timers: the relay fallback after RELAY_AFTER_MS, the end of discovery after DISCOVER_MS
    expect(pm2.nextDue()).toBe(now + RELAY_AFTER_MS);
    advance(RELAY_AFTER_MS);
    pm2.tick(none);
    expect(pm2.nextDue()).toBe(now - RELAY_AFTER_MS + DISCOVER_MS);
    advance(DISCOVER_MS);
    pm2.tick(none);
    expect(pm2.nextDue()).toBe(Infinity);
    // a session makes it probe at the next tick, whatever nextDue said
    const actions = pm2.tick(() => true);
    expect(probed(actions, 'quiet')).toEqual([describeEndpoint(PUB)]);
    expect(pm2.nextDue()).toBe(now + PROBE_FAST_MS);
  });

  it('a settled peer is looked at when its slow probe is due, and evidence makes it due at once', () => {
    settle('b', PUB);
    const due = pm.nextDue();
    expect(due).toBeGreaterThan(now);
    expect(due).toBeLessThanOrEqual(now + PROBE_SLOW_MS);
    // between due times a tick does nothing
    advance(due - now - 1);
    expect(tick().probes).toEqual([]);
    advance(1);
    pm.onPong('b', PUB, 10); // (keeps the path alive)
    expect(pm.nextDue()).toBe(now);
  });
});

describe('PathManager: punch first toward a NATed peer (issue 16)', () => {
  const MAPPED = ep('198.18.7.2:51820'); // the peer's NAT mapping (its reflexive address)
  const LAN = ep('10.9.0.2:51820'); // an address on our own network: no NAT in between
  const punched = (a: PathActions, name: string): string[] => a.punches.filter((p) => p.name === name).map((p) => describeEndpoint(p));

  it('its mapping gets only punches until PUNCH_LEAD_MS after the first, then probes; no handshake goes there before', () => {
    pm.setPeer('f', [MAPPED, LAN], false, { punchFirst: [MAPPED] });
    sessions.add('f');
    let a = tick();
    expect(punched(a, 'f')).toEqual(['198.18.7.2:51820']);
    expect(probed(a, 'f')).toEqual(['10.9.0.2:51820']);
    expect(pm.handshakeTargets('f', false).map(describeEndpoint)).toEqual(['10.9.0.2:51820']);
    // it is due again when the lead ends, not only at the next probe round
    expect(pm.nextDue()).toBe(now + PUNCH_LEAD_MS);
    advance(PUNCH_LEAD_MS - 1);
    a = tick();
    expect(a.probes.concat(a.punches)).toEqual([]);
    advance(1);
    a = tick();
    expect(punched(a, 'f')).toEqual([]);
    expect(probed(a, 'f')).toEqual(['198.18.7.2:51820', '10.9.0.2:51820']);
    expect(pm.handshakeTargets('f', false).map(describeEndpoint)).toContain('198.18.7.2:51820');
  });

  it('punches need no session, probes do; without punchFirst everything is probed at once', () => {
    pm.setPeer('f', [MAPPED], false, { punchFirst: [MAPPED] });
    pm.setPeer('g', [MAPPED], false);
    const a = tick();
    expect(punched(a, 'f')).toEqual(['198.18.7.2:51820']);
    expect(probed(a, 'f')).toEqual([]);
    expect(punched(a, 'g')).toEqual([]);
    expect(pm.handshakeTargets('g', false).map(describeEndpoint)).toEqual(['198.18.7.2:51820']);
    expect(pm.handshakeTargets('f', false)).toEqual([]);
  });

  it('new endpoints of ours published later push the opening back (the peer punches toward them only then)', () => {
    pm.setPeer('f', [MAPPED], false, { punchFirst: [MAPPED] });
    sessions.add('f');
    tick();
    advance(600);
    pm.published();
    advance(PUNCH_LEAD_MS - 600);
    expect(probed(tick(), 'f')).toEqual([]);
    advance(600);
    expect(probed(tick(), 'f')).toEqual(['198.18.7.2:51820']);
  });

  it('a host with no NAT of its own (or not known yet) sends no punch and waits for the peer to reach it', () => {
    let natted = false;
    pm = new PathManager({ now: () => now, isLocal, behindNat: () => natted });
    pm.setPeer('f', [MAPPED], false, { punchFirst: [MAPPED] });
    sessions.add('f');
    expect(tick().punches).toEqual([]);
    advance(PUNCH_LEAD_MS * 5);
    const a = tick();
    expect(a.punches.concat(a.probes)).toEqual([]);
    pm.onPong('f', MAPPED, 5);
    advance(PROBE_FAST_MS);
    expect(probed(tick(), 'f')).toEqual(['198.18.7.2:51820']);
    // a host that learns it is behind a NAT punches at once, not when its peers' timers fall due
    pm.setPeer('g', [PUB2], false, { punchFirst: [PUB2] });
    tick();
    advance(10);
    expect(pm.nextDue()).toBeGreaterThan(now);
    natted = true;
    expect(tick().punches.map((p) => p.name)).toEqual(['g']);
  });

  it('a packet from the mapping opens it at once (both NATs have their entries)', () => {
    pm.setPeer('f', [MAPPED], false, { punchFirst: [MAPPED] });
    sessions.add('f');
    tick();
    advance(100);
    pm.onHandshake('f', MAPPED);
    expect(pm.handshakeTargets('f', true).map(describeEndpoint)).toEqual(['198.18.7.2:51820']);
    advance(PROBE_FAST_MS);
    expect(probed(tick(), 'f')).toEqual(['198.18.7.2:51820']);
  });
});

describe('PathManager: a peer that moves (issue 16)', () => {
  it('moves to the address the peer publishes now at its first pong, even when the old one had the lower round trip', () => {
    settle('pub', PUB, 1);
    pm.setPeer('pub', [PUB2], false);
    tick();
    advance(50);
    pm.onPong('pub', PUB2, 40);
    tick();
    expect(pm.current('pub')).toEqual(PUB2);
    expect(pm.state('pub').kind).toBe('direct');
  });

  it('probes at once when the peer stops publishing an address, even if its new one was a candidate already', () => {
    settle('pub', PUB);
    pm.onPong('pub', PUB2, 10); // its packets came from the new address before its record said so
    tick();
    advance(2_000);
    expect(probed(tick(), 'pub')).toEqual([]); // settled: slow probing
    pm.setPeer('pub', [PUB2], false);
    expect(probed(tick(), 'pub').sort()).toEqual([describeEndpoint(PUB2), describeEndpoint(PUB)].sort());
  });
});
