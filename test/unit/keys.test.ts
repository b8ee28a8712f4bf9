const RUN = '0000000000000000';
import { describe, expect, it } from 'vitest';
import { generateKeyPair, publicKeyOf, type KeyPair } from '../../src/crypto/keys';
import { StaticKeyAgreement } from '../helpers/static-keys';

const hex = (u: Uint8Array): string => Buffer.from(u).toString('hex');

async function agree(a: KeyPair, b: KeyPair) {
  const ka = await StaticKeyAgreement.create(a);
  const kb = await StaticKeyAgreement.create(b);
  return { ab: ka.derive(b.publicKey, RUN, RUN), ba: kb.derive(a.publicKey, RUN, RUN) };
}

describe('key pairs', () => {
  it('are 32-byte X25519 pairs whose public key follows from the private key', async () => {
    const kp = await generateKeyPair();
    expect(kp.publicKey.length).toBe(32);
    expect(kp.privateKey.length).toBe(32);
    expect(hex(await publicKeyOf(kp.privateKey))).toBe(hex(kp.publicKey));
    const other = await generateKeyPair();
    expect(hex(other.privateKey)).not.toBe(hex(kp.privateKey));
  });
});

describe('StaticKeyAgreement', () => {
  it('gives both sides mirror keys and indices', async () => {
    for (let i = 0; i < 8; i++) {
      // Several pairs, so both orderings of the public keys (who is "lower") occur.
      const a = await generateKeyPair();
      const b = await generateKeyPair();
      const { ab, ba } = await agree(a, b);
      expect(ab.txKey.length).toBe(32);
      expect(ab.rxKey.length).toBe(32);
      expect(hex(ab.txKey)).toBe(hex(ba.rxKey));
      expect(hex(ab.rxKey)).toBe(hex(ba.txKey));
      expect(hex(ab.txKey)).not.toBe(hex(ab.rxKey));
      expect(ab.txIndex).toBe(ba.rxIndex);
      expect(ab.rxIndex).toBe(ba.txIndex);
      for (const idx of [ab.txIndex, ab.rxIndex]) {
        expect(Number.isInteger(idx) && idx >= 0 && idx <= 0xffffffff).toBe(true);
      }
    }
  });

  it('is deterministic for the same two identities', async () => {
    const a = await generateKeyPair();
    const b = await generateKeyPair();
    const first = await agree(a, b);
    const second = await agree(a, b);
    expect(hex(second.ab.txKey)).toBe(hex(first.ab.txKey));
    expect(hex(second.ab.rxKey)).toBe(hex(first.ab.rxKey));
    expect(second.ab.txIndex).toBe(first.ab.txIndex);
  });

  it('gives different peers different keys and indices', async () => {
    const a = await generateKeyPair();
    const b = await generateKeyPair();
    const c = await generateKeyPair();
    const ka = await StaticKeyAgreement.create(a);
    const ab = ka.derive(b.publicKey, RUN, RUN);
    const ac = ka.derive(c.publicKey, RUN, RUN);
    const all = [ab.txKey, ab.rxKey, ac.txKey, ac.rxKey].map(hex);
    expect(new Set(all).size).toBe(4);
    expect(ab.rxIndex).not.toBe(ac.rxIndex);
    expect(ab.txIndex).not.toBe(ac.txIndex);
    // A third party's view of b does not give it a's keys.
    const cb = (await StaticKeyAgreement.create(c)).derive(b.publicKey, RUN, RUN);
    expect(all).not.toContain(hex(cb.txKey));
    expect(all).not.toContain(hex(cb.rxKey));
  });

  it('refuses a low-order public key (all zeros)', async () => {
    const ka = await StaticKeyAgreement.create(await generateKeyPair());
    expect(() => ka.derive(new Uint8Array(32), RUN, RUN)).toThrow();
  });

  it('refuses the other small-order points', async () => {
    const ka = await StaticKeyAgreement.create(await generateKeyPair());
    // u = 1 (order 1 after clamping) and the order-8 point from the X25519 blocklist.
    const one = new Uint8Array(32);
    one[0] = 1;
    const order8 = Buffer.from('e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800', 'hex');
    expect(() => ka.derive(one, RUN, RUN)).toThrow();
    expect(() => ka.derive(new Uint8Array(order8), RUN, RUN)).toThrow();
  });

  it('refuses public keys that are not 32 bytes', async () => {
    const ka = await StaticKeyAgreement.create(await generateKeyPair());
    expect(() => ka.derive(new Uint8Array(31), RUN, RUN)).toThrow(RangeError);
    expect(() => ka.derive(new Uint8Array(33), RUN, RUN)).toThrow(RangeError);
  });
});

describe('StaticKeyAgreement across agent runs', () => {
  it('gives new keys and indices when either side restarts, mirrored on both sides', async () => {
    const [a, b] = [await generateKeyPair(), await generateKeyPair()];
    const ka = await StaticKeyAgreement.create(a);
    const kb = await StaticKeyAgreement.create(b);
    const first = ka.derive(b.publicKey, '00000000000000aa', '00000000000000bb');
    const again = ka.derive(b.publicKey, '00000000000000aa', '00000000000000bb');
    const restarted = ka.derive(b.publicKey, '00000000000000a2', '00000000000000bb');
    const mirror = kb.derive(a.publicKey, '00000000000000bb', '00000000000000a2');
    expect(Buffer.from(again.txKey)).toEqual(Buffer.from(first.txKey));
    expect(Buffer.from(restarted.txKey)).not.toEqual(Buffer.from(first.txKey));
    expect(Buffer.from(restarted.rxKey)).not.toEqual(Buffer.from(first.rxKey));
    expect(restarted.txIndex).not.toBe(first.txIndex);
    expect(Buffer.from(mirror.rxKey)).toEqual(Buffer.from(restarted.txKey));
    expect(Buffer.from(mirror.txKey)).toEqual(Buffer.from(restarted.rxKey));
    expect(mirror.rxIndex).toBe(restarted.txIndex);
  });
});
