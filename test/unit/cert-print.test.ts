import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { issueCert, signGrant, signNetworkSpec } from '../../src/control/cert';
import { serializeCertFile, writeNetworkKey } from '../../src/control/credentials';
import { encodeToken } from '../../src/control/token';
import type { SigningKeyPair } from '../../src/crypto/sign';
import { anchorFrom, inspectFile, keyId, renderCertInfo, type CertInfo, type TokenInfo } from '../../src/cli/cert-print';
import { CladnetError } from '../../src/errors';
import { DAY, T0, trustFixture, X, type TrustFixture } from '../helpers/trust';

/** `cladnet cert print`: certificates and tokens in words, signatures checked, no secret shown, bad files named. */
let fx: TrustFixture;
let dir: string;
let delegate: SigningKeyPair;
const b64 = (u: Uint8Array) => Buffer.from(u).toString('base64');
const NOW = T0 + 10 * DAY;

function write(name: string, text: string, mode = 0o644): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, text, { mode });
  return f;
}

/** The text with each label's padding (which depends on the longest label) reduced to one space. */
const squash = (t: string): string => t.replace(/:[ ]+/g, ': ');

function failure(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof CladnetError) return `${e.code} ${e.message}`;
    throw e;
  }
  return 'no error';
}

beforeAll(async () => {
  fx = await trustFixture();
  delegate = fx.ed.generate();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-certprint-'));
});

afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('cert print: a host certificate', () => {
  it('shows name, network, address, key fingerprint, period, serial and issuer, and the signature holds against the file\'s anchor', () => {
    const cert = fx.certFor('a');
    const f = write('a.cert', serializeCertFile({ trustAnchor: fx.anchor.publicKey, cert }));
    const info = inspectFile(fx.ed, f, null, NOW) as CertInfo;
    expect(info).toMatchObject({
      kind: 'certificate',
      name: 'a',
      network: 'demo',
      overlayIp: '100.64.0.2',
      publicKey: X(97),
      fingerprint: keyId(X(97)),
      relay: false,
      serial: cert.serial,
      issuer: { kind: 'network-key', keyId: keyId(fx.anchor.publicKey) },
      validity: { state: 'valid', issued: cert.issued, notAfter: cert.notAfter },
      signature: { valid: true, error: null, against: { source: 'file', publicKey: fx.anchor.publicKey } },
    });
    expect(info.fingerprint).toMatch(/^[0-9a-f]{16}$/);
    const text = renderCertInfo(info, NOW);
    expect(text).toContain(`host certificate ${f}`);
    expect(text).toMatch(/name:\s+a\n/);
    expect(text).toMatch(/overlay IP:\s+100\.64\.0\.2\n/);
    expect(squash(text)).toContain(`public key: ${X(97)} (fingerprint ${info.fingerprint})`);
    expect(squash(text)).toContain(`serial: ${cert.serial}`);
    expect(squash(text)).toContain(`expires: ${cert.notAfter} (in 355 day(s))`);
    expect(squash(text)).toContain(`issuer: network key, key id ${keyId(fx.anchor.publicKey)}`);
    expect(squash(text)).toContain('signature: valid against the trust anchor in the file');
    expect(squash(text)).toContain('routes: none');
  });

  it('shows the network spec the file carries (what the agent holds etcd\'s against), or that it carries none', () => {
    const cert = fx.certFor('a');
    const unsigned = { version: 1 as const, name: 'demo', cidr: '100.64.0.0/24', mtu: 1380, port: 51820, created: new Date(T0).toISOString(), trustAnchor: fx.anchor.publicKey, serial: 42 };
    const spec = signNetworkSpec(fx.ed, fx.net.secretKey, unsigned);
    const withSpec = inspectFile(fx.ed, write('s.cert', serializeCertFile({ trustAnchor: fx.anchor.publicKey, cert, spec })), null, NOW) as CertInfo;
    expect(withSpec.spec).toEqual({ cidr: '100.64.0.0/24', mtu: 1380, port: 51820, serial: 42 });
    expect(squash(renderCertInfo(withSpec, NOW))).toContain('network spec: 100.64.0.0/24, MTU 1380, port 51820, serial 42');
    const without = inspectFile(fx.ed, write('n.cert', serializeCertFile({ trustAnchor: fx.anchor.publicKey, cert })), null, NOW) as CertInfo;
    expect(without.spec).toBeNull();
    expect(squash(renderCertInfo(without, NOW))).toContain('network spec: none');
    const grant = signGrant(fx.ed, fx.net.secretKey, { network: 'demo', names: 'web-*', uses: 1, ttlMs: DAY, certDays: 30, delegateKey: b64(delegate.publicKey), now: new Date(T0) });
    const token = encodeToken({ trustAnchor: fx.anchor.publicKey, grant, secret: delegate.secretKey, spec });
    const t = inspectFile(fx.ed, write('s.token', token, 0o600), null, NOW) as TokenInfo;
    expect(t.spec).toEqual({ cidr: '100.64.0.0/24', mtu: 1380, port: 51820, serial: 42 });
    expect(squash(renderCertInfo(t, NOW))).toContain('network spec: 100.64.0.0/24, MTU 1380, port 51820, serial 42');
  });

  it('a gateway\'s certificate lists the prefixes it may route', () => {
    const cert = issueCert(fx.ed, fx.net.secretKey, { network: 'demo', name: 'gw', publicKey: X(98), overlayIp: '100.64.0.9', routes: ['198.19.2.0/24', '198.19.1.0/24'], now: new Date(T0) });
    const info = inspectFile(fx.ed, write('gw.cert', serializeCertFile({ trustAnchor: fx.anchor.publicKey, cert })), null, NOW) as CertInfo;
    expect(info.routes).toEqual(['198.19.1.0/24', '198.19.2.0/24']);
    expect(info.signature?.valid).toBe(true);
    expect(squash(renderCertInfo(info, NOW))).toContain('routes: 198.19.1.0/24, 198.19.2.0/24');
  });

  it('against the right network key it is valid; against another key it is INVALID and names the field', () => {
    const f = write('b.cert', serializeCertFile({ trustAnchor: fx.anchor.publicKey, cert: fx.certFor('b') }));
    const keyFile = path.join(dir, 'demo.netkey');
    writeNetworkKey(keyFile, 'demo', fx.net);
    const good = inspectFile(fx.ed, f, anchorFrom(fx.ed, { networkKey: keyFile }), NOW) as CertInfo;
    expect(good.signature).toMatchObject({ valid: true, against: { source: 'network-key', keyId: keyId(fx.anchor.publicKey) } });
    expect(renderCertInfo(good, NOW)).toContain(`valid against the network key given, key id ${keyId(fx.anchor.publicKey)}`);

    const other = b64(fx.ed.generate().publicKey);
    const wrong = inspectFile(fx.ed, f, anchorFrom(fx.ed, { trustAnchor: other }), NOW) as CertInfo;
    expect(wrong.signature?.valid).toBe(false);
    expect(wrong.signature?.error).toMatch(/^cert\.signature: not signed by this network's key/);
    expect(squash(renderCertInfo(wrong, NOW))).toContain(`signature: INVALID against the trust anchor given, key id ${keyId(other)}: cert.signature`);
    // The issuer stays the key the file names; only the check used the other one.
    expect(wrong.issuer).toEqual({ kind: 'network-key', keyId: keyId(fx.anchor.publicKey) });
    // A file whose certificate was altered after signing fails against its own anchor too.
    const forged = { ...fx.certFor('b'), overlayIp: '100.64.0.99' };
    const g = write('forged.cert', serializeCertFile({ trustAnchor: fx.anchor.publicKey, cert: forged }));
    expect((inspectFile(fx.ed, g, null, NOW) as CertInfo).signature?.valid).toBe(false);
  });

  it('an expired certificate still verifies, and says EXPIRED', () => {
    const cert = fx.certFor('c', { validDays: 1 });
    const f = write('c.cert', serializeCertFile({ trustAnchor: fx.anchor.publicKey, cert }));
    const info = inspectFile(fx.ed, f, null, NOW) as CertInfo;
    expect(info.validity.state).toBe('expired');
    expect(info.signature?.valid).toBe(true);
    expect(squash(renderCertInfo(info, NOW))).toContain(`expires: ${cert.notAfter} (EXPIRED 9 day(s) ago)`);
  });

  it('a certificate made under a join token names the token, its use and the delegate key', () => {
    const grant = signGrant(fx.ed, fx.net.secretKey, { network: 'demo', names: 'web-*', uses: 2, ttlMs: 3_600_000, certDays: 30, delegateKey: b64(delegate.publicKey), now: new Date(T0) });
    const cert = issueCert(fx.ed, delegate.secretKey, { network: 'demo', name: 'web-1', publicKey: X(5), overlayIp: '100.64.0.11', now: new Date(T0 + 60_000), token: { grant, use: 1 } });
    const f = write('web-1.cert', serializeCertFile({ trustAnchor: fx.anchor.publicKey, cert }));
    const info = inspectFile(fx.ed, f, null, T0 + DAY) as CertInfo;
    expect(info.issuer).toEqual({ kind: 'join-token', token: grant.id, use: 1, delegateKeyId: keyId(grant.delegateKey), grantIssuerKeyId: keyId(fx.anchor.publicKey) });
    expect(info.signature?.valid).toBe(true);
    expect(squash(renderCertInfo(info, T0 + DAY))).toContain(`issuer: join token ${grant.id} (use 1): delegate key id ${keyId(grant.delegateKey)}`);
  });
});

describe('cert print: a join token', () => {
  it('shows the grant, never the delegate secret (text or JSON), and checks the grant against the key given', () => {
    const grant = signGrant(fx.ed, fx.net.secretKey, { network: 'demo', names: 'db-*', uses: 3, ttlMs: 7_200_000, certDays: 90, delegateKey: b64(delegate.publicKey), now: new Date(T0) });
    const token = encodeToken({ trustAnchor: fx.anchor.publicKey, grant, secret: new Uint8Array(delegate.secretKey) });
    const f = write('join.token', `${token}\n`, 0o600);
    const info = inspectFile(fx.ed, f, null, T0 + 60_000) as TokenInfo;
    expect(info).toMatchObject({
      kind: 'token',
      id: grant.id,
      network: 'demo',
      names: 'db-*',
      uses: 3,
      certDays: 90,
      validity: { state: 'valid', notAfter: grant.notAfter },
      delegateKeyId: keyId(grant.delegateKey),
      issuer: { kind: 'network-key', keyId: keyId(fx.anchor.publicKey) },
      signature: { valid: true, against: { source: 'file' } },
    });
    const text = renderCertInfo(info, T0 + 60_000);
    expect(text).toContain(`join token ${f}`);
    expect(text).toMatch(/enrol until:\s+\S+ \(in 2 hour\(s\)\)/);
    expect(text).toContain('its secret half is in the token: not shown');
    const secret = b64(delegate.secretKey);
    const seed = Buffer.from(delegate.secretKey.subarray(0, 32)).toString('hex');
    for (const out of [text, JSON.stringify(info)]) {
      expect(out).not.toContain(secret);
      expect(out).not.toContain(seed);
      expect(out).not.toContain(token.slice(20, 60));
    }
    const wrong = inspectFile(fx.ed, f, anchorFrom(fx.ed, { trustAnchor: b64(fx.ed.generate().publicKey) }), T0) as TokenInfo;
    expect(wrong.signature.valid).toBe(false);
    expect(wrong.signature.error).toMatch(/^signature: not signed by this network's key/);
  });
});

describe('cert print: files it refuses', () => {
  it('garbled, empty, truncated or foreign files get ECERTFILE naming the file and what is wrong', () => {
    const good = serializeCertFile({ trustAnchor: fx.anchor.publicKey, cert: fx.certFor('a') });
    const cases: [string, string, RegExp][] = [
      ['garbled', '\x00\x17garbage{{{', /is neither a certificate \(JSON\) nor a join token/],
      ['empty', '\n', /is empty/],
      ['truncated', good.slice(0, good.length / 2), /is neither a certificate/],
      ['array', '[1,2]', /is JSON but not an object/],
      ['other-json', '{"hello":"world"}', /without a "cert"/],
      ['bad-serial', good.replace(/"serial": "[0-9a-f]+"/, '"serial": "xyz"'), /cert\.serial/],
      ['bad-anchor', good.replace(/"trustAnchor": "[^"]+"/, '"trustAnchor": "short"'), /trustAnchor is not base64/],
      ['bad-token', 'cladnet-token-v1.!!!not-base64!!!', /token: is not base64url/],
    ];
    for (const [name, text, why] of cases) {
      const f = write(name, text);
      const msg = failure(() => inspectFile(fx.ed, f, null, NOW));
      expect(msg, name).toMatch(/^ECERTFILE /);
      expect(msg, name).toContain(f);
      expect(msg, name).toMatch(why);
    }
    expect(failure(() => inspectFile(fx.ed, path.join(dir, 'missing.cert'), null))).toMatch(/^ECERTFILE .*cannot read it/);
  });

  it('a network key file is refused without printing any of it', () => {
    const keyFile = path.join(dir, 'refuse.netkey');
    writeNetworkKey(keyFile, 'demo', fx.net);
    const msg = failure(() => inspectFile(fx.ed, keyFile, null));
    expect(msg).toMatch(/^ECERTFILE .*is a network key \(secret\)/);
    expect(msg).not.toContain(b64(fx.net.secretKey));
  });

  it('a bad --trust-anchor or both anchors at once are refused', () => {
    expect(failure(() => anchorFrom(fx.ed, { trustAnchor: 'nope' }))).toMatch(/^EKEY trustAnchor:/);
    expect(failure(() => anchorFrom(fx.ed, { trustAnchor: fx.anchor.publicKey, networkKey: 'x' }))).toMatch(/^ECONFIG networkKey:/);
  });
});
