/**
 * Fuzz: handshake messages (types 1-3), which the data plane hands to the control thread.
 *
 *   Noise (src/crypto/noise.ts): checkMac1, checkMac2, receiverOf, consumeInitiation,
 *   consumeResponse, openCookie and cookieReply on random bytes, genuine messages (from a known
 *   peer A, and from a stranger C) and their mutations, with and without mac1 recomputed (anyone
 *   who knows the receiver's public key can do that). The MACs and receiverOf agree with a
 *   reference computed directly with libsodium; a parser accepts a message exactly when its
 *   authenticated bytes are those of a genuine one (only the sender index and the MAC fields
 *   are outside the AEAD, as in WireGuard) and then returns that message's contents; never throws.
 *
 *   HandshakeManager.receive (src/agent/handshakes.ts): node B's manager gets genuine, replayed,
 *   late, mutated (mac1 fixed up or not), stranger's and random messages, floods that put it
 *   under load (cookie replies, mac2), while its clock moves and its own timers initiate, retry,
 *   rekey and expire. Never throws; every message is counted exactly once (a drop or a completed
 *   handshake; a cookie reply may be taken silently); and every session it creates has the keys
 *   that A, holding the other half of a genuine handshake, derives: from an initiation with a
 *   timestamp newer than any accepted before, or from a response to B's own pending initiation,
 *   each at most once.
 */
import { describe, expect, it } from 'vitest';
import { HandshakeManager, type Session } from '../../src/agent/handshakes';
import { COOKIE_LEN, INITIATION_LEN, MSG_COOKIE, MSG_INITIATION, MSG_RESPONSE, Noise, RESPONSE_LEN, timestamp, type PendingInitiation } from '../../src/crypto/noise';
import { loadSodium, type Sodium } from '../../src/crypto/sodium';
import { silentLogger } from '../../src/log';
import { casesFor, check, fuzz, mutate, Rand, seedFor } from '../helpers/fuzz';

const LABEL_MAC1 = Buffer.from('mac1----');
const hex = (u: Uint8Array): string => Buffer.from(u).toString('hex');
const eq = (a: Uint8Array, b: Uint8Array): boolean => Buffer.from(a).equals(Buffer.from(b));

/** mac1 of a message to `pub`, computed directly with libsodium (not through Noise). */
function refMac1(s: Sodium, pub: Uint8Array, m: Uint8Array): Uint8Array | null {
  if (m.length - 32 < 4) return null;
  const key = s.crypto_generichash(32, Buffer.concat([LABEL_MAC1, pub]), null);
  return s.crypto_generichash(16, m.subarray(0, m.length - 32), key);
}

function refMac1Ok(s: Sodium, pub: Uint8Array, m: Uint8Array): boolean {
  const mac = refMac1(s, pub, m);
  return mac !== null && eq(mac, m.subarray(m.length - 32, m.length - 16));
}

/**
 * Recomputes mac1 (and clears mac2), as an attacker who knows the receiver's public key can; also
 * for messages too short to carry one (32..35 bytes), which must still be refused.
 */
function fixMac1(s: Sodium, pub: Uint8Array, m: Buffer): Buffer {
  const key = s.crypto_generichash(32, Buffer.concat([LABEL_MAC1, pub]), null);
  const mac = m.length >= 32 ? s.crypto_generichash(16, m.subarray(0, m.length - 32), key) : null;
  if (mac) {
    m.set(mac, m.length - 32);
    m.fill(0, m.length - 16);
  }
  return m;
}

function refReceiver(m: Uint8Array): number | null {
  const b = Buffer.from(m.buffer, m.byteOffset, m.byteLength);
  if (m.length === RESPONSE_LEN && m[0] === MSG_RESPONSE) return b.readUInt32LE(8);
  if (m.length === COOKIE_LEN && m[0] === MSG_COOKIE) return b.readUInt32LE(4);
  return null;
}

/** True when `m` has `orig`'s length and equals it on `[a, z)` for every given range. */
function sameOn(m: Uint8Array, orig: Uint8Array, ranges: [number, number][]): boolean {
  return m.length === orig.length && ranges.every(([a, z]) => eq(m.subarray(a, z), orig.subarray(a, z)));
}

function clonePending(p: PendingInitiation): PendingInitiation {
  return { ...p, ephemeralPrivate: p.ephemeralPrivate.slice(), ck: p.ck.slice(), h: p.h.slice(), mac1: p.mac1.slice() };
}

interface Keys {
  pub: Uint8Array;
  noise: Noise;
}

async function party(s: Sodium): Promise<Keys> {
  const kp = s.crypto_box_keypair();
  return { pub: kp.publicKey, noise: new Noise(s, kp.privateKey, kp.publicKey) };
}

// ---------------------------------------------------------------------------------------------
// Noise parsers

type Genuine =
  | { kind: 'init'; msg: Uint8Array; from: 'a' | 'c'; fromPub: Uint8Array; ts: Uint8Array; pending: PendingInitiation }
  | { kind: 'resp'; msg: Uint8Array; pending: PendingInitiation; keys: { send: Uint8Array; recv: Uint8Array } }
  | { kind: 'cookie'; msg: Uint8Array; sentMac1: Uint8Array; cookie: Uint8Array };

describe('fuzz: Noise message parsers', () => {
  it('MACs and receiverOf agree with libsodium; parsers accept exactly the genuine authenticated bytes; nothing throws', async () => {
    const s = await loadSodium();
    const [a, b, c] = [await party(s), await party(s), await party(s)];
    const pool: Genuine[] = [];
    let tsn = 1_000;
    const counts = { init: 0, resp: 0, cookie: 0, mac1: 0 };

    const newGenuine = (r: Rand): Genuine => {
      const k = r.int(0, 3);
      const cookie = r.chance(0.3) ? s.randombytes_buf(16) : null;
      if (k <= 1) {
        const from = k === 0 || r.chance(0.5) ? a : c;
        const ts = timestamp((tsn += r.int(1, 5000)));
        const init = from.noise.initiate(b.pub, r.u32(), ts, cookie)!;
        return { kind: 'init', msg: init.msg, from: from === a ? 'a' : 'c', fromPub: from.pub, ts, pending: init.pending };
      }
      const init = a.noise.initiate(b.pub, r.u32(), timestamp((tsn += 1)), null)!;
      if (k === 2) {
        const resp = b.noise.respond(b.noise.consumeInitiation(init.msg)!, r.u32(), cookie)!;
        return { kind: 'resp', msg: resp.msg, pending: init.pending, keys: { send: resp.session.recvKey, recv: resp.session.sendKey } };
      }
      const ck = s.randombytes_buf(16);
      return { kind: 'cookie', msg: b.noise.cookieReply(init.msg, ck), sentMac1: init.pending.mac1, cookie: ck };
    };

    fuzz('noise', casesFor('noise'), (r, _i, note) => {
      if (pool.length < 24 || r.chance(0.02)) {
        pool.push(newGenuine(r));
        if (pool.length > 48) pool.splice(r.int(0, pool.length - 1), 1);
      }
      let orig: Genuine | null = null;
      let m: Buffer;
      switch (r.weighted([3, 5, 4, 2])) {
        case 0: { // random bytes, mostly handshake-typed and of handshake lengths
          m = r.bytes(r.pick([r.int(0, 200), INITIATION_LEN, RESPONSE_LEN, COOKIE_LEN, 36, 35, 34, 33, 32, 0, 1]));
          if (m.length > 0 && r.chance(0.8)) m[0] = r.int(1, 3);
          if (m.length > 3 && r.chance(0.5)) m.fill(0, 1, 4);
          if (r.chance(0.5)) fixMac1(s, r.chance(0.7) ? b.pub : a.pub, m);
          break;
        }
        case 1: { // byte-level mutation of a genuine message, mac1 recomputed half the time
          orig = r.pick(pool);
          m = mutate(r, Buffer.from(orig.msg), 3, 400);
          if (r.chance(0.5)) fixMac1(s, orig.kind === 'init' ? b.pub : a.pub, m);
          break;
        }
        case 2: { // one field of a genuine message changed
          orig = r.pick(pool);
          m = Buffer.from(orig.msg);
          const at = r.pick([0, 1, 2, 3, 4, 5, 7, 8, 9, 11, 12, 20, 40, 43, 44, 59, 60, 63, 87, 88, 100, 115, 116, 131, 132, 147]);
          if (at < m.length) m[at] = m[at]! ^ (1 << r.int(0, 7));
          if (r.chance(0.7)) fixMac1(s, orig.kind === 'init' ? b.pub : a.pub, m);
          break;
        }
        default: // genuine, as sent
          orig = r.pick(pool);
          m = Buffer.from(orig.msg);
      }
      note.input = m;
      note.what = orig ? `derived from a genuine ${orig.kind}` : 'random';

      // MACs and receiverOf: exactly the reference.
      for (const [who, pub] of [[b, b.pub], [a, a.pub]] as const) {
        const got = who.noise.checkMac1(m);
        check(got === refMac1Ok(s, pub, m), `checkMac1 = ${got}, reference disagrees`);
        if (got) counts.mac1++;
      }
      check(Noise.receiverOf(m) === refReceiver(m), `receiverOf = ${Noise.receiverOf(m)}, reference ${refReceiver(m)}`);
      const ck = orig?.kind === 'cookie' ? orig.cookie : s.randombytes_buf(16);
      const mac2ok = m.length >= 20 && eq(s.crypto_generichash(16, m.subarray(0, m.length - 16), ck), m.subarray(m.length - 16));
      check(b.noise.checkMac2(m, ck) === mac2ok, 'checkMac2 disagrees with the reference');

      // consumeInitiation: only the sender index and the MACs are outside the AEAD.
      const init = b.noise.consumeInitiation(m);
      const initOk = orig?.kind === 'init' && m[0] === MSG_INITIATION && m[1] === 0 && m[2] === 0 && m[3] === 0 && sameOn(m, orig.msg, [[8, 116]]);
      check((init !== null) === initOk, () => `consumeInitiation ${init ? 'accepted' : 'refused'} it`);
      if (init && orig?.kind === 'init') {
        counts.init++;
        check(eq(init.peerStatic, orig.fromPub) && eq(init.timestamp, orig.ts), 'initiation contents differ from what was sent');
        check(init.remoteIndex === Buffer.from(m).readUInt32LE(4), 'sender index');
      }

      // consumeResponse against the pending initiation it answers (or a random one).
      const any = r.pick(pool);
      const pend = orig && orig.kind !== 'cookie' ? orig.pending : any.kind !== 'cookie' ? any.pending : null;
      if (pend) {
        const got = a.noise.consumeResponse(m, clonePending(pend));
        const respOk = orig?.kind === 'resp' && m[0] === MSG_RESPONSE && m[1] === 0 && m[2] === 0 && m[3] === 0 && sameOn(m, orig.msg, [[8, 60]]);
        check((got !== null) === respOk, () => `consumeResponse ${got ? 'accepted' : 'refused'} it`);
        if (got && orig?.kind === 'resp') {
          counts.resp++;
          check(eq(got.sendKey, orig.keys.send) && eq(got.recvKey, orig.keys.recv), 'response gave other keys');
          check(got.remoteIndex === Buffer.from(m).readUInt32LE(4) && got.localIndex === pend.localIndex, 'response indices');
        }
      }

      // openCookie: the nonce and box are authenticated (with the mac1 we sent), the rest is routing.
      const sentMac1 = orig?.kind === 'cookie' ? orig.sentMac1 : s.randombytes_buf(16);
      const cookie = a.noise.openCookie(m, b.pub, sentMac1);
      const cookieOk = orig?.kind === 'cookie' && m[0] === MSG_COOKIE && sameOn(m, orig.msg, [[8, COOKIE_LEN]]);
      check((cookie !== null) === cookieOk, () => `openCookie ${cookie ? 'accepted' : 'refused'} it`);
      if (cookie && orig?.kind === 'cookie') {
        counts.cookie++;
        check(eq(cookie, orig.cookie), 'cookie differs');
      }

      // cookieReply, as B sends it to any message that passed mac1 (so at least 36 bytes).
      if (m.length >= 36) {
        const reply = b.noise.cookieReply(m, ck);
        check(reply.length === COOKIE_LEN && reply[0] === MSG_COOKIE && reply[1] === 0 && reply[2] === 0 && reply[3] === 0, 'cookie reply shape');
        check(eq(reply.subarray(4, 8), m.subarray(4, 8)), 'cookie reply receiver index');
        const opened = a.noise.openCookie(reply, b.pub, m.subarray(m.length - 32, m.length - 16));
        check(opened !== null && eq(opened, ck), 'the sender cannot open the cookie reply');
      }
    });
    for (const k of ['init', 'resp', 'cookie', 'mac1'] as const) expect(counts[k], k).toBeGreaterThan(casesFor('noise') / 50);
  });
});

// ---------------------------------------------------------------------------------------------
// HandshakeManager.receive

const A_IP = 0xc6336401; // 198.51.100.1
const C_IP = 0xc0000203;

describe('fuzz: HandshakeManager.receive', () => {
  it('never throws, counts every message once, and only ever creates sessions A shares', async () => {
    const s = await loadSodium();
    const [a, b, c] = [await party(s), await party(s), await party(s)];
    let now = 10_000_000;
    const sent: { msg: Uint8Array; ip: number; port: number }[] = [];
    let r = new Rand(seedFor('handshakeManager') ^ 0x5eed); // replaced by the fuzz stream below
    const mgr = new HandshakeManager({
      noise: b.noise,
      send: (msg, ip, port) => sent.push({ msg: msg.slice(), ip, port }),
      onChange: () => {},
      log: silentLogger,
      now: () => now,
      timers: { rekeyAfterMs: 10_000, rejectAfterMs: 15_000 },
      random: () => r.next(),
    });

    // What A (the test) holds: its initiations by ephemeral key, and its answers to B's initiations.
    const aInits = new Map<string, { msg: Uint8Array; ts: number; pending: PendingInitiation; from: 'a' | 'c' }>();
    const aAnswers = new Map<string, { msg: Uint8Array; keys: { send: Uint8Array; recv: Uint8Array }; used: boolean }>();
    const pool: Uint8Array[] = [];
    let aTs = 50_000;
    let aCookie: Uint8Array | null = null;
    let lastAcceptedTs = -1;
    const seen = { completed: 0, fromInit: 0, fromResp: 0, cookiesSent: 0, cookieTaken: 0, replay: 0, unknownPeer: 0, mac1: 0 };

    const addToPool = (m: Uint8Array): void => {
      pool.push(m);
      if (pool.length > 64) pool.splice(r.int(0, pool.length - 1), 1);
    };

    /** A (or the stranger C) initiates to B. */
    const initiation = (from: 'a' | 'c'): Uint8Array => {
      const who = from === 'a' ? a : c;
      const ts = (aTs += r.int(1, 3000));
      const init = who.noise.initiate(b.pub, r.u32(), timestamp(ts), from === 'a' ? aCookie : null)!;
      aInits.set(hex(init.msg.subarray(8, 40)), { msg: init.msg, ts, pending: init.pending, from });
      addToPool(init.msg);
      return init.msg;
    };

    /** A reads what B sent: answers B's initiations (keeping the keys), takes cookie replies. */
    const aReads = (): void => {
      for (const out of sent.splice(0)) {
        const m = out.msg;
        if (m[0] === MSG_INITIATION) {
          check(out.ip === mgrEndpoint.ip && out.port === mgrEndpoint.port, 'initiation sent somewhere else than A\'s endpoint');
          const got = a.noise.consumeInitiation(m);
          check(got !== null && eq(got.peerStatic, b.pub), 'A cannot read B\'s initiation');
          const resp = a.noise.respond(got!, r.u32(), null)!;
          aAnswers.set(hex(resp.msg.subarray(12, 44)), { msg: resp.msg, keys: { send: resp.session.sendKey, recv: resp.session.recvKey }, used: false });
          addToPool(resp.msg);
          // On the network: A's answer, or (A under load) a cookie reply, arrives soon, sometimes.
          if (r.chance(0.3)) {
            const ck = a.noise.cookieReply(m, s.randombytes_buf(16));
            addToPool(ck);
            soon.push(ck);
          } else if (r.chance(0.5)) soon.push(resp.msg);
        } else if (m[0] === MSG_COOKIE) {
          const init = [...aInits.values()].find((x) => x.from === 'a' && Buffer.from(m).readUInt32LE(4) === x.pending.localIndex);
          if (init) {
            const ck = a.noise.openCookie(m, b.pub, init.pending.mac1);
            if (ck) aCookie = ck;
          }
        }
      }
    };
    let mgrEndpoint = { ip: A_IP, port: 51820 };
    let burst = 0;
    /** Messages from A to B in flight, delivered first (in order) when the fuzzer picks the network. */
    const soon: Uint8Array[] = [];
    mgr.setPeers([{ name: 'a', publicKey: a.pub, ip: A_IP, port: 51820 }]);

    const newest = (): Session | undefined => {
      const u = mgr.usable('a');
      if (!u) return undefined;
      return [u.send, ...u.others].sort((x, y) => y.keyId - x.keyId)[0];
    };

    fuzz('handshakeManager', casesFor('handshakeManager'), (rr, _i, note) => {
      r = rr;
      aReads();
      // Time: mostly small steps; during a flood none, so B is under load (cookies, mac2); timers run.
      if (burst > 0) burst--;
      else if (r.chance(0.005)) burst = r.int(60, 150);
      if (burst === 0 && r.chance(0.3)) {
        now += r.chance(0.1) ? r.int(0, 20_000) : r.int(0, 300);
        mgr.tick();
        aReads();
      }
      let m: Buffer;
      let src = { ip: A_IP, port: 51820 };
      switch (soon.length > 0 && r.chance(0.5) ? 6 : r.weighted([6, 6, 8, 3, 2, 3])) {
        case 0: // a fresh initiation from A
          m = Buffer.from(initiation('a'));
          break;
        case 6: // A's answer or cookie reply to B's initiation, delivered promptly (else B's pending moves on)
          m = Buffer.from(soon.shift() ?? initiation('a'));
          break;
        case 1: // something genuine again: an old initiation, an answer (late, replayed), a cookie reply
          m = Buffer.from(pool.length > 0 ? r.pick(pool) : initiation('a'));
          break;
        case 2: { // a mutated genuine message, mac1 recomputed for B most of the time
          m = mutate(r, Buffer.from(pool.length > 0 ? r.pick(pool) : initiation('a')), 2, 300);
          if (r.chance(0.3) && m.length > 8) m[r.int(4, 7)] = r.byte(); // the unauthenticated sender index
          if (r.chance(0.8)) fixMac1(s, b.pub, m);
          src = r.chance(0.5) ? src : { ip: C_IP, port: r.int(1, 65535) };
          break;
        }
        case 3: // the stranger C's valid initiation
          m = Buffer.from(initiation('c'));
          src = { ip: C_IP, port: 4000 };
          break;
        case 4: { // random bytes with a valid mac1
          m = r.bytes(r.pick([INITIATION_LEN, RESPONSE_LEN, COOKIE_LEN, r.int(36, 200)]));
          m[0] = r.int(1, 3);
          m.fill(0, 1, 4);
          fixMac1(s, b.pub, m);
          src = { ip: C_IP, port: 5000 };
          break;
        }
        default: // anything
          m = r.bytes(r.len(200));
          src = { ip: C_IP, port: 6000 };
      }
      note.input = m;
      const st = mgr.stats;
      const before = { drops: Object.values(st.drops).reduce((x, y) => x + y, 0), completed: st.completed, responses: st.responsesSent, cookies: st.cookiesSent, cookieRequired: st.drops.cookieRequired };
      const prev = newest();
      const sentBefore = sent.length;
      mgr.receive(m, src.ip, src.port);
      const dDrops = Object.values(st.drops).reduce((x, y) => x + y, 0) - before.drops;
      const dDone = st.completed - before.completed;
      // Counted exactly once; a cookie reply alone may be taken without a count.
      check(dDone === 0 || dDone === 1, `completed moved by ${dDone}`);
      if (m[0] === MSG_COOKIE && m.length > 0) {
        check(dDone === 0 && dDrops <= 1, `cookie reply: ${dDrops} drops, ${dDone} completions`);
        if (dDrops === 0) seen.cookieTaken++;
      } else check(dDrops + dDone === 1, () => `${dDrops} drops + ${dDone} completions for one message`);
      check(st.cookiesSent - before.cookies === st.drops.cookieRequired - before.cookieRequired, 'cookie replies and cookieRequired drops differ');
      // Replies go back where the message came from.
      for (const out of sent.slice(sentBefore)) {
        if (out.msg[0] !== MSG_INITIATION) check(out.ip === src.ip && out.port === src.port, 'reply sent to another address');
      }
      if (st.cookiesSent > before.cookies) seen.cookiesSent++;
      if (dDone === 1) {
        seen.completed++;
        const sess = newest()!;
        check(sess !== undefined && sess !== prev, 'completed without a new session');
        if (m[0] === MSG_INITIATION) {
          // Responder: A must be able to complete its initiation with B's response and get B's keys.
          const init = aInits.get(hex(m.subarray(8, 40)));
          check(init !== undefined && init.from === 'a', 'B accepted an initiation A never sent');
          check(init!.ts > lastAcceptedTs, () => `B accepted an initiation with timestamp ${init!.ts}, not newer than ${lastAcceptedTs}`);
          lastAcceptedTs = init!.ts;
          check(st.responsesSent - before.responses === 1, 'no response sent');
          const resp = sent.slice(sentBefore).find((x) => x.msg[0] === MSG_RESPONSE)!;
          const keys = a.noise.consumeResponse(resp.msg, clonePending(init!.pending));
          check(keys !== null && eq(keys.sendKey, sess.recvKey) && eq(keys.recvKey, sess.sendKey), 'B\'s responder session keys are not A\'s');
          check(!sess.initiator && sess.localIndex === keys!.remoteIndex, 'responder session fields');
          seen.fromInit++;
        } else {
          // Initiator: the response must be A's answer to B's initiation, used once.
          check(m[0] === MSG_RESPONSE, `completed on a type ${m[0]} message`);
          const ans = aAnswers.get(hex(m.subarray(12, 44)));
          check(ans !== undefined && !ans.used, 'B completed with a response A did not send (or twice)');
          ans!.used = true;
          check(eq(ans!.keys.send, sess.recvKey) && eq(ans!.keys.recv, sess.sendKey) && sess.initiator, 'B\'s initiator session keys are not A\'s');
          seen.fromResp++;
        }
      }
      if (st.drops.replay > 0) seen.replay = st.drops.replay;
      seen.unknownPeer = st.drops.unknownPeer;
      seen.mac1 = st.drops.mac1;
      // Where B will send its next initiation: a response from a new address moves the peer; an
      // initiation would only once the data plane confirmed its session (never here: it could be
      // a replay).
      if (dDone === 1 && m[0] === MSG_RESPONSE) mgrEndpoint = src;
    });
    mgr.close();
    const n = casesFor('handshakeManager');
    expect(seen.fromInit, 'sessions from initiations').toBeGreaterThan(n / 100);
    expect(seen.fromResp, 'sessions from responses').toBeGreaterThan(n / 500);
    for (const k of ['cookiesSent', 'cookieTaken', 'replay', 'unknownPeer', 'mac1'] as const) expect(seen[k], k).toBeGreaterThan(0);
  });
});
