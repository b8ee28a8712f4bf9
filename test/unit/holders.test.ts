import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { issueCert, signRevocation, TrustAnchor } from '../../src/control/cert';
import { addressesHeldByOthers, certPrecedence, groupByAddress, otherHolder } from '../../src/control/holders';
import { assertAddressFree, reservedFor, type IssuerView } from '../../src/control/issuance';
import { KnownCerts } from '../../src/control/known-certs';
import { appendLedger, ledgerFileFor, parseLedger, readLedger } from '../../src/control/ledger';
import type { HostCert } from '../../src/control/records';
import { CladnetError } from '../../src/errors';
import { loadEd25519, type Ed25519, type SigningKeyPair } from '../../src/crypto/sign';
import { rng } from '../helpers/rng';

/** Who holds an overlay address (holders.ts), and the issuer's ledger that remembers it (ledger.ts). */

const X = (n: number) => Buffer.alloc(32, n).toString('base64');
const T0 = Date.parse('2026-11-21T00:00:00.000Z');

let ed: Ed25519;
let net: SigningKeyPair;
let anchor: TrustAnchor;

beforeAll(async () => {
  ed = await loadEd25519();
  net = ed.generate();
  anchor = new TrustAnchor(ed, 'demo', Buffer.from(net.publicKey).toString('base64'));
});

function cert(name: string, overlayIp: string, at: number, serial?: string): HostCert {
  return issueCert(ed, net.secretKey, { network: 'demo', name, publicKey: X(name.length), overlayIp, now: new Date(at), serial });
}

describe('certPrecedence', () => {
  it('the earlier issued certificate comes first, whatever the names', () => {
    const old = cert('zz', '100.64.0.2', T0);
    const young = cert('aa', '100.64.0.2', T0 + 1);
    expect(certPrecedence(old, young)).toBeLessThan(0);
    expect(certPrecedence(young, old)).toBeGreaterThan(0);
    expect(certPrecedence(old, old)).toBe(0);
  });

  it('equal issue times: the lower serial, then the lower name', () => {
    const lo = cert('b', '100.64.0.2', T0, '0'.repeat(31) + '1');
    const hi = cert('a', '100.64.0.2', T0, 'f'.repeat(32));
    expect(certPrecedence(lo, hi)).toBeLessThan(0);
    const sameSerialA = cert('a', '100.64.0.2', T0, '1'.repeat(32));
    const sameSerialB = cert('b', '100.64.0.2', T0, '1'.repeat(32));
    expect(certPrecedence(sameSerialA, sameSerialB)).toBeLessThan(0);
  });

  it('is a total order: sorting any shuffle of the same certificates gives one result', () => {
    const rand = rng(7);
    const certs = Array.from({ length: 12 }, (_, i) => cert(`h${i % 5}`, '100.64.0.2', T0 + (i % 3) * 1000));
    const want = [...certs].sort(certPrecedence).map((c) => c.serial);
    for (let round = 0; round < 50; round++) {
      const shuffled = [...certs];
      for (let i = shuffled.length - 1; i > 0; i--) {
        const j = Math.floor(rand() * (i + 1));
        [shuffled[i], shuffled[j]] = [shuffled[j]!, shuffled[i]!];
      }
      expect(shuffled.sort(certPrecedence).map((c) => c.serial)).toEqual(want);
    }
  });
});

describe('groupByAddress / otherHolder', () => {
  it('groups valid certificates by address, holder first, and counts a certificate seen twice once', () => {
    const a = cert('a', '100.64.0.2', T0);
    const b = cert('b', '100.64.0.2', T0 + 5);
    const c = cert('c', '100.64.0.3', T0);
    const expired = cert('d', '100.64.0.4', T0);
    const groups = groupByAddress([b, c, a, a, expired], (x) => x.name !== 'd');
    expect([...groups.keys()].sort()).toEqual(['100.64.0.2', '100.64.0.3']);
    expect(groups.get('100.64.0.2')!.map((x) => x.name)).toEqual(['a', 'b']);

    expect(otherHolder(groups, '100.64.0.2', 'new')?.name).toBe('a');
    expect(otherHolder(groups, '100.64.0.2', 'a')?.name).toBe('b'); // a second name on a's address still counts
    expect(otherHolder(groups, '100.64.0.3', 'c')).toBeUndefined(); // renewing c's own address is fine
    expect(otherHolder(groups, '100.64.0.4', 'new')).toBeUndefined(); // the invalid one holds nothing
    expect([...addressesHeldByOthers(groups, 'c').keys()].sort()).toEqual(['100.64.0.2']);
  });
});

describe('the issuer\'s refusal', () => {
  it('EADDRHELD names the address, the holder and how to free it; the holder itself may renew', () => {
    const a = cert('a', '100.64.0.2', T0);
    const view: IssuerView = { held: groupByAddress([a], () => true), counts: { ledger: 1, issued: 0, hosts: 0, revocations: 0 }, warnings: [] };
    expect(() => assertAddressFree(view, '100.64.0.3', 'b')).not.toThrow();
    expect(() => assertAddressFree(view, '100.64.0.2', 'a')).not.toThrow();
    let err: unknown;
    try {
      assertAddressFree(view, '100.64.0.2', 'b');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CladnetError);
    expect((err as CladnetError).code).toBe('EADDRHELD');
    expect((err as CladnetError).field).toBe('overlayIp');
    expect((err as Error).message).toBe(
      `overlayIp: 100.64.0.2 is held by a (certificate ${a.serial}, issued ${a.issued}), valid until ${a.notAfter}; refusing to certify it for b (revoke a first to free it)`,
    );
    expect([...reservedFor(view, 'b')]).toEqual([['100.64.0.2', `a (certificate ${a.serial}, issued ${a.issued})`]]);
    expect(reservedFor(view, 'a').size).toBe(0);
  });
});

describe('the issuer ledger', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-ledger-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('lives beside the network key', () => {
    expect(ledgerFileFor('/etc/cladnet/prod.netkey')).toBe('/etc/cladnet/prod.netkey.issued');
  });

  it('appends certificates and revocations (mode 0600) and reads them back verified', () => {
    const file = path.join(dir, 'demo.netkey.issued');
    expect(readLedger(file, anchor)).toEqual({ certs: [], revocations: [], skipped: [] });
    const a = cert('a', '100.64.0.2', T0);
    const rev = signRevocation(ed, net.secretKey, { network: 'demo', name: 'a', now: new Date(T0 + 1) });
    appendLedger(file, { cert: a });
    appendLedger(file, { revocation: rev });
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(fs.readFileSync(file, 'utf8').split('\n')).toHaveLength(3); // two lines and the final newline
    const back = readLedger(file, anchor);
    expect(back.certs).toEqual([a]);
    expect(back.revocations).toEqual([rev]);
    expect(back.skipped).toEqual([]);
  });

  it('an expired certificate is still a true entry (its signature is what counts)', () => {
    const old = issueCert(ed, net.secretKey, { network: 'demo', name: 'a', publicKey: X(1), overlayIp: '100.64.0.2', now: new Date(T0 - 900 * 86_400_000), validDays: 1 });
    const l = parseLedger(`{"version":1,"cert":${JSON.stringify(old)}}\n`, 'f', anchor);
    expect(l.certs).toHaveLength(1);
  });

  it('skips junk, forged and tampered lines with file and line named, and keeps the good ones', () => {
    const good = cert('a', '100.64.0.2', T0);
    const attacker = ed.generate();
    const forged = issueCert(ed, attacker.secretKey, { network: 'demo', name: 'm', publicKey: X(9), overlayIp: '100.64.0.9', now: new Date(T0) });
    const tampered = { ...good, overlayIp: '100.64.0.7' };
    const text = [
      'not json',
      '{"version":2,"cert":{}}',
      `{"version":1,"cert":${JSON.stringify(forged)}}`,
      `{"version":1,"cert":${JSON.stringify(tampered)}}`,
      `{"version":1,"cert":{"name":"x"}}`,
      '{"version":1}',
      '',
      `{"version":1,"cert":${JSON.stringify(good)}}`,
      `{"version":1,"revocation":{"version":1}}`,
    ].join('\n');
    const l = parseLedger(text, 'L', anchor);
    expect(l.certs).toEqual([good]);
    expect(l.revocations).toEqual([]);
    expect(l.skipped).toHaveLength(7);
    expect(l.skipped[0]).toBe('L:1: not JSON');
    expect(l.skipped[1]).toBe('L:2: version: expected 1');
    expect(l.skipped[2]).toMatch(/^L:3: cert\.signature: not signed by this network's key/);
    expect(l.skipped[3]).toMatch(/^L:4: cert\.signature: not signed/);
    expect(l.skipped[4]).toMatch(/^L:5: cert\.\w+: /);
    expect(l.skipped[5]).toBe('L:6: neither cert nor revocation');
    expect(l.skipped[6]).toMatch(/^L:9: revocation\.\w+: /);
  });

  it('refuses a ledger that group or others can read, naming the file and the fix', () => {
    const file = path.join(dir, 'open.issued');
    fs.writeFileSync(file, '', { mode: 0o644 });
    fs.chmodSync(file, 0o644);
    const read = () => readLedger(file, anchor);
    expect(read).toThrow(CladnetError);
    expect(read).toThrow(`ledger: ${file} is readable by group or others (mode 644); run: chmod 600 ${file}`);
    expect(() => appendLedger(file, { cert: cert('a', '100.64.0.2', T0) })).toThrow(/ledger: .* is readable by group or others/);
    expect(fs.readFileSync(file, 'utf8')).toBe('');
  });
});

describe('KnownCerts', () => {
  it('remembers each certificate once, forgets expired and revoked ones, and stays bounded (oldest first)', () => {
    const k = new KnownCerts(3);
    const [a, b, c, d] = ['a', 'b', 'c', 'd'].map((n, i) => cert(n, `100.64.0.${i + 2}`, T0 + i));
    k.remember([a!, a!, b!]);
    expect(k.size).toBe(2);
    expect(k.dirty).toBe(true);
    k.clean();
    k.remember([b!]);
    expect(k.dirty).toBe(false);
    k.remember([c!, d!]);
    expect(k.list().map((x) => x.name)).toEqual(['b', 'c', 'd']);
    k.prune(T0, (x) => x.name === 'c');
    expect(k.list().map((x) => x.name)).toEqual(['b', 'd']);
    k.prune(Date.parse(d!.notAfter) + 1, () => false);
    expect(k.size).toBe(0);
  });

  it('loads what it saved, dropping junk and other networks', () => {
    const a = cert('a', '100.64.0.2', T0);
    const other = issueCert(ed, net.secretKey, { network: 'other', name: 'x', publicKey: X(3), overlayIp: '100.64.0.3', now: new Date(T0) });
    const k = new KnownCerts();
    k.load(JSON.parse(JSON.stringify([a, other, null, 5, { name: 'x' }])), 'demo');
    expect(k.list()).toEqual([a]);
    expect(k.dirty).toBe(false);
    k.load('not an array', 'demo');
    expect(k.size).toBe(1);
  });
});
