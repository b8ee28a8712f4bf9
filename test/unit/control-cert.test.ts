import { beforeAll, describe, expect, it } from 'vitest';
import {
  canonicalCert,
  canonicalRevocation,
  CLOCK_SKEW_MS,
  issueCert,
  nextCertChange,
  revokes,
  signRevocation,
  TrustAnchor,
} from '../../src/control/cert';
import {
  HostCert,
  HostRecord,
  parseHostCert,
  parseHostRecord,
  parseNetworkSpec,
  parseRevocationRecord,
  serializeHostRecord,
  serializeRevocationRecord,
} from '../../src/control/records';
import { isCladnetError } from '../../src/errors';
import { loadEd25519, type Ed25519, type SigningKeyPair } from '../../src/crypto/sign';

const X = (n: number) => Buffer.alloc(32, n).toString('base64');
const T0 = Date.parse('2026-11-21T00:00:00.000Z');
const DAY = 86_400_000;

let ed: Ed25519;
let net: SigningKeyPair; // the network key
let other: SigningKeyPair; // an attacker's key
let anchor: TrustAnchor;
const b64 = (u: Uint8Array) => Buffer.from(u).toString('base64');

beforeAll(async () => {
  ed = await loadEd25519();
  net = ed.generate();
  other = ed.generate();
  anchor = new TrustAnchor(ed, 'demo', b64(net.publicKey));
});

function cert(over: Partial<Parameters<typeof issueCert>[2]> = {}, key = net.secretKey): HostCert {
  return issueCert(ed, key, { network: 'demo', name: 'a', publicKey: X(1), overlayIp: '100.64.0.5', now: new Date(T0), ...over });
}

function record(c: HostCert | undefined, over: Partial<HostRecord> = {}): HostRecord {
  return {
    version: 1,
    name: 'a',
    network: 'demo',
    overlayIp: '100.64.0.5',
    publicKey: X(1),
    endpoints: ['198.18.1.2:51820'],
    hostCidrs: [],
    listenPort: 51820,
    epoch: 1,
    updated: '2026-11-21T00:00:00Z',
    session: '0123456789abcdef',
    ...(c ? { cert: c } : {}),
    ...over,
  };
}

describe('Ed25519 (src/crypto/sign.ts)', () => {
  it('signs and verifies; refuses other keys, other messages and malformed input without throwing', () => {
    const msg = new TextEncoder().encode('hello');
    const sig = ed.sign(msg, net.secretKey);
    expect(sig).toHaveLength(64);
    expect(ed.verify(sig, msg, net.publicKey)).toBe(true);
    expect(ed.verify(sig, msg, other.publicKey)).toBe(false);
    expect(ed.verify(sig, new TextEncoder().encode('hellO'), net.publicKey)).toBe(false);
    expect(ed.verify(sig.subarray(0, 63), msg, net.publicKey)).toBe(false);
    expect(ed.verify(sig, msg, net.publicKey.subarray(1))).toBe(false);
    expect(ed.verify(new Uint8Array(64), msg, new Uint8Array(32))).toBe(false);
  });

  it('derives the public half of a secret key and notices halves that disagree', () => {
    expect(b64(ed.publicKeyOf(net.secretKey)!)).toBe(b64(net.publicKey));
    const mixed = new Uint8Array(64);
    mixed.set(net.secretKey.subarray(0, 32));
    mixed.set(other.publicKey, 32);
    expect(ed.publicKeyOf(mixed)).toBeNull();
    expect(ed.publicKeyOf(new Uint8Array(32))).toBeNull();
  });
});

describe('certificates', () => {
  it('canonical form: a label line and the signed fields in a fixed order, whatever the object order', () => {
    const c = cert({ serial: '0123456789abcdef0123456789abcdef' });
    const shuffled = { serial: c.serial, notAfter: c.notAfter, issued: c.issued, overlayIp: c.overlayIp, publicKey: c.publicKey, name: c.name, network: c.network, version: c.version } as const;
    const text = new TextDecoder().decode(canonicalCert(shuffled));
    expect(text).toBe(
      'cladnet host certificate v1\n' +
        `{"version":1,"network":"demo","name":"a","publicKey":"${X(1)}","overlayIp":"100.64.0.5",` +
        `"issued":"2026-11-21T00:00:00.000Z","notAfter":"2027-11-21T00:00:00.000Z","serial":"0123456789abcdef0123456789abcdef"}`,
    );
    expect(canonicalCert(c)).toEqual(canonicalCert(shuffled));
  });

  it('issue: one year by default, a random serial, and it verifies', () => {
    const c = cert();
    expect(c.notAfter).toBe('2027-11-21T00:00:00.000Z');
    expect(c.serial).toMatch(/^[0-9a-f]{32}$/);
    expect(cert().serial).not.toBe(c.serial);
    expect(anchor.verifyCert(c, T0 + DAY)).toBeNull();
    expect(parseHostCert(JSON.stringify(c))).toEqual({ ok: true, value: c });
  });

  it('issue refuses a bad name, key, address or lifetime, naming the field', () => {
    const bad: [Partial<Parameters<typeof issueCert>[2]>, string][] = [
      [{ name: 'Bad_Name' }, 'name'],
      [{ network: '-x' }, 'network'],
      [{ publicKey: 'abc' }, 'publicKey'],
      [{ overlayIp: '100.64.0' }, 'overlayIp'],
      [{ validDays: 0 }, 'validDays'],
      [{ validDays: 99999 }, 'validDays'],
    ];
    for (const [over, field] of bad) {
      try {
        cert(over);
        expect.unreachable(field);
      } catch (e) {
        expect(isCladnetError(e, 'ECONFIG'), String(e)).toBe(true);
        expect((e as { field?: string }).field).toBe(field);
      }
    }
  });

  it.each([
    ['network', 'other'],
    ['name', 'b'],
    ['publicKey', X(2)],
    ['overlayIp', '100.64.0.6'],
    ['issued', '2026-11-20T00:00:00.000Z'],
    ['notAfter', '2099-11-21T00:00:00.000Z'],
    ['serial', 'ffffffffffffffffffffffffffffffff'],
  ] as const)('a certificate with %s changed after signing does not verify', (field, value) => {
    const c = { ...cert(), [field]: value };
    const anchorFor = field === 'network' ? new TrustAnchor(ed, 'other', b64(net.publicKey)) : anchor;
    expect(anchorFor.verifyCert(c, T0 + DAY)).toMatch(/^cert\.signature: not signed by this network's key/);
  });

  it('refuses a signature by another key, a flipped signature bit, and another network', () => {
    expect(anchor.verifyCert(cert({}, other.secretKey), T0)).toMatch(/^cert\.signature: not signed/);
    const c = cert();
    const sig = Buffer.from(c.signature, 'base64');
    sig[10]! ^= 1;
    expect(anchor.verifyCert({ ...c, signature: sig.toString('base64') }, T0)).toMatch(/^cert\.signature/);
    expect(anchor.verifyCert(cert({ network: 'prod' }), T0)).toBe('cert.network: "prod" is not this network ("demo")');
  });

  it('checks the validity period: expired, not yet valid (beyond the clock skew allowance), inverted', () => {
    const c = cert({ validDays: 10 });
    expect(anchor.verifyCert(c, T0)).toBeNull();
    expect(anchor.verifyCert(c, T0 + 10 * DAY)).toBeNull(); // the last valid moment
    expect(anchor.verifyCert(c, T0 + 10 * DAY + 1)).toBe('cert.notAfter: expired at 2026-12-01T00:00:00.000Z');
    expect(anchor.verifyCert(c, T0 - CLOCK_SKEW_MS)).toBeNull(); // issuer's clock a little ahead
    expect(anchor.verifyCert(c, T0 - CLOCK_SKEW_MS - 1)).toBe('cert.issued: not valid before 2026-11-21T00:00:00.000Z');
    // A signed certificate whose notAfter is not after issued (only a broken issuer makes one).
    const fields = { ...c, notAfter: c.issued };
    const inverted = { ...fields, signature: b64(ed.sign(canonicalCert(fields), net.secretKey)) };
    expect(anchor.verifyCert(inverted, T0)).toMatch(/^cert\.notAfter: .* is not after issued/);
  });

  it('nextCertChange: the next moment a certificate becomes valid or expires', () => {
    const a = cert({ validDays: 10 });
    const b = cert({ validDays: 2, now: new Date(T0 + DAY) });
    expect(nextCertChange([a, b], T0)).toBe(T0 + DAY - CLOCK_SKEW_MS);
    expect(nextCertChange([a, b], T0 + DAY)).toBe(T0 + 3 * DAY + 1);
    expect(nextCertChange([a, b], T0 + 20 * DAY)).toBeNull();
  });
});

describe('TrustAnchor.checkRecord', () => {
  it('accepts a record whose certificate verifies and binds its name, key and address', () => {
    expect(anchor.checkRecord(record(cert()), T0)).toBeNull();
  });

  it('refuses a record without a certificate', () => {
    expect(anchor.checkRecord(record(undefined), T0)).toBe('cert: missing (the record is not signed by the network key)');
  });

  it('refuses a record that claims what its certificate does not say', () => {
    const c = cert();
    expect(anchor.checkRecord(record(c, { overlayIp: '100.64.0.9' }), T0)).toBe("overlayIp: 100.64.0.9 differs from the certificate's 100.64.0.5");
    expect(anchor.checkRecord(record(c, { publicKey: X(9) }), T0)).toMatch(/^publicKey: .* differs from the certificate's/);
    expect(anchor.checkRecord(record(c, { name: 'b' }), T0)).toBe('name: "b" differs from the certificate\'s "a"');
    expect(anchor.checkRecord(record(cert({}, other.secretKey)), T0)).toMatch(/^cert\.signature: not signed/);
    expect(anchor.checkRecord(record(cert({ validDays: 1 })), T0 + 2 * DAY)).toMatch(/^cert\.notAfter: expired/);
  });

  it('the anchor must be a 32-byte key', () => {
    expect(() => new TrustAnchor(ed, 'demo', 'abc')).toThrow(/trustAnchor/);
  });
});

describe('revocations', () => {
  it('sign and verify; tampering, another key or a certificate signature passed off as one do not verify', () => {
    const r = signRevocation(ed, net.secretKey, { network: 'demo', name: 'a', now: new Date(T0) });
    expect(r).toMatchObject({ version: 1, network: 'demo', name: 'a', serial: null, revoked: '2026-11-21T00:00:00.000Z' });
    expect(anchor.verifyRevocation(r)).toBeNull();
    expect(parseRevocationRecord(serializeRevocationRecord(r))).toEqual({ ok: true, value: r });
    expect(anchor.verifyRevocation({ ...r, name: 'b' })).toMatch(/^signature: not signed/);
    expect(anchor.verifyRevocation({ ...r, revoked: '2030-01-01T00:00:00.000Z' })).toMatch(/^signature/);
    expect(anchor.verifyRevocation({ ...r, serial: '0123456789abcdef0123456789abcdef' })).toMatch(/^signature/);
    expect(anchor.verifyRevocation(signRevocation(ed, other.secretKey, { network: 'demo', name: 'a' }))).toMatch(/^signature/);
    expect(anchor.verifyRevocation({ ...r, network: 'prod' })).toMatch(/^network:/);
    // Domain separation: the canonical forms differ in their label line.
    expect(new TextDecoder().decode(canonicalRevocation(r))).toMatch(/^cladnet revocation v1\n\{"version":1,"network":"demo","name":"a","serial":null,/);
  });

  it('by name: every certificate issued up to the revocation; by serial: that certificate only', () => {
    const old = cert();
    const renewed = cert({ now: new Date(T0 + DAY) });
    const byName = signRevocation(ed, net.secretKey, { network: 'demo', name: 'a', now: new Date(T0 + 1000) });
    expect(revokes(byName, old)).toBe(true);
    expect(revokes(byName, renewed)).toBe(false);
    expect(revokes(byName, cert({ name: 'b' }))).toBe(false);
    const bySerial = signRevocation(ed, net.secretKey, { network: 'demo', name: 'a', serial: renewed.serial, now: new Date(T0 + 2 * DAY) });
    expect(revokes(bySerial, renewed)).toBe(true);
    expect(revokes(bySerial, old)).toBe(false);
  });

  it('parse refuses bad shapes naming the field', () => {
    const r = signRevocation(ed, net.secretKey, { network: 'demo', name: 'a' });
    const bad = (o: object) => {
      const p = parseRevocationRecord(JSON.stringify({ ...r, ...o }));
      expect(p.ok).toBe(false);
      return p.ok ? '' : p.error;
    };
    expect(bad({ serial: 'xyz' })).toMatch(/^serial: /);
    expect(bad({ signature: 'AAAA' })).toMatch(/^signature: /);
    expect(bad({ revoked: 'yesterday' })).toMatch(/^revoked: /);
    expect(parseRevocationRecord(serializeRevocationRecord(r), { name: 'b' }).ok).toBe(false);
  });
});

describe('records with and without a certificate', () => {
  it('a host record round-trips with its certificate, and without one (trust is decided later)', () => {
    const c = cert();
    const withCert = parseHostRecord(serializeHostRecord(record(c)));
    expect(withCert).toEqual({ ok: true, value: record(c) });
    if (withCert.ok) expect(Object.isFrozen(withCert.value.cert)).toBe(true);
    const without = parseHostRecord(serializeHostRecord(record(undefined)));
    expect(without.ok && without.value.cert).toBe(undefined);
    expect(serializeHostRecord(record(undefined))).not.toContain('cert');
  });

  it('a malformed certificate makes the record invalid, naming cert.<field>', () => {
    const c = cert();
    const raw = (over: object) => JSON.stringify({ ...record(undefined), cert: { ...c, ...over } });
    const err = (s: string) => {
      const p = parseHostRecord(s);
      return p.ok ? 'ok' : p.error;
    };
    expect(err(raw({ signature: 'short' }))).toBe('cert.signature: "short" is not base64 of 64 bytes');
    expect(err(raw({ serial: 12 }))).toBe('cert.serial: expected a string, got 12');
    expect(err(raw({ version: 2 }))).toBe('cert.version: expected 1, got 2');
    expect(err(JSON.stringify({ ...record(undefined), cert: 'x' }))).toBe('cert: expected an object, got "x"');
    // Unknown fields inside the certificate are dropped, like everywhere else.
    const p = parseHostRecord(raw({ extra: 1 }));
    expect(p.ok && Object.keys(p.value.cert!)).not.toContain('extra');
  });

  it('a network spec carries its trust anchor, which must be a 32-byte key', () => {
    const base = { version: 1, name: 'demo', cidr: '100.64.0.0/24', mtu: 1420, port: 51820, created: '2026-11-21T00:00:00Z' };
    const ok = parseNetworkSpec(JSON.stringify({ ...base, trustAnchor: b64(net.publicKey) }));
    expect(ok.ok && ok.value.trustAnchor).toBe(b64(net.publicKey));
    const none = parseNetworkSpec(JSON.stringify(base));
    expect(none.ok && 'trustAnchor' in none.value).toBe(false);
    const bad = parseNetworkSpec(JSON.stringify({ ...base, trustAnchor: 'nope' }));
    expect(bad).toEqual({ ok: false, error: 'trustAnchor: "nope" is not base64 of 32 bytes' });
  });
});
