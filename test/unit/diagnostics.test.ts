import { describe, expect, it } from 'vitest';
import { Diagnostics, RESEND_MS, timeoutParam, type DiagnosticsDeps, type DiagPeer, type DiagPong } from '../../src/agent/diagnostics';
import { renderNetcheck } from '../../src/cli/netcheck';
import { EXIT_NO_REPLY, EXIT_REPLY, renderReply, renderSummary, runPing, summarize, type PingDeps } from '../../src/cli/ping';
import { DIRECT } from '../../src/dataplane/peer';
import { CladnetError } from '../../src/errors';
import type { NetcheckReport, PingAnswer } from '../../src/status/diag-types';
import type { StatusDocument } from '../../src/status/types';
import { parseIpv4 } from '../../src/util/ipv4';

/** `cladnet ping` / `netcheck`: the agent's matching of probes and pongs, and the CLI's renderers and exit codes. */

const ip = (s: string) => parseIpv4(s)!;

/** Fake agent parts with a manual clock: timers run when advance() passes them. */
class FakeAgent {
  mono = 1_000;
  timers: { at: number; fn: () => void; live: boolean }[] = [];
  sent: { slot: number; t0: number }[] = [];
  handshakes: string[] = [];
  sessions = new Set<string>(['h2', 'h3', 'h4']);
  stunAnswers = new Map<string, { ip: number; port: number; rttMs: number } | null>();
  readonly peers: DiagPeer[] = [
    { name: 'h2', slot: 0, overlayIp: '100.64.0.2', relay: false },
    { name: 'h3', slot: 1, overlayIp: '100.64.0.3', relay: true },
    { name: 'h4', slot: 2, overlayIp: '100.64.0.4', relay: false },
  ];

  deps(over: Partial<DiagnosticsDeps> = {}): DiagnosticsDeps {
    return {
      mono: () => this.mono,
      setTimer: (fn, ms) => {
        const t = { at: this.mono + ms, fn, live: true };
        this.timers.push(t);
        return { cancel: () => (t.live = false) };
      },
      peer: (q) => this.peers.find((p) => p.name === q || p.overlayIp === q),
      peers: () => [...this.peers],
      nameOfSlot: (s) => this.peers.find((p) => p.slot === s)?.name,
      hasSession: (n) => this.sessions.has(n),
      handshake: (n) => this.handshakes.push(n),
      send: (slot, t0) => this.sent.push({ slot, t0 }),
      isLocal: (x) => (x & 0xffffff00) >>> 0 === ip('198.19.1.0'),
      ownAddresses: () => ['198.19.1.2'],
      stunServers: () => [...this.stunAnswers.keys()],
      stunQuery: async (s) => this.stunAnswers.get(`${[s.ip >>> 24, (s.ip >>> 16) & 255, (s.ip >>> 8) & 255, s.ip & 255].join('.')}:${s.port}`) ?? null,
      status: () =>
        ({
          self: { name: 'h1', overlayIp: '100.64.0.1', listenPort: 51820, endpoints: ['198.19.1.2:51820'] },
          peers: this.peers.map((p) => ({ name: p.name, state: 'up' })),
        }) as unknown as StatusDocument,
      ...over,
    };
  }

  /** Moves the clock, running due timers in order; lets promise callbacks run between them. */
  async advance(ms: number): Promise<void> {
    const end = this.mono + ms;
    for (;;) {
      await Promise.resolve();
      const next = this.timers.filter((t) => t.live && t.at <= end).sort((a, b) => a.at - b.at)[0];
      if (!next) break;
      this.mono = next.at;
      next.live = false;
      next.fn();
    }
    this.mono = end;
    await new Promise((r) => setImmediate(r));
  }
}

function pong(slot: number, t0: number, over: Partial<DiagPong> = {}): DiagPong {
  return { slot, t0, rttMs: 0.42, ip: ip('198.18.2.2'), port: 51820, via: DIRECT, seenIp: ip('198.18.9.9'), seenPort: 51820, ...over };
}

describe('Diagnostics: ping', () => {
  it('sends one probe stamped with its clock and claims only the pong carrying that stamp', async () => {
    const f = new FakeAgent();
    const d = new Diagnostics(f.deps());
    const p = d.ping('h2', 1_000);
    expect(f.sent).toEqual([{ slot: 0, t0: 1_000 }]);
    // A regular ping's pong (another stamp) and one from another peer are not ours: the path choice gets them.
    expect(d.onPong(pong(0, 999))).toBe(false);
    expect(d.onPong(pong(1, 1_000))).toBe(false);
    expect(d.onPong(pong(0, 1_000, { rttMs: 0.4123 }))).toBe(true);
    expect(await p).toEqual({
      version: 1,
      peer: { name: 'h2', overlayIp: '100.64.0.2' },
      reply: { path: 'direct', endpoint: '198.18.2.2:51820', scope: 'public', via: null, rttMs: 0.412 },
      error: null,
      handshake: false,
    });
    // Answered once: a duplicate is not claimed, nothing is left in flight.
    expect(d.onPong(pong(0, 1_000))).toBe(false);
    expect(d.inFlight).toBe(0);
  });

  it('names a relayed reply by its relay, a private path by its scope, and finds peers by overlay address', async () => {
    const f = new FakeAgent();
    const d = new Diagnostics(f.deps());
    const relayed = d.ping('100.64.0.4', 1_000);
    d.onPong(pong(2, f.sent[0]!.t0, { via: 1, ip: 0, port: 0, seenIp: 0, seenPort: 0 }));
    expect((await relayed).reply).toEqual({ path: 'relayed', endpoint: null, scope: null, via: 'h3', rttMs: 0.42 });
    const priv = d.ping('h2', 1_000);
    d.onPong(pong(0, f.sent[1]!.t0, { ip: ip('198.19.1.5') }));
    expect((await priv).reply).toMatchObject({ path: 'direct', endpoint: '198.19.1.5:51820', scope: 'private' });
    // Two probes in the same millisecond still carry distinct stamps.
    expect(f.sent[1]!.t0).toBeGreaterThan(f.sent[0]!.t0);
  });

  it('times out without an answer (and forgets the probe)', async () => {
    const f = new FakeAgent();
    const d = new Diagnostics(f.deps());
    const p = d.ping('h2', 500);
    await f.advance(499);
    expect(d.inFlight).toBe(1);
    await f.advance(1);
    expect(await p).toMatchObject({ reply: null, error: 'timeout', handshake: false });
    expect(d.inFlight).toBe(0);
    expect(f.sent).toHaveLength(1);
  });

  it('without a session: asks for a handshake, sends once one is up and again until answered', async () => {
    const f = new FakeAgent();
    f.sessions.delete('h2');
    const d = new Diagnostics(f.deps());
    const p = d.ping('h2', 1_000);
    expect(f.handshakes).toEqual(['h2']);
    expect(f.sent).toEqual([]);
    await f.advance(100);
    f.sessions.add('h2');
    await f.advance(20);
    expect(f.sent).toHaveLength(1);
    await f.advance(RESEND_MS);
    expect(f.sent).toHaveLength(2);
    d.onPong(pong(0, f.sent[1]!.t0));
    expect(await p).toMatchObject({ handshake: true, error: null, reply: { path: 'direct' } });
    expect(d.inFlight).toBe(0);
  });

  it('no session within the timeout says so', async () => {
    const f = new FakeAgent();
    f.sessions.delete('h2');
    const d = new Diagnostics(f.deps());
    const p = d.ping('h2', 200);
    await f.advance(200);
    expect(await p).toMatchObject({ reply: null, error: 'no-session', handshake: true });
  });

  it('an unknown peer is ENOPEER; a missing peer or a bad timeout is ECONFIG', async () => {
    const d = new Diagnostics(new FakeAgent().deps());
    await expect(d.ping('nope')).rejects.toMatchObject({ code: 'ENOPEER', message: expect.stringContaining('"nope"') });
    await expect(d.ping(null)).rejects.toMatchObject({ code: 'ECONFIG', field: 'peer' });
    expect(() => timeoutParam('0', 1)).toThrow(CladnetError);
    expect(() => timeoutParam('abc', 1)).toThrow(/timeoutMs: "abc"/);
    expect(timeoutParam(null, 1_000)).toBe(1_000);
    expect(timeoutParam('250', 1_000)).toBe(250);
  });
});

describe('Diagnostics: netcheck', () => {
  it('one mapping from every observer off our networks: endpoint-independent, with RTTs per peer and STUN server', async () => {
    const f = new FakeAgent();
    f.stunAnswers.set('198.18.0.1:3478', { ip: ip('198.18.9.9'), port: 51820, rttMs: 1.5 });
    const d = new Diagnostics(f.deps());
    const p = d.netcheck(1_000);
    await f.advance(0);
    d.onPong(pong(0, f.sent[0]!.t0)); // h2 direct, public
    d.onPong(pong(1, f.sent[1]!.t0, { ip: ip('198.18.3.2'), rttMs: 0.3 })); // h3 (the relay) direct
    d.onPong(pong(2, f.sent[2]!.t0, { via: 1, ip: 0, port: 0, seenIp: 0, seenPort: 0, rttMs: 2 })); // h4 relayed
    const r = await p;
    expect(r).toMatchObject({ reflexive: '198.18.9.9:51820', nat: 'eim' });
    expect(r.observations.map((o) => o.observer)).toEqual(['stun 198.18.0.1:3478', 'h2', 'h3']);
    expect(r.stun).toEqual([{ server: '198.18.0.1:3478', rttMs: 1.5, mapped: '198.18.9.9:51820' }]);
    expect(r.peers.map((x) => [x.name, x.reply?.path, x.seen])).toEqual([
      ['h2', 'direct', '198.18.9.9:51820'],
      ['h3', 'direct', '198.18.9.9:51820'],
      ['h4', 'relayed', null],
    ]);
  });

  it('different mappings per observer: varies; a peer on our own network is no observer', async () => {
    const f = new FakeAgent();
    f.stunAnswers.set('198.18.0.1:3478', { ip: ip('198.18.9.9'), port: 40001, rttMs: 1 });
    const d = new Diagnostics(f.deps());
    const p = d.netcheck(1_000);
    await f.advance(0);
    d.onPong(pong(0, f.sent[0]!.t0, { seenPort: 40002 }));
    d.onPong(pong(1, f.sent[1]!.t0, { ip: ip('198.19.1.7'), seenIp: ip('198.19.1.2') })); // same LAN
    await f.advance(1_000); // h4 never answers: timeout
    const r = await p;
    expect(r.nat).toBe('varies');
    expect(r.observations.map((o) => o.observer)).toEqual(['stun 198.18.0.1:3478', 'h2']);
    expect(r.peers.find((x) => x.name === 'h4')).toMatchObject({ reply: null, error: 'timeout' });
  });

  it('nobody off our networks answering: unknown; peers without a session are not handshaken for it', async () => {
    const f = new FakeAgent();
    f.sessions.clear();
    const d = new Diagnostics(f.deps());
    const r = await d.netcheck(500);
    expect(r).toMatchObject({ reflexive: null, nat: 'unknown', observations: [], stun: [] });
    expect(r.peers.every((x) => x.error === 'no-session')).toBe(true);
    expect(f.handshakes).toEqual([]);
    expect(f.sent).toEqual([]);
  });
});

const answer = (over: Partial<PingAnswer> = {}): PingAnswer => ({
  version: 1,
  peer: { name: 'h2', overlayIp: '100.64.0.2' },
  reply: { path: 'direct', endpoint: '198.18.2.2:51820', scope: 'public', via: null, rttMs: 0.41 },
  error: null,
  handshake: false,
  ...over,
});

describe('ping renderers and exit codes', () => {
  it('a line per reply: the path that answered and the RTT', () => {
    expect(renderReply(answer(), 1, 1_000)).toBe('reply from h2: via 198.18.2.2:51820 direct public, rtt 0.41 ms, seq 1');
    expect(renderReply(answer({ peer: { name: 'h3', overlayIp: '100.64.0.3' }, reply: { path: 'relayed', endpoint: null, scope: null, via: 'h1', rttMs: 1.2 } }), 2, 1_000)).toBe(
      'reply from h3: via relay h1, rtt 1.2 ms, seq 2',
    );
    expect(renderReply(answer({ handshake: true, reply: { path: 'direct', endpoint: '198.19.1.5:51820', scope: 'private', via: null, rttMs: 12.345 } }), 3, 1_000)).toBe(
      'reply from h2: via 198.19.1.5:51820 direct private, rtt 12.3 ms, seq 3 (after a handshake)',
    );
    expect(renderReply(answer({ reply: null, error: 'timeout' }), 4, 500)).toBe('no reply from h2: timed out after 500 ms, seq 4');
    expect(renderReply(answer({ reply: null, error: 'no-session', handshake: true }), 1, 500)).toBe(
      'no reply from h2: no session (no handshake completed within 500 ms), seq 1',
    );
  });

  it('a summary like ping(8)', () => {
    const s = summarize(
      [
        { ...answer(), seq: 1 },
        { ...answer({ reply: null, error: 'timeout' }), seq: 2 },
        { ...answer({ reply: { path: 'direct', endpoint: 'x', scope: 'public', via: null, rttMs: 0.61 } }), seq: 3 },
      ],
      3,
    );
    expect(s).toMatchObject({ sent: 3, received: 2, lossPct: 33.3 });
    expect(s.rttMs!.avg).toBeCloseTo(0.51, 6);
    expect(s.rttMs!.mdev).toBeCloseTo(0.1, 6);
    expect(renderSummary(s, 'h2', 2003.4)).toBe(
      '\n--- h2 ping statistics ---\n3 sent, 2 received, 33.3% loss, time 2003 ms\nrtt min/avg/max/mdev = 0.410/0.510/0.610/0.100 ms',
    );
    expect(renderSummary(summarize([], 0), 'h9', 0)).toBe('\n--- h9 ping statistics ---\n0 sent, 0 received, 0% loss, time 0 ms');
  });

  function deps(answers: (PingAnswer | { status: number; body: unknown })[]): PingDeps & { out: string[]; slept: number[] } {
    let now = 0;
    const out: string[] = [];
    const slept: number[] = [];
    return {
      out,
      slept,
      request: async () => {
        now += 1;
        const a = answers.shift()!;
        return 'status' in a ? a : { status: 200, body: a };
      },
      write: (t) => out.push(t),
      sleep: async (ms) => {
        slept.push(ms);
        now += ms;
      },
      now: () => now,
      stopped: () => false,
    };
  }

  it('exit 0 with any reply, 1 with none; the interval counts from each ping\'s start', async () => {
    const d = deps([answer({ reply: null, error: 'timeout' }), answer()]);
    expect(await runPing({ peer: 'h2', count: 2, intervalS: 0.2, timeoutS: 1 }, false, d)).toBe(EXIT_REPLY);
    expect(d.out[0]).toBe("PING h2 (100.64.0.2) with the agent's own ping/pong on its current path");
    expect(d.out).toContain('reply from h2: via 198.18.2.2:51820 direct public, rtt 0.41 ms, seq 2');
    expect(d.slept).toEqual([199]);
    const none = deps([answer({ reply: null, error: 'timeout' })]);
    expect(await runPing({ peer: 'h2', count: 1, intervalS: 1, timeoutS: 1 }, false, none)).toBe(EXIT_NO_REPLY);
    expect(none.out.at(-1)).toContain('1 sent, 0 received, 100% loss');
  });

  it('--json prints one document; an unknown peer is the agent\'s ENOPEER (the command maps it to exit 2)', async () => {
    const d = deps([answer()]);
    expect(await runPing({ peer: 'h2', count: 1, intervalS: 1, timeoutS: 1 }, true, d)).toBe(EXIT_REPLY);
    expect(d.out).toHaveLength(1);
    expect(JSON.parse(d.out[0]!)).toMatchObject({ peer: { name: 'h2' }, sent: 1, received: 1, replies: [{ seq: 1, reply: { rttMs: 0.41 } }] });
    const unknown = deps([{ status: 404, body: { error: 'no peer named or addressed "h9"', code: 'ENOPEER' } }]);
    await expect(runPing({ peer: 'h9', count: 1, intervalS: 1, timeoutS: 1 }, false, unknown)).rejects.toMatchObject({ code: 'ENOPEER' });
  });
});

describe('netcheck renderer', () => {
  const report = (over: Partial<NetcheckReport> = {}): NetcheckReport => ({
    version: 1,
    self: { name: 'h3', overlayIp: '100.64.0.3', listenPort: 51820, endpoints: [] },
    reflexive: '198.18.3.2:51820',
    nat: 'eim',
    observations: [
      { observer: 'stun 198.18.0.1:3478', kind: 'stun', observerIp: '198.18.0.1', seen: '198.18.3.2:51820' },
      { observer: 'h1', kind: 'peer', observerIp: '198.18.1.2', seen: '198.18.3.2:51820' },
    ],
    stun: [{ server: '198.18.0.1:3478', rttMs: 0.31, mapped: '198.18.3.2:51820' }],
    peers: [
      { name: 'h1', overlayIp: '100.64.0.1', state: 'up', relay: true, reply: { path: 'direct', endpoint: '198.18.1.2:51820', scope: 'public', via: null, rttMs: 0.2 }, error: null, seen: '198.18.3.2:51820' },
      { name: 'h4', overlayIp: '100.64.0.4', state: 'up', relay: false, reply: { path: 'relayed', endpoint: null, scope: null, via: 'h1', rttMs: 1.5 }, error: null, seen: null },
      { name: 'h5', overlayIp: '100.64.0.5', state: 'down', relay: false, reply: null, error: 'timeout', seen: null },
    ],
    tookMs: 12.3,
    ...over,
  });

  it('reflexive address, NAT kind, observers, STUN, peers and relays', () => {
    expect(renderNetcheck(report())).toBe(
      [
        'netcheck from h3 (100.64.0.3), udp 51820, measured in 12.3 ms',
        '  reflexive address: 198.18.3.2:51820',
        '  NAT: endpoint-independent mapping: the same public address and port for every destination (direct paths can be punched)',
        '  seen by:',
        '    stun 198.18.0.1:3478  at 198.18.0.1  saw us at 198.18.3.2:51820',
        '    h1                    at 198.18.1.2  saw us at 198.18.3.2:51820',
        '  STUN servers:',
        '    198.18.0.1:3478  0.31 ms  mapped 198.18.3.2:51820',
        '  peers:',
        '    PEER  OVERLAY IP  STATE  RTT        PATH                            SAW US AT',
        '    h1    100.64.0.1  up     0.2 ms     198.18.1.2:51820 direct public  198.18.3.2:51820',
        '    h4    100.64.0.4  up     1.5 ms     relay h1                        -',
        '    h5    100.64.0.5  down   no answer  -                               -',
        '  relays: reachable',
        '    h1 (up): reachable, answered via 198.18.1.2:51820 direct public in 0.2 ms',
      ].join('\n'),
    );
  });

  it('a mapping that varies, no STUN, no relay reachable, nothing known', () => {
    const t = renderNetcheck(
      report({
        nat: 'varies',
        stun: [],
        peers: [{ name: 'h1', overlayIp: '100.64.0.1', state: 'down', relay: true, reply: null, error: 'no-session', seen: null }],
      }),
    );
    expect(t).toContain('NAT: mapping varies by destination');
    expect(t).toContain('STUN servers: none configured');
    expect(t).toContain('relays: NONE reachable\n    h1 (down): NOT reachable directly, no session');
    const empty = renderNetcheck(report({ nat: 'unknown', reflexive: null, observations: [], stun: [], peers: [] }));
    expect(empty).toContain('reflexive address: -');
    expect(empty).toContain('NAT: unknown');
    expect(empty).toContain('peers: none yet');
    expect(empty).toContain('relays: none in this network');
  });
});
