import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log';
import { loadSodium } from '../../src/crypto/sodium';
import { Noise } from '../../src/crypto/noise';
import { HandshakeManager, INITIATE_DELAY_MS, QUIET_RETRY_MAX_MS, RETRY_MAX_MS, RETRY_MIN_MS, UNDER_LOAD_PER_S, type HandshakeDeps } from '../../src/agent/handshakes';
import type { Endpoint } from '../../src/agent/paths';

type Side = 'lo' | 'hi';
interface Sent {
  to: Side;
  msg: Uint8Array;
  ip: number;
  port: number;
  via?: { relay: string; peer: string };
}

/**
 * Two handshake managers joined by an in-memory wire with a hand-driven clock. A message sent
 * through a relay (`via`) arrives as passed on by the relay peer named 'relay'. Unless `confirm`
 * is false, the data plane is played too: once an initiator holds a session, the responder's
 * side of it is confirmed (as when the initiator's first packet arrives).
 */
async function world(
  opts: { drop?: (msg: Uint8Array, to: Side) => boolean; deps?: (side: Side) => Partial<HandshakeDeps>; confirm?: boolean } = {},
) {
  const s = await loadSodium();
  let now = 1_000_000;
  const kps = [s.crypto_box_keypair(), s.crypto_box_keypair()].sort((x, y) => Buffer.compare(Buffer.from(x.publicKey), Buffer.from(y.publicKey)));
  const wire: { to: Side; msg: Uint8Array; ip: number; port: number; via?: string; origin?: string }[] = [];
  const log: Sent[] = [];
  const timers = { rekeyAfterMs: 10_000, rejectAfterMs: 15_000 };
  const mk = (i: number, name: Side, other: Side, extra: Partial<HandshakeDeps> = {}) => {
    const changes = { n: 0 };
    const m = new HandshakeManager({
      noise: new Noise(s, kps[i]!.privateKey, kps[i]!.publicKey),
      send: (msg, ip, port, via) => {
        log.push({ to: other, msg: msg.slice(), ip, port, ...(via ? { via } : {}) });
        if (opts.drop?.(msg, other)) return;
        if (via) wire.push({ to: other, msg: msg.slice(), ip: 0, port: 0, via: 'relay', origin: name });
        else wire.push({ to: other, msg: msg.slice(), ip: i + 1, port: 51820 });
      },
      onChange: () => changes.n++,
      log: silentLogger,
      now: () => now,
      timers,
      random: () => 0.5,
      ...opts.deps?.(name),
      ...extra,
    });
    return { m, changes };
  };
  const lo = mk(0, 'lo', 'hi');
  const hi = mk(1, 'hi', 'lo');
  lo.m.setPeers([{ name: 'hi', publicKey: kps[1]!.publicKey, ip: 2, port: 51820 }]);
  hi.m.setPeers([{ name: 'lo', publicKey: kps[0]!.publicKey, ip: 1, port: 51820 }]);
  const confirmUsed = (x: HandshakeManager, xPeer: Side, y: HandshakeManager, yPeer: Side) => {
    for (const s of x.sessionsOf(xPeer)) {
      // (the initiator's packets open only under the keys both derived in one handshake)
      const used = y.sessionsOf(yPeer).some((o) => o.initiator && o.localIndex === s.remoteIndex && hex(o.sendKey) === hex(s.recvKey));
      if (!s.confirmed && used) x.confirmed(xPeer, s.keyId);
    }
  };
  const deliver = () => {
    while (wire.length > 0) {
      const w = wire.shift()!;
      (w.to === 'lo' ? lo : hi).m.receive(w.msg, w.ip, w.port, w.via, { origin: w.origin });
    }
    if (opts.confirm === false) return;
    confirmUsed(lo.m, 'hi', hi.m, 'lo');
    confirmUsed(hi.m, 'lo', lo.m, 'hi');
  };
  const advance = (ms: number) => {
    now += ms;
    lo.m.tick();
    hi.m.tick();
    deliver();
  };
  /** The agent on `side` restarts: a new manager with the same key (sessions gone). */
  const restart = (side: Side, extra: Partial<HandshakeDeps> = {}) => {
    const x = side === 'lo' ? lo : hi;
    x.m.close();
    const fresh = side === 'lo' ? mk(0, 'lo', 'hi', extra) : mk(1, 'hi', 'lo', extra);
    x.m = fresh.m;
    x.changes = fresh.changes;
    if (side === 'lo') x.m.setPeers([{ name: 'hi', publicKey: kps[1]!.publicKey, ip: 2, port: 51820 }]);
    else x.m.setPeers([{ name: 'lo', publicKey: kps[0]!.publicKey, ip: 1, port: 51820 }]);
  };
  return { s, lo, hi, deliver, advance, restart, log, kps, timers, wire, now: () => now };
}

const hex = (u: Uint8Array) => Buffer.from(u).toString('hex');

describe('HandshakeManager', () => {
  it('the lower key initiates at once; both sides end with mirrored keys and indices', async () => {
    const w = await world();
    expect(w.log.map((l) => [l.to, l.msg[0]])).toEqual([['hi', 1]]); // only lo initiated so far
    w.deliver();
    const a = w.lo.m.usable('hi')!;
    const b = w.hi.m.usable('lo')!;
    expect(hex(a.send.sendKey)).toBe(hex(b.send.recvKey));
    expect(hex(a.send.recvKey)).toBe(hex(b.send.sendKey));
    expect(a.send.remoteIndex).toBe(b.send.localIndex);
    expect(a.send.initiator).toBe(true);
    expect(b.send.initiator).toBe(false);
    expect(w.lo.m.stats.completed).toBe(1);
    expect(w.hi.m.stats.responsesSent).toBe(1);
  });

  it('the higher key initiates itself when nothing arrives', async () => {
    const w = await world({ drop: (_m, to) => to === 'hi' }); // everything lo sends is lost
    w.deliver();
    w.advance(INITIATE_DELAY_MS - 100);
    expect(w.hi.m.stats.initiationsSent).toBe(0);
    w.advance(200);
    expect(w.hi.m.stats.initiationsSent).toBe(1);
  });

  it('retries a lost initiation with growing backoff', async () => {
    let lost = 3;
    const w = await world({ drop: (m, to) => m[0] === 1 && (to === 'lo' || lost-- > 0) }); // hi's own initiations never arrive
    const sentAt: number[] = [];
    for (let t = 0; t < 10_000 && !w.lo.m.usable('hi'); t += 50) {
      const before = w.lo.m.stats.initiationsSent;
      w.advance(50);
      if (w.lo.m.stats.initiationsSent > before) sentAt.push(w.now());
    }
    expect(w.lo.m.usable('hi')).not.toBeNull();
    const gaps = sentAt.slice(1).map((t, i) => t - sentAt[i]!);
    expect(gaps.length).toBeGreaterThanOrEqual(2);
    expect(gaps[0]!).toBeGreaterThanOrEqual(RETRY_MIN_MS * 2);
    expect(gaps[1]!).toBeGreaterThan(gaps[0]!);
  });

  it('rekeys after rekeyAfter, keeps the previous session for receiving, erases it after rejectAfter', async () => {
    const w = await world();
    w.deliver();
    const first = w.lo.m.usable('hi')!.send;
    const firstKey = first.sendKey; // the manager wipes this array in place on expiry
    w.advance(w.timers.rekeyAfterMs);
    const next = w.lo.m.usable('hi')!;
    expect(next.send.keyId).not.toBe(first.keyId);
    expect(next.others.map((o) => o.keyId)).toContain(first.keyId);
    expect(w.lo.m.stats.rekeys).toBe(1);
    w.advance(w.timers.rejectAfterMs - w.timers.rekeyAfterMs + 1);
    expect(w.lo.m.usable('hi')!.others.map((o) => o.keyId)).not.toContain(first.keyId);
    expect(firstKey.every((b) => b === 0)).toBe(true);
  });

  it('never asks for a tick that is already due: the timer sleeps through a whole rekey cycle', async () => {
    // Between a session's send deadline and its expiry (1/12 of its life) the deadline, already
    // passed, was still counted: nextDue() said "now" after every tick, and the agent's timer ran
    // every millisecond for 15 s of every 3 minutes, per peer (50 ms of CPU a second).
    const w = await world();
    w.deliver();
    const due: string[] = [];
    for (let t = 0; t < 3 * w.timers.rejectAfterMs; t += 100) {
      w.advance(100);
      for (const side of ['lo', 'hi'] as const) {
        // (a message just received may ask for one tick now: the timer runs it, and then...)
        w[side].m.tick();
        const at = w[side].m.nextDue();
        if (at <= w.now()) due.push(`${side} at +${t + 100} ms`);
      }
    }
    expect(w.lo.m.stats.rekeys).toBeGreaterThanOrEqual(3); // (sessions did age through the window)
    expect(due.slice(0, 5)).toEqual([]);
  });

  it('a responder session is for receiving until the initiator uses it', async () => {
    const w = await world({ confirm: false });
    w.deliver();
    w.hi.m.confirmed('lo', w.hi.m.usable('lo')!.send.keyId); // lo used the first session
    w.advance(w.timers.rekeyAfterMs); // lo rekeys: hi answers and now holds two sessions
    const b = w.hi.m.usable('lo')!;
    const newest = [b.send, ...b.others].sort((x, y) => y.created - x.created)[0]!;
    expect(newest.confirmed).toBe(false);
    w.hi.m.confirmed('lo', newest.keyId);
    expect(w.hi.m.usable('lo')!.send.keyId).toBe(newest.keyId);
  });

  it('a responder whose only session is unconfirmed keeps sending on it once confirmed, not on the next one', async () => {
    const w = await world({ confirm: false });
    w.deliver();
    const first = w.hi.m.usable('lo')!.send;
    expect(first.confirmed).toBe(false); // the only session: used for sending all the same
    w.hi.m.confirmed('lo', first.keyId); // the initiator's first packet arrived on it
    w.advance(w.timers.rekeyAfterMs); // lo rekeys; hi answers
    const now = w.hi.m.usable('lo')!;
    expect(now.send.keyId).toBe(first.keyId); // not the new, unconfirmed one
    expect(now.others.some((o) => !o.confirmed && o.created > first.created)).toBe(true);
  });

  it('refuses a replayed initiation and a replayed response, and counts them', async () => {
    const w = await world();
    w.deliver();
    const init = w.log.find((l) => l.msg[0] === 1)!.msg;
    const resp = w.log.find((l) => l.msg[0] === 2)!.msg;
    w.hi.m.receive(init, 1, 51820);
    w.lo.m.receive(resp, 2, 51820);
    expect(w.hi.m.stats.drops.replay).toBe(1);
    expect(w.lo.m.stats.drops.unexpected).toBe(1);
    expect(w.hi.m.stats.completed).toBe(1);
  });

  it('refuses initiations from unknown keys and messages with a bad mac1', async () => {
    const w = await world();
    w.deliver();
    const stranger = new Noise(w.s, ...((k) => [k.privateKey, k.publicKey] as const)(w.s.crypto_box_keypair()));
    const msg = stranger.initiate(w.kps[1]!.publicKey, 5, new Uint8Array(12).fill(0x7f), null)!.msg;
    w.hi.m.receive(msg, 9, 1);
    expect(w.hi.m.stats.drops.unknownPeer).toBe(1);
    const bad = msg.slice();
    bad[20]! ^= 1;
    w.hi.m.receive(bad, 9, 1);
    expect(w.hi.m.stats.drops.mac1).toBe(1);
  });

  it('under load answers with a cookie, and an initiation carrying it gets through', async () => {
    const w = await world();
    w.deliver();
    const stranger = new Noise(w.s, ...((k) => [k.privateKey, k.publicKey] as const)(w.s.crypto_box_keypair()));
    w.advance(w.timers.rekeyAfterMs - 1); // just before lo's rekey
    for (let i = 0; i < UNDER_LOAD_PER_S; i++) {
      const m = stranger.initiate(w.kps[1]!.publicKey, i, new Uint8Array(12).fill(i), null)!.msg;
      w.hi.m.receive(m, 9, 1);
    }
    expect(w.hi.m.stats.cookiesSent).toBe(0);
    const before = w.lo.m.stats.completed;
    w.advance(1); // lo's rekey initiation is one too many this second: it gets a cookie reply
    expect(w.hi.m.stats.cookiesSent).toBe(1);
    expect(w.hi.m.stats.drops.cookieRequired).toBe(1);
    expect(w.lo.m.stats.completed).toBe(before);
    w.advance(100); // lo retries at once with mac2 from the cookie, and gets through the load
    expect(w.lo.m.stats.completed).toBe(before + 1);
    expect(w.hi.m.stats.cookiesSent).toBe(1);
  });

  it('under load a response needs no cookie (the responder could not use one), and our initiations still complete', async () => {
    const w = await world();
    w.deliver();
    w.advance(1000); // a new second of lo's load window
    // lo is under load: initiations from a stranger, more than UNDER_LOAD_PER_S this second
    const stranger = new Noise(w.s, ...((k) => [k.privateKey, k.publicKey] as const)(w.s.crypto_box_keypair()));
    for (let i = 0; i <= UNDER_LOAD_PER_S; i++) w.lo.m.receive(stranger.initiate(w.kps[0]!.publicKey, i, new Uint8Array(12).fill(i), null)!.msg, 9, 1);
    expect(w.lo.m.stats.cookiesSent).toBe(1);
    const completed = w.lo.m.stats.completed;
    w.advance(10);
    w.lo.m.rekeyAll(); // lo initiates; hi (not loaded) answers; the response reaches loaded lo
    w.deliver();
    expect(w.hi.m.stats.responsesSent).toBe(2);
    expect(w.lo.m.stats.completed).toBe(completed + 1);
    expect(w.lo.m.stats.cookiesSent).toBe(1); // no cookie reply to hi's response
    expect(w.lo.m.stats.drops.cookieRequired).toBe(1);
  });

  it('under load an initiation the data plane proved (worker cookie for its source) needs no cookie round; a relayed one is not proven that way', async () => {
    const w = await world({ drop: () => true });
    const stranger = new Noise(w.s, ...((k) => [k.privateKey, k.publicKey] as const)(w.s.crypto_box_keypair()));
    for (let i = 0; i <= UNDER_LOAD_PER_S; i++) w.hi.m.receive(stranger.initiate(w.kps[1]!.publicKey, i, new Uint8Array(12).fill(i), null)!.msg, 9, 1);
    expect(w.hi.m.stats.cookiesSent).toBe(1);
    const init = w.log.find((l) => l.to === 'hi' && l.msg[0] === 1)!.msg;
    w.hi.m.receive(init, 0, 0, 'relay', { origin: 'lo', proven: true });
    expect(w.hi.m.stats.drops.cookieRequired).toBe(2);
    expect(w.hi.m.stats.responsesSent).toBe(0);
    w.hi.m.receive(init, 1, 51820, undefined, { proven: true });
    expect(w.hi.m.stats.drops.cookieRequired).toBe(2);
    expect(w.hi.m.stats.responsesSent).toBe(1);
  });
});

describe('HandshakeManager keys after a rekey', () => {
  it('the old session key does not open packets sealed under the new one', async () => {
    const { createAead } = await import('../../src/crypto/aead');
    const w = await world();
    w.deliver();
    const old = w.hi.m.usable('lo')!.send;
    const oldRecv = Buffer.from(old.recvKey); // copy: the manager wipes keys when they expire
    w.advance(w.timers.rekeyAfterMs);
    const fresh = w.lo.m.usable('hi')!.send; // lo initiated the rekey and sends on it at once
    expect(fresh.keyId).not.toBe(w.lo.m.usable('hi')!.others[0]?.keyId);
    const aead = await createAead();
    const pkt = Buffer.alloc(16 + 64 + 16);
    pkt.fill(0xab, 16, 80);
    aead.seal(aead.loadKey(fresh.sendKey), 7, pkt, 0, 16, 16, 64);
    const withOld = Buffer.from(pkt);
    expect(aead.open(aead.loadKey(oldRecv), 7, withOld, 0, 16, 16, 80)).toBe(-1);
    const newRecv = [w.hi.m.usable('lo')!.send, ...w.hi.m.usable('lo')!.others].find((s) => s.remoteIndex === fresh.localIndex)!;
    expect(aead.open(aead.loadKey(newRecv.recvKey), 7, pkt, 0, 16, 16, 80)).toBe(64);
  });
});

describe('HandshakeManager and paths (relays, targets, rekeyAll)', () => {
  const RELAY: Endpoint = { ip: 0, port: 0, via: 'relay' };

  it('sends each initiation to every target deps.targets names, through the relay for a relayed one', async () => {
    const calls: [string, boolean][] = [];
    const targets: Endpoint[] = [{ ip: 10, port: 1 }, { ip: 11, port: 2 }, RELAY];
    const w = await world({
      deps: (side) => (side === 'lo' ? { targets: (name: string, has: boolean) => (calls.push([name, has]), targets) } : {}),
    });
    expect(calls).toEqual([['hi', false]]);
    expect(w.lo.m.stats.initiationsSent).toBe(1); // one initiation, three copies
    const inits = w.log.filter((l) => l.msg[0] === 1);
    expect(inits.map((l) => [l.ip, l.port, l.via])).toEqual([
      [10, 1, undefined],
      [11, 2, undefined],
      [0, 0, { relay: 'relay', peer: 'hi' }],
    ]);
    expect(new Set(inits.map((l) => hex(l.msg))).size).toBe(1);
    w.deliver();
    // hi answers the first copy that arrives; the others are replays of it
    expect(w.hi.m.stats.responsesSent).toBe(1);
    expect(w.hi.m.stats.drops.replay).toBe(2);
    expect(w.lo.m.usable('hi')).not.toBeNull();
    // with a session: the rekey initiation asks for targets again, saying so
    w.advance(w.timers.rekeyAfterMs);
    expect(calls.at(-1)).toEqual(['hi', true]);
    expect(w.lo.m.stats.rekeys).toBe(1);
  });

  it('a path choice with no target yet (hole punches only) gets no initiation until it names one', async () => {
    let targets: { ip: number; port: number }[] = [];
    const w = await world({ deps: () => ({ targets: () => targets }), drop: () => true });
    expect(w.log.filter((l) => l.to === 'hi')).toEqual([]);
    targets = [{ ip: 9, port: 9000 }];
    w.advance(RETRY_MIN_MS * 2);
    expect(w.log.filter((l) => l.to === 'hi').at(-1)).toMatchObject({ ip: 9, port: 9000 });
  });

  it('with no path choice, initiations go to the last known endpoint; moveEndpoint with a relay sends through it', async () => {
    const w = await world({ deps: () => ({}), drop: () => true });
    expect(w.log.map((l) => [l.to, l.msg[0], l.ip, l.port, l.via])).toEqual([['hi', 1, 2, 51820, undefined]]);
    const lastToHi = () => w.log.filter((l) => l.to === 'hi').at(-1)!;
    w.lo.m.moveEndpoint('hi', 0, 0, 'relay');
    w.advance(RETRY_MIN_MS * 2); // the retry
    expect(w.lo.m.stats.initiationsSent).toBe(2);
    expect(lastToHi()).toMatchObject({ ip: 0, port: 0, via: { relay: 'relay', peer: 'hi' } });
    w.lo.m.moveEndpoint('hi', 7, 7000);
    w.advance(RETRY_MIN_MS * 4);
    expect(w.lo.m.stats.initiationsSent).toBe(3);
    expect(lastToHi()).toMatchObject({ ip: 7, port: 7000 });
    expect(lastToHi().via).toBeUndefined();
  });

  it('a relayed initiation is answered through the relay, and both sides learn the relayed path', async () => {
    const seen: [Side, string, Endpoint][] = [];
    const w = await world({
      drop: () => true, // the test carries every message itself
      deps: (side) => ({ onEndpoint: (name: string, from: Endpoint) => seen.push([side, name, from]) }),
    });
    const init = w.log.find((l) => l.msg[0] === 1)!.msg;
    w.hi.m.receive(init, 0, 0, 'relay');
    expect(seen).toEqual([]); // an initiation alone proves nothing (it could be a replay)
    const resp = w.log.at(-1)!;
    expect([resp.to, resp.msg[0], resp.ip, resp.port, resp.via]).toEqual(['lo', 2, 0, 0, { relay: 'relay', peer: 'lo' }]);
    w.lo.m.receive(resp.msg, 0, 0, 'relay');
    expect(seen).toEqual([['lo', 'hi', RELAY]]);
    w.deliver(); // lo's first packet on the session reaches hi: now it is evidence
    expect(seen).toEqual([
      ['lo', 'hi', RELAY],
      ['hi', 'lo', RELAY],
    ]);
    expect(w.lo.m.usable('hi')!.send.initiator).toBe(true);
    // Later handshakes follow: lo's next initiation (no targets dep) goes through the relay.
    w.advance(w.timers.rekeyAfterMs);
    expect(w.log.at(-1)).toMatchObject({ to: 'hi', ip: 0, port: 0, via: { relay: 'relay', peer: 'hi' } });
  });

  it('onEndpoint gets the source of a response at once, of an initiation once its session is confirmed', async () => {
    const seen: [Side, string, Endpoint][] = [];
    const w = await world({ deps: (side) => ({ onEndpoint: (name: string, from: Endpoint) => seen.push([side, name, from]) }) });
    w.deliver();
    expect(seen).toEqual([
      ['lo', 'hi', { ip: 2, port: 51820 }],
      ['hi', 'lo', { ip: 1, port: 51820 }],
    ]);
    // Messages that fail (a replayed initiation) are no evidence.
    w.hi.m.receive(w.log.find((l) => l.msg[0] === 1)!.msg, 9, 9);
    expect(seen.length).toBe(2);
  });

  it('under load a relayed initiation needs mac2 too: the cookie, bound to the relay, goes back through it', async () => {
    const w = await world();
    w.deliver();
    expect(w.lo.m.usable('hi')).not.toBeNull();
    w.advance(1000); // a new second of hi's load window
    // Load hi: one initiation too many this second (from a stranger) gets a cookie reply.
    const stranger = new Noise(w.s, ...((k) => [k.privateKey, k.publicKey] as const)(w.s.crypto_box_keypair()));
    for (let i = 0; i <= UNDER_LOAD_PER_S; i++) {
      w.hi.m.receive(stranger.initiate(w.kps[1]!.publicKey, i, new Uint8Array(12).fill(i), null)!.msg, 9, 1);
    }
    expect(w.hi.m.stats.cookiesSent).toBe(1);
    const responses = w.hi.m.stats.responsesSent;
    // lo now reaches hi only through the relay, and rekeys.
    w.lo.m.moveEndpoint('hi', 0, 0, 'relay');
    w.lo.m.rekeyAll();
    expect(w.log.at(-1)).toMatchObject({ to: 'hi', via: { relay: 'relay', peer: 'hi' } });
    expect(w.log.at(-1)!.msg[0]).toBe(1);
    w.deliver();
    // No Diffie-Hellman for it: a cookie reply, back through the relay to the sender it named.
    expect(w.hi.m.stats.responsesSent).toBe(responses);
    expect(w.hi.m.stats.drops.cookieRequired).toBe(2);
    expect(w.hi.m.stats.cookiesSent).toBe(2);
    expect(w.log.at(-1)).toMatchObject({ to: 'lo', via: { relay: 'relay', peer: 'lo' } });
    expect(w.log.at(-1)!.msg[0]).toBe(3);
    // lo retries with mac2 from that cookie (still through the relay) and gets through the load.
    w.advance(1);
    expect(w.hi.m.stats.responsesSent).toBe(responses + 1);
    expect(w.hi.m.stats.drops.cookieRequired).toBe(2);
    expect(w.lo.m.stats.completed).toBe(2);
    // The relay's cookie is no good from an address (nor the reverse): replayed direct, the
    // same initiation needs a cookie of its own.
    const withMac2 = w.log.filter((l) => l.to === 'hi' && l.msg[0] === 1).at(-1)!.msg;
    w.hi.m.receive(withMac2, 1, 51820);
    expect(w.hi.m.stats.drops.cookieRequired).toBe(3);
    // A relayed message whose sender the relay did not name gets no reply (there is nowhere to
    // send one) and no Diffie-Hellman either.
    const sent = w.log.length;
    w.hi.m.receive(withMac2.slice().fill(0, 132), 0, 0, 'relay');
    expect(w.hi.m.stats.drops.cookieRequired).toBe(4);
    expect(w.log.length).toBe(sent);
  });

  it.each(['lo', 'hi'] as const)('rekeyAll on %s starts a new handshake at once for a peer with a fresh session', async (side) => {
    const w = await world();
    w.deliver();
    w.advance(1_000);
    const me = side === 'lo' ? w.lo.m : w.hi.m;
    const other = side === 'lo' ? w.hi.m : w.lo.m;
    const before = me.usable(side === 'lo' ? 'hi' : 'lo')!.send.keyId;
    const sent = me.stats.initiationsSent;
    me.rekeyAll(); // our address changed
    expect(me.stats.initiationsSent).toBe(sent + 1);
    w.deliver();
    expect(me.stats.rekeys).toBe(1);
    expect(me.usable(side === 'lo' ? 'hi' : 'lo')!.send.keyId).not.toBe(before);
    expect(me.usable(side === 'lo' ? 'hi' : 'lo')!.send.initiator).toBe(true);
    // Done: no further handshakes until the session ages.
    for (let t = 0; t < 5; t++) w.advance(1_000);
    expect(me.stats.initiationsSent).toBe(sent + 1);
    expect(other.stats.initiationsSent).toBe(side === 'lo' ? 0 : 1);
  });

  it('after rekeyAll a lost initiation is retried until one completes', async () => {
    let lose = false;
    const w = await world({ drop: (m, to) => lose && to === 'hi' && m[0] === 1 });
    w.deliver();
    w.advance(1_000);
    lose = true;
    w.lo.m.rekeyAll();
    const sent = w.lo.m.stats.initiationsSent;
    for (let t = 0; t < 2_000; t += 50) w.advance(50);
    expect(w.lo.m.stats.initiationsSent).toBeGreaterThan(sent + 2);
    expect(w.lo.m.stats.rekeys).toBe(0);
    lose = false;
    for (let t = 0; t < 5_000 && w.lo.m.stats.rekeys === 0; t += 50) w.advance(50);
    expect(w.lo.m.stats.rekeys).toBe(1);
    const done = w.lo.m.stats.initiationsSent;
    for (let t = 0; t < 3_000; t += 50) w.advance(50);
    expect(w.lo.m.stats.initiationsSent).toBe(done);
  });
});

describe('HandshakeManager and replayed initiations (issue 10, hole 3)', () => {
  /** lo's initiations that hi answered, captured on the wire, oldest first. */
  const answeredInits = (w: Awaited<ReturnType<typeof world>>) => {
    const answered = new Set(w.log.filter((l) => l.msg[0] === 2).map((l) => Buffer.from(l.msg).readUInt32LE(8)));
    return w.log.filter((l) => l.msg[0] === 1 && l.to === 'hi' && answered.has(Buffer.from(l.msg).readUInt32LE(4))).map((l) => l.msg);
  };

  async function capturedThree() {
    const seen: [Side, string, Endpoint][] = [];
    const w = await world({ deps: (side) => ({ onEndpoint: (name: string, from: Endpoint) => seen.push([side, name, from]) }) });
    w.deliver();
    for (let i = 0; i < 3; i++) w.advance(w.timers.rekeyAfterMs); // lo rekeys: three more initiations
    const inits = answeredInits(w);
    expect(inits.length).toBeGreaterThanOrEqual(3);
    return { w, seen, inits };
  }

  it('after a restart with the timestamps kept, replayed initiations are refused', async () => {
    const { MemoryTimestamps } = await import('../../src/agent/hs-timestamps');
    const store = new MemoryTimestamps();
    const w = await world({ deps: (side) => (side === 'hi' ? { timestamps: store } : {}) });
    w.deliver();
    for (let i = 0; i < 3; i++) w.advance(w.timers.rekeyAfterMs);
    const inits = answeredInits(w);
    w.restart('hi', { timestamps: store });
    for (const m of inits) w.hi.m.receive(m, 66, 6666);
    expect(w.hi.m.stats.drops.replay).toBe(inits.length);
    expect(w.hi.m.stats.responsesSent).toBe(0);
  });

  it('a peer that leaves and comes back is still held to its newest timestamp', async () => {
    const { w, inits } = await capturedThree();
    w.hi.m.setPeers([]);
    w.hi.m.setPeers([{ name: 'lo', publicKey: w.kps[0]!.publicKey, ip: 1, port: 51820 }]);
    const before = w.hi.m.stats.drops.replay;
    for (const m of inits) w.hi.m.receive(m, 66, 6666);
    expect(w.hi.m.stats.drops.replay - before).toBe(inits.length);
  });

  it('with the timestamps lost, replays neither displace the working session nor move the endpoint', async () => {
    const { w, seen, inits } = await capturedThree();
    w.restart('hi'); // the worst case: nothing remembered
    w.advance(INITIATE_DELAY_MS); // hi initiates itself; lo answers; both have a working session
    const working = w.hi.m.usable('lo')!.send;
    expect(working.initiator && working.confirmed).toBe(true);
    const seenBefore = seen.length;
    for (const m of inits) w.hi.m.receive(m, 66, 6666); // from the attacker's address
    // Each was "new" to the restarted host and answered, but each answer replaced the previous
    // unconfirmed session: one unconfirmed at most, and the working one still sends.
    const all = w.hi.m.sessionsOf('lo');
    expect(all.filter((x) => !x.confirmed).length).toBe(1);
    expect(all).toContain(working);
    expect(w.hi.m.usable('lo')!.send).toBe(working);
    expect(seen.slice(seenBefore)).toEqual([]); // no path evidence from a replay
    // The next initiation goes to lo, not to the attacker.
    w.advance(1);
    w.hi.m.rekeyAll();
    expect(w.log.filter((l) => l.msg[0] === 1).at(-1)).toMatchObject({ to: 'lo', ip: 1, port: 51820 });
  });

  it('an unconfirmed session never pushes out a confirmed one, however many arrive', async () => {
    const w = await world({ confirm: false });
    w.deliver();
    const first = w.hi.m.usable('lo')!.send;
    w.hi.m.confirmed('lo', first.keyId);
    // lo initiates again and again, and never uses any of the new sessions
    for (let i = 0; i < 6; i++) {
      w.advance(1);
      w.lo.m.rekeyAll();
      w.deliver();
    }
    expect(w.hi.m.stats.responsesSent).toBe(7);
    const all = w.hi.m.sessionsOf('lo');
    expect(all).toContain(first);
    expect(all.filter((x) => !x.confirmed).length).toBe(1);
    expect(w.hi.m.usable('lo')!.send).toBe(first);
  });

  it('erases the ephemeral secret of an initiation that a retry replaces', async () => {
    const w = await world({ drop: () => true });
    const pendingOf = () => (Reflect.get(w.lo.m, 'peers') as Map<string, { pending: { ephemeralPrivate: Uint8Array } | null }>).get('hi')!.pending!;
    const first = pendingOf().ephemeralPrivate;
    expect(first.some((b) => b !== 0)).toBe(true);
    w.advance(RETRY_MIN_MS * 2);
    expect(pendingOf().ephemeralPrivate).not.toBe(first);
    expect(first.every((b) => b === 0)).toBe(true);
  });
});

describe('FileTimestamps', () => {
  it('keeps the newest timestamp per key across a restart, skips malformed entries with a warning, stays bounded', async () => {
    const fs = await import('node:fs');
    const os = await import('node:os');
    const path = await import('node:path');
    const { FileTimestamps, MAX_ENTRIES } = await import('../../src/agent/hs-timestamps');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-hsts-'));
    try {
      const file = path.join(dir, 'hs-timestamps.json');
      const warnings: unknown[] = [];
      const log = { ...silentLogger, warn: (o: unknown) => void warnings.push(o) } as unknown as typeof silentLogger;
      const key = new Uint8Array(32).fill(7);
      const a = new FileTimestamps(file, log);
      a.set(key, new Uint8Array(12).fill(9));
      a.flush();
      expect((fs.statSync(file).mode & 0o777).toString(8)).toBe('600');
      const body = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, string>;
      body['not base64!'] = '00';
      body[Buffer.alloc(32, 1).toString('base64')] = 'zz';
      fs.writeFileSync(file, JSON.stringify(body));
      const b = new FileTimestamps(file, log);
      expect(Buffer.from(b.get(key)!).toString('hex')).toBe('09'.repeat(12));
      expect(b.size).toBe(1);
      expect(warnings).toEqual([expect.objectContaining({ skipped: 2 })]);
      for (let i = 0; i < MAX_ENTRIES + 10; i++) {
        const k = Buffer.alloc(32);
        k.writeUInt32LE(i + 1);
        b.set(k, new Uint8Array(12));
      }
      expect(b.size).toBe(MAX_ENTRIES);
      expect(b.get(key)).toBeNull(); // the least recently updated went first
      fs.writeFileSync(file, '{oops');
      expect(new FileTimestamps(file, log).size).toBe(0);
      expect(warnings.length).toBe(2);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('HandshakeManager and departed peers (issue 11, bye)', () => {
  it('a fresh initiation from a key that is no peer is reported once per new timestamp; a replayed one is not', async () => {
    const unknown: string[] = [];
    const w = await world({ deps: (side) => (side === 'hi' ? { onUnknownInitiator: (k: Uint8Array) => void unknown.push(hex(k)) } : {}) });
    w.deliver();
    w.advance(w.timers.rekeyAfterMs); // one rekey: an initiation hi answered, with a newer timestamp
    const old = w.log.filter((l) => l.msg[0] === 1 && l.to === 'hi').map((l) => l.msg);
    expect(old.length).toBeGreaterThanOrEqual(2);
    // lo said bye: hi drops it as a peer.
    w.hi.m.setPeers([]);
    for (const m of old) w.hi.m.receive(m, 66, 6666); // an attacker replays what it captured
    expect(unknown).toEqual([]);
    expect(w.hi.m.stats.drops.unknownPeer).toBe(old.length);
    // lo restarts and initiates anew: a timestamp newer than any hi saw from it.
    w.advance(1_000);
    w.restart('lo');
    w.deliver();
    expect(unknown).toEqual([hex(w.kps[0]!.publicKey)]);
    // The agent makes it a peer again; lo's retry completes.
    w.hi.m.setPeers([{ name: 'lo', publicKey: w.kps[0]!.publicKey, ip: 1, port: 51820 }]);
    w.advance(RETRY_MIN_MS * 4);
    expect(w.lo.m.usable('hi')).not.toBeNull();
    expect(w.hi.m.usable('lo')).not.toBeNull();
  });

  it('a member made a peer again from onUnknownInitiator gets this initiation answered, not its retry', async () => {
    const ref: { hi?: HandshakeManager; admit: boolean } = { admit: false };
    const w = await world({
      deps: (side) =>
        side === 'hi'
          ? { onUnknownInitiator: (k: Uint8Array) => void (ref.admit && ref.hi!.updatePeers([{ name: 'lo', publicKey: k, ip: 1, port: 51820 }], [])) }
          : {},
    });
    ref.hi = w.hi.m;
    w.deliver();
    // lo said bye (hi dropped it), then restarts: its first initiation reaches a hi that does not know it.
    w.hi.m.setPeers([]);
    w.advance(1_000);
    w.restart('lo');
    w.deliver(); // the agent does not admit it this time: dropped and counted, no answer
    expect(w.hi.m.stats.drops.unknownPeer).toBe(1);
    expect(w.lo.m.usable('hi')).toBeNull();
    ref.admit = true;
    w.advance(1);
    w.restart('lo');
    const answered = w.hi.m.stats.responsesSent;
    w.deliver(); // no clock advance: the very initiation is answered
    expect(w.hi.m.stats.responsesSent).toBe(answered + 1);
    expect(w.hi.m.stats.drops.unknownPeer).toBe(1);
    expect(w.lo.m.usable('hi')).not.toBeNull();
    expect(w.hi.m.usable('lo')).not.toBeNull();
  });

  it('a peer known at start is initiated at once by the higher key too; one met later waits INITIATE_DELAY_MS', async () => {
    const w = await world({ drop: () => true }); // nothing arrives: only who sends when counts
    const initiations = () => w.log.filter((l) => l.to === 'lo' && l.msg[0] === 1).length;
    const lo = { name: 'lo', publicKey: w.kps[0]!.publicKey, ip: 1, port: 51820 };
    w.hi.m.setPeers([]);
    w.hi.m.updatePeers([lo], []); // met while running
    const before = initiations();
    w.advance(INITIATE_DELAY_MS - 1);
    expect(initiations()).toBe(before);
    w.advance(1);
    expect(initiations()).toBe(before + 1);
    w.hi.m.setPeers([]);
    w.hi.m.updatePeers([lo], [], { known: true }); // from the cache, before the agent was up
    expect(initiations()).toBe(before + 2);
  });
});

describe('HandshakeManager: timers by deadline, quiet peers, handshakes on demand (issue 11)', () => {
  /** Runs only lo's timer, the way the agent does: jump to lo's nextDue(), tick, repeat. Returns lo's initiation times. */
  function runByDeadline(w: Awaited<ReturnType<typeof world>>, clock: { t: number }, untilMs: number): number[] {
    const at: number[] = [];
    const end = clock.t + untilMs;
    for (let guard = 0; guard < 10_000; guard++) {
      const due = w.lo.m.nextDue();
      if (due > end) break;
      // one millisecond before it is due, nothing happens
      const sent = w.lo.m.stats.initiationsSent;
      if (due - 1 > clock.t) {
        clock.t = due - 1;
        w.lo.m.tick();
        expect(w.lo.m.stats.initiationsSent).toBe(sent);
      }
      clock.t = Math.max(due, clock.t);
      w.lo.m.tick();
      if (w.lo.m.stats.initiationsSent > sent) at.push(clock.t);
    }
    return at;
  }

  it('a peer that never answered is retried ever more rarely, up to QUIET_RETRY_MAX_MS apart, and never between its due times', async () => {
    const c = { t: 0 };
    const w = await world({ drop: () => true, deps: () => ({ now: () => c.t, lastRx: () => 0 }) });
    c.t = w.now();
    const at = runByDeadline(w, c, 20 * 60_000);
    const gaps = at.slice(1).map((x, i) => x - at[i]!);
    for (let i = 1; i < gaps.length; i++) expect(gaps[i]!).toBeGreaterThanOrEqual(gaps[i - 1]! / 1.2 - 1);
    expect(Math.max(...gaps)).toBeGreaterThanOrEqual(QUIET_RETRY_MAX_MS);
    expect(Math.max(...gaps)).toBeLessThanOrEqual(QUIET_RETRY_MAX_MS * 1.2 + 1);
    // 20 minutes: the first ten tries within about four minutes, then one every two minutes.
    // (Retrying every RETRY_MAX_MS forever, as before, would have been 240.)
    expect(at.length).toBeGreaterThan(10);
    expect(at.length).toBeLessThanOrEqual(20);
  });

  it('a peer heard from within HEARD_RECENTLY_MS is retried at least every RETRY_MAX_MS', async () => {
    const c = { t: 0 };
    const w = await world({ drop: () => true, deps: () => ({ now: () => c.t, lastRx: () => c.t - 1_000 }) });
    c.t = w.now();
    const at = runByDeadline(w, c, 60_000);
    const gaps = at.slice(1).map((x, i) => x - at[i]!);
    expect(Math.max(...gaps)).toBeLessThanOrEqual(RETRY_MAX_MS * 1.2 + 1);
    expect(at.length).toBeGreaterThan(10);
  });

  it('demand(): a packet for a peer in slow backoff starts a handshake at once and the fast schedule again', async () => {
    const c = { t: 0 };
    const wakes: number[] = [];
    const w = await world({ drop: () => true, deps: (side) => ({ now: () => c.t, lastRx: () => 0, ...(side === 'lo' ? { wake: (at: number) => void wakes.push(at) } : {}) }) });
    c.t = w.now();
    runByDeadline(w, c, 10 * 60_000);
    expect(w.lo.m.nextDue() - c.t).toBeGreaterThan(RETRY_MAX_MS);
    const sent = w.lo.m.stats.initiationsSent;
    w.lo.m.demand('hi');
    expect(w.lo.m.stats.initiationsSent).toBe(sent + 1);
    w.lo.m.demand('hi'); // an initiation younger than RETRY_MIN_MS is in flight: no second one
    expect(w.lo.m.stats.initiationsSent).toBe(sent + 1);
    // the retry comes after RETRY_MIN_MS (+ jitter), and the timer's owner was told
    expect(w.lo.m.nextDue() - c.t).toBeLessThanOrEqual(RETRY_MIN_MS * 1.2 + 1);
    expect(wakes.at(-1)).toBe(w.lo.m.nextDue());
    w.lo.m.demand('nobody'); // not a peer: nothing
    expect(w.lo.m.stats.initiationsSent).toBe(sent + 1);
  });

  it('demand() does nothing while a session is usable', async () => {
    const w = await world();
    w.deliver();
    const sent = w.lo.m.stats.initiationsSent;
    w.lo.m.demand('hi');
    expect(w.lo.m.stats.initiationsSent).toBe(sent);
  });

  it('a session nothing came back on is not rekeyed; once the peer sends, it is', async () => {
    const rx = { lo: 0, hi: 0 };
    const w = await world({ deps: (side) => ({ lastRx: () => rx[side] }) });
    w.deliver();
    const created = w.lo.m.usable('hi')!.send.created;
    // nextDue (after the tick that looks at the new session): the rekey time
    w.lo.m.tick();
    expect(w.lo.m.nextDue()).toBe(created + w.timers.rekeyAfterMs);
    const sent = w.lo.m.stats.initiationsSent + w.hi.m.stats.initiationsSent;
    for (let i = 0; i < 12; i++) w.advance(1_000); // past both sides' rekey times (10 s and 11 s)
    expect(w.lo.m.stats.initiationsSent + w.hi.m.stats.initiationsSent).toBe(sent);
    expect(w.lo.m.stats.rekeys).toBe(0);
    rx.lo = w.now(); // hi sent lo a packet: lo rekeys within a tenth of rekeyAfter
    for (let i = 0; i < 10 && w.lo.m.stats.rekeys === 0; i++) w.advance(100);
    expect(w.lo.m.stats.rekeys).toBe(1);
    expect(w.lo.m.usable('hi')!.send.created).toBeGreaterThan(created);
  });
});

describe('HandshakeManager: a waiting packet and a new record restart the fast schedule (issue 11)', () => {
  it('demand() while an initiation is in flight brings the next try to RETRY_MIN_MS after it', async () => {
    const c = { t: 0 };
    const w = await world({ drop: () => true, deps: () => ({ now: () => c.t, lastRx: () => 0 }) });
    c.t = w.now();
    for (let i = 0; i < 12; i++) {
      c.t = w.lo.m.nextDue();
      w.lo.m.tick(); // the backoff grows past a minute
    }
    c.t += 1_000;
    w.lo.m.tick();
    expect(w.lo.m.nextDue() - c.t).toBeGreaterThan(60_000);
    w.lo.m.demand('hi');
    const sentAt = c.t;
    c.t += 100;
    w.lo.m.demand('hi'); // in flight for 100 ms: no new one, but the next comes soon
    expect(w.lo.m.nextDue()).toBeLessThanOrEqual(sentAt + RETRY_MIN_MS);
  });

  it('nudge() (a new record) tries a peer in slow backoff at once; a peer with a session is left alone', async () => {
    const c = { t: 0 };
    const w = await world({ drop: () => true, deps: () => ({ now: () => c.t, lastRx: () => 0 }) });
    c.t = w.now();
    for (let i = 0; i < 12; i++) {
      c.t = w.lo.m.nextDue();
      w.lo.m.tick();
    }
    expect(w.lo.m.nextDue() - c.t).toBeGreaterThan(60_000);
    w.lo.m.nudge('hi');
    expect(w.lo.m.nextDue()).toBe(c.t);
    const sent = w.lo.m.stats.initiationsSent;
    w.lo.m.tick();
    expect(w.lo.m.stats.initiationsSent).toBe(sent + 1);
    expect(w.lo.m.nextDue() - c.t).toBeLessThanOrEqual(RETRY_MIN_MS * 1.2 + 1);

    const ok = await world();
    ok.deliver();
    ok.lo.m.tick();
    const due = ok.lo.m.nextDue();
    ok.lo.m.nudge('hi');
    expect(ok.lo.m.nextDue()).toBe(due);
  });
});

describe('HandshakeManager: a peer key that cannot be used (issue 11)', () => {
  it('an initiation that fails (a low-order public key) is retried on the backoff, not at every timer turn', async () => {
    const s = await loadSodium();
    const me = s.crypto_box_keypair();
    let now = 1_000_000;
    const m = new HandshakeManager({ noise: new Noise(s, me.privateKey, me.publicKey), send: () => {}, onChange: () => {}, log: silentLogger, now: () => now, random: () => 0 });
    m.setPeers([{ name: 'bad', publicKey: new Uint8Array(32), ip: 1, port: 51820 }]); // the zero point: every DH with it fails
    expect(m.stats.initiationsSent).toBe(0);
    const dues: number[] = [];
    for (let i = 0; i < 6; i++) {
      const due = m.nextDue();
      expect(due).toBeGreaterThan(now);
      dues.push(due - now);
      now = due;
      m.tick();
    }
    // (the zero key sorts below ours: we wait INITIATE_DELAY_MS first, then back off from RETRY_MIN_MS)
    expect(dues[0]).toBe(INITIATE_DELAY_MS);
    expect(dues[1]).toBe(RETRY_MIN_MS);
    for (let i = 2; i < dues.length; i++) expect(dues[i]!).toBe(dues[i - 1]! * 2);
    expect(m.stats.initiationsSent).toBe(0);
  });
});
