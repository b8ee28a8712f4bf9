/**
 * The cookie secret comes from libsodium's CSPRNG, not from the injected `random` (which only
 * jitters retries). With `random` pinned to a constant, the secret of two managers, and of one
 * manager before and after rotation, must still differ; observed from outside, through the cookie
 * replies they send under load.
 */
import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log';
import { loadSodium } from '../../src/crypto/sodium';
import { Noise, timestamp } from '../../src/crypto/noise';
import { HandshakeManager, UNDER_LOAD_PER_S } from '../../src/agent/handshakes';

const SOURCE_IP = (198 << 24) | (18 << 16) | (1 << 8) | 2; // 198.18.1.2
const hex = (u: Uint8Array) => Buffer.from(u).toString('hex');

async function setup() {
  const s = await loadSodium();
  const r = s.crypto_box_keypair();
  const i = s.crypto_box_keypair();
  const initiator = new Noise(s, i.privateKey, i.publicKey);
  let now = 5_000_000;
  let ts = 1;
  /** A responder manager with a constant `random`; returns a function that yields the cookie it gives 198.18.1.2:51820. */
  const responder = () => {
    const replies: Uint8Array[] = [];
    const m = new HandshakeManager({
      noise: new Noise(s, r.privateKey, r.publicKey),
      send: (msg) => replies.push(msg.slice()),
      onChange: () => {},
      log: silentLogger,
      now: () => now,
      random: () => 0.5,
    });
    const cookie = (): Uint8Array => {
      // One second of initiations from one source: the one past UNDER_LOAD_PER_S gets a cookie reply.
      for (let n = 0; n <= UNDER_LOAD_PER_S; n++) {
        const init = initiator.initiate(r.publicKey, 1000 + n, timestamp(ts++), null)!;
        replies.length = 0;
        m.receive(init.msg, SOURCE_IP, 51820);
        if (replies.length === 1 && replies[0]![0] === 3) {
          const opened = initiator.openCookie(replies[0]!, r.publicKey, init.pending.mac1);
          if (opened) return opened;
        }
      }
      throw new Error('the responder never sent a cookie reply');
    };
    return { m, cookie };
  };
  return { responder, advance: (ms: number) => (now += ms) };
}

describe('cookie secret', () => {
  it('two managers with the same key and a constant random give one source different cookies', async () => {
    const { responder } = await setup();
    const a = responder().cookie();
    const b = responder().cookie();
    expect(a.length).toBe(16);
    expect(hex(a)).not.toBe(hex(b));
  });

  it('a rotated secret differs from the one before it, even with a constant random', async () => {
    const { responder, advance } = await setup();
    const r = responder();
    const before = r.cookie();
    advance(1_000);
    expect(hex(r.cookie())).toBe(hex(before)); // same secret within its 2 minutes
    advance(121_000);
    r.m.tick();
    advance(1_000);
    expect(hex(r.cookie())).not.toBe(hex(before));
  });
});
